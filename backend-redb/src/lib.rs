//! # backend-redb
//!
//! [`RedbBackend`]: the rusd storage [`Backend`] on [redb](https://docs.rs/redb) 4.x, a
//! copy-on-write B-tree in a single file with ACID transactions.
//!
//! # Layout
//! `config.path` is claimed for the `redb` engine with
//! [`storage_api::dir::prepare_data_dir`] (marker file `RUSD_ENGINE`); the database is the
//! single file `<path>/data.redb` ([`DATA_FILE`]). Each logical [`Tree`] is one redb table
//! `TableDefinition<&[u8], &[u8]>` named by [`Tree::name`] (`kv`, `index`, `meta`, `lease`,
//! `auth`); all five are created when the store is opened.
//!
//! # Atomicity and isolation
//! Every mutating call ([`put`](Backend::put), [`delete`](Backend::delete),
//! [`write`](Backend::write), the batch methods and
//! [`restore_validated`](Backend::restore_validated)) is exactly one redb write transaction,
//! atomic across all five tables: readers and crash recovery see all of it or none of it.
//! redb runs one write transaction at a time, so writers are serialised by the engine;
//! reads ([`get`](Backend::get), [`get_many`](Backend::get_many), [`scan`](Backend::scan),
//! [`snapshot_to`](Backend::snapshot_to)) run in read transactions (one per call), never block
//! writers and are never blocked by them.
//! [`snapshot_to`](Backend::snapshot_to) reads all five tables from one read transaction, so
//! the image is a single commit.
//!
//! # Durability
//! * [`Durability::Sync`]: every write commits with redb `Durability::Immediate` (one
//!   `fdatasync` per commit) and is durable when the call returns.
//! * [`Durability::Buffered`]: writes commit with redb `Durability::None`: they are visible to
//!   every reader at once but only held in redb's memory. A background thread
//!   (`rusd-redb-flush`) makes them durable with an empty `Immediate` commit at most
//!   `interval` after a write, and [`flush`](Backend::flush), [`close`](Backend::close) and
//!   dropping the backend do the same at once. After a crash the store comes back at the last
//!   durable commit: at most one interval of writes is lost and no transaction is ever
//!   recovered partially.
//! * [`restore_validated`](Backend::restore_validated) always commits `Immediate`.
//!
//! # Locking
//! The [`redb::Database`] sits behind a [`parking_lot::RwLock`]. Every operation holds it
//! shared for its duration (so reads and writes run concurrently, as redb allows);
//! [`defragment`](Backend::defragment) holds it exclusively, because redb's
//! `Database::compact` needs `&mut Database` and no live transaction: while it runs every
//! other call waits. [`close`](Backend::close) also takes it exclusively, once in-flight calls
//! have finished.
#![deny(missing_docs)]

use std::fs;
use std::io::Write;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use redb::{
    Builder, Database, Durability as RedbDurability, ReadTransaction, ReadableDatabase,
    TableDefinition, WriteTransaction,
};
use storage_api::dir::prepare_data_dir;
use storage_api::flusher::PeriodicTask;
use storage_api::keys::range_is_empty;
use storage_api::snapshot::{SnapshotWriter, ValidatedSnapshot};
use storage_api::{
    Backend, BackendConfig, BackendKind, Durability, KvPair, StorageError, StorageResult, Tree,
    WriteBatch, WriteOp,
};

/// Name of the redb database file inside the data directory.
pub const DATA_FILE: &str = "data.redb";

/// Engine name used in markers and errors.
const ENGINE: &str = "redb";

/// Upper bound of `Database::compact` rounds in one [`defragment`](Backend::defragment);
/// redb reports `false` long before in practice.
const MAX_COMPACT_ROUNDS: usize = 64;

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// The redb table of a tree.
const fn table(tree: Tree) -> Table {
    TableDefinition::new(tree.name())
}

/// Wraps a redb error (kept as the `source`) with what the backend was doing.
fn engine_err(context: &str, err: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::engine(ENGINE, context, err)
}

/// State shared with the background flusher (which holds only a [`Weak`] to it).
#[derive(Debug)]
struct Shared {
    /// `None` once closed.
    db: RwLock<Option<Database>>,
    /// Commit durability of ordinary writes.
    write_durability: RedbDurability,
    /// Set after a non-durable commit; cleared by the durable commit that covers it.
    dirty: AtomicBool,
}

impl Shared {
    /// Runs `f` on the open database with the lock held shared.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> StorageResult<T>) -> StorageResult<T> {
        let guard = self.db.read();
        let db = guard.as_ref().ok_or(StorageError::Closed)?;
        f(db)
    }

    /// Runs `f` in one write transaction committed with `durability`; `f` must drop every
    /// table it opens. Nothing is committed when `f` fails.
    fn write_tx(
        db: &Database,
        durability: RedbDurability,
        f: impl FnOnce(&WriteTransaction) -> StorageResult<()>,
    ) -> StorageResult<()> {
        let mut tx = db
            .begin_write()
            .map_err(|e| engine_err("beginning a write transaction", e))?;
        tx.set_durability(durability)
            .map_err(|e| engine_err("setting commit durability", e))?;
        // On error `tx` is dropped, which aborts it.
        f(&tx)?;
        tx.commit()
            .map_err(|e| engine_err("committing a write transaction", e))
    }

    /// Commits an ordinary write and records whether a durable commit is still owed.
    fn write(&self, f: impl FnOnce(&WriteTransaction) -> StorageResult<()>) -> StorageResult<()> {
        self.with_db(|db| {
            Self::write_tx(db, self.write_durability, f)?;
            if matches!(self.write_durability, RedbDurability::None) {
                self.dirty.store(true, Ordering::Release);
            }
            Ok(())
        })
    }

    /// An empty `Immediate` commit: makes every earlier commit durable.
    fn durable_commit(&self, db: &Database) -> StorageResult<()> {
        // Cleared before the commit: a write that sets it again after this point is either
        // covered by this commit or flushed next time; on failure it is restored.
        self.dirty.store(false, Ordering::Release);
        let result = Self::write_tx(db, RedbDurability::Immediate, |_| Ok(()));
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }

    /// The flusher's tick. `Ok(false)` once the store is closed.
    fn flush_if_dirty(&self) -> StorageResult<bool> {
        let guard = self.db.read();
        let Some(db) = guard.as_ref() else {
            return Ok(false);
        };
        if self.dirty.load(Ordering::Acquire) {
            self.durable_commit(db)?;
        }
        Ok(true)
    }

    fn read_tx(db: &Database) -> StorageResult<ReadTransaction> {
        db.begin_read()
            .map_err(|e| engine_err("beginning a read transaction", e))
    }

    /// Flushes and closes the database if it is still open; `Closed` otherwise.
    fn close(&self) -> StorageResult<()> {
        let db = self.db.write().take().ok_or(StorageError::Closed)?;
        let flushed = Self::write_tx(&db, RedbDurability::Immediate, |_| Ok(()));
        let closed = db
            .close()
            .map_err(|e| engine_err("closing the database", e));
        flushed.and(closed)
    }
}

/// The rusd storage [`Backend`] on redb. See the [crate docs](crate) for the layout,
/// durability and locking guarantees.
#[derive(Debug)]
pub struct RedbBackend {
    config: BackendConfig,
    file: PathBuf,
    shared: Arc<Shared>,
    /// The background flusher of [`Durability::Buffered`]; `None` with `Sync` or once closed.
    flusher: Mutex<Option<PeriodicTask>>,
}

impl RedbBackend {
    /// The configuration this store was opened with.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Path of the redb database file (`<config.path>/data.redb`).
    pub fn data_file(&self) -> &std::path::Path {
        &self.file
    }

    fn stop_flusher(&self) {
        if let Some(mut task) = self.flusher.lock().take() {
            task.stop();
        }
    }
}

impl Backend for RedbBackend {
    const KIND: BackendKind = BackendKind::Redb;

    /// Opens (or creates) `<config.path>/data.redb` with a page cache of
    /// `config.cache_size_bytes()` and creates the five tables in one durable commit.
    ///
    /// Besides the errors of [`storage_api::dir::prepare_data_dir`], fails with
    /// [`StorageError::Engine`] when redb cannot open the file (for instance because this
    /// process already has it open, or it is not a redb database).
    fn new(config: BackendConfig) -> StorageResult<Arc<Self>> {
        prepare_data_dir(&config.path, ENGINE)?;
        let file = config.path.join(DATA_FILE);
        let created = !file.exists();
        let cache = usize::try_from(config.cache_size_bytes()).unwrap_or(usize::MAX);
        let mut builder = Builder::new();
        builder.set_cache_size(cache);
        let db = builder
            .create(&file)
            .map_err(|e| engine_err("opening the database", e))?;
        Shared::write_tx(&db, RedbDurability::Immediate, |tx| {
            for tree in Tree::ALL {
                let t = tx
                    .open_table(table(tree))
                    .map_err(|e| engine_err("creating a table", e))?;
                drop(t);
            }
            Ok(())
        })?;
        if created {
            // The new file's name must be durable too, not only its content.
            fs::File::open(&config.path)
                .and_then(|d| d.sync_all())
                .map_err(|source| StorageError::Io {
                    context: format!(
                        "syncing {} after creating {DATA_FILE}",
                        config.path.display()
                    ),
                    source,
                })?;
        }
        let (write_durability, interval) = match config.durability {
            Durability::Sync => (RedbDurability::Immediate, None),
            Durability::Buffered { interval } => (RedbDurability::None, Some(interval)),
        };
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            write_durability,
            dirty: AtomicBool::new(false),
        });
        let flusher = match interval {
            None => None,
            Some(interval) => {
                let weak: Weak<Shared> = Arc::downgrade(&shared);
                let task = PeriodicTask::spawn("rusd-redb-flush", interval, move || {
                    let Some(shared) = weak.upgrade() else {
                        return false;
                    };
                    match shared.flush_if_dirty() {
                        Ok(open) => open,
                        Err(e) => {
                            tracing::warn!(error = %e, "redb backend: background flush failed");
                            true
                        }
                    }
                });
                match task {
                    Ok(task) => Some(task),
                    Err(e) => {
                        // Release the file before reporting the error.
                        let _ = shared.close();
                        return Err(StorageError::io("starting the flush thread", e));
                    }
                }
            }
        };
        Ok(Arc::new(RedbBackend {
            config,
            file,
            shared,
            flusher: Mutex::new(flusher),
        }))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.shared.write(|tx| {
            let mut t = tx
                .open_table(table(tree))
                .map_err(|e| engine_err("opening a table", e))?;
            t.insert(key, value)
                .map_err(|e| engine_err("inserting a key", e))?;
            Ok(())
        })
    }

    fn get(&self, tree: Tree, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.shared.with_db(|db| {
            let tx = Shared::read_tx(db)?;
            let t = tx
                .open_table(table(tree))
                .map_err(|e| engine_err("opening a table", e))?;
            let value = t
                .get(key)
                .map_err(|e| engine_err("reading a key", e))?
                .map(|guard| guard.value().to_vec());
            Ok(value)
        })
    }

    /// Every key from one read transaction and one table open (one commit's view).
    fn get_many(&self, tree: Tree, keys: &[&[u8]]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        self.shared.with_db(|db| {
            let tx = Shared::read_tx(db)?;
            let t = tx
                .open_table(table(tree))
                .map_err(|e| engine_err("opening a table", e))?;
            keys.iter()
                .map(|key| {
                    t.get(*key)
                        .map(|v| v.map(|guard| guard.value().to_vec()))
                        .map_err(|e| engine_err("reading a key", e))
                })
                .collect()
        })
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> StorageResult<()> {
        self.shared.write(|tx| {
            let mut t = tx
                .open_table(table(tree))
                .map_err(|e| engine_err("opening a table", e))?;
            t.remove(key).map_err(|e| engine_err("removing a key", e))?;
            Ok(())
        })
    }

    /// One write transaction for the whole batch, whatever trees it touches.
    fn write(&self, batch: &WriteBatch) -> StorageResult<()> {
        if batch.is_empty() {
            return self.shared.with_db(|_| Ok(()));
        }
        self.shared.write(|tx| {
            let mut tables = Vec::with_capacity(Tree::ALL.len());
            for tree in Tree::ALL {
                let used = batch.ops().iter().any(|op| op.tree() == tree);
                tables.push(if used {
                    Some(
                        tx.open_table(table(tree))
                            .map_err(|e| engine_err("opening a table", e))?,
                    )
                } else {
                    None
                });
            }
            for op in batch.ops() {
                let t = tables[op.tree().id() as usize].as_mut().ok_or_else(|| {
                    StorageError::InvalidArgument(format!("tree {} was not opened", op.tree()))
                })?;
                match op {
                    WriteOp::Put { key, value, .. } => {
                        t.insert(key.as_slice(), value.as_slice())
                            .map_err(|e| engine_err("inserting a key", e))?;
                    }
                    WriteOp::Delete { key, .. } => {
                        t.remove(key.as_slice())
                            .map_err(|e| engine_err("removing a key", e))?;
                    }
                }
            }
            drop(tables);
            Ok(())
        })
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> StorageResult<Vec<KvPair>> {
        self.shared.with_db(|db| {
            if range_is_empty(start, end) {
                // redb must never see a range with start > end.
                return Ok(Vec::new());
            }
            let tx = Shared::read_tx(db)?;
            let t = tx
                .open_table(table(tree))
                .map_err(|e| engine_err("opening a table", e))?;
            let upper = if end.is_empty() {
                Bound::Unbounded
            } else {
                Bound::Excluded(end)
            };
            let range = t
                .range::<&[u8]>((Bound::Included(start), upper))
                .map_err(|e| engine_err("scanning a range", e))?;
            let take = if limit == 0 { usize::MAX } else { limit };
            let mut out = Vec::new();
            for item in range.take(take) {
                let (k, v) = item.map_err(|e| engine_err("scanning a range", e))?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Reads all five tables from one read transaction (one commit). Holds the database lock
    /// shared while writing, so a concurrent [`defragment`](Backend::defragment) waits for it;
    /// writers are not blocked.
    fn snapshot_to(&self, writer: &mut dyn Write) -> StorageResult<u64> {
        self.shared.with_db(|db| {
            let tx = Shared::read_tx(db)?;
            let mut tables = Vec::with_capacity(Tree::ALL.len());
            for tree in Tree::ALL {
                tables.push(
                    tx.open_table(table(tree))
                        .map_err(|e| engine_err("opening a table", e))?,
                );
            }
            let mut w = SnapshotWriter::new(writer)?;
            for (tree, t) in Tree::ALL.into_iter().zip(&tables) {
                let range = t
                    .range::<&[u8]>(..)
                    .map_err(|e| engine_err("reading a table", e))?;
                for item in range {
                    let (k, v) = item.map_err(|e| engine_err("reading a table", e))?;
                    w.entry(tree, k.value(), v.value())?;
                }
            }
            w.finish()
        })
    }

    /// One write transaction deletes and recreates the five tables and inserts every entry,
    /// committed `Immediate`: the replacement is atomic and durable when the call returns. If
    /// reading the snapshot spool fails, nothing is changed.
    fn restore_validated(&self, snapshot: ValidatedSnapshot) -> StorageResult<()> {
        self.shared.with_db(|db| {
            Shared::write_tx(db, RedbDurability::Immediate, |tx| {
                for tree in Tree::ALL {
                    tx.delete_table(table(tree))
                        .map_err(|e| engine_err("deleting a table", e))?;
                }
                let mut tables = Vec::with_capacity(Tree::ALL.len());
                for tree in Tree::ALL {
                    tables.push(
                        tx.open_table(table(tree))
                            .map_err(|e| engine_err("creating a table", e))?,
                    );
                }
                for entry in snapshot.entries()? {
                    let entry = entry?;
                    tables[entry.tree.id() as usize]
                        .insert(entry.key.as_slice(), entry.value.as_slice())
                        .map_err(|e| engine_err("inserting a key", e))?;
                }
                drop(tables);
                Ok(())
            })
        })
    }

    /// No-op apart from the closed check: redb frees the pages of deleted revisions at
    /// commit and reuses them for later writes, so there is nothing to drop. Shrinking the
    /// file is [`defragment`](Backend::defragment)'s job.
    fn compact(&self, _revision: i64) -> StorageResult<()> {
        self.shared.with_db(|_| Ok(()))
    }

    /// Length of `data.redb` in bytes. With `Buffered` durability, recent writes may not yet
    /// be reflected until the next durable commit.
    fn size(&self) -> StorageResult<u64> {
        self.shared.with_db(|_| {
            fs::metadata(&self.file)
                .map(|m| m.len())
                .map_err(|e| StorageError::io(format!("measuring {}", self.file.display()), e))
        })
    }

    /// Makes every write durable, then runs redb's `Database::compact` until it reports no
    /// further progress, which moves live pages to the front and truncates the file.
    /// Holds the database lock exclusively: every other call waits until it is done.
    /// Never changes what reads return.
    fn defragment(&self) -> StorageResult<()> {
        self.shared.with_db(|db| self.shared.durable_commit(db))?;
        let mut guard = self.shared.db.write();
        let db = guard.as_mut().ok_or(StorageError::Closed)?;
        for _ in 0..MAX_COMPACT_ROUNDS {
            let progressed = db
                .compact()
                .map_err(|e| engine_err("compacting the database", e))?;
            if !progressed {
                return Ok(());
            }
        }
        tracing::warn!(
            rounds = MAX_COMPACT_ROUNDS,
            "redb backend: compaction still progressing; stopped"
        );
        Ok(())
    }

    /// An empty `Immediate` commit: every write acknowledged before the call is durable when
    /// it returns (one `fdatasync`).
    fn flush(&self) -> StorageResult<()> {
        self.shared.with_db(|db| self.shared.durable_commit(db))
    }

    /// Stops the flusher, makes every write durable and closes the database file (redb
    /// `Database::close`). Waits for in-flight calls to finish. Every later call returns
    /// [`StorageError::Closed`]. The store is closed even when the final flush fails; that
    /// error is returned.
    fn is_closed(&self) -> bool {
        self.shared.db.read().is_none()
    }

    fn durability(&self) -> Durability {
        self.config.durability
    }

    fn close(&self) -> StorageResult<()> {
        self.shared.with_db(|_| Ok(()))?;
        self.stop_flusher();
        self.shared.close()
    }
}

impl Drop for RedbBackend {
    /// Best effort: stops the flusher, makes pending writes durable and closes the file,
    /// logging failures.
    fn drop(&mut self) {
        self.stop_flusher();
        match self.shared.close() {
            Ok(()) | Err(StorageError::Closed) => {}
            Err(e) => tracing::warn!(error = %e, "redb backend: closing on drop failed"),
        }
    }
}
