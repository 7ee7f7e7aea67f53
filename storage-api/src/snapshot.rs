//! The portable snapshot format: one image of all five trees that any engine can write
//! and any engine can restore.
//!
//! # Format, version 1
//! All integers are big-endian.
//!
//! ```text
//! header   := magic "RUSDSNAP" (8 bytes) | version: u32 (= 1) | flags: u32 (= 0)
//! record   := 0x01 | tree id: u8 | key length: u32 | key | value length: u32 | value
//! trailer  := 0x00 | record count: u64 | crc32 (IEEE) of every preceding byte: u32
//! snapshot := header record* trailer
//! ```
//!
//! Records are sorted by tree id, then by key (strictly ascending), which makes the image
//! canonical: two stores with the same content produce byte-identical snapshots whatever
//! their engine. Readers reject anything else: wrong magic, another version, non-zero
//! flags, unknown tree ids, keys out of order, a wrong count, a checksum mismatch, a
//! truncated input and trailing bytes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use tempfile::SpooledTempFile;

use crate::error::{SnapshotError, StorageError, StorageResult};
use crate::tree::Tree;

/// Magic bytes at the start of every snapshot.
pub const MAGIC: [u8; 8] = *b"RUSDSNAP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest key or value length a snapshot may declare (1 GiB).
pub const MAX_FIELD_LEN: u32 = 1 << 30;
/// Bytes of a validated snapshot kept in memory before spooling to a temporary file.
pub const SPOOL_MEMORY_LIMIT: usize = 32 * 1024 * 1024;

const TAG_RECORD: u8 = 0x01;
const TAG_END: u8 = 0x00;
const HEADER_LEN: u64 = 16;

/// One `(tree, key, value)` record of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// The tree the pair belongs to.
    pub tree: Tree,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Value bytes.
    pub value: Vec<u8>,
}

/// Streams a snapshot to a writer. Engines call [`entry`](SnapshotWriter::entry) for every
/// pair of a consistent view, trees in [`Tree::ALL`] order and keys ascending, then
/// [`finish`](SnapshotWriter::finish).
pub struct SnapshotWriter<'a> {
    out: &'a mut dyn Write,
    hasher: crc32fast::Hasher,
    bytes: u64,
    count: u64,
    last: Option<(Tree, Vec<u8>)>,
}

impl<'a> SnapshotWriter<'a> {
    /// Writes the header.
    pub fn new(out: &'a mut dyn Write) -> StorageResult<Self> {
        let mut w = SnapshotWriter {
            out,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
            count: 0,
            last: None,
        };
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        w.emit(&header)?;
        Ok(w)
    }

    fn emit(&mut self, buf: &[u8]) -> StorageResult<()> {
        self.out
            .write_all(buf)
            .map_err(|e| StorageError::io("writing snapshot", e))?;
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Appends one record. Fails with [`StorageError::InvalidArgument`] if records are not
    /// in (tree id, key) order or a field exceeds [`MAX_FIELD_LEN`].
    pub fn entry(&mut self, tree: Tree, key: &[u8], value: &[u8]) -> StorageResult<()> {
        if let Some((last_tree, last_key)) = &self.last {
            if (last_tree.id(), last_key.as_slice()) >= (tree.id(), key) {
                return Err(StorageError::InvalidArgument(format!(
                    "snapshot records out of order at tree {tree}"
                )));
            }
        }
        let klen = field_len(key)?;
        let vlen = field_len(value)?;
        self.emit(&[TAG_RECORD, tree.id()])?;
        self.emit(&klen.to_be_bytes())?;
        self.emit(key)?;
        self.emit(&vlen.to_be_bytes())?;
        self.emit(value)?;
        self.count += 1;
        match &mut self.last {
            Some((t, k)) => {
                *t = tree;
                k.clear();
                k.extend_from_slice(key);
            }
            None => self.last = Some((tree, key.to_vec())),
        }
        Ok(())
    }

    /// Writes the trailer and flushes; returns the total bytes written.
    pub fn finish(mut self) -> StorageResult<u64> {
        let count = self.count;
        self.emit(&[TAG_END])?;
        self.emit(&count.to_be_bytes())?;
        let crc = self.hasher.clone().finalize();
        self.out
            .write_all(&crc.to_be_bytes())
            .and_then(|_| self.out.flush())
            .map_err(|e| StorageError::io("writing snapshot", e))?;
        Ok(self.bytes + 4)
    }
}

fn field_len(b: &[u8]) -> StorageResult<u32> {
    u32::try_from(b.len())
        .ok()
        .filter(|l| *l <= MAX_FIELD_LEN)
        .ok_or_else(|| {
            StorageError::InvalidArgument(format!(
                "a key or value of {} bytes exceeds the snapshot limit of {MAX_FIELD_LEN}",
                b.len()
            ))
        })
}

/// Reads the input, hashing every byte and spooling it (when there is a spool).
struct Tee<'r> {
    input: &'r mut dyn Read,
    spool: Option<SpooledTempFile>,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl Tee<'_> {
    /// Reads exactly `buf.len()` bytes; a short input is [`SnapshotError::Truncated`].
    fn read_exact(&mut self, buf: &mut [u8]) -> StorageResult<()> {
        match self.input.read_exact(buf) {
            Ok(()) => self.keep(buf),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(SnapshotError::Truncated.into())
            }
            Err(e) => Err(StorageError::io("reading snapshot", e)),
        }
    }

    fn keep(&mut self, buf: &[u8]) -> StorageResult<()> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        match &mut self.spool {
            Some(spool) => spool
                .write_all(buf)
                .map_err(|e| StorageError::io("spooling snapshot", e)),
            None => Ok(()),
        }
    }

    fn u8(&mut self) -> StorageResult<u8> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> StorageResult<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> StorageResult<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Copies `len` bytes through without keeping them, streaming large values.
    fn skip(&mut self, mut len: u64) -> StorageResult<()> {
        let mut buf = [0u8; 64 * 1024];
        while len > 0 {
            let n = len.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..n])?;
            len -= n as u64;
        }
        Ok(())
    }

    fn at_eof(&mut self) -> StorageResult<bool> {
        let mut b = [0u8; 1];
        loop {
            match self.input.read(&mut b) {
                Ok(0) => return Ok(true),
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StorageError::io("reading snapshot", e)),
            }
        }
    }
}

fn read_len(tee: &mut Tee<'_>, what: &str) -> StorageResult<u32> {
    let len = tee.u32()?;
    if len > MAX_FIELD_LEN {
        return Err(
            SnapshotError::Malformed(format!("{what} length {len} exceeds the limit")).into(),
        );
    }
    Ok(len)
}

/// A snapshot whose every byte has been read and checked. Engines consume it with
/// [`entries`](ValidatedSnapshot::entries) inside
/// [`Backend::restore_validated`](crate::Backend::restore_validated).
///
/// Up to [`SPOOL_MEMORY_LIMIT`] bytes are held in memory; larger snapshots live in an
/// anonymous temporary file that disappears when this value is dropped.
///
/// A snapshot validated in place with [`from_file`](ValidatedSnapshot::from_file) is read
/// from its own file instead: nothing is copied and memory stays at a few buffers.
#[derive(Debug)]
pub struct ValidatedSnapshot {
    source: Source,
    entries: u64,
    bytes: u64,
}

/// Where the bytes of a [`ValidatedSnapshot`] are read back from.
#[derive(Debug)]
enum Source {
    /// A copy made while validating.
    Spool(SpooledTempFile),
    /// The validated file itself.
    File(File),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Spool(s) => s.read(buf),
            Source::File(f) => f.read(buf),
        }
    }
}

impl Seek for Source {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Source::Spool(s) => s.seek(pos),
            Source::File(f) => f.seek(pos),
        }
    }
}

/// Read buffer of [`ValidatedSnapshot::from_file`] and of the entries' reader.
const READ_BUFFER: usize = 256 * 1024;

impl ValidatedSnapshot {
    /// Reads the whole input and validates it, keeping a copy (see the [type docs](Self)).
    pub fn read_from(input: &mut dyn Read) -> StorageResult<Self> {
        let (spool, entries, bytes) =
            validate(input, Some(SpooledTempFile::new(SPOOL_MEMORY_LIMIT)))?;
        let spool = spool.ok_or_else(|| StorageError::io("spooling snapshot", lost_spool()))?;
        Ok(ValidatedSnapshot {
            source: Source::Spool(spool),
            entries,
            bytes,
        })
    }

    /// Validates the snapshot stored in `file` (read from its start) in a first pass over it,
    /// without copying it anywhere; [`entries`](Self::entries) then reads the records from
    /// the same file in a second pass. Memory use is a fixed read buffer (plus the largest
    /// key) whatever the snapshot size. The file must not change until the entries are read.
    pub fn from_file(mut file: File) -> StorageResult<Self> {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| StorageError::io("rewinding snapshot file", e))?;
        let (_, entries, bytes) = {
            let mut reader = io::BufReader::with_capacity(READ_BUFFER, &mut file);
            validate(&mut reader, None)?
        };
        Ok(ValidatedSnapshot {
            source: Source::File(file),
            entries,
            bytes,
        })
    }

    /// Number of records.
    pub fn entry_count(&self) -> u64 {
        self.entries
    }

    /// Size of the snapshot in bytes.
    pub fn byte_len(&self) -> u64 {
        self.bytes
    }

    /// The records in (tree, key) order. Only I/O errors of the spool file can occur.
    pub fn entries(mut self) -> StorageResult<SnapshotEntries> {
        self.source
            .seek(SeekFrom::Start(HEADER_LEN))
            .map_err(|e| StorageError::io("rewinding snapshot spool", e))?;
        Ok(SnapshotEntries {
            spool: io::BufReader::with_capacity(READ_BUFFER, self.source),
            remaining: self.entries,
        })
    }
}

fn lost_spool() -> io::Error {
    io::Error::other("the snapshot spool is missing")
}

/// Reads and checks a whole snapshot, spooling it into `spool` if given; returns the spool,
/// the record count and the byte length.
fn validate(
    input: &mut dyn Read,
    spool: Option<SpooledTempFile>,
) -> StorageResult<(Option<SpooledTempFile>, u64, u64)> {
    {
        let mut tee = Tee {
            input,
            spool,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
        };
        // Magic: report garbage as BadMagic even when it is shorter than the magic.
        let mut magic = [0u8; 8];
        let mut got = 0;
        while got < magic.len() {
            match tee.input.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StorageError::io("reading snapshot", e)),
            }
        }
        if magic[..got] != MAGIC[..got] {
            return Err(SnapshotError::BadMagic.into());
        }
        if got < magic.len() {
            return Err(SnapshotError::Truncated.into());
        }
        tee.keep(&magic)?;
        let version = tee.u32()?;
        if version != FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            }
            .into());
        }
        let flags = tee.u32()?;
        if flags != 0 {
            return Err(
                SnapshotError::Malformed(format!("unknown header flags {flags:#x}")).into(),
            );
        }
        let mut count = 0u64;
        let mut last: Option<(u8, Vec<u8>)> = None;
        loop {
            match tee.u8()? {
                TAG_RECORD => {
                    let id = tee.u8()?;
                    if Tree::from_id(id).is_none() {
                        return Err(
                            SnapshotError::Malformed(format!("unknown tree id {id}")).into()
                        );
                    }
                    let klen = read_len(&mut tee, "key")?;
                    let mut key = vec![0u8; klen as usize];
                    tee.read_exact(&mut key)?;
                    if let Some((last_id, last_key)) = &last {
                        if (*last_id, last_key.as_slice()) >= (id, key.as_slice()) {
                            return Err(SnapshotError::Malformed(
                                "records are not in (tree, key) order".into(),
                            )
                            .into());
                        }
                    }
                    let vlen = read_len(&mut tee, "value")?;
                    tee.skip(u64::from(vlen))?;
                    last = Some((id, key));
                    count += 1;
                }
                TAG_END => {
                    let declared = tee.u64()?;
                    let computed = tee.hasher.clone().finalize();
                    let mut crc = [0u8; 4];
                    tee.read_exact(&mut crc)?;
                    let stored = u32::from_be_bytes(crc);
                    if stored != computed {
                        return Err(SnapshotError::ChecksumMismatch { stored, computed }.into());
                    }
                    if declared != count {
                        return Err(SnapshotError::Malformed(format!(
                            "trailer declares {declared} records, found {count}"
                        ))
                        .into());
                    }
                    if !tee.at_eof()? {
                        return Err(SnapshotError::Malformed(
                            "trailing bytes after the trailer".into(),
                        )
                        .into());
                    }
                    break;
                }
                tag => {
                    return Err(
                        SnapshotError::Malformed(format!("unknown record tag {tag:#04x}")).into(),
                    )
                }
            }
        }
        Ok((tee.spool, count, tee.bytes))
    }
}

/// Iterator over the records of a [`ValidatedSnapshot`].
pub struct SnapshotEntries {
    spool: io::BufReader<Source>,
    remaining: u64,
}

impl SnapshotEntries {
    fn read_entry(&mut self) -> io::Result<SnapshotEntry> {
        let mut head = [0u8; 6];
        self.spool.read_exact(&mut head)?;
        let tree = Tree::from_id(head[1])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "spool changed"))?;
        let klen = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
        let mut key = vec![0u8; klen];
        self.spool.read_exact(&mut key)?;
        let mut len = [0u8; 4];
        self.spool.read_exact(&mut len)?;
        let mut value = vec![0u8; u32::from_be_bytes(len) as usize];
        self.spool.read_exact(&mut value)?;
        Ok(SnapshotEntry { tree, key, value })
    }
}

impl Iterator for SnapshotEntries {
    type Item = StorageResult<SnapshotEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match self.read_entry() {
            Ok(e) => Some(Ok(e)),
            Err(e) => {
                self.remaining = 0;
                Some(Err(StorageError::io("reading snapshot spool", e)))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out).unwrap();
        w.entry(Tree::Kv, b"a", b"1").unwrap();
        w.entry(Tree::Kv, b"b", b"").unwrap();
        w.entry(Tree::Meta, b"", b"m").unwrap();
        let n = w.finish().unwrap();
        assert_eq!(n as usize, out.len());
        out
    }

    fn err(data: &[u8]) -> SnapshotError {
        match ValidatedSnapshot::read_from(&mut &data[..]) {
            Err(StorageError::Snapshot(e)) => e,
            other => panic!("expected a snapshot error, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_exact_layout() {
        let data = sample();
        // header 16 + 3 records (2+4+1+4+1, 2+4+1+4+0, 2+4+0+4+1) + trailer 13
        assert_eq!(data.len(), 16 + 12 + 11 + 11 + 13);
        let v = ValidatedSnapshot::read_from(&mut &data[..]).unwrap();
        assert_eq!(v.entry_count(), 3);
        assert_eq!(v.byte_len(), data.len() as u64);
        let entries: Vec<_> = v.entries().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(
            entries,
            vec![
                SnapshotEntry {
                    tree: Tree::Kv,
                    key: b"a".to_vec(),
                    value: b"1".to_vec()
                },
                SnapshotEntry {
                    tree: Tree::Kv,
                    key: b"b".to_vec(),
                    value: vec![]
                },
                SnapshotEntry {
                    tree: Tree::Meta,
                    key: vec![],
                    value: b"m".to_vec()
                },
            ]
        );
    }

    #[test]
    fn rejects_bad_input_with_precise_errors() {
        let data = sample();
        assert_eq!(err(b""), SnapshotError::Truncated);
        assert_eq!(err(b"garbage!garbage!"), SnapshotError::BadMagic);
        assert_eq!(err(b"RUSD"), SnapshotError::Truncated);
        for cut in [9, 16, 20, data.len() - 1] {
            assert_eq!(err(&data[..cut]), SnapshotError::Truncated, "cut at {cut}");
        }
        let mut v2 = data.clone();
        v2[11] = 2;
        assert_eq!(
            err(&v2),
            SnapshotError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        );
        let mut flipped = data.clone();
        flipped[27] ^= 0x01; // the first value byte: 16 header + tag, tree, klen(4), key, vlen(4)
        assert!(matches!(
            err(&flipped),
            SnapshotError::ChecksumMismatch { .. }
        ));
        let mut trailing = data.clone();
        trailing.push(0);
        assert!(matches!(err(&trailing), SnapshotError::Malformed(_)));
        let mut bad_tree = data.clone();
        bad_tree[17] = 9;
        assert!(matches!(err(&bad_tree), SnapshotError::Malformed(_)));
    }

    #[test]
    fn validates_and_reads_a_file_in_place() {
        let data = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        std::fs::write(&path, &data).unwrap();
        let v = ValidatedSnapshot::from_file(File::open(&path).unwrap()).unwrap();
        assert_eq!(v.entry_count(), 3);
        assert_eq!(v.byte_len(), data.len() as u64);
        let keys: Vec<_> = v
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.tree, e.key, e.value)
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                (Tree::Kv, b"a".to_vec(), b"1".to_vec()),
                (Tree::Kv, b"b".to_vec(), vec![]),
                (Tree::Meta, vec![], b"m".to_vec()),
            ]
        );
        let mut flipped = data.clone();
        flipped[27] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        match ValidatedSnapshot::from_file(File::open(&path).unwrap()) {
            Err(StorageError::Snapshot(SnapshotError::ChecksumMismatch { stored, computed })) => {
                assert_ne!(stored, computed)
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        std::fs::write(&path, &data[..data.len() - 2]).unwrap();
        match ValidatedSnapshot::from_file(File::open(&path).unwrap()) {
            Err(StorageError::Snapshot(e)) => assert_eq!(e, SnapshotError::Truncated),
            other => panic!("expected a truncated snapshot, got {other:?}"),
        }
    }

    #[test]
    fn writer_enforces_order() {
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out).unwrap();
        w.entry(Tree::Meta, b"a", b"").unwrap();
        assert!(w.entry(Tree::Kv, b"b", b"").is_err());
        assert!(w.entry(Tree::Meta, b"a", b"").is_err());
    }

    #[test]
    fn spools_large_snapshots_to_disk() {
        let big = vec![7u8; SPOOL_MEMORY_LIMIT + 10];
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out).unwrap();
        w.entry(Tree::Auth, b"k", &big).unwrap();
        w.finish().unwrap();
        let v = ValidatedSnapshot::read_from(&mut &out[..]).unwrap();
        let e: Vec<_> = v.entries().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].value.len(), big.len());
    }
}
