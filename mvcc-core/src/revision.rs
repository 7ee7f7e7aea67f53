//! [`Revision`]: the `(main, sub)` version of a change, and its byte encoding.
//!
//! The backend key of a revision in the `kv` tree is etcd's: 8-byte big-endian `main`, the byte
//! `'_'`, 8-byte big-endian `sub` (17 bytes), plus a trailing `'t'` for a tombstone (18 bytes).
//! Because revisions are never negative, byte order equals revision order.

use std::fmt;

use crate::error::{MvccError, MvccResult};

/// Length of an encoded revision without tombstone marker.
pub const REVISION_BYTES: usize = 17;
/// Length of an encoded tombstone revision.
pub const TOMBSTONE_REVISION_BYTES: usize = 18;
/// Byte between `main` and `sub`.
const SEPARATOR: u8 = b'_';
/// Trailing byte of a tombstone key.
const TOMBSTONE_MARK: u8 = b't';

/// The version of one change: `main` is the store revision of the write transaction, `sub` the
/// position of the change inside it. Ordered lexicographically on `(main, sub)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// Main revision (the store revision).
    pub main: i64,
    /// Sub revision (index of the change inside its transaction).
    pub sub: i64,
}

impl Revision {
    /// A revision.
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// True when `self > other` in `(main, sub)` order.
    pub fn greater_than(&self, other: &Revision) -> bool {
        self > other
    }

    /// The 17-byte backend key (no tombstone marker).
    pub fn to_bytes(&self) -> [u8; REVISION_BYTES] {
        let mut out = [0u8; REVISION_BYTES];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8] = SEPARATOR;
        out[9..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// The backend key of this revision, with the tombstone marker when `tombstone`.
    pub fn to_key(&self, tombstone: bool) -> Vec<u8> {
        let mut key = Vec::with_capacity(TOMBSTONE_REVISION_BYTES);
        key.extend_from_slice(&self.to_bytes());
        if tombstone {
            key.push(TOMBSTONE_MARK);
        }
        key
    }

    /// Decodes a backend key into the revision and whether it is a tombstone.
    ///
    /// Fails with [`MvccError::Corruption`] on a wrong length, separator or marker, or a
    /// negative component.
    pub fn from_key(key: &[u8]) -> MvccResult<(Revision, bool)> {
        let tombstone = match key.len() {
            REVISION_BYTES => false,
            TOMBSTONE_REVISION_BYTES if key[17] == TOMBSTONE_MARK => true,
            _ => {
                return Err(MvccError::Corruption(format!(
                    "invalid revision key {key:02x?}"
                )))
            }
        };
        if key[8] != SEPARATOR {
            return Err(MvccError::Corruption(format!(
                "invalid revision separator in {key:02x?}"
            )));
        }
        let mut main = [0u8; 8];
        main.copy_from_slice(&key[..8]);
        let mut sub = [0u8; 8];
        sub.copy_from_slice(&key[9..17]);
        let rev = Revision::new(i64::from_be_bytes(main), i64::from_be_bytes(sub));
        if rev.main < 0 || rev.sub < 0 {
            return Err(MvccError::Corruption(format!(
                "negative revision in key {key:02x?}"
            )));
        }
        Ok((rev, tombstone))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_etcd_layout() {
        let r = Revision::new(3, 0);
        let k = r.to_key(true);
        assert_eq!(
            k,
            vec![0, 0, 0, 0, 0, 0, 0, 3, b'_', 0, 0, 0, 0, 0, 0, 0, 0, b't']
        );
        assert_eq!(Revision::from_key(&k).unwrap(), (r, true));
        let k = Revision::new(0x0102, 7).to_key(false);
        assert_eq!(k.len(), 17);
        assert_eq!(&k[..9], &[0, 0, 0, 0, 0, 0, 1, 2, b'_']);
        assert_eq!(
            Revision::from_key(&k).unwrap(),
            (Revision::new(0x0102, 7), false)
        );
    }

    #[test]
    fn byte_order_matches_revision_order() {
        let revs = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 255),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(255, 0),
            Revision::new(256, 0),
            Revision::new(i64::MAX, i64::MAX),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_key(false) < w[1].to_key(false));
            assert!(w[0].to_key(true) < w[1].to_key(false));
            assert!(w[1].greater_than(&w[0]));
        }
    }

    #[test]
    fn bad_keys_are_corruption() {
        assert!(matches!(
            Revision::from_key(b"short"),
            Err(MvccError::Corruption(_))
        ));
        let mut k = Revision::new(1, 1).to_key(false);
        k[8] = b'-';
        assert!(matches!(
            Revision::from_key(&k),
            Err(MvccError::Corruption(_))
        ));
        let mut k = Revision::new(1, 1).to_key(true);
        k[17] = b'x';
        assert!(matches!(
            Revision::from_key(&k),
            Err(MvccError::Corruption(_))
        ));
        let k = Revision::new(-1, 0).to_key(false);
        assert!(matches!(
            Revision::from_key(&k),
            Err(MvccError::Corruption(_))
        ));
    }
}
