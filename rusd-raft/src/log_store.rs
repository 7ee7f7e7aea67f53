//! The raft log on a dedicated storage-api engine instance: the alternative to the default
//! log file of [`crate::file_log`] (`RaftNodeConfig::log_engine`). It was the first log of
//! this crate; measured against one sled member, the engine's flush cost five
//! `sync_file_range` calls besides the `fdatasync` per append and halved the single-client
//! durable put rate, hence the log file.
//!
//! # Why not `raft-engine`
//! TiKV's `raft-engine` 0.4.2 was evaluated first. It was not used: its entries must be
//! rust-protobuf 2 `Message`s (`MessageExt::Entry: protobuf::Message`, built for raft-rs's
//! `eraftpb::Entry`), so every openraft entry would need a protobuf wrapper; it compiles
//! `lz4-sys` (C) and pulls in about 30 crates (rayon, the `rhai` scripting engine by default,
//! prometheus 0.13 beside the server's prometheus-client, thiserror 1, nix 0.26). Its
//! strengths (multi-raft, one log for thousands of regions, compression) are not needs of a
//! single-group store.
//!
//! # What is used instead
//! A second instance of a storage-api engine (the same kind as the state machine's by
//! default), in its own directory (`<data-dir>/raft-log`), opened with
//! [`Durability::Buffered`](storage_api::Durability::Buffered) and made durable explicitly:
//! * `kv` tree: log index (8-byte big-endian) → the entry ([`postcard`]-encoded);
//! * `meta` tree: `vote`, `committed`, `purged` (the last purged log id).
//!
//! **Group fsync**: openraft hands [`RaftLogStorage::append`] every entry that arrived since
//! the previous append (all concurrent client writes of the leader, or a whole AppendEntries
//! on a follower); they go into one [`WriteBatch`] and one [`Backend::flush`], and only then
//! is openraft told they are durable. A failed flush is reported to openraft, which stops the
//! member (a failed WAL fsync is fatal, as in etcd). The vote is flushed before
//! [`RaftLogStorage::save_vote`] returns. `committed`, truncation and purge are written without
//! their own flush: they become durable with the next flush, and losing them in a crash is
//! harmless (a lower committed index is re-learned from the leader, a truncation is repeated,
//! a purge only leaves entries behind). `committed` rides in the next append's batch rather
//! than costing a write per commit.

use std::collections::Bound;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use mvcc_core::AnyBackend;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use storage_api::{Backend, StorageError as EngineError, Tree, WriteBatch};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const META_VOTE: &[u8] = b"vote";
const META_COMMITTED: &[u8] = b"committed";
const META_PURGED: &[u8] = b"purged";
/// Entries read per backend scan while looking for the last entry at open.
const OPEN_CHUNK: usize = 4096;

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn decode_index(k: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = k.try_into().map_err(|_| {
        read_err(EngineError::Corruption(
            "raft log key is not 8 bytes".into(),
        ))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(v).map_err(read_err)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(v).map_err(write_err)
}

#[derive(Debug)]
struct Inner {
    backend: Arc<AnyBackend>,
    /// Last log id present (`None`: empty log; falls back to `purged`).
    last: Mutex<Option<LogId>>,
    purged: Mutex<Option<LogId>>,
    /// Flush every append (see [`LogStore::open`]).
    sync: bool,
    /// The committed log id openraft reported last, written with the next append.
    committed: Mutex<Option<Vec<u8>>>,
}

/// The raft log store (and its reader: clones share the engine).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl LogStore {
    /// Opens the log held by `backend` (an engine instance used for nothing else). With `sync`
    /// every append is flushed before openraft is told it is durable; without, the engine's
    /// own flush interval bounds what a crash can lose (etcd has no such mode; rusd's
    /// `--durability buffered`).
    pub fn open(backend: Arc<AnyBackend>, sync: bool) -> Result<Self, StorageError> {
        let purged = match backend.get(Tree::Meta, META_PURGED).map_err(read_err)? {
            Some(v) => Some(decode::<LogId>(&v)?),
            None => None,
        };
        let mut last = None;
        let mut start = Vec::new();
        loop {
            let chunk = backend
                .scan(Tree::Kv, &start, &[], OPEN_CHUNK)
                .map_err(read_err)?;
            let Some((k, v)) = chunk.last() else {
                break;
            };
            let index = decode_index(k)?;
            let entry: Entry = decode(v)?;
            last = Some(entry.log_id);
            start = key(index.saturating_add(1)).to_vec();
            if chunk.len() < OPEN_CHUNK || index == u64::MAX {
                break;
            }
        }
        Ok(LogStore {
            inner: Arc::new(Inner {
                backend,
                last: Mutex::new(last),
                purged: Mutex::new(purged),
                sync,
                committed: Mutex::new(None),
            }),
        })
    }

    /// The engine holding the log.
    pub fn backend(&self) -> &Arc<AnyBackend> {
        &self.inner.backend
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AnyBackend) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let backend = self.inner.backend.clone();
        tokio::task::spawn_blocking(move || f(&backend))
            .await
            .map_err(|e| EngineError::Corruption(format!("raft log task failed: {e}")))?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end: Option<u64> = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(end) = end {
            if end <= start {
                return Ok(Vec::new());
            }
        }
        let end_key = end.map(|e| key(e).to_vec()).unwrap_or_default();
        let rows = self
            .inner
            .backend
            .scan(Tree::Kv, &key(start), &end_key, 0)
            .map_err(read_err)?;
        rows.iter().map(|(_, v)| decode::<Entry>(v)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = *self.inner.purged.lock();
        let last = (*self.inner.last.lock()).or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), openraft::StorageError<u64>> {
        let value = encode(vote)?;
        self.blocking(move |b| {
            b.put(Tree::Meta, META_VOTE, &value)?;
            b.flush()
        })
        .await
        .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        match self
            .inner
            .backend
            .get(Tree::Meta, META_VOTE)
            .map_err(|e| StorageError::from(StorageIOError::read_vote(AnyError::new(&e))))?
        {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written with the next append (no write of its own per commit): a committed index
        // lost in a crash is only a hint; the leader commits the entries again.
        *self.inner.committed.lock() = Some(encode(&committed)?);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        match self
            .inner
            .backend
            .get(Tree::Meta, META_COMMITTED)
            .map_err(read_err)?
        {
            Some(v) => decode(&v),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        let mut last = None;
        for entry in entries {
            batch.put(Tree::Kv, key(entry.log_id.index).to_vec(), encode(&entry)?);
            last = Some(entry.log_id);
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        if let Some(committed) = self.inner.committed.lock().take() {
            batch.put(Tree::Meta, META_COMMITTED, committed);
        }
        // One write and one flush for the whole batch: group fsync.
        let result = if self.inner.sync {
            self.blocking(move |b| {
                b.write(&batch)?;
                b.flush()
            })
            .await
        } else {
            self.inner.backend.write(&batch)
        };
        match result {
            Ok(()) => {
                *self.inner.last.lock() = Some(last);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "raft log append failed; the member stops");
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let rows = self
            .inner
            .backend
            .scan(Tree::Kv, &key(log_id.index), &[], 0)
            .map_err(read_err)?;
        let mut batch = WriteBatch::with_capacity(rows.len());
        for (k, _) in rows {
            batch.delete(Tree::Kv, k);
        }
        self.inner.backend.write(&batch).map_err(write_err)?;
        // The new last entry: the one before `log_id`, if still present.
        let prev = match log_id.index.checked_sub(1) {
            Some(i) => match self
                .inner
                .backend
                .get(Tree::Kv, &key(i))
                .map_err(read_err)?
            {
                Some(v) => Some(decode::<Entry>(&v)?.log_id),
                None => None,
            },
            None => None,
        };
        *self.inner.last.lock() = prev;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let end = log_id.index.saturating_add(1);
        let rows = self
            .inner
            .backend
            .scan(Tree::Kv, &key(0), &key(end), 0)
            .map_err(read_err)?;
        let mut batch = WriteBatch::with_capacity(rows.len() + 1);
        for (k, _) in rows {
            batch.delete(Tree::Kv, k);
        }
        batch.put(Tree::Meta, META_PURGED, encode(&log_id)?);
        self.inner.backend.write(&batch).map_err(write_err)?;
        *self.inner.purged.lock() = Some(log_id);
        let mut last = self.inner.last.lock();
        if last.is_some_and(|l| l.index <= log_id.index) {
            *last = None;
        }
        Ok(())
    }
}
