//! The `Cluster` service: etcd's membership API over the raft membership.
//!
//! A member id is derived as etcd does from what identifies the member: its peer URLs and the
//! cluster token (`rusd_raft::member_id`), so a member started with `--initial-cluster-state
//! existing` finds the id MemberAdd gave it. MemberAdd adds a learner; without `isLearner`
//! the leader promotes it to voter as soon as it caught up (openraft changes voters by joint
//! consensus, which would stall while the new member is not running yet; etcd instead counts
//! it in the quorum at once), so the answer lists it as a learner until then. MemberPromote
//! makes a learner that is in sync a voter (etcd's `ErrLearnerNotReady` otherwise);
//! MemberRemove removes either; MemberUpdate replaces the peer URLs. Every change runs on the
//! leader (forwarded by a follower) and is answered once committed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mvcc_core::engine::AnyBackend;
use mvcc_core::store::META_APPLY;
use mvcc_core::StoreConfig;
use rusd_raft::{
    InitialState, MembershipChange, NodeId, RaftNode, RaftNodeConfig, RaftNodeMetrics,
};
use storage_api::{Backend, Durability, Tree};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::config::{parse_url, ClusterState, ServerConfig, DEFAULT_PEER_URL};
use crate::error::ServerError;
use crate::pb::etcdserverpb::{
    cluster_server, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use crate::state::{raft_errors, raft_status, Raft, State};

/// How long an answer waits for this member to see the change it made.
const SEE_CHANGE: Duration = Duration::from_secs(3);

/// The `Cluster` service.
#[derive(Debug, Clone)]
pub struct ClusterService {
    state: Arc<State>,
    token: String,
}

impl ClusterService {
    /// A service over `state`; member ids are derived with the cluster `token`.
    pub fn new(state: Arc<State>, token: impl Into<String>) -> Self {
        ClusterService {
            state,
            token: token.into(),
        }
    }

    fn raft(&self) -> Result<&Arc<crate::state::Raft>, Status> {
        self.state
            .raft
            .as_ref()
            .ok_or_else(|| crate::error::rpc::unsupported("membership change"))
    }

    /// The members as etcd lists them.
    fn members(&self) -> Vec<Member> {
        match &self.state.raft {
            Some(r) => pb_members(&r.metrics()),
            None => vec![Member {
                id: self.state.member_id,
                name: self.state.name.clone(),
                peer_ur_ls: Vec::new(),
                client_ur_ls: self.state.client_urls.clone(),
                is_learner: false,
            }],
        }
    }

    /// Applies `change`, then waits (briefly) until this member sees `done` hold.
    async fn change(
        &self,
        change: MembershipChange,
        done: impl FnMut(&RaftNodeMetrics) -> bool,
    ) -> Result<(), Status> {
        let raft = self.raft()?;
        raft.change_membership(change).await.map_err(raft_status)?;
        // A follower learns the committed change with the next replication round.
        let _ = raft.wait_for(SEE_CHANGE, done).await;
        Ok(())
    }

    fn check_urls(urls: &[String]) -> Result<(), Status> {
        if urls.is_empty() || urls.iter().any(|u| parse_url(u).is_err()) {
            return Err(raft_errors::bad_urls());
        }
        Ok(())
    }
}

/// The protocol's member list of a raft membership.
fn pb_members(m: &RaftNodeMetrics) -> Vec<Member> {
    m.members
        .iter()
        .map(|(id, member)| Member {
            id: *id,
            name: member.name.clone(),
            peer_ur_ls: member.peer_urls.clone(),
            client_ur_ls: member.client_urls.clone(),
            is_learner: !m.voters.contains(id),
        })
        .collect()
}

fn find(m: &RaftNodeMetrics, id: NodeId) -> Result<&rusd_raft::Member, Status> {
    m.members.get(&id).ok_or_else(raft_errors::member_not_found)
}

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.state
            .authorize_admin(&request)
            .map_err(self.state.refused("etcdserverpb.Cluster", "MemberAdd"))?;
        let res = async {
            let r = request.into_inner();
            Self::check_urls(&r.peer_ur_ls)?;
            let raft = self.raft()?;
            let m = raft.metrics();
            let id = rusd_raft::member_id(&r.peer_ur_ls, &self.token);
            if m.members.contains_key(&id) {
                return Err(raft_errors::member_exists());
            }
            if m.members
                .values()
                .any(|x| x.peer_urls.iter().any(|u| r.peer_ur_ls.contains(u)))
            {
                return Err(raft_errors::peer_url_exists());
            }
            let member = rusd_raft::Member {
                name: String::new(),
                peer_urls: r.peer_ur_ls.clone(),
                client_urls: Vec::new(),
            };
            let change = if r.is_learner {
                MembershipChange::AddLearner {
                    id,
                    member: member.clone(),
                }
            } else {
                MembershipChange::AddVoter {
                    id,
                    member: member.clone(),
                }
            };
            self.change(change, |m| m.members.contains_key(&id)).await?;
            // A voter is a learner until it caught up (see the module docs).
            let is_learner = !raft.metrics().voters.contains(&id);
            Ok(MemberAddResponse {
                header: self.state.header_now(),
                member: Some(Member {
                    id,
                    name: String::new(),
                    peer_ur_ls: member.peer_urls,
                    client_ur_ls: Vec::new(),
                    is_learner,
                }),
                members: self.members(),
            })
        }
        .await;
        self.state
            .metrics
            .observe("etcdserverpb.Cluster", "MemberAdd", &res);
        res.map(Response::new)
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.state
            .authorize_admin(&request)
            .map_err(self.state.refused("etcdserverpb.Cluster", "MemberRemove"))?;
        let res = async {
            let id = request.into_inner().id;
            let raft = self.raft()?;
            find(&raft.metrics(), id)?;
            self.change(MembershipChange::Remove { id }, |m| {
                !m.members.contains_key(&id)
            })
            .await?;
            Ok(MemberRemoveResponse {
                header: self.state.header_now(),
                members: self.members(),
            })
        }
        .await;
        self.state
            .metrics
            .observe("etcdserverpb.Cluster", "MemberRemove", &res);
        res.map(Response::new)
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.state
            .authorize_admin(&request)
            .map_err(self.state.refused("etcdserverpb.Cluster", "MemberUpdate"))?;
        let res = async {
            let r = request.into_inner();
            Self::check_urls(&r.peer_ur_ls)?;
            let raft = self.raft()?;
            let m = raft.metrics();
            let mut member = find(&m, r.id)?.clone();
            if m.members.iter().any(|(other, x)| {
                *other != r.id && x.peer_urls.iter().any(|u| r.peer_ur_ls.contains(u))
            }) {
                return Err(raft_errors::peer_url_exists());
            }
            member.peer_urls = r.peer_ur_ls.clone();
            let id = r.id;
            let urls = r.peer_ur_ls;
            self.change(MembershipChange::Update { id, member }, |m| {
                m.members.get(&id).is_some_and(|x| x.peer_urls == urls)
            })
            .await?;
            Ok(MemberUpdateResponse {
                header: self.state.header_now(),
                members: self.members(),
            })
        }
        .await;
        self.state
            .metrics
            .observe("etcdserverpb.Cluster", "MemberUpdate", &res);
        res.map(Response::new)
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let res = async {
            if request.get_ref().linearizable {
                self.state.read_barrier().await?;
            }
            Ok(MemberListResponse {
                header: self.state.header_now(),
                members: self.members(),
            })
        }
        .await;
        self.state
            .metrics
            .observe("etcdserverpb.Cluster", "MemberList", &res);
        res.map(Response::new)
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.state
            .authorize_admin(&request)
            .map_err(self.state.refused("etcdserverpb.Cluster", "MemberPromote"))?;
        let res = async {
            let id = request.into_inner().id;
            let raft = self.raft()?;
            let m = raft.metrics();
            find(&m, id)?;
            if m.voters.contains(&id) {
                return Err(raft_errors::member_not_learner());
            }
            self.change(MembershipChange::Promote { id }, |m| m.voters.contains(&id))
                .await?;
            Ok(MemberPromoteResponse {
                header: self.state.header_now(),
                members: self.members(),
            })
        }
        .await;
        self.state
            .metrics
            .observe("etcdserverpb.Cluster", "MemberPromote", &res);
        res.map(Response::new)
    }
}

/// Starts this server's raft member from its configuration: binds the peer listener, derives
/// the member and cluster ids from the peer URLs and the token (etcd's way), and starts a new
/// cluster, joins an existing one, or (with no cluster flags) runs a one-member cluster.
///
/// A data directory written by a rusd without replication (a store, no raft log) is adopted
/// by a one-member cluster: its content becomes the state the log starts from, and a snapshot
/// is taken at once so that members added later start from that snapshot, not from an empty
/// log. A multi-member `--initial-cluster` over such a directory is refused. The adoption is
/// recorded in the file [`ADOPT_MARKER`] of the data directory until its snapshot is taken
/// and the log purged, so a member that crashes in between adopts again when it restarts
/// (its raft log exists by then, which alone would make it skip the adoption).
///
/// `auth` is the auth store opened on `backend`: the state machine applies the replicated
/// auth commands to it.
pub async fn start_member(
    cfg: &ServerConfig,
    backend: Arc<AnyBackend>,
    store_cfg: StoreConfig,
    auth: Arc<rusd_auth::AuthStore<AnyBackend>>,
    client_addrs: &[SocketAddr],
) -> Result<Arc<Raft>, ServerError> {
    let token = cfg.initial_cluster_token.as_str();
    if cfg.listen_peer_urls.len() > 1 {
        tracing::warn!(
            urls = ?cfg.listen_peer_urls,
            "only the first --listen-peer-urls URL is served"
        );
    }
    let listener = match cfg.listen_peer_urls.first() {
        Some(url) => {
            let addr = *parse_url(url)?
                .first()
                .ok_or_else(|| ServerError::Config(format!("{url}: no address")))?;
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: addr.to_string(),
                    source,
                })?
        }
        None => TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| ServerError::Bind {
                addr: "127.0.0.1:0".into(),
                source,
            })?,
    };
    let bound = listener
        .local_addr()
        .map_err(|e| ServerError::Config(format!("peer listener address: {e}")))?;
    let advertise_peer: Vec<String> = if !cfg.initial_advertise_peer_urls.is_empty() {
        cfg.initial_advertise_peer_urls.clone()
    } else if !cfg.listen_peer_urls.is_empty() {
        cfg.listen_peer_urls.clone()
    } else {
        vec![format!("http://{bound}")]
    };
    let client_urls: Vec<String> = if cfg.advertise_client_urls.is_empty() {
        client_addrs.iter().map(|a| format!("http://{a}")).collect()
    } else {
        cfg.advertise_client_urls.clone()
    };

    let mut members = BTreeMap::new();
    let id = if cfg.initial_cluster.is_empty() {
        // The id must not change between restarts: without peer flags it is derived from
        // etcd's default peer URL, whatever free port the peer service got.
        let identity =
            if cfg.initial_advertise_peer_urls.is_empty() && cfg.listen_peer_urls.is_empty() {
                vec![DEFAULT_PEER_URL.to_string()]
            } else {
                advertise_peer.clone()
            };
        let id = rusd_raft::member_id(&identity, token);
        members.insert(
            id,
            rusd_raft::Member {
                name: cfg.name.clone(),
                peer_urls: advertise_peer.clone(),
                client_urls: client_urls.clone(),
            },
        );
        id
    } else {
        let mut mine = None;
        for (name, urls) in &cfg.initial_cluster {
            let id = rusd_raft::member_id(urls, token);
            let me = *name == cfg.name;
            if me {
                let mut a = urls.clone();
                let mut b = advertise_peer.clone();
                a.sort();
                b.sort();
                if !cfg.initial_advertise_peer_urls.is_empty() && a != b {
                    return Err(ServerError::Config(format!(
                        "--initial-cluster has {name}={} but --initial-advertise-peer-urls is {}",
                        urls.join(","),
                        advertise_peer.join(",")
                    )));
                }
                mine = Some(id);
            }
            members.insert(
                id,
                rusd_raft::Member {
                    name: name.clone(),
                    peer_urls: urls.clone(),
                    client_urls: if me { client_urls.clone() } else { Vec::new() },
                },
            );
        }
        mine.ok_or_else(|| {
            ServerError::Config(format!(
                "--name {:?} is not in --initial-cluster (a member's name must be listed with \
                 its peer URLs)",
                cfg.name
            ))
        })?
    };

    // A store written without replication, or one whose adoption a crash interrupted?
    let marker = cfg.data_dir.join(ADOPT_MARKER);
    let pending = marker.exists();
    let log_dirs = [cfg.data_dir.join("raft-wal"), cfg.data_dir.join("raft-log")];
    let adopt = pending || {
        let b = backend.clone();
        let has_log = log_dirs.iter().any(|d| d.exists());
        tokio::task::spawn_blocking(move || -> Result<bool, ServerError> {
            if has_log || b.get(Tree::Meta, META_APPLY)?.is_some() {
                return Ok(false);
            }
            Ok(!b.scan(Tree::Kv, &[], &[], 1)?.is_empty()
                || !b.scan(Tree::Lease, &[], &[], 1)?.is_empty())
        })
        .await
        .map_err(|e| ServerError::Task(e.to_string()))??
    };
    if adopt && members.len() > 1 {
        return Err(ServerError::Config(format!(
            "{} holds a store written without replication; start it once as a one-member \
             cluster (no --initial-cluster), then add members with MemberAdd",
            cfg.data_dir.display()
        )));
    }
    if adopt && !pending {
        create_durably(&marker)?;
    }

    // Peer TLS: every peer URL https (served and dialled over TLS) or none.
    let https = crate::config::peer_urls_https(
        cfg.listen_peer_urls
            .iter()
            .chain(advertise_peer.iter())
            .chain(cfg.initial_cluster.iter().flat_map(|(_, urls)| urls.iter()))
            .map(String::as_str),
    )?;
    let peer_tls = if https {
        let hosts: Vec<String> = cfg
            .listen_peer_urls
            .iter()
            .chain(advertise_peer.iter())
            .filter_map(|u| crate::config::url_host(u))
            .collect();
        let auto_dir = cfg.data_dir.join("fixtures").join("peer");
        Some(crate::tls::peer_tls(&cfg.peer_tls, &auto_dir, &hosts)?)
    } else {
        if cfg.peer_tls.is_configured() {
            tracing::warn!(
                "peer URLs are http while --peer-cert-file/--peer-key-file or --peer-auto-tls \
                 are set; ignoring them (peers talk plain text)"
            );
        }
        None
    };

    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut rc = RaftNodeConfig::new(id, cfg.name.clone(), listener, &cfg.data_dir, backend);
    rc.cluster_id = rusd_raft::cluster_id([], token);
    rc.initial_members = members;
    rc.initial_state = match cfg.initial_cluster_state {
        ClusterState::New => InitialState::New,
        ClusterState::Existing => InitialState::Existing,
    };
    rc.store_config = store_cfg;
    rc.peer_tls = peer_tls;
    rc.auth = Some(auth);
    rc.log_sync = matches!(cfg.durability, Durability::Sync);
    rc.lease_check_interval = cfg.lease_check_interval;
    rc.lease_checkpoint_interval = cfg.lease_checkpoint_interval;
    rc.peer_url_rewrites = cfg.peer_url_rewrites.iter().cloned().collect();
    rc.raft_config = rusd_raft::openraft::Config {
        heartbeat_interval: ms(cfg.heartbeat_interval),
        election_timeout_min: ms(cfg.election_timeout),
        election_timeout_max: ms(cfg.election_timeout).saturating_mul(2),
        snapshot_policy: rusd_raft::openraft::SnapshotPolicy::LogsSinceLast(
            cfg.snapshot_count.max(1),
        ),
        max_in_snapshot_log_to_keep: cfg.snapshot_count.clamp(1, 5_000),
        ..rusd_raft::default_raft_config()
    };
    let raft = RaftNode::start(rc)
        .await
        .map_err(|e| ServerError::Task(format!("raft: {}", rusd_raft::error_line(&e))))?;
    let raft = Arc::new(raft);
    if cfg.initial_cluster.len() <= 1 {
        // A one-member cluster elects itself at once: serve clients only once it has, and
        // has applied its whole log (its first entry as leader commits what a crash left
        // uncommitted), so that no read misses an acknowledged write.
        let _ = raft
            .wait_for(cfg.election_timeout.saturating_mul(5), |m| {
                m.leader.is_some() && m.applied_index >= m.last_log_index
            })
            .await;
    }
    tracing::info!(
        member_id = format!("{id:x}"),
        peer = %bound,
        advertise = ?advertise_peer,
        "raft member started"
    );
    if adopt {
        if std::env::var_os(EXIT_BEFORE_ADOPT).is_some() {
            tracing::warn!("{EXIT_BEFORE_ADOPT} is set: exiting before the adoption snapshot");
            std::process::exit(EXIT_BEFORE_ADOPT_CODE);
        }
        // Before serving clients: a member added (MemberAdd) before the log is purged would
        // be sent the log from its first entry, which holds none of the adopted data, instead
        // of the snapshot.
        adopt_store(&raft).await.map_err(|e| {
            ServerError::Task(format!("adopting the store: {}", rusd_raft::error_line(&e)))
        })?;
        remove_durably(&marker)?;
    }
    Ok(raft)
}

/// File in the data directory that exists while an adopted store has no snapshot yet (see
/// [`start_member`]).
pub const ADOPT_MARKER: &str = "adopting";

/// Test hook: when this environment variable is set, a member that adopts a store exits with
/// [`EXIT_BEFORE_ADOPT_CODE`] after its raft log exists and before the adoption snapshot (a
/// crash at the worst moment, for `rusd-server/tests/cluster_restore.rs`).
pub const EXIT_BEFORE_ADOPT: &str = "RUSD_TEST_EXIT_BEFORE_ADOPT";

/// Exit status of a member stopped by [`EXIT_BEFORE_ADOPT`].
pub const EXIT_BEFORE_ADOPT_CODE: i32 = 86;

/// Creates `path` (empty) and makes it and its name durable.
fn create_durably(path: &std::path::Path) -> Result<(), ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::File::create(path)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    sync_parent(path)
}

/// Removes `path` and makes the removal durable.
fn remove_durably(path: &std::path::Path) -> Result<(), ServerError> {
    std::fs::remove_file(path).map_err(|source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sync_parent(path)
}

/// `fsync` of the directory that holds `path`.
fn sync_parent(path: &std::path::Path) -> Result<(), ServerError> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ServerError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Takes a snapshot of an adopted store and purges the log behind it (see [`start_member`]);
/// returns once the log is purged.
async fn adopt_store(raft: &Raft) -> Result<(), rusd_raft::RaftError> {
    let m = raft
        .wait_for(Duration::from_secs(60), |m| {
            m.leader == Some(m.id) && m.applied_index >= 1
        })
        .await?;
    let r = raft.raft();
    r.trigger()
        .snapshot()
        .await
        .map_err(|e| rusd_raft::RaftError::Raft(e.to_string()))?;
    let mut rx = r.metrics();
    let snap = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(s) = rx.borrow_and_update().snapshot {
                return Some(s.index);
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .map_err(|_| rusd_raft::RaftError::Timeout)?;
    if let Some(index) = snap {
        r.trigger()
            .purge_log(index)
            .await
            .map_err(|e| rusd_raft::RaftError::Raft(e.to_string()))?;
        // openraft purges asynchronously.
        let mut rx = r.metrics();
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if rx.borrow_and_update().purged.map(|p| p.index) >= Some(index) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .map_err(|_| rusd_raft::RaftError::Timeout)?;
        tracing::info!(
            snapshot = index,
            applied = m.applied_index,
            "adopted a store written without replication"
        );
    }
    Ok(())
}

/// Publishes this member's name and client URLs in the membership once it is a member (etcd
/// members publish their attributes the same way), so MemberList shows them.
pub fn publish_self(state: Arc<State>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(raft) = state.raft.clone() else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            let m = raft.metrics();
            let Some(me) = m.members.get(&m.id) else {
                continue;
            };
            if me.name == state.name && me.client_urls == state.client_urls {
                return;
            }
            if m.leader.is_none() {
                continue;
            }
            let member = rusd_raft::Member {
                name: state.name.clone(),
                peer_urls: me.peer_urls.clone(),
                client_urls: state.client_urls.clone(),
            };
            match raft
                .change_membership(MembershipChange::Update { id: m.id, member })
                .await
            {
                Ok(()) => tracing::info!("published this member's name and client URLs"),
                Err(e) => {
                    tracing::debug!(error = %rusd_raft::error_line(&e), "publishing the member failed; retrying")
                }
            }
        }
    });
}
