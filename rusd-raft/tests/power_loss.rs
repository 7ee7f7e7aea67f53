//! Power-loss harness of the raft write path (what `rusd` runs): a lone [`RaftNode`] in a child
//! process on a `powerloss-fs` FUSE mount, the power cut at random moments, then the durable
//! image remounted, the node started again on it and checked against what the child
//! acknowledged and what its reader observed.
//!
//! # How it works
//! The parent mounts a [`powerloss_fs::Mount`] (a file system that loses everything not
//! `fsync`ed) and re-executes this test binary (`--exact power_loss_child_entry`) with
//! `RUSD_POWER_CHILD=1`. The child mounts nothing: it opens the state machine's engine on the
//! mount with `Durability::Buffered` (a one-hour interval: nothing is flushed by time), starts a
//! one-member [`RaftNode`] (`InitialState::New`, peer listener on `127.0.0.1:0`, a snapshot
//! every 60 log entries so that snapshot builds and log purges happen all the time) with the
//! raft log in the log file (`FileLog`) or on an engine (`log_engine`), and runs concurrently:
//! * three writers, through `node.write(Command::...)`: puts, single-key deletes and
//!   transactions putting three keys at one revision, each with a unique value; every
//!   acknowledged write is printed with its revision (`@@ ACK put|txn|del <revision> ...`);
//! * a reader: `linearizable_barrier()` (ReadIndex) then a range of every key in the store,
//!   printed with its revision and every key-value (`@@ READ`);
//! * maintenance: compactions through the log (`Command::Compaction`) and snapshot builds
//!   (`raft().trigger().snapshot()`), each announced with `@@ BEGIN <op>`.
//!
//! The parent cuts the power after a random delay, a few milliseconds after a compaction or a
//! snapshot began, or during the child's start-up: it stops the child (`SIGSTOP`), waits until
//! none of its threads runs, cuts the power (the file system freezes) and kills the child, so
//! every printed line describes something that happened before the cut.
//!
//! The parent then mounts the durable image, starts the node again on it in-process (this must
//! never fail), waits for a ReadIndex barrier (every committed entry applied) and checks:
//! * every acknowledged write is there at its revision with exactly its content;
//! * every revision the reader observed is there with exactly the key-values it saw;
//! * the current revision is not below any acknowledged or observed revision, nor below the
//!   previous cycle's, and the compaction revision is not below an acknowledged compaction;
//! * no transaction is half applied; the history recovered by the previous cycle is unchanged;
//! * a write after the restart gets the revision just above the recovered one, hence above
//!   every acknowledged or observed revision (revisions never go back, are never reused).
//!
//! The next cycle continues from that state. It proves it can fail: the same cycles with the
//! raft log not synced (`log_sync = false`) must report a lost acknowledged write
//! (`power_loss_detects_raft_log_not_synced`).
//!
//! The cut-and-restart loop (child start, the cut at the chosen moment, remount, cut counts by
//! target, seeds, stopping at the first finding) and the model of acknowledged writes are
//! `powerloss_fs::harness`'s ([`power_cycles`](powerloss_fs::harness::power_cycles) over this
//! test's `Driver`, which starts the child, parses its lines and restarts the node and checks it on the
//! remounted image); the other power-loss test shares them.
//!
//! # Running
//! `RUSD_POWER_CUTS` sets the cuts per configuration (default 20, the CI profile); the long run
//! is `RUSD_POWER_CUTS=200 cargo test --release -p rusd-raft --test power_loss`.
//! `RUSD_POWER_SEED` replays a run's choices (not its thread timing); `RUSD_POWER_DEBUG=1` prints
//! the durable tree after each cut and the restarted node's metrics. The `FileLog`
//! configurations found that `FileLog::open` did not fsync the parent of the `raft-wal`
//! directory it creates: the directory's name was never durable and a cut lost the whole log
//! (acknowledged writes lost at the first cut); it does now.
//! Without `/dev/fuse` (or without root and `fusermount3`) the tests are skipped, unless `CI`
//! is set: then they fail.
#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvcc_core::{
    AnyBackend, CommitMode, Compaction, DeleteRange, Event, EventKind, KeyValue, MvccStore, Put,
    RequestOp, StoreConfig, Txn,
};
use rusd_raft::{Command, CommandResponse, InitialState, RaftNode, RaftNodeConfig};
use storage_api::{BackendConfig, BackendKind, Durability};
use tokio::net::TcpListener;

const CONFIG_ENV: &str = "RUSD_POWER_CONFIG";
use powerloss_fs::harness::{
    base_seed, fuse_ready, power_cycles as run_cycles, sort_events, Acked, AckedKind,
    PowerLossDriver, Rng, Target, CHILD_ENV, CYCLE_ENV, DIR_ENV, SEED_ENV,
};
/// Keys `k00` .. `k15`.
const KEYS: u64 = 16;
/// Puts per transaction (one revision).
const TXN_WIDTH: usize = 3;
const WRITERS: usize = 3;
const NODE_ID: u64 = 1;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness: the harness's [`Rng`].

trait KeyRng {
    /// A key of `k00` .. `k15`.
    fn key(&mut self) -> String;
}

impl KeyRng for Rng {
    fn key(&mut self) -> String {
        format!("k{:02}", self.range(0, KEYS))
    }
}

// ---------------------------------------------------------------------------------------------
// Configurations.

/// What the node runs: the state machine's engine, where the raft log lives, whether it is
/// synced, and whether snapshots are built (by policy and by the child's maintenance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Setup {
    engine: BackendKind,
    log_engine: Option<BackendKind>,
    log_sync: bool,
    snapshots: bool,
}

impl Setup {
    fn name(self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.engine.name(),
            self.log_engine.map_or("filelog", |k| k.name()),
            if self.log_sync { "sync" } else { "nosync" },
            if self.snapshots { "snap" } else { "nosnap" }
        )
    }

    fn parse(s: &str) -> Setup {
        let f: Vec<&str> = s.split('/').collect();
        Setup {
            engine: f[0].parse().unwrap(),
            log_engine: (f[1] != "filelog").then(|| f[1].parse().unwrap()),
            log_sync: f[2] == "sync",
            snapshots: f[3] == "snap",
        }
    }
}

/// Starts the node of `setup` on `dir` (the state machine's engine in `dir/member`).
async fn start_node(dir: &Path, setup: Setup) -> Result<RaftNode<AnyBackend>, String> {
    let backend = AnyBackend::open(
        setup.engine,
        BackendConfig::new(dir.join("member"))
            .with_durability(Durability::Buffered {
                interval: Duration::from_secs(3600),
            })
            .with_cache_size_mb(16),
    )
    .map_err(|e| format!("engine open: {e}"))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let mut config = RaftNodeConfig::new(NODE_ID, "m1", listener, dir, backend);
    config.initial_state = InitialState::New;
    config.log_engine = setup.log_engine;
    config.log_sync = setup.log_sync;
    config.request_timeout = Duration::from_secs(30);
    config.store_config = StoreConfig::default()
        .with_commit_mode(CommitMode::Backend)
        // Small batches with a pause: a compaction spans many backend writes.
        .with_compaction_batch_limit(3)
        .with_compaction_sleep_interval(Duration::from_millis(1));
    config.raft_config.heartbeat_interval = 50;
    config.raft_config.election_timeout_min = 150;
    config.raft_config.election_timeout_max = 300;
    config.raft_config.snapshot_policy = if setup.snapshots {
        rusd_raft::openraft::SnapshotPolicy::LogsSinceLast(60)
    } else {
        rusd_raft::openraft::SnapshotPolicy::Never
    };
    config.raft_config.max_in_snapshot_log_to_keep = 10;
    let node = RaftNode::start(config)
        .await
        .map_err(|e| format!("node start: {}", rusd_raft::error_line(&e)))?;
    node.wait_for(Duration::from_secs(30), |m| m.leader == Some(NODE_ID))
        .await
        .map_err(|e| format!("no leader: {e}"))?;
    Ok(node)
}

// ---------------------------------------------------------------------------------------------
// Line formats shared by child and parent.

fn kv_text(kv: &KeyValue) -> String {
    format!(
        "{}={}/{}/{}/{}/{}",
        String::from_utf8_lossy(&kv.key),
        String::from_utf8_lossy(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease
    )
}

fn parse_kv(s: &str) -> KeyValue {
    let (key, rest) = s.split_once('=').unwrap();
    let f: Vec<&str> = rest.split('/').collect();
    KeyValue {
        key: key.as_bytes().to_vec(),
        value: f[0].as_bytes().to_vec(),
        create_revision: f[1].parse().unwrap(),
        mod_revision: f[2].parse().unwrap(),
        version: f[3].parse().unwrap(),
        lease: f[4].parse().unwrap(),
    }
}

/// Writes one line to stdout at once (the parent reads complete lines only).
fn emit(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------------
// The child.

/// Entry point of the child process; a no-op in a normal test run.
#[test]
fn power_loss_child_entry() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let setup = Setup::parse(&std::env::var(CONFIG_ENV).unwrap());
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let cycle: u64 = std::env::var(CYCLE_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(child_run(&dir, setup, seed, cycle));
}

async fn child_run(dir: &Path, setup: Setup, seed: u64, cycle: u64) {
    let node = match start_node(dir, setup).await {
        Ok(n) => Arc::new(n),
        Err(e) => {
            emit(format!("@@ ERR start: {e}"));
            return;
        }
    };
    let store = node.store();
    emit(format!(
        "@@ READY {} {}",
        store.current_revision(),
        store.compact_revision()
    ));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let node = node.clone();
        let seed = seed ^ (w as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
        tasks.push(tokio::spawn(child_writer(node, seed, cycle, w)));
    }
    tasks.push(tokio::spawn(child_reader(node.clone())));
    child_maintenance(&node, seed, setup.snapshots).await;
    for t in tasks {
        t.abort();
    }
    emit("@@ DONE".into());
}

async fn child_writer(node: Arc<RaftNode<AnyBackend>>, seed: u64, cycle: u64, w: usize) {
    let mut rng = Rng::new(seed);
    for n in 0.. {
        let r = match rng.range(0, 10) {
            0..=4 => {
                let key = rng.key();
                let value = format!("c{cycle}w{w}n{n}");
                let cmd = Command::Put(Put::new(key.clone(), value.clone(), 0));
                node.write(cmd).await.map(|resp| match resp {
                    CommandResponse::Put(p) => {
                        Some(format!("@@ ACK put {} {key} {value}", p.revision))
                    }
                    other => Some(format!("@@ ERR writer {w}: put answered {other:?}")),
                })
            }
            5..=7 => {
                let mut keys = BTreeSet::new();
                while keys.len() < TXN_WIDTH {
                    keys.insert(rng.key());
                }
                let value = format!("T{cycle}w{w}n{n}");
                let txn = Txn {
                    compare: Vec::new(),
                    success: keys
                        .iter()
                        .map(|k| RequestOp::Put(Put::new(k.clone(), value.clone(), 0)))
                        .collect(),
                    failure: Vec::new(),
                };
                node.write(Command::Txn(txn)).await.map(|resp| match resp {
                    CommandResponse::Txn(t) => {
                        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                        Some(format!(
                            "@@ ACK txn {} {value} {}",
                            t.revision,
                            keys.join(",")
                        ))
                    }
                    other => Some(format!("@@ ERR writer {w}: txn answered {other:?}")),
                })
            }
            _ => {
                let key = rng.key();
                let cmd = Command::DeleteRange(DeleteRange::new(key.clone(), Vec::new()));
                node.write(cmd).await.map(|resp| match resp {
                    CommandResponse::DeleteRange(d) if d.deleted > 0 => {
                        Some(format!("@@ ACK del {} {key}", d.revision))
                    }
                    CommandResponse::DeleteRange(_) => None,
                    other => Some(format!("@@ ERR writer {w}: delete answered {other:?}")),
                })
            }
        };
        match r {
            Ok(Some(l)) => emit(l),
            Ok(None) => {}
            Err(e) => {
                emit(format!("@@ ERR writer {w}: {}", rusd_raft::error_line(&e)));
                return;
            }
        }
    }
}

async fn child_reader(node: Arc<RaftNode<AnyBackend>>) {
    loop {
        if let Err(e) = node.linearizable_barrier().await {
            emit(format!("@@ ERR reader: {}", rusd_raft::error_line(&e)));
            return;
        }
        match node.store().range(b"k", b"l", 0, 0, false) {
            Ok(r) => {
                let kvs: Vec<String> = r.kvs.iter().map(kv_text).collect();
                emit(format!("@@ READ {} {}", r.revision, kvs.join(" ")));
            }
            Err(e) => {
                emit(format!("@@ ERR reader: {e}"));
                return;
            }
        }
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
}

async fn child_maintenance(node: &RaftNode<AnyBackend>, seed: u64, snapshots: bool) {
    let mut rng = Rng::new(seed ^ 0x5151);
    for _ in 0..2000u64 {
        tokio::time::sleep(Duration::from_millis(rng.range(5, 40))).await;
        if rng.range(0, 3) == 0 && snapshots {
            emit("@@ BEGIN snapshot".into());
            if let Err(e) = node.raft().trigger().snapshot().await {
                emit(format!("@@ ERR maintenance: snapshot: {e}"));
                return;
            }
            continue;
        }
        let store = node.store();
        let (cur, comp) = (store.current_revision(), store.compact_revision().max(0));
        if cur - comp < 8 {
            continue;
        }
        let rev = rng.range(comp as u64 + 1, cur as u64 - 2) as i64;
        emit(format!("@@ BEGIN compact {rev}"));
        let cmd = Command::Compaction(Compaction {
            revision: rev,
            physical: false,
        });
        match node.write(cmd).await {
            Ok(_) => emit(format!("@@ ACK compact {rev}")),
            // Another compaction went past it meanwhile: not an error of the write path.
            Err(rusd_raft::RaftError::Command(_)) => {}
            Err(e) => {
                emit(format!("@@ ERR maintenance: {}", rusd_raft::error_line(&e)));
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: one child run, cut at the chosen moment.

/// What one child run printed.
#[derive(Default)]
struct ChildRun {
    ready: Option<(i64, i64)>,
    acked: Vec<Acked>,
    /// `(revision, key-values)` of each read.
    reads: Vec<(i64, Vec<KeyValue>)>,
    acked_compact: i64,
    /// Maintenance operation begun last.
    pending: Option<String>,
    errors: Vec<String>,
}

/// `events` as [`Acked::expected`] describes a revision.
fn summary(events: &[Event]) -> Vec<(AckedKind, String, String)> {
    let mut v: Vec<_> = events
        .iter()
        .map(|e| {
            (
                match e.kind {
                    EventKind::Put => AckedKind::Put,
                    EventKind::Delete => AckedKind::Delete,
                },
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
            )
        })
        .collect();
    sort_events(&mut v);
    v
}

fn parse_run(lines: Vec<String>) -> ChildRun {
    let mut run = ChildRun::default();
    for l in lines {
        let Some(rest) = l.strip_prefix("@@ ") else {
            continue;
        };
        let t: Vec<&str> = rest.split(' ').collect();
        match t[0] {
            "READY" => run.ready = Some((t[1].parse().unwrap(), t[2].parse().unwrap())),
            "DONE" => {}
            "ERR" => run.errors.push(rest.to_string()),
            "BEGIN" => run.pending = Some(t[1].to_string()),
            "READ" => {
                let kvs = t[2..].iter().filter(|s| !s.is_empty()).map(|s| parse_kv(s));
                run.reads.push((t[1].parse().unwrap(), kvs.collect()));
            }
            "ACK" => match (Acked::parse(&t[1..]), t[1]) {
                (Some(a), _) => run.acked.push(a),
                (None, "compact") => {
                    run.acked_compact = run.acked_compact.max(t[2].parse().unwrap());
                }
                (None, other) => panic!("unknown ack {other:?} in {l:?}"),
            },
            other => panic!("unknown line {other:?}: {l:?}"),
        }
    }
    run
}

// ---------------------------------------------------------------------------------------------
// The parent: checks of the restarted node.

/// What the previous cycles established.
#[derive(Default)]
struct History {
    /// The current revision after the previous cycle's restart (and its write).
    current: i64,
    /// The events recovered last time, above its compaction revision.
    events: BTreeMap<i64, Vec<Event>>,
}

/// Every check of the restarted store against one child run; the history advances to what was
/// recovered when nothing was found.
fn verify(
    store: &MvccStore<AnyBackend>,
    run: &ChildRun,
    history: &mut History,
    ctx: &str,
) -> Vec<String> {
    let mut f = Vec::new();
    let cur = store.current_revision();
    let comp = store.compact_revision();
    let max_acked = run.acked.iter().map(Acked::rev).max().unwrap_or(0);
    let max_read = run.reads.iter().map(|r| r.0).max().unwrap_or(0);
    for (what, rev) in [
        ("the previous cycle's revision", history.current),
        ("an acknowledged revision", max_acked),
        ("a revision the reader observed", max_read),
    ] {
        if cur < rev {
            f.push(format!(
                "{ctx}: recovered revision {cur} is below {what} ({rev})"
            ));
        }
    }
    if let Some((ready_cur, _)) = run.ready {
        if ready_cur < history.current {
            f.push(format!(
                "{ctx}: the child recovered revision {ready_cur} below the previous {}",
                history.current
            ));
        }
    }
    if run.acked_compact > 0 && comp < run.acked_compact {
        f.push(format!(
            "{ctx}: compaction revision {comp} below the acknowledged compaction {}",
            run.acked_compact
        ));
    }
    let rows = match store.watch_events(comp + 1) {
        Ok(e) => e,
        Err(e) => {
            f.push(format!("{ctx}: watch_events({}) failed: {e}", comp + 1));
            return f;
        }
    };
    let mut events: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    for e in rows {
        events.entry(e.kv.mod_revision).or_default().push(e);
    }
    for (rev, want) in history.events.range(comp + 1..) {
        if events.get(rev) != Some(want) {
            f.push(format!(
                "{ctx}: revision {rev} recovered earlier as {want:?} is now {:?}",
                events.get(rev)
            ));
        }
    }
    for a in &run.acked {
        if a.rev() <= comp {
            continue;
        }
        let got = events.get(&a.rev()).map(|e| summary(e));
        if got.as_ref() != Some(&a.expected()) {
            f.push(format!(
                "{ctx}: acknowledged {a:?} lost: revision {} holds {got:?}",
                a.rev()
            ));
        }
    }
    for (rev, kvs) in &run.reads {
        if *rev < comp.max(1) || *rev > cur {
            continue; // below: compacted; above: reported already
        }
        match store.range(b"k", b"l", *rev, 0, false) {
            Ok(r) if &r.kvs == kvs => {}
            Ok(r) => f.push(format!(
                "{ctx}: the reader saw at revision {rev} {kvs:?}, the store now holds {:?}",
                r.kvs
            )),
            Err(e) => f.push(format!("{ctx}: range at observed revision {rev}: {e}")),
        }
    }
    // No half-applied transaction: a revision holding a transaction value holds exactly its
    // puts.
    for (rev, evs) in &events {
        let txn_values: BTreeSet<&[u8]> = evs
            .iter()
            .filter(|e| e.kv.value.first() == Some(&b'T'))
            .map(|e| e.kv.value.as_slice())
            .collect();
        if !txn_values.is_empty()
            && (txn_values.len() != 1
                || evs.len() != TXN_WIDTH
                || evs.iter().any(|e| e.kind != EventKind::Put))
        {
            f.push(format!(
                "{ctx}: revision {rev} holds a partial transaction: {evs:?}"
            ));
        }
    }
    if f.is_empty() {
        history.current = cur;
        history.events = events;
    }
    f
}

#[derive(Debug, Default)]
struct Outcome {
    cycles: usize,
    acked: usize,
    reads: usize,
    /// Cuts by target: (cuts, cuts with that operation begun last).
    targets: BTreeMap<String, (usize, usize)>,
    /// Problems of the first cycle that had any.
    losses: Vec<String>,
    final_revision: i64,
    final_compact: i64,
}

/// This test's side of the harness's cut-and-restart loop: a lone node in the child, the node
/// started again in-process on the remounted image and checked.
struct Driver {
    setup: Setup,
    rt: tokio::runtime::Runtime,
    history: History,
    out: Outcome,
}

impl PowerLossDriver for Driver {
    type Run = ChildRun;

    fn name(&self) -> String {
        self.setup.name()
    }

    fn child_env(&self) -> Vec<(String, String)> {
        vec![(CONFIG_ENV.into(), self.setup.name())]
    }

    fn ready_timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn choose(&self, rng: &mut Rng) -> (Target, Duration) {
        let target = match rng.range(0, 10) {
            0 | 1 => Target::Op("compact"),
            2 | 3 => Target::Op("snapshot"),
            4 => Target::Startup,
            _ => Target::Anytime,
        };
        let delay = Duration::from_millis(match target {
            Target::Startup => rng.range(0, 300),
            Target::Op(_) => 1500,
            Target::Anytime => rng.range(5, 400),
        });
        (target, delay)
    }

    fn parse(&self, lines: Vec<String>) -> ChildRun {
        parse_run(lines)
    }

    fn pending<'a>(&self, run: &'a ChildRun) -> Option<&'a str> {
        run.pending.as_deref()
    }

    fn errors<'a>(&self, run: &'a ChildRun) -> &'a [String] {
        &run.errors
    }

    fn exit_ok(&self, _status: ExitStatus, _run: &ChildRun) -> bool {
        false
    }

    fn errors_fail_clean_cycle(&self) -> bool {
        true
    }

    fn check(&mut self, dir: &Path, run: &ChildRun, cycle: usize, ctx: &str) -> Vec<String> {
        self.out.acked += run.acked.len();
        self.out.reads += run.reads.len();
        self.rt.block_on(restart_and_check(
            dir,
            self.setup,
            run,
            &mut self.history,
            cycle,
            ctx,
            &mut self.out,
        ))
    }
}

/// Restarts the node on the remounted image, checks it and writes once; returns the problems.
async fn restart_and_check(
    dir: &Path,
    setup: Setup,
    run: &ChildRun,
    history: &mut History,
    cycle: usize,
    ctx: &str,
    out: &mut Outcome,
) -> Vec<String> {
    // Always started with the log synced: the check is about what the cut left.
    let node = match start_node(
        dir,
        Setup {
            log_sync: true,
            ..setup
        },
    )
    .await
    {
        Ok(n) => n,
        // A failed restart is a finding (of the broken variant, or a bug): the run stops.
        Err(e) => return vec![format!("{ctx}: restart failed: {e}")],
    };
    if let Err(e) = node.linearizable_barrier().await {
        let _ = node.shutdown().await;
        return vec![format!("{ctx}: read barrier after restart failed: {e}")];
    }
    let store = node.store();
    if std::env::var_os("RUSD_POWER_DEBUG").is_some() {
        eprintln!(
            "{ctx}: restarted: {:?}, revision {}",
            node.metrics(),
            store.current_revision()
        );
    }
    let mut problems = verify(&store, run, history, ctx);
    if problems.is_empty() {
        // A write after the restart takes the next revision: above everything acknowledged
        // or observed, never one of theirs.
        let before = store.current_revision();
        let value = format!("R{cycle}");
        match node
            .write(Command::Put(Put::new("k00", value.clone(), 0)))
            .await
        {
            Ok(CommandResponse::Put(p)) if p.revision == before + 1 => {
                history.current = p.revision;
                let ev = store.watch_events(p.revision).unwrap_or_default();
                history.events.insert(p.revision, ev);
            }
            other => problems.push(format!(
                "{ctx}: the write after the restart at revision {before} answered {other:?}"
            )),
        }
    }
    out.final_revision = store.current_revision();
    out.final_compact = store.compact_revision();
    drop(store);
    if let Err(e) = node.shutdown().await {
        panic!("{ctx}: shutdown failed: {e}");
    }
    problems
}

/// Runs up to `cycles` power cuts of `setup`; stops at the first cycle that finds a loss.
fn power_cycles(setup: Setup, cycles: usize, seed: u64) -> Outcome {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut driver = Driver {
        setup,
        rt,
        history: History::default(),
        out: Outcome::default(),
    };
    let done = run_cycles(&mut driver, tmp.path(), cycles, seed);
    let Driver { rt, mut out, .. } = driver;
    drop(rt);
    out.cycles = done.cycles;
    out.targets = done.targets;
    out.losses = done.losses;
    eprintln!(
        "power_loss[{}]: {} cuts in {:.1?} ({SEED_ENV}={seed}): {} acknowledged writes and {} \
         reads checked, final revision {} (compacted at {}), cuts by target (cuts, with the op \
         begun): {:?}, losses: {}",
        setup.name(),
        out.cycles,
        started.elapsed(),
        out.acked,
        out.reads,
        out.final_revision,
        out.final_compact,
        out.targets,
        out.losses.len()
    );
    out
}

/// The harness on a correct configuration: no loss in any cycle.
fn no_loss(setup: Setup) {
    let seed = base_seed();
    let out = power_cycles(setup, powerloss_fs::harness::cuts(20), seed);
    assert!(
        out.losses.is_empty(),
        "power_loss[{}]: {} problem(s) at cycle {}:\n{}",
        setup.name(),
        out.losses.len(),
        out.cycles - 1,
        out.losses.join("\n")
    );
    assert!(out.acked > 0, "no write was ever acknowledged");
    assert!(out.reads > 0, "no read was ever observed");
}

/// The harness on a broken configuration: it must report a loss within `max_cuts` cuts.
fn detects_loss(setup: Setup, max_cuts: usize) {
    let seed = base_seed();
    let out = power_cycles(setup, max_cuts, seed);
    assert!(
        !out.losses.is_empty(),
        "power_loss[{}]: the harness found no loss in {max_cuts} cuts of a broken node \
         ({SEED_ENV}={seed})",
        setup.name()
    );
    assert!(
        out.losses.iter().any(|l| l.contains(": acknowledged ")),
        "power_loss[{}]: the findings name no lost acknowledged write: {:?}",
        setup.name(),
        out.losses
    );
    eprintln!(
        "power_loss[{}]: loss detected at cut {}: {}",
        setup.name(),
        out.cycles,
        out.losses[0]
    );
}

/// The raft log in its own file (rusd's default).
#[test]
fn power_loss_raft_sled_file_log() {
    if fuse_ready("power_loss_raft_sled_file_log") {
        no_loss(Setup {
            engine: BackendKind::Sled,
            log_engine: None,
            log_sync: true,
            snapshots: true,
        });
    }
}

/// The raft log in its own file (rusd's default).
#[test]
fn power_loss_raft_redb_file_log() {
    if fuse_ready("power_loss_raft_redb_file_log") {
        no_loss(Setup {
            engine: BackendKind::Redb,
            log_engine: None,
            log_sync: true,
            snapshots: true,
        });
    }
}

#[test]
fn power_loss_raft_sled_sled_log() {
    if fuse_ready("power_loss_raft_sled_sled_log") {
        no_loss(Setup {
            engine: BackendKind::Sled,
            log_engine: Some(BackendKind::Sled),
            log_sync: true,
            snapshots: true,
        });
    }
}

/// The raft log not synced (`log_sync = false`): acknowledged writes are lost at a cut, and
/// the harness must name one within 20 cuts. Without snapshots (which flush the store and
/// rewrite the log), so that nothing but the log's sync makes a write durable.
#[test]
fn power_loss_detects_raft_log_not_synced() {
    if fuse_ready("power_loss_detects_raft_log_not_synced") {
        detects_loss(
            Setup {
                engine: BackendKind::Sled,
                log_engine: None,
                log_sync: false,
                snapshots: false,
            },
            20,
        );
    }
}

/// The line formats and the configuration names round-trip.
#[test]
fn power_loss_lines_round_trip() {
    let kv = KeyValue {
        key: b"k03".to_vec(),
        value: b"c1w2n3".to_vec(),
        create_revision: 4,
        mod_revision: 9,
        version: 2,
        lease: 0,
    };
    assert_eq!(kv_text(&kv), "k03=c1w2n3/4/9/2/0");
    assert_eq!(parse_kv(&kv_text(&kv)), kv);
    let setup = Setup {
        engine: BackendKind::Sled,
        log_engine: Some(BackendKind::Redb),
        log_sync: false,
        snapshots: true,
    };
    assert_eq!(setup.name(), "sled/redb/nosync/snap");
    assert_eq!(Setup::parse(&setup.name()), setup);
    let run = parse_run(vec![
        "@@ READY 5 2".into(),
        "@@ ACK put 6 k01 v".into(),
        "@@ ACK txn 7 T1 k01,k02,k03".into(),
        "@@ BEGIN compact 4".into(),
        "@@ ACK compact 4".into(),
        "@@ READ 7 k01=T1/6/7/2/0 k02=T1/7/7/1/0".into(),
        "@@ BEGIN snapshot".into(),
    ]);
    assert_eq!(run.ready, Some((5, 2)));
    assert_eq!(
        run.acked[0],
        Acked::Put {
            rev: 6,
            key: "k01".into(),
            value: "v".into()
        }
    );
    assert_eq!(
        run.acked[1].expected(),
        vec![
            (AckedKind::Put, "k01".into(), "T1".into()),
            (AckedKind::Put, "k02".into(), "T1".into()),
            (AckedKind::Put, "k03".into(), "T1".into()),
        ]
    );
    assert_eq!(run.acked_compact, 4);
    assert_eq!(
        run.reads,
        vec![(
            7,
            vec![parse_kv("k01=T1/6/7/2/0"), parse_kv("k02=T1/7/7/1/0"),]
        )]
    );
    assert_eq!(run.pending.as_deref(), Some("snapshot"));
}
