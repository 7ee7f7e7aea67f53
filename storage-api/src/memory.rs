//! [`MemoryBackend`]: the in-memory reference implementation of [`Backend`].

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::backend::{Backend, KvPair};
use crate::batch::{WriteBatch, WriteOp};
use crate::config::{BackendConfig, BackendKind, Durability};
use crate::dir::{dir_size, prepare_data_dir};
use crate::error::{StorageError, StorageResult};
use crate::flusher::PeriodicTask;
use crate::keys::range_is_empty;
use crate::snapshot::{SnapshotWriter, ValidatedSnapshot};
use crate::tree::Tree;

/// File holding the persisted image inside the data directory.
pub const MEMORY_IMAGE_FILE: &str = "memory.snapshot";

type Trees = [BTreeMap<Vec<u8>, Vec<u8>>; 5];

/// The in-memory reference implementation of [`Backend`].
///
/// It is the executable specification of the trait: every other engine must behave like
/// it in the [conformance suite](crate::conformance). It is also a real, fast backend for
/// tests and for stores that fit in memory.
///
/// # Persistence
/// With an empty `config.path` the store is purely volatile. With a path, the content is
/// loaded from `<path>/memory.snapshot` on open and written back (as a portable snapshot,
/// atomically: temporary file, fsync, rename, directory fsync):
/// * with [`Durability::Sync`], after every write (cost proportional to the store size:
///   meant for small stores and tests);
/// * with [`Durability::Buffered`], by a background thread at most every `interval` when
///   something changed, and at every [`flush`](Backend::flush) and [`close`](Backend::close).
#[derive(Debug)]
pub struct MemoryBackend {
    config: BackendConfig,
    image: Option<PathBuf>,
    /// `None` once closed.
    state: RwLock<Option<Trees>>,
    dirty: AtomicBool,
    /// Serialises writers of the image file.
    persist_lock: Mutex<()>,
    flusher: Mutex<Option<PeriodicTask>>,
}

impl MemoryBackend {
    /// A volatile store (no path, nothing persisted).
    pub fn volatile() -> Arc<Self> {
        Arc::new(Self::build(BackendConfig::new(""), None, Trees::default()))
    }

    fn build(config: BackendConfig, image: Option<PathBuf>, trees: Trees) -> Self {
        MemoryBackend {
            config,
            image,
            state: RwLock::new(Some(trees)),
            dirty: AtomicBool::new(false),
            persist_lock: Mutex::new(()),
            flusher: Mutex::new(None),
        }
    }

    fn load(image: &Path) -> StorageResult<Trees> {
        let mut trees = Trees::default();
        let file = match fs::File::open(image) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(trees),
            Err(e) => return Err(StorageError::io(format!("opening {}", image.display()), e)),
        };
        let mut reader = std::io::BufReader::new(file);
        let snap = ValidatedSnapshot::read_from(&mut reader).map_err(|e| match e {
            StorageError::Snapshot(s) => {
                StorageError::Corruption(format!("{} is damaged: {s}", image.display()))
            }
            other => other,
        })?;
        for entry in snap.entries()? {
            let entry = entry?;
            trees[entry.tree.id() as usize].insert(entry.key, entry.value);
        }
        Ok(trees)
    }

    fn with_trees<T>(&self, f: impl FnOnce(&Trees) -> T) -> StorageResult<T> {
        let guard = self.state.read();
        guard.as_ref().map(f).ok_or(StorageError::Closed)
    }

    fn mutate(&self, f: impl FnOnce(&mut Trees)) -> StorageResult<()> {
        {
            let mut guard = self.state.write();
            let trees = guard.as_mut().ok_or(StorageError::Closed)?;
            f(trees);
            self.dirty.store(true, Ordering::Release);
        }
        if self.config.durability == Durability::Sync {
            self.persist()?;
        }
        Ok(())
    }

    /// Writes the image if there is a path and something changed since the last write.
    fn persist(&self) -> StorageResult<()> {
        let Some(image) = &self.image else {
            return Ok(());
        };
        let _serial = self.persist_lock.lock();
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result = (|| {
            let tmp = image.with_extension("snapshot.tmp");
            let file = fs::File::create(&tmp).map_err(|e| StorageError::io("creating image", e))?;
            let mut out = BufWriter::new(file);
            self.snapshot_to(&mut out)?;
            let file = out
                .into_inner()
                .map_err(|e| StorageError::io("writing image", e.into_error()))?;
            file.sync_all()
                .map_err(|e| StorageError::io("syncing image", e))?;
            fs::rename(&tmp, image).map_err(|e| StorageError::io("renaming image", e))?;
            if let Some(dir) = image.parent() {
                fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| StorageError::io("syncing data directory", e))?;
            }
            Ok(())
        })();
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}

impl Backend for MemoryBackend {
    const KIND: BackendKind = BackendKind::Memory;

    fn new(config: BackendConfig) -> StorageResult<Arc<Self>> {
        if config.path.as_os_str().is_empty() {
            return Ok(Arc::new(Self::build(config, None, Trees::default())));
        }
        prepare_data_dir(&config.path, "memory")?;
        let image = config.path.join(MEMORY_IMAGE_FILE);
        let trees = Self::load(&image)?;
        let interval = match config.durability {
            Durability::Buffered { interval } => Some(interval),
            Durability::Sync => None,
        };
        let backend = Arc::new(Self::build(config, Some(image), trees));
        if let Some(interval) = interval {
            let weak: Weak<MemoryBackend> = Arc::downgrade(&backend);
            let task = PeriodicTask::spawn("rusd-memory-flush", interval, move || {
                let Some(b) = weak.upgrade() else {
                    return false;
                };
                match b.persist() {
                    Ok(()) => true,
                    Err(StorageError::Closed) => false,
                    Err(e) => {
                        tracing::warn!(error = %e, "memory backend: background persist failed");
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
        self.mutate(|t| {
            t[tree.id() as usize].insert(key.to_vec(), value.to_vec());
        })
    }

    fn get(&self, tree: Tree, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.with_trees(|t| t[tree.id() as usize].get(key).cloned())
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> StorageResult<()> {
        self.mutate(|t| {
            t[tree.id() as usize].remove(key);
        })
    }

    fn write(&self, batch: &WriteBatch) -> StorageResult<()> {
        if batch.is_empty() {
            return self.with_trees(|_| ());
        }
        self.mutate(|t| {
            for op in batch.ops() {
                match op {
                    WriteOp::Put { tree, key, value } => {
                        t[tree.id() as usize].insert(key.clone(), value.clone());
                    }
                    WriteOp::Delete { tree, key } => {
                        t[tree.id() as usize].remove(key);
                    }
                }
            }
        })
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
        let mut w = SnapshotWriter::new(writer)?;
        for tree in Tree::ALL {
            for (k, v) in &trees[tree.id() as usize] {
                w.entry(tree, k, v)?;
            }
        }
        w.finish()
    }

    fn restore_validated(&self, snapshot: ValidatedSnapshot) -> StorageResult<()> {
        self.with_trees(|_| ())?;
        let mut fresh = Trees::default();
        for entry in snapshot.entries()? {
            let entry = entry?;
            fresh[entry.tree.id() as usize].insert(entry.key, entry.value);
        }
        self.mutate(|t| *t = fresh)
    }

    /// No-op: the MVCC layer's deletions already freed the memory.
    fn compact(&self, _revision: i64) -> StorageResult<()> {
        self.with_trees(|_| ())
    }

    /// Size of the persisted image (0 when volatile).
    fn size(&self) -> StorageResult<u64> {
        self.with_trees(|_| ())?;
        match &self.image {
            Some(_) => dir_size(&self.config.path),
            None => Ok(0),
        }
    }

    /// No-op: maps hold no free space.
    fn defragment(&self) -> StorageResult<()> {
        self.with_trees(|_| ())
    }

    fn flush(&self) -> StorageResult<()> {
        self.with_trees(|_| ())?;
        self.persist()
    }

    fn is_closed(&self) -> bool {
        self.state.read().is_none()
    }

    fn close(&self) -> StorageResult<()> {
        self.with_trees(|_| ())?;
        if let Some(mut task) = self.flusher.lock().take() {
            task.stop();
        }
        let result = self.persist();
        *self.state.write() = None;
        result
    }
}

impl Drop for MemoryBackend {
    fn drop(&mut self) {
        if self.state.get_mut().is_some() {
            if let Err(e) = self.persist() {
                tracing::warn!(error = %e, "memory backend: persisting on drop failed");
            }
        }
    }
}
