//! [`MemoryBackend`]: the in-memory reference implementation of [`Backend`].

mod log;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::ops::Bound;
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::backend::{Backend, KvPair};
use crate::batch::{WriteBatch, WriteOp};
use crate::config::{BackendConfig, BackendKind, Durability};
use crate::dir::{dir_size, prepare_data_dir};
use crate::error::{StorageError, StorageResult};
use crate::flusher::PeriodicTask;
use crate::keys::range_is_empty;
use crate::snapshot::ValidatedSnapshot;
use crate::tree::Tree;

use log::{Op, Paths, LOG_HEADER_LEN};
pub use log::{MEMORY_LOG_FILE, MEMORY_LOG_REWRITE_MIN};

/// File holding the persisted base image inside the data directory.
pub const MEMORY_IMAGE_FILE: &str = "memory.snapshot";

/// Buffered ops kept in memory beyond this many bytes are written (and synced) at once,
/// without waiting for the interval.
const PENDING_LIMIT: usize = 4 * 1024 * 1024;

type Trees = [BTreeMap<Vec<u8>, Vec<u8>>; 5];

/// The in-memory reference implementation of [`Backend`].
///
/// It is the executable specification of the trait: every other engine must behave like
/// it in the [conformance suite](crate::conformance). It is also a real, fast backend for
/// tests and for stores that fit in memory.
///
/// # Persistence
/// With an empty `config.path` the store is purely volatile. With a path, the content lives
/// in two files of the data directory: a base image, `memory.snapshot` ([`MEMORY_IMAGE_FILE`]),
/// and an append-only log of committed batches, `memory.wal` ([`MEMORY_LOG_FILE`]). Each
/// `put`, `delete`, `write` or batch call is encoded as operations (kind, tree, key, value);
/// the log holds records of length, CRC-32 and operations, one record holding whole batches
/// only, so a batch is atomic after a crash. The cost of persisting a write is proportional to
/// the write, not to the store:
/// * with [`Durability::Sync`], every call appends its own record and `fdatasync`s the log
///   before it returns and before the change is visible to readers;
/// * with [`Durability::Buffered`], the operations are buffered in memory (nothing reaches
///   the OS) and written as one record, then `fdatasync`ed, by a background thread every
///   `interval` when something changed, at every [`flush`](Backend::flush) and
///   [`close`](Backend::close), and by the write that would take the buffer past 4 MiB.
///   A process crash or power loss loses what was buffered, never part of a batch.
///
/// When the log grows larger than both [`MEMORY_LOG_REWRITE_MIN`] (4 MiB) and the image,
/// the next write or flush folds it into a new image and starts an empty log (so the log
/// costs at most about twice the content on disk and rewrites stay amortised O(change));
/// [`defragment`](Backend::defragment) does the same on request and
/// [`restore`](Backend::restore_from) writes the restored content as a new image directly.
/// The rewrite is crash-safe (temporary files, fsync, renames, directory fsyncs, and a
/// generation number in both files so a log is only ever replayed over its own image); the
/// steps and what recovery does after a crash between any two of them are listed in the
/// source of the `log` module.
///
/// Opening loads the image and replays the log. Only the last record can be torn (each
/// record is synced before the next is written): a short or checksum-failing record at the
/// end is truncated away; a damaged record followed by a valid one is
/// [`StorageError::Corruption`] and the files are left untouched.
///
/// If a log append fails the log is cut back to its last good record and the call fails
/// without effect. If that cut, or the second half of a rewrite, fails, every later write
/// and flush fails until the store is reopened (recovery sorts the files out).
#[derive(Debug)]
pub struct MemoryBackend {
    config: BackendConfig,
    /// `None` once closed.
    state: RwLock<Option<Trees>>,
    /// `None` for a volatile store. Writers take this lock before `state`.
    disk: Option<Mutex<Disk>>,
    flusher: Mutex<Option<PeriodicTask>>,
}

/// The persisted side of a path-backed store.
#[derive(Debug)]
struct Disk {
    paths: Paths,
    /// The log, opened for appending.
    log: File,
    generation: u64,
    log_len: u64,
    image_len: u64,
    /// Encoded operations not yet in the log (buffered durability).
    pending: Vec<u8>,
    /// Why writes are refused until reopening.
    broken: Option<String>,
    rewrite_min: u64,
}

impl Disk {
    /// Opens (recovering) or creates the files of `dir`.
    fn open(paths: Paths) -> StorageResult<(Disk, Trees)> {
        paths.remove_temporaries()?;
        let image = match paths.image.try_exists() {
            Ok(true) => Some(log::read_image(&paths.image)?),
            Ok(false) => None,
            Err(e) => return Err(StorageError::io("looking for the memory image", e)),
        };
        let log_bytes = match fs::read(&paths.log) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageError::io("reading the memory log", e)),
        };
        let corrupt =
            |what: String| StorageError::Corruption(format!("{}: {what}", paths.log.display()));
        let (generation, mut trees, image_len) = match image {
            Some(i) => i,
            None if log_bytes.is_some() => {
                return Err(corrupt(format!("the log has no image {MEMORY_IMAGE_FILE}")))
            }
            None => {
                // A new store: an empty image and log of generation 1.
                let trees = Trees::default();
                let (log, image_len) = paths.rewrite(1, &trees).map_err(|(_, e)| e)?;
                let disk = Disk::with(paths, log, 1, LOG_HEADER_LEN, image_len);
                return Ok((disk, trees));
            }
        };
        let log_len = match log_bytes {
            None => None,
            Some(bytes) => {
                let log_gen = log::parse_log_header(&bytes).map_err(corrupt)?;
                if log_gen > generation {
                    return Err(corrupt(format!(
                        "the log is of generation {log_gen}, newer than the image's {generation}"
                    )));
                }
                if log_gen < generation {
                    // A crash between the two renames of a rewrite: the image holds it all.
                    None
                } else {
                    let replayed = log::replay(&bytes, &mut trees, &paths.log)?;
                    if replayed.good_len < bytes.len() as u64 {
                        tracing::warn!(
                            log = %paths.log.display(),
                            kept = replayed.good_len,
                            dropped = bytes.len() as u64 - replayed.good_len,
                            "memory backend: truncating a torn record at the end of the log"
                        );
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&paths.log)
                            .map_err(|e| StorageError::io("opening the memory log", e))?;
                        f.set_len(replayed.good_len)
                            .and_then(|()| f.sync_all())
                            .map_err(|e| StorageError::io("truncating the memory log", e))?;
                    }
                    Some(replayed.good_len)
                }
            }
        };
        let (log, log_len) = match log_len {
            Some(len) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&paths.log)
                    .map_err(|e| StorageError::io("opening the memory log", e))?;
                (f, len)
            }
            None => (paths.install_empty_log(generation)?, LOG_HEADER_LEN),
        };
        Ok((
            Disk::with(paths, log, generation, log_len, image_len),
            trees,
        ))
    }

    fn with(paths: Paths, log: File, generation: u64, log_len: u64, image_len: u64) -> Disk {
        Disk {
            paths,
            log,
            generation,
            log_len,
            image_len,
            pending: Vec::new(),
            broken: None,
            rewrite_min: MEMORY_LOG_REWRITE_MIN,
        }
    }

    fn check(&self) -> StorageResult<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(StorageError::io(
                "writing the memory log (reopen the store to recover)",
                std::io::Error::other(why.clone()),
            )),
        }
    }

    /// Appends one record holding `payload` and syncs it. On failure the log is cut back.
    fn append(&mut self, payload: &[u8]) -> StorageResult<()> {
        let record = log::frame(payload)?;
        let result = self
            .log
            .write_all(&record)
            .and_then(|()| self.log.sync_data());
        match result {
            Ok(()) => {
                self.log_len += record.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut back, and put the cursor back too (a rewrite's log is not in append mode).
                let len = self.log_len;
                if let Err(cut) = self
                    .log
                    .set_len(len)
                    .and_then(|()| self.log.seek(SeekFrom::Start(len)))
                    .and_then(|_| self.log.sync_data())
                {
                    self.broken = Some(format!(
                        "a failed append could not be cut back from the log: {cut}"
                    ));
                }
                Err(StorageError::io("appending to the memory log", e))
            }
        }
    }

    /// Writes the buffered operations as one record.
    fn flush_pending(&mut self) -> StorageResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        match self.append(&pending) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.pending = pending;
                Err(e)
            }
        }
    }

    /// Folds the log into a new image of `trees` (which must hold everything logged or
    /// buffered). On error, whether the new image was committed.
    fn rewrite(&mut self, trees: &Trees) -> Result<(), (bool, StorageError)> {
        let next = self.generation + 1;
        match self.paths.rewrite(next, trees) {
            Ok((log, image_len)) => {
                self.log = log;
                self.generation = next;
                self.log_len = LOG_HEADER_LEN;
                self.image_len = image_len;
                self.pending.clear();
                Ok(())
            }
            Err((committed, e)) => {
                if committed {
                    self.generation = next;
                    self.pending.clear();
                    self.broken = Some(format!("a rewrite failed after its commit point: {e}"));
                }
                Err((committed, e))
            }
        }
    }

    fn rewrite_due(&self) -> bool {
        self.log_len > self.rewrite_min.max(self.image_len)
    }
}

impl MemoryBackend {
    /// A volatile store (no path, nothing persisted).
    pub fn volatile() -> Arc<Self> {
        Arc::new(MemoryBackend {
            config: BackendConfig::new(""),
            state: RwLock::new(Some(Trees::default())),
            disk: None,
            flusher: Mutex::new(None),
        })
    }

    fn with_trees<T>(&self, f: impl FnOnce(&Trees) -> T) -> StorageResult<T> {
        let guard = self.state.read();
        guard.as_ref().map(f).ok_or(StorageError::Closed)
    }

    /// Logs and applies one atomic group of operations.
    fn commit(&self, ops: &[Op<'_>]) -> StorageResult<()> {
        let Some(disk) = &self.disk else {
            let mut guard = self.state.write();
            let trees = guard.as_mut().ok_or(StorageError::Closed)?;
            ops.iter().for_each(|op| op.apply(trees));
            return Ok(());
        };
        let mut d = disk.lock();
        self.with_trees(|_| ())?;
        d.check()?;
        let mut encoded = Vec::new();
        log::encode_ops(&mut encoded, ops)?;
        // A record must be able to hold it (checked here so a buffered write cannot fail later).
        log::len32(encoded.len(), "batch")?;
        match self.config.durability {
            Durability::Sync => d.append(&encoded)?,
            Durability::Buffered { .. } => {
                if d.pending.len() + encoded.len() > PENDING_LIMIT {
                    d.flush_pending()?;
                }
                if d.pending.is_empty() {
                    d.pending = encoded;
                } else {
                    d.pending.extend_from_slice(&encoded);
                }
            }
        }
        {
            let mut guard = self.state.write();
            let trees = guard.as_mut().ok_or(StorageError::Closed)?;
            ops.iter().for_each(|op| op.apply(trees));
        }
        self.rewrite_if_due(&mut d);
        Ok(())
    }

    /// Folds the log into a new image when it has grown too large. The writes it holds are
    /// already durable, so a failure is only reported in the log (and, past the commit point,
    /// makes later writes fail).
    fn rewrite_if_due(&self, d: &mut Disk) {
        if !d.rewrite_due() {
            return;
        }
        let guard = self.state.read();
        let Some(trees) = guard.as_ref() else {
            return;
        };
        if let Err((_, e)) = d.rewrite(trees) {
            tracing::warn!(error = %e, "memory backend: rewriting the image failed");
        }
    }

    /// Writes the buffered operations to the log (buffered durability) and syncs them.
    fn persist(&self) -> StorageResult<()> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let mut d = disk.lock();
        if d.pending.is_empty() {
            return Ok(());
        }
        d.check()?;
        d.flush_pending()?;
        self.rewrite_if_due(&mut d);
        Ok(())
    }

    #[cfg(test)]
    fn set_rewrite_min(&self, bytes: u64) {
        if let Some(d) = &self.disk {
            d.lock().rewrite_min = bytes;
        }
    }
}

impl Backend for MemoryBackend {
    const KIND: BackendKind = BackendKind::Memory;

    fn new(config: BackendConfig) -> StorageResult<Arc<Self>> {
        if config.path.as_os_str().is_empty() {
            return Ok(Arc::new(MemoryBackend {
                config,
                state: RwLock::new(Some(Trees::default())),
                disk: None,
                flusher: Mutex::new(None),
            }));
        }
        prepare_data_dir(&config.path, "memory")?;
        let (disk, trees) = Disk::open(Paths::new(&config.path))?;
        let interval = match config.durability {
            Durability::Buffered { interval } => Some(interval),
            Durability::Sync => None,
        };
        let backend = Arc::new(MemoryBackend {
            config,
            state: RwLock::new(Some(trees)),
            disk: Some(Mutex::new(disk)),
            flusher: Mutex::new(None),
        });
        if let Some(interval) = interval {
            let weak: Weak<MemoryBackend> = Arc::downgrade(&backend);
            let task = PeriodicTask::spawn("rusd-memory-flush", interval, move || {
                let Some(b) = weak.upgrade() else {
                    return false;
                };
                match b.persist() {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "memory backend: background flush failed");
                        true
                    }
                }
            })
            .map_err(|e| StorageError::io("starting the flush thread", e))?;
            *backend.flusher.lock() = Some(task);
        }
        Ok(backend)
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.commit(&[Op::Put(tree, key, value)])
    }

    fn get(&self, tree: Tree, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.with_trees(|t| t[tree.id() as usize].get(key).cloned())
    }

    /// Every key under one read lock of the maps.
    fn get_many(&self, tree: Tree, keys: &[&[u8]]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        self.with_trees(|t| {
            let map = &t[tree.id() as usize];
            keys.iter().map(|key| map.get(*key).cloned()).collect()
        })
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> StorageResult<()> {
        self.commit(&[Op::Delete(tree, key)])
    }

    fn write(&self, batch: &WriteBatch) -> StorageResult<()> {
        if batch.is_empty() {
            return self.with_trees(|_| ());
        }
        let ops: Vec<Op<'_>> = batch
            .ops()
            .iter()
            .map(|op| match op {
                WriteOp::Put { tree, key, value } => Op::Put(*tree, key, value),
                WriteOp::Delete { tree, key } => Op::Delete(*tree, key),
            })
            .collect();
        self.commit(&ops)
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> StorageResult<Vec<KvPair>> {
        self.with_trees(|t| {
            if range_is_empty(start, end) {
                return Vec::new();
            }
            let upper = if end.is_empty() {
                Bound::Unbounded
            } else {
                Bound::Excluded(end)
            };
            let iter = t[tree.id() as usize]
                .range::<[u8], _>((Bound::Included(start), upper))
                .map(|(k, v)| (k.clone(), v.clone()));
            if limit == 0 {
                iter.collect()
            } else {
                iter.take(limit).collect()
            }
        })
    }

    fn snapshot_to(&self, writer: &mut dyn Write) -> StorageResult<u64> {
        let guard = self.state.read();
        let trees = guard.as_ref().ok_or(StorageError::Closed)?;
        log::write_snapshot(trees, writer)
    }

    /// Replaces the maps; on a path, writes the restored content as a new image (with an
    /// empty log) before it becomes visible, so the restore is all-or-nothing after a crash.
    fn restore_validated(&self, snapshot: ValidatedSnapshot) -> StorageResult<()> {
        self.with_trees(|_| ())?;
        let mut fresh = Trees::default();
        for entry in snapshot.entries()? {
            let entry = entry?;
            fresh[entry.tree.id() as usize].insert(entry.key, entry.value);
        }
        let Some(disk) = &self.disk else {
            let mut guard = self.state.write();
            let trees = guard.as_mut().ok_or(StorageError::Closed)?;
            *trees = fresh;
            return Ok(());
        };
        let mut d = disk.lock();
        self.with_trees(|_| ())?;
        d.check()?;
        let result = d.rewrite(&fresh);
        let committed = match &result {
            Ok(()) => true,
            Err((committed, _)) => *committed,
        };
        if committed {
            let mut guard = self.state.write();
            let trees = guard.as_mut().ok_or(StorageError::Closed)?;
            *trees = fresh;
        }
        result.map_err(|(_, e)| e)
    }

    /// No-op: the MVCC layer's deletions already freed the memory.
    fn compact(&self, _revision: i64) -> StorageResult<()> {
        self.with_trees(|_| ())
    }

    /// Size of the data directory (image, log and marker; 0 when volatile).
    fn size(&self) -> StorageResult<u64> {
        self.with_trees(|_| ())?;
        match &self.disk {
            Some(_) => dir_size(&self.config.path),
            None => Ok(0),
        }
    }

    /// On a path, folds the log into a new image (durable on return) when the log holds
    /// anything; the maps themselves hold no free space.
    fn defragment(&self) -> StorageResult<()> {
        self.with_trees(|_| ())?;
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let mut d = disk.lock();
        d.check()?;
        if d.log_len == LOG_HEADER_LEN && d.pending.is_empty() {
            return Ok(());
        }
        let guard = self.state.read();
        let trees = guard.as_ref().ok_or(StorageError::Closed)?;
        d.rewrite(trees).map_err(|(_, e)| e)
    }

    fn flush(&self) -> StorageResult<()> {
        self.with_trees(|_| ())?;
        self.persist()
    }

    fn is_closed(&self) -> bool {
        self.state.read().is_none()
    }

    fn durability(&self) -> Durability {
        self.config.durability
    }

    fn close(&self) -> StorageResult<()> {
        self.with_trees(|_| ())?;
        if let Some(mut task) = self.flusher.lock().take() {
            task.stop();
        }
        let Some(disk) = &self.disk else {
            *self.state.write() = None;
            return Ok(());
        };
        // Under the log lock, so no write slips in between the last flush and the close.
        let mut d = disk.lock();
        let result = if d.pending.is_empty() {
            Ok(())
        } else {
            d.check().and_then(|()| d.flush_pending())
        };
        *self.state.write() = None;
        result
    }
}

impl Drop for MemoryBackend {
    fn drop(&mut self) {
        if self.state.get_mut().is_some() {
            if let Err(e) = self.persist() {
                tracing::warn!(error = %e, "memory backend: flushing on drop failed");
            }
        }
    }
}
