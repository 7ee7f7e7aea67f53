//! The [`Backend`] trait: what every storage engine provides.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::batch::WriteBatch;
use crate::config::{BackendConfig, BackendKind, Durability};
use crate::error::StorageResult;
use crate::keys::prefix_successor;
use crate::snapshot::ValidatedSnapshot;
use crate::tree::Tree;

/// An owned key-value pair as returned by scans.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// A persistent, ordered, byte-oriented store of the five logical [`Tree`]s.
///
/// # Contract (checked by [`conformance`](crate::conformance) on every engine)
/// * Keys and values are arbitrary bytes; the empty key and the empty value are valid.
/// * Each tree is an independent keyspace ordered by unsigned byte comparison.
/// * Every mutating call is atomic: [`write`](Backend::write), [`batch_put`](Backend::batch_put)
///   and [`batch_delete`](Backend::batch_delete) are all-or-nothing, both to concurrent readers
///   and after a crash.
/// * A successful write is visible to every later read on any thread.
/// * Durability follows [`BackendConfig::durability`](crate::BackendConfig): with
///   [`Durability::Sync`](crate::Durability::Sync) a write is durable when it returns; with
///   `Buffered` it is durable within the interval or after the next [`flush`](Backend::flush).
/// * After [`close`](Backend::close) every call returns [`StorageError::Closed`](crate::StorageError::Closed).
/// * Calls may be made concurrently from many threads.
pub trait Backend: Send + Sync + 'static {
    /// Which engine this is.
    const KIND: BackendKind;

    /// Opens the store at `config.path`, creating it if missing.
    ///
    /// Fails with [`StorageError::InvalidPath`](crate::StorageError::InvalidPath) when the path
    /// cannot be a directory, and [`StorageError::WrongEngine`](crate::StorageError::WrongEngine)
    /// when it holds another engine's store.
    fn new(config: BackendConfig) -> StorageResult<Arc<Self>>
    where
        Self: Sized;

    /// Inserts or overwrites `key` in `tree`.
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> StorageResult<()>;

    /// The value of `key` in `tree`, if present.
    fn get(&self, tree: Tree, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;

    /// The values of `keys` in `tree`, one answer per key in the order of `keys` (`None` for an
    /// absent key; duplicates are answered each time).
    ///
    /// Answers exactly what a [`get`](Backend::get) per key would. An engine overrides it to
    /// serve the whole call from one read view (one lock, one read transaction, one table open;
    /// the memory, sled and redb engines do) and may be fastest when `keys` are in ascending
    /// order, as the MVCC layer passes revision keys; any order is correct. After [`close`](Backend::close) it fails with
    /// [`StorageError::Closed`](crate::StorageError::Closed), even for an empty `keys`.
    /// The provided implementation is a loop over [`get`](Backend::get).
    fn get_many(&self, tree: Tree, keys: &[&[u8]]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        if self.is_closed() {
            return Err(crate::StorageError::Closed);
        }
        keys.iter().map(|key| self.get(tree, key)).collect()
    }

    /// Removes `key` from `tree`; removing an absent key succeeds.
    fn delete(&self, tree: Tree, key: &[u8]) -> StorageResult<()>;

    /// Inserts every pair into `tree` atomically (later pairs win on duplicate keys).
    fn batch_put(&self, tree: Tree, pairs: &[KvPair]) -> StorageResult<()> {
        let mut batch = WriteBatch::with_capacity(pairs.len());
        for (k, v) in pairs {
            batch.put(tree, k.clone(), v.clone());
        }
        self.write(&batch)
    }

    /// Removes every key from `tree` atomically.
    fn batch_delete(&self, tree: Tree, keys: &[Vec<u8>]) -> StorageResult<()> {
        let mut batch = WriteBatch::with_capacity(keys.len());
        for k in keys {
            batch.delete(tree, k.clone());
        }
        self.write(&batch)
    }

    /// Applies a batch of puts and deletes over any trees in one atomic commit.
    /// An empty batch succeeds without effect.
    fn write(&self, batch: &WriteBatch) -> StorageResult<()>;

    /// Pairs of `tree` with keys in `[start, end)` in ascending key order.
    /// An empty `end` means no upper bound; `end <= start` yields nothing;
    /// `limit == 0` means unlimited.
    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> StorageResult<Vec<KvPair>>;

    /// Pairs of `tree` whose key starts with `prefix`, ascending; `limit == 0` means unlimited.
    /// The empty prefix selects the whole tree; prefixes ending in `0xff` are exact.
    fn scan_prefix(&self, tree: Tree, prefix: &[u8], limit: usize) -> StorageResult<Vec<KvPair>> {
        match prefix_successor(prefix) {
            Some(end) => self.scan(tree, prefix, &end, limit),
            // Empty or all-0xff prefix: every key >= prefix starts with it.
            None => self.scan(tree, prefix, &[], limit),
        }
    }

    /// Writes a consistent point-in-time image of all five trees to `writer` in the portable
    /// [snapshot format](crate::snapshot), returning the number of bytes written. Concurrent
    /// writes are either wholly in the image or wholly absent.
    fn snapshot_to(&self, writer: &mut dyn Write) -> StorageResult<u64>;

    /// [`snapshot_to`](Backend::snapshot_to) into memory.
    fn snapshot(&self) -> StorageResult<Vec<u8>> {
        let mut out = Vec::new();
        self.snapshot_to(&mut out)?;
        Ok(out)
    }

    /// Replaces the whole content of the store with the snapshot read from `reader`.
    ///
    /// The whole input is read and validated (magic, version, structure, checksum) before
    /// anything is changed: on a bad snapshot the call returns
    /// [`StorageError::Snapshot`](crate::StorageError::Snapshot) and the store is untouched.
    /// Large inputs are spooled to a temporary file, not held in memory.
    fn restore_from(&self, reader: &mut dyn Read) -> StorageResult<()> {
        let snapshot = ValidatedSnapshot::read_from(reader)?;
        self.restore_validated(snapshot)
    }

    /// [`restore_from`](Backend::restore_from) a byte slice.
    fn restore(&self, data: &[u8]) -> StorageResult<()> {
        let mut reader = data;
        self.restore_from(&mut reader)
    }

    /// Replaces the whole content of the store with an already validated snapshot.
    /// Engines implement this; callers use [`restore_from`](Backend::restore_from).
    fn restore_validated(&self, snapshot: ValidatedSnapshot) -> StorageResult<()>;

    /// Hook called by the MVCC layer after it deleted every revision below `revision`.
    /// Engines use it to drop tombstones or schedule space reclamation; it never changes
    /// what reads return. See each backend's documentation for what it does.
    fn compact(&self, revision: i64) -> StorageResult<()>;

    /// Bytes the store occupies on disk (0 for a volatile in-memory store).
    fn size(&self) -> StorageResult<u64>;

    /// Reclaims free space (what is possible per engine; see each backend's docs).
    /// Never changes what reads return.
    fn defragment(&self) -> StorageResult<()>;

    /// Makes every write acknowledged before this call durable before it returns.
    fn flush(&self) -> StorageResult<()>;

    /// Flushes and releases the engine. Every later call, including a second `close`,
    /// returns [`StorageError::Closed`](crate::StorageError::Closed).
    fn close(&self) -> StorageResult<()>;

    /// True once [`close`](Backend::close) has been called. Cheap (no I/O), so layers above
    /// can refuse work they would otherwise answer from memory.
    fn is_closed(&self) -> bool;

    /// The durability the backend was opened with. Layers above use it to tell whether a write
    /// that reported an error but reads back as applied may be non-durable (with
    /// [`Durability::Sync`] it may: the sync itself may have failed). The provided
    /// implementation answers `Sync`, the conservative choice; every engine of this workspace
    /// answers its configuration.
    fn durability(&self) -> Durability {
        Durability::Sync
    }
}
