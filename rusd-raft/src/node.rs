//! [`RaftNode`]: one running member — openraft, its log and state machine, the peer service,
//! request forwarding and the leader's lease expiry.
//!
//! # Writes
//! [`RaftNode::write`] proposes a [`Command`] on the leader (`Raft::client_write`) and returns
//! the response of its application. On a follower the command is forwarded to the leader over
//! the peer service, which proposes it and answers with the response. A request refused
//! *before* it was proposed (openraft's `ForwardToLeader`, including a proposal truncated away
//! by a new leader, which can never commit) is retried on the new leader until the request
//! timeout; any other failure (a timeout, a broken connection) is returned, since the command
//! may have been applied: the client decides, as with etcd.
//!
//! A follower forwards concurrent writes together: a write that finds fewer than two
//! forwarding requests in flight goes at once, the writes that arrive meanwhile wait and go
//! as one request (`Core::forward_write`), which the leader proposes as one batch entry
//! and answers with each command's own result, in their order.
//!
//! # Linearizable reads: ReadIndex
//! [`RaftNode::linearizable_barrier`] uses openraft's `ensure_linearizable`, i.e. ReadIndex:
//! the leader confirms it is still leader with a round of heartbeats to a quorum, takes its
//! commit index as the read index, and the read waits until the local store has applied it.
//! A follower asks the leader for the read index (the leader confirms with its quorum) and
//! waits for its own store to apply it, so every member serves linearizable reads. ReadIndex
//! rather than a leader lease: a lease read is only safe with bounded clock drift and pauses
//! (a paused leader that resumes after its lease ran out would serve stale reads), and these
//! processes can be stopped with SIGSTOP; ReadIndex costs one heartbeat round per read batch
//! and depends on no clock. Concurrent reads share rounds (`ReadRounds`, as etcd batches its
//! ReadIndex requests): one round runs at a time per member, the reads that arrive meanwhile
//! wait for the next one; a follower forwards one request per round, and the leader serves
//! forwarded and local reads with shared rounds of its own.
//!
//! # Leadership
//! A member that becomes leader (or restarts as the lone voter, whose leadership openraft
//! restores without a new term) proposes a [`Command::Noop`] at once, so that every entry
//! of its log is committed and applied before long, as raft's no-op at the start of a term.
//!
//! # Leases
//! Only the leader expires leases: a background task checks `MvccStore::expired_leases` and
//! proposes [`Command::LeaseRevoke`] for each. When a member becomes leader it first renews
//! every lease (etcd's `Promote`), because keep-alives went to the previous leader: a lease
//! with a checkpoint for its checkpointed remaining TTL, any other for its full TTL.
//! Keep-alives are served by the leader (forwarded from followers), and so are
//! [`RaftNode::lease_time_to_live`] and [`RaftNode::leases`] (etcd forwards LeaseTimeToLive
//! to the leader): a follower's lessor never sees a keep-alive, so its remaining TTLs are
//! stale.
//!
//! # Leader transfer
//! [`RaftNode::move_leader`] is etcd's `MoveLeader`, built on openraft 0.9 without its own
//! transfer: see that method.
//!
//! Lease checkpointing (etcd's, on by default from etcd 3.6): every
//! [`RaftNodeConfig::lease_checkpoint_interval`] the leader proposes
//! [`Command::LeaseCheckpoint`] with the remaining TTL of every lease that has more than that
//! interval left and whose remaining TTL differs from the one it would resume with, in entries
//! of up to [`MAX_LEASE_CHECKPOINT_BATCH`] checkpoints. Every member persists them in the lease
//! record, so a new leader, and every member after a restart, resumes a lease from its
//! checkpoint instead of its full TTL. A keep-alive of a checkpointed lease first proposes a
//! checkpoint of 0 (clearing it), as etcd's `Renew`, so a renewed lease does not resume from a
//! stale checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{AnyBackend, LeaseInfo, MvccError, MvccStore, StoreConfig};
use openraft::error::{ClientWriteError, RaftError as OpenraftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use storage_api::{Backend, BackendConfig, BackendKind, Durability};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{RaftError, RaftResult, WireError};
use crate::file_log::FileLog;
use crate::log_store::LogStore;
use crate::network::{decode, encode, ForwardHandler, Network, PeerClients, PeerService};
use crate::pb::peer_reply::Result as ReplyResult;
use crate::pb::raft_peer_server::RaftPeerServer;
use crate::pb::PeerRequest;
use crate::state_machine::StateMachine;
use crate::types::{Applied, Command, CommandResponse, Member, NodeId, Raft};

/// Cache budget of the raft log's engine in MiB, when the log runs on an engine (`log_engine`).
/// The log is appended and read back near its tail (replication, apply), so a small cache
/// serves it; the engine default (256 MiB) made a member's RSS grow by about 100 MiB over
/// 60 000 1 KiB writes.
pub const LOG_CACHE_MB: u64 = 16;

/// Whether a member starts a new cluster or joins an existing one (etcd's
/// `--initial-cluster-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialState {
    /// The initial members form a new cluster (each one initialises it with the same
    /// membership; a member that already holds state ignores this).
    New,
    /// The member joins a running cluster that added it (MemberAdd); it waits to be contacted
    /// by the leader.
    Existing,
}

/// Everything [`RaftNode::start`] needs.
#[derive(Debug)]
#[non_exhaustive]
pub struct RaftNodeConfig<B: Backend> {
    /// This member's id.
    pub id: NodeId,
    /// This member's name.
    pub name: String,
    /// The cluster id (see [`crate::cluster_id`]); peers of another cluster are refused.
    pub cluster_id: u64,
    /// The bound listener of the peer service.
    pub peer_listener: tokio::net::TcpListener,
    /// The initial members (with [`InitialState::New`]; this member included).
    pub initial_members: BTreeMap<NodeId, Member>,
    /// New cluster or joining.
    pub initial_state: InitialState,
    /// The member's data directory; the raft log lives in `<data_dir>/raft-log`, the raft
    /// snapshots in `<data_dir>/raft-snap` ([`crate::state_machine::SNAPSHOT_DIR`]).
    pub data_dir: PathBuf,
    /// The state machine's engine, opened with `Durability::Buffered` (the log is the WAL).
    pub backend: Arc<B>,
    /// The store's configuration (its commit mode should be `CommitMode::Backend`).
    pub store_config: StoreConfig,
    /// The auth store auth commands apply to, opened on `backend` (`None`: one with
    /// `AuthConfig::default()`; see [`RaftNode::auth`]).
    pub auth: Option<Arc<rusd_auth::AuthStore<B>>>,
    /// Where the raft log lives: `None` (the default) for the log file of
    /// [`crate::file_log`] in `<data_dir>/raft-wal`; `Some(kind)` for an instance of that
    /// storage engine of its own in `<data_dir>/raft-log` ([`crate::log_store`]).
    pub log_engine: Option<BackendKind>,
    /// Flush the raft log before an append is reported durable (etcd's guarantee; default).
    /// `false` leaves the log's durability to its engine's flush interval (1 s): an
    /// acknowledged write can then be lost by a crash of a quorum.
    pub log_sync: bool,
    /// openraft's timings and snapshot policy.
    pub raft_config: openraft::Config,
    /// How long a write or a read barrier may take before [`RaftError::Timeout`].
    pub request_timeout: Duration,
    /// How often the leader looks for expired leases.
    pub lease_check_interval: Duration,
    /// How often the leader checkpoints remaining lease TTLs (etcd's
    /// `--experimental-lease-checkpoint-interval`, 5 minutes); `Duration::ZERO` disables
    /// checkpointing. Checked every `lease_check_interval`.
    pub lease_checkpoint_interval: Duration,
    /// Peer URL rewrites of this member: it dials the second URL of a pair whenever it
    /// would dial the first (see [`PeerClients::with_rewrites`]). Empty by default.
    pub peer_url_rewrites: BTreeMap<String, String>,
    /// TLS of the peer transport: `Some` serves the peer listener over TLS and connects to
    /// `https` peer URLs with it; `None` (the default): plain text.
    pub peer_tls: Option<crate::network::PeerTls>,
}

impl<B: Backend> RaftNodeConfig<B> {
    /// A configuration with etcd's defaults: heartbeat 100 ms, election timeout 1-2 s, a
    /// snapshot every 10,000 entries keeping 5,000 entries behind it, a 7 s request timeout,
    /// lease checks every 500 ms, lease checkpoints every 5 minutes, the raft log in its own
    /// file (`log_engine` `None`), and a one-member new cluster of this member only (set
    /// `initial_members` for more).
    pub fn new(
        id: NodeId,
        name: impl Into<String>,
        peer_listener: tokio::net::TcpListener,
        data_dir: impl Into<PathBuf>,
        backend: Arc<B>,
    ) -> Self {
        let name = name.into();
        let peer_url = peer_listener
            .local_addr()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        let mut initial_members = BTreeMap::new();
        initial_members.insert(
            id,
            Member {
                name: name.clone(),
                peer_urls: vec![peer_url],
                client_urls: Vec::new(),
            },
        );
        RaftNodeConfig {
            id,
            name,
            cluster_id: 0,
            peer_listener,
            initial_members,
            initial_state: InitialState::New,
            data_dir: data_dir.into(),
            backend,
            store_config: StoreConfig::default(),
            auth: None,
            log_engine: None,
            log_sync: true,
            raft_config: default_raft_config(),
            request_timeout: Duration::from_secs(7),
            lease_check_interval: Duration::from_millis(500),
            peer_tls: None,
            lease_checkpoint_interval: DEFAULT_LEASE_CHECKPOINT_INTERVAL,
            peer_url_rewrites: BTreeMap::new(),
        }
    }
}

/// etcd's default lease checkpoint interval (`lessor.defaultLeaseCheckpointInterval`).
pub const DEFAULT_LEASE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// Most lease checkpoints proposed in one log entry (etcd's `maxLeaseCheckpointBatchSize`).
pub const MAX_LEASE_CHECKPOINT_BATCH: usize = 1000;

/// openraft's configuration with etcd's timings (see [`RaftNodeConfig::new`]).
pub fn default_raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "rusd".into(),
        heartbeat_interval: 100,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 5_000,
        max_payload_entries: 1_000,
        ..openraft::Config::default()
    }
}

/// A member's view of the cluster, for status and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RaftNodeMetrics {
    /// This member.
    pub id: NodeId,
    /// The leader this member knows of.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// Index of the last entry in the log.
    pub last_log_index: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// This member's role.
    pub state: ServerState,
    /// The voters.
    pub voters: BTreeSet<NodeId>,
    /// Every member (voters and learners).
    pub members: BTreeMap<NodeId, Member>,
    /// Requests this member sent to forward writes to the leader, since it started.
    pub write_forwards: u64,
    /// Writes this member forwarded to the leader in those requests (more than
    /// `write_forwards` when concurrent writes went together).
    pub forwarded_writes: u64,
}

/// A membership change, as proposed on the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MembershipChange {
    /// Add a learner (etcd `MemberAdd` with `is_learner`).
    AddLearner {
        /// The new member's id.
        id: NodeId,
        /// The new member.
        member: Member,
    },
    /// Add a voter (etcd `MemberAdd`): added as a learner at once, and made a voter by the
    /// leader as soon as it caught up (openraft changes voters by joint consensus, which
    /// needs the new member running; etcd would count it in the quorum at once).
    AddVoter {
        /// The new member's id.
        id: NodeId,
        /// The new member.
        member: Member,
    },
    /// Make a learner a voter (etcd `MemberPromote`).
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Remove a member, voter or learner (etcd `MemberRemove`).
    Remove {
        /// The member.
        id: NodeId,
    },
    /// Replace a member's description, e.g. its peer URLs (etcd `MemberUpdate`).
    Update {
        /// The member.
        id: NodeId,
        /// Its new description.
        member: Member,
    },
}

/// A request forwarded to the leader.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardRequest {
    Write(Command),
    ReadIndex,
    Membership(MembershipChange),
    KeepAlive(i64),
    /// A lease's state as the leader's lessor knows it (keep-alives go to the leader).
    TimeToLive {
        id: i64,
        keys: bool,
    },
    /// Every lease id, as the leader knows them.
    Leases,
    /// Sent by the leader to the transferee of a leader transfer: campaign now.
    Campaign,
    /// Several writes a follower received meanwhile, forwarded together (see
    /// [`Core::forward_write`]); answered by [`ForwardReply::Writes`], one result per command
    /// in the same order. Added last: postcard names variants by position.
    Writes(Vec<Command>),
}

/// The leader's answer to a [`ForwardRequest`].
#[derive(Debug, Serialize, Deserialize)]
enum ForwardReply {
    Write(Applied),
    ReadIndex(Option<u64>),
    Done,
    KeepAlive(i64),
    /// `None`: no such lease.
    TimeToLive(Option<LeaseInfo>),
    Leases(Vec<i64>),
    /// The results of a [`ForwardRequest::Writes`], in its order: `Ok(None)` for a command
    /// that was not proposed because the receiver is not the leader (safe to retry).
    Writes(Vec<Result<Option<Applied>, WireError>>),
}

/// A copy of `e` for each caller of a failed forwarding request.
fn copy_of(e: &RaftError) -> RaftError {
    match e {
        RaftError::Transport { peer, source } => RaftError::Transport {
            peer: *peer,
            source: source.clone(),
        },
        RaftError::InvalidArgument(m) => RaftError::InvalidArgument(m.clone()),
        other => RaftError::from(other.to_wire()),
    }
}

/// A forwarding slot taken by a caller; released (and the waiting writes sent) on drop.
struct ForwardSlot<'a, B: Backend>(&'a Core<B>);

impl<B: Backend> Drop for ForwardSlot<'_, B> {
    fn drop(&mut self) {
        self.0.forwards.release();
        self.0.drain_forwards();
    }
}

/// Where a request goes.
enum Target {
    Local,
    Remote(NodeId, Member),
}

/// A command waiting for a batch, and where its result goes (`Ok(None)`: this member is not
/// the leader, nothing was proposed).
struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<RaftResult<Option<Applied>>>,
}

/// Most commands proposed as one entry.
const MAX_BATCH: usize = 256;
/// Batches in flight at once (one being flushed while the next gathers).
const BATCHES_IN_FLIGHT: usize = 2;

/// How a member's answer to a forwarded request it cannot decode begins (the `Display` of
/// [`RaftError::Decode`] for "forwarded request"): a leader older than
/// [`ForwardRequest::Writes`] answers a `Writes` request with it.
const UNDECODABLE_FORWARD: &str = "cannot decode forwarded request";

/// Most bytes (postcard) of the commands a follower forwards in one request (at least one
/// command is always sent, whatever its size).
const MAX_FORWARD_BYTES: usize = 4 * 1024 * 1024;

/// A write a follower forwards to the leader `peer`, and where its result goes.
struct ForwardedWrite {
    peer: NodeId,
    member: Member,
    cmd: Command,
    reply: oneshot::Sender<RaftResult<Option<Applied>>>,
}

/// The next forwarded batch: the first waiting write's leader, and the writes for that leader
/// in their order, up to [`MAX_BATCH`] commands and [`MAX_FORWARD_BYTES`]; the others wait.
fn take_forwards(waiting: &mut Vec<ForwardedWrite>) -> Vec<ForwardedWrite> {
    let Some(peer) = waiting.first().map(|w| w.peer) else {
        return Vec::new();
    };
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let mut rest = Vec::new();
    let mut full = false;
    for w in waiting.drain(..) {
        if full || w.peer != peer {
            rest.push(w);
            continue;
        }
        let size = postcard::experimental::serialized_size(&w.cmd).unwrap_or(0);
        if !batch.is_empty()
            && (batch.len() >= MAX_BATCH || bytes.saturating_add(size) > MAX_FORWARD_BYTES)
        {
            // Full: this write and every later one wait, in their order.
            full = true;
            rest.push(w);
            continue;
        }
        bytes = bytes.saturating_add(size);
        batch.push(w);
    }
    *waiting = rest;
    batch
}

/// Group commit's queue, shared by the leader's proposals and a follower's forwarded writes:
/// items waiting for one of [`BATCHES_IN_FLIGHT`] slots. A caller that finds a slot free and
/// nothing waiting sends its own item at once; items that arrive while the slots are taken
/// wait and go together, `take` choosing each batch when a slot frees.
struct SlotQueue<T> {
    state: parking_lot::Mutex<SlotState<T>>,
    take: fn(&mut Vec<T>) -> Vec<T>,
}

/// The waiting items and how many slots are taken.
struct SlotState<T> {
    waiting: Vec<T>,
    in_flight: usize,
}

impl<T> SlotQueue<T> {
    fn new(take: fn(&mut Vec<T>) -> Vec<T>) -> Self {
        SlotQueue {
            state: parking_lot::Mutex::new(SlotState {
                waiting: Vec::new(),
                in_flight: 0,
            }),
            take,
        }
    }

    /// `Ok(x)`: a slot was free, nothing waited and `fits`: the caller holds the slot, sends
    /// `x` itself and then [`release`](Self::release)s it. `Err(r)`: `queue` added `x` to the
    /// waiting items (after those already waiting) and returned `r`.
    fn enter<X, R>(
        &self,
        x: X,
        fits: bool,
        queue: impl FnOnce(X, &mut Vec<T>) -> R,
    ) -> Result<X, R> {
        let mut q = self.state.lock();
        if fits && q.in_flight < BATCHES_IN_FLIGHT && q.waiting.is_empty() {
            q.in_flight += 1;
            Ok(x)
        } else {
            Err(queue(x, &mut q.waiting))
        }
    }

    /// Gives back a slot taken by [`enter`](Self::enter) or [`next`](Self::next).
    fn release(&self) {
        self.state.lock().in_flight -= 1;
    }

    /// Takes a slot and the next batch, if a slot is free and items wait.
    fn next(&self) -> Option<Vec<T>> {
        let mut q = self.state.lock();
        if q.in_flight >= BATCHES_IN_FLIGHT || q.waiting.is_empty() {
            return None;
        }
        q.in_flight += 1;
        Some((self.take)(&mut q.waiting))
    }

    /// For the holder of a slot that sent its batch: the next batch, keeping the slot, or
    /// `None` (the slot given back) when nothing waits.
    fn next_or_release(&self) -> Option<Vec<T>> {
        let mut q = self.state.lock();
        if q.waiting.is_empty() {
            q.in_flight -= 1;
            None
        } else {
            Some((self.take)(&mut q.waiting))
        }
    }
}

/// Group commit on the leader: openraft 0.9 appends and flushes every proposal on its own, so
/// commands that arrive while [`BATCHES_IN_FLIGHT`] proposals are being made durable wait
/// here and are proposed together as one [`Command::Batch`] entry (one append, one flush).
/// A command that finds room is proposed at once by its own caller (no hand-off to another
/// task: the single-client path has no extra hop).
struct Batcher {
    raft: Raft,
    timeout: Duration,
    queue: SlotQueue<Proposal>,
}

impl Batcher {
    /// Proposes `cmd` and returns its result (`Ok(None)`: not the leader).
    async fn propose(self: &Arc<Self>, cmd: Command) -> RaftResult<Option<Applied>> {
        let queued = self.queue.enter(cmd, true, |cmd, waiting| {
            let (reply, rx) = oneshot::channel();
            waiting.push(Proposal { cmd, reply });
            rx
        });
        let rx = match queued {
            Err(rx) => rx,
            Ok(cmd) => {
                // Proposed by this caller; the guard hands the slot on even if this future is
                // dropped (a cancelled request): only this caller's command is in the entry.
                let _slot = Slot(self.clone());
                return propose_one(&self.raft, cmd, self.timeout).await;
            }
        };
        self.drain();
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Proposes `cmds` (a follower's forwarded writes) and returns each one's result, in
    /// their order (`Ok(None)`: not the leader, not proposed). They are proposed together,
    /// with whatever else waits, as in [`Batcher::propose`]: by this caller when a slot is
    /// free and nothing waits, else by the waiting commands' task.
    async fn propose_many(
        self: &Arc<Self>,
        cmds: Vec<Command>,
    ) -> Vec<RaftResult<Option<Applied>>> {
        let mut receivers = Vec::with_capacity(cmds.len());
        let mut proposals = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let (reply, rx) = oneshot::channel();
            proposals.push(Proposal { cmd, reply });
            receivers.push(rx);
        }
        let fits = proposals.len() <= MAX_BATCH;
        let own = self.queue.enter(proposals, fits, |mut proposals, waiting| {
            waiting.append(&mut proposals)
        });
        match own {
            Ok(batch) => {
                // As in `propose`: the guard hands the slot on even if this future is
                // dropped; only this caller's commands are in the entry.
                let _slot = Slot(self.clone());
                propose_batch(&self.raft, batch, self.timeout).await;
            }
            Err(()) => self.drain(),
        }
        let mut results = Vec::with_capacity(receivers.len());
        for rx in receivers {
            results.push(rx.await.unwrap_or(Err(RaftError::Stopped)));
        }
        results
    }

    /// Proposes the waiting commands if a slot is free (in a task of their own, so that no
    /// caller's cancellation can strand the others).
    fn drain(self: &Arc<Self>) {
        let Some(batch) = self.queue.next() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (the member is being dropped): the waiting callers see `Stopped`.
            self.queue.release();
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let mut batch = batch;
            loop {
                propose_batch(&this.raft, batch, this.timeout).await;
                match this.queue.next_or_release() {
                    Some(next) => batch = next,
                    None => return,
                }
            }
        });
    }
}

/// A proposal slot taken by a caller; released (and the waiting commands proposed) on drop.
struct Slot(Arc<Batcher>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.queue.release();
        self.0.drain();
    }
}

/// The first [`MAX_BATCH`] waiting commands.
fn take_batch(waiting: &mut Vec<Proposal>) -> Vec<Proposal> {
    if waiting.len() <= MAX_BATCH {
        std::mem::take(waiting)
    } else {
        let rest = waiting.split_off(MAX_BATCH);
        std::mem::replace(waiting, rest)
    }
}

/// Proposes one command as its own entry.
async fn propose_one(raft: &Raft, cmd: Command, timeout: Duration) -> RaftResult<Option<Applied>> {
    match tokio::time::timeout(timeout, raft.client_write(cmd)).await {
        Err(_) => Err(RaftError::Timeout),
        Ok(Err(OpenraftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Ok(None),
        Ok(Err(e)) => Err(RaftError::Raft(crate::error_line(&e))),
        Ok(Ok(resp)) => Ok(Some(resp.data)),
    }
}

/// Proposes `batch` as one entry and hands every caller its own result.
async fn propose_batch(raft: &Raft, batch: Vec<Proposal>, timeout: Duration) {
    let (mut cmds, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let single = cmds.len() == 1;
    let cmd = match cmds.pop() {
        Some(only) if single => only,
        Some(last) => {
            cmds.push(last);
            Command::Batch(cmds)
        }
        None => return,
    };
    let result = tokio::time::timeout(timeout, raft.client_write(cmd)).await;
    let fail = |replies: Vec<oneshot::Sender<RaftResult<Option<Applied>>>>,
                err: &dyn Fn() -> RaftResult<Option<Applied>>| {
        for r in replies {
            let _ = r.send(err());
        }
    };
    match result {
        Err(_) => fail(replies, &|| Err(RaftError::Timeout)),
        Ok(Err(OpenraftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            fail(replies, &|| Ok(None))
        }
        Ok(Err(e)) => {
            let line = crate::error_line(&e);
            fail(replies, &|| Err(RaftError::Raft(line.clone())))
        }
        Ok(Ok(resp)) if single => {
            for r in replies {
                let _ = r.send(Ok(Some(resp.data.clone())));
            }
        }
        Ok(Ok(resp)) => match resp.data.0 {
            Ok(CommandResponse::Batch(results)) if results.len() == replies.len() => {
                for (r, result) in replies.into_iter().zip(results) {
                    let _ = r.send(Ok(Some(Applied(result))));
                }
            }
            other => {
                let line = format!("unexpected response to a batch: {other:?}");
                fail(replies, &|| Err(RaftError::Raft(line.clone())))
            }
        },
    }
}

/// Which read-index rounds: a member's linearizable reads ([`RaftNode::linearizable_barrier`],
/// a read index from wherever the leader is) or the leader's own read-index check (its local
/// reads' rounds and the read indexes followers forward to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    Barrier,
    Leader,
}

/// What a read-index round answers: the read index (`None`: nothing committed yet), or
/// `Ok(None)` from a leader round on a member that is not the leader.
type RoundResult = Result<Option<Option<u64>>, WireError>;

/// Read-index rounds of one [`ReadKind`], batched as etcd batches its ReadIndex requests: one
/// round runs at a time, and every read that arrives meanwhile shares the next one. A round
/// that starts after a read arrived confirms the leadership and takes the commit index after
/// that read arrived, so its index serves the read exactly as a round of its own would: the
/// reads stay linearizable, at one quorum round (or one forwarded request) per batch instead
/// of one per read.
#[derive(Default)]
struct ReadRounds {
    queue: parking_lot::Mutex<RoundQueue>,
}

impl ReadRounds {
    /// A read joins: `None` when no round runs (the caller runs the next one, and the rounds
    /// are marked running), else the receiver of the next round's result.
    fn join(&self) -> Option<oneshot::Receiver<RoundResult>> {
        let mut q = self.queue.lock();
        if q.running {
            let (tx, rx) = oneshot::channel();
            q.waiting.push(tx);
            Some(rx)
        } else {
            q.running = true;
            None
        }
    }

    /// A round ended: the reads that joined meanwhile, for the next round, or `None` when no
    /// read waits (the rounds stop; the next read runs one itself).
    fn next(&self) -> Option<Vec<oneshot::Sender<RoundResult>>> {
        let mut q = self.queue.lock();
        if q.waiting.is_empty() {
            q.running = false;
            None
        } else {
            Some(std::mem::take(&mut q.waiting))
        }
    }

    /// Stops the rounds; the reads still waiting see `Stopped`.
    fn stop(&self) {
        let mut q = self.queue.lock();
        q.running = false;
        q.waiting.clear();
    }
}

#[derive(Default)]
struct RoundQueue {
    /// A round is running (or about to).
    running: bool,
    /// The reads waiting for the next round.
    waiting: Vec<oneshot::Sender<RoundResult>>,
}

/// Whose turn it is to run rounds; on drop (the rounds' end, or a cancelled caller) the
/// reads still waiting are handed to a task of their own, so no cancellation strands them.
struct RoundTurn<'a, B: Backend> {
    core: &'a Core<B>,
    kind: ReadKind,
}

impl<B: Backend> Drop for RoundTurn<'_, B> {
    fn drop(&mut self) {
        self.core.hand_on_rounds(self.kind);
    }
}

/// The part of a member shared with its peer service and background tasks.
struct Core<B: Backend> {
    /// This core, for the tasks that run read rounds on their own.
    me: std::sync::Weak<Core<B>>,
    /// Batched linearizable reads of this member.
    barrier_rounds: ReadRounds,
    /// Batched read-index checks of this member as the leader.
    leader_rounds: ReadRounds,
    id: NodeId,
    cluster_id: u64,
    raft: Raft,
    batcher: Arc<Batcher>,
    /// Writes of this member (a follower) waiting to be forwarded to the leader.
    forwards: SlotQueue<ForwardedWrite>,
    /// Forwarding requests of writes sent ([`RaftNodeMetrics::write_forwards`]).
    write_forwards: AtomicU64,
    /// Writes forwarded in them ([`RaftNodeMetrics::forwarded_writes`]).
    forwarded_writes: AtomicU64,
    /// Answer a forwarded `Writes` request as a member older than it would (tests of the
    /// rolling-upgrade fallback; see [`RaftNode::answer_writes_as_older_member`]).
    as_older_member: std::sync::atomic::AtomicBool,
    clients: Arc<PeerClients>,
    store: Arc<MvccStore<B>>,
    /// The state machine's applied index (ahead of openraft's metrics).
    applied: crate::state_machine::AppliedIndex,
    request_timeout: Duration,
    /// True while this leader hands its leadership over ([`Core::move_leader`]): no
    /// proposal and no read index is started meanwhile, so that nothing but the transfer
    /// reaches the followers.
    transferring: watch::Sender<bool>,
    /// One leader transfer at a time.
    transfer_lock: tokio::sync::Mutex<()>,
}

/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// How long [`RaftNode::start`] waits for a member with a log to publish its membership, to
/// learn whether it is a lone voter (see the [module docs](self#leadership)).
const LONE_VOTER_WAIT: Duration = Duration::from_secs(30);

fn raft_err(e: impl std::error::Error) -> RaftError {
    RaftError::Raft(crate::error_line(&e))
}

impl<B: Backend> Core<B> {
    /// The leader to send a request to, waiting (until `deadline`) while none is known.
    async fn target(&self, deadline: Instant) -> RaftResult<Target> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Err(e) = &m.running_state {
                    return Err(raft_err(e.clone()));
                }
                if let Some(leader) = m.current_leader {
                    if leader == self.id {
                        return Ok(Target::Local);
                    }
                    if let Some(member) = m.membership_config.membership().get_node(&leader) {
                        return Ok(Target::Remote(leader, member.clone()));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => return Err(RaftError::NoLeader),
                Ok(Err(_)) => return Err(RaftError::Stopped),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Proposes `cmd` here (this member must be the leader). `Ok(None)`: not the leader, the
    /// command was not proposed (safe to retry elsewhere).
    async fn propose(&self, cmd: Command, deadline: Instant) -> RaftResult<Option<Applied>> {
        if matches!(cmd, Command::Batch(_)) {
            return Err(RaftError::InvalidArgument(
                "a batch is not a client command".into(),
            ));
        }
        self.transfer_done(deadline).await?;
        match tokio::time::timeout_at(deadline, self.batcher.propose(cmd)).await {
            Err(_) => Err(RaftError::Timeout),
            Ok(result) => result,
        }
    }

    /// Sends `req` to the leader `member`. `Ok(None)`: the receiver is not the leader.
    async fn forward(
        &self,
        peer: NodeId,
        member: &Member,
        req: &ForwardRequest,
        deadline: Instant,
    ) -> RaftResult<Option<ForwardReply>> {
        let mut client = self.clients.client(member)?;
        let mut request = tonic::Request::new(PeerRequest {
            cluster_id: self.cluster_id,
            payload: encode("forwarded request", req)?,
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = match client.forward(request).await {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(RaftError::Timeout)
            }
            Err(source) => return Err(RaftError::Transport { peer, source }),
        };
        match reply.result {
            Some(ReplyResult::Ok(b)) => Ok(Some(decode("forwarded reply", &b)?)),
            Some(ReplyResult::Err(b)) => match decode::<WireError>("forwarded error", &b)? {
                WireError::NotLeader(_) | WireError::NoLeader => Ok(None),
                other => Err(other.into()),
            },
            None => Err(RaftError::InvalidArgument("empty forwarded reply".into())),
        }
    }

    /// Forwards the write `cmd` to the leader `peer`. `Ok(None)`: the receiver is not the
    /// leader, nothing was proposed. A write that finds fewer than [`BATCHES_IN_FLIGHT`]
    /// forwarding requests in flight and none waiting is sent at once by its caller, as a
    /// [`ForwardRequest::Write`]; the writes that arrive meanwhile wait and go together, in
    /// their order, as one [`ForwardRequest::Writes`] (one peer request, and one proposal on
    /// the leader, instead of one each), and each caller gets its own command's result.
    async fn forward_write(
        &self,
        peer: NodeId,
        member: Member,
        cmd: Command,
        deadline: Instant,
    ) -> RaftResult<Option<Applied>> {
        let queued = self
            .forwards
            .enter((member, cmd), true, |(member, cmd), waiting| {
                let (reply, rx) = oneshot::channel();
                waiting.push(ForwardedWrite {
                    peer,
                    member,
                    cmd,
                    reply,
                });
                rx
            });
        let rx = match queued {
            Err(rx) => rx,
            Ok((member, cmd)) => {
                // The guard hands the slot on even if this future is dropped.
                let _slot = ForwardSlot(self);
                self.write_forwards.fetch_add(1, Ordering::Relaxed);
                self.forwarded_writes.fetch_add(1, Ordering::Relaxed);
                let req = ForwardRequest::Write(cmd);
                return match self.forward(peer, &member, &req, deadline).await? {
                    None => Ok(None),
                    Some(ForwardReply::Write(applied)) => Ok(Some(applied)),
                    Some(other) => Err(RaftError::Raft(format!("unexpected reply {other:?}"))),
                };
            }
        };
        self.drain_forwards();
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(RaftError::Timeout),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Ok(Ok(result)) => result,
        }
    }

    /// Sends the waiting writes if a forwarding slot is free (in a task of their own, so that
    /// no caller's cancellation can strand the others).
    fn drain_forwards(&self) {
        let Some(batch) = self.forwards.next() else {
            return;
        };
        let (Some(core), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            // The member is being dropped: the batch's callers see `Stopped`.
            self.forwards.release();
            return;
        };
        runtime.spawn(async move {
            let mut batch = batch;
            loop {
                core.send_forwards(batch).await;
                match core.forwards.next_or_release() {
                    Some(next) => batch = next,
                    None => return,
                }
            }
        });
    }

    /// Forwards `batch` (writes for one leader) in one request and hands every caller its own
    /// command's result; a failure of the request itself is every caller's.
    async fn send_forwards(&self, batch: Vec<ForwardedWrite>) {
        let Some((peer, member)) = batch.first().map(|w| (w.peer, w.member.clone())) else {
            return;
        };
        let (mut cmds, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|w| (w.cmd, w.reply)).unzip();
        let single = cmds.len() == 1;
        self.write_forwards.fetch_add(1, Ordering::Relaxed);
        self.forwarded_writes
            .fetch_add(cmds.len() as u64, Ordering::Relaxed);
        let req = match cmds.pop() {
            Some(only) if single => ForwardRequest::Write(only),
            Some(last) => {
                cmds.push(last);
                ForwardRequest::Writes(cmds)
            }
            None => return,
        };
        let deadline = Instant::now() + self.request_timeout;
        match self.forward(peer, &member, &req, deadline).await {
            Ok(None) => {
                for r in replies {
                    let _ = r.send(Ok(None));
                }
            }
            Ok(Some(ForwardReply::Write(applied))) if single => {
                for r in replies {
                    let _ = r.send(Ok(Some(applied.clone())));
                }
            }
            Ok(Some(ForwardReply::Writes(results)))
                if !single && results.len() == replies.len() =>
            {
                for (r, result) in replies.into_iter().zip(results) {
                    let _ = r.send(result.map_err(RaftError::from));
                }
            }
            Ok(Some(other)) => {
                let line = format!("unexpected reply to forwarded writes: {other:?}");
                for r in replies {
                    let _ = r.send(Err(RaftError::Raft(line.clone())));
                }
            }
            Err(RaftError::Raft(line)) if !single && line.starts_with(UNDECODABLE_FORWARD) => {
                // A leader older than `Writes` could not decode the request, so it proposed
                // nothing: during a rolling upgrade each write goes on its own, as before.
                let ForwardRequest::Writes(cmds) = req else {
                    return;
                };
                // One after the other, in their order (only while a member is older).
                for (r, cmd) in replies.into_iter().zip(cmds) {
                    let req = ForwardRequest::Write(cmd);
                    let result = self.forward(peer, &member, &req, deadline).await;
                    let _ = r.send(match result {
                        Ok(None) => Ok(None),
                        Ok(Some(ForwardReply::Write(applied))) => Ok(Some(applied)),
                        Ok(Some(other)) => Err(RaftError::Raft(format!(
                            "unexpected reply to a forwarded write: {other:?}"
                        ))),
                        Err(e) => Err(e),
                    });
                }
            }
            Err(e) => {
                for r in replies {
                    let _ = r.send(Err(copy_of(&e)));
                }
            }
        }
    }

    /// Proposes a follower's forwarded writes here (this member must be the leader).
    /// `Ok(None)`: not the leader, none was proposed.
    async fn local_writes(
        &self,
        cmds: Vec<Command>,
        deadline: Instant,
    ) -> RaftResult<Option<ForwardReply>> {
        if cmds.iter().any(|c| matches!(c, Command::Batch(_))) {
            return Err(RaftError::InvalidArgument(
                "a batch is not a client command".into(),
            ));
        }
        self.transfer_done(deadline).await?;
        let results = tokio::time::timeout_at(deadline, self.batcher.propose_many(cmds))
            .await
            .map_err(|_| RaftError::Timeout)?;
        if results.iter().all(|r| matches!(r, Ok(None))) {
            return Ok(None);
        }
        Ok(Some(ForwardReply::Writes(
            results
                .into_iter()
                .map(|r| r.map_err(|e| e.to_wire()))
                .collect(),
        )))
    }

    /// Runs `req` on the leader, wherever it is, retrying while there is none or it moved.
    async fn on_leader(&self, req: ForwardRequest) -> RaftResult<ForwardReply> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let answered = match self.target(deadline).await? {
                Target::Local => self.local(&req, deadline).await?,
                Target::Remote(peer, member) => match &req {
                    ForwardRequest::Write(cmd) => self
                        .forward_write(peer, member, cmd.clone(), deadline)
                        .await?
                        .map(ForwardReply::Write),
                    _ => self.forward(peer, &member, &req, deadline).await?,
                },
            };
            if let Some(reply) = answered {
                return Ok(reply);
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(RaftError::NoLeader);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Runs `req` on this member, which believes it is the leader. `Ok(None)`: it is not.
    async fn local(
        &self,
        req: &ForwardRequest,
        deadline: Instant,
    ) -> RaftResult<Option<ForwardReply>> {
        match req {
            ForwardRequest::Write(cmd) => Ok(self
                .propose(cmd.clone(), deadline)
                .await?
                .map(ForwardReply::Write)),
            ForwardRequest::ReadIndex => match self
                .read_round(ReadKind::Leader, self.run_leader_round())
                .await?
            {
                Some(index) => Ok(Some(ForwardReply::ReadIndex(index))),
                None => Ok(None),
            },
            ForwardRequest::KeepAlive(id) => {
                if !self.is_leader() {
                    return Ok(None);
                }
                // etcd's `Renew`: a checkpointed lease first clears its checkpoint through the
                // log, so that it does not resume from it after a renewal.
                if self.store.lease_checkpointed_ttl(*id).unwrap_or(0) > 0 {
                    let clear = Command::LeaseCheckpoint {
                        id: *id,
                        remaining_ttl: 0,
                    };
                    if self.propose(clear, deadline).await?.is_none() {
                        return Ok(None);
                    }
                }
                let ttl = self.store.lease_keep_alive(*id).map_err(|e| {
                    match crate::types::CommandError::from_mvcc(&e) {
                        Some(c) => RaftError::Command(c),
                        None => RaftError::Mvcc(e),
                    }
                })?;
                Ok(Some(ForwardReply::KeepAlive(ttl)))
            }
            ForwardRequest::TimeToLive { id, keys } => {
                if !self.is_leader() {
                    return Ok(None);
                }
                match self.store.lease_time_to_live(*id) {
                    Ok(mut info) => {
                        if !keys {
                            info.keys.clear();
                        }
                        Ok(Some(ForwardReply::TimeToLive(Some(info))))
                    }
                    Err(MvccError::LeaseNotFound(_)) => Ok(Some(ForwardReply::TimeToLive(None))),
                    Err(e) => Err(RaftError::Mvcc(e)),
                }
            }
            ForwardRequest::Leases => {
                if !self.is_leader() {
                    return Ok(None);
                }
                Ok(Some(ForwardReply::Leases(self.store.leases())))
            }
            ForwardRequest::Writes(cmds) => self.local_writes(cmds.clone(), deadline).await,
            ForwardRequest::Campaign => {
                // openraft's election at once (a no-op on a leader); the leader stopped its
                // heartbeats and waited for the followers' leader lease to run out, so the
                // votes are not refused for a live leader.
                tracing::info!("campaigning at the leader's request (leader transfer)");
                self.raft.trigger().elect().await.map_err(raft_err)?;
                Ok(Some(ForwardReply::Done))
            }
            ForwardRequest::Membership(change) => {
                let result = tokio::time::timeout_at(deadline, self.change(change.clone())).await;
                match result {
                    Err(_) => Err(RaftError::Timeout),
                    Ok(Ok(())) => Ok(Some(ForwardReply::Done)),
                    Ok(Err(None)) => Ok(None),
                    Ok(Err(Some(e))) => Err(e),
                }
            }
        }
    }

    /// Applies a membership change on this member (the leader). `Err(None)`: not the leader.
    /// A change that arrives while another one is still being committed (openraft changes
    /// membership through a joint configuration; a new member's promotion is one such change)
    /// waits for it and is retried, so back-to-back MemberAdds succeed as in etcd; the
    /// caller's deadline bounds the wait.
    async fn change(&self, change: MembershipChange) -> Result<(), Option<RaftError>> {
        loop {
            match self.change_once(change.clone()).await {
                Err(Some(RaftError::MembershipInProgress)) => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// One attempt of [`Core::change`].
    async fn change_once(&self, change: MembershipChange) -> Result<(), Option<RaftError>> {
        let map = |e: OpenraftError<NodeId, ClientWriteError<NodeId, Member>>| match e {
            OpenraftError::APIError(ClientWriteError::ForwardToLeader(_)) => None,
            OpenraftError::APIError(ClientWriteError::ChangeMembershipError(
                openraft::error::ChangeMembershipError::InProgress(_),
            )) => Some(RaftError::MembershipInProgress),
            other => Some(raft_err(other)),
        };
        match change {
            MembershipChange::AddLearner { id, member } => {
                self.raft
                    .add_learner(id, member, false)
                    .await
                    .map_err(map)?;
            }
            MembershipChange::AddVoter { id, member } => {
                self.raft
                    .add_learner(id, member, false)
                    .await
                    .map_err(map)?;
                // Promoted once it caught up: a voter that is not running yet would stall
                // the joint configuration openraft changes membership through.
                tokio::spawn(promote_when_caught_up(self.raft.clone(), id));
            }
            MembershipChange::Promote { id } => {
                if !caught_up_soon(&self.raft, id).await {
                    // While a change is being committed, wait for it.
                    if membership_in_progress(&self.raft) {
                        return Err(Some(RaftError::MembershipInProgress));
                    }
                    return Err(Some(RaftError::LearnerNotReady(id)));
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(map)?;
            }
            MembershipChange::Remove { id } => {
                let voter = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id);
                if voter {
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(map)?;
                } else {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(map)?;
                }
            }
            MembershipChange::Update { id, member } => {
                self.raft
                    .change_membership(
                        ChangeMembers::SetNodes(BTreeMap::from([(id, member)])),
                        true,
                    )
                    .await
                    .map_err(map)?;
            }
        }
        Ok(())
    }

    /// A barrier round: a read index from the leader, wherever it is.
    async fn run_barrier_round(&self) -> RaftResult<Option<Option<u64>>> {
        match self.on_leader(ForwardRequest::ReadIndex).await? {
            ForwardReply::ReadIndex(index) => Ok(Some(index)),
            other => Err(RaftError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// A leader round: the read index, or `Ok(None)` when this member is not the leader.
    async fn run_leader_round(&self) -> RaftResult<Option<Option<u64>>> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            self.transfer_done(deadline).await?;
            match tokio::time::timeout_at(deadline, self.raft.get_read_log_id()).await {
                Err(_) => return Err(RaftError::Timeout),
                Ok(Ok((read, _))) => return Ok(Some(read.map(|l| l.index))),
                Ok(Err(e)) if e.forward_to_leader().is_some() => return Ok(None),
                // openraft gives the heartbeats of one leadership check a single
                // heartbeat interval: a slow or reconnecting peer fails the check at
                // once. Retry until the deadline, as etcd's ReadIndex does; a leader
                // cut off from its quorum then answers "request timed out".
                Ok(Err(openraft::error::RaftError::APIError(
                    openraft::error::CheckIsLeaderError::QuorumNotEnough(_),
                ))) => {
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(RaftError::Timeout);
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(e)) => return Err(raft_err(e)),
            }
        }
    }

    fn rounds(&self, kind: ReadKind) -> &ReadRounds {
        match kind {
            ReadKind::Barrier => &self.barrier_rounds,
            ReadKind::Leader => &self.leader_rounds,
        }
    }

    /// A read index from a round of `kind` that starts after this call: run by this caller
    /// when none is running, else shared with every read that waits for the next one.
    /// `round` is this kind's round ([`Core::run_barrier_round`] or
    /// [`Core::run_leader_round`]), run only when this caller runs it.
    async fn read_round(
        &self,
        kind: ReadKind,
        round: impl std::future::Future<Output = RaftResult<Option<Option<u64>>>>,
    ) -> RaftResult<Option<Option<u64>>> {
        let rx = self.rounds(kind).join();
        match rx {
            Some(rx) => match rx.await {
                Ok(result) => result.map_err(RaftError::from),
                Err(_) => Err(RaftError::Stopped),
            },
            None => {
                let _turn = RoundTurn { core: self, kind };
                round.await
            }
        }
    }

    /// Ends a turn of `kind`: the reads that joined meanwhile get rounds of their own in a
    /// task, or the rounds stop.
    fn hand_on_rounds(&self, kind: ReadKind) {
        let Some(waiting) = self.rounds(kind).next() else {
            return;
        };
        let (Some(core), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            // The member is going away: the waiting reads see `Stopped`.
            drop(waiting);
            self.rounds(kind).stop();
            return;
        };
        runtime.spawn(async move {
            let turn = RoundTurn { core: &core, kind };
            let mut waiting = waiting;
            loop {
                let result = match kind {
                    ReadKind::Barrier => core.run_barrier_round().await,
                    ReadKind::Leader => core.run_leader_round().await,
                };
                let result = result.map_err(|e| e.to_wire());
                for w in waiting.drain(..) {
                    let _ = w.send(result.clone());
                }
                match core.rounds(kind).next() {
                    Some(next) => waiting = next,
                    None => {
                        // The rounds stopped: nothing to hand on.
                        std::mem::forget(turn);
                        return;
                    }
                }
            }
        });
    }

    /// Waits (until `deadline`) while a leader transfer is under way.
    async fn transfer_done(&self, deadline: Instant) -> RaftResult<()> {
        let mut rx = self.transferring.subscribe();
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(|t| !*t))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Err(_) => Err(RaftError::Timeout),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// etcd's `MoveLeader` on this member: see [`RaftNode::move_leader`].
    async fn move_leader(&self, target: NodeId, deadline: Instant) -> RaftResult<()> {
        let _one = tokio::time::timeout_at(deadline, self.transfer_lock.lock())
            .await
            .map_err(|_| RaftError::LeaderTransferTimeout)?;
        let (leader, voter, member) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                m.current_leader,
                membership.voter_ids().any(|v| v == target),
                membership.get_node(&target).cloned(),
            )
        };
        if !self.is_leader() {
            return Err(RaftError::NotLeader(leader));
        }
        let (true, Some(member)) = (voter, member) else {
            return Err(RaftError::BadLeaderTransferee(target));
        };
        if target == self.id {
            return Ok(());
        }
        tracing::info!(transferee = %format!("{target:x}"), "leadership transfer starting");
        let config = self.raft.config().clone();
        let election_min = Duration::from_millis(config.election_timeout_min);
        // openraft's leader lease: a follower refuses votes for this long after it last heard
        // from the leader, and campaigns on its own only `election_timeout_min..max` later.
        let lease = Duration::from_millis(config.election_timeout_max);
        // From here no proposal and no read index starts (they wait for the end of the
        // transfer, then go to the new leader); the guard lifts that and restores the
        // heartbeats however this ends.
        let _transfer = TransferGuard::start(self);
        let started = Instant::now();
        loop {
            // The transferee must have every entry, or the others refuse their votes.
            self.caught_up(target, deadline).await?;
            self.raft.runtime_config().heartbeat(false);
            // Past the followers' lease, before any of them campaigns on its own.
            tokio::time::sleep_until(Instant::now() + lease + election_min / 4).await;
            if Instant::now() >= deadline {
                break;
            }
            if let Err(e) = self
                .forward(target, &member, &ForwardRequest::Campaign, deadline)
                .await
            {
                tracing::warn!(error = %crate::error_line(&e), "leadership transfer: campaign request failed");
            }
            let wait = (Instant::now() + lease * 2).min(deadline);
            let mut rx = self.raft.metrics();
            let moved =
                tokio::time::timeout_at(wait, rx.wait_for(|m| m.current_leader == Some(target)))
                    .await;
            if let Ok(Ok(_)) = moved {
                tracing::info!(
                    transferee = %format!("{target:x}"),
                    took = ?started.elapsed(),
                    "leadership transfer finished"
                );
                return Ok(());
            }
            if !self.is_leader() || Instant::now() >= deadline {
                break;
            }
            // Still the leader (the votes were refused): heartbeats again, then retry.
            self.raft.runtime_config().heartbeat(true);
        }
        tracing::warn!(transferee = %format!("{target:x}"), "leadership transfer failed");
        Err(RaftError::LeaderTransferTimeout)
    }

    /// Waits (until `deadline`) until member `target` has replicated this leader's whole log.
    async fn caught_up(&self, target: NodeId, deadline: Instant) -> RaftResult<()> {
        let mut rx = self.raft.metrics();
        let waited = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|m| {
                let last = m.last_log_index;
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&target))
                    .is_some_and(|matched| matched.map(|l| l.index) == last)
            }),
        )
        .await;
        match waited {
            Err(_) => Err(RaftError::LeaderTransferTimeout),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Ok(Ok(_)) => Ok(()),
        }
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.id) && m.state == ServerState::Leader
    }
}

impl<B: Backend> ForwardHandler for Core<B> {
    async fn forward(&self, payload: Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
        let wire = |e: WireError| postcard::to_stdvec(&e).unwrap_or_default();
        let req: ForwardRequest = match decode("forwarded request", &payload) {
            Ok(r) => r,
            Err(e) => return Err(wire(e.to_wire())),
        };
        let deadline = Instant::now() + self.request_timeout;
        let answered = match req {
            ForwardRequest::Writes(_) if self.as_older_member.load(Ordering::Relaxed) => {
                // What a member older than `Writes` answers: its decoder knows no variant 7.
                let older = RaftError::Decode {
                    what: "forwarded request",
                    source: postcard::Error::SerdeDeCustom,
                };
                return Err(wire(older.to_wire()));
            }
            ForwardRequest::Writes(cmds) => self.local_writes(cmds, deadline).await,
            req => self.local(&req, deadline).await,
        };
        match answered {
            Ok(Some(reply)) => encode("forwarded reply", &reply).map_err(|e| wire(e.to_wire())),
            Ok(None) => {
                let leader = self.raft.metrics().borrow().current_leader;
                Err(wire(WireError::NotLeader(leader)))
            }
            Err(e) => Err(wire(e.to_wire())),
        }
    }
}

/// Marks a leader transfer under way; at its end (also an early return or a cancelled
/// request) lets proposals through again and restores the heartbeats.
struct TransferGuard<'a, B: Backend>(&'a Core<B>);

impl<'a, B: Backend> TransferGuard<'a, B> {
    fn start(core: &'a Core<B>) -> Self {
        core.transferring.send_replace(true);
        TransferGuard(core)
    }
}

impl<B: Backend> Drop for TransferGuard<'_, B> {
    fn drop(&mut self) {
        self.0.raft.runtime_config().heartbeat(true);
        self.0.transferring.send_replace(false);
    }
}

/// A running member. See the [module docs](self).
pub struct RaftNode<B: Backend> {
    core: Arc<Core<B>>,
    auth: Arc<rusd_auth::AuthStore<B>>,
    log_close: Box<dyn Fn() -> RaftResult<()> + Send + Sync>,
    tasks: parking_lot::Mutex<Tasks>,
    tasks_stop: watch::Sender<bool>,
}

/// The background tasks of a member, taken by [`RaftNode::shutdown`].
#[derive(Default)]
struct Tasks {
    server_stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    lease_task: Option<JoinHandle<()>>,
}

impl<B: Backend> std::fmt::Debug for RaftNode<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.core.id)
            .field("cluster_id", &self.core.cluster_id)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> RaftNode<B> {
    /// Starts the member: opens the raft log and the state machine (replaying the committed
    /// entries the store has not applied yet), starts the peer service on the listener, and
    /// with [`InitialState::New`] initialises the cluster with the initial members (a
    /// one-member cluster elects itself at once).
    pub async fn start(config: RaftNodeConfig<B>) -> RaftResult<Self> {
        let RaftNodeConfig {
            id,
            name: _,
            cluster_id,
            peer_listener,
            initial_members,
            initial_state,
            data_dir,
            backend,
            store_config,
            auth,
            log_engine,
            log_sync,
            raft_config,
            request_timeout,
            lease_check_interval,
            lease_checkpoint_interval,
            peer_url_rewrites,
            peer_tls,
        } = config;
        if initial_state == InitialState::New && !initial_members.contains_key(&id) {
            return Err(RaftError::InvalidArgument(format!(
                "member {id:x} is not among the initial members"
            )));
        }
        let sm = {
            let backend = backend.clone();
            let snapshot_dir = data_dir.join(crate::state_machine::SNAPSHOT_DIR);
            tokio::task::spawn_blocking(move || {
                StateMachine::open_with_snapshot_dir(backend, store_config, auth, snapshot_dir)
            })
            .await
            .map_err(raft_err)??
        };
        let store = sm.store();
        let auth = sm.auth();
        let applied = sm.applied_index();
        let server_tls = peer_tls.as_ref().map(|t| t.server.clone());
        let clients = Arc::new(PeerClients::new(peer_url_rewrites, peer_tls));
        let network = Network::new(cluster_id, clients.clone());
        let raft_config = Arc::new(raft_config.validate().map_err(raft_err)?);
        let (raft, log_close): (Raft, Box<dyn Fn() -> RaftResult<()> + Send + Sync>) =
            match log_engine {
                None => {
                    let dir = data_dir.join("raft-wal");
                    let log = tokio::task::spawn_blocking(move || FileLog::open(dir, log_sync))
                        .await
                        .map_err(raft_err)??;
                    let raft = Raft::new(id, raft_config, network, log.clone(), sm)
                        .await
                        .map_err(raft_err)?;
                    (raft, Box::new(move || Ok(log.close()?)))
                }
                Some(kind) => {
                    let log_dir = data_dir.join("raft-log");
                    let log_backend = tokio::task::spawn_blocking(move || {
                        AnyBackend::open(
                            kind,
                            BackendConfig::new(log_dir)
                                .with_cache_size_mb(LOG_CACHE_MB)
                                .with_durability(Durability::Buffered {
                                    interval: Duration::from_secs(1),
                                }),
                        )
                    })
                    .await
                    .map_err(raft_err)??;
                    let log = LogStore::open(log_backend.clone(), log_sync)?;
                    let raft = Raft::new(id, raft_config, network, log, sm)
                        .await
                        .map_err(raft_err)?;
                    (
                        raft,
                        Box::new(move || {
                            log_backend.flush()?;
                            log_backend.close()?;
                            Ok(())
                        }),
                    )
                }
            };
        let batcher = Arc::new(Batcher {
            raft: raft.clone(),
            timeout: request_timeout,
            queue: SlotQueue::new(take_batch),
        });
        let core = Arc::new_cyclic(|me| Core {
            me: me.clone(),
            barrier_rounds: ReadRounds::default(),
            leader_rounds: ReadRounds::default(),
            id,
            cluster_id,
            raft: raft.clone(),
            batcher,
            forwards: SlotQueue::new(take_forwards),
            write_forwards: AtomicU64::new(0),
            forwarded_writes: AtomicU64::new(0),
            as_older_member: std::sync::atomic::AtomicBool::new(false),
            clients,
            store,
            applied,
            request_timeout,
            transferring: watch::Sender::new(false),
            transfer_lock: tokio::sync::Mutex::new(()),
        });

        let service = RaftPeerServer::new(PeerService {
            cluster_id,
            raft: raft.clone(),
            handler: core.clone(),
        })
        .max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::network::MAX_MESSAGE_BYTES);
        let (server_stop, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            let mut builder = tonic::transport::Server::builder();
            let router = builder.add_service(service);
            let served = match server_tls {
                None => {
                    let incoming = crate::network::plain_incoming(peer_listener);
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
                Some(config) => {
                    let (incoming, accept) = crate::network::tls_incoming(peer_listener, config);
                    let served = router.serve_with_incoming_shutdown(incoming, stop).await;
                    accept.abort();
                    served
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %crate::error_line(&e), "peer service failed");
            }
        });

        if initial_state == InitialState::New {
            let initialized = raft.is_initialized().await.map_err(raft_err)?;
            if !initialized {
                match raft.initialize(initial_members).await {
                    Ok(()) => tracing::info!(id, "initialised a new cluster"),
                    // Another member's initialisation reached us first.
                    Err(OpenraftError::APIError(e)) => {
                        tracing::info!(id, reason = %e, "cluster already initialised")
                    }
                    Err(e) => return Err(raft_err(e)),
                }
            }
        }

        // A lone voter leads at once: its first entry (see "Leadership") is proposed before
        // `start` returns, so the whole log is applied when it starts serving. A member with
        // a log (a new cluster just initialised, or a restart) publishes its membership at
        // once; the wait is generous so that a loaded machine does not leave the first entry
        // to the lease task (which proposes it after its first interval, behind early
        // writes). A member that joins a running cluster has no membership until the leader
        // contacts it: it is not a lone voter and does not wait.
        let has_log = raft.is_initialized().await.map_err(raft_err)?;
        let membership_wait = if has_log {
            LONE_VOTER_WAIT
        } else {
            Duration::ZERO
        };
        let mut rx = raft.metrics();
        let lone = tokio::time::timeout(membership_wait, async {
            loop {
                let voters: BTreeSet<NodeId> = rx
                    .borrow_and_update()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect();
                if !voters.is_empty() {
                    return voters == BTreeSet::from([id]);
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        let mut led = false;
        if lone {
            match core.on_leader(ForwardRequest::Write(Command::Noop)).await {
                Ok(_) => led = true,
                Err(e) => {
                    tracing::warn!(error = %crate::error_line(&e), "leader's first entry failed")
                }
            }
        }

        let (tasks_stop, stop) = watch::channel(false);
        let lease_task = tokio::spawn(lease_expiry(
            core.clone(),
            lease_check_interval,
            lease_checkpoint_interval,
            stop,
            led,
        ));
        Ok(RaftNode {
            core,
            auth,
            log_close,
            tasks: parking_lot::Mutex::new(Tasks {
                server_stop: Some(server_stop),
                server: Some(server),
                lease_task: Some(lease_task),
            }),
            tasks_stop,
        })
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.core.cluster_id
    }

    /// The openraft handle (for what this API does not wrap).
    pub fn raft(&self) -> &Raft {
        &self.core.raft
    }

    /// The store (the same one for the member's whole life: installing a snapshot reloads
    /// it in place).
    pub fn store(&self) -> Arc<MvccStore<B>> {
        self.core.store.clone()
    }

    /// The auth store the replicated auth commands apply to (the same one for the member's
    /// whole life: installing a snapshot recovers it in place).
    pub fn auth(&self) -> Arc<rusd_auth::AuthStore<B>> {
        self.auth.clone()
    }

    /// Proposes `cmd` (on the leader, forwarded when this member is not) and returns the
    /// result of its application. See the [module docs](self#writes).
    pub async fn write(&self, cmd: Command) -> RaftResult<CommandResponse> {
        match self.core.on_leader(ForwardRequest::Write(cmd)).await? {
            ForwardReply::Write(Applied(result)) => result.map_err(RaftError::Command),
            other => Err(RaftError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Waits until a read of the local store is linearizable: ReadIndex (see the
    /// [module docs](self#linearizable-reads-readindex)).
    pub async fn linearizable_barrier(&self) -> RaftResult<()> {
        let deadline = Instant::now() + self.core.request_timeout;
        let index = self
            .core
            .read_round(ReadKind::Barrier, self.core.run_barrier_round())
            .await?
            .flatten();
        let Some(index) = index else {
            return Ok(());
        };
        let wait = self
            .core
            .raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())));
        wait.applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => RaftError::Timeout,
                _ => RaftError::Stopped,
            })
    }

    /// Renews lease `id` on the leader; returns its TTL.
    pub async fn lease_keep_alive(&self, id: i64) -> RaftResult<i64> {
        match self.core.on_leader(ForwardRequest::KeepAlive(id)).await? {
            ForwardReply::KeepAlive(ttl) => Ok(ttl),
            other => Err(RaftError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Lease `id` as the leader knows it (etcd `LeaseTimeToLive`, which a follower forwards
    /// to the leader: only the leader's lessor sees the keep-alives, so only it knows the
    /// remaining TTL); `None` for an unknown lease. `keys`: include the attached keys.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> RaftResult<Option<LeaseInfo>> {
        match self
            .core
            .on_leader(ForwardRequest::TimeToLive { id, keys })
            .await?
        {
            ForwardReply::TimeToLive(info) => Ok(info),
            other => Err(RaftError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Every lease id, ascending, as the leader knows them (etcd `LeaseLeases`).
    pub async fn leases(&self) -> RaftResult<Vec<i64>> {
        match self.core.on_leader(ForwardRequest::Leases).await? {
            ForwardReply::Leases(ids) => Ok(ids),
            other => Err(RaftError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Hands leadership to voter `target` (etcd `MoveLeader`), waiting until this member
    /// sees it as leader. Only the leader can: elsewhere [`RaftError::NotLeader`]; a
    /// `target` that is no voter (unknown, or a learner): [`RaftError::BadLeaderTransferee`];
    /// `target` is this leader: done at once.
    ///
    /// openraft 0.9 has no leader transfer (raft's `TimeoutNow`), and its followers refuse
    /// votes while their leader lease (`election_timeout_max` since they last heard from the
    /// leader) runs. So the leader stops starting proposals and reads, waits until `target`
    /// has its whole log, stops its heartbeats, waits for the followers' leases to run out
    /// and asks `target` to campaign: `target` wins before any other follower's own election
    /// timeout (at least `election_timeout_min` later) fires. Requests that arrive meanwhile
    /// wait and then go to the new leader. If `target` is not leader after two leases, the
    /// leader resumes its heartbeats and tries again, until the request timeout:
    /// [`RaftError::LeaderTransferTimeout`].
    pub async fn move_leader(&self, target: NodeId) -> RaftResult<()> {
        let deadline = Instant::now() + self.core.request_timeout;
        self.core.move_leader(target, deadline).await
    }

    /// Applies a membership change on the leader.
    pub async fn change_membership(&self, change: MembershipChange) -> RaftResult<()> {
        match self
            .core
            .on_leader(ForwardRequest::Membership(change))
            .await?
        {
            ForwardReply::Done => Ok(()),
            other => Err(RaftError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Adds a learner (etcd `MemberAdd --learner`).
    pub async fn add_learner(&self, id: NodeId, member: Member) -> RaftResult<()> {
        self.change_membership(MembershipChange::AddLearner { id, member })
            .await
    }

    /// The current term (cheap: for response headers).
    pub fn term(&self) -> u64 {
        self.core.raft.metrics().borrow().current_term
    }

    /// The leader this member knows of (cheap).
    pub fn leader(&self) -> Option<NodeId> {
        self.core.raft.metrics().borrow().current_leader
    }

    /// Why raft stopped, once it stopped on a fatal error (a failed log write...): the member
    /// then serves no write and no linearizable read until it is restarted.
    pub fn failure(&self) -> Option<String> {
        match &self.core.raft.metrics().borrow().running_state {
            Ok(()) => None,
            Err(e) => Some(crate::error_line(e)),
        }
    }

    /// True when this member is the leader (cheap).
    pub fn is_leader(&self) -> bool {
        self.core.is_leader()
    }

    /// `(last log index, last applied index)` (cheap). Both are at least the index of every
    /// entry whose proposer has been answered (openraft's metrics, published after the
    /// answers, may lag; see [`AppliedIndex`](crate::state_machine::AppliedIndex)).
    pub fn indexes(&self) -> (u64, u64) {
        let applied = self.core.applied.get();
        let m = self.core.raft.metrics();
        let m = m.borrow();
        (
            m.last_log_index.unwrap_or(0).max(applied),
            m.last_applied.map_or(0, |l| l.index).max(applied),
        )
    }

    /// Makes this member answer a follower's batched forwarded writes as a member of a build
    /// older than them does (`cannot decode forwarded request`), so that tests can check the
    /// rolling-upgrade fallback: the follower then forwards each write on its own. Not for
    /// production use.
    #[doc(hidden)]
    pub fn answer_writes_as_older_member(&self, older: bool) {
        self.core.as_older_member.store(older, Ordering::Relaxed);
    }

    /// This member's view of the cluster.
    pub fn metrics(&self) -> RaftNodeMetrics {
        let m = self.core.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        RaftNodeMetrics {
            id: self.core.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            state: m.state,
            voters: membership.voter_ids().collect(),
            members: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            write_forwards: self.core.write_forwards.load(Ordering::Relaxed),
            forwarded_writes: self.core.forwarded_writes.load(Ordering::Relaxed),
        }
    }

    /// Waits until `pred` holds for this member's metrics, at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&RaftNodeMetrics) -> bool,
    ) -> RaftResult<RaftNodeMetrics> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.core.raft.metrics();
        loop {
            let m = self.metrics();
            if pred(&m) {
                return Ok(m);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => return Err(RaftError::Timeout),
                Ok(Err(_)) => return Err(RaftError::Stopped),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Stops the member: openraft, the peer service and the lease task; then flushes and
    /// closes the store and the raft log.
    pub async fn shutdown(&self) -> RaftResult<()> {
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let Some(server_stop) = tasks.server_stop else {
            // Already shut down.
            return Ok(());
        };
        let _ = self.tasks_stop.send(true);
        if let Some(t) = tasks.lease_task {
            let _ = t.await;
        }
        let stopped = self.core.raft.shutdown().await.map_err(raft_err);
        let _ = server_stop.send(());
        if let Some(s) = tasks.server {
            let _ = s.await;
        }
        let store = self.core.store.clone();
        let closed = tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(raft_err)?;
        let log_closed = (self.log_close)();
        closed?;
        log_closed?;
        stopped
    }
}

/// How long a member added as a voter may take to catch up before the leader gives up
/// promoting it (it stays a learner; MemberPromote can finish the job).
const PROMOTION_WINDOW: Duration = Duration::from_secs(600);

/// True when learner `id` is in sync with this member, the leader: its replicated index is
/// within a tenth of the log (at least 10 entries) of the leader's last entry, as etcd's
/// "learner ready" check.
/// [`caught_up`], allowing [`PROGRESS_GRACE`] for the leader to learn the learner's
/// progress: after every membership change the leader rebuilds its replication streams, and
/// a learner's progress is unknown until its stream's first answer.
async fn caught_up_soon(raft: &Raft, id: NodeId) -> bool {
    let deadline = Instant::now() + PROGRESS_GRACE;
    loop {
        if caught_up(raft, id) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// See [`caught_up_soon`].
const PROGRESS_GRACE: Duration = Duration::from_secs(1);

/// True while the newest membership (joint or not) is not applied yet, i.e. not committed.
fn membership_in_progress(raft: &Raft) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    let config = m.membership_config.log_id().map(|l| l.index);
    config > m.last_applied.map(|l| l.index)
}

fn caught_up(raft: &Raft, id: NodeId) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    let Some(repl) = &m.replication else {
        return false;
    };
    let Some(Some(matched)) = repl.get(&id) else {
        return false;
    };
    let last = m.last_log_index.unwrap_or(0);
    last.saturating_sub(matched.index) <= (last / 10).max(10)
}

/// Makes learner `id` a voter once it caught up (while this member leads).
async fn promote_when_caught_up(raft: Raft, id: NodeId) {
    let deadline = Instant::now() + PROMOTION_WINDOW;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (leader, member) = {
            let m = raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                m.state == ServerState::Leader,
                membership.get_node(&id).is_some(),
            )
        };
        if !leader || !member {
            tracing::info!(
                member = id,
                "promotion abandoned (not leader, or member removed)"
            );
            return;
        }
        if !caught_up(&raft, id) {
            continue;
        }
        match raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
        {
            Ok(_) => {
                tracing::info!(member = id, "new member caught up and promoted to voter");
                return;
            }
            Err(e) => tracing::debug!(member = id, error = %e, "promotion failed; retrying"),
        }
    }
    tracing::warn!(
        member = id,
        "new member did not catch up; it stays a learner"
    );
}

/// The leader's lease expiry and checkpoints (see the [module docs](self#leases)).
async fn lease_expiry<B: Backend>(
    core: Arc<Core<B>>,
    interval: Duration,
    checkpoint_interval: Duration,
    mut stop: watch::Receiver<bool>,
    led: bool,
) {
    // `led`: `start` already proposed this leadership's first entry.
    let mut was_leader = led;
    let mut next_checkpoint = Instant::now() + checkpoint_interval;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let leader = core.is_leader();
        if !leader {
            was_leader = false;
            continue;
        }
        let store = core.store.clone();
        if !was_leader {
            // Keep-alives went to the previous leader: start every lease afresh.
            store.lease_refresh_all();
            was_leader = true;
            next_checkpoint = Instant::now() + checkpoint_interval;
            // An entry of this leadership commits (and so applies) every entry before it,
            // also after a restart that restored the leadership of a lone voter in its old
            // term without a new entry (openraft 0.9).
            if let Err(e) = core.on_leader(ForwardRequest::Write(Command::Noop)).await {
                tracing::warn!(error = %crate::error_line(&e), "leader's first entry failed");
            }
            continue;
        }
        for id in store.expired_leases() {
            match core
                .on_leader(ForwardRequest::Write(Command::LeaseRevoke { id }))
                .await
            {
                Ok(_) => tracing::debug!(lease = id, "expired lease revoked"),
                Err(e) => {
                    tracing::warn!(lease = id, error = %crate::error_line(&e), "revoking an expired lease failed");
                    break;
                }
            }
        }
        if !checkpoint_interval.is_zero() && Instant::now() >= next_checkpoint {
            next_checkpoint = Instant::now() + checkpoint_interval;
            checkpoint_leases(&core, checkpoint_interval).await;
        }
    }
}

/// The leases the leader checkpoints now, as [`Command::LeaseCheckpoint`]s: those with more
/// than `interval` left (etcd checkpoints no shorter lease: it would expire before the next
/// round) whose remaining TTL differs from the one they would resume with.
fn due_checkpoints<B: Backend>(store: &MvccStore<B>, interval: Duration) -> Vec<Command> {
    let min = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
    store
        .lease_remaining_ttls()
        .into_iter()
        .filter(|l| l.remaining_ttl > min && l.remaining_ttl != l.resume_ttl())
        .map(|l| Command::LeaseCheckpoint {
            id: l.id,
            remaining_ttl: l.remaining_ttl,
        })
        .collect()
}

/// Proposes the due lease checkpoints on this member, the leader, in entries of up to
/// [`MAX_LEASE_CHECKPOINT_BATCH`]; stops at the first failure (the next round retries).
async fn checkpoint_leases<B: Backend>(core: &Core<B>, interval: Duration) {
    let due = due_checkpoints(&core.store, interval);
    for chunk in due.chunks(MAX_LEASE_CHECKPOINT_BATCH) {
        let cmd = match chunk {
            [one] => one.clone(),
            many => Command::Batch(many.to_vec()),
        };
        match tokio::time::timeout(core.request_timeout, core.raft.client_write(cmd)).await {
            Ok(Ok(_)) => tracing::debug!(leases = chunk.len(), "lease TTLs checkpointed"),
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::error_line(&e), "lease checkpoint not proposed");
                return;
            }
            Err(_) => {
                tracing::warn!("lease checkpoint timed out");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvcc_core::ManualClock;
    use storage_api::MemoryBackend;

    #[test]
    fn read_rounds_share_the_next_round_among_the_reads_that_joined_meanwhile() {
        let rounds = ReadRounds::default();
        // The first read runs a round itself.
        assert!(rounds.join().is_none());
        // Two reads arrive while it runs: they wait for the next round.
        let mut a = rounds.join().expect("a round is running");
        let mut b = rounds.join().expect("a round is running");
        // The round ends: both get the next round, which is still running.
        let next = rounds.next().expect("two reads wait");
        assert_eq!(next.len(), 2);
        // A read arriving during that second round waits for a third.
        let mut c = rounds.join().expect("the second round is running");
        for tx in next {
            tx.send(Ok(Some(Some(7)))).unwrap();
        }
        assert_eq!(a.try_recv().unwrap(), Ok(Some(Some(7))));
        assert_eq!(b.try_recv().unwrap(), Ok(Some(Some(7))));
        assert!(c.try_recv().is_err(), "c waits for the third round");
        let third = rounds.next().expect("c waits");
        assert_eq!(third.len(), 1);
        for tx in third {
            tx.send(Err(WireError::Timeout)).unwrap();
        }
        assert_eq!(c.try_recv().unwrap(), Err(WireError::Timeout));
        // Nobody waits: the rounds stop, and the next read runs one itself.
        assert!(rounds.next().is_none());
        assert!(rounds.join().is_none());
        // Stopping drops the waiting reads' senders: they see the channel closed.
        let mut d = rounds.join().expect("a round is running");
        rounds.stop();
        assert!(matches!(
            d.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(rounds.join().is_none());
    }

    /// A waiting forwarded write of `key` (value of `value_len` bytes) for leader `peer`.
    fn waiting_write(peer: NodeId, key: &str, value_len: usize) -> ForwardedWrite {
        ForwardedWrite {
            peer,
            member: Member::default(),
            cmd: Command::Put(mvcc_core::Put::new(key, vec![b'v'; value_len], 0)),
            reply: oneshot::channel().0,
        }
    }

    fn keys_of(writes: &[ForwardedWrite]) -> Vec<(NodeId, String)> {
        writes
            .iter()
            .map(|w| match &w.cmd {
                Command::Put(p) => (w.peer, String::from_utf8(p.key.clone()).unwrap()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_forwarded_batch_takes_the_first_leaders_writes_in_order_within_its_limits() {
        // The first write's leader; the writes for another leader wait, in order.
        let mut waiting = vec![
            waiting_write(1, "a", 1),
            waiting_write(1, "b", 1),
            waiting_write(2, "c", 1),
            waiting_write(1, "d", 1),
        ];
        let batch = take_forwards(&mut waiting);
        assert_eq!(
            keys_of(&batch),
            vec![(1, "a".into()), (1, "b".into()), (1, "d".into())]
        );
        assert_eq!(keys_of(&waiting), vec![(2, "c".into())]);
        assert_eq!(keys_of(&take_forwards(&mut waiting)), vec![(2, "c".into())]);
        assert!(waiting.is_empty());
        assert!(take_forwards(&mut waiting).is_empty());

        // At most MAX_BATCH commands; the rest wait in their order.
        let mut waiting: Vec<_> = (0..MAX_BATCH + 3)
            .map(|i| waiting_write(1, &format!("k{i:03}"), 1))
            .collect();
        let batch = take_forwards(&mut waiting);
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(
            keys_of(&batch)[MAX_BATCH - 1].1,
            format!("k{:03}", MAX_BATCH - 1)
        );
        assert_eq!(
            keys_of(&waiting),
            (MAX_BATCH..MAX_BATCH + 3)
                .map(|i| (1, format!("k{i:03}")))
                .collect::<Vec<_>>()
        );

        // At most MAX_FORWARD_BYTES, but always one command, however large; a write that
        // does not fit stops the batch (the smaller one after it waits too: order).
        let mib = 1024 * 1024;
        let mut waiting = vec![
            waiting_write(1, "big", MAX_FORWARD_BYTES + 1),
            waiting_write(1, "x", 1),
        ];
        assert_eq!(
            keys_of(&take_forwards(&mut waiting)),
            vec![(1, "big".into())]
        );
        assert_eq!(keys_of(&waiting), vec![(1, "x".into())]);
        let mut waiting = vec![
            waiting_write(1, "m1", mib),
            waiting_write(1, "m2", mib),
            waiting_write(1, "m3", 3 * mib),
            waiting_write(1, "small", 1),
        ];
        assert_eq!(
            keys_of(&take_forwards(&mut waiting)),
            vec![(1, "m1".into()), (1, "m2".into())]
        );
        assert_eq!(
            keys_of(&waiting),
            vec![(1, "m3".into()), (1, "small".into())]
        );
    }

    #[test]
    fn due_checkpoints_are_the_long_leases_whose_remaining_ttl_moved() {
        let clock = ManualClock::new();
        let backend = MemoryBackend::new(BackendConfig::new(PathBuf::new())).unwrap();
        let store =
            MvccStore::with_config(backend, StoreConfig::default().with_clock(clock.clone()))
                .unwrap();
        store.lease_grant(1, 60).unwrap();
        store.lease_grant(2, 6).unwrap();
        store.lease_grant(3, 100).unwrap();
        store.lease_grant(4, 100).unwrap();
        let interval = Duration::from_secs(4);
        // Nothing moved yet.
        assert_eq!(due_checkpoints(&store, interval), Vec::<Command>::new());
        clock.advance(Duration::from_secs(3));
        store.lease_checkpoint(3, 97).unwrap();
        store.lease_checkpoint(4, 50).unwrap();
        // 1: 57 left (full TTL 60); 2: 3 left, not more than the interval; 3: 97 left, as
        // checkpointed; 4: 97 left, checkpointed 50.
        assert_eq!(
            due_checkpoints(&store, interval),
            vec![
                Command::LeaseCheckpoint {
                    id: 1,
                    remaining_ttl: 57
                },
                Command::LeaseCheckpoint {
                    id: 4,
                    remaining_ttl: 97
                },
            ]
        );
    }
}
