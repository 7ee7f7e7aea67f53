//! Compaction: dropping the history below a revision (etcd `kvstore_compaction.go`).
//!
//! [`MvccStore::compact`] checks etcd's preconditions, persists the `scheduledCompactRev`
//! marker and moves the compaction revision (under the write lock, so it is quick), compacts the
//! in-memory index in chunks of keys, then deletes the unneeded rows of the `kv` tree in batches of
//! [`StoreConfig::compaction_batch_limit`](crate::StoreConfig) rows with a pause between
//! batches, holding no lock that readers or writers need. The final batch writes
//! `finishedCompactRev`. A crash in between leaves `scheduled > finished`, and reopening the
//! store finishes the job.
//!
//! The two halves can also run apart: [`MvccStore::schedule_compaction`] does the first (the
//! compaction is in force when it returns) and hands back a [`ScheduledCompaction`] that
//! [`MvccStore::finish_compaction`] completes, possibly on another thread, so that a replicated
//! state machine applies a compaction entry without waiting for its rows to be deleted (etcd
//! also deletes them in the background). [`MvccStore::wait_compacted`] waits for the deletion
//! (etcd's `physical` flag). The deletion batches carry no apply metadata (see
//! [`MvccStore::set_apply_meta`]): the marker write does, and a reopen finishes the rest.

use std::collections::HashSet;
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
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

/// A compaction in force whose rows are not deleted yet: returned by
/// [`MvccStore::schedule_compaction`], completed by [`MvccStore::finish_compaction`].
/// Dropping it leaves the rows to the next compaction or the next reopen of the store.
#[derive(Debug)]
#[must_use = "the rows are deleted by MvccStore::finish_compaction"]
pub struct ScheduledCompaction {
    revision: i64,
    available: HashSet<Revision>,
    generation: u64,
}

impl ScheduledCompaction {
    /// The compaction revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }
}

/// A store's compaction thread (see [`MvccStore::kv_compact_in_background`]): started on first
/// use, it finishes the scheduled compactions it is handed, in order, and ends with the store
/// (it holds the store weakly).
#[derive(Debug, Default)]
pub(crate) struct CompactionThread {
    tx: Mutex<Option<mpsc::Sender<ScheduledCompaction>>>,
}

impl CompactionThread {
    /// Hands `job` to the thread (starting it if needed). If no thread can be started, the
    /// job runs here.
    pub(crate) fn finish<B: Backend>(&self, store: &Arc<MvccStore<B>>, job: ScheduledCompaction) {
        let mut tx = self.tx.lock();
        let job = match tx.as_ref() {
            Some(t) => match t.send(job) {
                Ok(()) => return,
                // The thread is gone (it ended after a panic): start another.
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (new_tx, rx) = mpsc::channel::<ScheduledCompaction>();
        let weak = Arc::downgrade(store);
        let spawned = std::thread::Builder::new()
            .name("mvcc-compaction".to_string())
            .spawn(move || compaction_thread(&weak, &rx));
        match spawned {
            Ok(_) => {
                // The receiver lives in the thread just started, so this cannot fail.
                let _ = new_tx.send(job);
                *tx = Some(new_tx);
            }
            Err(e) => {
                drop(tx);
                tracing::warn!(error = %e, "cannot start the compaction thread; compacting inline");
                if let Err(e) = store.finish_compaction(job) {
                    tracing::warn!(error = %e, "compaction failed");
                }
            }
        }
    }
}

fn compaction_thread<B: Backend>(
    store: &Weak<MvccStore<B>>,
    jobs: &mpsc::Receiver<ScheduledCompaction>,
) {
    while let Ok(job) = jobs.recv() {
        let Some(store) = store.upgrade() else {
            return;
        };
        let revision = job.revision;
        match store.finish_compaction(job) {
            Ok(Some(stats)) => tracing::debug!(?stats, "background compaction finished"),
            Ok(None) => tracing::debug!(revision, "background compaction skipped"),
            // A closed store ends the job; a failed backend marked the store failed.
            Err(e) => tracing::warn!(revision, error = %e, "background compaction failed"),
        }
    }
}

/// How far the physical compaction got, for [`MvccStore::wait_compacted`].
#[derive(Debug, Default)]
pub(crate) struct CompactionProgress {
    state: Mutex<Progress>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct Progress {
    /// The newest compaction revision whose rows are deleted (-1: none).
    finished: i64,
    /// Bumped when the store reloads its content: older scheduled compactions no longer apply.
    generation: u64,
}

impl CompactionProgress {
    pub(crate) fn new(finished: i64) -> Self {
        CompactionProgress {
            state: Mutex::new(Progress {
                finished,
                generation: 0,
            }),
            done: Condvar::new(),
        }
    }

    fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    fn finished(&self) -> i64 {
        self.state.lock().finished
    }

    /// Records the rows below `revision` as deleted and wakes the waiters.
    pub(crate) fn set_finished(&self, revision: i64) {
        let mut p = self.state.lock();
        p.finished = p.finished.max(revision);
        drop(p);
        self.done.notify_all();
    }

    /// After a reload: the finished revision read back from the backend; earlier scheduled
    /// compactions are void.
    pub(crate) fn reset(&self, finished: i64) {
        let mut p = self.state.lock();
        p.finished = finished;
        p.generation = p.generation.wrapping_add(1);
        drop(p);
        self.done.notify_all();
    }
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
        let job = self.schedule_compaction(revision)?;
        Ok(self.finish_compaction(job)?.unwrap_or(CompactionStats {
            revision,
            ..CompactionStats::default()
        }))
    }

    /// The first half of [`compact`](Self::compact): checks etcd's preconditions, persists the
    /// `scheduledCompactRev` marker (with the apply metadata) and puts the compaction in force
    /// (reads below `revision` fail from now on). The rows stay until
    /// [`finish_compaction`](Self::finish_compaction) runs the returned job (or the store is
    /// reopened). Same errors and durability as [`compact`](Self::compact); a failed flush
    /// after the marker was written is reported while the compaction is in force.
    pub fn schedule_compaction(&self, revision: i64) -> MvccResult<ScheduledCompaction> {
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
        Ok(ScheduledCompaction {
            revision,
            available,
            generation: self.compaction_progress.generation(),
        })
    }

    /// The second half of [`compact`](Self::compact): deletes the rows `job` no longer needs,
    /// in batches, and records `finishedCompactRev`; in
    /// [`CommitMode::GroupSync`](crate::CommitMode::GroupSync) returns once that is durable.
    /// Runs one at a time (it holds the compaction lock, which
    /// [`schedule_compaction`](Self::schedule_compaction) and [`reload`](Self::reload) also
    /// take). `Ok(None)`: nothing to do, because a compaction at the same or a higher revision
    /// already finished or the store was reloaded since `job` was scheduled.
    ///
    /// A failed deletion batch leaves the store consistent (the rows it did not delete are
    /// invisible; the next compaction or a reopen deletes them) and is returned; a failed
    /// flush marks the store failed, as for every write.
    pub fn finish_compaction(
        &self,
        job: ScheduledCompaction,
    ) -> MvccResult<Option<CompactionStats>> {
        self.check_open()?;
        let _c = self.compaction_lock.lock();
        if job.generation != self.compaction_progress.generation()
            || job.revision <= self.compaction_progress.finished()
        {
            return Ok(None);
        }
        let stats = self.physical_compaction(job.revision, &job.available)?;
        // GroupSync: acknowledged = durable, deletions and `finishedCompactRev` included.
        self.wait_durable(self.ticket())?;
        Ok(Some(stats))
    }

    /// Waits until the rows of the compaction at `revision` are deleted (etcd's `physical`
    /// compaction), at most `timeout`. `Ok(true)`: deleted; `Ok(false)`: not within `timeout`
    /// (still scheduled, or the store was reloaded from a snapshot without it). Fails once the
    /// store is closed or failed.
    pub fn wait_compacted(&self, revision: i64, timeout: Duration) -> MvccResult<bool> {
        let deadline = Instant::now() + timeout;
        let progress = &self.compaction_progress;
        let mut p = progress.state.lock();
        loop {
            if p.finished >= revision {
                return Ok(true);
            }
            self.check_writable()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // Bounded, so that closing or failing the store (which do not notify) is seen.
            let step = (deadline - now).min(Duration::from_millis(100));
            progress.done.wait_for(&mut p, step);
        }
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
            // No apply metadata: this may run beside the apply of later entries (see the
            // module docs); the marker write carried it.
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
        self.compaction_progress.set_finished(revision);
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
