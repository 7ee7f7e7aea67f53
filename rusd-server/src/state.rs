//! The state shared by every gRPC service of one server.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mvcc_core::engine::AnyBackend;
use mvcc_core::{KeyValue, MvccStore};
use parking_lot::Mutex;
use storage_api::Backend;
use tonic::Status;

use rusd_raft::{Command, CommandResponse};

use crate::error::rpc;
pub use crate::metrics::Metrics;
use crate::pb::etcdserverpb::{AlarmMember, AlarmType, ResponseHeader};
use crate::pb::mvccpb;

/// The store type of the server: an MVCC store over the engine chosen at start-up.
pub type Store = MvccStore<AnyBackend>;

/// The replication member of the server.
pub type Raft = rusd_raft::RaftNode<AnyBackend>;

/// Raft term reported in headers when the state has no raft member (an embedding without
/// replication; a fresh single-member etcd is at term 2).
pub const RAFT_TERM: u64 = 2;

/// State shared by the services.
#[derive(Debug)]
pub struct State {
    /// The store.
    pub store: Arc<Store>,
    /// Cluster id reported in headers.
    pub cluster_id: u64,
    /// Member id reported in headers (and as leader).
    pub member_id: u64,
    /// Member name.
    pub name: String,
    /// Advertised client URLs.
    pub client_urls: Vec<String>,
    /// Maximum operations per txn branch.
    pub max_txn_ops: usize,
    /// Maximum request size.
    pub max_request_bytes: usize,
    /// Backend quota (`None` = unlimited).
    pub quota: Option<u64>,
    /// True when writes return before they are durable (buffered durability): short enough to
    /// run on the async workers instead of the blocking pool.
    pub inline_writes: bool,
    /// Active alarms: `(member id, alarm type)`.
    pub alarms: Mutex<BTreeSet<(u64, i32)>>,
    /// Last measured backend size in bytes.
    pub db_size: AtomicU64,
    /// Metrics.
    pub metrics: Metrics,
    /// Progress-notify interval for watchers.
    pub progress_notify_interval: Duration,
    /// Maximum watchers per watch stream (`--max-watchers-per-stream`).
    pub max_watchers_per_stream: usize,
    /// Set to true when the server shuts down: streams end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The raft member every write goes through (`None`: writes go to the store directly,
    /// for embeddings without replication).
    pub raft: Option<Arc<Raft>>,
    /// The data directory, probed for free space when raft stops on a storage failure.
    pub data_dir: Option<std::path::PathBuf>,
    /// Authentication and RBAC (set once at start-up; unset = auth never enabled).
    pub auth: std::sync::OnceLock<crate::auth::ServerAuth>,
    lease_seq: AtomicU64,
}

/// A 64-bit FNV-1a hash (stable member/cluster ids).
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

impl State {
    /// Builds the state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        name: String,
        client_urls: Vec<String>,
        max_txn_ops: usize,
        max_request_bytes: usize,
        quota: Option<u64>,
        progress_notify_interval: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> State {
        let urls = client_urls.join(",");
        let member_id = fnv64(&[b"rusd-member", name.as_bytes(), urls.as_bytes()]);
        let cluster_id = fnv64(&[b"rusd-cluster", &member_id.to_be_bytes()]);
        let size = store.backend().size().unwrap_or(0);
        State {
            store,
            cluster_id,
            member_id,
            name,
            client_urls,
            max_txn_ops,
            max_request_bytes,
            quota,
            inline_writes: false,
            alarms: Mutex::new(BTreeSet::new()),
            db_size: AtomicU64::new(size),
            metrics: Metrics::default(),
            progress_notify_interval,
            max_watchers_per_stream: crate::config::DEFAULT_MAX_WATCHERS_PER_STREAM,
            shutdown,
            raft: None,
            data_dir: None,
            auth: std::sync::OnceLock::new(),
            lease_seq: AtomicU64::new(0),
        }
    }

    /// The current raft term ([`RAFT_TERM`] without a raft member).
    pub fn raft_term(&self) -> u64 {
        self.raft.as_ref().map_or(RAFT_TERM, |r| r.term())
    }

    /// The leader's member id as this member knows it (0: none known).
    pub fn leader_id(&self) -> u64 {
        match &self.raft {
            Some(r) => r.leader().unwrap_or(0),
            None => self.member_id,
        }
    }

    /// `(raft index, raft applied index)`; without a raft member, the revision twice.
    pub fn raft_indexes(&self) -> (u64, u64) {
        match &self.raft {
            Some(r) => r.indexes(),
            None => {
                let rev = u64::try_from(self.store.current_revision()).unwrap_or(0);
                (rev, rev)
            }
        }
    }

    /// True when this member is a raft learner.
    pub fn is_learner(&self) -> bool {
        self.raft.as_ref().is_some_and(|r| {
            let m = r.metrics();
            m.members.contains_key(&m.id) && !m.voters.contains(&m.id)
        })
    }

    /// Proposes `cmd` through raft and returns the result of its application. Without a raft
    /// member the command is applied to the store directly. While auth is enabled, a client
    /// request checked at apply by etcd (put, delete, txn, lease revoke) is proposed with the
    /// auth revision it was checked at ([`State::auth_guard`]).
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, Status> {
        let Some(raft) = &self.raft else {
            let store = self.store.clone();
            return blocking(move || apply_locally(&store, cmd)).await;
        };
        let cmd = self.auth_guard(cmd);
        raft.write(cmd).await.map_err(|e| self.raft_status(e))
    }

    /// [`raft_status`], and etcd's NOSPACE answer for a replication failure while the data
    /// directory's device is full (an engine may report the full device only as a sticky
    /// error of a later call, without its cause).
    pub fn raft_status(&self, e: rusd_raft::RaftError) -> Status {
        let command = matches!(
            e,
            rusd_raft::RaftError::Command(_)
                | rusd_raft::RaftError::NoLeader
                | rusd_raft::RaftError::Timeout
                | rusd_raft::RaftError::LeaderTransferTimeout
        );
        let status = raft_status(e);
        if !command && status.code() == tonic::Code::Unavailable && self.device_full() {
            return rpc::no_space();
        }
        status
    }

    /// True when a 64 KiB file cannot be written and synced in the data directory for lack
    /// of space.
    fn device_full(&self) -> bool {
        use std::io::Write;
        let Some(dir) = &self.data_dir else {
            return false;
        };
        let probe = tempfile::tempfile_in(dir).and_then(|mut f| {
            f.write_all(&[0u8; 64 * 1024])?;
            f.sync_all()
        });
        match probe {
            Ok(()) => false,
            Err(e) => storage_api::is_out_of_space(&e),
        }
    }

    /// Makes a following read of the local store linearizable (raft ReadIndex; see
    /// `rusd_raft::node`). A no-op without a raft member.
    ///
    /// A member whose raft stopped on a fatal error (e.g. its log hit a full disk) and that is
    /// the only voter still serves reads from its store: nothing can commit without it, so the
    /// store holds every committed write.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        let Some(r) = &self.raft else {
            return Ok(());
        };
        match r.linearizable_barrier().await {
            Ok(()) => Ok(()),
            Err(e) => {
                if r.failure().is_some() {
                    let m = r.metrics();
                    if m.voters.len() == 1 && m.voters.contains(&m.id) {
                        return Ok(());
                    }
                }
                Err(self.raft_status(e))
            }
        }
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term(),
        })
    }

    /// A response header at the current revision.
    pub fn header_now(&self) -> Option<ResponseHeader> {
        self.header(self.store.current_revision())
    }

    /// Rejects a request whose encoding exceeds `max_request_bytes`.
    pub fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        if encoded_len > self.max_request_bytes {
            return Err(rpc::request_too_large());
        }
        Ok(())
    }

    /// True when alarm `kind` is active.
    pub fn has_alarm(&self, kind: AlarmType) -> bool {
        self.alarm_list().iter().any(|a| a.alarm == kind as i32)
    }

    /// True when the store failed because its device is full: the NOSPACE alarm holds until
    /// the store is reopened (a restart), as etcd's does until disarmed after space is freed.
    fn store_out_of_space(&self) -> bool {
        self.store
            .failure()
            .is_some_and(|reason| mvcc_core::MvccError::Failed(reason).is_out_of_space())
    }

    /// The active alarms.
    pub fn alarm_list(&self) -> Vec<AlarmMember> {
        let mut list: Vec<AlarmMember> = self
            .alarms
            .lock()
            .iter()
            .map(|(m, a)| AlarmMember {
                member_id: *m,
                alarm: *a,
            })
            .collect();
        let nospace = AlarmType::Nospace as i32;
        if self.store_out_of_space()
            && !list
                .iter()
                .any(|a| a.member_id == self.member_id && a.alarm == nospace)
        {
            list.push(AlarmMember {
                member_id: self.member_id,
                alarm: nospace,
            });
        }
        list
    }

    /// etcd's quota check for a request that may grow the database by about `cost` bytes:
    /// rejected with `database space exceeded` while the NOSPACE alarm is active, and raises it
    /// when `size + cost` reaches the quota.
    pub fn check_quota(&self, cost: usize) -> Result<(), Status> {
        let Some(quota) = self.quota else {
            return Ok(());
        };
        if self.has_alarm(AlarmType::Nospace) {
            return Err(rpc::no_space());
        }
        let size = self.db_size.load(Ordering::Relaxed);
        if size.saturating_add(cost as u64) >= quota {
            tracing::warn!(
                size,
                cost,
                quota,
                "backend quota exceeded: raising NOSPACE alarm"
            );
            self.alarms
                .lock()
                .insert((self.member_id, AlarmType::Nospace as i32));
            return Err(rpc::no_space());
        }
        Ok(())
    }

    /// Measures the backend size now and caches it.
    pub fn refresh_db_size(&self) -> u64 {
        match self.store.backend().size() {
            Ok(s) => {
                self.db_size.store(s, Ordering::Relaxed);
                s
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure backend size");
                self.db_size.load(Ordering::Relaxed)
            }
        }
    }

    /// A fresh lease id in etcd's style (member prefix, time-based suffix), never 0 and never
    /// negative.
    pub fn next_lease_id(&self) -> i64 {
        let seq = self.lease_seq.fetch_add(1, Ordering::Relaxed);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let prefix = (self.member_id & 0xffff) << 48;
        let suffix = ((millis & 0xff_ffff_ffff) << 8).wrapping_add(seq) & 0xffff_ffff_ffff;
        let id = (prefix | suffix) & (i64::MAX as u64);
        (id as i64).max(1)
    }

    /// Waits until every write that became current before this call has notified its
    /// watchers (a no-op write transaction takes and releases the store's write lock).
    pub fn write_barrier(&self) -> Result<(), Status> {
        // [0x02, 0x01) is an empty range: nothing is deleted, no revision is created.
        self.store
            .delete_range(&[0x02], &[0x01])
            .map(|_| ())
            .map_err(crate::error::mvcc_status)
    }
}

/// etcd's errors of the replication layer.
pub mod raft_errors {
    use tonic::Status;

    /// etcd `ErrGRPCNoLeader`.
    pub fn no_leader() -> Status {
        Status::unavailable("etcdserver: no leader")
    }
    /// etcd `ErrGRPCTimeout`.
    pub fn timeout() -> Status {
        Status::unavailable("etcdserver: request timed out")
    }
    /// etcd `ErrGRPCStopped`.
    pub fn stopped() -> Status {
        Status::unavailable("etcdserver: server stopped")
    }
    /// etcd `ErrGRPCNotLeader`.
    pub fn not_leader() -> Status {
        Status::failed_precondition("etcdserver: not leader")
    }
    /// etcd `ErrGRPCBadLeaderTransferee`.
    pub fn bad_leader_transferee() -> Status {
        Status::failed_precondition("etcdserver: bad leader transferee")
    }
    /// etcd `ErrGRPCTimeoutLeaderTransfer`.
    pub fn timeout_leader_transfer() -> Status {
        Status::unavailable("etcdserver: request timed out, leader transfer took too long")
    }
    /// etcd `ErrGRPCMemberNotFound`.
    pub fn member_not_found() -> Status {
        Status::not_found("etcdserver: member not found")
    }
    /// etcd `ErrGRPCMemberExist`.
    pub fn member_exists() -> Status {
        Status::failed_precondition("etcdserver: member ID already exist")
    }
    /// etcd `ErrGRPCPeerURLExist`.
    pub fn peer_url_exists() -> Status {
        Status::failed_precondition("etcdserver: Peer URLs already exists")
    }
    /// etcd `ErrGRPCMemberNotLearner`.
    pub fn member_not_learner() -> Status {
        Status::failed_precondition("etcdserver: can only promote a learner member")
    }
    /// etcd `ErrGRPCLearnerNotReady`.
    pub fn learner_not_ready() -> Status {
        Status::failed_precondition(
            "etcdserver: can only promote a learner member which is in sync with leader",
        )
    }
    /// etcd `ErrGRPCMemberBadURLs`.
    pub fn bad_urls() -> Status {
        Status::invalid_argument("etcdserver: given member URLs are invalid")
    }
}

/// The gRPC status of a replication failure: a command's own failure is the store's error
/// (as without replication); the rest are etcd's errors of its raft layer.
pub fn raft_status(e: rusd_raft::RaftError) -> Status {
    use rusd_raft::RaftError as E;
    match e {
        // An auth command refused at apply: etcd's code and message as they are.
        E::Command(rusd_raft::CommandError::Auth { code, message }) => {
            Status::new(tonic::Code::from_i32(code), message)
        }
        E::Command(c) => crate::error::mvcc_status(c.to_mvcc()),
        E::NoLeader => raft_errors::no_leader(),
        E::Timeout => raft_errors::timeout(),
        E::Stopped => raft_errors::stopped(),
        E::LearnerNotReady(_) => raft_errors::learner_not_ready(),
        E::NotLeader(_) => raft_errors::not_leader(),
        E::BadLeaderTransferee(_) => raft_errors::bad_leader_transferee(),
        E::LeaderTransferTimeout => raft_errors::timeout_leader_transfer(),
        E::Mvcc(m) => crate::error::mvcc_status(m),
        // A full device under the raft log: etcd's NOSPACE answer (the caller raises the
        // alarm); the member stops replicating until it is restarted.
        other if storage_api::is_out_of_space(&other) => rpc::no_space(),
        other => {
            let line = rusd_raft::error_line(&other);
            tracing::warn!(error = %line, "replication failed");
            Status::unavailable(format!("etcdserver: {line}"))
        }
    }
}

/// Applies `cmd` to `store` (the path without replication).
fn apply_locally(store: &Store, cmd: Command) -> Result<CommandResponse, Status> {
    use crate::error::mvcc_status;
    Ok(match cmd {
        Command::Put(p) => CommandResponse::Put(store.kv_put(&p).map_err(mvcc_status)?),
        Command::DeleteRange(d) => {
            CommandResponse::DeleteRange(store.kv_delete_range(&d).map_err(mvcc_status)?)
        }
        Command::Txn(t) => CommandResponse::Txn(store.kv_txn(&t).map_err(mvcc_status)?),
        Command::Compaction(c) => {
            CommandResponse::Compaction(store.kv_compact(&c).map_err(mvcc_status)?)
        }
        Command::LeaseGrant { id, ttl } => {
            CommandResponse::LeaseGrant(store.lease_grant(id, ttl).map_err(mvcc_status)?)
        }
        Command::LeaseRevoke { id } => CommandResponse::LeaseRevoke {
            revision: store.lease_revoke(id).map_err(mvcc_status)?,
        },
        _ => CommandResponse::Done,
    })
}

/// Converts a store key-value to the protocol's.
pub fn to_pb_kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Runs store work: inline when `inline` (cheap work), else on tokio's blocking pool.
pub async fn maybe_blocking<T, F>(inline: bool, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    if inline {
        f()
    } else {
        blocking(f).await
    }
}

/// Runs a write request's store work as [`maybe_blocking`] does (inline under buffered
/// durability) and records how long it took to commit
/// ([`Metrics::observe_commit`]).
pub async fn write<T, F>(state: &State, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    let started = std::time::Instant::now();
    let res = maybe_blocking(state.inline_writes, f).await;
    state.metrics.observe_commit(started.elapsed());
    if let Err(status) = &res {
        // A full device refused the write (see `mvcc_status`): raise etcd's NOSPACE alarm, as
        // the quota check does, so every later write is refused until it is disarmed.
        if status.code() == tonic::Code::ResourceExhausted
            && status.message() == rpc::no_space().message()
        {
            state
                .alarms
                .lock()
                .insert((state.member_id, AlarmType::Nospace as i32));
        }
    }
    res
}

/// Runs a replicated write (`fut`) and records how long it took to commit
/// ([`Metrics::observe_commit`]); a full device raises the NOSPACE alarm, as [`write()`] does.
pub async fn write_replicated<T>(
    state: &State,
    fut: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = std::time::Instant::now();
    let res = fut.await;
    state.metrics.observe_commit(started.elapsed());
    if let Err(status) = &res {
        if status.code() == tonic::Code::ResourceExhausted
            && status.message() == rpc::no_space().message()
        {
            state
                .alarms
                .lock()
                .insert((state.member_id, AlarmType::Nospace as i32));
        }
    }
    res
}

/// Runs blocking store work on tokio's blocking pool.
pub async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("rusd: request task failed: {e}")))?
}
