//! The `Lease` service and the background task that revokes expired leases.
//!
//! Grants and revokes go through raft; keep-alives go to the leader (forwarded by a
//! follower), which alone expires leases (`rusd_raft::node`). [`expiry_loop`] is the expiry of
//! a server without a raft member.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mvcc_core::MvccError;
use prost::Message;
use rusd_raft::{Command, CommandResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::config::{MAX_LEASE_TTL, MIN_LEASE_TTL};
use crate::error::{mvcc_status, rpc};
use crate::pb::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::state::{write_replicated, State};

/// Approximate bytes a lease adds to the database.
const LEASE_COST: usize = 64;

/// The `Lease` service.
#[derive(Debug, Clone)]
pub struct LeaseService {
    state: Arc<State>,
}

impl LeaseService {
    /// A service over `state`.
    pub fn new(state: Arc<State>) -> Self {
        LeaseService { state }
    }
}

/// Lease ids tried for a grant without an id before giving up on collisions.
const GRANT_ATTEMPTS: usize = 16;

async fn do_grant(state: &State, r: LeaseGrantRequest) -> Result<LeaseGrantResponse, Status> {
    state.check_size(r.encoded_len())?;
    state.check_quota(LEASE_COST)?;
    if r.ttl > MAX_LEASE_TTL {
        return Err(rpc::lease_ttl_too_large());
    }
    let ttl = r.ttl.max(MIN_LEASE_TTL);
    // The id is chosen here, before the proposal, so that every member applies the same one.
    let mut attempts = 0;
    let response = loop {
        let id = if r.id == 0 {
            state.next_lease_id()
        } else {
            r.id
        };
        match state.propose(Command::LeaseGrant { id, ttl }).await {
            Err(status)
                if r.id == 0
                    && attempts < GRANT_ATTEMPTS
                    && status.message() == rpc::lease_exists().message() =>
            {
                attempts += 1;
            }
            other => break other?,
        }
    };
    let CommandResponse::LeaseGrant(info) = response else {
        return Err(Status::internal(format!(
            "rusd: unexpected response to lease grant: {response:?}"
        )));
    };
    Ok(LeaseGrantResponse {
        header: state.header_now(),
        id: info.id,
        ttl: info.ttl,
        error: String::new(),
    })
}

/// Renews lease `id` on the leader; etcd answers an unknown or expired lease with TTL 0.
/// Renews lease `id` (etcd `LeaseKeepAlive` for one request): through the leader in a
/// cluster; the remaining TTL, 0 for an unknown lease.
pub(crate) async fn keep_alive(state: &State, id: i64) -> Result<i64, Status> {
    let Some(raft) = &state.raft else {
        let answer = |renewed: Result<i64, MvccError>| match renewed {
            Ok(ttl) => Ok(ttl),
            Err(MvccError::LeaseNotFound(_)) => Ok(0),
            Err(e) => Err(mvcc_status(e)),
        };
        // etcd's `Renew`: a checkpointed lease (e.g. imported with etcd's remaining TTL)
        // clears its checkpoint first, so that a restart does not resume it from there.
        if state.store.lease_checkpointed_ttl(id).unwrap_or(0) > 0 {
            let store = state.store.clone();
            return crate::state::blocking(move || {
                answer(
                    store
                        .lease_checkpoint(id, 0)
                        .and_then(|()| store.lease_keep_alive(id)),
                )
            })
            .await;
        }
        return answer(state.store.lease_keep_alive(id));
    };
    match raft.lease_keep_alive(id).await {
        Ok(ttl) => Ok(ttl),
        Err(rusd_raft::RaftError::Command(rusd_raft::CommandError::LeaseNotFound(_))) => Ok(0),
        Err(e) => Err(crate::state::raft_status(e)),
    }
}

/// etcd `LeaseTimeToLive`: in a cluster the leader answers (a follower forwards it through
/// rusd-raft), since only the leader's lessor sees keep-alives; TTL -1 for an unknown lease.
async fn do_time_to_live(
    state: &State,
    r: &LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Status> {
    let found = match &state.raft {
        Some(raft) => raft
            .lease_time_to_live(r.id, r.keys)
            .await
            .map_err(|e| state.raft_status(e))?,
        None => match state.store.lease_time_to_live(r.id) {
            Ok(info) => Some(info),
            Err(MvccError::LeaseNotFound(_)) => None,
            Err(e) => return Err(mvcc_status(e)),
        },
    };
    Ok(match found {
        Some(info) => LeaseTimeToLiveResponse {
            header: state.header_now(),
            id: info.id,
            ttl: info.remaining_ttl,
            granted_ttl: info.ttl,
            keys: if r.keys { info.keys } else { Vec::new() },
        },
        // etcd answers an unknown lease with TTL -1.
        None => LeaseTimeToLiveResponse {
            header: state.header_now(),
            id: r.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        },
    })
}

/// etcd `LeaseLeases`: every lease id, from the leader in a cluster.
async fn do_leases(state: &State) -> Result<LeaseLeasesResponse, Status> {
    let ids = match &state.raft {
        Some(raft) => raft.leases().await.map_err(|e| state.raft_status(e))?,
        None => state.store.leases(),
    };
    Ok(LeaseLeasesResponse {
        header: state.header_now(),
        leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
    })
}

/// Revokes expired leases every `interval` until `shutdown` turns true.
pub async fn expiry_loop(
    state: Arc<State>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if state.raft.is_some() {
        // The raft member's leader expires leases through the log.
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        let store = state.store.clone();
        if store.expired_leases().is_empty() {
            continue;
        }
        match tokio::task::spawn_blocking(move || store.expire_leases()).await {
            Ok(Ok(ids)) => {
                state
                    .metrics
                    .leases_expired
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
                tracing::debug!(?ids, "leases expired");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease expiry failed"),
            Err(e) => tracing::warn!(error = %e, "lease expiry task failed"),
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.state
            .authorize_token(&request)
            .map_err(self.state.refused("etcdserverpb.Lease", "LeaseGrant"))?;
        let r = request.into_inner();
        let res = write_replicated(&self.state, do_grant(&self.state, r)).await;
        self.state
            .metrics
            .observe("etcdserverpb.Lease", "LeaseGrant", &res);
        res.map(Response::new)
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.state
            .authorize_lease_revoke(&request)
            .map_err(self.state.refused("etcdserverpb.Lease", "LeaseRevoke"))?;
        let id = request.into_inner().id;
        let st = &self.state;
        let res = write_replicated(st, async move {
            match st.propose(Command::LeaseRevoke { id }).await? {
                CommandResponse::LeaseRevoke { revision } => Ok(LeaseRevokeResponse {
                    header: st.header(revision),
                }),
                other => Err(Status::internal(format!(
                    "rusd: unexpected response to lease revoke: {other:?}"
                ))),
            }
        })
        .await;
        self.state
            .metrics
            .observe("etcdserverpb.Lease", "LeaseRevoke", &res);
        res.map(Response::new)
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.state
            .authorize_token(&request)
            .map_err(self.state.refused("etcdserverpb.Lease", "LeaseKeepAlive"))?;
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let state = self.state.clone();
        let mut shutdown = state.shutdown.clone();
        state
            .metrics
            .keepalive_streams
            .fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    n = input.next() => n,
                    _ = shutdown.changed() => None,
                };
                let req = match next {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "keep-alive stream failed");
                        break;
                    }
                    None => break,
                };
                let ttl = match keep_alive(&state, req.id).await {
                    Ok(ttl) => ttl,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let resp = LeaseKeepAliveResponse {
                    header: state.header_now(),
                    id: req.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
            state
                .metrics
                .keepalive_streams
                .fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.state
            .authorize_lease_time_to_live(&request)
            .map_err(self.state.refused("etcdserverpb.Lease", "LeaseTimeToLive"))?;
        let res = do_time_to_live(&self.state, &request.into_inner()).await;
        self.state
            .metrics
            .observe("etcdserverpb.Lease", "LeaseTimeToLive", &res);
        res.map(Response::new)
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.state
            .authorize_token(&request)
            .map_err(self.state.refused("etcdserverpb.Lease", "LeaseLeases"))?;
        let res = do_leases(&self.state).await;
        self.state
            .metrics
            .observe("etcdserverpb.Lease", "LeaseLeases", &res);
        res.map(Response::new)
    }
}
