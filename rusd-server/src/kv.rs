//! The `KV` service: Range, Put, DeleteRange, Txn, Compact.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{
    Compare, CompareOp, CompareTarget, KeyValue, RangeRequest as MRange, TxnOp, TxnOpResponse,
    TxnRequest as MTxn, TxnResult,
};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::error::{mvcc_status, rpc, MISSING_KEY_LEASE};
use crate::pb::etcdserverpb::{
    compare, kv_server::Kv, range_request::SortOrder, range_request::SortTarget, request_op,
    response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest,
    TxnResponse,
};
use crate::state::{maybe_blocking, to_pb_kv, State};

/// Approximate bytes a put adds to the database beyond its key and value.
const PUT_OVERHEAD: usize = 64;
/// Retries of a transaction whose pre-read keys changed under it.
const MAX_GUARD_RETRIES: usize = 1000;

/// The `KV` service.
#[derive(Debug, Clone)]
pub struct KvService {
    state: Arc<State>,
}

impl KvService {
    /// A service over `state`.
    pub fn new(state: Arc<State>) -> Self {
        KvService { state }
    }
}

fn check_range(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(rpc::empty_key());
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(rpc::invalid_sort_option());
    }
    Ok(())
}

fn check_put(p: &PutRequest) -> Result<(), Status> {
    if p.key.is_empty() {
        return Err(rpc::empty_key());
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(rpc::value_provided());
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(rpc::lease_provided());
    }
    Ok(())
}

fn check_delete(d: &DeleteRangeRequest) -> Result<(), Status> {
    if d.key.is_empty() {
        return Err(rpc::empty_key());
    }
    Ok(())
}

/// etcd `checkTxnRequest`: op counts (nested budgets shrink), empty keys, op validity.
fn check_txn(t: &TxnRequest, max_ops: i64) -> Result<(), Status> {
    let opc = t.compare.len().max(t.success.len()).max(t.failure.len()) as i64;
    if opc > max_ops {
        return Err(rpc::too_many_ops());
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(rpc::empty_key());
    }
    for op in t.success.iter().chain(t.failure.iter()) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r)?,
            Some(request_op::Request::RequestPut(p)) => check_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => check_delete(d)?,
            Some(request_op::Request::RequestTxn(n)) => check_txn(n, max_ops - opc)?,
            None => return Err(rpc::key_not_found()),
        }
    }
    Ok(())
}

/// True when any branch (nested included) writes.
fn txn_has_puts(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(n)) => txn_has_puts(n),
            _ => false,
        })
}

/// Keys of puts that need the key's current state (prev_kv, ignore_value, ignore_lease).
fn collect_read_keys(t: &TxnRequest, out: &mut BTreeSet<Vec<u8>>) {
    for op in t.success.iter().chain(t.failure.iter()) {
        match &op.request {
            Some(request_op::Request::RequestPut(p))
                if p.prev_kv || p.ignore_value || p.ignore_lease =>
            {
                out.insert(p.key.clone());
            }
            Some(request_op::Request::RequestTxn(n)) => collect_read_keys(n, out),
            _ => {}
        }
    }
}

/// etcd `executeRange`: how many key-values to fetch from the store.
fn fetch_limit(r: &RangeRequest) -> i64 {
    let needs_all = r.sort_order != SortOrder::None as i32
        || r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    if needs_all {
        0
    } else if r.limit > 0 {
        r.limit.saturating_add(1)
    } else {
        0
    }
}

/// etcd `executeRange` after the store read: filters, sort, limit, keys_only.
fn finish_range(
    state: &State,
    r: &RangeRequest,
    mut kvs: Vec<KeyValue>,
    count: i64,
    revision: i64,
) -> RangeResponse {
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    if order != SortOrder::None {
        let key = |a: &KeyValue, b: &KeyValue| match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| key(b, a));
        } else {
            kvs.sort_by(key);
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() as i64 > r.limit {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    let kvs = kvs
        .into_iter()
        .map(|mut kv| {
            if r.keys_only {
                kv.value.clear();
            }
            to_pb_kv(kv)
        })
        .collect();
    RangeResponse {
        header: state.header(revision),
        kvs,
        more,
        count,
    }
}

fn to_compare(c: &crate::pb::etcdserverpb::Compare) -> Result<Compare, Status> {
    use compare::{CompareResult, CompareTarget as T, TargetUnion as U};
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => CompareOp::Equal,
        Ok(CompareResult::Greater) => CompareOp::Greater,
        Ok(CompareResult::Less) => CompareOp::Less,
        Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: invalid compare result {}",
                c.result
            )))
        }
    };
    let u = c.target_union.as_ref();
    let target = match T::try_from(c.target) {
        Ok(T::Version) => CompareTarget::Version(match u {
            Some(U::Version(v)) => *v,
            _ => 0,
        }),
        Ok(T::Create) => CompareTarget::Create(match u {
            Some(U::CreateRevision(v)) => *v,
            _ => 0,
        }),
        Ok(T::Mod) => CompareTarget::Mod(match u {
            Some(U::ModRevision(v)) => *v,
            _ => 0,
        }),
        Ok(T::Value) => CompareTarget::Value(match u {
            Some(U::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
        Ok(T::Lease) => CompareTarget::Lease(match u {
            Some(U::Lease(v)) => *v,
            _ => 0,
        }),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: invalid compare target {}",
                c.target
            )))
        }
    };
    Ok(Compare {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        op,
        target,
    })
}

/// The current state of the keys that puts read (`None` = absent).
type Resolved = BTreeMap<Vec<u8>, Option<KeyValue>>;

fn to_mvcc_ops(ops: &[RequestOp], resolved: &Resolved) -> Result<Vec<TxnOp>, Status> {
    ops.iter()
        .map(|op| {
            Ok(match &op.request {
                Some(request_op::Request::RequestRange(r)) => TxnOp::Range(MRange {
                    key: r.key.clone(),
                    range_end: r.range_end.clone(),
                    revision: r.revision,
                    limit: fetch_limit(r),
                    count_only: r.count_only,
                }),
                Some(request_op::Request::RequestPut(p)) => {
                    let existing = resolved.get(&p.key).and_then(Option::as_ref);
                    let (mut value, mut lease) = (p.value.clone(), p.lease);
                    if p.ignore_value || p.ignore_lease {
                        match existing {
                            Some(kv) => {
                                if p.ignore_value {
                                    value = kv.value.clone();
                                }
                                if p.ignore_lease {
                                    lease = kv.lease;
                                }
                            }
                            // Fails the txn with `key not found` if this put is executed.
                            None => lease = MISSING_KEY_LEASE,
                        }
                    }
                    TxnOp::put(p.key.clone(), value, lease)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    TxnOp::delete(d.key.clone(), d.range_end.clone())
                }
                Some(request_op::Request::RequestTxn(n)) => TxnOp::Txn(to_mvcc_txn(n, resolved)?),
                None => return Err(rpc::key_not_found()),
            })
        })
        .collect()
}

fn to_mvcc_txn(t: &TxnRequest, resolved: &Resolved) -> Result<MTxn, Status> {
    Ok(MTxn {
        compare: t.compare.iter().map(to_compare).collect::<Result<_, _>>()?,
        success: to_mvcc_ops(&t.success, resolved)?,
        failure: to_mvcc_ops(&t.failure, resolved)?,
    })
}

fn build_txn_response(
    state: &State,
    req: &TxnRequest,
    res: TxnResult,
    resolved: &Resolved,
) -> Result<TxnResponse, Status> {
    let ops = if res.succeeded {
        &req.success
    } else {
        &req.failure
    };
    if ops.len() != res.responses.len() {
        return Err(Status::internal(
            "rusd: txn response does not match request",
        ));
    }
    let revision = res.revision;
    let mut responses = Vec::with_capacity(ops.len());
    for (op, r) in ops.iter().zip(res.responses) {
        let response = match (&op.request, r) {
            (Some(request_op::Request::RequestRange(rq)), TxnOpResponse::Range(rr)) => {
                response_op::Response::ResponseRange(finish_range(
                    state,
                    rq,
                    rr.kvs,
                    rr.count,
                    rr.revision,
                ))
            }
            (Some(request_op::Request::RequestPut(p)), TxnOpResponse::Put(_)) => {
                let prev_kv = if p.prev_kv {
                    resolved.get(&p.key).cloned().flatten().map(to_pb_kv)
                } else {
                    None
                };
                response_op::Response::ResponsePut(PutResponse {
                    header: state.header(revision),
                    prev_kv,
                })
            }
            (Some(request_op::Request::RequestDeleteRange(d)), TxnOpResponse::DeleteRange(kvs)) => {
                response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                    header: state.header(revision),
                    deleted: kvs.len() as i64,
                    prev_kvs: if d.prev_kv {
                        kvs.into_iter().map(to_pb_kv).collect()
                    } else {
                        Vec::new()
                    },
                })
            }
            (Some(request_op::Request::RequestTxn(n)), TxnOpResponse::Txn(inner)) => {
                response_op::Response::ResponseTxn(build_txn_response(state, n, inner, resolved)?)
            }
            _ => {
                return Err(Status::internal(
                    "rusd: txn response does not match request",
                ))
            }
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: state.header(revision),
        succeeded: res.succeeded,
        responses,
    })
}

/// Runs a validated etcd transaction. Puts that need the current state of their key
/// (prev_kv, ignore_value, ignore_lease) read it first; the transaction is then wrapped in an
/// outer transaction that checks those keys are unchanged (and retried otherwise), so the
/// result is atomic.
pub(crate) fn run_txn(state: &State, req: &TxnRequest) -> Result<TxnResponse, Status> {
    let store = &state.store;
    let mut keys = BTreeSet::new();
    collect_read_keys(req, &mut keys);
    if keys.is_empty() {
        let resolved = Resolved::new();
        let m = to_mvcc_txn(req, &resolved)?;
        let res = store.txn_request(&m).map_err(mvcc_status)?;
        return build_txn_response(state, req, res, &resolved);
    }
    for _ in 0..MAX_GUARD_RETRIES {
        let mut resolved = Resolved::new();
        let mut guards = Vec::with_capacity(keys.len());
        for k in &keys {
            let r = store.range(k, &[], 0, 0, false).map_err(mvcc_status)?;
            let kv = r.kvs.into_iter().next();
            guards.push(Compare::modified(
                k.clone(),
                CompareOp::Equal,
                kv.as_ref().map_or(0, |kv| kv.mod_revision),
            ));
            resolved.insert(k.clone(), kv);
        }
        let inner = to_mvcc_txn(req, &resolved)?;
        let outer = MTxn {
            compare: guards,
            success: vec![TxnOp::Txn(inner)],
            failure: Vec::new(),
        };
        let res = store.txn_request(&outer).map_err(mvcc_status)?;
        if !res.succeeded {
            continue;
        }
        let revision = res.revision;
        let Some(TxnOpResponse::Txn(mut inner_res)) = res.responses.into_iter().next() else {
            return Err(Status::internal(
                "rusd: txn response does not match request",
            ));
        };
        inner_res.revision = revision;
        return build_txn_response(state, req, inner_res, &resolved);
    }
    Err(Status::aborted(
        "rusd: transaction kept conflicting with concurrent writes",
    ))
}

/// Serves a Range request.
pub(crate) fn do_range(state: &State, r: &RangeRequest) -> Result<RangeResponse, Status> {
    check_range(r)?;
    let res = state
        .store
        .range(
            &r.key,
            &r.range_end,
            r.revision,
            fetch_limit(r),
            r.count_only,
        )
        .map_err(mvcc_status)?;
    Ok(finish_range(state, r, res.kvs, res.count, res.revision))
}

/// Serves a Put request.
pub(crate) fn do_put(state: &State, p: PutRequest) -> Result<PutResponse, Status> {
    check_put(&p)?;
    state.check_size(p.encoded_len())?;
    state.check_quota(p.key.len() + p.value.len() + PUT_OVERHEAD)?;
    if !(p.prev_kv || p.ignore_value || p.ignore_lease) {
        let (rev, _) = state
            .store
            .put(&p.key, &p.value, p.lease)
            .map_err(mvcc_status)?;
        return Ok(PutResponse {
            header: state.header(rev),
            prev_kv: None,
        });
    }
    let t = TxnRequest {
        compare: Vec::new(),
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(p)),
        }],
        failure: Vec::new(),
    };
    let res = run_txn(state, &t)?;
    let prev_kv = match res.responses.into_iter().next().and_then(|r| r.response) {
        Some(response_op::Response::ResponsePut(p)) => p.prev_kv,
        _ => None,
    };
    Ok(PutResponse {
        header: res.header,
        prev_kv,
    })
}

/// Serves a DeleteRange request.
pub(crate) fn do_delete(
    state: &State,
    d: DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Status> {
    check_delete(&d)?;
    state.check_size(d.encoded_len())?;
    let (rev, deleted) = state
        .store
        .delete_range(&d.key, &d.range_end)
        .map_err(mvcc_status)?;
    Ok(DeleteRangeResponse {
        header: state.header(rev),
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv {
            deleted.into_iter().map(to_pb_kv).collect()
        } else {
            Vec::new()
        },
    })
}

/// Serves a Txn request.
pub(crate) fn do_txn(state: &State, t: TxnRequest) -> Result<TxnResponse, Status> {
    check_txn(&t, state.max_txn_ops as i64)?;
    state.check_size(t.encoded_len())?;
    if txn_has_puts(&t) {
        state.check_quota(t.encoded_len() + PUT_OVERHEAD)?;
    }
    run_txn(state, &t)
}

/// Serves a Compact request. `physical` waits for the rows to be deleted; otherwise the
/// request returns once the compaction revision moved (reads below it already fail).
pub(crate) async fn do_compact(
    state: Arc<State>,
    c: CompactionRequest,
) -> Result<CompactionResponse, Status> {
    let store = state.store.clone();
    let rev = c.revision;
    if !c.physical {
        if rev <= store.compact_revision() {
            return Err(rpc::compacted());
        }
        if rev > store.current_revision() {
            return Err(rpc::future_rev());
        }
    }
    let job = tokio::task::spawn_blocking(move || store.compact(rev));
    let joined =
        |r: Result<mvcc_core::MvccResult<mvcc_core::CompactionStats>, tokio::task::JoinError>| {
            r.map_err(|e| Status::internal(format!("rusd: compaction task failed: {e}")))?
                .map(|_| ())
                .map_err(mvcc_status)
        };
    if c.physical {
        joined(job.await)?;
    } else {
        // Return once the compaction revision moved (reads below it fail from now on); the
        // physical deletion goes on in the background.
        while state.store.compact_revision() < rev {
            if job.is_finished() {
                joined(job.await)?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(CompactionResponse {
        header: state.header_now(),
    })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        // Reads are served on the async worker: the index lookup is in memory and the row
        // reads hit the engine's cache; a thread hop per read costs more than it saves.
        let res = do_range(&self.state, request.get_ref());
        self.state.metrics.observe("etcdserverpb.KV", "Range", &res);
        res.map(Response::new)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let st = self.state.clone();
        let p = request.into_inner();
        let res = maybe_blocking(self.state.inline_writes, move || do_put(&st, p)).await;
        self.state.metrics.observe("etcdserverpb.KV", "Put", &res);
        res.map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let st = self.state.clone();
        let d = request.into_inner();
        let res = maybe_blocking(self.state.inline_writes, move || do_delete(&st, d)).await;
        self.state
            .metrics
            .observe("etcdserverpb.KV", "DeleteRange", &res);
        res.map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let st = self.state.clone();
        let t = request.into_inner();
        let res = maybe_blocking(self.state.inline_writes, move || do_txn(&st, t)).await;
        self.state.metrics.observe("etcdserverpb.KV", "Txn", &res);
        res.map(Response::new)
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let res = do_compact(self.state.clone(), request.into_inner()).await;
        self.state
            .metrics
            .observe("etcdserverpb.KV", "Compact", &res);
        res.map(Response::new)
    }
}
