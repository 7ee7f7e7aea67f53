//! On-disk layout of a path-backed [`MemoryBackend`](super::MemoryBackend): the base image,
//! the append-only log of committed batches, and the crash-safe rewrite that folds the log
//! into a new image.
//!
//! # Files
//! ```text
//! memory.snapshot := "RUSDMIMG" | generation: u64 | portable snapshot (crate::snapshot)
//! memory.wal      := header record*
//! header          := "RUSDMLOG" | version: u32 (= 1) | generation: u64 | crc32 of the 20 bytes before: u32
//! record          := payload length: u32 | crc32 of (length bytes ++ payload): u32 | payload
//! payload         := op*            (the ops of one or more whole batches, in commit order)
//! op              := 0x01 | tree id: u8 | key length: u32 | key | value length: u32 | value   (put)
//!                  | 0x02 | tree id: u8 | key length: u32 | key                               (delete)
//! ```
//! Integers are big-endian. An image that starts with the bare snapshot magic `RUSDSNAP` (the
//! layout before the log existed) is read as generation 0.
//!
//! # Ordering rules
//! * Every record is `fdatasync`ed before the next one is written, so after a crash only the
//!   last record can be torn. Recovery stops at the first record that is short or fails its
//!   checksum: if it is the tail (nothing valid follows it) it is truncated away; if a valid
//!   record follows it, synced data was damaged and opening fails with
//!   [`StorageError::Corruption`], leaving the files untouched.
//! * The log is replayed only over the image of the same generation. Replaying puts and
//!   deletes is idempotent over an image that already contains them, and the generation makes
//!   recovery never replay a log over an image it does not belong to.
//!
//! # Rewrite (generation `g` to `g + 1`)
//! 1. write `memory.snapshot.tmp` (generation `g + 1`, the current content), fsync;
//! 2. write `memory.wal.tmp` (an empty log of generation `g + 1`), fsync;
//! 3. rename `memory.snapshot.tmp` to `memory.snapshot` (the commit point), fsync the directory;
//! 4. rename `memory.wal.tmp` to `memory.wal`, fsync the directory.
//!
//! What recovery finds after a crash:
//! * before 3: the old image and log (generation `g`), plus temporary files it deletes: the
//!   content is the old image plus the old log;
//! * between 3 and 4: the new image (`g + 1`) and the old log (`g`): the log is older than the
//!   image, which already contains all of it, so it is discarded and an empty log of generation
//!   `g + 1` is installed the same way (temporary file, fsync, rename, directory fsync);
//! * after 4: the new image and its empty log.
//!
//! A log *newer* than the image cannot be produced by these steps and is
//! [`StorageError::Corruption`].

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{StorageError, StorageResult};
use crate::snapshot::{SnapshotWriter, ValidatedSnapshot, MAGIC as SNAPSHOT_MAGIC};
use crate::tree::Tree;

use super::Trees;

/// File holding the append-only log inside the data directory.
pub const MEMORY_LOG_FILE: &str = "memory.wal";
/// The log is folded into a new image once it is larger than this and than the image.
pub const MEMORY_LOG_REWRITE_MIN: u64 = 4 * 1024 * 1024;

const IMAGE_MAGIC: [u8; 8] = *b"RUSDMIMG";
const LOG_MAGIC: [u8; 8] = *b"RUSDMLOG";
const LOG_VERSION: u32 = 1;
pub(super) const LOG_HEADER_LEN: u64 = 24;
pub(super) const IMAGE_HEADER_LEN: u64 = 16;
const RECORD_HEADER_LEN: usize = 8;
const OP_PUT: u8 = 0x01;
const OP_DELETE: u8 = 0x02;

/// One operation to log and apply, borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op<'a> {
    Put(Tree, &'a [u8], &'a [u8]),
    Delete(Tree, &'a [u8]),
}

impl Op<'_> {
    pub(super) fn apply(self, trees: &mut Trees) {
        match self {
            Op::Put(tree, k, v) => {
                trees[tree.id() as usize].insert(k.to_vec(), v.to_vec());
            }
            Op::Delete(tree, k) => {
                trees[tree.id() as usize].remove(k);
            }
        }
    }
}

pub(super) fn len32(n: usize, what: &str) -> StorageResult<u32> {
    u32::try_from(n).map_err(|_| {
        StorageError::InvalidArgument(format!(
            "a {what} of {n} bytes exceeds the memory engine's log limit of 4 GiB"
        ))
    })
}

/// Appends the encoding of `ops` to `out` (a record payload under construction).
pub(super) fn encode_ops(out: &mut Vec<u8>, ops: &[Op<'_>]) -> StorageResult<()> {
    for op in ops {
        match *op {
            Op::Put(tree, k, v) => {
                out.extend_from_slice(&[OP_PUT, tree.id()]);
                out.extend_from_slice(&len32(k.len(), "key")?.to_be_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&len32(v.len(), "value")?.to_be_bytes());
                out.extend_from_slice(v);
            }
            Op::Delete(tree, k) => {
                out.extend_from_slice(&[OP_DELETE, tree.id()]);
                out.extend_from_slice(&len32(k.len(), "key")?.to_be_bytes());
                out.extend_from_slice(k);
            }
        }
    }
    Ok(())
}

/// Frames a payload as one record.
pub(super) fn frame(payload: &[u8]) -> StorageResult<Vec<u8>> {
    let len = len32(payload.len(), "batch")?.to_be_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Some(head)
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    take(buf, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Applies a checksummed payload; `None` when it does not decode.
fn apply_payload(trees: &mut Trees, mut p: &[u8]) -> Option<()> {
    while !p.is_empty() {
        let head = take(&mut p, 2)?;
        let tree = Tree::from_id(head[1])?;
        let klen = take_u32(&mut p)? as usize;
        let key = take(&mut p, klen)?;
        match head[0] {
            OP_PUT => {
                let vlen = take_u32(&mut p)? as usize;
                let value = take(&mut p, vlen)?;
                Op::Put(tree, key, value).apply(trees);
            }
            OP_DELETE => Op::Delete(tree, key).apply(trees),
            _ => return None,
        }
    }
    Some(())
}

/// A complete record at the start of `buf` whose checksum holds: its payload and its length.
fn valid_record(buf: &[u8]) -> Option<(&[u8], usize)> {
    let mut rest = buf;
    let len = take(&mut rest, 4)?;
    let crc = take_u32(&mut rest)?;
    let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let payload = take(&mut rest, n)?;
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    (h.finalize() == crc).then_some((payload, RECORD_HEADER_LEN + n))
}

/// How far a log replay got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replayed {
    /// Bytes of header and valid records; the file is truncated to this length.
    pub(super) good_len: u64,
    /// Records applied.
    pub(super) records: u64,
}

pub(super) fn log_header(generation: u64) -> [u8; LOG_HEADER_LEN as usize] {
    let mut h = [0u8; LOG_HEADER_LEN as usize];
    h[..8].copy_from_slice(&LOG_MAGIC);
    h[8..12].copy_from_slice(&LOG_VERSION.to_be_bytes());
    h[12..20].copy_from_slice(&generation.to_be_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..].copy_from_slice(&crc.to_be_bytes());
    h
}

/// The generation in a log header, or a description of what is wrong with it.
pub(super) fn parse_log_header(bytes: &[u8]) -> Result<u64, String> {
    let h = bytes
        .get(..LOG_HEADER_LEN as usize)
        .ok_or_else(|| format!("the log header is short ({} bytes)", bytes.len()))?;
    if h[..8] != LOG_MAGIC {
        return Err("the log has a bad magic".into());
    }
    let crc = u32::from_be_bytes([h[20], h[21], h[22], h[23]]);
    if crc32fast::hash(&h[..20]) != crc {
        return Err("the log header fails its checksum".into());
    }
    let version = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    if version != LOG_VERSION {
        return Err(format!("unsupported log version {version}"));
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&h[12..20]);
    Ok(u64::from_be_bytes(g))
}

/// Replays the records of `log` (header already checked) into `trees`.
pub(super) fn replay(log: &[u8], trees: &mut Trees, name: &Path) -> StorageResult<Replayed> {
    let mut pos = LOG_HEADER_LEN as usize;
    let mut records = 0u64;
    while pos < log.len() {
        match valid_record(&log[pos..]) {
            Some((payload, n)) => {
                apply_payload(trees, payload).ok_or_else(|| {
                    StorageError::Corruption(format!(
                        "{}: the record at byte {pos} has a valid checksum but does not decode",
                        name.display()
                    ))
                })?;
                records += 1;
                pos += n;
            }
            None => {
                // Torn tail unless a valid record follows the bad one.
                let rest = &log[pos..];
                if rest.len() >= RECORD_HEADER_LEN {
                    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    let next = RECORD_HEADER_LEN.saturating_add(n);
                    if next < rest.len() && valid_record(&rest[next..]).is_some() {
                        return Err(StorageError::Corruption(format!(
                            "{}: the record at byte {pos} is damaged and valid records follow it",
                            name.display()
                        )));
                    }
                }
                break;
            }
        }
    }
    Ok(Replayed {
        good_len: pos as u64,
        records,
    })
}

fn io(context: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let context = format!("{context} {}", path.display());
    move |e| StorageError::io(context, e)
}

pub(super) fn sync_dir(dir: &Path) -> StorageResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

/// Reads an image: its generation, content and length in bytes.
pub(super) fn read_image(path: &Path) -> StorageResult<(u64, Trees, u64)> {
    let damaged =
        |what: String| StorageError::Corruption(format!("{} is damaged: {what}", path.display()));
    let file = File::open(path).map_err(io("opening", path))?;
    let len = file
        .metadata()
        .map_err(io("reading the size of", path))?
        .len();
    let mut reader = std::io::BufReader::new(file);
    let mut magic = [0u8; 8];
    reader
        .read_exact(&mut magic)
        .map_err(|e| damaged(format!("reading its header: {e}")))?;
    let (generation, snap) = if magic == IMAGE_MAGIC {
        let mut g = [0u8; 8];
        reader
            .read_exact(&mut g)
            .map_err(|e| damaged(format!("reading its header: {e}")))?;
        (
            u64::from_be_bytes(g),
            ValidatedSnapshot::read_from(&mut reader),
        )
    } else if magic == SNAPSHOT_MAGIC {
        // Layout before the log: a bare portable snapshot, generation 0.
        let mut chained = (&magic[..]).chain(reader);
        (0, ValidatedSnapshot::read_from(&mut chained))
    } else {
        return Err(damaged("unknown magic bytes".into()));
    };
    let snap = snap.map_err(|e| match e {
        StorageError::Snapshot(s) => damaged(s.to_string()),
        other => other,
    })?;
    let mut trees = Trees::default();
    for entry in snap.entries()? {
        let entry = entry?;
        trees[entry.tree.id() as usize].insert(entry.key, entry.value);
    }
    Ok((generation, trees, len))
}

/// The paths of a data directory.
#[derive(Debug, Clone)]
pub(super) struct Paths {
    pub(super) dir: PathBuf,
    pub(super) image: PathBuf,
    pub(super) log: PathBuf,
    pub(super) image_tmp: PathBuf,
    pub(super) log_tmp: PathBuf,
}

impl Paths {
    pub(super) fn new(dir: &Path) -> Self {
        Paths {
            dir: dir.to_path_buf(),
            image: dir.join(super::MEMORY_IMAGE_FILE),
            log: dir.join(MEMORY_LOG_FILE),
            image_tmp: dir.join(format!("{}.tmp", super::MEMORY_IMAGE_FILE)),
            log_tmp: dir.join(format!("{MEMORY_LOG_FILE}.tmp")),
        }
    }

    /// Removes temporary files a crash during a rewrite left behind.
    pub(super) fn remove_temporaries(&self) -> StorageResult<()> {
        for tmp in [&self.image_tmp, &self.log_tmp] {
            match fs::remove_file(tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", tmp)(e)),
            }
        }
        Ok(())
    }

    /// Writes and syncs an empty log of `generation` to the temporary name, open for appending.
    fn empty_log_tmp(&self, generation: u64) -> StorageResult<File> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&self.log_tmp)
            .map_err(io("creating", &self.log_tmp))?;
        file.write_all(&log_header(generation))
            .map_err(io("writing", &self.log_tmp))?;
        file.sync_all().map_err(io("syncing", &self.log_tmp))?;
        Ok(file)
    }

    /// Installs an empty log of `generation` (temporary file, fsync, rename, directory fsync).
    /// The returned handle appends to `memory.wal`.
    pub(super) fn install_empty_log(&self, generation: u64) -> StorageResult<File> {
        let file = self.empty_log_tmp(generation)?;
        fs::rename(&self.log_tmp, &self.log).map_err(io("renaming", &self.log_tmp))?;
        sync_dir(&self.dir)?;
        Ok(file)
    }

    /// The rewrite of the module documentation: a new image of `trees` at `generation` and an
    /// empty log. Returns the log handle and the image length; on error, whether the new image
    /// was already committed (renamed into place).
    pub(super) fn rewrite(
        &self,
        generation: u64,
        trees: &Trees,
    ) -> Result<(File, u64), (bool, StorageError)> {
        let staged = (|| {
            let image_len = self.write_image_tmp(generation, trees)?;
            let log = self.empty_log_tmp(generation)?;
            fs::rename(&self.image_tmp, &self.image).map_err(io("renaming", &self.image_tmp))?;
            Ok((log, image_len))
        })();
        let (log, image_len) = match staged {
            Ok(v) => v,
            Err(e) => {
                if let Err(cleanup) = self.remove_temporaries() {
                    tracing::warn!(error = %cleanup, "memory backend: removing temporary files");
                }
                return Err((false, e));
            }
        };
        let installed = (|| {
            sync_dir(&self.dir)?;
            fs::rename(&self.log_tmp, &self.log).map_err(io("renaming", &self.log_tmp))?;
            sync_dir(&self.dir)
        })();
        match installed {
            Ok(()) => Ok((log, image_len)),
            Err(e) => Err((true, e)),
        }
    }

    fn write_image_tmp(&self, generation: u64, trees: &Trees) -> StorageResult<u64> {
        let file = File::create(&self.image_tmp).map_err(io("creating", &self.image_tmp))?;
        let mut out = BufWriter::new(file);
        out.write_all(&IMAGE_MAGIC)
            .and_then(|()| out.write_all(&generation.to_be_bytes()))
            .map_err(io("writing", &self.image_tmp))?;
        let body = write_snapshot(trees, &mut out)?;
        let file = out
            .into_inner()
            .map_err(|e| io("writing", &self.image_tmp)(e.into_error()))?;
        file.sync_all().map_err(io("syncing", &self.image_tmp))?;
        Ok(IMAGE_HEADER_LEN + body)
    }
}

/// Streams `trees` as a portable snapshot.
pub(super) fn write_snapshot(trees: &Trees, out: &mut dyn Write) -> StorageResult<u64> {
    let mut w = SnapshotWriter::new(out)?;
    for tree in Tree::ALL {
        for (k, v) in &trees[tree.id() as usize] {
            w.entry(tree, k, v)?;
        }
    }
    w.finish()
}
