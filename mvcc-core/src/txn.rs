//! Transactions: compares, operations, nested transactions (etcd `txn.go`).
//!
//! [`MvccStore::kv_txn`] runs an etcd [`Txn`] (every etcd field, see
//! [`crate::request`]); [`MvccStore::txn`] and [`MvccStore::txn_request`] are conveniences over
//! it in the compact form of this module ([`TxnOp`], [`RangeRequest`], [`TxnResult`]).
//!
//! A transaction is validated whole first ([`Txn::validate`](crate::request::Txn::validate):
//! operation budget, empty keys, sizes, `ignore_*` misuse, duplicate put keys; then — on the
//! branch path chosen by the compares — range revisions, `ignore_*` keys and leases) and only
//! then executed. All compares, including those of nested transactions on
//! the chosen path, are evaluated against the state before the transaction. The changes of the
//! transaction share one revision (none if nothing changed) and are committed in one atomic
//! backend write.

use storage_api::{Backend, WriteBatch};

use crate::data_plane::{read_key, RangePlan};
use crate::error::{MvccError, MvccResult};
use crate::kv::KeyValue;
use crate::request::{DeleteRangeResponse, PutResponse, RequestOp, ResponseOp, Txn, TxnResponse};
use crate::store::{MvccStore, RangeResult, WriteCtx};
use crate::tree_index::KeyRange;

/// How a compare relates the key's field to the given operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CompareOp {
    /// `field == operand`
    Equal,
    /// `field != operand`
    NotEqual,
    /// `field > operand`
    Greater,
    /// `field < operand`
    Less,
}

/// The field a compare reads, with its operand.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CompareTarget {
    /// The key's version (0 when absent).
    Version(i64),
    /// The key's create revision (0 when absent).
    Create(i64),
    /// The key's mod revision (0 when absent).
    Mod(i64),
    /// The key's value, compared byte-wise (a compare on an absent key is false).
    Value(Vec<u8>),
    /// The key's lease (0 when absent or none).
    Lease(i64),
}

/// One condition of a transaction, over the key `key` or the range `[key, range_end)` (etcd
/// convention: empty `range_end` = the single key, `[0]` = every key `>= key`). Over a range it
/// holds when every existing key satisfies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Compare {
    /// The key (must not be empty).
    pub key: Vec<u8>,
    /// The range end (see the type docs).
    pub range_end: Vec<u8>,
    /// The relation.
    pub op: CompareOp,
    /// The field and operand.
    pub target: CompareTarget,
}

impl Compare {
    /// A compare on the single key `key`.
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare {
            key: key.into(),
            range_end: Vec::new(),
            op,
            target,
        }
    }

    /// `version(key) op v`.
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, v: i64) -> Self {
        Self::new(key, op, CompareTarget::Version(v))
    }

    /// `create_revision(key) op v`.
    pub fn create(key: impl Into<Vec<u8>>, op: CompareOp, v: i64) -> Self {
        Self::new(key, op, CompareTarget::Create(v))
    }

    /// `mod_revision(key) op v`.
    pub fn modified(key: impl Into<Vec<u8>>, op: CompareOp, v: i64) -> Self {
        Self::new(key, op, CompareTarget::Mod(v))
    }

    /// `value(key) op v`.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, v: impl Into<Vec<u8>>) -> Self {
        Self::new(key, op, CompareTarget::Value(v.into()))
    }

    /// `lease(key) op v`.
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, v: i64) -> Self {
        Self::new(key, op, CompareTarget::Lease(v))
    }

    /// Makes the compare cover `[key, end)`.
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }

    fn holds_for(&self, kv: &KeyValue) -> bool {
        use std::cmp::Ordering;
        let ord: Ordering = match &self.target {
            CompareTarget::Version(v) => kv.version.cmp(v),
            CompareTarget::Create(v) => kv.create_revision.cmp(v),
            CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
            CompareTarget::Lease(v) => kv.lease.cmp(v),
            CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        };
        match self.op {
            CompareOp::Equal => ord == Ordering::Equal,
            CompareOp::NotEqual => ord != Ordering::Equal,
            CompareOp::Greater => ord == Ordering::Greater,
            CompareOp::Less => ord == Ordering::Less,
        }
    }
}

/// A range read inside a transaction (see [`MvccStore::range`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RangeRequest {
    /// First key (must not be empty).
    pub key: Vec<u8>,
    /// Range end (etcd convention).
    pub range_end: Vec<u8>,
    /// Revision to read at (`<= 0` = the transaction's view).
    pub revision: i64,
    /// Maximum number of key-values (`<= 0` = unlimited).
    pub limit: i64,
    /// Return only the count.
    pub count_only: bool,
}

/// A transaction: if every compare holds, run `success`, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TxnRequest {
    /// The conditions (all must hold; none = true).
    pub compare: Vec<Compare>,
    /// Operations run when the conditions hold.
    pub success: Vec<TxnOp>,
    /// Operations run otherwise.
    pub failure: Vec<TxnOp>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TxnOp {
    /// A range read; sees the earlier writes of the transaction.
    Range(RangeRequest),
    /// A put.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease (0 = none); must exist.
        lease: i64,
    },
    /// A range deletion (etcd range convention).
    DeleteRange {
        /// First key.
        key: Vec<u8>,
        /// Range end.
        range_end: Vec<u8>,
    },
    /// A nested transaction; its compares are evaluated against the state before the outer
    /// transaction.
    Txn(TxnRequest),
}

impl TxnOp {
    /// A put op.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    /// A delete-range op.
    pub fn delete(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        TxnOp::DeleteRange {
            key: key.into(),
            range_end: range_end.into(),
        }
    }

    /// A range op at the transaction's view, unlimited.
    pub fn range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        TxnOp::Range(RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..RangeRequest::default()
        })
    }

    /// A nested transaction op.
    pub fn txn(compare: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Self {
        TxnOp::Txn(TxnRequest {
            compare,
            success,
            failure,
        })
    }
}

/// The result of one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TxnOpResponse {
    /// Result of a range (its `revision` is the transaction's view revision).
    Range(RangeResult),
    /// The key-value written by a put.
    Put(KeyValue),
    /// The key-values deleted by a delete-range, as they were.
    DeleteRange(Vec<KeyValue>),
    /// Result of a nested transaction.
    Txn(TxnResult),
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TxnResult {
    /// True when the compares held (the success branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction (its own revision when it changed something).
    /// Nested results carry the same value.
    pub revision: i64,
    /// One response per executed operation, in order.
    pub responses: Vec<TxnOpResponse>,
}

/// The branch decisions of a transaction and of the nested transactions on its chosen branch.
#[derive(Debug)]
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

impl Path {
    fn ops<'t>(&self, req: &'t Txn) -> &'t [RequestOp] {
        if self.succeeded {
            &req.success
        } else {
            &req.failure
        }
    }
}

fn path_mismatch() -> MvccError {
    MvccError::Corruption("txn path mismatch".into())
}

/// Sets the revision of a transaction response, of its nested transactions and of their puts
/// and deletes (ranges keep the view they read at).
fn fill_revision(result: &mut TxnResponse, revision: i64) {
    result.revision = revision;
    for r in &mut result.responses {
        match r {
            ResponseOp::Range(_) => {}
            ResponseOp::Put(p) => p.revision = revision,
            ResponseOp::DeleteRange(d) => d.revision = revision,
            ResponseOp::Txn(inner) => fill_revision(inner, revision),
        }
    }
}

impl<B: Backend> MvccStore<B> {
    /// Runs a transaction: if every compare holds, `success`, else `failure`.
    /// A convenience over [`kv_txn`](Self::kv_txn), see [`txn_request`](Self::txn_request).
    pub fn txn(
        &self,
        compares: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
    ) -> MvccResult<TxnResult> {
        self.kv_txn(&Txn::from_parts(compares, success, failure))
            .map(TxnResult::from)
    }

    /// Runs a transaction request atomically in at most one revision. A convenience over
    /// [`kv_txn`](Self::kv_txn): ranges with their five fields, plain puts, deletes that return
    /// what they deleted.
    ///
    /// Rejected before any effect with: [`MvccError::TooManyOps`] (more than
    /// `max_txn_ops` compares or ops in a branch; a nested transaction gets what its parent
    /// leaves), [`MvccError::EmptyKey`], [`MvccError::KeyTooLarge`] /
    /// [`MvccError::ValueTooLarge`], [`MvccError::DuplicateKey`], and on the chosen path
    /// [`MvccError::FutureRevision`] / [`MvccError::Compacted`] for a range revision and
    /// [`MvccError::LeaseNotFound`] for a put lease.
    pub fn txn_request(&self, req: &TxnRequest) -> MvccResult<TxnResult> {
        self.kv_txn(&Txn::from(req)).map(TxnResult::from)
    }

    /// etcd `Txn`: if every compare holds, run `success`, else `failure`, atomically in at most
    /// one revision (none when nothing changed).
    ///
    /// Rejected before any effect with the errors of [`Txn::validate`] (op budget, empty or
    /// oversized keys and values, `ignore_*` misuse, duplicate keys), then, on the path the
    /// compares choose (evaluated against the state before the transaction, nested ones
    /// included): [`MvccError::FutureRevision`] / [`MvccError::Compacted`] for a range
    /// revision, [`MvccError::KeyNotFound`] for an `ignore_*` put of a missing key and
    /// [`MvccError::LeaseNotFound`] for a put lease. Ops run in order and see the earlier
    /// writes of the transaction; an `ignore_*` put whose key an earlier op of the same
    /// transaction deleted fails with [`MvccError::KeyNotFound`] and nothing is written
    /// (etcd 3.4 panics there).
    pub fn kv_txn(&self, req: &Txn) -> MvccResult<TxnResponse> {
        self.check_open()?;
        req.validate(&self.config)?;
        let read_only = req.is_read_only();
        let mut attempts = 0;
        loop {
            let begin = self.current_revision();
            match self.txn_attempt(req, read_only) {
                // A read-only txn raced a compaction above its revision: run it again at the new
                // current revision (a write txn holds the write lock, which compaction needs to
                // move the compaction revision, so it cannot be overtaken).
                Err(MvccError::Compacted)
                    if read_only
                        && self.compact_revision() > begin
                        && attempts < crate::store::MAX_READ_RETRIES =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    fn txn_attempt(&self, req: &Txn, read_only: bool) -> MvccResult<TxnResponse> {
        let _w = if read_only {
            None
        } else {
            Some(self.lock_write())
        };
        let mut ctx = if read_only {
            self.begin_read()
        } else {
            self.begin_write()
        };
        let path = self.compare_to_path(&ctx, req)?;
        self.check_path(&ctx, req, &path)?;
        let mut min_read = ctx.begin_rev;
        let mut result = self.exec_txn(&mut ctx, req, &path, &mut min_read)?;
        // A read below a compaction that overtook it may be incomplete (checked before the
        // commit, so a committed write is never reported as failed).
        if min_read < self.compact_revision() {
            return Err(MvccError::Compacted);
        }
        let revision = if read_only {
            ctx.begin_rev
        } else {
            let rev = self.commit(ctx, WriteBatch::new())?;
            // Answered only once everything it wrote or saw is durable (its compares and reads
            // ran on the newest committed revision, which may still wait for its flush).
            let ticket = self.ticket();
            drop(_w);
            self.wait_durable(ticket)?;
            rev
        };
        fill_revision(&mut result, revision);
        Ok(result)
    }

    fn compare_holds(&self, ctx: &WriteCtx<'_, B>, c: &Compare) -> MvccResult<bool> {
        if c.range_end.is_empty() {
            return self.compare_key_holds(ctx, c);
        }
        let range = KeyRange::new(&c.key, &c.range_end);
        let entries = self.index.range_full(&range, ctx.begin_rev);
        if entries.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(c.holds_for(&KeyValue::default()));
        }
        let needs_row = matches!(c.target, CompareTarget::Value(_) | CompareTarget::Lease(_));
        for (key, modified, created, version) in entries {
            let kv = if needs_row {
                self.load_kv(modified, ctx.begin_rev)?
            } else {
                KeyValue {
                    key,
                    value: Vec::new(),
                    create_revision: created.main,
                    mod_revision: modified.main,
                    version,
                    lease: 0,
                }
            };
            if !c.holds_for(&kv) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`compare_holds`](Self::compare_holds) for a compare on a single key.
    fn compare_key_holds(&self, ctx: &WriteCtx<'_, B>, c: &Compare) -> MvccResult<bool> {
        let Ok((modified, created, version)) = self.index.get(&c.key, ctx.begin_rev) else {
            if matches!(c.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(c.holds_for(&KeyValue::default()));
        };
        let kv = if matches!(c.target, CompareTarget::Value(_) | CompareTarget::Lease(_)) {
            self.load_kv(modified, ctx.begin_rev)?
        } else {
            // `holds_for` reads neither the key nor the value.
            KeyValue {
                create_revision: created.main,
                mod_revision: modified.main,
                version,
                ..KeyValue::default()
            }
        };
        Ok(c.holds_for(&kv))
    }

    fn compare_to_path(&self, ctx: &WriteCtx<'_, B>, req: &Txn) -> MvccResult<Path> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare_holds(ctx, c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = Vec::new();
        for op in ops {
            if let RequestOp::Txn(t) = op {
                nested.push(self.compare_to_path(ctx, t)?);
            }
        }
        Ok(Path { succeeded, nested })
    }

    /// etcd `checkTxn` on the chosen path, against the state before the transaction.
    fn check_path(&self, ctx: &WriteCtx<'_, B>, req: &Txn, path: &Path) -> MvccResult<()> {
        let compact = self.compact_revision();
        let mut nested = path.nested.iter();
        for op in path.ops(req) {
            match op {
                RequestOp::Range(r) => {
                    if r.revision == 0 {
                        continue;
                    }
                    if r.revision > ctx.begin_rev {
                        return Err(MvccError::FutureRevision);
                    }
                    if r.revision < compact {
                        return Err(MvccError::Compacted);
                    }
                }
                RequestOp::Put(p) => {
                    if (p.ignore_value || p.ignore_lease)
                        && self.index.get(&p.key, ctx.begin_rev).is_err()
                    {
                        return Err(MvccError::KeyNotFound);
                    }
                    if p.lease != 0 && !self.leases.lock().contains(p.lease) {
                        return Err(MvccError::LeaseNotFound(p.lease));
                    }
                }
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => {
                    let p = nested.next().ok_or_else(path_mismatch)?;
                    self.check_path(ctx, t, p)?;
                }
            }
        }
        Ok(())
    }

    fn exec_txn(
        &self,
        ctx: &mut WriteCtx<'_, B>,
        req: &Txn,
        path: &Path,
        min_read: &mut i64,
    ) -> MvccResult<TxnResponse> {
        let ops = path.ops(req);
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match op {
                RequestOp::Range(r) => {
                    let range = KeyRange::new(&r.key, &r.range_end);
                    let plan = RangePlan::of(r);
                    let (kvs, count) = if r.revision <= 0 {
                        ctx.read(&range, plan.fetch, r.count_only)?
                    } else {
                        *min_read = (*min_read).min(r.revision);
                        self.read_at(&range, r.revision, plan.fetch, r.count_only)?
                    };
                    ResponseOp::Range(plan.finish(r, kvs, count as i64, ctx.view_rev()))
                }
                RequestOp::Put(p) => {
                    let prev = if p.reads_key() {
                        read_key(ctx, &p.key)?
                    } else {
                        None
                    };
                    let (value, lease) = p.resolve(prev.as_ref())?;
                    let kv = ctx.put(&p.key, value, lease);
                    ResponseOp::Put(PutResponse {
                        revision: 0,
                        prev_kv: if p.prev_kv { prev } else { None },
                        kv,
                    })
                }
                RequestOp::DeleteRange(d) => {
                    let deleted =
                        ctx.delete_range(&KeyRange::new(&d.key, &d.range_end), d.prev_kv)?;
                    ResponseOp::DeleteRange(DeleteRangeResponse {
                        revision: 0,
                        deleted: deleted.len() as i64,
                        prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
                    })
                }
                RequestOp::Txn(t) => {
                    let p = nested.next().ok_or_else(path_mismatch)?;
                    ResponseOp::Txn(self.exec_txn(ctx, t, p, min_read)?)
                }
            };
            responses.push(resp);
        }
        Ok(TxnResponse {
            revision: 0,
            succeeded: path.succeeded,
            responses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check of `crate::request` on the compact op form.
    fn check_intervals(ops: &[TxnOp]) -> MvccResult<()> {
        let ops: Vec<RequestOp> = ops.iter().map(RequestOp::from).collect();
        crate::request::check_intervals(&ops).map(|_| ())
    }

    #[test]
    fn check_intervals_matches_etcd() {
        let put = |k: &str| TxnOp::put(k, "v", 0);
        let del = |k: &str, e: &str| TxnOp::delete(k, e);
        // Duplicate put.
        assert!(matches!(
            check_intervals(&[put("a"), put("a")]),
            Err(MvccError::DuplicateKey)
        ));
        // Put inside a delete range, either order.
        assert!(check_intervals(&[del("a", "c"), put("b")]).is_err());
        assert!(check_intervals(&[put("b"), del("a", "c")]).is_err());
        assert!(check_intervals(&[put("c"), del("a", "c")]).is_ok());
        // Single-key delete and put of the same key.
        assert!(check_intervals(&[del("a", ""), put("a")]).is_err());
        // Overlapping deletes are fine.
        assert!(check_intervals(&[del("a", "c"), del("b", "d")]).is_ok());
        // The from-key end [0] is a raw interval [key, "\0"): it contains nothing.
        assert!(check_intervals(&[del("a", "\0"), put("b")]).is_ok());
        // Same put in nested then and else is fine; in nested then and outer is not.
        let nested = TxnOp::txn(vec![], vec![put("a")], vec![put("a")]);
        assert!(check_intervals(std::slice::from_ref(&nested)).is_ok());
        assert!(check_intervals(&[nested.clone(), put("a")]).is_err());
        // Nested put under an outer delete.
        assert!(check_intervals(&[del("a", "b"), nested.clone()]).is_err());
        // Outer put under a nested delete.
        let nested_del = TxnOp::txn(vec![], vec![del("a", "z")], vec![]);
        assert!(check_intervals(&[nested_del, put("k")]).is_err());
        // Two nested txns putting the same key.
        let n1 = TxnOp::txn(vec![], vec![put("x")], vec![]);
        let n2 = TxnOp::txn(vec![], vec![], vec![put("x")]);
        assert!(check_intervals(&[n1, n2]).is_err());
    }
}
