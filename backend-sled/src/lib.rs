//! # backend-sled
//!
//! [`SledBackend`]: the [sled 0.34.7](https://docs.rs/sled/0.34.7) storage engine behind the
//! rusd [`Backend`] trait. It behaves like the in-memory reference backend
//! ([`storage_api::MemoryBackend`]) in every observable way; this page documents what is
//! specific to sled.
//!
//! # On-disk layout
//! ```text
//! <config.path>/RUSD_ENGINE     engine marker (storage_api::dir), "engine=sled"
//! <config.path>/SLED_CURRENT    name of the live generation directory (absent = "sled")
//! <config.path>/sled/           generation 0: a sled database (db, conf, blobs/, snap.*)
//! <config.path>/sled.<n>/       generation n, created by restore / defragment
//! ```
//! [`restore`](Backend::restore_validated) and [`defragment`](Backend::defragment) build a
//! complete new generation next to the live one (defragment while reads and writes go on, see
//! [`SledBackend`]) and switch to it by atomically replacing
//! `SLED_CURRENT` (write temporary file, fsync, rename, fsync directory). A crash before the
//! switch leaves the old generation live; a crash after it leaves the new one live. Stale
//! generation directories are deleted on the next open.
//!
//! # Atomicity and isolation
//! * A [`WriteBatch`] touching one tree is applied with `Tree::apply_batch`; a batch touching
//!   several trees with one sled multi-tree transaction over all five trees. Both are
//!   recovered all-or-nothing after a crash.
//! * sled has no snapshots: its iterators see concurrent writes. The backend therefore keeps
//!   a *write gate* (a reader-writer lock): every mutating call holds it exclusively, every
//!   [`scan`](Backend::scan) and [`snapshot_to`](Backend::snapshot_to) holds it shared. Scans
//!   and snapshots are thus consistent point-in-time views, exactly like the reference
//!   backend, at the cost of serialising writers with each other (sled already serialises
//!   every transaction and batch process-wide through its global concurrency lock) and
//!   blocking writers while a scan or a snapshot runs. [`get_many`](Backend::get_many) holds it
//!   shared too, so its answers are one view; a single [`get`](Backend::get) takes no gate.
//!
//! # Durability
//! See [`SledBackend`] for the exact guarantee of each [`Durability`] mode.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard, RwLockWriteGuard};
use sled::transaction::{ConflictableTransactionResult, TransactionError};
use sled::Transactional;
use storage_api::dir::{dir_size, prepare_data_dir};
use storage_api::keys::range_is_empty;
use storage_api::snapshot::{SnapshotWriter, ValidatedSnapshot};
use storage_api::{
    Backend, BackendConfig, BackendKind, Durability, KvPair, StorageError, StorageResult, Tree,
    WriteBatch, WriteOp,
};

/// Engine name written into the data directory marker and used in error messages.
pub const ENGINE: &str = "sled";
/// Name of generation 0's directory and prefix of later generations (`sled.<n>`).
pub const GENERATION_DIR: &str = "sled";
/// File naming the live generation directory. Absent means generation 0 ([`GENERATION_DIR`]).
pub const CURRENT_FILE: &str = "SLED_CURRENT";
/// Interval in ms of sled's background maintenance thread with [`Durability::Sync`].
///
/// Durability in `Sync` mode does not depend on it (every write flushes and fsyncs before it
/// returns), but sled 0.34.7 only reclaims log segments (its garbage collection) from that
/// thread: with `flush_every_ms(None)` the files would never shrink or reuse cleaned space.
pub const SYNC_MAINTENANCE_INTERVAL_MS: u64 = 1000;

/// How long `new` (and the generation switch) keeps retrying when sled reports that another
/// handle still holds the database file lock (sled's I/O threads release it shortly after a
/// `Db` is dropped).
const OPEN_LOCK_RETRY: Duration = Duration::from_secs(5);
/// Operations per `apply_batch` while filling a new generation.
const IMPORT_CHUNK_OPS: usize = 4096;
/// Payload bytes per `apply_batch` while filling a new generation.
const IMPORT_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// An online [`defragment`](Backend::defragment) stops its catch-up rounds (which run
/// beside writers) and takes the final, exclusive round once at most this many keys were
/// written since the previous round.
const FINAL_ROUND_KEYS: usize = 512;
/// At most this many catch-up rounds run beside writers; the final round then takes whatever
/// is left (writers faster than the copy cannot keep a defragment from finishing).
const MAX_CATCH_UP_ROUNDS: usize = 32;

/// Keys written while an online defragment copies, per tree (ordered, so each catch-up round
/// reads and writes them in key order).
type DirtyKeys = BTreeSet<(Tree, Vec<u8>)>;

fn sled_err(context: impl Into<String>, e: sled::Error) -> StorageError {
    match e {
        sled::Error::Io(io) => StorageError::io(context, io),
        sled::Error::Corruption { .. } => StorageError::Corruption(format!(
            "sled reported corruption while {}: {e}",
            context.into()
        )),
        other => StorageError::engine(ENGINE, context, other),
    }
}

/// Runs `f`, turning a panic inside sled into [`StorageError::Corruption`].
///
/// sled 0.34.7 asserts its own invariants with panics. The one seen in practice is a tree that
/// its recovery rebuilt with a page missing ("cannot find pid N in view_for_key", upstream
/// issue spacejam/sled#1039), which every later read of that tree hits. A panic must not reach
/// an embedder or take a server down, so each call into sled runs through here. sled's locks
/// (`parking_lot`) are not poisoned by a panic and the backend's own are released while the
/// panic unwinds; the next call simply tries again.
fn contain_panic<T>(dir: &Path, f: impl FnOnce() -> StorageResult<T>) -> StorageResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        Err(StorageError::Corruption(format!(
            "sled panicked on the database in {}: {what}",
            dir.display()
        )))
    })
}

fn tx_err(context: &str, e: TransactionError<()>) -> StorageError {
    match e {
        TransactionError::Storage(e) => sled_err(context, e),
        TransactionError::Abort(()) => StorageError::engine(ENGINE, context, "transaction aborted"),
    }
}

/// The directory name of generation `n`.
fn generation_name(n: u64) -> String {
    if n == 0 {
        GENERATION_DIR.to_string()
    } else {
        format!("{GENERATION_DIR}.{n}")
    }
}

/// The generation number of a directory name, if it is one of ours.
fn parse_generation(name: &str) -> Option<u64> {
    if name == GENERATION_DIR {
        return Some(0);
    }
    let digits = name.strip_prefix(GENERATION_DIR)?.strip_prefix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// fsyncs a directory so that entries created or renamed in it are durable.
fn sync_dir(path: &Path) -> StorageResult<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(format!("syncing directory {}", path.display()), e))
}

/// The live generation recorded in `<root>/SLED_CURRENT` (0 when the file is absent).
fn read_current(root: &Path) -> StorageResult<u64> {
    let path = root.join(CURRENT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => parse_generation(text.trim()).ok_or_else(|| {
            StorageError::Corruption(format!(
                "{} names {:?}, which is not a sled generation directory",
                path.display(),
                text.trim()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StorageError::io(format!("reading {}", path.display()), e)),
    }
}

/// Atomically records `generation` as the live one: temporary file, fsync, rename, fsync
/// of the data directory. Returns whether the rename happened (the switch is then in effect
/// even if the final directory fsync failed).
fn write_current(root: &Path, generation: u64) -> (bool, StorageResult<()>) {
    let tmp = root.join(format!("{CURRENT_FILE}.tmp"));
    let prepared = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(format!("{}\n", generation_name(generation)).as_bytes())?;
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

/// Deletes generation directories other than `live` and temporary files left by a crash.
/// Failures are logged: leftovers only cost disk space.
fn remove_stale(root: &Path, live: u64) {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, path = %root.display(), "sled backend: cannot list data directory");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let result = if name == format!("{CURRENT_FILE}.tmp") {
            fs::remove_file(&path)
        } else if parse_generation(name).is_some_and(|g| g != live) && path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            continue;
        };
        match result {
            Ok(()) => {
                tracing::info!(path = %path.display(), "sled backend: removed stale generation")
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "sled backend: cannot remove stale generation")
            }
        }
    }
}

/// One open sled database (one generation directory).
struct Inner {
    dir: PathBuf,
    generation: u64,
    db: sled::Db,
    /// The five trees, indexed by [`Tree::id`].
    trees: [sled::Tree; 5],
    /// `<dir>/db`, kept open to fsync it (sled itself only uses `sync_file_range`).
    db_file: File,
    /// Names of files in `<dir>/blobs` already fsynced, with their length then (upstream sled
    /// never fsyncs blob files; the vendored copy does, see the type docs).
    synced_blobs: Mutex<HashMap<OsString, u64>>,
}

impl Inner {
    /// Opens (recovers) the sled database in `dir`; a panic of sled's recovery is a
    /// [`StorageError::Corruption`].
    fn open(dir: PathBuf, generation: u64, config: &BackendConfig) -> StorageResult<Inner> {
        let shown = dir.clone();
        contain_panic(&shown, || Self::open_unguarded(dir, generation, config))
    }

    fn open_unguarded(
        dir: PathBuf,
        generation: u64,
        config: &BackendConfig,
    ) -> StorageResult<Inner> {
        let flush_every_ms = SledBackend::flush_every_ms(config.durability);
        let deadline = Instant::now() + OPEN_LOCK_RETRY;
        let db = loop {
            let result = sled::Config::new()
                .path(&dir)
                .cache_capacity(config.cache_size_bytes())
                .flush_every_ms(flush_every_ms)
                .open();
            match result {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(sled_err(format!("opening {}", dir.display()), e)),
            }
        };
        let open = |t: Tree| {
            db.open_tree(t.name())
                .map_err(|e| sled_err(format!("opening tree {t}"), e))
        };
        let trees = [
            open(Tree::Kv)?,
            open(Tree::Index)?,
            open(Tree::Meta)?,
            open(Tree::Lease)?,
            open(Tree::Auth)?,
        ];
        let db_path = dir.join("db");
        let db_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_path)
            .map_err(|e| StorageError::io(format!("opening {}", db_path.display()), e))?;
        let inner = Inner {
            dir,
            generation,
            db,
            trees,
            db_file,
            synced_blobs: Mutex::new(HashMap::new()),
        };
        // Make the files sled created (and its unsynced `conf`) durable once.
        let conf = inner.dir.join("conf");
        if conf.exists() {
            File::open(&conf)
                .and_then(|f| f.sync_all())
                .map_err(|e| StorageError::io(format!("syncing {}", conf.display()), e))?;
        }
        inner.make_durable()?;
        sync_dir(&inner.dir)?;
        if let Some(parent) = inner.dir.parent() {
            sync_dir(parent)?;
        }
        Ok(inner)
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree.id() as usize]
    }

    /// fsyncs blob files (values too large for sled's log) that are new or changed length since
    /// they were last synced, and the blob directory if any was. A blob file is remembered with
    /// its length when synced: sled's own threads (consolidation of a node holding a large
    /// value) write blobs outside the write gate, so a blob can be seen while it is still being
    /// written; its final length differs and it is synced again at the next call.
    fn sync_new_blobs(&self) -> StorageResult<()> {
        let blob_dir = self.dir.join("blobs");
        let mut synced = self.synced_blobs.lock();
        let entries = match fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(StorageError::io(
                    format!("listing {}", blob_dir.display()),
                    e,
                ))
            }
        };
        let mut present = HashMap::with_capacity(synced.len());
        let mut synced_any = false;
        for entry in entries {
            let entry = entry
                .map_err(|e| StorageError::io(format!("listing {}", blob_dir.display()), e))?;
            let name = entry.file_name();
            let path = entry.path();
            let file = match File::open(&path) {
                Ok(f) => f,
                // Removed by sled's garbage collection in the meantime.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StorageError::io(
                        format!("opening blob {}", path.display()),
                        e,
                    ))
                }
            };
            let len = file
                .metadata()
                .map_err(|e| StorageError::io(format!("blob {}", path.display()), e))?
                .len();
            if synced.get(&name) != Some(&len) {
                file.sync_all()
                    .map_err(|e| StorageError::io(format!("syncing blob {}", path.display()), e))?;
                synced_any = true;
            }
            present.insert(name, len);
        }
        if synced_any {
            sync_dir(&blob_dir)?;
        }
        *synced = present;
        Ok(())
    }

    /// Writes sled's log buffers out (`pwrite` + `sync_file_range`) and then `fdatasync`s
    /// the log file, which also flushes the drive's volatile cache. Between the two, blobs are
    /// synced again: a log buffer is written only once every reservation in it completed, and
    /// a reservation for a blob completes after the whole blob file is written, so every blob
    /// the flushed log refers to is complete here and durable before the log's `fdatasync`.
    fn flush_log(&self) -> StorageResult<()> {
        self.db
            .flush()
            .map_err(|e| sled_err("flushing the log", e))?;
        self.sync_new_blobs()?;
        self.db_file
            .sync_data()
            .map_err(|e| StorageError::io(format!("syncing {}", self.dir.join("db").display()), e))
    }

    /// Makes everything durable, then drops the database. sled's own `Drop` syncs its file
    /// again and panics when that fails (after an I/O error, or on a disk that is gone), so
    /// the drop runs inside [`contain_panic`] too.
    fn close(self) -> StorageResult<()> {
        let dir = self.dir.clone();
        contain_panic(&dir, move || {
            let result = self.make_durable();
            drop(self);
            result
        })
    }

    /// Blob fsync + log flush + log fsync. Requires the same exclusion as
    /// [`sync_new_blobs`](Inner::sync_new_blobs).
    fn make_durable(&self) -> StorageResult<()> {
        self.sync_new_blobs()?;
        self.flush_log()
    }

    fn apply(&self, batch: &WriteBatch) -> StorageResult<()> {
        let ops = batch.ops();
        let Some(first) = ops.first() else {
            return Ok(());
        };
        let first_tree = first.tree();
        if ops.iter().all(|op| op.tree() == first_tree) {
            let mut b = sled::Batch::default();
            for op in ops {
                match op {
                    WriteOp::Put { key, value, .. } => b.insert(key.as_slice(), value.as_slice()),
                    WriteOp::Delete { key, .. } => b.remove(key.as_slice()),
                }
            }
            return self
                .tree(first_tree)
                .apply_batch(b)
                .map_err(|e| sled_err(format!("applying a batch to tree {first_tree}"), e));
        }
        // Never iterate a tree in here: the transaction holds sled's global write lock and
        // iterators take its read lock.
        self.trees[..]
            .transaction(|views| -> ConflictableTransactionResult<(), ()> {
                for op in ops {
                    match op {
                        WriteOp::Put { tree, key, value } => {
                            views[tree.id() as usize].insert(key.as_slice(), value.as_slice())?;
                        }
                        WriteOp::Delete { tree, key } => {
                            views[tree.id() as usize].remove(key.as_slice())?;
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| tx_err("committing a multi-tree batch", e))
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> StorageResult<Vec<KvPair>> {
        if range_is_empty(start, end) {
            return Ok(Vec::new());
        }
        let upper = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end)
        };
        let iter = self
            .tree(tree)
            .range::<&[u8], _>((Bound::Included(start), upper));
        let limit = if limit == 0 { usize::MAX } else { limit };
        iter.take(limit)
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| sled_err(format!("scanning tree {tree}"), e))
            })
            .collect()
    }

    /// Fills this (fresh) generation from `(tree, key, value)` records in (tree, key) order,
    /// in bounded chunks. Atomicity is not needed: the generation is not live yet.
    fn import(
        &self,
        records: impl Iterator<Item = StorageResult<(Tree, Vec<u8>, Vec<u8>)>>,
    ) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        let mut current: Option<Tree> = None;
        let (mut ops, mut bytes) = (0usize, 0usize);
        for record in records {
            let (tree, key, value) = record?;
            if current != Some(tree) || ops >= IMPORT_CHUNK_OPS || bytes >= IMPORT_CHUNK_BYTES {
                if let Some(t) = current {
                    self.import_chunk(t, std::mem::take(&mut batch))?;
                }
                current = Some(tree);
                ops = 0;
                bytes = 0;
            }
            ops += 1;
            bytes += key.len() + value.len();
            batch.insert(key, value);
        }
        if let Some(t) = current {
            self.import_chunk(t, batch)?;
        }
        Ok(())
    }

    /// Copies every tree of `live` into this (fresh) generation with one `insert` per key.
    ///
    /// Not [`import`](Inner::import)'s `apply_batch`: sled takes its *process-wide*
    /// concurrency lock exclusively for every batch (and transaction), so batches into the
    /// fresh generation would stall every write to the live one; single inserts take it
    /// shared, as the live writers do.
    fn copy_online(&self, live: &Inner) -> StorageResult<()> {
        for tree in Tree::ALL {
            let target = self.tree(tree);
            for item in live.tree(tree).iter() {
                let (k, v) = item.map_err(|e| sled_err(format!("copying tree {tree}"), e))?;
                target
                    .insert(k, v)
                    .map_err(|e| sled_err(format!("filling tree {tree} of a new generation"), e))?;
            }
        }
        Ok(())
    }

    /// Makes this (fresh) generation agree with `live` on every key of `keys`: each is read
    /// again from `live` and inserted (present) or removed (absent), one key at a time (see
    /// [`copy_online`](Inner::copy_online) for why not in batches).
    fn catch_up(&self, live: &Inner, keys: DirtyKeys) -> StorageResult<()> {
        for (tree, key) in keys {
            let value = live
                .tree(tree)
                .get(&key)
                .map_err(|e| sled_err(format!("re-reading tree {tree} for a defragment"), e))?;
            let target = self.tree(tree);
            match value {
                Some(value) => target.insert(key, value).map(drop),
                None => target.remove(key).map(drop),
            }
            .map_err(|e| sled_err(format!("catching up tree {tree} of a new generation"), e))?;
        }
        Ok(())
    }

    fn import_chunk(&self, tree: Tree, batch: sled::Batch) -> StorageResult<()> {
        self.tree(tree)
            .apply_batch(batch)
            .map_err(|e| sled_err(format!("filling tree {tree} of a new generation"), e))
    }
}

/// The sled 0.34.7 backend. See the [crate docs](crate) for layout and isolation.
///
/// # Durability guarantees
/// * [`Durability::Sync`]: every mutating call (`put`, `delete`, `write`, `batch_*`,
///   `restore*`) returns only after (1) every new blob file (sled stores values too large
///   for its log as separate files in `blobs/`; upstream never fsyncs them) and the blob
///   directory were `fsync`ed, (2) `Db::flush` wrote sled's log buffers with `pwrite` +
///   `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)`, and (3) the log file `db` was
///   `fdatasync`ed (`File::sync_data`). Step (3) is what makes the data survive power loss:
///   `sync_file_range` alone neither flushes the drive's volatile write cache nor the file
///   size. Blobs are also durable before the log message that points at them is written:
///   the workspace builds sled from `vendor/sled`, whose one code change syncs each blob
///   file and the blob directory as sled writes it (`vendor/sled/RUSD-PATCH.md`; upstream
///   never syncs them, and a power cut that kept the message but not the blob left a tree
///   sled's recovery could not read). Step (1) stays as a second line of defence. The
///   write is visible to other threads slightly before it is durable (the flush happens
///   after the write gate is released, so concurrent writers share flushes), exactly as
///   with the reference backend. sled's background thread still runs every
///   [`SYNC_MAINTENANCE_INTERVAL_MS`] for log garbage collection.
/// * [`Durability::Buffered`]: writes are acknowledged from sled's in-memory log buffers;
///   sled's flusher thread (`flush_every_ms(interval)`, at least 1 ms) writes them out every
///   interval and then calls `fsync` on the log file. A crash, even of the process alone
///   (`kill -9`), loses at most the writes of the last interval (plus the flush time);
///   batches are recovered all-or-nothing. [`flush`](Backend::flush) is as durable as a
///   `Sync` write (blob fsync + log flush + `fdatasync`).
/// * [`close`](Backend::close) and `Drop` make everything durable the same way (`Drop`
///   only logs a failure).
///
/// # Engine-specific operations
/// * [`compact`](Backend::compact) is a no-op: sled 0.34.7 has no compaction API; its
///   background thread rewrites log segments that are at least half dead and truncates the
///   file from the end.
/// * [`defragment`](Backend::defragment) is an *online* rebuild: it copies all five trees
///   into a fresh generation directory while reads and writes go on against the live one
///   (it holds neither the write gate nor the state lock exclusively; it inserts one key at a
///   time, because a sled batch would take sled's process-wide concurrency lock exclusively
///   and stall the live writers), then makes the fresh generation durable. Every key a mutating
///   call touches while the copy runs is recorded (a set of (tree, key), filled under the
///   write gate after the change is applied, only while a defragment runs); catch-up rounds
///   then re-read each recorded key from the live generation and insert it into (present) or
///   remove it from (absent) the fresh one, until at most 512 keys are left (or after 32
///   rounds). Only the final round takes the state lock exclusively: it copies the last
///   recorded keys, makes the fresh generation durable, switches `SLED_CURRENT` to it
///   atomically (the commit point, as before: a crash before it leaves the old generation
///   live, after it the new one) and deletes the old generation. Calls made during that
///   final round wait for it. A defragment needs free disk space for a second copy of the
///   live data. Defragment and restore are serialised with each other; a
///   [`close`](Backend::close) during a defragment waits for it to finish.
/// * [`restore_validated`](Backend::restore_validated) builds the new generation from the
///   snapshot the same way, so its memory use is bounded (chunks of at most
///   4096 records / 8 MiB) whatever the snapshot size, and it is atomic even across a crash.
///   It blocks every other call while it runs (but waits for a running defragment without
///   blocking them).
/// * [`size`](Backend::size) is the apparent size of every file below `config.path`.
///
/// # Opening
/// sled locks its log file exclusively, so a directory can be open in only one
/// `SledBackend` at a time. `new` retries for up to 5 s while the lock is held (sled's I/O
/// threads release it shortly after the previous handle was closed or dropped), then fails
/// with [`StorageError::Io`].
pub struct SledBackend {
    config: BackendConfig,
    /// `None` once closed. Taken exclusively by `close`, `restore_validated` and the final
    /// round of `defragment` (upgradable, i.e. shared with every call but `close` and
    /// `restore`, while it copies); shared by every other call.
    state: RwLock<Option<Inner>>,
    /// The write gate: exclusive for mutations, shared for scans and snapshots. Always
    /// taken after `state`, never while already held.
    gate: RwLock<()>,
    /// Serialises [`defragment`](Backend::defragment) and
    /// [`restore_validated`](Backend::restore_validated) with each other. Taken before
    /// `state`, so a restore waiting for a defragment does not hold back other calls.
    maintenance: Mutex<()>,
    /// `Some` while an online defragment copies: every (tree, key) a mutating call touched
    /// since the copy began (or since the last catch-up round took the set). Filled under the
    /// write gate, after the change is applied to the live generation.
    dirty: Mutex<Option<DirtyKeys>>,
    /// Test hook called by `defragment` once the bulk copy is done, before the catch-up
    /// rounds, with no lock held exclusively.
    #[cfg(test)]
    defrag_hook: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let generation = self
            .state
            .try_read()
            .map(|s| s.as_ref().map(|i| i.generation));
        f.debug_struct("SledBackend")
            .field("config", &self.config)
            .field("generation", &generation)
            .finish()
    }
}

impl SledBackend {
    /// The `flush_every_ms` value given to sled for a durability mode:
    /// `Sync` → `Some(`[`SYNC_MAINTENANCE_INTERVAL_MS`]`)` (maintenance only; writes flush
    /// themselves), `Buffered { interval }` → `Some(interval in ms, at least 1)`.
    pub fn flush_every_ms(durability: Durability) -> Option<u64> {
        match durability {
            Durability::Sync => Some(SYNC_MAINTENANCE_INTERVAL_MS),
            Durability::Buffered { interval } => Some(
                u64::try_from(interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
        }
    }

    /// The configuration this backend was opened with.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// The directory of the live sled database (`<path>/sled` or `<path>/sled.<n>` after a
    /// restore or defragment).
    pub fn active_dir(&self) -> StorageResult<PathBuf> {
        self.with_inner(|inner| Ok(inner.dir.clone()))
    }

    fn is_sync(&self) -> bool {
        self.config.durability == Durability::Sync
    }

    fn with_inner<T>(&self, f: impl FnOnce(&Inner) -> StorageResult<T>) -> StorageResult<T> {
        let guard = self.state.read();
        let inner = guard.as_ref().ok_or(StorageError::Closed)?;
        contain_panic(&inner.dir, || f(inner))
    }

    /// Runs a mutation under the exclusive write gate, then (in `Sync` mode) makes it durable.
    /// `touched` names every (tree, key) it may change; they are recorded for a running
    /// online defragment after `f` ran (whether or not it succeeded).
    fn mutate<'k>(
        &self,
        touched: impl IntoIterator<Item = (Tree, &'k [u8])>,
        f: impl FnOnce(&Inner) -> StorageResult<()>,
    ) -> StorageResult<()> {
        self.with_inner(|inner| {
            {
                let _gate = self.gate.write();
                let result = f(inner);
                self.mark_dirty(touched);
                result?;
                if self.is_sync() {
                    inner.sync_new_blobs()?;
                }
            }
            if self.is_sync() {
                inner.flush_log()?;
            }
            Ok(())
        })
    }

    /// Records keys touched by a mutation if an online defragment is copying.
    fn mark_dirty<'k>(&self, touched: impl IntoIterator<Item = (Tree, &'k [u8])>) {
        if let Some(dirty) = self.dirty.lock().as_mut() {
            for (tree, key) in touched {
                dirty.insert((tree, key.to_vec()));
            }
        }
    }

    /// Opens generation `live.generation + 1` (removing a stale directory of that name) and
    /// fills it with `fill`. On failure the new directory is removed.
    fn build_generation(
        &self,
        live: &Inner,
        fill: impl FnOnce(&Inner, &Inner) -> StorageResult<()>,
    ) -> StorageResult<Inner> {
        let generation = live.generation + 1;
        let dir = self.config.path.join(generation_name(generation));
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .map_err(|e| StorageError::io(format!("removing stale {}", dir.display()), e))?;
        }
        let built = Inner::open(dir.clone(), generation, &self.config).and_then(|fresh| {
            fill(live, &fresh)?;
            Ok(fresh)
        });
        if built.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        built
    }

    /// Drops a generation that will not become live and removes its directory.
    fn discard(fresh: Inner) {
        let dir = fresh.dir.clone();
        // A failed sync in sled's own `Drop` panics; the generation is being thrown away.
        let _ = contain_panic(&dir, move || {
            drop(fresh);
            Ok(())
        });
        let _ = fs::remove_dir_all(&dir);
    }

    /// Builds generation `current + 1` with `fill`, makes it durable and switches to it;
    /// returns the previous generation for [`retire`](SledBackend::retire). On any failure
    /// before the switch the live generation is untouched and the new directory is removed.
    fn replace_generation(
        &self,
        state: &mut RwLockWriteGuard<'_, Option<Inner>>,
        fill: impl FnOnce(&Inner, &Inner) -> StorageResult<()>,
    ) -> StorageResult<Option<Inner>> {
        let live = state.as_ref().ok_or(StorageError::Closed)?;
        let fresh = self.build_generation(live, fill)?;
        self.switch_generation(state, fresh)
    }

    /// Makes `fresh` durable and switches `SLED_CURRENT` to it (the commit point); returns
    /// the previous generation for [`retire`](SledBackend::retire). On a failure before the
    /// switch the live generation is untouched and `fresh` is removed.
    fn switch_generation(
        &self,
        state: &mut RwLockWriteGuard<'_, Option<Inner>>,
        fresh: Inner,
    ) -> StorageResult<Option<Inner>> {
        if let Err(e) = fresh.make_durable() {
            Self::discard(fresh);
            return Err(e);
        }
        let root = &self.config.path;
        let generation = fresh.generation;
        let (switched, result) = write_current(root, generation);
        if !switched {
            Self::discard(fresh);
            return result.map(|()| None);
        }
        let old = state.replace(fresh);
        match result {
            Ok(()) => Ok(old),
            // If the directory fsync after the rename failed, the switch may not be durable
            // yet: keep the old generation so that a crash cannot leave `SLED_CURRENT`
            // naming a deleted directory. The next open removes whichever is not live.
            Err(e) => {
                drop(old);
                Err(e)
            }
        }
    }

    /// Closes the generation a switch replaced and deletes its directory. Called after the
    /// state lock is released: closing a sled database flushes it and joins its threads.
    fn retire(old: Option<Inner>) {
        let Some(old) = old else { return };
        let old_dir = old.dir.clone();
        if let Err(e) = contain_panic(&old_dir, move || {
            drop(old);
            Ok(())
        }) {
            tracing::warn!(error = %e, "sled backend: closing the previous generation failed");
        }
        if let Err(e) = fs::remove_dir_all(&old_dir) {
            tracing::warn!(error = %e, path = %old_dir.display(),
                "sled backend: cannot remove the previous generation; it will be removed on next open");
        }
    }
}

impl Backend for SledBackend {
    const KIND: BackendKind = BackendKind::Sled;

    fn new(config: BackendConfig) -> StorageResult<Arc<Self>> {
        prepare_data_dir(&config.path, ENGINE)?;
        let generation = read_current(&config.path)?;
        let dir = config.path.join(generation_name(generation));
        if generation > 0 && !dir.is_dir() {
            return Err(StorageError::Corruption(format!(
                "{} names {}, which does not exist",
                config.path.join(CURRENT_FILE).display(),
                dir.display()
            )));
        }
        remove_stale(&config.path, generation);
        let inner = Inner::open(dir, generation, &config)?;
        Ok(Arc::new(SledBackend {
            config,
            state: RwLock::new(Some(inner)),
            gate: RwLock::new(()),
            maintenance: Mutex::new(()),
            dirty: Mutex::new(None),
            #[cfg(test)]
            defrag_hook: Mutex::new(None),
        }))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.mutate([(tree, key)], |inner| {
            inner
                .tree(tree)
                .insert(key, value)
                .map(drop)
                .map_err(|e| sled_err(format!("inserting into tree {tree}"), e))
        })
    }

    fn get(&self, tree: Tree, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.with_inner(|inner| {
            inner
                .tree(tree)
                .get(key)
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(|e| sled_err(format!("reading tree {tree}"), e))
        })
    }

    /// Every key under the shared write gate, so the answers are one point-in-time view (as a
    /// [`scan`](Backend::scan)'s), with the tree looked up once.
    fn get_many(&self, tree: Tree, keys: &[&[u8]]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        self.with_inner(|inner| {
            let _gate = self.gate.read();
            let t = inner.tree(tree);
            keys.iter()
                .map(|key| {
                    t.get(key)
                        .map(|v| v.map(|v| v.to_vec()))
                        .map_err(|e| sled_err(format!("reading tree {tree}"), e))
                })
                .collect()
        })
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> StorageResult<()> {
        self.mutate([(tree, key)], |inner| {
            inner
                .tree(tree)
                .remove(key)
                .map(drop)
                .map_err(|e| sled_err(format!("removing from tree {tree}"), e))
        })
    }

    fn write(&self, batch: &WriteBatch) -> StorageResult<()> {
        if batch.is_empty() {
            return self.with_inner(|_| Ok(()));
        }
        self.mutate(
            batch.ops().iter().map(|op| (op.tree(), op.key())),
            |inner| inner.apply(batch),
        )
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> StorageResult<Vec<KvPair>> {
        self.with_inner(|inner| {
            let _gate = self.gate.read();
            inner.scan(tree, start, end, limit)
        })
    }

    fn snapshot_to(&self, writer: &mut dyn Write) -> StorageResult<u64> {
        self.with_inner(|inner| {
            let _gate = self.gate.read();
            let mut w = SnapshotWriter::new(writer)?;
            for tree in Tree::ALL {
                for item in inner.tree(tree).iter() {
                    let (k, v) = item
                        .map_err(|e| sled_err(format!("reading tree {tree} for a snapshot"), e))?;
                    w.entry(tree, &k, &v)?;
                }
            }
            w.finish()
        })
    }

    /// Builds a new generation from the snapshot and switches to it atomically (see the
    /// [type docs](SledBackend)); durable before it returns, in every durability mode.
    fn restore_validated(&self, snapshot: ValidatedSnapshot) -> StorageResult<()> {
        contain_panic(&self.config.path, || self.restore_inner(snapshot))
    }

    /// No-op (sled has no compaction API; see the [type docs](SledBackend)).
    fn compact(&self, _revision: i64) -> StorageResult<()> {
        self.with_inner(|_| Ok(()))
    }

    /// Apparent size of every file below `config.path`.
    fn size(&self) -> StorageResult<u64> {
        self.with_inner(|_| dir_size(&self.config.path))
    }

    /// Online rebuild into a fresh generation (see the [type docs](SledBackend)): every
    /// other call keeps running except during the short final round.
    fn defragment(&self) -> StorageResult<()> {
        let result = contain_panic(&self.config.path, || self.defragment_inner());
        if result.is_err() {
            // Stop recording keys for a rebuild that is over (already done unless it panicked).
            *self.dirty.lock() = None;
        }
        result
    }

    fn flush(&self) -> StorageResult<()> {
        self.with_inner(|inner| {
            {
                let _gate = self.gate.read();
                inner.sync_new_blobs()?;
            }
            inner.flush_log()
        })
    }

    fn is_closed(&self) -> bool {
        self.state.read().is_none()
    }

    fn durability(&self) -> Durability {
        self.config.durability
    }

    fn close(&self) -> StorageResult<()> {
        let mut state = self.state.write();
        let inner = state.take().ok_or(StorageError::Closed)?;
        inner.close()
    }
}

impl SledBackend {
    /// [`Backend::restore_validated`] without the panic guard.
    fn restore_inner(&self, snapshot: ValidatedSnapshot) -> StorageResult<()> {
        let _maintenance = self.maintenance.lock();
        let mut state = self.state.write();
        state.as_ref().ok_or(StorageError::Closed)?;
        let old = self.replace_generation(&mut state, |_, fresh| {
            fresh.import(
                snapshot
                    .entries()?
                    .map(|e| e.map(|e| (e.tree, e.key, e.value))),
            )
        })?;
        drop(state);
        Self::retire(old);
        Ok(())
    }

    /// [`Backend::defragment`] without the panic guard.
    fn defragment_inner(&self) -> StorageResult<()> {
        let _maintenance = self.maintenance.lock();
        // Shared with every other call; only `close` (and this call's final round) need more.
        let state = self.state.upgradable_read();
        let live = state.as_ref().ok_or(StorageError::Closed)?;
        // From here every mutation records its keys after applying them, so a key the copy
        // below misses or copies stale is re-read by a later round.
        *self.dirty.lock() = Some(DirtyKeys::new());
        let copied = self.build_generation(live, |live, fresh| {
            fresh.copy_online(live)?;
            #[cfg(test)]
            if let Some(hook) = self.defrag_hook.lock().as_ref() {
                hook();
            }
            for _ in 0..MAX_CATCH_UP_ROUNDS {
                let keys = {
                    let mut dirty = self.dirty.lock();
                    match dirty.as_mut() {
                        Some(keys) if keys.len() > FINAL_ROUND_KEYS => std::mem::take(keys),
                        _ => break,
                    }
                };
                fresh.catch_up(live, keys)?;
            }
            // The bulk of the fresh generation goes to disk here, beside other calls: the
            // final round then only flushes its last few keys.
            fresh.make_durable()
        });
        let fresh = match copied {
            Ok(fresh) => fresh,
            Err(e) => {
                *self.dirty.lock() = None;
                return Err(e);
            }
        };
        // Final round: no other call runs from here to the switch.
        let mut state = RwLockUpgradableReadGuard::upgrade(state);
        let keys = self.dirty.lock().take().unwrap_or_default();
        let Some(live) = state.as_ref() else {
            Self::discard(fresh);
            return Err(StorageError::Closed);
        };
        if let Err(e) = fresh.catch_up(live, keys) {
            Self::discard(fresh);
            return Err(e);
        }
        let old = self.switch_generation(&mut state, fresh)?;
        drop(state);
        Self::retire(old);
        Ok(())
    }
}

impl Drop for SledBackend {
    fn drop(&mut self) {
        if let Some(inner) = self.state.get_mut().take() {
            if let Err(e) = inner.close() {
                tracing::warn!(error = %e, "sled backend: flushing on drop failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside a call (here the defragment's test hook, standing in for one of sled's
    /// invariant panics such as "cannot find pid N in view_for_key") comes back as
    /// `StorageError::Corruption` naming the data directory and the panic's message; the
    /// backend keeps serving, and the next defragment works.
    #[test]
    fn a_panic_inside_a_call_is_a_corruption_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = BackendConfig::new(dir.path().join("store")).with_durability(Durability::Sync);
        let db = SledBackend::new(config.clone()).unwrap();
        db.put(Tree::Kv, b"a", b"1").unwrap();
        *db.defrag_hook.lock() = Some(Box::new(|| panic!("cannot find pid 5 in view_for_key")));
        let err = db.defragment().unwrap_err();
        let StorageError::Corruption(message) = &err else {
            panic!("expected a corruption error, got {err:?}");
        };
        assert_eq!(
            message,
            &format!(
                "sled panicked on the database in {}: cannot find pid 5 in view_for_key",
                config.path.display()
            )
        );
        assert!(
            db.dirty.lock().is_none(),
            "keys still recorded after the failed rebuild"
        );
        *db.defrag_hook.lock() = None;
        db.put(Tree::Kv, b"b", b"2").unwrap();
        db.defragment().unwrap();
        assert_eq!(
            db.scan(Tree::Kv, b"", b"", 0).unwrap(),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
    }

    /// A panic with a `String` payload keeps its text; any other payload is named as such.
    #[test]
    fn contain_panic_payloads() {
        let dir = Path::new("/data/x");
        let owned = contain_panic::<()>(dir, || panic!("{} {}", "formatted", 7)).unwrap_err();
        assert_eq!(
            owned.to_string(),
            StorageError::Corruption(
                "sled panicked on the database in /data/x: formatted 7".into()
            )
            .to_string()
        );
        let other = contain_panic::<()>(dir, || std::panic::panic_any(42_u32)).unwrap_err();
        assert!(
            matches!(&other, StorageError::Corruption(m) if m == "sled panicked on the database in /data/x: a panic without a message"),
            "{other:?}"
        );
        assert_eq!(contain_panic(dir, || Ok(5)).unwrap(), 5);
    }

    /// Writes complete while a defragment is inside its copy (the shared scenario, paused by
    /// this engine's test hook), then the new generation is in use and survives a reopen.
    #[test]
    fn writes_complete_while_defragment_copies() {
        use storage_api::conformance::online_defrag;
        let dir = tempfile::tempdir().unwrap();
        let config = BackendConfig::new(dir.path().join("store")).with_durability(Durability::Sync);
        let db = SledBackend::new(config.clone()).unwrap();
        online_defrag::writes_complete_while_defragment_copies(&*db, FINAL_ROUND_KEYS, |hook| {
            *db.defrag_hook.lock() = Some(hook)
        });
        assert!(db.dirty.lock().is_none(), "dirty tracking still on");
        assert_eq!(
            db.active_dir().unwrap(),
            dir.path().join("store").join("sled.1")
        );
        db.close().unwrap();
        drop(db);
        let db = SledBackend::new(config).unwrap();
        online_defrag::check_after_defragment(&*db, FINAL_ROUND_KEYS);
        db.close().unwrap();
    }

    #[test]
    fn generation_names_round_trip() {
        assert_eq!(generation_name(0), "sled");
        assert_eq!(generation_name(7), "sled.7");
        for n in [0u64, 1, 2, 10, 12345] {
            assert_eq!(parse_generation(&generation_name(n)), Some(n));
        }
        for bad in [
            "",
            "sled.",
            "sled.0",
            "sled.-1",
            "sled.1a",
            "sledx",
            "sled.1.tmp",
            "db",
            "SLED_CURRENT",
        ] {
            assert_eq!(parse_generation(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn flush_interval_mapping() {
        assert_eq!(
            SledBackend::flush_every_ms(Durability::Sync),
            Some(SYNC_MAINTENANCE_INTERVAL_MS)
        );
        assert_eq!(
            SledBackend::flush_every_ms(Durability::Buffered {
                interval: Duration::from_millis(250)
            }),
            Some(250)
        );
        assert_eq!(
            SledBackend::flush_every_ms(Durability::Buffered {
                interval: Duration::from_micros(10)
            }),
            Some(1)
        );
        assert_eq!(
            SledBackend::flush_every_ms(Durability::Buffered {
                interval: Duration::ZERO
            }),
            Some(1)
        );
    }
}
