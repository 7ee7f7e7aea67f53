//! The etcd data plane as request and response types: one request per etcd `KV` call
//! ([`Range`], [`Put`], [`DeleteRange`], [`Txn`], [`Compaction`]) with every field of etcd's
//! `etcdserverpb` message, its response, and etcd's validation of it.
//!
//! [`MvccStore`](crate::MvccStore) serves them with
//! [`kv_range`](crate::MvccStore::kv_range), [`kv_put`](crate::MvccStore::kv_put),
//! [`kv_delete_range`](crate::MvccStore::kv_delete_range), [`kv_txn`](crate::MvccStore::kv_txn)
//! and [`kv_compact`](crate::MvccStore::kv_compact), so an embedder gets etcd's behaviour
//! without a server: range sort and filters, `keys_only`/`count_only`, `prev_kv`,
//! `ignore_value`/`ignore_lease`, and the transaction checks (`checkTxnRequest`,
//! `checkIntervals`).
//!
//! Validation ([`Txn::validate`] and friends) is etcd 3.4's `v3rpc/key.go`:
//! * Range, Put, DeleteRange and every compare need a non-empty key ([`MvccError::EmptyKey`]);
//!   keys and values must fit the store limits ([`MvccError::KeyTooLarge`],
//!   [`MvccError::ValueTooLarge`]).
//! * Put: `ignore_value` with a value → [`MvccError::ValueProvided`]; `ignore_lease` with a
//!   lease → [`MvccError::LeaseProvided`].
//! * Txn: `max(len(compare), len(success), len(failure))` must not exceed the operation budget,
//!   else [`MvccError::TooManyOps`]. The budget of the outer transaction is
//!   [`StoreConfig::max_txn_ops`]; a nested transaction gets what its parent leaves
//!   (`budget - parent's count`), so the budget is shared along the nesting path (etcd 3.4.23
//!   answers 127 nested one-put transactions with revision 2 and 128 with
//!   `etcdserver: too many operations in txn request`, see `tests/data_plane.rs`). Checks run
//!   in etcd's order: the count, the compare keys, then each op of `success` and `failure`
//!   (nested transactions recursively, also on the branch that will not run).
//! * Txn `checkIntervals`: within a branch (nested transactions included) a put key may not
//!   repeat another put key or fall into a delete interval ([`MvccError::DuplicateKey`]).

use std::collections::HashSet;

use crate::error::{MvccError, MvccResult};
use crate::kv::KeyValue;
use crate::store::{RangeResult, StoreConfig};
use crate::txn::{Compare, RangeRequest, TxnOp, TxnOpResponse, TxnRequest, TxnResult};
use crate::CompactionStats;

/// The order of a range result (etcd `RangeRequest.SortOrder`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SortOrder {
    /// No sorting (key order), unless the target is not [`SortTarget::Key`]: then ascending.
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// The field a range result is sorted by (etcd `RangeRequest.SortTarget`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value (byte-wise).
    Value,
}

/// etcd `RangeRequest`: read the keys of `[key, range_end)`.
///
/// Range convention: empty `range_end` = the single `key`; `range_end == [0]` = every key
/// `>= key`; otherwise `[key, range_end)`. `0` means unset for `limit`, `revision` and the four
/// revision filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Range {
    /// First key (must not be empty).
    pub key: Vec<u8>,
    /// Range end (see the type docs).
    pub range_end: Vec<u8>,
    /// Maximum number of key-values returned (`<= 0` = unlimited).
    pub limit: i64,
    /// Revision to read at (`<= 0` = current).
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Serializable read. A single store has nothing to linearize with: accepted, no effect.
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Drop key-values with a smaller mod revision.
    pub min_mod_revision: i64,
    /// Drop key-values with a larger mod revision.
    pub max_mod_revision: i64,
    /// Drop key-values with a smaller create revision.
    pub min_create_revision: i64,
    /// Drop key-values with a larger create revision.
    pub max_create_revision: i64,
}

impl Range {
    /// A range over `[key, range_end)` with every option unset.
    pub fn new(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        Range {
            key: key.into(),
            range_end: range_end.into(),
            ..Range::default()
        }
    }

    /// True when a revision filter is set.
    pub(crate) fn has_filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    /// etcd `checkRangeRequest` (and the store's key size limit).
    pub fn validate(&self, config: &StoreConfig) -> MvccResult<()> {
        check_key(&self.key, config)
    }
}

/// The response of a [`Range`]: `kvs`, `more`, `count` and the header revision (the store's
/// current revision, not the one read at).
pub type RangeResponse = RangeResult;

/// etcd `PutRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Put {
    /// The key (must not be empty).
    pub key: Vec<u8>,
    /// The value (must be empty with `ignore_value`).
    pub value: Vec<u8>,
    /// The lease (0 = none; must exist; must be 0 with `ignore_lease`).
    pub lease: i64,
    /// Return the key-value as it was before the put.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

impl Put {
    /// A plain put of `key = value` with `lease`.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Self {
        Put {
            key: key.into(),
            value: value.into(),
            lease,
            ..Put::default()
        }
    }

    /// True when the put needs the key's current state.
    pub fn reads_key(&self) -> bool {
        self.prev_kv || self.ignore_value || self.ignore_lease
    }

    /// etcd `checkPutRequest` (and the store's size limits).
    pub fn validate(&self, config: &StoreConfig) -> MvccResult<()> {
        if self.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if self.ignore_value && !self.value.is_empty() {
            return Err(MvccError::ValueProvided);
        }
        if self.ignore_lease && self.lease != 0 {
            return Err(MvccError::LeaseProvided);
        }
        check_key(&self.key, config)?;
        check_value(&self.value, config)
    }

    /// The value and lease to write given the key's current state (`ignore_*` take them from
    /// it; [`MvccError::KeyNotFound`] when the key does not exist).
    pub(crate) fn resolve<'a>(&'a self, prev: Option<&'a KeyValue>) -> MvccResult<(&'a [u8], i64)> {
        if !(self.ignore_value || self.ignore_lease) {
            return Ok((&self.value, self.lease));
        }
        let prev = prev.ok_or(MvccError::KeyNotFound)?;
        let value = if self.ignore_value {
            &prev.value
        } else {
            &self.value
        };
        let lease = if self.ignore_lease {
            prev.lease
        } else {
            self.lease
        };
        Ok((value, lease))
    }
}

/// The response of a [`Put`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PutResponse {
    /// The revision of the put (of its transaction inside a [`Txn`]).
    pub revision: i64,
    /// The key-value before the put (with `prev_kv`, when the key existed).
    pub prev_kv: Option<KeyValue>,
    /// The key-value as written (not part of etcd's response).
    pub kv: KeyValue,
}

/// etcd `DeleteRangeRequest` (range convention of [`Range`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeleteRange {
    /// First key (must not be empty).
    pub key: Vec<u8>,
    /// Range end.
    pub range_end: Vec<u8>,
    /// Return the deleted key-values as they were.
    pub prev_kv: bool,
}

impl DeleteRange {
    /// A deletion of `[key, range_end)`.
    pub fn new(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        DeleteRange {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: false,
        }
    }

    /// etcd `checkDeleteRequest` (and the store's key size limit).
    pub fn validate(&self, config: &StoreConfig) -> MvccResult<()> {
        check_key(&self.key, config)
    }
}

/// The response of a [`DeleteRange`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeleteRangeResponse {
    /// The revision of the deletion; the current revision when nothing was deleted (outside a
    /// transaction).
    pub revision: i64,
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted key-values as they were (with `prev_kv`), in key order.
    pub prev_kvs: Vec<KeyValue>,
}

/// One operation of a [`Txn`] (etcd `RequestOp`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RequestOp {
    /// A range; sees the earlier writes of the transaction.
    Range(Range),
    /// A put.
    Put(Put),
    /// A range deletion.
    DeleteRange(DeleteRange),
    /// A nested transaction; its compares see the state before the outer transaction.
    Txn(Txn),
}

/// etcd `TxnRequest`: if every compare holds, run `success`, else `failure`, atomically in at
/// most one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Txn {
    /// The conditions (all must hold; none = true).
    pub compare: Vec<Compare>,
    /// Operations run when the conditions hold.
    pub success: Vec<RequestOp>,
    /// Operations run otherwise.
    pub failure: Vec<RequestOp>,
}

impl Txn {
    /// etcd `checkTxnRequest` with the store's `max_txn_ops` as the budget, then
    /// `checkIntervals` on both branches (see the [module docs](self)).
    pub fn validate(&self, config: &StoreConfig) -> MvccResult<()> {
        self.check_ops(config, config.max_txn_ops)?;
        check_intervals(&self.success)?;
        check_intervals(&self.failure)?;
        Ok(())
    }

    /// `checkTxnRequest(r, budget)`: nested transactions get `budget - count`.
    fn check_ops(&self, config: &StoreConfig, budget: usize) -> MvccResult<()> {
        let count = self
            .compare
            .len()
            .max(self.success.len())
            .max(self.failure.len());
        if count > budget {
            return Err(MvccError::TooManyOps {
                max: config.max_txn_ops,
            });
        }
        for c in &self.compare {
            check_key(&c.key, config)?;
        }
        for op in self.success.iter().chain(&self.failure) {
            match op {
                RequestOp::Range(r) => r.validate(config)?,
                RequestOp::Put(p) => p.validate(config)?,
                RequestOp::DeleteRange(d) => d.validate(config)?,
                RequestOp::Txn(t) => t.check_ops(config, budget - count)?,
            }
        }
        Ok(())
    }

    /// True when no op of either branch writes (only ranges at the top level, as etcd
    /// `IsTxnReadonly`).
    pub(crate) fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(|op| matches!(op, RequestOp::Range(_)))
    }
}

/// One result of a transaction operation (etcd `ResponseOp`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ResponseOp {
    /// Result of a range (its `revision` is the transaction's view when it ran).
    Range(RangeResponse),
    /// Result of a put.
    Put(PutResponse),
    /// Result of a delete-range.
    DeleteRange(DeleteRangeResponse),
    /// Result of a nested transaction.
    Txn(TxnResponse),
}

/// The response of a [`Txn`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TxnResponse {
    /// The store revision after the transaction (its own revision when it changed something).
    /// Nested responses, and the puts and deletes in them, carry the same value.
    pub revision: i64,
    /// True when the compares held (the success branch ran).
    pub succeeded: bool,
    /// One response per executed operation, in order.
    pub responses: Vec<ResponseOp>,
}

/// etcd `CompactionRequest`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Compaction {
    /// The compaction revision.
    pub revision: i64,
    /// etcd: wait for the physical deletion. [`kv_compact`](crate::MvccStore::kv_compact) always
    /// returns after it; a server that answers before (in the background) reads this flag.
    pub physical: bool,
}

/// The response of a [`Compaction`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CompactionResponse {
    /// The current revision (a compaction does not change it).
    pub revision: i64,
    /// What the compaction did (not part of etcd's response).
    pub stats: CompactionStats,
}

pub(crate) fn check_key(key: &[u8], config: &StoreConfig) -> MvccResult<()> {
    if key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if key.len() > config.max_key_size {
        return Err(MvccError::KeyTooLarge {
            size: key.len(),
            max: config.max_key_size,
        });
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8], config: &StoreConfig) -> MvccResult<()> {
    if value.len() > config.max_value_size {
        return Err(MvccError::ValueTooLarge {
            size: value.len(),
            max: config.max_value_size,
        });
    }
    Ok(())
}

/// A delete interval of `check_intervals`: `(key, range_end)` with raw etcd semantics.
type Interval = (Vec<u8>, Vec<u8>);

fn interval_contains(iv: &Interval, k: &[u8]) -> bool {
    if iv.1.is_empty() {
        iv.0.as_slice() == k
    } else {
        iv.0.as_slice() <= k && k < iv.1.as_slice()
    }
}

/// etcd `checkIntervals`: within a branch (recursing into nested transactions), a put key may
/// not repeat another put key or fall into a delete interval. Puts in the two branches of one
/// nested transaction may repeat each other. The interval is raw: a from-key end `[0]` makes
/// `[key, "\0")`, which contains nothing.
pub(crate) fn check_intervals(ops: &[RequestOp]) -> MvccResult<(HashSet<Vec<u8>>, Vec<Interval>)> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    let hits = |dels: &[Interval], k: &[u8]| dels.iter().any(|iv| interval_contains(iv, k));
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(MvccError::DuplicateKey);
            }
            if hits(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

// The compact request forms of `txn.rs` map onto these: ranges with their five fields, puts
// without flags, deletes returning what they deleted.

impl From<&RangeRequest> for Range {
    fn from(r: &RangeRequest) -> Self {
        Range {
            key: r.key.clone(),
            range_end: r.range_end.clone(),
            revision: r.revision,
            limit: r.limit,
            count_only: r.count_only,
            ..Range::default()
        }
    }
}

impl From<&TxnOp> for RequestOp {
    fn from(op: &TxnOp) -> Self {
        match op {
            TxnOp::Range(r) => RequestOp::Range(r.into()),
            TxnOp::Put { key, value, lease } => {
                RequestOp::Put(Put::new(key.clone(), value.clone(), *lease))
            }
            TxnOp::DeleteRange { key, range_end } => RequestOp::DeleteRange(DeleteRange {
                key: key.clone(),
                range_end: range_end.clone(),
                prev_kv: true,
            }),
            TxnOp::Txn(t) => RequestOp::Txn(t.into()),
        }
    }
}

impl From<&TxnRequest> for Txn {
    fn from(t: &TxnRequest) -> Self {
        Txn::from_parts(&t.compare, &t.success, &t.failure)
    }
}

impl Txn {
    /// The transaction of the compact form `(compare, success, failure)`.
    pub(crate) fn from_parts(compare: &[Compare], success: &[TxnOp], failure: &[TxnOp]) -> Self {
        Txn {
            compare: compare.to_vec(),
            success: success.iter().map(RequestOp::from).collect(),
            failure: failure.iter().map(RequestOp::from).collect(),
        }
    }
}

impl From<ResponseOp> for TxnOpResponse {
    fn from(r: ResponseOp) -> Self {
        match r {
            ResponseOp::Range(r) => TxnOpResponse::Range(r),
            ResponseOp::Put(p) => TxnOpResponse::Put(p.kv),
            ResponseOp::DeleteRange(d) => TxnOpResponse::DeleteRange(d.prev_kvs),
            ResponseOp::Txn(t) => TxnOpResponse::Txn(t.into()),
        }
    }
}

impl From<TxnResponse> for TxnResult {
    fn from(t: TxnResponse) -> Self {
        TxnResult {
            succeeded: t.succeeded,
            revision: t.revision,
            responses: t.responses.into_iter().map(TxnOpResponse::from).collect(),
        }
    }
}
