//! The `KV` service: Range, Put, DeleteRange, Txn, Compact — a translation between protobuf and
//! the data plane of `mvcc_core::request`, which validates and executes every request as etcd
//! does. The server adds what is not storage: request size, quota, headers, metrics.
//!
//! Writes (put, delete-range, a transaction that writes, compaction) are proposed through raft
//! (`State::propose`) and answered with the result of their application; reads are served by
//! the local store, after a raft ReadIndex round unless they are serializable.

use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{
    Compaction, CompactionMode, Compare, CompareOp, CompareTarget, DeleteRange, KeyValue, Put,
    Range, RangeResponse as MRangeResponse, RequestOp as MOp, ResponseOp as MResponseOp,
    SortOrder as MOrder, SortTarget as MTarget, Txn, TxnResponse as MTxnResponse,
};
use prost::Message;
use rusd_raft::{Command, CommandResponse};
use tonic::{Request, Response, Status};

use crate::error::{mvcc_status, rpc};
use crate::pb::etcdserverpb::{
    compare, kv_server::Kv, range_request::SortOrder, range_request::SortTarget, request_op,
    response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest,
    TxnResponse,
};
use crate::state::{blocking, to_pb_kv, write_replicated, State};

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

/// A response of the wrong kind for a command (a bug, never expected).
fn unexpected(what: &str, resp: &CommandResponse) -> Status {
    Status::internal(format!("rusd: unexpected response to {what}: {resp:?}"))
}

/// True when a transaction (nested ones included) only reads.
fn txn_is_read_only(t: &Txn) -> bool {
    t.success.iter().chain(t.failure.iter()).all(|op| match op {
        MOp::Range(_) => true,
        MOp::Txn(n) => txn_is_read_only(n),
        _ => false,
    })
}

/// True when every range of a read-only transaction asked for a serializable read.
fn txn_is_serializable(t: &Txn) -> bool {
    t.success.iter().chain(t.failure.iter()).all(|op| match op {
        MOp::Range(r) => r.serializable,
        MOp::Txn(n) => txn_is_serializable(n),
        _ => false,
    })
}

/// Reads a validated Range request from the local store (the caller waited for the
/// ReadIndex first when it is linearizable).
///
/// Where it runs: a single-key read (one index lookup, one row read) and a `count_only` range
/// (the in-memory index only) are served on the async worker, since a thread hop per read
/// costs more than the read; every other range (its row count is up to the client) runs on
/// the blocking pool, so a large range never holds an async worker.
pub(crate) async fn do_range(state: &Arc<State>, req: Range) -> Result<RangeResponse, Status> {
    let res = if req.range_end.is_empty() || req.count_only {
        state.store.kv_range(&req).map_err(mvcc_status)?
    } else {
        let st = state.clone();
        blocking(move || st.store.kv_range(&req).map_err(mvcc_status)).await?
    };
    Ok(range_response(state, res))
}

/// Serves a Put request (through raft).
pub(crate) async fn do_put(state: &State, p: PutRequest) -> Result<PutResponse, Status> {
    let size = p.encoded_len();
    let req = to_put(p);
    req.validate(state.store.config()).map_err(mvcc_status)?;
    state.check_size(size)?;
    state.check_quota(req.key.len() + req.value.len() + PUT_OVERHEAD)?;
    match state.propose(Command::Put(req)).await? {
        CommandResponse::Put(res) => Ok(PutResponse {
            header: state.header(res.revision),
            prev_kv: res.prev_kv.map(to_pb_kv),
        }),
        other => Err(unexpected("put", &other)),
    }
}

/// Serves a DeleteRange request (through raft).
pub(crate) async fn do_delete(
    state: &State,
    d: DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Status> {
    let size = d.encoded_len();
    let req = to_delete(d);
    req.validate(state.store.config()).map_err(mvcc_status)?;
    state.check_size(size)?;
    match state.propose(Command::DeleteRange(req)).await? {
        CommandResponse::DeleteRange(res) => Ok(DeleteRangeResponse {
            header: state.header(res.revision),
            deleted: res.deleted,
            prev_kvs: kvs(res.prev_kvs),
        }),
        other => Err(unexpected("delete range", &other)),
    }
}

/// Serves a Txn request: a read-only one as a read (linearizable unless every range is
/// serializable) on the blocking pool, any other through raft.
pub(crate) async fn do_txn(state: &Arc<State>, t: TxnRequest) -> Result<TxnResponse, Status> {
    let req = to_txn(&t)?;
    req.validate(state.store.config()).map_err(mvcc_status)?;
    state.check_size(t.encoded_len())?;
    if txn_is_read_only(&req) {
        if !txn_is_serializable(&req) {
            state.read_barrier().await?;
        }
        let st = state.clone();
        let res = blocking(move || st.store.kv_txn(&req).map_err(mvcc_status)).await?;
        return Ok(txn_response(state, res));
    }
    if txn_has_puts(&t) {
        state.check_quota(t.encoded_len() + PUT_OVERHEAD)?;
    }
    match state.propose(Command::Txn(req)).await? {
        CommandResponse::Txn(res) => Ok(txn_response(state, res)),
        other => Err(unexpected("txn", &other)),
    }
}

/// Serves a Compact request (through raft: every member compacts at the same point of the
/// log). The members apply it at once and delete its rows in the background
/// (`MvccStore::kv_compact_in_background`), as etcd does; this request returns once the rows
/// are deleted on the member that serves it, whatever `physical` says (a compaction that
/// returns is physical), so a client never waits for a compaction it did not ask for while
/// every other write goes on.
pub(crate) async fn do_compact(
    state: Arc<State>,
    c: CompactionRequest,
) -> Result<CompactionResponse, Status> {
    let req = Compaction {
        revision: c.revision,
        physical: c.physical,
    };
    match state.propose(Command::Compaction(req)).await? {
        CommandResponse::Compaction(_) => {
            wait_compacted(&state, c.revision).await?;
            Ok(CompactionResponse {
                header: state.header_now(),
            })
        }
        other => Err(unexpected("compaction", &other)),
    }
}

/// Longest wait for the rows of a compaction to be deleted on this member.
const PHYSICAL_COMPACTION_WAIT: Duration = Duration::from_secs(300);

/// Waits until this member deleted the rows of the compaction at `revision`, in short
/// blocking steps (a client that goes away cancels the wait). etcd's "request timed out"
/// after [`PHYSICAL_COMPACTION_WAIT`] (the compaction stays in force).
async fn wait_compacted(state: &Arc<State>, revision: i64) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + PHYSICAL_COMPACTION_WAIT;
    loop {
        let store = state.store.clone();
        let done = blocking(move || {
            store
                .wait_compacted(revision, Duration::from_millis(500))
                .map_err(mvcc_status)
        })
        .await?;
        if done {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(crate::state::raft_errors::timeout());
        }
    }
}

/// Automatic compaction through raft: the leader alone decides (as mvcc-core's `Compactor`
/// does, by revision count or by period) and proposes the compaction, so every member
/// compacts at the same point of the log. Runs until `shutdown` turns true.
pub async fn auto_compact_loop(
    state: Arc<State>,
    mode: CompactionMode,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut samples: std::collections::VecDeque<(std::time::Instant, i64)> =
        std::collections::VecDeque::new();
    let mut last_target = 0i64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let leader = state.raft.as_ref().is_none_or(|r| r.is_leader());
        let current = state.store.current_revision();
        let target = match mode {
            CompactionMode::Revision(n) => current - n,
            CompactionMode::Periodic(period) => {
                let now = std::time::Instant::now();
                samples.push_back((now, current));
                let mut target = 0;
                while let Some(&(t, rev)) = samples.front() {
                    if now.duration_since(t) >= period {
                        target = rev;
                        samples.pop_front();
                    } else {
                        break;
                    }
                }
                if target > 0 {
                    samples.push_front((now - period, target));
                }
                target
            }
        };
        if !leader
            || target <= 0
            || target <= last_target
            || target <= state.store.compact_revision()
        {
            continue;
        }
        last_target = target;
        let req = Compaction {
            revision: target,
            physical: false,
        };
        match state.propose(Command::Compaction(req)).await {
            Ok(_) => tracing::info!(revision = target, "auto compaction applied"),
            Err(e) => {
                tracing::warn!(revision = target, error = %e.message(), "auto compaction failed")
            }
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        // etcd's order: the request is validated, then a linearizable read waits for the
        // ReadIndex, then permissions are checked (so a revoke committed before the read is
        // seen by the check), then the read runs. Single-key reads on the async worker,
        // larger ranges on the blocking pool (see `do_range`).
        let req = match to_range(request.get_ref()) {
            Ok(req) => req,
            Err(e) => {
                let res = Err(e);
                self.state.metrics.observe("etcdserverpb.KV", "Range", &res);
                return res;
            }
        };
        if !req.serializable {
            if let Err(e) = self.state.read_barrier().await {
                let res = Err(e);
                self.state.metrics.observe("etcdserverpb.KV", "Range", &res);
                return res;
            }
        }
        self.state
            .authorize_range(&request)
            .map_err(self.state.refused("etcdserverpb.KV", "Range"))?;
        let res = do_range(&self.state, req).await;
        self.state.metrics.observe("etcdserverpb.KV", "Range", &res);
        res.map(Response::new)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.state
            .authorize_put(&request)
            .map_err(self.state.refused("etcdserverpb.KV", "Put"))?;
        let p = request.into_inner();
        let res = write_replicated(&self.state, do_put(&self.state, p)).await;
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
        let d = request.into_inner();
        let res = write_replicated(&self.state, do_delete(&self.state, d)).await;
        self.state
            .metrics
            .observe("etcdserverpb.KV", "DeleteRange", &res);
        res.map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.state
            .authorize_txn(&request)
            .map_err(self.state.refused("etcdserverpb.KV", "Txn"))?;
        let t = request.into_inner();
        let res = write_replicated(&self.state, do_txn(&self.state, t)).await;
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
