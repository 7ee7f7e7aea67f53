//! # backend-redb
//!
//! [`RedbBackend`]: the rusd storage [`Backend`] on [redb](https://docs.rs/redb) 4.x, a
//! copy-on-write B-tree in a single file with ACID transactions.
//!
//! # Layout
//! `config.path` is claimed for the `redb` engine with
//! [`storage_api::dir::prepare_data_dir`] (marker file `RUSD_ENGINE`); the database is one
//! file: `<path>/data.redb` ([`DATA_FILE`], generation 0) until the first
//! [`defragment`](Backend::defragment), which builds `<path>/data.<n>.redb` (generation `n`)
//! and records its name in `<path>/REDB_CURRENT` ([`CURRENT_FILE`]; absent means
//! `data.redb`, so stores written before generations existed open unchanged). The switch is
//! one atomic rename (temporary file, fsync, rename, fsync of the directory): a crash before
//! it leaves the old file live, after it the new one. Files of other generations and the
//! temporary file are deleted when the store is opened. Each logical [`Tree`] is one redb table
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
//! [`close`](Backend::close) takes it exclusively, once in-flight calls have finished.
//!
//! # Online defragment
//! [`defragment`](Backend::defragment) does not use redb's `Database::compact` (which needs
//! `&mut Database` and no live transaction, so every other call would wait for it). Holding
//! the lock shared, it turns on a record of every (tree, key) a mutating call touches (filled
//! after the commit, under the shared lock), then copies all five tables into a fresh file
//! `data.<n+1>.redb` in chunks of at most 16 384 entries, each read from a new read
//! transaction (resuming after the last key copied; a key that changes between chunks has been
//! recorded) and written in one non-durable write transaction. Catch-up rounds then re-read
//! each recorded key from a new read transaction of the live file and insert it into
//! (present) or remove it from (absent) the fresh one, until at most 512 keys are left (or
//! after 32 rounds), and
//! one `Immediate` commit makes the fresh file durable. Only the final round holds the lock
//! exclusively: it copies the last recorded keys, commits them `Immediate`, switches
//! `REDB_CURRENT` to the fresh file and closes and deletes the old one.
//! Reads and writes therefore keep running during the copy; calls made during the final round
//! wait for it. The fresh file holds only live pages, so it is as small as a compacted one.
//! Defragment and [`restore_validated`](Backend::restore_validated) are serialised with each
//! other; it needs free disk space for a second copy of the live data.
#![deny(missing_docs)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Name of the redb database file inside the data directory (generation 0; later
/// generations are `data.<n>.redb`).
pub const DATA_FILE: &str = "data.redb";
/// File naming the live database file. Absent means [`DATA_FILE`].
pub const CURRENT_FILE: &str = "REDB_CURRENT";

/// Engine name used in markers and errors.
const ENGINE: &str = "redb";

/// Entries per read and write transaction while copying into a fresh file.
const COPY_CHUNK: usize = 16_384;
/// A defragment takes its final, exclusive round once at most this many keys were written
/// since its previous round.
const FINAL_ROUND_KEYS: usize = 512;
/// At most this many catch-up rounds run beside writers.
const MAX_CATCH_UP_ROUNDS: usize = 32;

/// Keys written while an online defragment copies (ordered: each round works in key order).
type DirtyKeys = BTreeSet<(Tree, Vec<u8>)>;

/// The file name of generation `n`.
fn generation_file(n: u64) -> String {
    if n == 0 {
        DATA_FILE.to_string()
    } else {
        format!("data.{n}.redb")
    }
}

/// The generation of a file name, if it is one of ours.
fn parse_generation(name: &str) -> Option<u64> {
    if name == DATA_FILE {
        return Some(0);
    }
    let digits = name.strip_prefix("data.")?.strip_suffix(".redb")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// fsyncs a directory so that entries created or renamed in it are durable.
fn sync_dir(path: &Path) -> StorageResult<()> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(format!("syncing directory {}", path.display()), e))
}

/// The live generation recorded in `<root>/REDB_CURRENT` (0 when the file is absent).
fn read_current(root: &Path) -> StorageResult<u64> {
    let path = root.join(CURRENT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => parse_generation(text.trim()).ok_or_else(|| {
            StorageError::Corruption(format!(
                "{} names {:?}, which is not a redb database file of this store",
                path.display(),
                text.trim()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StorageError::io(format!("reading {}", path.display()), e)),
    }
}

/// Atomically records `generation` as the live one: temporary file, fsync, rename, fsync of
/// the directory. Returns whether the rename happened (the switch is then in effect even if
/// the final directory fsync failed).
fn write_current(root: &Path, generation: u64) -> (bool, StorageResult<()>) {
    let tmp = root.join(format!("{CURRENT_FILE}.tmp"));
    let prepared = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(format!("{}\n", generation_file(generation)).as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, root.join(CURRENT_FILE))
    })()
    .map_err(|e| StorageError::io(format!("switching to generation {generation}"), e));
    match prepared {
        Ok(()) => (true, sync_dir(root)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            (false, Err(e))
        }
    }
}

/// Deletes database files of generations other than `live` and a temporary file left by a
/// crash. Failures are logged: leftovers only cost disk space.
fn remove_stale(root: &Path, live: u64) {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, path = %root.display(), "redb backend: cannot list data directory");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = name == format!("{CURRENT_FILE}.tmp")
            || parse_generation(name).is_some_and(|g| g != live);
        if !stale {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "redb backend: removed stale file"),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "redb backend: cannot remove stale file")
            }
        }
    }
}

/// Opens (or creates) a database file with the store's cache size.
fn open_file(file: &Path, cache: usize) -> StorageResult<Database> {
    let mut builder = Builder::new();
    builder.set_cache_size(cache);
    builder
        .create(file)
        .map_err(|e| engine_err("opening the database", e))
}

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
    /// `Some` while an online defragment copies: every (tree, key) a mutating call touched
    /// since (recorded after its commit, under the shared lock).
    defrag_keys: Mutex<Option<DirtyKeys>>,
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
    /// `touched` names every (tree, key) it may change, recorded for a running online
    /// defragment after the commit (whether or not it succeeded).
    fn write<'k>(
        &self,
        touched: impl IntoIterator<Item = (Tree, &'k [u8])>,
        f: impl FnOnce(&WriteTransaction) -> StorageResult<()>,
    ) -> StorageResult<()> {
        self.with_db(|db| {
            let result = Self::write_tx(db, self.write_durability, f);
            if let Some(keys) = self.defrag_keys.lock().as_mut() {
                for (tree, key) in touched {
                    keys.insert((tree, key.to_vec()));
                }
            }
            result?;
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
    /// The live generation (changed only under the database lock held exclusively).
    generation: AtomicU64,
    shared: Arc<Shared>,
    /// The background flusher of [`Durability::Buffered`]; `None` with `Sync` or once closed.
    flusher: Mutex<Option<PeriodicTask>>,
    /// Serialises [`defragment`](Backend::defragment) and
    /// [`restore_validated`](Backend::restore_validated) with each other.
    maintenance: Mutex<()>,
    /// Test hook called by `defragment` after the bulk copy, before the catch-up rounds.
    #[cfg(test)]
    defrag_hook: tests::Hook,
}

impl RedbBackend {
    /// The configuration this store was opened with.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Path of the live redb database file (`<config.path>/data.redb`, or
    /// `<config.path>/data.<n>.redb` after a defragment).
    pub fn data_file(&self) -> PathBuf {
        self.config
            .path
            .join(generation_file(self.generation.load(Ordering::Acquire)))
    }

    fn cache_bytes(&self) -> usize {
        usize::try_from(self.config.cache_size_bytes()).unwrap_or(usize::MAX)
    }

    /// Copies every table of `live`, as of one read transaction, into `fresh`, then runs
    /// catch-up rounds over the keys written meanwhile until few are left.
    fn copy_into(&self, live: &Database, fresh: &Database) -> StorageResult<()> {
        for tree in Tree::ALL {
            // Each chunk reads from a new read transaction, resuming after the last key
            // copied: a key changed between two chunks was recorded and is caught up below,
            // and no read transaction stays open for the whole copy (a long-lived one keeps
            // redb from reusing the pages live writers free).
            let mut after: Option<Vec<u8>> = None;
            loop {
                let snapshot = Shared::read_tx(live)?;
                let source = snapshot
                    .open_table(table(tree))
                    .map_err(|e| engine_err("opening a table to copy", e))?;
                let lower = match &after {
                    Some(k) => Bound::Excluded(k.as_slice()),
                    None => Bound::Unbounded,
                };
                let mut entries = source
                    .range::<&[u8]>((lower, Bound::Unbounded))
                    .map_err(|e| engine_err("reading a table to copy", e))?;
                let mut copied = 0usize;
                let mut last: Option<Vec<u8>> = None;
                // At least one transaction per tree, so that every table exists.
                Shared::write_tx(fresh, RedbDurability::None, |tx| {
                    let mut target = tx
                        .open_table(table(tree))
                        .map_err(|e| engine_err("creating a table", e))?;
                    while copied < COPY_CHUNK {
                        let Some(item) = entries.next() else { break };
                        let (k, v) = item.map_err(|e| engine_err("reading a table to copy", e))?;
                        target
                            .insert(k.value(), v.value())
                            .map_err(|e| engine_err("copying a key", e))?;
                        copied += 1;
                        if copied == COPY_CHUNK {
                            last = Some(k.value().to_vec());
                        }
                    }
                    Ok(())
                })?;
                match last {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
        }
        #[cfg(test)]
        self.defrag_hook.call();
        for _ in 0..MAX_CATCH_UP_ROUNDS {
            let keys = {
                let mut recorded = self.shared.defrag_keys.lock();
                match recorded.as_mut() {
                    Some(keys) if keys.len() > FINAL_ROUND_KEYS => std::mem::take(keys),
                    _ => break,
                }
            };
            catch_up(live, fresh, keys, RedbDurability::None)?;
        }
        // The bulk of the fresh file goes to disk here, beside other calls: the final
        // round's commit then only syncs its last few keys.
        Shared::write_tx(fresh, RedbDurability::Immediate, |_| Ok(()))
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
        let generation = read_current(&config.path)?;
        let file = config.path.join(generation_file(generation));
        if generation > 0 && !file.is_file() {
            return Err(StorageError::Corruption(format!(
                "{} names {}, which does not exist",
                config.path.join(CURRENT_FILE).display(),
                file.display()
            )));
        }
        remove_stale(&config.path, generation);
        let created = !file.exists();
        let cache = usize::try_from(config.cache_size_bytes()).unwrap_or(usize::MAX);
        let db = open_file(&file, cache)?;
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
            defrag_keys: Mutex::new(None),
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
            generation: AtomicU64::new(generation),
            shared,
            flusher: Mutex::new(flusher),
            maintenance: Mutex::new(()),
            #[cfg(test)]
            defrag_hook: tests::Hook::default(),
        }))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.shared.write([(tree, key)], |tx| {
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
        self.shared.write([(tree, key)], |tx| {
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
        let touched = batch.ops().iter().map(|op| (op.tree(), op.key()));
        self.shared.write(touched, |tx| {
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
        let _maintenance = self.maintenance.lock();
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

    /// Length of the live database file in bytes. With `Buffered` durability, recent writes
    /// may not yet be reflected until the next durable commit.
    fn size(&self) -> StorageResult<u64> {
        self.shared.with_db(|_| {
            let file = self.data_file();
            fs::metadata(&file)
                .map(|m| m.len())
                .map_err(|e| StorageError::io(format!("measuring {}", file.display()), e))
        })
    }

    /// Online rebuild into a fresh file of the next generation (see the
    /// [crate docs](crate#online-defragment)): reads and writes keep running except during
    /// the short final round. Never changes what reads return; the fresh file is durable
    /// before the switch, in every durability mode.
    fn defragment(&self) -> StorageResult<()> {
        let _maintenance = self.maintenance.lock();
        let root = &self.config.path;
        let next = self.generation.load(Ordering::Acquire) + 1;
        let path = root.join(generation_file(next));
        let discard = |fresh: Option<Database>| {
            drop(fresh);
            let _ = fs::remove_file(&path);
        };
        // Recording starts before the snapshot the copy reads, so every commit after that
        // snapshot is recorded (a commit is recorded after it is done).
        *self.shared.defrag_keys.lock() = Some(DirtyKeys::new());
        let copied = self.shared.with_db(|live| {
            if path.exists() {
                fs::remove_file(&path).map_err(|e| {
                    StorageError::io(format!("removing stale {}", path.display()), e)
                })?;
            }
            let fresh = open_file(&path, self.cache_bytes())?;
            // The new file's name is durable before anything can point at it.
            match sync_dir(root).and_then(|()| self.copy_into(live, &fresh)) {
                Ok(()) => Ok(fresh),
                Err(e) => {
                    discard(Some(fresh));
                    Err(e)
                }
            }
        });
        let fresh = match copied {
            Ok(fresh) => fresh,
            Err(e) => {
                *self.shared.defrag_keys.lock() = None;
                if !matches!(e, StorageError::Closed) {
                    let _ = fs::remove_file(&path);
                }
                return Err(e);
            }
        };
        // Final round: no other call runs from here to the switch.
        let mut guard = self.shared.db.write();
        let keys = self.shared.defrag_keys.lock().take().unwrap_or_default();
        let Some(live) = guard.as_ref() else {
            discard(Some(fresh));
            return Err(StorageError::Closed);
        };
        if let Err(e) = catch_up(live, &fresh, keys, RedbDurability::Immediate) {
            discard(Some(fresh));
            return Err(e);
        }
        let (switched, result) = write_current(root, next);
        if !switched {
            discard(Some(fresh));
            return result;
        }
        let old = guard.replace(fresh);
        self.generation.store(next, Ordering::Release);
        // Everything the old file held is durable in the fresh one.
        self.shared.dirty.store(false, Ordering::Release);
        drop(guard);
        if let Some(old) = old {
            if let Err(e) = old.close() {
                tracing::warn!(error = %e, "redb backend: closing the previous generation failed");
            }
        }
        // If the directory fsync after the rename failed, the switch may not be durable yet:
        // keep the old file so that a crash cannot leave `REDB_CURRENT` naming a deleted
        // file's predecessor. The next open removes whichever is not live.
        result?;
        let old_path = root.join(generation_file(next - 1));
        if let Err(e) = fs::remove_file(&old_path) {
            tracing::warn!(error = %e, path = %old_path.display(),
                "redb backend: cannot remove the previous generation; it will be removed on next open");
        }
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

/// Makes `fresh` agree with `live` on every key of `keys` (each re-read from a new read
/// transaction of `live`), in one commit of the given durability.
fn catch_up(
    live: &Database,
    fresh: &Database,
    keys: DirtyKeys,
    durability: RedbDurability,
) -> StorageResult<()> {
    let snapshot = Shared::read_tx(live)?;
    let mut sources = Vec::with_capacity(Tree::ALL.len());
    for tree in Tree::ALL {
        sources.push(
            snapshot
                .open_table(table(tree))
                .map_err(|e| engine_err("opening a table to copy", e))?,
        );
    }
    Shared::write_tx(fresh, durability, |tx| {
        let mut targets = Vec::with_capacity(Tree::ALL.len());
        for tree in Tree::ALL {
            targets.push(
                tx.open_table(table(tree))
                    .map_err(|e| engine_err("opening a table", e))?,
            );
        }
        for (tree, key) in &keys {
            let i = tree.id() as usize;
            let value = sources[i]
                .get(key.as_slice())
                .map_err(|e| engine_err("re-reading a key", e))?;
            match value {
                Some(v) => {
                    targets[i]
                        .insert(key.as_slice(), v.value())
                        .map_err(|e| engine_err("copying a key", e))?;
                }
                None => {
                    targets[i]
                        .remove(key.as_slice())
                        .map_err(|e| engine_err("removing a key", e))?;
                }
            }
        }
        drop(targets);
        Ok(())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A test hook (`Debug` so that the backend can derive it).
    #[derive(Default)]
    pub(crate) struct Hook(Mutex<Option<Box<dyn Fn() + Send + Sync>>>);

    impl std::fmt::Debug for Hook {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Hook")
        }
    }

    impl Hook {
        pub(crate) fn call(&self) {
            if let Some(hook) = self.0.lock().as_ref() {
                hook();
            }
        }
    }

    #[test]
    fn generation_files_round_trip() {
        assert_eq!(generation_file(0), "data.redb");
        assert_eq!(generation_file(3), "data.3.redb");
        for n in [0u64, 1, 2, 10, 12345] {
            assert_eq!(parse_generation(&generation_file(n)), Some(n));
        }
        for bad in [
            "",
            "data.",
            "data.0.redb",
            "data..redb",
            "data.1a.redb",
            "data.1.redb.tmp",
            "REDB_CURRENT",
            "RUSD_ENGINE",
        ] {
            assert_eq!(parse_generation(bad), None, "{bad:?}");
        }
    }

    /// Writes complete while a defragment is inside its copy (the shared scenario, paused by
    /// this engine's hook), then the new generation file is current, the old one gone, and a
    /// reopen (with a stale file of another generation, as a crash during a defragment leaves)
    /// sees the same content.
    #[test]
    fn writes_complete_while_defragment_copies() {
        use storage_api::conformance::online_defrag;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let config = BackendConfig::new(root.clone()).with_durability(Durability::Sync);
        let db = RedbBackend::new(config.clone()).unwrap();
        online_defrag::writes_complete_while_defragment_copies(&*db, FINAL_ROUND_KEYS, |hook| {
            *db.defrag_hook.0.lock() = Some(hook)
        });
        assert!(db.shared.defrag_keys.lock().is_none(), "recording still on");
        assert_eq!(db.data_file(), root.join("data.1.redb"));
        assert_eq!(
            fs::read_to_string(root.join(CURRENT_FILE)).unwrap(),
            "data.1.redb\n"
        );
        assert!(!root.join(DATA_FILE).exists(), "old generation not removed");
        db.close().unwrap();
        drop(db);
        fs::write(root.join("data.2.redb"), b"partial").unwrap();
        let db = RedbBackend::new(config).unwrap();
        online_defrag::check_after_defragment(&*db, FINAL_ROUND_KEYS);
        assert!(!root.join("data.2.redb").exists());
        db.close().unwrap();
    }
}
