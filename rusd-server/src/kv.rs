//! The `KV` service: Range, Put, DeleteRange, Txn, Compact — a translation between protobuf and
//! the data plane of `mvcc_core::request`, which validates and executes every request as etcd
//! does. The server adds what is not storage: request size, quota, headers, metrics.

use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{
    Compaction, Compare, CompareOp, CompareTarget, DeleteRange, KeyValue, Put, Range,
    RangeResponse as MRangeResponse, RequestOp as MOp, ResponseOp as MResponseOp,
    SortOrder as MOrder, SortTarget as MTarget, Txn, TxnResponse as MTxnResponse,
};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::error::{mvcc_status, rpc};
use crate::pb::etcdserverpb::{
    compare, kv_server::Kv, range_request::SortOrder, range_request::SortTarget, request_op,
    response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest,
    TxnResponse,
};
use crate::state::{to_pb_kv, State};

/// Approximate bytes a put adds to the database beyond its key and value.
const PUT_OVERHEAD: usize = 64;

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

fn to_range(r: &RangeRequest) -> Result<Range, Status> {
    // etcd `checkRangeRequest` checks the key before the sort options.
    let invalid_sort = || {
        if r.key.is_empty() {
            rpc::empty_key()
        } else {
            rpc::invalid_sort_option()
        }
    };
    let sort_order = match SortOrder::try_from(r.sort_order) {
        Ok(SortOrder::None) => MOrder::None,
        Ok(SortOrder::Ascend) => MOrder::Ascend,
        Ok(SortOrder::Descend) => MOrder::Descend,
        Err(_) => return Err(invalid_sort()),
    };
    let sort_target = match SortTarget::try_from(r.sort_target) {
        Ok(SortTarget::Key) => MTarget::Key,
        Ok(SortTarget::Version) => MTarget::Version,
        Ok(SortTarget::Create) => MTarget::Create,
        Ok(SortTarget::Mod) => MTarget::Mod,
        Ok(SortTarget::Value) => MTarget::Value,
        Err(_) => return Err(invalid_sort()),
    };
    Ok(Range {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

fn to_put(p: PutRequest) -> Put {
    Put {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

fn to_delete(d: DeleteRangeRequest) -> DeleteRange {
    DeleteRange {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
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

fn to_ops(ops: &[RequestOp]) -> Result<Vec<MOp>, Status> {
    ops.iter()
        .map(|op| {
            Ok(match &op.request {
                Some(request_op::Request::RequestRange(r)) => MOp::Range(to_range(r)?),
                Some(request_op::Request::RequestPut(p)) => MOp::Put(to_put(p.clone())),
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    MOp::DeleteRange(to_delete(d.clone()))
                }
                Some(request_op::Request::RequestTxn(n)) => MOp::Txn(to_txn(n)?),
                // etcd `checkRequestOp`: an empty op.
                None => return Err(rpc::key_not_found()),
            })
        })
        .collect()
}

fn to_txn(t: &TxnRequest) -> Result<Txn, Status> {
    Ok(Txn {
        compare: t.compare.iter().map(to_compare).collect::<Result<_, _>>()?,
        success: to_ops(&t.success)?,
        failure: to_ops(&t.failure)?,
    })
}

fn kvs(kvs: Vec<KeyValue>) -> Vec<crate::pb::mvccpb::KeyValue> {
    kvs.into_iter().map(to_pb_kv).collect()
}

fn range_response(state: &State, r: MRangeResponse) -> RangeResponse {
    RangeResponse {
        header: state.header(r.revision),
        kvs: kvs(r.kvs),
        more: r.more,
        count: r.count,
    }
}

fn txn_response(state: &State, t: MTxnResponse) -> TxnResponse {
    let responses = t
        .responses
        .into_iter()
        .map(|r| ResponseOp {
            response: Some(match r {
                MResponseOp::Range(r) => {
                    response_op::Response::ResponseRange(range_response(state, r))
                }
                MResponseOp::Put(p) => response_op::Response::ResponsePut(PutResponse {
                    header: state.header(p.revision),
                    prev_kv: p.prev_kv.map(to_pb_kv),
                }),
                MResponseOp::DeleteRange(d) => {
                    response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                        header: state.header(d.revision),
                        deleted: d.deleted,
                        prev_kvs: kvs(d.prev_kvs),
                    })
                }
                MResponseOp::Txn(n) => response_op::Response::ResponseTxn(txn_response(state, n)),
            }),
        })
        .collect();
    TxnResponse {
        header: state.header(t.revision),
        succeeded: t.succeeded,
        responses,
    }
}

/// Serves a Range request.
pub(crate) fn do_range(state: &State, r: &RangeRequest) -> Result<RangeResponse, Status> {
    let req = to_range(r)?;
    let res = state.store.kv_range(&req).map_err(mvcc_status)?;
    Ok(range_response(state, res))
}

/// Serves a Put request.
pub(crate) fn do_put(state: &State, p: PutRequest) -> Result<PutResponse, Status> {
    let size = p.encoded_len();
    let req = to_put(p);
    req.validate(state.store.config()).map_err(mvcc_status)?;
    state.check_size(size)?;
    state.check_quota(req.key.len() + req.value.len() + PUT_OVERHEAD)?;
    let res = state.store.kv_put(&req).map_err(mvcc_status)?;
    Ok(PutResponse {
        header: state.header(res.revision),
        prev_kv: res.prev_kv.map(to_pb_kv),
    })
}

/// Serves a DeleteRange request.
pub(crate) fn do_delete(
    state: &State,
    d: DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Status> {
    let size = d.encoded_len();
    let req = to_delete(d);
    req.validate(state.store.config()).map_err(mvcc_status)?;
    state.check_size(size)?;
    let res = state.store.kv_delete_range(&req).map_err(mvcc_status)?;
    Ok(DeleteRangeResponse {
        header: state.header(res.revision),
        deleted: res.deleted,
        prev_kvs: kvs(res.prev_kvs),
    })
}

/// Serves a Txn request.
pub(crate) fn do_txn(state: &State, t: TxnRequest) -> Result<TxnResponse, Status> {
    let req = to_txn(&t)?;
    req.validate(state.store.config()).map_err(mvcc_status)?;
    state.check_size(t.encoded_len())?;
    if txn_has_puts(&t) {
        state.check_quota(t.encoded_len() + PUT_OVERHEAD)?;
    }
    let res = state.store.kv_txn(&req).map_err(mvcc_status)?;
    Ok(txn_response(state, res))
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
    let req = Compaction {
        revision: rev,
        physical: c.physical,
    };
    let job = tokio::task::spawn_blocking(move || store.kv_compact(&req));
    let joined = |r: Result<
        mvcc_core::MvccResult<mvcc_core::CompactionResponse>,
        tokio::task::JoinError,
    >| {
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
        self.state
            .authorize_range(&request)
            .map_err(self.state.refused("etcdserverpb.KV", "Range"))?;
        // Reads are served on the async worker: the index lookup is in memory and the row
        // reads hit the engine's cache; a thread hop per read costs more than it saves.
        let res = do_range(&self.state, request.get_ref());
        self.state.metrics.observe("etcdserverpb.KV", "Range", &res);
        res.map(Response::new)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.state
            .authorize_put(&request)
            .map_err(self.state.refused("etcdserverpb.KV", "Put"))?;
        let st = self.state.clone();
        let p = request.into_inner();
        let res = crate::state::write(&self.state, move || do_put(&st, p)).await;
        self.state.metrics.observe("etcdserverpb.KV", "Put", &res);
        res.map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.state
            .authorize_delete_range(&request)
            .map_err(self.state.refused("etcdserverpb.KV", "DeleteRange"))?;
        let st = self.state.clone();
        let d = request.into_inner();
        let res = crate::state::write(&self.state, move || do_delete(&st, d)).await;
        self.state
            .metrics
            .observe("etcdserverpb.KV", "DeleteRange", &res);
        res.map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.state
            .authorize_txn(&request)
            .map_err(self.state.refused("etcdserverpb.KV", "Txn"))?;
        let st = self.state.clone();
        let t = request.into_inner();
        let res = crate::state::write(&self.state, move || do_txn(&st, t)).await;
        self.state.metrics.observe("etcdserverpb.KV", "Txn", &res);
        res.map(Response::new)
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.state
            .authorize_compaction(&request)
            .map_err(self.state.refused("etcdserverpb.KV", "Compact"))?;
        let res = do_compact(self.state.clone(), request.into_inner()).await;
        self.state
            .metrics
            .observe("etcdserverpb.KV", "Compact", &res);
        res.map(Response::new)
    }
}
