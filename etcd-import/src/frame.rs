//! The framing of rusd's snapshot stream (Maintenance.Snapshot, what `etcdctl snapshot save`
//! writes to a file).
//!
//! etcdctl's `snapshot save` accepts a stream only when its length is 32 bytes more than a
//! multiple of 512 (an etcd snapshot is a bbolt file followed by its SHA-256). rusd streams the
//! portable snapshot of the engine ([`storage_api::snapshot`]) framed as
//! `snapshot | zeros | snapshot length (u64 BE) | SHA-256 of everything before`, where the
//! zeros make the part before the hash a multiple of 512 bytes. [`unframe`] checks the hash
//! and returns the portable snapshot; [`framed_len`] does the same on a file without reading
//! it into memory (`rusd snapshot restore` and `status` accept both a framed and a bare
//! snapshot).

use std::io::{Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

/// The alignment etcdctl expects before the hash.
pub const ALIGN: u64 = 512;
/// Length of the trailing hash.
pub const HASH_LEN: usize = 32;
/// Length of the snapshot length field before the hash.
const LEN_FIELD: u64 = 8;

/// Bytes of padding (zeros, then the 8-byte length) after a snapshot of `len` bytes.
pub fn padding_len(len: u64) -> u64 {
    (len + LEN_FIELD).div_ceil(ALIGN) * ALIGN - len
}

/// The padding after a snapshot of `len` bytes.
pub fn padding(len: u64) -> Vec<u8> {
    let mut pad = vec![0u8; padding_len(len) as usize];
    let n = pad.len();
    pad[n - 8..].copy_from_slice(&len.to_be_bytes());
    pad
}

/// Checks a framed snapshot and returns the portable snapshot inside; `None` when the
/// length, hash or padding is wrong.
pub fn unframe(data: &[u8]) -> Option<&[u8]> {
    if data.len() < HASH_LEN + 8 || !((data.len() - HASH_LEN) as u64).is_multiple_of(ALIGN) {
        return None;
    }
    let (body, hash) = data.split_at(data.len() - HASH_LEN);
    if Sha256::digest(body).as_slice() != hash {
        return None;
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&body[body.len() - 8..]);
    let len = usize::try_from(u64::from_be_bytes(len)).ok()?;
    if len > body.len() - 8 || body[len..body.len() - 8].iter().any(|b| *b != 0) {
        return None;
    }
    Some(&body[..len])
}

/// What [`framed_len`] found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Not framed: the whole file is the snapshot.
    Bare,
    /// Framed, hash checked: the snapshot is the file's first `len` bytes.
    Framed {
        /// The portable snapshot's length.
        len: u64,
    },
    /// The length, length field and padding of a framed snapshot, but the SHA-256 does not
    /// match (or a bare snapshot that happens to end like a frame).
    BadHash {
        /// The portable snapshot's length the frame names.
        len: u64,
    },
}

/// Whether the `total`-byte file `f` is a framed snapshot (see the module docs), reading its
/// tail and, when the tail looks framed, hashing it once. Leaves `f` at an unspecified
/// position.
pub fn framed_len<R: Read + Seek>(f: &mut R, total: u64) -> std::io::Result<Framing> {
    let hash_len = HASH_LEN as u64;
    if total < hash_len + LEN_FIELD || !(total - hash_len).is_multiple_of(ALIGN) {
        return Ok(Framing::Bare);
    }
    let body = total - hash_len;
    let mut field = [0u8; 8];
    f.seek(SeekFrom::Start(body - LEN_FIELD))?;
    f.read_exact(&mut field)?;
    let len = u64::from_be_bytes(field);
    if len > body - LEN_FIELD || padding_len(len) != body - len {
        return Ok(Framing::Bare);
    }
    let mut zeros = Vec::new();
    f.seek(SeekFrom::Start(len))?;
    f.by_ref()
        .take(body - LEN_FIELD - len)
        .read_to_end(&mut zeros)?;
    if zeros.iter().any(|b| *b != 0) {
        return Ok(Framing::Bare);
    }
    let mut hash = [0u8; HASH_LEN];
    f.read_exact(&mut [0u8; 8])?;
    f.read_exact(&mut hash)?;
    f.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut rest = f.by_ref().take(body);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rest.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hasher.finalize().as_slice() == hash {
        Ok(Framing::Framed { len })
    } else {
        Ok(Framing::BadHash { len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn framed(snap: &[u8]) -> Vec<u8> {
        let mut framed = snap.to_vec();
        framed.extend(padding(snap.len() as u64));
        let h = Sha256::digest(&framed);
        framed.extend_from_slice(&h);
        framed
    }

    #[test]
    fn round_trip() {
        for len in [0u64, 1, 100, 503, 504, 505, 512, 1000, 4096] {
            let snap: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            let framed = framed(&snap);
            assert_eq!(framed.len() as u64 % ALIGN, HASH_LEN as u64);
            assert_eq!(unframe(&framed), Some(snap.as_slice()));
            let total = framed.len() as u64;
            assert_eq!(
                framed_len(&mut Cursor::new(&framed), total).unwrap(),
                Framing::Framed { len }
            );
            // A flipped bit of the hash.
            let mut bad = framed.clone();
            bad[framed.len() - 1] ^= 1;
            assert_eq!(unframe(&bad), None);
            assert_eq!(
                framed_len(&mut Cursor::new(&bad), total).unwrap(),
                Framing::BadHash { len }
            );
        }
    }

    #[test]
    fn a_bare_or_malformed_tail_is_not_a_frame() {
        let snap: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8 + 1).collect();
        let framed = framed(&snap);
        let total = framed.len() as u64;
        // Bare: not 32 bytes past a multiple of 512.
        assert_eq!(
            framed_len(&mut Cursor::new(&snap), snap.len() as u64).unwrap(),
            Framing::Bare
        );
        // A length field that names more than the body, or other padding.
        let mut long = framed.clone();
        let at = framed.len() - HASH_LEN - 8;
        long[at..at + 8].copy_from_slice(&2000u64.to_be_bytes());
        assert_eq!(
            framed_len(&mut Cursor::new(&long), total).unwrap(),
            Framing::Bare
        );
        let mut short = framed.clone();
        short[at..at + 8].copy_from_slice(&10u64.to_be_bytes());
        assert_eq!(
            framed_len(&mut Cursor::new(&short), total).unwrap(),
            Framing::Bare
        );
        // Padding that is not zeros.
        let mut dirty = framed;
        dirty[snap.len()] = 1;
        assert_eq!(
            framed_len(&mut Cursor::new(&dirty), total).unwrap(),
            Framing::Bare
        );
    }
}
