//! # backend-rocksdb
//!
//! [`RocksdbBackend`]: the [`storage_api::Backend`] trait on RocksDB (the bundled
//! library of the `rocksdb` 0.24 crate).
//!
//! # Layout
//! The data directory `config.path` holds the rusd engine marker
//! ([`storage_api::dir::MARKER_FILE`], naming `rocksdb`) and the RocksDB database in the
//! sub-directory [`DB_DIR`]. Each [`Tree`] is one column family named [`Tree::name`]
//! (`kv`, `index`, `meta`, `lease`, `auth`); RocksDB's own `default` column family
//! exists too but holds nothing.
//!
//! # Guarantees
//! * **Atomicity**: every mutating call ([`put`](Backend::put), [`delete`](Backend::delete),
//!   [`write`](Backend::write), [`batch_put`](Backend::batch_put),
//!   [`batch_delete`](Backend::batch_delete), [`restore_from`](Backend::restore_from)) is
//!   one RocksDB `WriteBatch`, i.e. one write-ahead-log record: all or nothing, across
//!   trees, to concurrent readers and after a crash.
//! * **Durability**: with [`Durability::Sync`] every write is committed with
//!   `WriteOptions::sync = true` (the WAL is fsynced before the call returns). With
//!   [`Durability::Buffered`] writes use `sync = false` (the WAL record reaches the OS
//!   before the call returns, so a process crash loses nothing) and a background thread
//!   fsyncs the WAL (`flush_wal(true)`) every `interval`, so an OS crash or power loss
//!   loses at most the last interval. [`flush`](Backend::flush) fsyncs the WAL too.
//! * **Snapshots** use a RocksDB snapshot (one sequence number for all column families),
//!   so an image is consistent across trees while writes continue.
//! * **Memory** is bounded by `config.cache_size_mb`: one LRU block cache of that size
//!   is shared by every column family (index and filter blocks are cached in it too),
//!   and a write-buffer manager limited to half of it, whose memtable memory is charged
//!   to the same cache, is shared by every column family. See [`MemoryStats`].
//!
//! # Concurrency
//! All calls may be made from many threads. Reads, writes and snapshots run in parallel
//! (RocksDB serialises and group-commits writes itself); [`restore_from`](Backend::restore_from)
//! and [`close`](Backend::close) are exclusive.
#![deny(missing_docs)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use rocksdb::{
    properties, BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily,
    ColumnFamilyDescriptor, CompactOptions, DBCompressionType, FlushOptions, Options, ReadOptions,
    WriteBufferManager, WriteOptions, DB,
};
use storage_api::dir::{dir_size, prepare_data_dir};
use storage_api::flusher::PeriodicTask;
use storage_api::keys::range_is_empty;
use storage_api::snapshot::{SnapshotWriter, ValidatedSnapshot};
use storage_api::{
    Backend, BackendConfig, BackendKind, Durability, KvPair, StorageError, StorageResult, Tree,
    WriteBatch, WriteOp,
};

/// Name of the RocksDB database directory inside `config.path`.
pub const DB_DIR: &str = "rocksdb";

/// Engine name used in the data-directory marker and in [`StorageError::Engine`].
const ENGINE: &str = "rocksdb";

/// Upper bound of one column family's memtable (RocksDB's default).
const MAX_WRITE_BUFFER: usize = 64 * 1024 * 1024;
/// Lower bound of one column family's memtable.
const MIN_WRITE_BUFFER: usize = 64 * 1024;

fn engine_err(context: impl Into<String>, err: rocksdb::Error) -> StorageError {
    StorageError::engine(ENGINE, context, err)
}

/// Memory accounting of an open [`RocksdbBackend`], as reported by RocksDB itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Capacity in bytes of the block cache used by each tree's column family, in
    /// [`Tree::ALL`] order (RocksDB property `rocksdb.block-cache-capacity`). Every entry
    /// equals `config.cache_size_bytes()`: the trees share one cache.
    pub block_cache_capacity: [u64; 5],
    /// Bytes currently charged to the shared block cache: cached data, index and filter
    /// blocks plus the memtable memory reserved by the write-buffer manager.
    pub block_cache_usage: u64,
    /// Memtable limit of the shared write-buffer manager: half the cache budget.
    pub write_buffer_limit: u64,
    /// Memtable bytes currently accounted by the write-buffer manager (all trees).
    pub write_buffer_usage: u64,
}

/// The open engine; dropped by [`Backend::close`].
struct Inner {
    db: DB,
    write_opts: WriteOptions,
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl Inner {
    fn cf(&self, tree: Tree) -> StorageResult<&ColumnFamily> {
        self.db.cf_handle(tree.name()).ok_or_else(|| {
            StorageError::Corruption(format!("column family {:?} is missing", tree.name()))
        })
    }

    fn flush_wal(&self) -> StorageResult<()> {
        self.db
            .flush_wal(true)
            .map_err(|e| engine_err("syncing the write-ahead log", e))
    }

    /// Turns every memtable into SST files (waiting for it), so no live data needs the WAL.
    fn flush_memtables(&self, trees: &[Tree]) -> StorageResult<()> {
        let cfs = trees
            .iter()
            .map(|t| self.cf(*t))
            .collect::<StorageResult<Vec<_>>>()?;
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        self.db
            .flush_cfs_opt(&cfs, &fo)
            .map_err(|e| engine_err("flushing memtables", e))
    }
}

/// State shared with the background WAL flusher (which holds only a [`Weak`] to it).
struct Shared {
    /// `None` once closed.
    state: RwLock<Option<Inner>>,
    /// Successful background WAL syncs.
    background_syncs: AtomicU64,
}

/// A [`Backend`] on RocksDB. See the [crate docs](crate) for the layout and guarantees.
///
/// Opened with [`Backend::new`]; all methods take `&self` and may be called from many
/// threads. Dropping it without [`close`](Backend::close) stops the flusher and syncs
/// the WAL on a best-effort basis.
pub struct RocksdbBackend {
    config: BackendConfig,
    shared: Arc<Shared>,
    flusher: Mutex<Option<PeriodicTask>>,
}

impl std::fmt::Debug for RocksdbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksdbBackend")
            .field("config", &self.config)
            .field("open", &self.shared.state.try_read().map(|g| g.is_some()))
            .finish()
    }
}

impl RocksdbBackend {
    /// Path of the RocksDB database directory (`config.path/rocksdb`).
    pub fn db_path(&self) -> PathBuf {
        self.config.path.join(DB_DIR)
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Number of WAL syncs the background flusher of [`Durability::Buffered`] has
    /// completed since open (always 0 with [`Durability::Sync`], which has no flusher).
    pub fn background_wal_syncs(&self) -> u64 {
        self.shared.background_syncs.load(Ordering::Acquire)
    }

    /// Memory accounting reported by RocksDB. Fails with [`StorageError::Closed`] after
    /// [`close`](Backend::close).
    pub fn memory_stats(&self) -> StorageResult<MemoryStats> {
        self.with_inner(|inner| {
            let mut block_cache_capacity = [0u64; 5];
            for tree in Tree::ALL {
                let cf = inner.cf(tree)?;
                block_cache_capacity[usize::from(tree.id())] = inner
                    .db
                    .property_int_value_cf(cf, properties::BLOCK_CACHE_CAPACITY)
                    .map_err(|e| engine_err("reading the block cache capacity", e))?
                    .unwrap_or(0);
            }
            Ok(MemoryStats {
                block_cache_capacity,
                block_cache_usage: inner.cache.get_usage() as u64,
                write_buffer_limit: inner.write_buffers.get_buffer_size() as u64,
                write_buffer_usage: inner.write_buffers.get_usage() as u64,
            })
        })
    }

    fn with_inner<T>(&self, f: impl FnOnce(&Inner) -> StorageResult<T>) -> StorageResult<T> {
        let guard = self.shared.state.read();
        let inner = guard.as_ref().ok_or(StorageError::Closed)?;
        f(inner)
    }

    /// The options shared by the database and every column family.
    fn options(cache: &Cache, write_buffers: &WriteBufferManager, budget: usize) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_bloom_filter(10.0, false);

        let mut opts = Options::default();
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_manager(write_buffers);
        // Each memtable is at most an eighth of the budget, so the write-buffer manager
        // (half the budget) always has room for at least one memtable per tree.
        opts.set_write_buffer_size((budget / 8).clamp(MIN_WRITE_BUFFER, MAX_WRITE_BUFFER));
        opts.set_compression_type(DBCompressionType::Lz4);
        opts
    }

    fn open(config: &BackendConfig) -> StorageResult<Inner> {
        let budget = usize::try_from(config.cache_size_bytes()).unwrap_or(usize::MAX);
        let cache = Cache::new_lru_cache(budget);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            budget / 2,
            false,
            cache.clone(),
        );

        let mut db_opts = Self::options(&cache, &write_buffers, budget);
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Keep RocksDB's informational LOG files bounded.
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_log_file_size(4 * 1024 * 1024);

        let descriptors = Tree::ALL.map(|tree| {
            ColumnFamilyDescriptor::new(tree.name(), Self::options(&cache, &write_buffers, budget))
        });
        let path = config.path.join(DB_DIR);
        let created = !path.exists();
        let db = DB::open_cf_descriptors(&db_opts, &path, descriptors)
            .map_err(|e| engine_err(format!("opening {}", path.display()), e))?;
        if created {
            // RocksDB syncs the files it creates inside its directory, not the directory's own
            // name in the data directory: without this, a power loss after the first writes
            // loses the whole store (found by the power-loss harness).
            std::fs::File::open(&config.path)
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    StorageError::io(
                        format!("syncing {} after creating {DB_DIR}", config.path.display()),
                        e,
                    )
                })?;
        }

        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(config.durability == Durability::Sync);
        let inner = Inner {
            db,
            write_opts,
            cache,
            write_buffers,
        };
        for tree in Tree::ALL {
            inner.cf(tree)?;
        }
        Ok(inner)
    }

    fn stop_flusher(&self) {
        if let Some(mut task) = self.flusher.lock().take() {
            task.stop();
        }
    }
}

impl Backend for RocksdbBackend {
    const KIND: BackendKind = BackendKind::Rocksdb;

    /// Claims `config.path` for `rocksdb` (see [`prepare_data_dir`]), then opens or creates
    /// the database with one column family per tree, the bounded memory setup of the
    /// [crate docs](crate) and, with [`Durability::Buffered`], starts the WAL flusher.
    fn new(config: BackendConfig) -> StorageResult<Arc<Self>> {
        prepare_data_dir(&config.path, ENGINE)?;
        let inner = Self::open(&config)?;
        let interval = match config.durability {
            Durability::Buffered { interval } => Some(interval),
            Durability::Sync => None,
        };
        let shared = Arc::new(Shared {
            state: RwLock::new(Some(inner)),
            background_syncs: AtomicU64::new(0),
        });
        let backend = Arc::new(RocksdbBackend {
            config,
            shared,
            flusher: Mutex::new(None),
        });
        if let Some(interval) = interval {
            let weak: Weak<Shared> = Arc::downgrade(&backend.shared);
            let task = PeriodicTask::spawn("rusd-rocksdb-flush", interval, move || {
                let Some(shared) = weak.upgrade() else {
                    return false;
                };
                let guard = shared.state.read();
                let Some(inner) = guard.as_ref() else {
                    return false;
                };
                match inner.flush_wal() {
                    Ok(()) => {
                        shared.background_syncs.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "rocksdb backend: background WAL sync failed");
                    }
                }
                true
            })
            .map_err(|e| StorageError::io("starting the WAL flush thread", e))?;
            *backend.flusher.lock() = Some(task);
        }
        Ok(backend)
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.with_inner(|inner| {
            inner
                .db
                .put_cf_opt(inner.cf(tree)?, key, value, &inner.write_opts)
                .map_err(|e| engine_err(format!("writing to {tree}"), e))
        })
    }

    fn get(&self, tree: Tree, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.with_inner(|inner| {
            let value = inner
                .db
                .get_pinned_cf(inner.cf(tree)?, key)
                .map_err(|e| engine_err(format!("reading from {tree}"), e))?;
            Ok(value.map(|v| v.to_vec()))
        })
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> StorageResult<()> {
        self.with_inner(|inner| {
            inner
                .db
                .delete_cf_opt(inner.cf(tree)?, key, &inner.write_opts)
                .map_err(|e| engine_err(format!("deleting from {tree}"), e))
        })
    }

    /// One RocksDB `WriteBatch` (one WAL record) for the whole batch: atomic across trees.
    fn write(&self, batch: &WriteBatch) -> StorageResult<()> {
        self.with_inner(|inner| {
            if batch.is_empty() {
                return Ok(());
            }
            let mut wb = rocksdb::WriteBatch::default();
            for op in batch.ops() {
                match op {
                    WriteOp::Put { tree, key, value } => wb.put_cf(inner.cf(*tree)?, key, value),
                    WriteOp::Delete { tree, key } => wb.delete_cf(inner.cf(*tree)?, key),
                }
            }
            inner
                .db
                .write_opt(wb, &inner.write_opts)
                .map_err(|e| engine_err("writing a batch", e))
        })
    }

    /// A bounded RocksDB iterator (`iterate_lower_bound = start`,
    /// `iterate_upper_bound = end`), so the engine stops at `end` without reading past it.
    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> StorageResult<Vec<KvPair>> {
        self.with_inner(|inner| {
            let cf = inner.cf(tree)?;
            if range_is_empty(start, end) {
                return Ok(Vec::new());
            }
            let mut ro = ReadOptions::default();
            if !start.is_empty() {
                ro.set_iterate_lower_bound(start.to_vec());
            }
            if !end.is_empty() {
                ro.set_iterate_upper_bound(end.to_vec());
            }
            let mut it = inner.db.raw_iterator_cf_opt(cf, ro);
            it.seek(start);
            let mut out = Vec::new();
            while let Some((k, v)) = it.item() {
                out.push((k.to_vec(), v.to_vec()));
                if limit != 0 && out.len() >= limit {
                    break;
                }
                it.next();
            }
            it.status()
                .map_err(|e| engine_err(format!("scanning {tree}"), e))?;
            Ok(out)
        })
    }

    /// Iterates every column family under one RocksDB snapshot (consistent across trees;
    /// concurrent writes continue). The snapshot pins old versions until the call returns.
    fn snapshot_to(&self, writer: &mut dyn Write) -> StorageResult<u64> {
        self.with_inner(|inner| {
            let snap = inner.db.snapshot();
            let mut w = SnapshotWriter::new(writer)?;
            for tree in Tree::ALL {
                let mut ro = ReadOptions::default();
                ro.fill_cache(false);
                let mut it = snap.raw_iterator_cf_opt(inner.cf(tree)?, ro);
                it.seek_to_first();
                while let Some((k, v)) = it.item() {
                    w.entry(tree, k, v)?;
                    it.next();
                }
                it.status()
                    .map_err(|e| engine_err(format!("reading {tree} for a snapshot"), e))?;
            }
            w.finish()
        })
    }

    /// Replaces the content with one synced `WriteBatch`: for every tree a range deletion
    /// from the empty key to just past its current last key (covering every existing key,
    /// the empty key and keys of `0xff` bytes included), then a put per snapshot entry.
    ///
    /// The batch, i.e. the whole snapshot content, is held in memory until it is written,
    /// and the call is exclusive: other calls wait until it returns, so no concurrent write
    /// is lost or half-replaced.
    fn restore_validated(&self, snapshot: ValidatedSnapshot) -> StorageResult<()> {
        let guard = self.shared.state.write();
        let inner = guard.as_ref().ok_or(StorageError::Closed)?;
        let mut wb = rocksdb::WriteBatch::default();
        for tree in Tree::ALL {
            let cf = inner.cf(tree)?;
            let mut it = inner.db.raw_iterator_cf(cf);
            it.seek_to_last();
            if let Some(last) = it.key() {
                // The smallest key greater than `last`: every existing key is below it.
                let mut end = last.to_vec();
                end.push(0);
                wb.delete_range_cf(cf, Vec::new(), end);
            }
            it.status()
                .map_err(|e| engine_err(format!("reading {tree} before a restore"), e))?;
        }
        for entry in snapshot.entries()? {
            let entry = entry?;
            wb.put_cf(inner.cf(entry.tree)?, entry.key, entry.value);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        inner
            .db
            .write_opt(wb, &wo)
            .map_err(|e| engine_err("writing a restore", e))
    }

    /// Flushes the `kv` memtable and compacts the whole `kv` column family, bottommost level
    /// included (`BottommostLevelCompaction::ForceOptimized`), so the deletions the MVCC
    /// layer made below `revision` are dropped with the data they shadow. Synchronous; costs
    /// a rewrite of the `kv` tree. Other trees are left to RocksDB's automatic compaction.
    fn compact(&self, _revision: i64) -> StorageResult<()> {
        self.with_inner(|inner| {
            inner.flush_memtables(&[Tree::Kv])?;
            let mut co = CompactOptions::default();
            co.set_exclusive_manual_compaction(false);
            co.set_bottommost_level_compaction(BottommostLevelCompaction::ForceOptimized);
            inner
                .db
                .compact_range_cf_opt(inner.cf(Tree::Kv)?, None::<&[u8]>, None::<&[u8]>, &co);
            Ok(())
        })
    }

    /// Apparent size of every file below `config.path` (SST files, WAL, MANIFEST, LOG...).
    fn size(&self) -> StorageResult<u64> {
        self.with_inner(|_| dir_size(&self.config.path))
    }

    /// Flushes every memtable, then fully compacts every column family
    /// (`BottommostLevelCompaction::Force`): deleted and overwritten data is dropped and
    /// obsolete SST and WAL files are removed by RocksDB (file deletion may finish shortly
    /// after the call returns). Online: it holds the state lock shared only, so reads and
    /// writes go on; the compaction is not exclusive, so RocksDB keeps scheduling automatic
    /// compactions (of the level-0 files new writes create) beside it instead of stalling
    /// writers once level 0 fills up.
    fn defragment(&self) -> StorageResult<()> {
        self.with_inner(|inner| {
            inner.flush_memtables(&Tree::ALL)?;
            let mut co = CompactOptions::default();
            co.set_exclusive_manual_compaction(false);
            co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
            for tree in Tree::ALL {
                inner
                    .db
                    .compact_range_cf_opt(inner.cf(tree)?, None::<&[u8]>, None::<&[u8]>, &co);
            }
            Ok(())
        })
    }

    /// Fsyncs the WAL (`flush_wal(true)`): every acknowledged write is durable on return.
    fn flush(&self) -> StorageResult<()> {
        self.with_inner(Inner::flush_wal)
    }

    /// Stops the flusher, fsyncs the WAL, cancels RocksDB's background jobs (waiting for
    /// running ones) and closes the database, releasing its lock file.
    fn is_closed(&self) -> bool {
        self.shared.state.read().is_none()
    }

    fn durability(&self) -> Durability {
        self.config.durability
    }

    fn close(&self) -> StorageResult<()> {
        self.with_inner(|_| Ok(()))?;
        self.stop_flusher();
        let inner = self
            .shared
            .state
            .write()
            .take()
            .ok_or(StorageError::Closed)?;
        let result = inner.flush_wal();
        inner.db.cancel_all_background_work(true);
        drop(inner);
        result
    }
}

impl Drop for RocksdbBackend {
    fn drop(&mut self) {
        self.stop_flusher();
        if let Some(inner) = self.shared.state.read().as_ref() {
            if let Err(e) = inner.flush_wal() {
                tracing::warn!(error = %e, "rocksdb backend: syncing the WAL on drop failed");
            }
        }
    }
}
