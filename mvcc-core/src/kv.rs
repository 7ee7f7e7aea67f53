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
        let (ints, key_len) = Self::decode_header(&data)?;
        let key = data[HEADER_LEN..HEADER_LEN + key_len].to_vec();
        data.drain(..HEADER_LEN + key_len);
        Ok(Self::with_header(ints, key, data))
    }

    /// Decodes a row; [`MvccError::Corruption`] on an unknown version or a truncated row.
    pub fn decode(data: &[u8]) -> MvccResult<KeyValue> {
        let (ints, key_len) = Self::decode_header(data)?;
        let (key, value) = data[HEADER_LEN..].split_at(key_len);
        Ok(Self::with_header(ints, key.to_vec(), value.to_vec()))
    }

    /// [`decode`](Self::decode) into `kv`, in place (no move of a whole `KeyValue`); `kv` is
    /// left unchanged on an error.
    pub(crate) fn decode_into(data: &[u8], kv: &mut KeyValue) -> MvccResult<()> {
        let (ints, key_len) = Self::decode_header(data)?;
        let (key, value) = data[HEADER_LEN..].split_at(key_len);
        kv.key = key.to_vec();
        kv.value = value.to_vec();
        [kv.create_revision, kv.mod_revision, kv.version, kv.lease] = ints;
        Ok(())
    }

    fn with_header(ints: [i64; 4], key: Vec<u8>, value: Vec<u8>) -> KeyValue {
        let [create_revision, mod_revision, version, lease] = ints;
        KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
            version,
            lease,
        }
    }

    /// Checks the header and returns `[create_revision, mod_revision, version, lease]` and the
    /// key length; the row is then at least `HEADER_LEN + key length` bytes long.
    #[inline]
    fn decode_header(data: &[u8]) -> MvccResult<([i64; 4], usize)> {
        let Some(h) = data.first_chunk::<HEADER_LEN>() else {
            return Err(bad_row(data));
        };
        if h[0] != KV_FORMAT_VERSION {
            return Err(bad_row(data));
        }
        let int = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&h[33..37]);
        let key_len = u32::from_be_bytes(len) as usize;
        if data.len() - HEADER_LEN < key_len {
            return Err(bad_row(data));
        }
        Ok(([int(1), int(9), int(17), int(25)], key_len))
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

/// The error for a row [`KeyValue::decode`] refuses (kept out of the decode's hot path).
#[cold]
#[inline(never)]
fn bad_row(data: &[u8]) -> MvccError {
    let why = match data.first() {
        None => "empty".to_string(),
        Some(&v) if v != KV_FORMAT_VERSION => format!("unknown format version {v}"),
        Some(_) if data.len() < HEADER_LEN => "truncated header".to_string(),
        Some(_) => "truncated key".to_string(),
    };
    MvccError::Corruption(format!("bad kv row: {why}"))
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
        let mut into = KeyValue::tombstone(b"other".to_vec(), 1);
        KeyValue::decode_into(&enc, &mut into).unwrap();
        assert_eq!(into, kv);
        let empty = KeyValue::tombstone(Vec::new(), 9);
        assert_eq!(KeyValue::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn bad_rows_say_why() {
        let why = |data: &[u8]| match KeyValue::decode(data) {
            Err(MvccError::Corruption(m)) => m,
            other => panic!("{other:?}"),
        };
        let enc = KeyValue {
            key: b"long key".to_vec(),
            ..KeyValue::default()
        }
        .encode();
        assert_eq!(why(&[]), "bad kv row: empty");
        assert_eq!(why(&[2; 40]), "bad kv row: unknown format version 2");
        assert_eq!(why(&enc[..36]), "bad kv row: truncated header");
        assert_eq!(why(&enc[..enc.len() - 1]), "bad kv row: truncated key");
        assert_eq!(
            KeyValue::decode_owned(enc[..40].to_vec()).map_err(|e| e.to_string()),
            Err(MvccError::Corruption("bad kv row: truncated key".into()).to_string())
        );
        // The exact length is a row with an empty value.
        assert_eq!(KeyValue::decode(&enc).unwrap().key, b"long key".to_vec());
        let mut kv = KeyValue::tombstone(b"k".to_vec(), 3);
        assert!(KeyValue::decode_into(&enc[..40], &mut kv).is_err());
        assert_eq!(kv, KeyValue::tombstone(b"k".to_vec(), 3));
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
