//! The etcd `KV` calls on [`MvccStore`]: [`kv_range`](MvccStore::kv_range),
//! [`kv_put`](MvccStore::kv_put), [`kv_delete_range`](MvccStore::kv_delete_range) and
//! [`kv_compact`](MvccStore::kv_compact) (the transaction, [`kv_txn`](MvccStore::kv_txn), is in
//! [`crate::txn`]), over the request types of [`crate::request`].
//!
//! Ranges follow etcd's `executeRange` (`etcdserver/apply.go`):
//! 1. Read from the store: everything when `sort_order` is not `None` or a revision filter is
//!    set; otherwise `limit + 1` key-values (when `limit > 0`), in key order. `count` is the
//!    number of keys in the range at the read revision, whatever the limit and filters.
//! 2. Drop the key-values outside the `min/max_mod/create_revision` filters (`0` = unset).
//! 3. Sort: a target other than `Key` with order `None` sorts ascending. etcd 3.4.23 sorts only
//!    what step 1 read, so `sort_target = Version, sort_order = None, limit = 2` sorts the first
//!    three keys (verified, see `tests/data_plane.rs`). The sort is stable: ties keep key order
//!    (as Go's insertion sort does for the short slices etcd sorts in its tests).
//! 4. `more` = more than `limit` key-values are left (`limit > 0`); keep the first `limit`.
//! 5. `keys_only` clears the values; `count_only` returns no key-values and `more = false`.
//!
//! Without sort and filters, the store reads exactly `limit` key-values and `more` is
//! `count > limit`, which is the same answer without the extra row read.

use std::cmp::Ordering;
use std::sync::Arc;

use storage_api::{Backend, WriteBatch};

use crate::compaction::CompactionStats;
use crate::error::{MvccError, MvccResult};
use crate::kv::KeyValue;
use crate::request::{
    Compaction, CompactionResponse, DeleteRange, DeleteRangeResponse, Put, PutResponse, Range,
    RangeResponse, SortOrder, SortTarget,
};
use crate::store::{MvccStore, WriteCtx, MAX_READ_RETRIES};
use crate::tree_index::KeyRange;

/// How a range reads the store (etcd `executeRange` step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RangePlan {
    /// Key-values to read (`<= 0` = all).
    pub(crate) fetch: i64,
    /// True when the store read is the answer up to `keys_only`: no filter, no reordering.
    pub(crate) direct: bool,
}

impl RangePlan {
    pub(crate) fn of(req: &Range) -> Self {
        let key_order = req.sort_target == SortTarget::Key && req.sort_order != SortOrder::Descend;
        if req.count_only || (key_order && !req.has_filters()) {
            return RangePlan {
                fetch: req.limit,
                direct: true,
            };
        }
        let fetch = if req.sort_order != SortOrder::None || req.has_filters() || req.limit <= 0 {
            0
        } else {
            req.limit.saturating_add(1)
        };
        RangePlan {
            fetch,
            direct: false,
        }
    }

    /// etcd `executeRange` steps 2 to 5 on what the store read.
    pub(crate) fn finish(
        self,
        req: &Range,
        mut kvs: Vec<KeyValue>,
        count: i64,
        revision: i64,
    ) -> RangeResponse {
        if req.count_only {
            return RangeResponse {
                kvs: Vec::new(),
                more: false,
                count,
                revision,
            };
        }
        let more = if self.direct {
            req.limit > 0 && count > req.limit
        } else {
            filter(req, &mut kvs);
            sort(req, &mut kvs);
            let limit = usize::try_from(req.limit).unwrap_or(0);
            let more = limit > 0 && kvs.len() > limit;
            if more {
                kvs.truncate(limit);
            }
            more
        };
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        RangeResponse {
            kvs,
            more,
            count,
            revision,
        }
    }
}

fn filter(req: &Range, kvs: &mut Vec<KeyValue>) {
    if !req.has_filters() {
        return;
    }
    kvs.retain(|kv| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    });
}

fn sort(req: &Range, kvs: &mut [KeyValue]) {
    let order = match (req.sort_target, req.sort_order) {
        (SortTarget::Key, SortOrder::None | SortOrder::Ascend) => return,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, order) => order,
    };
    let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match req.sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    if order == SortOrder::Descend {
        kvs.sort_by(|a, b| by(b, a));
    } else {
        kvs.sort_by(by);
    }
}

/// The key-value of `key` as the write transaction `ctx` sees it.
pub(crate) fn read_key<B: Backend>(
    ctx: &WriteCtx<'_, B>,
    key: &[u8],
) -> MvccResult<Option<KeyValue>> {
    let (kvs, _) = ctx.read(&KeyRange::Single(key.to_vec()), 0, false)?;
    Ok(kvs.into_iter().next())
}

impl<B: Backend> MvccStore<B> {
    /// etcd `Range`: reads `[key, range_end)` at `revision` (`<= 0` = current) with etcd's
    /// sort, filters, limit, `keys_only` and `count_only` (see the [module docs](self)).
    ///
    /// Errors: [`MvccError::EmptyKey`] / [`MvccError::KeyTooLarge`];
    /// [`MvccError::FutureRevision`] when `revision` is above the current revision,
    /// [`MvccError::Compacted`] when below the compaction revision.
    pub fn kv_range(&self, req: &Range) -> MvccResult<RangeResponse> {
        self.check_open()?;
        req.validate(&self.config)?;
        let plan = RangePlan::of(req);
        let (kvs, count, current) = self.read_range(
            &req.key,
            &req.range_end,
            req.revision,
            plan.fetch,
            req.count_only,
        )?;
        Ok(plan.finish(req, kvs, count as i64, current))
    }

    /// The read of a range: `(key-values, count, current revision)` of `[key, range_end)` at
    /// `revision` (`<= 0` = current), at most `fetch` key-values (`<= 0` = all); the key is
    /// already checked. A read of the current revision that a compaction overtook is retried
    /// at the new current revision.
    pub(crate) fn read_range(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: i64,
        fetch: i64,
        count_only: bool,
    ) -> MvccResult<(Vec<KeyValue>, usize, i64)> {
        let range = (!range_end.is_empty()).then(|| KeyRange::new(key, range_end));
        let mut attempts = 0;
        loop {
            let revs = self.rev_pair();
            if revision > revs.current {
                return Err(MvccError::FutureRevision);
            }
            let at = if revision <= 0 {
                revs.current
            } else {
                revision
            };
            if at < revs.compact {
                return Err(MvccError::Compacted);
            }
            let read = match &range {
                None => self.read_key_at(key, at, count_only),
                Some(range) => self.read_at(range, at, fetch, count_only),
            };
            let compacted_meanwhile = at < self.compact_revision();
            match read {
                // A read of the current revision raced a compaction above it: read again at the
                // new current revision.
                Ok(_) | Err(MvccError::Compacted)
                    if compacted_meanwhile && revision <= 0 && attempts < MAX_READ_RETRIES =>
                {
                    attempts += 1;
                }
                Ok(_) if compacted_meanwhile => return Err(MvccError::Compacted),
                Ok((kvs, count)) => return Ok((kvs, count, revs.current)),
                Err(e) => return Err(e),
            }
        }
    }

    /// etcd `Put`: writes `key = value` with `lease` in a new revision.
    ///
    /// `prev_kv` returns the key-value as it was; `ignore_value` / `ignore_lease` keep the
    /// current value / lease. Errors, nothing written: [`MvccError::EmptyKey`],
    /// [`MvccError::ValueProvided`] / [`MvccError::LeaseProvided`] (a value or lease given with
    /// the matching `ignore_*`), size limits, [`MvccError::LeaseNotFound`] (checked first, as
    /// etcd), then [`MvccError::KeyNotFound`] (`ignore_*` on a missing key).
    pub fn kv_put(&self, req: &Put) -> MvccResult<PutResponse> {
        if !req.reads_key() {
            let (revision, kv) = self.put(&req.key, &req.value, req.lease)?;
            return Ok(PutResponse {
                revision,
                prev_kv: None,
                kv,
            });
        }
        self.check_writable()?;
        req.validate(&self.config)?;
        let w = self.lock_write();
        if req.lease != 0 && !self.leases.lock().contains(req.lease) {
            return Err(MvccError::LeaseNotFound(req.lease));
        }
        let mut ctx = self.begin_write();
        let prev = read_key(&ctx, &req.key)?;
        let (value, lease) = req.resolve(prev.as_ref())?;
        let kv = ctx.put(&req.key, value, lease);
        let revision = self.commit(ctx, WriteBatch::new())?;
        let ticket = self.ticket();
        drop(w);
        self.wait_durable(ticket)?;
        Ok(PutResponse {
            revision,
            prev_kv: if req.prev_kv { prev } else { None },
            kv,
        })
    }

    /// etcd `DeleteRange`: deletes the keys of `[key, range_end)` in one revision (none, and the
    /// current revision returned, when nothing matched). `prev_kv` returns the deleted
    /// key-values as they were.
    pub fn kv_delete_range(&self, req: &DeleteRange) -> MvccResult<DeleteRangeResponse> {
        self.check_writable()?;
        req.validate(&self.config)?;
        let (revision, deleted) = self.delete_range_with(&req.key, &req.range_end, req.prev_kv)?;
        Ok(DeleteRangeResponse {
            revision,
            deleted: deleted.len() as i64,
            prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
        })
    }

    /// etcd `Compact`: [`compact`](Self::compact) at `revision`; returns once the rows are
    /// physically deleted, whatever `physical` says.
    pub fn kv_compact(&self, req: &Compaction) -> MvccResult<CompactionResponse> {
        let stats = self.compact(req.revision)?;
        Ok(CompactionResponse {
            revision: self.current_revision(),
            stats,
        })
    }

    /// etcd `Compact` as etcd's apply runs it: the compaction is in force when this returns
    /// ([`schedule_compaction`](Self::schedule_compaction)); its rows are deleted by this
    /// store's compaction thread ([`finish_compaction`](Self::finish_compaction), one
    /// compaction at a time, in order), so a replicated state machine goes on applying
    /// entries meanwhile. The response's `stats` carry the revision alone. A server honours
    /// `physical` with [`wait_compacted`](Self::wait_compacted).
    pub fn kv_compact_in_background(
        self: &Arc<Self>,
        req: &Compaction,
    ) -> MvccResult<CompactionResponse> {
        let job = self.schedule_compaction(req.revision)?;
        self.compaction_thread.finish(self, job);
        Ok(CompactionResponse {
            revision: self.current_revision(),
            stats: CompactionStats {
                revision: req.revision,
                ..CompactionStats::default()
            },
        })
    }
}
