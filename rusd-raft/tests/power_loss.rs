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
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvcc_core::{
    AnyBackend, CommitMode, Compaction, DeleteRange, Event, EventKind, KeyValue, MvccStore, Put,
    RequestOp, StoreConfig, Txn,
};
use powerloss_fs::{Image, Mount, Options};
use rusd_raft::{Command, CommandResponse, InitialState, RaftNode, RaftNodeConfig};
use storage_api::{BackendConfig, BackendKind, Durability};
use tokio::net::TcpListener;

const CHILD_ENV: &str = "RUSD_POWER_CHILD";
const DIR_ENV: &str = "RUSD_POWER_DIR";
const CONFIG_ENV: &str = "RUSD_POWER_CONFIG";
use powerloss_fs::harness::{base_seed, freeze_child, fuse_ready, spawn_reader, SEED_ENV};
const CYCLE_ENV: &str = "RUSD_POWER_CYCLE";
/// Keys `k00` .. `k15`.
const KEYS: u64 = 16;
/// Puts per transaction (one revision).
const TXN_WIDTH: usize = 3;
const WRITERS: usize = 3;
const NODE_ID: u64 = 1;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness (no extra dependency).

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Acked {
    Put {
        rev: i64,
        key: String,
        value: String,
    },
    Txn {
        rev: i64,
        value: String,
        keys: Vec<String>,
    },
    Del {
        rev: i64,
        key: String,
    },
}

impl Acked {
    fn rev(&self) -> i64 {
        match self {
            Acked::Put { rev, .. } | Acked::Txn { rev, .. } | Acked::Del { rev, .. } => *rev,
        }
    }

    /// The events the revision must hold, as `(kind, key, value)` sorted.
    fn expected(&self) -> Vec<(EventKind, String, String)> {
        let mut v = match self {
            Acked::Put { key, value, .. } => vec![(EventKind::Put, key.clone(), value.clone())],
            Acked::Txn { value, keys, .. } => keys
                .iter()
                .map(|k| (EventKind::Put, k.clone(), value.clone()))
                .collect(),
            Acked::Del { key, .. } => vec![(EventKind::Delete, key.clone(), String::new())],
        };
        v.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
        v
    }
}

fn summary(events: &[Event]) -> Vec<(EventKind, String, String)> {
    let mut v: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
            )
        })
        .collect();
    v.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
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
            "ACK" => match t[1] {
                "put" => run.acked.push(Acked::Put {
                    rev: t[2].parse().unwrap(),
                    key: t[3].into(),
                    value: t[4].into(),
                }),
                "txn" => run.acked.push(Acked::Txn {
                    rev: t[2].parse().unwrap(),
                    value: t[3].into(),
                    keys: t[4].split(',').map(String::from).collect(),
                }),
                "del" => run.acked.push(Acked::Del {
                    rev: t[2].parse().unwrap(),
                    key: t[3].into(),
                }),
                "compact" => {
                    run.acked_compact = run.acked_compact.max(t[2].parse().unwrap());
                }
                other => panic!("unknown ack {other:?} in {l:?}"),
            },
            other => panic!("unknown line {other:?}: {l:?}"),
        }
    }
    run
}

/// Where in the child's life the power is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// After a random delay of the running workload.
    Anytime,
    /// A few milliseconds after `@@ BEGIN <op>`.
    Op(&'static str),
    /// During start-up (log and store recovery, election), before `@@ READY` or soon after.
    Startup,
}

/// Runs one child on `dir` and cuts the power as `target` says; returns what it printed and
/// the durable image.
#[allow(clippy::too_many_arguments)]
fn run_child(
    mount: Mount,
    dir: &Path,
    log: &Path,
    setup: Setup,
    seed: u64,
    cycle: usize,
    target: Target,
    delay: Duration,
) -> (ChildRun, Image) {
    let stderr = std::fs::File::create(log).unwrap();
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "power_loss_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env(DIR_ENV, dir)
        .env(CONFIG_ENV, setup.name())
        .env(SEED_ENV, seed.to_string())
        .env(CYCLE_ENV, cycle.to_string())
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let (rx, reader) = spawn_reader(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let stderr_text = || std::fs::read_to_string(log).unwrap_or_default();
    let fail = |child: &mut Child, lines: &[String], why: &str| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{} cycle {cycle}: {why}; lines: {lines:?}; stderr:\n{}",
            setup.name(),
            stderr_text()
        );
    };
    if target != Target::Startup {
        let ready_deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = ready_deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    let ready = l.starts_with("@@ READY");
                    let err = l.starts_with("@@ ERR");
                    lines.push(l);
                    if ready {
                        break;
                    }
                    if err {
                        fail(&mut child, &lines, "child failed to start");
                    }
                }
                Err(_) => fail(&mut child, &lines, "child never became ready"),
            }
        }
    }
    let deadline = Instant::now() + delay;
    let mut armed: Option<Instant> = None;
    loop {
        let until = armed.unwrap_or(deadline);
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(l) => {
                if let (Target::Op(op), None) = (target, armed) {
                    if l.starts_with(&format!("@@ BEGIN {op}")) {
                        let jitter = Duration::from_micros(seed % 8000);
                        armed = Some(Instant::now() + jitter);
                    }
                }
                lines.push(l);
            }
            Err(_) => break,
        }
    }
    freeze_child(&child);
    let image = mount.cut_power().unwrap();
    let _ = child.kill(); // SIGKILL, also wakes the stopped process to die
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(9) {
        panic!(
            "{} cycle {cycle}: child ended before the cut ({status}); lines: {lines:?}; \
             stderr:\n{}",
            setup.name(),
            stderr_text()
        );
    }
    (parse_run(lines), image)
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
    let mountpoint = tmp.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let log = tmp.path().join("child.stderr");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut mount = Mount::mount(&mountpoint, Image::default(), Options::new()).unwrap();
    // The first child creates the data directory: its name must be durable too.
    let dir = mount.mountpoint().join("db");
    let mut rng = Rng::new(seed);
    let mut history = History::default();
    let mut out = Outcome::default();
    for cycle in 0..cycles {
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
        let child_seed = rng.next();
        let ctx = format!(
            "{} cycle {cycle} ({target:?}, {SEED_ENV}={seed})",
            setup.name()
        );
        let (run, image) = run_child(mount, &dir, &log, setup, child_seed, cycle, target, delay);
        let key = match target {
            Target::Op(op) => op.to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        let t = out.targets.entry(key).or_default();
        t.0 += 1;
        if let (Target::Op(op), Some(p)) = (target, &run.pending) {
            t.1 += usize::from(p == op);
        }
        out.acked += run.acked.len();
        out.reads += run.reads.len();
        if std::env::var_os("RUSD_POWER_DEBUG").is_some() {
            for (path, entry) in image.tree() {
                let size = match entry {
                    powerloss_fs::Entry::File(d) => d.len().to_string(),
                    powerloss_fs::Entry::Dir => "dir".into(),
                };
                eprintln!("{ctx}: image {}: {size}", path.display());
            }
        }
        mount = Mount::mount(&mountpoint, image, Options::new()).unwrap();
        let mut problems = rt.block_on(restart_and_check(
            &dir,
            setup,
            &run,
            &mut history,
            cycle,
            &ctx,
            &mut out,
        ));
        out.cycles = cycle + 1;
        if !problems.is_empty() {
            if !run.errors.is_empty() {
                problems.push(format!("child errors: {:?}", run.errors));
            }
            out.losses = problems;
            break;
        }
        if !run.errors.is_empty() {
            panic!("{ctx}: the child reported errors: {:?}", run.errors);
        }
    }
    drop(rt);
    mount.unmount().unwrap();
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
            (EventKind::Put, "k01".into(), "T1".into()),
            (EventKind::Put, "k02".into(), "T1".into()),
            (EventKind::Put, "k03".into(), "T1".into()),
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
