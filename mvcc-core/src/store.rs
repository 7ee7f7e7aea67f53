//! [`MvccStore`]: etcd's MVCC key-value store over any [`Backend`].
//!
//! # Storage layout
//! * `kv` tree: revision key ([`Revision::to_key`]) → encoded [`KeyValue`] ([`KeyValue::encode`]).
//! * `meta` tree: [`META_CURRENT_REV`], [`META_SCHEDULED_COMPACT_REV`],
//!   [`META_FINISHED_COMPACT_REV`] (8-byte big-endian `i64`), [`META_FORMAT`]. As in etcd the
//!   current revision is recovered from the `kv` tree and the compaction revisions;
//!   [`META_CURRENT_REV`] is only a guard, written when a compaction is scheduled, so a commit
//!   (puts and tombstones alike) writes the `kv` and `index` trees alone.
//! * `index` tree, only with [`StoreConfig::with_key_ordered_copy`] (format 2,
//!   [`FORMAT_VERSION`]; without it the tree stays empty and the format is 1,
//!   [`FORMAT_VERSION_WITHOUT_COPY`]): the key-ordered copy of the current rows,
//!   [`copy_key`] → the encoded row of the key's newest revision when it is a put, written (or
//!   deleted, for a tombstone) in the same backend batch as the revision row. Ranges read the
//!   rows the key index does not hold with one scan of it; a copy row answers only when its
//!   `mod_revision` is the revision the key index chose for the read, so point-in-time reads
//!   and unpublished writes (group commit) fall back to the `kv` row. Compaction never removes
//!   a live key's newest revision, so it leaves the copy alone. Opening a store of format 1
//!   (or without [`META_FORMAT`]) with the copy on builds it from the `kv` rows, then writes
//!   format 2; opening a format-2 store with the copy off writes format 1, then deletes it.
//! * `lease` tree: lease id (8-byte big-endian) → encoded lease (see [`crate::lease`]).
//!
//! # Concurrency
//! Writers (put, delete, write txns, lease revoke, the index step of a compaction) are
//! serialised by one mutex and each commits exactly one [`Backend::write`]. The in-memory index
//! keeps every revision, so a reader takes a consistent `(current, compact)` revision pair and
//! reads the index at its revision without waiting for writers; backend reads happen outside
//! every lock. A reader racing a compaction that removed rows below its revision gets
//! [`MvccError::Compacted`].
//!
//! # Failed backend writes
//! A backend write that reports an error may still have been applied (a lost
//! acknowledgement). Every mutation (put, delete-range, write txn, lease grant, lease revoke and
//! expiry, the compaction marker) then reads back one row the write wrote:
//! * the row is there: the write was applied, so the store applies its in-memory effects (index,
//!   current revision, watch events, leases, compaction revision) exactly as on success, and
//!   still returns the error. The next write takes the next revision, never the lost one's.
//!   Except over an engine opened with `Durability::Sync` in [`CommitMode::Backend`]: there the
//!   error may be the sync's, the write may not be durable, so nothing of it is applied in
//!   memory (never observed) and the store marks itself failed;
//! * the row is not there: nothing was applied, the store stays as before and returns the error;
//! * the read fails too: the store cannot tell, marks itself failed and returns the error;
//!   from then on every mutation fails with [`MvccError::Failed`] (reads are still served) until
//!   a new store is opened over the backend, which recovers what the backend holds.
//!
//! In [`CommitMode::GroupSync`] a failed flush (the durability of everything it covered is
//! unknown) marks the store failed the same way; none of the writes it covered is ever made
//! visible, reads keep serving the last durable revision, and
//! [`MvccStore::lease_time_to_live`] refuses with [`MvccError::Failed`] (the lease table may hold
//! changes that are not durable). See [`MvccStore::failure`].
//!
//! # Visibility and durability
//! With [`CommitMode::GroupSync`] (ack = durable with shared flushes) nothing observes a
//! revision before it is durable: a write is committed to the backend and the in-memory index
//! at once, but [`MvccStore::current_revision`], ranges, read-only transactions, watch events and
//! the compaction revision move only after the flush that makes it durable (the flusher
//! publishes before it releases the writers). Write transactions build on the newest committed
//! revision, and answer only once it is durable. With [`CommitMode::Backend`] a write is visible
//! when the backend accepted it: durable then with `Durability::Sync`, within the interval with
//! `Durability::Buffered`.
//!
//! # Closing
//! [`MvccStore::close`] flushes and closes the backend. Once the backend is closed (by `close`
//! or directly through [`Backend::close`]) every operation that returns a result fails with
//! [`MvccError::Storage`]`(`[`StorageError::Closed`]`)`, also those the store could answer from
//! memory (count-only reads, reads of absent keys, lease keep-alive, watch creation...). The
//! revision and lease accessors that return plain values keep answering from memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use storage_api::{Backend, Durability, StorageError, Tree, WriteBatch};

use crate::compaction::{CompactionProgress, CompactionThread};
use crate::error::{MvccError, MvccResult};
use crate::group_commit::{CommitMode, GroupCommit};
use crate::kv::KeyValue;
use crate::lease::{Clock, LeaseTable, SystemClock};
use crate::revision::{Revision, REVISION_BYTES};
use crate::row_cache::RowCache;
use crate::tree_index::{KeyRange, RangeRows, RowRead, TreeIndex};
use crate::watch::{Event, WatchHub};

/// Meta key of the current revision (a recovery guard, see the [module docs](self)).
pub const META_CURRENT_REV: &[u8] = b"currentRev";
/// Meta key of the last scheduled compaction revision.
pub const META_SCHEDULED_COMPACT_REV: &[u8] = b"scheduledCompactRev";
/// Meta key of the last finished compaction revision.
pub const META_FINISHED_COMPACT_REV: &[u8] = b"finishedCompactRev";
/// Meta key of the embedder's apply metadata (see [`MvccStore::set_apply_meta`]), e.g. the
/// last applied raft log id: etcd's consistent index.
pub const META_APPLY: &[u8] = b"applyMeta";
/// Meta key of the storage format version of this crate.
pub const META_FORMAT: &[u8] = b"mvccFormat";
/// Storage format version written to [`META_FORMAT`] by a store that keeps the key-ordered
/// copy of the current rows in the `index` tree ([`StoreConfig::with_key_ordered_copy`], see
/// [`copy_key`]): 2, the `kv` tree plus a complete copy.
pub const FORMAT_VERSION: u8 = 2;
/// The storage format without the copy of the current rows (`kv` rows and meta only), written
/// by a store without [`StoreConfig::with_key_ordered_copy`]. Opening such a store (or one
/// without [`META_FORMAT`]) with the copy on builds it, then writes [`FORMAT_VERSION`];
/// writers of a store from outside (an import) write this version and leave the copy to the
/// first open that wants it.
pub const FORMAT_VERSION_WITHOUT_COPY: u8 = 1;
/// Prefix of the keys of the copy of the current rows in [`Tree::Index`].
pub const COPY_PREFIX: u8 = b'c';

/// The `index`-tree key of the copy of `key`'s current row: [`COPY_PREFIX`] followed by `key`.
/// Its value is the encoded [`KeyValue`] of the key's newest revision (the same bytes as its
/// `kv` row); a key whose newest revision is a tombstone, or that does not exist, has none.
pub fn copy_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(COPY_PREFIX);
    out.extend_from_slice(key);
    out
}

/// etcd's default maximum number of operations in a transaction.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Default maximum key and value size: etcd's maximum request size (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default number of rows deleted per compaction batch.
pub const DEFAULT_COMPACTION_BATCH_LIMIT: usize = 1000;
/// etcd's default pause between compaction batches.
pub const DEFAULT_COMPACTION_SLEEP_INTERVAL: Duration = Duration::from_millis(10);
/// Times a read of the current revision is retried when a compaction overtook it.
pub(crate) const MAX_READ_RETRIES: usize = 64;
/// Bytes the row cache charges per row beyond its key and value (see
/// [`StoreConfig::with_row_cache_bytes`]).
pub const ROW_CACHE_ENTRY_OVERHEAD: usize = crate::row_cache::ENTRY_OVERHEAD;

/// Bytes charged per current row kept by the key index beyond the encoded row (see
/// [`StoreConfig::with_row_cache_bytes`]).
pub const CURRENT_ROW_OVERHEAD: usize = crate::tree_index::CURRENT_ROW_OVERHEAD;

/// The part of a row budget of `bytes` (see [`StoreConfig::with_row_cache_bytes`]) given to
/// the current rows kept by the key index: three quarters; the row cache gets the rest.
fn current_rows_share(bytes: usize) -> usize {
    bytes / 4 * 3
}

/// Most rows read per backend scan during recovery and history reads.
pub(crate) const RESTORE_CHUNK: usize = 10_000;
/// Fewest rows recovery reads per backend scan.
const RESTORE_MIN_CHUNK: usize = 16;
/// Bytes of rows recovery aims to hold at once: its chunk of rows follows the average row
/// size seen so far, so that a store of large values is not read 10,000 values at a time.
const RESTORE_CHUNK_BYTES: usize = 8 << 20;

/// Limits and tunables of an [`MvccStore`].
#[derive(Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Maximum key size in bytes.
    pub max_key_size: usize,
    /// Maximum value size in bytes.
    pub max_value_size: usize,
    /// Maximum number of compares or ops per branch of a transaction (etcd: 128).
    pub max_txn_ops: usize,
    /// Rows examined per compaction batch (etcd: 1000).
    pub compaction_batch_limit: usize,
    /// Pause between compaction batches (etcd: 10 ms).
    pub compaction_sleep_interval: Duration,
    /// The clock that drives lease expiry.
    pub clock: Arc<dyn Clock>,
    /// When mutations are acknowledged relative to durability.
    pub commit_mode: CommitMode,
    /// Deliberately broken, for harness self-tests only: see
    /// [`with_early_publish`](Self::with_early_publish).
    #[doc(hidden)]
    pub early_publish: bool,
    /// Bytes of decoded `kv` rows kept in memory, keyed by revision (0 = no row cache, the
    /// default). Rows are immutable, so a cached row needs no invalidation but compaction and
    /// [`MvccStore::reload`]; see [`with_row_cache_bytes`](Self::with_row_cache_bytes).
    pub row_cache_bytes: usize,
    /// Keep the key-ordered copy of the current rows in the `index` tree (off by default):
    /// see [`with_key_ordered_copy`](Self::with_key_ordered_copy).
    pub key_ordered_copy: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_key_size: DEFAULT_MAX_REQUEST_BYTES,
            max_value_size: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            compaction_batch_limit: DEFAULT_COMPACTION_BATCH_LIMIT,
            compaction_sleep_interval: DEFAULT_COMPACTION_SLEEP_INTERVAL,
            clock: Arc::new(SystemClock::new()),
            commit_mode: CommitMode::Backend,
            early_publish: false,
            row_cache_bytes: 0,
            key_ordered_copy: false,
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("max_key_size", &self.max_key_size)
            .field("max_value_size", &self.max_value_size)
            .field("max_txn_ops", &self.max_txn_ops)
            .field("compaction_batch_limit", &self.compaction_batch_limit)
            .field("compaction_sleep_interval", &self.compaction_sleep_interval)
            .field("commit_mode", &self.commit_mode)
            .field("early_publish", &self.early_publish)
            .field("row_cache_bytes", &self.row_cache_bytes)
            .field("key_ordered_copy", &self.key_ordered_copy)
            .finish_non_exhaustive()
    }
}

impl StoreConfig {
    /// Keeps a key-ordered copy of every key's current row in the `index` tree ([`copy_key`],
    /// format [`FORMAT_VERSION`]), written in the same batch as the revision row, so that a
    /// range reads the rows the key index does not hold with one engine scan instead of one
    /// point read per row. The trade (`docs/READS-PROFILE.md` §9, 1M keys): full-profile
    /// ranges 1.5-4× faster, puts 2-8× slower (a second, random-key row in a second tree per
    /// write; sled commits such a batch as a transaction), a second copy of every live row on
    /// disk. Off by default. Opening a store with it on builds the copy if the store has none
    /// (format 1); opening a store that has one with it off writes format 1 first and then
    /// deletes the copy, so a copy is never trusted unless every write since it was built
    /// maintained it.
    pub fn with_key_ordered_copy(mut self, yes: bool) -> Self {
        self.key_ordered_copy = yes;
        self
    }

    /// Keeps up to `bytes` of rows in memory, answering reads of them without the engine.
    /// Three quarters of `bytes` go to the *current rows*: the key index keeps, in the entry of
    /// a key whose newest revision is a put, that revision's encoded row (handed over by the
    /// write that creates it, or by recovery; each charged its length plus
    /// [`CURRENT_ROW_OVERHEAD`]), so a read at or above that revision finds the row in its
    /// index walk. The rest is a cache of rows by revision, filled by reads (each charged its
    /// key and value plus [`ROW_CACHE_ENTRY_OVERHEAD`] bytes). Memory budgets: this comes on
    /// top of the engine's own cache, so an embedder with one budget (`--cache-size-mb`) gives
    /// the engine that budget minus `bytes`.
    pub fn with_row_cache_bytes(mut self, bytes: usize) -> Self {
        self.row_cache_bytes = bytes;
        self
    }

    /// Sets the maximum key size.
    pub fn with_max_key_size(mut self, n: usize) -> Self {
        self.max_key_size = n;
        self
    }
    /// Sets the maximum value size.
    pub fn with_max_value_size(mut self, n: usize) -> Self {
        self.max_value_size = n;
        self
    }
    /// Sets the maximum number of operations per transaction branch.
    pub fn with_max_txn_ops(mut self, n: usize) -> Self {
        self.max_txn_ops = n;
        self
    }
    /// Sets the compaction batch size (at least 1).
    pub fn with_compaction_batch_limit(mut self, n: usize) -> Self {
        self.compaction_batch_limit = n.max(1);
        self
    }
    /// Sets the pause between compaction batches.
    pub fn with_compaction_sleep_interval(mut self, d: Duration) -> Self {
        self.compaction_sleep_interval = d;
        self
    }
    /// Sets the commit mode.
    pub fn with_commit_mode(mut self, mode: CommitMode) -> Self {
        self.commit_mode = mode;
        self
    }
    /// **Deliberately broken, for test harnesses only.** With `true`, a
    /// [`CommitMode::GroupSync`] write becomes visible to readers, txn compares and watchers
    /// when it is committed, before the flush that makes it durable (the behaviour the
    /// durability contract forbids). Power-loss harnesses use it to prove they detect a store
    /// that publishes before flushing.
    #[doc(hidden)]
    pub fn with_early_publish(mut self, yes: bool) -> Self {
        self.early_publish = yes;
        self
    }
    /// Sets the lease clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// The result of a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RangeResult {
    /// The key-values, in key order, at most `limit` of them (none when `count_only`).
    pub kvs: Vec<KeyValue>,
    /// True when `limit > 0` and more keys than `limit` are in the range.
    pub more: bool,
    /// Number of keys in the range at the read revision, regardless of `limit`.
    pub count: i64,
    /// The store's current revision when the read was served (not the requested one).
    pub revision: i64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Revs {
    pub(crate) current: i64,
    pub(crate) compact: i64,
}

/// The current and compaction revisions, readable without a lock.
///
/// Both only grow and `compact <= current` always holds; `current` is the *visible* revision:
/// the newest revision readers may observe, published after the index holds its changes (by
/// the writer in [`CommitMode::Backend`], by the flusher once durable in
/// [`CommitMode::GroupSync`]). [`RevCell::load`]
/// reads the compaction revision first, so the pair it returns satisfies `compact <= current`;
/// a compaction that moves past a reader's revision afterwards is detected by the reader's
/// check after reading (as with a locked pair).
#[derive(Debug)]
pub(crate) struct RevCell {
    current: AtomicI64,
    compact: AtomicI64,
}

impl RevCell {
    fn new(revs: Revs) -> Self {
        RevCell {
            current: AtomicI64::new(revs.current),
            compact: AtomicI64::new(revs.compact),
        }
    }

    pub(crate) fn load(&self) -> Revs {
        let compact = self.compact.load(Ordering::Acquire);
        let current = self.current.load(Ordering::Acquire);
        Revs { current, compact }
    }

    pub(crate) fn current(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    pub(crate) fn compact(&self) -> i64 {
        self.compact.load(Ordering::Acquire)
    }

    pub(crate) fn set_current(&self, rev: i64) {
        self.current.store(rev, Ordering::Release);
    }

    pub(crate) fn set_compact(&self, rev: i64) {
        self.compact.store(rev, Ordering::Release);
    }
}

/// A committed revision waiting for the flush that makes it durable
/// ([`CommitMode::GroupSync`]); published (made visible, its events delivered) by the flusher.
#[derive(Debug)]
pub(crate) struct PendingRev {
    /// Group-commit ticket of the write.
    ticket: u64,
    /// The revision.
    rev: i64,
    /// Its watch events, built at commit when a watcher existed (else read back if needed).
    events: Option<Vec<Event>>,
}

/// One change recorded by a write transaction.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) kv: KeyValue,
    pub(crate) tombstone: bool,
}

/// etcd's MVCC store over the backend `B`. See the [module docs](self).
///
/// A backend write that fails may have been applied all the same; the store then reads back
/// what it wrote to find out, and when it cannot it marks itself failed and refuses every later
/// mutation with [`MvccError::Failed`] until it is reopened (see
/// [Failed backend writes](self#failed-backend-writes)).
///
/// After [`close`](Self::close) (or a close of its backend) every fallible operation fails with
/// [`MvccError::Storage`]`(`[`StorageError::Closed`]`)`; open a new store to continue.
pub struct MvccStore<B: Backend> {
    pub(crate) backend: Arc<B>,
    pub(crate) config: StoreConfig,
    pub(crate) index: TreeIndex,
    /// The visible revisions (what readers see).
    pub(crate) revs: Arc<RevCell>,
    /// The newest committed revision (what writers build on); above `revs.current` only while
    /// [`CommitMode::GroupSync`] writes wait for their flush. Written under the write lock.
    pub(crate) applied: AtomicI64,
    /// Committed revisions not yet durable, in revision order ([`CommitMode::GroupSync`]).
    pub(crate) pending: Mutex<VecDeque<PendingRev>>,
    pub(crate) write_lock: Mutex<()>,
    pub(crate) compaction_lock: Mutex<()>,
    /// How far the physical compaction got (see [`MvccStore::wait_compacted`]).
    pub(crate) compaction_progress: CompactionProgress,
    /// Finishes [`MvccStore::kv_compact_in_background`]'s compactions.
    pub(crate) compaction_thread: CompactionThread,
    pub(crate) leases: Mutex<LeaseTable>,
    pub(crate) hub: Arc<WatchHub>,
    pub(crate) group: GroupCommit,
    /// Set once the store cannot tell whether a failed backend write was applied.
    pub(crate) failed: OnceLock<String>,
    /// The embedder's apply metadata, added as [`META_APPLY`] to every backend write.
    pub(crate) apply_meta: Mutex<Option<Vec<u8>>>,
    /// Decoded rows by revision ([`StoreConfig::row_cache_bytes`]; `None` when 0).
    pub(crate) row_cache: Option<RowCache>,
}

impl<B: Backend> fmt::Debug for MvccStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let revs = self.revs.load();
        f.debug_struct("MvccStore")
            .field("backend", &B::KIND)
            .field("current_revision", &revs.current)
            .field("compact_revision", &revs.compact)
            .field("keys", &self.index.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn encode_i64(v: i64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub(crate) fn decode_i64(data: &[u8], what: &str) -> MvccResult<i64> {
    let bytes: [u8; 8] = data
        .try_into()
        .map_err(|_| MvccError::Corruption(format!("{what} is not 8 bytes")))?;
    Ok(i64::from_be_bytes(bytes))
}

/// `err` and its sources as one line.
pub(crate) fn error_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// Adds to `batch` the copy-row operations (see [`copy_key`]) of `changes` (`(row, tombstone)`
/// in commit order): the newest change of each key puts its row, or deletes the copy for a
/// tombstone. One operation per key, so no engine has to order two writes of one key in a batch.
pub(crate) fn add_copy_ops<'c>(
    batch: &mut WriteBatch,
    changes: impl Iterator<Item = (&'c KeyValue, bool)>,
) {
    let mut newest: BTreeMap<&[u8], (&KeyValue, bool)> = BTreeMap::new();
    for (kv, tombstone) in changes {
        newest.insert(kv.key.as_slice(), (kv, tombstone));
    }
    for (key, (kv, tombstone)) in newest {
        if tombstone {
            batch.delete(Tree::Index, copy_key(key));
        } else {
            batch.put(Tree::Index, copy_key(key), kv.encode());
        }
    }
}

/// The key right after `key` in byte order.
pub(crate) fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

impl<B: Backend> MvccStore<B> {
    /// Opens the store on `backend` with the default [`StoreConfig`], recovering its state.
    pub fn new(backend: Arc<B>) -> MvccResult<Self> {
        Self::with_config(backend, StoreConfig::default())
    }

    /// Opens the store on `backend` and recovers it: rebuilds the key index from the `kv` tree,
    /// restores the current revision (never lower than before), the compaction revision, the
    /// leases and their attachments, and finishes an interrupted compaction.
    pub fn with_config(backend: Arc<B>, config: StoreConfig) -> MvccResult<Self> {
        let current_rows = current_rows_share(config.row_cache_bytes);
        let row_cache = RowCache::new(config.row_cache_bytes - current_rows);
        let store = MvccStore {
            backend,
            config,
            row_cache,
            index: TreeIndex::with_row_budget(current_rows),
            revs: Arc::new(RevCell::new(Revs {
                current: 1,
                compact: -1,
            })),
            applied: AtomicI64::new(1),
            pending: Mutex::new(VecDeque::new()),
            write_lock: Mutex::new(()),
            compaction_lock: Mutex::new(()),
            compaction_progress: CompactionProgress::new(-1),
            compaction_thread: CompactionThread::default(),
            leases: Mutex::new(LeaseTable::default()),
            hub: Arc::new(WatchHub::default()),
            group: GroupCommit::default(),
            failed: OnceLock::new(),
            apply_meta: Mutex::new(None),
        };
        store.recover()?;
        Ok(store)
    }

    fn meta_i64(&self, key: &[u8]) -> MvccResult<Option<i64>> {
        match self.backend.get(Tree::Meta, key)? {
            Some(v) => Ok(Some(decode_i64(&v, &String::from_utf8_lossy(key))?)),
            None => Ok(None),
        }
    }

    /// Deletes every row of the `index` tree (a copy of the current rows left by a build that
    /// did not finish), in bounded batches.
    fn clear_copy(&self) -> MvccResult<()> {
        loop {
            let rows = self.backend.scan(Tree::Index, &[], &[], RESTORE_CHUNK)?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut batch = WriteBatch::with_capacity(rows.len());
            for (key, _) in rows {
                batch.delete(Tree::Index, key);
            }
            self.backend.write(&batch)?;
        }
    }

    fn recover(&self) -> MvccResult<()> {
        let _c = self.compaction_lock.lock();
        self.recover_locked()
    }

    /// [`recover`](Self::recover) with the compaction lock held by the caller.
    fn recover_locked(&self) -> MvccResult<()> {
        // Format 2 holds the copy of the current rows; with the copy on, format 1 (or none: a
        // new store, or one written from outside) gets it built below from the `kv` rows,
        // before format 2 is written, so a crash during the build leaves format 1 and the next
        // open builds again. With the copy off, format 1 is written first and the copy dropped.
        let format = self.backend.get(Tree::Meta, META_FORMAT)?;
        let had_copy = match format.as_deref() {
            Some([FORMAT_VERSION]) => true,
            Some([FORMAT_VERSION_WITHOUT_COPY]) | None => false,
            Some(format) => {
                return Err(MvccError::Corruption(format!(
                    "unsupported mvcc storage format {format:?}"
                )));
            }
        };
        let want_copy = self.config.key_ordered_copy;
        if had_copy && !want_copy {
            // No longer maintained: format 1 durable before any write leaves it stale.
            self.backend
                .put(Tree::Meta, META_FORMAT, &[FORMAT_VERSION_WITHOUT_COPY])?;
            self.backend.flush()?;
        }
        // Build the copy when it is wanted and missing (after clearing what a build that did
        // not finish may have left); drop it when it is not wanted.
        let needs_build = want_copy && !had_copy;
        if !had_copy || !want_copy {
            self.clear_copy()?;
        }
        let finished = self.meta_i64(META_FINISHED_COMPACT_REV)?;
        let scheduled = self.meta_i64(META_SCHEDULED_COMPACT_REV)?;
        let stored_current = self.meta_i64(META_CURRENT_REV)?;

        // Rebuild the index from every row, in revision order.
        let mut last_main = 0i64;
        let mut key_lease: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut start = Revision::new(1, 0).to_key(false);
        let mut rows = 0usize;
        let mut limit = RESTORE_MIN_CHUNK;
        loop {
            let chunk = self.backend.scan(Tree::Kv, &start, &[], limit)?;
            let Some((last_key, _)) = chunk.last() else {
                break;
            };
            start = successor(last_key);
            let done = chunk.len() < limit;
            let bytes: usize = chunk.iter().map(|(k, v)| k.len() + v.len()).sum();
            let per_row = (bytes / chunk.len()).max(1);
            limit = (RESTORE_CHUNK_BYTES / per_row).clamp(RESTORE_MIN_CHUNK, RESTORE_CHUNK);
            // Building the copy: the newest row of each key of the chunk (rows come in
            // revision order), a tombstone deleting it.
            let mut copy: BTreeMap<Vec<u8>, Option<&[u8]>> = BTreeMap::new();
            for (rkey, rvalue) in &chunk {
                let (rev, tombstone) = Revision::from_key(rkey)?;
                let kv = KeyValue::decode(rvalue)?;
                let row = (!tombstone && self.index.keeps_rows())
                    .then(|| Arc::<[u8]>::from(rvalue.as_slice()));
                self.index.restore_row_with(
                    &kv.key,
                    rev,
                    tombstone,
                    kv.create_revision,
                    kv.version,
                    row,
                )?;
                if tombstone || kv.lease == 0 {
                    key_lease.remove(&kv.key);
                } else {
                    key_lease.insert(kv.key.clone(), kv.lease);
                }
                if needs_build {
                    copy.insert(copy_key(&kv.key), (!tombstone).then_some(rvalue.as_slice()));
                }
                last_main = last_main.max(rev.main);
                rows += 1;
            }
            if !copy.is_empty() {
                let mut batch = WriteBatch::with_capacity(copy.len());
                for (key, row) in copy {
                    match row {
                        Some(row) => batch.put(Tree::Index, key, row),
                        None => batch.delete(Tree::Index, key),
                    };
                }
                self.backend.write(&batch)?;
            }
            if done {
                break;
            }
        }

        let compact = finished.unwrap_or(-1);
        let mut current = last_main.max(1).max(compact);
        if let Some(s) = scheduled {
            current = current.max(s);
        }
        if let Some(c) = stored_current {
            current = current.max(c);
        }
        // Current revision first: `compact <= current` holds at every step.
        self.applied.store(current, Ordering::Release);
        self.revs.set_current(current);
        self.revs.set_compact(compact);
        self.compaction_progress.reset(compact);

        // Leases and their attachments.
        {
            let now = self.config.clock.now();
            let mut table = self.leases.lock();
            table.load(self.backend.as_ref(), now)?;
            for (key, lease) in key_lease {
                table.attach(&key, lease);
            }
        }
        if format.is_none() && !want_copy {
            self.backend
                .put(Tree::Meta, META_FORMAT, &[FORMAT_VERSION_WITHOUT_COPY])?;
        }
        if needs_build {
            // The copy durable first, then the format that says it is complete.
            self.backend.flush()?;
            self.backend
                .put(Tree::Meta, META_FORMAT, &[FORMAT_VERSION])?;
            self.backend.flush()?;
        }
        tracing::debug!(
            backend = %B::KIND,
            rows,
            current,
            compact,
            keys = self.index.len(),
            "mvcc store recovered"
        );

        // Resume an interrupted compaction.
        if let Some(s) = scheduled {
            if s > compact {
                tracing::info!(revision = s, "resuming interrupted compaction");
                self.revs.set_compact(s);
                let available = self.index.compact(s);
                self.physical_compaction(s, &available)?;
            }
        }
        Ok(())
    }

    /// Re-reads the whole state from the backend after its content was replaced (a replicated
    /// store installing a snapshot restores its backend, then calls this): rebuilds the key
    /// index, the revisions and the leases as [`with_config`](Self::with_config) does, and ends
    /// every watcher (their channels disconnect; clients re-watch from the revision they had,
    /// as after a server restart). Readers running meanwhile may fail; writers wait. A
    /// compaction finishing in the background ([`finish_compaction`](Self::finish_compaction))
    /// completes first; the ones scheduled before the reload are void afterwards.
    pub fn reload(&self) -> MvccResult<()> {
        let _c = self.compaction_lock.lock();
        let _w = self.lock_write();
        self.check_writable()?;
        self.hub.close_all();
        self.pending.lock().clear();
        self.index.clear();
        if let Some(cache) = &self.row_cache {
            cache.clear();
        }
        *self.leases.lock() = LeaseTable::default();
        // Compaction first, so `compact <= current` holds at every step.
        self.revs.set_compact(-1);
        self.revs.set_current(1);
        self.applied.store(1, Ordering::Release);
        self.recover_locked()
    }

    /// Sets the apply metadata: from now on every backend write the store commits (a revision,
    /// a lease grant or revoke, a compaction marker or batch) carries `meta` as the
    /// [`META_APPLY`] row of the `meta` tree, in the same atomic write as its data. A replicated
    /// store sets it to the log id of the entry it is about to apply, so the backend always
    /// holds the position of the last entry whose effects it holds (etcd's consistent index).
    /// Operations that write nothing (a failed compare, a rejected request) leave the stored
    /// value as it was. [`write_apply_meta`](Self::write_apply_meta) writes it alone.
    pub fn set_apply_meta(&self, meta: Vec<u8>) {
        *self.apply_meta.lock() = Some(meta);
    }

    /// The apply metadata stored in the backend ([`META_APPLY`]), `None` if never written.
    pub fn apply_meta(&self) -> MvccResult<Option<Vec<u8>>> {
        self.check_open()?;
        Ok(self.backend.get(Tree::Meta, META_APPLY)?)
    }

    /// Writes the current apply metadata (see [`set_apply_meta`](Self::set_apply_meta)) alone,
    /// under the write lock, so it is ordered with the store's other writes. Does nothing when
    /// none is set.
    pub fn write_apply_meta(&self) -> MvccResult<()> {
        let _w = self.lock_write();
        self.check_writable()?;
        if let Some(meta) = self.apply_meta.lock().clone() {
            self.backend.put(Tree::Meta, META_APPLY, &meta)?;
            self.group.written();
        }
        Ok(())
    }

    /// Adds the apply metadata row, if set, to `batch`.
    pub(crate) fn add_apply_meta(&self, batch: &mut WriteBatch) {
        if let Some(meta) = self.apply_meta.lock().clone() {
            batch.put(Tree::Meta, META_APPLY, meta);
        }
    }

    /// A single-row write, with the apply metadata row when set (then as one batch).
    pub(crate) fn backend_put(
        &self,
        tree: Tree,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StorageError> {
        let meta = self.apply_meta.lock().clone();
        match meta {
            None => self.backend.put(tree, key, value),
            Some(meta) => {
                let mut batch = WriteBatch::with_capacity(2);
                batch.put(tree, key, value);
                batch.put(Tree::Meta, META_APPLY, meta);
                self.backend.write(&batch)
            }
        }
    }

    /// The backend the store runs on.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The current revision (1 for an empty store): the newest revision readers observe. In
    /// [`CommitMode::GroupSync`] it is the newest *durable* revision; a write committed but not
    /// yet flushed is not counted.
    pub fn current_revision(&self) -> i64 {
        self.revs.current()
    }

    /// The compaction revision (-1 before the first compaction).
    pub fn compact_revision(&self) -> i64 {
        self.revs.compact()
    }

    pub(crate) fn rev_pair(&self) -> Revs {
        self.revs.load()
    }

    /// Bytes of rows held in memory, as charged against
    /// [`StoreConfig::with_row_cache_bytes`]: the current rows kept by the key index plus the
    /// row cache; 0 without a budget.
    pub fn row_cache_bytes(&self) -> usize {
        self.index.row_bytes() + self.row_cache.as_ref().map_or(0, RowCache::bytes)
    }

    /// Number of keys the index tracks (live keys and deleted keys with retained history).
    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Number of revisions the index retains for `key`.
    pub fn count_revisions(&self, key: &[u8]) -> usize {
        self.index.count_revisions(key)
    }

    /// Makes every write issued so far durable (a [`Backend::flush`]); in
    /// [`CommitMode::GroupSync`] also publishes what it made durable.
    pub fn flush(&self) -> MvccResult<()> {
        self.check_open()?;
        if self.config.commit_mode == CommitMode::GroupSync {
            let ticket = self.ticket();
            if ticket > 0 {
                return self.wait_durable(ticket);
            }
        }
        self.backend.flush()?;
        Ok(())
    }

    /// Closes the store: waits for a running commit, flushes the backend, then closes it, and
    /// ends every watcher (their channels disconnect once drained). The backend is closed even
    /// when the flush fails; the first error is returned. Afterwards every operation fails with
    /// [`MvccError::Storage`]`(`[`StorageError::Closed`]`)`, a second `close` included; a running
    /// compaction stops at its next batch and is finished by the next store opened over the
    /// data.
    pub fn close(&self) -> MvccResult<()> {
        let _w = self.lock_write();
        self.check_open()?;
        let flushed = self.backend.flush();
        let closed = self.backend.close();
        self.hub.close_all();
        flushed?;
        closed?;
        Ok(())
    }

    /// True once the backend is closed (see [`close`](Self::close)).
    pub fn is_closed(&self) -> bool {
        self.backend.is_closed()
    }

    /// Why the store is failed, once it is (see
    /// [Failed backend writes](self#failed-backend-writes)): every later mutation fails with
    /// [`MvccError::Failed`] until the store is reopened; reads serve the last visible revision.
    pub fn failure(&self) -> Option<String> {
        self.failed.get().cloned()
    }

    /// `(backend writes, group-commit flushes)` issued since the store was opened.
    pub fn commit_stats(&self) -> (u64, u64) {
        self.group.stats()
    }

    /// Takes the write lock for a mutation. In [`CommitMode::GroupSync`] the writer is
    /// announced to group commit first, so a flush waits for it (see
    /// [`GroupCommit::enter`](crate::group_commit)); dropping the guard ends both.
    pub(crate) fn lock_write(&self) -> WriteGuard<'_> {
        let inflight =
            (self.config.commit_mode == CommitMode::GroupSync).then(|| self.group.enter());
        WriteGuard {
            _lock: self.write_lock.lock(),
            _inflight: inflight,
        }
    }

    /// The durability ticket of the writes issued so far (call under the write lock).
    pub(crate) fn ticket(&self) -> u64 {
        self.group.last_ticket()
    }

    /// In [`CommitMode::GroupSync`], waits until the writes up to `ticket` are durable and
    /// published. A failed flush marks the store failed (see
    /// [Failed backend writes](self#failed-backend-writes)); what it covered is never published.
    pub(crate) fn wait_durable(&self, ticket: u64) -> MvccResult<()> {
        if self.config.commit_mode != CommitMode::GroupSync || ticket == 0 {
            return Ok(());
        }
        let result = self
            .group
            .wait_durable(self.backend.as_ref(), ticket, |target| {
                self.publish_durable(target)
            });
        if result.is_err() {
            if let Some(reason) = self.group.failure() {
                if self.failed.set(reason.clone()).is_ok() {
                    tracing::error!(%reason, "mvcc store marked failed; reopen it");
                }
            }
        }
        result
    }

    /// Publishes the pending revisions whose tickets are `<= target` (just made durable):
    /// raises the visible revision and delivers their watch events, in revision order. Called
    /// by the group-commit flusher, one call at a time.
    fn publish_durable(&self, target: u64) {
        loop {
            let next = {
                let mut pending = self.pending.lock();
                match pending.front() {
                    Some(p) if p.ticket <= target => pending.pop_front(),
                    _ => None,
                }
            };
            let Some(PendingRev { rev, events, .. }) = next else {
                return;
            };
            self.revs.set_current(rev);
            self.hub.notify_with(rev, || match events {
                Some(events) => events,
                // No watcher existed at commit: read the revision's events back.
                None => self.events_of(rev).unwrap_or_else(|e| {
                    let reason = format!("cannot read back the events of revision {rev}: {e}");
                    tracing::error!(%reason, "mvcc store marked failed; reopen it");
                    let _ = self.failed.set(reason);
                    Vec::new()
                }),
            });
        }
    }

    /// Fails with [`StorageError::Closed`] once the backend is closed.
    pub(crate) fn check_open(&self) -> MvccResult<()> {
        if self.backend.is_closed() {
            return Err(MvccError::Storage(StorageError::Closed));
        }
        Ok(())
    }

    /// Fails with [`StorageError::Closed`] once the backend is closed and with
    /// [`MvccError::Failed`] once the store marked itself failed.
    pub(crate) fn check_writable(&self) -> MvccResult<()> {
        self.check_open()?;
        match self.failed.get() {
            Some(reason) => Err(MvccError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Decides the outcome of a backend write that failed with `err`: reads back the row `key`
    /// of `tree`, which reads as `expect` (`None`: absent) once the write is applied.
    ///
    /// Returns `Ok(err)` when the write was applied (the caller applies its in-memory effects,
    /// then returns `err`) and `Err(err)` when it was not. When the read fails too the store
    /// marks itself failed (unless the backend is closed) and `Err(err)` is returned.
    pub(crate) fn settle(
        &self,
        err: MvccError,
        tree: Tree,
        key: &[u8],
        expect: Option<&[u8]>,
    ) -> MvccResult<MvccError> {
        match self.backend.get(tree, key) {
            // Applied, but over a `Sync` engine acknowledging each write itself the error may be
            // the sync's: the write may not be durable, so it must not be observed. The store
            // fails (nothing of the write is applied in memory); a reopen recovers what is on
            // disk.
            Ok(row)
                if row.as_deref() == expect
                    && self.config.commit_mode == CommitMode::Backend
                    && self.backend.durability() == Durability::Sync =>
            {
                let reason = format!(
                    "a backend write failed ({}) although it reads back as applied: its \
                     durability is unknown",
                    error_line(&err)
                );
                tracing::error!(%reason, "mvcc store marked failed; reopen it");
                let _ = self.failed.set(reason);
                Err(err)
            }
            Ok(row) if row.as_deref() == expect => {
                tracing::warn!(
                    error = %error_line(&err),
                    "a backend write reported an error but was applied"
                );
                Ok(err)
            }
            Ok(_) => Err(err),
            // A closed backend refuses every later call anyway, and a store over it has to be
            // reopened: `Closed` stays the error the caller sees.
            Err(StorageError::Closed) => Err(err),
            Err(read) => {
                let reason = format!(
                    "a backend write failed ({}) and reading back its outcome failed ({})",
                    error_line(&err),
                    error_line(&read)
                );
                tracing::error!(%reason, "mvcc store marked failed; reopen it");
                let _ = self.failed.set(reason);
                Err(err)
            }
        }
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> MvccResult<()> {
        if key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if key.len() > self.config.max_key_size {
            return Err(MvccError::KeyTooLarge {
                size: key.len(),
                max: self.config.max_key_size,
            });
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> MvccResult<()> {
        if value.len() > self.config.max_value_size {
            return Err(MvccError::ValueTooLarge {
                size: value.len(),
                max: self.config.max_value_size,
            });
        }
        Ok(())
    }

    /// Reads the row of revision `rev` (a put) for a read at `at`, from the row cache when it
    /// holds it.
    pub(crate) fn load_kv(&self, rev: Revision, at: i64) -> MvccResult<KeyValue> {
        let Some(cache) = &self.row_cache else {
            return match self.backend.get(Tree::Kv, &rev.to_bytes())? {
                Some(v) => KeyValue::decode_owned(v),
                None => Err(self.missing_row(rev, at)),
            };
        };
        let mut kv = KeyValue::default();
        if cache.get_into(rev, &mut kv)? {
            return Ok(kv);
        }
        let generation = cache.generation();
        match self.backend.get(Tree::Kv, &rev.to_bytes())? {
            Some(row) => {
                let kv = KeyValue::decode(&row)?;
                cache.insert(generation, rev, row);
                Ok(kv)
            }
            None => Err(self.missing_row(rev, at)),
        }
    }

    /// The error of a read at `at` that found no row for revision `rev`: compacted away, or a
    /// corrupt store.
    fn missing_row(&self, rev: Revision, at: i64) -> MvccError {
        if at < self.compact_revision() {
            MvccError::Compacted
        } else {
            MvccError::Corruption(format!("range failed to find revision pair {rev}"))
        }
    }

    /// Reads the rows of `revs` (puts) for a read at `at`, answered in the order of `revs`.
    ///
    /// Rows the row cache holds are taken from it; the others are fetched with one
    /// [`Backend::get_many`] call in ascending revision order (the rows' storage order, so the
    /// engine walks its `kv` tree forward, from one read view) and put back in the order of
    /// `revs` (key order, as the index returns them).
    pub(crate) fn load_kvs(&self, revs: &[Revision], at: i64) -> MvccResult<Vec<KeyValue>> {
        match revs {
            [] => return Ok(Vec::new()),
            [rev] => return Ok(vec![self.load_kv(*rev, at)?]),
            _ => {}
        }
        let mut kvs = vec![KeyValue::default(); revs.len()];
        // Positions of the rows still to read, then in ascending revision order.
        let mut order: Vec<u32> = Vec::new();
        let generation = match &self.row_cache {
            Some(cache) => {
                let generation = cache.generation();
                for (i, (rev, kv)) in revs.iter().zip(kvs.iter_mut()).enumerate() {
                    if !cache.get_into(*rev, kv)? {
                        order.push(i as u32);
                    }
                }
                if order.is_empty() {
                    return Ok(kvs);
                }
                generation
            }
            None => {
                order.extend(0..revs.len() as u32);
                0
            }
        };
        order.sort_unstable_by_key(|&i| revs[i as usize]);
        let row_keys: Vec<[u8; REVISION_BYTES]> =
            order.iter().map(|&i| revs[i as usize].to_bytes()).collect();
        let refs: Vec<&[u8]> = row_keys.iter().map(|k| k.as_slice()).collect();
        let rows = self.backend.get_many(Tree::Kv, &refs)?;
        if rows.len() != order.len() {
            return Err(MvccError::Corruption(format!(
                "the backend answered {} rows for {} revisions",
                rows.len(),
                order.len()
            )));
        }
        for (&i, row) in order.iter().zip(rows) {
            let i = i as usize;
            let Some(row) = row else {
                return Err(self.missing_row(revs[i], at));
            };
            kvs[i] = match &self.row_cache {
                Some(cache) => {
                    let kv = KeyValue::decode(&row)?;
                    cache.insert(generation, revs[i], row);
                    kv
                }
                None => KeyValue::decode_owned(row)?,
            };
        }
        Ok(kvs)
    }

    /// Reads `range` at revision `at` from the index and backend.
    pub(crate) fn read_at(
        &self,
        range: &KeyRange,
        at: i64,
        limit: i64,
        count_only: bool,
    ) -> MvccResult<(Vec<KeyValue>, usize)> {
        let lim = if count_only || limit <= 0 {
            0
        } else {
            usize::try_from(limit).unwrap_or(usize::MAX)
        };
        if let KeyRange::Single(key) = range {
            return self.read_key_at(key, at, count_only);
        }
        if count_only {
            let (_, count) = self.index.range_revisions(range, at, lim);
            return Ok((Vec::new(), count));
        }
        // One index walk: the current rows come with it, the others are read from the copy of
        // the current rows or by revision.
        let RangeRows {
            mut kvs,
            later,
            loads,
            load_keys,
            count,
        } = self.index.range_rows(range, at, lim)?;
        for (i, row) in later {
            KeyValue::decode_into(&row, &mut kvs[i])?;
        }
        self.fill_loads(&mut kvs, &loads, &load_keys, at)?;
        Ok((kvs, count))
    }

    /// Fills the slots of `loads` (`(slot, visible revision, end of its key in keys)` in key
    /// order, as [`TreeIndex::range_rows`] names them) for a read at `at`.
    ///
    /// Two or more are read with one scan of the copy of the current rows ([`copy_key`]) from
    /// the first key to the last, merged by key: a copy row answers a slot only when its
    /// `mod_revision` is the revision the index chose, so the index alone decides what a read
    /// sees. Any other slot (the key written after `at`, or written but not published yet
    /// under group commit, or its copy missing) is read by revision, as a single load is.
    fn fill_loads(
        &self,
        kvs: &mut [KeyValue],
        loads: &[(usize, Revision, usize)],
        keys: &[u8],
        at: i64,
    ) -> MvccResult<()> {
        let mut misses: Vec<(usize, Revision)> = Vec::new();
        let key_at = |n: usize| {
            let start = n.checked_sub(1).map_or(0, |p| loads[p].2);
            keys.get(start..loads[n].2).unwrap_or_default()
        };
        if loads.len() >= 2 && self.config.key_ordered_copy {
            let rows = self.backend.scan(
                Tree::Index,
                &copy_key(key_at(0)),
                &successor(&copy_key(key_at(loads.len() - 1))),
                0,
            )?;
            let mut rows = rows.into_iter().peekable();
            for (n, &(i, rev, _)) in loads.iter().enumerate() {
                let key = key_at(n);
                let mut hit = false;
                while let Some((copy, _)) = rows.peek() {
                    match copy.get(1..).unwrap_or_default().cmp(key) {
                        std::cmp::Ordering::Less => {
                            rows.next();
                        }
                        std::cmp::Ordering::Equal => {
                            if let Some((_, row)) = rows.next() {
                                let kv = KeyValue::decode_owned(row)?;
                                if kv.mod_revision == rev.main {
                                    kvs[i] = kv;
                                    hit = true;
                                }
                            }
                            break;
                        }
                        std::cmp::Ordering::Greater => break,
                    }
                }
                if !hit {
                    misses.push((i, rev));
                }
            }
        } else {
            misses.extend(loads.iter().map(|&(i, rev, _)| (i, rev)));
        }
        if !misses.is_empty() {
            let revs: Vec<Revision> = misses.iter().map(|&(_, rev)| rev).collect();
            for ((i, _), kv) in misses.into_iter().zip(self.load_kvs(&revs, at)?) {
                kvs[i] = kv;
            }
        }
        Ok(())
    }

    /// [`read_at`](Self::read_at) of the single key `key`.
    pub(crate) fn read_key_at(
        &self,
        key: &[u8],
        at: i64,
        count_only: bool,
    ) -> MvccResult<(Vec<KeyValue>, usize)> {
        if count_only || !self.index.keeps_rows() {
            return match self.index.get(key, at) {
                Ok(_) if count_only => Ok((Vec::new(), 1)),
                Ok((rev, _, _)) => Ok((vec![self.load_kv(rev, at)?], 1)),
                Err(MvccError::RevisionNotFound) => Ok((Vec::new(), 0)),
                Err(e) => Err(e),
            };
        }
        let mut kv = KeyValue::default();
        match self.index.get_row(key, at, &mut kv)? {
            RowRead::Row => Ok((vec![kv], 1)),
            RowRead::Load(rev) => Ok((vec![self.load_kv(rev, at)?], 1)),
            RowRead::Missing => Ok((Vec::new(), 0)),
        }
    }

    /// Reads the keys in `[key, end)` (etcd convention: empty `end` = the single `key`,
    /// `end == [0]` = every key `>= key`) at `revision` (`<= 0` = current).
    ///
    /// At most `limit` key-values are returned (`<= 0` = unlimited); `count` is the total number
    /// of keys in the range. Errors: [`MvccError::EmptyKey`], [`MvccError::FutureRevision`] when
    /// `revision` is above the current revision, [`MvccError::Compacted`] when below the
    /// compaction revision. A convenience over [`kv_range`](Self::kv_range).
    pub fn range(
        &self,
        key: &[u8],
        end: &[u8],
        revision: i64,
        limit: i64,
        count_only: bool,
    ) -> MvccResult<RangeResult> {
        // `kv_range` of a request without sort, filters or `keys_only`, without building one.
        self.check_open()?;
        self.check_key(key)?;
        let (kvs, count, current) = self.read_range(key, end, revision, limit, count_only)?;
        let count = count as i64;
        Ok(RangeResult {
            more: !count_only && limit > 0 && count > limit,
            kvs: if count_only { Vec::new() } else { kvs },
            count,
            revision: current,
        })
    }

    /// Puts `key = value` with `lease` (0 = none) in a new revision; returns the revision and the
    /// new key-value. Fails with [`MvccError::LeaseNotFound`] for an unknown lease, and on empty or
    /// oversized keys and values; nothing is written on failure.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> MvccResult<(i64, KeyValue)> {
        self.check_writable()?;
        self.check_key(key)?;
        self.check_value(value)?;
        let _w = self.lock_write();
        if lease != 0 && !self.leases.lock().contains(lease) {
            return Err(MvccError::LeaseNotFound(lease));
        }
        let mut ctx = self.begin_write();
        ctx.changes.reserve_exact(1);
        ctx.record_put(key, value, lease);
        let (rev, mut changes) = self.commit_changes(ctx, WriteBatch::new(), || ())?;
        let ticket = self.ticket();
        drop(_w);
        let kv = changes
            .pop()
            .map(|c| c.kv)
            .ok_or_else(|| MvccError::Corruption("put recorded no change".into()))?;
        self.wait_durable(ticket)?;
        Ok((rev, kv))
    }

    /// etcd `Put` for several plain puts (no `prev_kv`, `ignore_value` or `ignore_lease`) in
    /// order, each in its own revision as [`kv_put`](Self::kv_put) would give it, with **one**
    /// backend write for all of them (and the apply metadata row when set, see
    /// [`set_apply_meta`](Self::set_apply_meta)): a replicated store applies a batch of client
    /// puts with one engine write instead of one per put.
    ///
    /// A put that [`kv_put`](Self::kv_put) would refuse (its validation, an unknown lease) gets
    /// that error in its place of the result and writes nothing; the others get their
    /// response. The outer error is a failure of the store itself (nothing of the group is then
    /// visible unless the backend write reads back as applied, as for any write), or
    /// [`MvccError::InvalidArgument`] for a put that reads its key or a store in
    /// [`CommitMode::GroupSync`] (both need a write per put).
    pub fn kv_put_group(
        &self,
        puts: &[&crate::request::Put],
    ) -> MvccResult<Vec<MvccResult<crate::request::PutResponse>>> {
        self.check_writable()?;
        if self.config.commit_mode == CommitMode::GroupSync {
            return Err(MvccError::InvalidArgument(
                "a put group needs CommitMode::Backend".into(),
            ));
        }
        if puts.iter().any(|p| p.reads_key()) {
            return Err(MvccError::InvalidArgument(
                "a put group takes plain puts only".into(),
            ));
        }
        let w = self.lock_write();
        let begin = self.applied.load(Ordering::Acquire);
        // Key -> (create revision, version) after the group's earlier puts.
        let mut latest: HashMap<&[u8], (i64, i64)> = HashMap::new();
        let mut results = Vec::with_capacity(puts.len());
        let mut written: Vec<(i64, Change)> = Vec::with_capacity(puts.len());
        let mut batch = WriteBatch::with_capacity(puts.len() + 1);
        {
            let leases = self.leases.lock();
            for p in puts {
                if let Err(e) = p.validate(&self.config) {
                    results.push(Err(e));
                    continue;
                }
                if p.lease != 0 && !leases.contains(p.lease) {
                    results.push(Err(MvccError::LeaseNotFound(p.lease)));
                    continue;
                }
                let rev = begin + written.len() as i64 + 1;
                let (created, version) = match latest.get(p.key.as_slice()) {
                    Some(&cv) => cv,
                    None => match self.index.get(&p.key, begin) {
                        Ok((_, created, ver)) => (created.main, ver),
                        Err(_) => (0, 0),
                    },
                };
                let kv = KeyValue {
                    key: p.key.clone(),
                    value: p.value.clone(),
                    create_revision: if version == 0 { rev } else { created },
                    mod_revision: rev,
                    version: version + 1,
                    lease: p.lease,
                };
                latest.insert(p.key.as_slice(), (kv.create_revision, kv.version));
                batch.put(Tree::Kv, Revision::new(rev, 0).to_key(false), kv.encode());
                results.push(Ok(crate::request::PutResponse {
                    revision: rev,
                    prev_kv: None,
                    kv: kv.clone(),
                }));
                written.push((
                    rev,
                    Change {
                        kv,
                        tombstone: false,
                    },
                ));
            }
        }
        let Some((first_rev, first)) = written.first() else {
            return Ok(results);
        };
        if self.config.key_ordered_copy {
            add_copy_ops(&mut batch, written.iter().map(|(_, c)| (&c.kv, false)));
        }
        self.add_apply_meta(&mut batch);
        // After a failed write, the row of the first put tells whether the batch was applied.
        let lost_ack = match self.backend.write(&batch) {
            Ok(()) => None,
            Err(e) => {
                let key = Revision::new(*first_rev, 0).to_key(false);
                Some(self.settle(e.into(), Tree::Kv, &key, Some(&first.kv.encode()))?)
            }
        };
        let keeps_rows = self.index.keeps_rows();
        self.index.apply_changes(written.iter().map(|(rev, c)| {
            let row = keeps_rows.then(|| Arc::<[u8]>::from(c.kv.encode()));
            (c.kv.key.as_slice(), Revision::new(*rev, 0), false, row)
        }))?;
        {
            let mut leases = self.leases.lock();
            for (_, c) in &written {
                if c.kv.lease == 0 {
                    leases.detach(&c.kv.key);
                } else {
                    leases.attach(&c.kv.key, c.kv.lease);
                }
            }
        }
        self.group.written();
        for (rev, c) in written {
            self.applied.store(rev, Ordering::Release);
            self.revs.set_current(rev);
            self.hub.notify_with(rev, || vec![Event::from_change(c)]);
        }
        drop(w);
        match lost_ack {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }

    /// Deletes the keys of `[key, end)` (etcd convention, see [`range`](Self::range)) in one
    /// revision; returns the revision and the deleted key-values as they were. When nothing
    /// matched, nothing is written and the current revision is returned.
    pub fn delete_range(&self, key: &[u8], end: &[u8]) -> MvccResult<(i64, Vec<KeyValue>)> {
        self.delete_range_with(key, end, true)
    }

    /// [`delete_range`](Self::delete_range); with `prev == false` the deleted key-values carry
    /// only their keys: no row is read (etcd reads values only for `prev_kv`).
    pub(crate) fn delete_range_with(
        &self,
        key: &[u8],
        end: &[u8],
        prev: bool,
    ) -> MvccResult<(i64, Vec<KeyValue>)> {
        self.check_writable()?;
        if key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let _w = self.lock_write();
        let mut ctx = self.begin_write();
        let deleted = ctx.delete_range(&KeyRange::new(key, end), prev)?;
        let rev = self.commit(ctx, WriteBatch::new())?;
        let ticket = self.ticket();
        drop(_w);
        self.wait_durable(ticket)?;
        Ok((rev, deleted))
    }

    /// Starts a write transaction on the newest committed revision; the caller holds the
    /// write lock (and acknowledges only after [`wait_durable`](Self::wait_durable) of the
    /// ticket it ends with, since it may have seen revisions that are not durable yet).
    pub(crate) fn begin_write(&self) -> WriteCtx<'_, B> {
        WriteCtx {
            store: self,
            begin_rev: self.applied.load(Ordering::Acquire),
            changes: Vec::new(),
            overlay: BTreeMap::new(),
        }
    }

    /// Starts a read-only transaction on the visible revision (no lock needed).
    pub(crate) fn begin_read(&self) -> WriteCtx<'_, B> {
        WriteCtx {
            store: self,
            begin_rev: self.current_revision(),
            changes: Vec::new(),
            overlay: BTreeMap::new(),
        }
    }

    /// Commits a write transaction in one backend write (its changes and `extra` operations);
    /// then updates the index, lease attachments and current revision, and notifies watchers.
    /// Returns the transaction's revision (unchanged without changes). The caller holds the
    /// write lock.
    ///
    /// Like etcd, the current revision is not persisted with every write: recovery takes the
    /// highest main revision of the `kv` tree, raised to the scheduled and finished compaction
    /// revisions (persisted before any row is removed). Only compaction removes rows, and the
    /// only rows it can remove at the top of the history are tombstones (etcd issue #17780): it
    /// removes none above its revision, and its marker (with [`META_CURRENT_REV`] as a second
    /// guard) is persisted first, so a commit, tombstones included, writes the `kv` tree alone.
    ///
    /// A failed backend write is settled as the [module docs](self#failed-backend-writes)
    /// describe: when it was applied, the in-memory effects are applied and the error returned.
    pub(crate) fn commit(&self, ctx: WriteCtx<'_, B>, extra: WriteBatch) -> MvccResult<i64> {
        self.commit_then(ctx, extra, || ())
    }

    /// [`commit`](Self::commit), then `applied` (the caller's own in-memory effects) once the
    /// write is applied, also when its acknowledgement was lost.
    pub(crate) fn commit_then(
        &self,
        ctx: WriteCtx<'_, B>,
        extra: WriteBatch,
        applied: impl FnOnce(),
    ) -> MvccResult<i64> {
        self.commit_changes(ctx, extra, applied).map(|(rev, _)| rev)
    }

    /// [`commit_then`](Self::commit_then), giving back the committed changes.
    pub(crate) fn commit_changes(
        &self,
        ctx: WriteCtx<'_, B>,
        extra: WriteBatch,
        applied: impl FnOnce(),
    ) -> MvccResult<(i64, Vec<Change>)> {
        self.check_writable()?;
        let WriteCtx {
            begin_rev, changes, ..
        } = ctx;
        if changes.is_empty() {
            let had_ops = !extra.is_empty();
            let mut extra = extra;
            if had_ops {
                self.add_apply_meta(&mut extra);
            }
            if let Some(first) = extra.ops().first() {
                if let Err(e) = self.backend.write(&extra) {
                    // Applied when the first row reads as written.
                    let e = match first {
                        storage_api::WriteOp::Put { tree, key, value } => {
                            self.settle(e.into(), *tree, key, Some(value.as_slice()))?
                        }
                        storage_api::WriteOp::Delete { tree, key } => {
                            self.settle(e.into(), *tree, key, None)?
                        }
                    };
                    self.group.written();
                    applied();
                    return Err(e);
                }
                self.group.written();
            }
            applied();
            return Ok((begin_rev, changes));
        }
        let rev = begin_rev + 1;
        // The encoded row of a single put, kept for the index's current row.
        let mut single_row = None;
        let written = match changes.as_slice() {
            // One put without the copy: a plain single-row write, no batch.
            [c] if !c.tombstone && extra.is_empty() && !self.config.key_ordered_copy => {
                let key = Revision::new(rev, 0).to_bytes();
                let row = c.kv.encode();
                let written = self
                    .backend_put(Tree::Kv, &key, &row)
                    .map_err(MvccError::from);
                single_row = Some(row);
                written
            }
            // One put with the copy: its row and the copy of it in one batch.
            [c] if !c.tombstone && extra.is_empty() => {
                let key = Revision::new(rev, 0).to_bytes();
                let row = c.kv.encode();
                let mut batch = WriteBatch::with_capacity(3);
                batch.put(Tree::Kv, key.to_vec(), row.clone());
                batch.put(Tree::Index, copy_key(&c.kv.key), row.clone());
                self.add_apply_meta(&mut batch);
                let written = self.backend.write(&batch).map_err(MvccError::from);
                single_row = Some(row);
                written
            }
            _ => self.write_changes(rev, &changes, extra),
        };
        // After a failed write, the row of `(rev, 0)` tells whether the batch was applied.
        let lost_ack = match (written, changes.first()) {
            (Ok(()), _) => None,
            (Err(e), Some(first)) => {
                let key = Revision::new(rev, 0).to_key(first.tombstone);
                Some(self.settle(e, Tree::Kv, &key, Some(&first.kv.encode()))?)
            }
            (Err(e), None) => return Err(e),
        };
        // Only now (the write applied) may the index hand its rows to readers.
        let keeps_rows = self.index.keeps_rows();
        self.index
            .apply_changes(changes.iter().enumerate().map(|(sub, c)| {
                let row = (keeps_rows && !c.tombstone).then(|| match single_row.take() {
                    Some(row) => Arc::<[u8]>::from(row),
                    None => Arc::<[u8]>::from(c.kv.encode()),
                });
                (
                    c.kv.key.as_slice(),
                    Revision::new(rev, sub as i64),
                    c.tombstone,
                    row,
                )
            }))?;
        {
            let mut leases = self.leases.lock();
            for c in &changes {
                if c.tombstone || c.kv.lease == 0 {
                    leases.detach(&c.kv.key);
                } else {
                    leases.attach(&c.kv.key, c.kv.lease);
                }
            }
        }
        self.applied.store(rev, Ordering::Release);
        if self.config.commit_mode == CommitMode::GroupSync && !self.config.early_publish {
            // Visible once durable: the flusher publishes it. Queued before the ticket is
            // taken, so a flush whose target covers the ticket finds it.
            let events = self
                .hub
                .has_watchers()
                .then(|| changes.iter().cloned().map(Event::from_change).collect());
            self.pending.lock().push_back(PendingRev {
                ticket: self.group.last_ticket() + 1,
                rev,
                events,
            });
            self.group.written();
        } else {
            self.group.written();
            self.revs.set_current(rev);
            self.hub.notify_with(rev, || {
                changes.iter().cloned().map(Event::from_change).collect()
            });
        }
        applied();
        match lost_ack {
            Some(e) => Err(e),
            None => Ok((rev, changes)),
        }
    }

    /// Writes the rows of `changes` at `rev` and `extra` in one backend batch.
    fn write_changes(&self, rev: i64, changes: &[Change], extra: WriteBatch) -> MvccResult<()> {
        let mut batch = WriteBatch::with_capacity(changes.len() + extra.len());
        for (sub, change) in changes.iter().enumerate() {
            let r = Revision::new(rev, sub as i64);
            batch.put(Tree::Kv, r.to_key(change.tombstone), change.kv.encode());
        }
        if self.config.key_ordered_copy {
            add_copy_ops(&mut batch, changes.iter().map(|c| (&c.kv, c.tombstone)));
        }
        for op in extra.into_ops() {
            match op {
                storage_api::WriteOp::Put { tree, key, value } => batch.put(tree, key, value),
                storage_api::WriteOp::Delete { tree, key } => batch.delete(tree, key),
            };
        }
        self.add_apply_meta(&mut batch);
        self.backend.write(&batch)?;
        Ok(())
    }
}

/// The store's write lock, held by a mutation (see [`MvccStore::lock_write`]).
pub(crate) struct WriteGuard<'a> {
    _lock: parking_lot::MutexGuard<'a, ()>,
    _inflight: Option<crate::group_commit::Inflight<'a>>,
}

/// Number of changes up to which a write transaction finds a key's pending change by a linear
/// scan instead of an ordered map.
const SMALL_TXN: usize = 8;

/// An open write transaction: changes are buffered and become visible at commit.
pub(crate) struct WriteCtx<'a, B: Backend> {
    pub(crate) store: &'a MvccStore<B>,
    pub(crate) begin_rev: i64,
    pub(crate) changes: Vec<Change>,
    /// Key → index in `changes` of its latest change; maintained only once the transaction has
    /// more than [`SMALL_TXN`] changes (below that a linear scan is cheaper).
    overlay: BTreeMap<Vec<u8>, usize>,
}

enum Slot {
    Stored(Revision),
    /// Index of the pending change in `changes`.
    Pending(usize),
}

impl<B: Backend> WriteCtx<'_, B> {
    /// The revision of this transaction's changes.
    pub(crate) fn rev(&self) -> i64 {
        self.begin_rev + 1
    }

    /// The revision a read inside the transaction reports (`begin + 1` once it changed something).
    pub(crate) fn view_rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }

    /// The latest pending change of `key`, if any.
    fn pending(&self, key: &[u8]) -> Option<&Change> {
        if self.changes.len() <= SMALL_TXN {
            self.changes.iter().rev().find(|c| c.kv.key == key)
        } else {
            self.overlay.get(key).map(|&i| &self.changes[i])
        }
    }

    /// Records a change, keeping the overlay up to date.
    fn record(&mut self, change: Change) {
        self.changes.push(change);
        let n = self.changes.len();
        if n == SMALL_TXN + 1 {
            for (i, c) in self.changes.iter().enumerate() {
                self.overlay.insert(c.kv.key.clone(), i);
            }
        } else if n > SMALL_TXN + 1 {
            self.overlay
                .insert(self.changes[n - 1].kv.key.clone(), n - 1);
        }
    }

    /// `(create_revision, version)` of `key` as this transaction sees it (`(0, 0)` if absent).
    fn existing(&self, key: &[u8]) -> (i64, i64) {
        match self.pending(key) {
            Some(c) if c.tombstone => (0, 0),
            Some(c) => (c.kv.create_revision, c.kv.version),
            None => match self.store.index.get(key, self.begin_rev) {
                Ok((_, created, ver)) => (created.main, ver),
                Err(_) => (0, 0),
            },
        }
    }

    /// Records a put (the caller validated key, value and lease); returns the new key-value.
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> KeyValue {
        self.record_put(key, value, lease);
        self.changes
            .last()
            .map(|c| c.kv.clone())
            .unwrap_or_default()
    }

    /// Records a put (the caller validated key, value and lease).
    pub(crate) fn record_put(&mut self, key: &[u8], value: &[u8], lease: i64) {
        let rev = self.rev();
        let (created, version) = self.existing(key);
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: if version == 0 { rev } else { created },
            mod_revision: rev,
            version: version + 1,
            lease,
        };
        self.record(Change {
            kv,
            tombstone: false,
        });
    }

    /// The keys of `range` this transaction sees, in key order: all of them and their count.
    fn view_slots(&self, range: &KeyRange, limit: usize) -> (Vec<(Vec<u8>, Slot)>, usize) {
        let touched = self.changes.iter().any(|c| range.contains(&c.kv.key));
        if let (false, KeyRange::Single(key)) = (touched, range) {
            return match self.store.index.get(key, self.begin_rev) {
                Ok((rev, _, _)) => (vec![(key.clone(), Slot::Stored(rev))], 1),
                Err(_) => (Vec::new(), 0),
            };
        }
        if !touched {
            let (revs, count) = self.store.index.range(range, self.begin_rev, limit);
            let slots = revs
                .into_iter()
                .map(|(k, r)| (k, Slot::Stored(r)))
                .collect();
            return (slots, count);
        }
        let (revs, _) = self.store.index.range(range, self.begin_rev, 0);
        let mut merged: BTreeMap<Vec<u8>, Slot> = revs
            .into_iter()
            .map(|(k, r)| (k, Slot::Stored(r)))
            .collect();
        // In change order, so the latest change of a key wins.
        for (i, c) in self.changes.iter().enumerate() {
            if !range.contains(&c.kv.key) {
                continue;
            }
            if c.tombstone {
                merged.remove(c.kv.key.as_slice());
            } else {
                merged.insert(c.kv.key.clone(), Slot::Pending(i));
            }
        }
        let count = merged.len();
        let take = if limit == 0 { count } else { limit };
        (merged.into_iter().take(take).collect(), count)
    }

    fn resolve(&self, slot: Slot) -> MvccResult<KeyValue> {
        match slot {
            Slot::Pending(i) => Ok(self.changes[i].kv.clone()),
            Slot::Stored(rev) => self.store.load_kv(rev, self.begin_rev),
        }
    }

    /// Reads `range` as this transaction sees it (its own earlier changes included).
    pub(crate) fn read(
        &self,
        range: &KeyRange,
        limit: i64,
        count_only: bool,
    ) -> MvccResult<(Vec<KeyValue>, usize)> {
        let lim = if count_only || limit <= 0 {
            0
        } else {
            usize::try_from(limit).unwrap_or(usize::MAX)
        };
        let (slots, count) = self.view_slots(range, lim);
        if count_only {
            return Ok((Vec::new(), count));
        }
        let mut kvs = Vec::with_capacity(slots.len());
        for (_, slot) in slots {
            kvs.push(self.resolve(slot)?);
        }
        Ok((kvs, count))
    }

    /// Tombstones every key of `range` this transaction sees; returns their previous values.
    /// Records the deletion of every key of `range`; returns the deleted key-values as they
    /// were when `prev` is true, else key-only key-values (no row is read).
    pub(crate) fn delete_range(
        &mut self,
        range: &KeyRange,
        prev: bool,
    ) -> MvccResult<Vec<KeyValue>> {
        let (slots, _) = self.view_slots(range, 0);
        let rev = self.rev();
        let mut deleted = Vec::with_capacity(slots.len());
        for (key, slot) in slots {
            let prev = if prev {
                self.resolve(slot)?
            } else {
                KeyValue {
                    key: key.clone(),
                    ..KeyValue::default()
                }
            };
            self.record(Change {
                kv: KeyValue::tombstone(key, rev),
                tombstone: true,
            });
            deleted.push(prev);
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_api::MemoryBackend;

    fn meta_current(b: &MemoryBackend) -> Option<i64> {
        b.get(Tree::Meta, META_CURRENT_REV)
            .unwrap()
            .map(|v| decode_i64(&v, "currentRev").unwrap())
    }

    #[test]
    fn current_revision_is_recovered_without_a_per_write_meta_row() {
        let b = MemoryBackend::volatile();
        let s = MvccStore::new(b.clone()).unwrap();
        s.put(b"a", b"1", 0).unwrap(); // 2
        s.put(b"b", b"1", 0).unwrap(); // 3
                                       // Put-only commits write the kv tree alone.
        assert_eq!(meta_current(&b), None);
        assert_eq!(MvccStore::new(b.clone()).unwrap().current_revision(), 3);

        s.delete_range(b"a", b"").unwrap(); // 4: tombstones write the kv tree alone too
        assert_eq!(meta_current(&b), None);
        assert_eq!(MvccStore::new(b.clone()).unwrap().current_revision(), 4);
        s.put(b"c", b"1", 0).unwrap(); // 5
        s.delete_range(b"c", b"").unwrap(); // 6
                                            // Compacting everything: the newest row is the tombstone at 6.
        s.compact(6).unwrap();
        // Scheduling a compaction records the guard.
        assert_eq!(meta_current(&b), Some(6));
        let r = MvccStore::new(b.clone()).unwrap();
        assert_eq!((r.current_revision(), r.compact_revision()), (6, 6));
        // A further write and a compaction past every tombstone.
        r.put(b"b", b"2", 0).unwrap(); // 7
        r.delete_range(b"b", b"").unwrap(); // 8
        r.put(b"d", b"1", 0).unwrap(); // 9
        r.delete_range(b"d", b"").unwrap(); // 10
        r.compact(10).unwrap();
        let again = MvccStore::new(b.clone()).unwrap();
        assert_eq!(
            (again.current_revision(), again.compact_revision()),
            (10, 10)
        );
        assert_eq!(again.put(b"e", b"1", 0).unwrap().0, 11);
    }

    #[test]
    fn a_lost_acknowledgement_is_applied_in_memory_and_reported() {
        use storage_api::fault::{FaultKind, FaultOp, FaultyBackend};
        let b = FaultyBackend::wrap(MemoryBackend::volatile());
        let s = MvccStore::new(b.clone()).unwrap();
        s.put(b"a", b"1", 0).unwrap(); // 2
        b.plan().fail_nth(FaultOp::Write, 1, FaultKind::After);
        assert!(matches!(
            s.delete_range(b"a", b""),
            Err(MvccError::Storage(_))
        ));
        // Applied: the store shows the delete, and the next write takes the next revision.
        assert_eq!(s.current_revision(), 3);
        assert_eq!(s.range(b"a", b"", 0, 0, true).unwrap().count, 0);
        assert_eq!(s.put(b"b", b"1", 0).unwrap().0, 4);
        // Not applied: the store stays as before.
        b.plan().fail_nth(FaultOp::Write, 1, FaultKind::Before);
        assert!(matches!(s.put(b"c", b"1", 0), Err(MvccError::Storage(_))));
        assert_eq!(s.current_revision(), 4);
        assert_eq!(s.put(b"c", b"1", 0).unwrap().0, 5);
    }

    #[test]
    fn an_unknown_write_outcome_fails_the_store_until_it_is_reopened() {
        use storage_api::fault::{FaultKind, FaultOp, FaultyBackend};
        let b = FaultyBackend::wrap(MemoryBackend::volatile());
        let s = MvccStore::new(b.clone()).unwrap();
        s.lease_grant(1, 60).unwrap();
        s.put(b"a", b"1", 1).unwrap(); // revision 2

        // The write is applied but reports an error, and so does the read-back.
        b.plan()
            .fail_nth(FaultOp::Write, 1, FaultKind::After)
            .fail_nth(FaultOp::Read, 1, FaultKind::Before);
        assert!(matches!(s.put(b"a", b"2", 0), Err(MvccError::Storage(_))));
        assert_eq!(b.plan().injected(), 2);
        // Every mutation is refused; reads are served.
        assert!(matches!(s.put(b"b", b"1", 0), Err(MvccError::Failed(_))));
        assert!(matches!(
            s.delete_range(b"a", b""),
            Err(MvccError::Failed(_))
        ));
        assert!(matches!(
            s.delete_range(b"zz", b""),
            Err(MvccError::Failed(_))
        ));
        assert!(matches!(
            s.txn(&[], &[crate::TxnOp::put("b", "1", 0)], &[]),
            Err(MvccError::Failed(_))
        ));
        assert!(matches!(s.lease_grant(2, 60), Err(MvccError::Failed(_))));
        assert!(matches!(s.lease_revoke(1), Err(MvccError::Failed(_))));
        assert!(matches!(s.compact(2), Err(MvccError::Failed(_))));
        match s.put(b"b", b"1", 0) {
            Err(e @ MvccError::Failed(_)) => assert!(e.to_string().contains("reopen")),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.range(b"a", b"", 0, 0, false).unwrap().kvs[0].value, b"1");
        assert!(s.txn(&[], &[crate::TxnOp::range("a", "")], &[]).is_ok());
        // A reopened store recovers what the backend holds and writes again.
        drop(s);
        let r = MvccStore::new(b.clone()).unwrap();
        assert_eq!(r.current_revision(), 3);
        assert_eq!(r.range(b"a", b"", 0, 0, false).unwrap().kvs[0].value, b"2");
        assert_eq!(r.put(b"b", b"1", 0).unwrap().0, 4);
    }

    #[test]
    fn apply_meta_rides_in_every_write_and_only_in_writes() {
        let backend = MemoryBackend::volatile();
        let store = MvccStore::new(backend.clone()).unwrap();
        assert_eq!(store.apply_meta().unwrap(), None);
        // Without apply meta nothing is added.
        store.put(b"a", b"0", 0).unwrap();
        assert_eq!(store.apply_meta().unwrap(), None);

        store.set_apply_meta(b"m1".to_vec());
        store.put(b"a", b"1", 0).unwrap();
        assert_eq!(store.apply_meta().unwrap().as_deref(), Some(&b"m1"[..]));
        store.set_apply_meta(b"m2".to_vec());
        store.lease_grant(7, 10).unwrap();
        assert_eq!(store.apply_meta().unwrap().as_deref(), Some(&b"m2"[..]));
        store.set_apply_meta(b"m3".to_vec());
        store.delete_range(b"a", b"").unwrap();
        assert_eq!(store.apply_meta().unwrap().as_deref(), Some(&b"m3"[..]));
        store.set_apply_meta(b"m4".to_vec());
        store.lease_revoke(7).unwrap();
        assert_eq!(store.apply_meta().unwrap().as_deref(), Some(&b"m4"[..]));
        store.set_apply_meta(b"m5".to_vec());
        store.put(b"b", b"1", 0).unwrap();
        store.set_apply_meta(b"m6".to_vec());
        store.compact(store.current_revision()).unwrap();
        assert_eq!(store.apply_meta().unwrap().as_deref(), Some(&b"m6"[..]));

        // A write that writes nothing leaves it; write_apply_meta writes it alone.
        store.set_apply_meta(b"m7".to_vec());
        assert!(matches!(store.delete_range(b"zz", b""), Ok((5, _))));
        assert!(store.lease_revoke(99).is_err());
        assert_eq!(store.apply_meta().unwrap().as_deref(), Some(&b"m6"[..]));
        store.write_apply_meta().unwrap();
        assert_eq!(store.apply_meta().unwrap().as_deref(), Some(&b"m7"[..]));
        assert_eq!(store.current_revision(), 5);

        // Reopened: the value is the backend's.
        drop(store);
        let store = MvccStore::new(backend).unwrap();
        assert_eq!(store.apply_meta().unwrap().as_deref(), Some(&b"m7"[..]));
        assert_eq!(store.current_revision(), 5);
    }

    #[test]
    fn reload_rebuilds_everything_from_a_replaced_backend() {
        let source = MvccStore::new(MemoryBackend::volatile()).unwrap();
        source.put(b"a", b"1", 0).unwrap();
        source.lease_grant(3, 50).unwrap();
        source.put(b"b", b"2", 3).unwrap();
        source.put(b"a", b"3", 0).unwrap();
        source.compact(3).unwrap();
        let image = source.backend().snapshot().unwrap();

        let backend = MemoryBackend::volatile();
        let store = MvccStore::new(backend.clone()).unwrap();
        for i in 0..10 {
            store.put(format!("old{i}").as_bytes(), b"x", 0).unwrap();
        }
        store.lease_grant(9, 5).unwrap();
        let watcher = store.watch(b"a", b"", 0).unwrap();
        backend.restore(&image).unwrap();
        store.reload().unwrap();
        assert_eq!((store.current_revision(), store.compact_revision()), (4, 3));
        assert_eq!(store.index_len(), 2);
        assert_eq!(store.leases(), vec![3]);
        assert_eq!(
            store.lease_time_to_live(3).unwrap().keys,
            vec![b"b".to_vec()]
        );
        let r = store.range(b"a", b"c", 0, 0, false).unwrap();
        assert_eq!(r.kvs.len(), 2);
        assert_eq!(
            (r.kvs[0].value.as_slice(), r.kvs[0].version),
            (&b"3"[..], 2)
        );
        assert!(matches!(
            store.range(b"a", b"", 2, 0, false),
            Err(MvccError::Compacted)
        ));
        // The watcher of the replaced content ended.
        assert!(watcher.recv().is_none());
        assert_eq!(store.put(b"c", b"1", 0).unwrap().0, 5);
    }

    #[test]
    fn close_flushes_closes_and_ends_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let config = storage_api::BackendConfig::new(dir.path().join("db")).with_durability(
            storage_api::Durability::Buffered {
                interval: Duration::from_secs(3600),
            },
        );
        let s = MvccStore::new(MemoryBackend::new(config.clone()).unwrap()).unwrap();
        s.put(b"a", b"1", 0).unwrap();
        let w = s.watch(b"a", b"", 0).unwrap();
        assert!(!s.is_closed());
        s.close().unwrap();
        assert!(s.is_closed());
        assert!(w.recv_timeout(Duration::from_secs(5)).is_none());
        assert!(matches!(
            s.close(),
            Err(MvccError::Storage(StorageError::Closed))
        ));
        assert!(matches!(
            s.range(b"a", b"", 0, 0, true),
            Err(MvccError::Storage(StorageError::Closed))
        ));
        // The buffered write was flushed by close.
        let r = MvccStore::new(MemoryBackend::new(config).unwrap()).unwrap();
        assert_eq!(r.range(b"a", b"", 0, 0, false).unwrap().kvs[0].value, b"1");
        r.close().unwrap();
    }

    #[test]
    fn revision_survives_compaction_without_the_guard_row() {
        // etcd issue #17780 shape: the newest rows are tombstones, compacted at the newest one.
        let b = MemoryBackend::volatile();
        let s = MvccStore::new(b.clone()).unwrap();
        s.put(b"a", b"1", 0).unwrap(); // 2
        s.delete_range(b"a", b"").unwrap(); // 3
        s.put(b"b", b"1", 0).unwrap(); // 4
        s.delete_range(b"b", b"").unwrap(); // 5
        s.compact(5).unwrap();
        // Drop the guard rows to check the compaction revisions alone keep the revision.
        b.delete(Tree::Meta, META_CURRENT_REV).unwrap();
        let r = MvccStore::new(b.clone()).unwrap();
        assert_eq!(r.current_revision(), 5);
    }
}
