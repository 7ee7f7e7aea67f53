//! Compaction: dropping the history below a revision (etcd `kvstore_compaction.go`).
//!
//! [`MvccStore::compact`] checks etcd's preconditions, persists the `scheduledCompactRev`
//! marker and moves the compaction revision (under the write lock, so it is quick), compacts the
//! in-memory index in chunks of keys, then deletes the unneeded rows of the `kv` tree in batches of
//! [`StoreConfig::compaction_batch_limit`](crate::StoreConfig) rows with a pause between
//! batches, holding no lock that readers or writers need. The final batch writes
//! `finishedCompactRev`. A crash in between leaves `scheduled > finished`, and reopening the
//! store finishes the job.

use std::collections::HashSet;

use storage_api::{Backend, Tree, WriteBatch};

use crate::error::{MvccError, MvccResult};
use crate::revision::Revision;
use crate::store::{
    encode_i64, successor, MvccStore, META_CURRENT_REV, META_FINISHED_COMPACT_REV,
    META_SCHEDULED_COMPACT_REV,
};

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CompactionStats {
    /// The compaction revision.
    pub revision: i64,
    /// Rows examined in the `kv` tree.
    pub rows_scanned: u64,
    /// Rows deleted from the `kv` tree.
    pub rows_deleted: u64,
    /// Backend batches committed.
    pub batches: u64,
}

impl<B: Backend> MvccStore<B> {
    /// Compacts the history at `revision`: afterwards reads below `revision` fail with
    /// [`MvccError::Compacted`], reads at or above it are unchanged. Returns once the rows are
    /// physically deleted.
    ///
    /// In [`CommitMode::GroupSync`](crate::CommitMode::GroupSync) it returns `Ok` only once the
    /// compaction is durable: the `scheduledCompactRev` marker is flushed before the first row is
    /// deleted, and the deletions with `finishedCompactRev` before returning. A failed flush is
    /// reported although the compaction is applied in memory (a reopen finishes it).
    ///
    /// Errors (etcd): [`MvccError::Compacted`] when `revision <= compact_revision()`,
    /// [`MvccError::FutureRevision`] when `revision > current_revision()`.
    pub fn compact(&self, revision: i64) -> MvccResult<CompactionStats> {
        self.check_open()?;
        let _c = self.compaction_lock.lock();
        let lost_ack = {
            let _w = self.lock_write();
            self.check_writable()?;
            let revs = self.rev_pair();
            if revision <= revs.compact {
                return Err(MvccError::Compacted);
            }
            if revision > revs.current {
                return Err(MvccError::FutureRevision);
            }
            let mut batch = WriteBatch::new();
            batch.put(Tree::Meta, META_SCHEDULED_COMPACT_REV, encode_i64(revision));
            // The current revision is not persisted with every write (see `commit`); record
            // it before rows disappear.
            batch.put(Tree::Meta, META_CURRENT_REV, encode_i64(revs.current));
            self.add_apply_meta(&mut batch);
            let lost_ack = match self.backend.write(&batch) {
                Ok(()) => None,
                // Applied when the marker reads as written (see `MvccStore::settle`).
                Err(e) => Some(self.settle(
                    e.into(),
                    Tree::Meta,
                    META_SCHEDULED_COMPACT_REV,
                    Some(&encode_i64(revision)),
                )?),
            };
            self.group.written();
            lost_ack
        };
        let scheduled = self.ticket();
        if lost_ack.is_none() {
            // GroupSync: the marker and the current-revision guard are durable before the
            // compaction is visible and before any row is deleted, so a crash from here on
            // recovers the compaction (and never a lower revision); a failed flush leaves it
            // invisible and the store failed.
            self.wait_durable(scheduled)?;
        }
        self.revs.set_compact(revision);
        // Outside the write lock: the index is compacted key by key in chunks.
        let available = self.index.compact(revision);
        tracing::debug!(revision, keep = available.len(), "compaction scheduled");
        if let Some(e) = lost_ack {
            // The marker is written: a reopen (or the next compaction) deletes the rows.
            return Err(e);
        }
        let stats = self.physical_compaction(revision, &available)?;
        // GroupSync: acknowledged = durable, deletions and `finishedCompactRev` included.
        self.wait_durable(self.ticket())?;
        Ok(stats)
    }

    /// Deletes every row with main revision `<= revision` that is not in `available`, in
    /// batches, and records `finishedCompactRev` with the last batch. The caller holds the
    /// compaction lock.
    pub(crate) fn physical_compaction(
        &self,
        revision: i64,
        available: &HashSet<Revision>,
    ) -> MvccResult<CompactionStats> {
        let limit = self.config.compaction_batch_limit.max(1);
        let end = Revision::new(revision.saturating_add(1), 0).to_key(false);
        let mut from = Revision::new(0, 0).to_key(false);
        let mut stats = CompactionStats {
            revision,
            ..CompactionStats::default()
        };
        loop {
            let rows = self.backend.scan(Tree::Kv, &from, &end, limit)?;
            let last_batch = rows.len() < limit;
            let mut batch = WriteBatch::new();
            for (key, _) in &rows {
                let (rev, _) = Revision::from_key(key)?;
                if !available.contains(&rev) {
                    batch.delete(Tree::Kv, key.clone());
                    stats.rows_deleted += 1;
                }
            }
            stats.rows_scanned += rows.len() as u64;
            if last_batch {
                batch.put(Tree::Meta, META_FINISHED_COMPACT_REV, encode_i64(revision));
            }
            self.add_apply_meta(&mut batch);
            self.backend.write(&batch)?;
            self.group.written();
            stats.batches += 1;
            if last_batch {
                break;
            }
            if let Some((k, _)) = rows.last() {
                from = successor(k);
            }
            if !self.config.compaction_sleep_interval.is_zero() {
                std::thread::sleep(self.config.compaction_sleep_interval);
            }
        }
        if let Some(cache) = &self.row_cache {
            cache.retain_compacted(revision, available);
        }
        self.backend.compact(revision)?;
        tracing::info!(
            revision,
            scanned = stats.rows_scanned,
            deleted = stats.rows_deleted,
            batches = stats.batches,
            "compaction finished"
        );
        Ok(stats)
    }
}
