//! [`KeyValue`] and its versioned byte encoding in the `kv` tree.
//!
//! Format version 1 (all integers big-endian):
//! ```text
//! [1u8] [create_revision i64] [mod_revision i64] [version i64] [lease i64]
//! [key length u32] [key bytes] [value bytes (the rest)]
//! ```
//! A tombstone row stores the key with `mod_revision` = the deletion revision and zeros elsewhere.

use crate::error::{MvccError, MvccResult};

/// Current encoding version byte.
pub const KV_FORMAT_VERSION: u8 = 1;
/// Bytes of an encoded row before its key.
pub(crate) const HEADER_LEN: usize = 1 + 8 * 4 + 4;

/// A key's state at one revision, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a deletion event).
    pub value: Vec<u8>,
    /// Revision of the put that created the key's current generation (0 for a deletion event).
    pub create_revision: i64,
    /// Revision of the last change of the key.
    pub mod_revision: i64,
    /// Number of puts since the key was created (1 for a new key, 0 for a deletion event).
    pub version: i64,
    /// Attached lease id (0 = none).
    pub lease: i64,
}

impl KeyValue {
    /// Encodes into the versioned row format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.key.len() + self.value.len());
        out.push(KV_FORMAT_VERSION);
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.mod_revision.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.lease.to_be_bytes());
        // Keys are limited far below 4 GiB by the store configuration.
        out.extend_from_slice(&(self.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes a row it owns, reusing its buffer for the value.
    pub(crate) fn decode_owned(mut data: Vec<u8>) -> MvccResult<KeyValue> {
        let (mut kv, value_at) = Self::decode_header(&data)?;
        data.drain(..value_at);
        kv.value = data;
        Ok(kv)
    }

    /// Decodes a row; [`MvccError::Corruption`] on an unknown version or a truncated row.
    pub fn decode(data: &[u8]) -> MvccResult<KeyValue> {
        let (mut kv, value_at) = Self::decode_header(data)?;
        kv.value = data[value_at..].to_vec();
        Ok(kv)
    }

    /// Decodes everything but the value; returns the offset of the value.
    fn decode_header(data: &[u8]) -> MvccResult<(KeyValue, usize)> {
        let corrupt = |why: &str| MvccError::Corruption(format!("bad kv row: {why}"));
        let (&version_byte, rest) = data.split_first().ok_or_else(|| corrupt("empty"))?;
        if version_byte != KV_FORMAT_VERSION {
            return Err(corrupt(&format!("unknown format version {version_byte}")));
        }
        if data.len() < HEADER_LEN {
            return Err(corrupt("truncated header"));
        }
        let int = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[i * 8..i * 8 + 8]);
            i64::from_be_bytes(b)
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&rest[32..36]);
        let key_len = u32::from_be_bytes(len) as usize;
        let body = &data[HEADER_LEN..];
        if body.len() < key_len {
            return Err(corrupt("truncated key"));
        }
        Ok((
            KeyValue {
                create_revision: int(0),
                mod_revision: int(1),
                version: int(2),
                lease: int(3),
                key: body[..key_len].to_vec(),
                value: Vec::new(),
            },
            HEADER_LEN + key_len,
        ))
    }

    /// The tombstone row / deletion event of `key` deleted at `revision`.
    pub fn tombstone(key: Vec<u8>, revision: i64) -> KeyValue {
        KeyValue {
            key,
            mod_revision: revision,
            ..KeyValue::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let kv = KeyValue {
            key: b"foo".to_vec(),
            value: b"bar\0baz".to_vec(),
            create_revision: 2,
            mod_revision: 7,
            version: 3,
            lease: 42,
        };
        let enc = kv.encode();
        assert_eq!(enc[0], 1);
        assert_eq!(enc.len(), HEADER_LEN + 3 + 7);
        assert_eq!(KeyValue::decode(&enc).unwrap(), kv);
        let empty = KeyValue::tombstone(Vec::new(), 9);
        assert_eq!(KeyValue::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn rejects_bad_rows() {
        assert!(matches!(
            KeyValue::decode(&[]),
            Err(MvccError::Corruption(_))
        ));
        let mut enc = KeyValue::default().encode();
        enc[0] = 2;
        assert!(matches!(
            KeyValue::decode(&enc),
            Err(MvccError::Corruption(_))
        ));
        let kv = KeyValue {
            key: b"long key".to_vec(),
            ..KeyValue::default()
        };
        let enc = kv.encode();
        assert!(matches!(
            KeyValue::decode(&enc[..enc.len() - 2]),
            Err(MvccError::Corruption(_))
        ));
        assert!(matches!(
            KeyValue::decode(&enc[..10]),
            Err(MvccError::Corruption(_))
        ));
    }
}
