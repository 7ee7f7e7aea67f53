//! Crash-recovery harness: a writer in a child process on each engine with a path (the memory
//! engine's image and log too), killed with SIGKILL at random moments, then reopened and
//! checked against a model of every acknowledged operation.
//!
//! # How it works
//! The child is this test binary re-executed (`--exact crash_child_entry`) with
//! `RUSD_CRASH_CHILD=1`. It opens the store with "ack = durable" and runs a seeded random
//! sequence of puts (with and without leases), delete-ranges, write transactions, compactions,
//! lease grants and revokes, snapshot restores and defragmentations. Before an operation starts
//! it prints `@@ BEGIN <op>`; once the operation is acknowledged it prints `@@ ACK <result>`,
//! before the next operation starts. The parent kills it (SIGKILL) either after a random delay
//! or a few milliseconds after it saw a compaction, restore or defragmentation begin.
//!
//! Durability alternates per cycle on the same data directory: even cycles use
//! `Durability::Sync` (every backend write durable when it returns), odd cycles use
//! `Durability::Buffered` (one-hour interval, so nothing is flushed by time) with
//! `CommitMode::GroupSync`.
//!
//! After each kill the parent replays the acknowledged operations on a [`Model`] (and checks every
//! acknowledged result against it), reopens the store and checks:
//! * the store is exactly the model (every acknowledged operation present), or the model plus the
//!   one operation in flight at the kill, applied whole (a txn, delete-range, revoke, compaction or
//!   restore is all or nothing);
//! * the current revision never goes back across cycles, the compaction revision is the model's;
//! * every retained revision (from the compaction revision to the current one) reads exactly the
//!   model's key-values, and reads below the compaction revision fail with `Compacted`;
//! * the `kv` rows of the backend (read through `watch_events`) are exactly the model's events
//!   after the compaction revision, and the index (range at the current revision) matches them;
//! * the leases and their attached keys are the model's.
//!
//! # Running
//! `RUSD_CRASH_CYCLES` sets the cycles per engine (default 50, the CI profile); the long run is
//! `RUSD_CRASH_CYCLES=1000 cargo test --release -p mvcc-core --features redb --test crash_recovery`.
//! `RUSD_CRASH_SEED` replays a run (the seed is printed on stderr).
#![cfg(unix)]

#[path = "common/model.rs"]
mod model;

use powerloss_fs::harness::{collect_until, spawn_reader};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mvcc_core::engine::AnyBackend;
use mvcc_core::{
    CommitMode, Compare, CompareOp, KeyValue, MvccError, MvccStore, StoreConfig, TxnOp,
};
use storage_api::{Backend, BackendConfig, BackendKind, Durability, MemoryBackend};

use model::{Model, Write};

const CHILD_ENV: &str = "RUSD_CRASH_CHILD";
const DIR_ENV: &str = "RUSD_CRASH_DIR";
const ENGINE_ENV: &str = "RUSD_CRASH_ENGINE";
const MODE_ENV: &str = "RUSD_CRASH_MODE";
const SEED_ENV: &str = "RUSD_CRASH_SEED";
const CYCLE_ENV: &str = "RUSD_CRASH_CYCLE";
/// Upper bound of operations per child run (a child normally dies long before).
const MAX_CHILD_OPS: u64 = 20_000;
/// Keys `k00` .. `k11`.
const KEYS: usize = 12;
/// TTL of the leases: they never expire during a run.
const LEASE_TTL: i64 = 1_000_000;

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
        format!("k{:02}", self.range(0, KEYS as u64))
    }
}

// ---------------------------------------------------------------------------------------------
// Operations and their text form.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Group,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Group => "group",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    /// `end`: `-` = the single key, `~` = every key from `key`, else the range end.
    Delete {
        key: String,
        end: String,
    },
    /// `version(ck) == cv ? [put a v, put b v, delete c] : [put d w, delete e]`.
    Txn {
        ck: String,
        cv: i64,
        a: String,
        b: String,
        c: String,
        v: String,
        d: String,
        e: String,
        w: String,
    },
    Compact {
        rev: i64,
    },
    Grant {
        id: i64,
    },
    Revoke {
        id: i64,
    },
    /// Restore a snapshot of the store plus these puts (made on a side copy).
    Restore {
        puts: Vec<(String, String)>,
    },
    Defrag,
}

fn end_bytes(end: &str) -> Vec<u8> {
    match end {
        "-" => Vec::new(),
        "~" => vec![0],
        e => e.as_bytes().to_vec(),
    }
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Delete { .. } => "delete",
            Op::Txn { .. } => "txn",
            Op::Compact { .. } => "compact",
            Op::Grant { .. } => "grant",
            Op::Revoke { .. } => "revoke",
            Op::Restore { .. } => "restore",
            Op::Defrag => "defrag",
        }
    }

    fn to_line(&self) -> String {
        match self {
            Op::Put { key, value, lease } => format!("put {key} {value} {lease}"),
            Op::Delete { key, end } => format!("delete {key} {end}"),
            Op::Txn {
                ck,
                cv,
                a,
                b,
                c,
                v,
                d,
                e,
                w,
            } => format!("txn {ck} {cv} {a} {b} {c} {v} {d} {e} {w}"),
            Op::Compact { rev } => format!("compact {rev}"),
            Op::Grant { id } => format!("grant {id}"),
            Op::Revoke { id } => format!("revoke {id}"),
            Op::Restore { puts } => {
                let p: Vec<String> = puts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("restore {}", p.join(","))
            }
            Op::Defrag => "defrag".into(),
        }
    }

    fn parse(line: &str) -> Op {
        let t: Vec<&str> = line.split(' ').collect();
        let s = |i: usize| t[i].to_string();
        let n = |i: usize| t[i].parse::<i64>().unwrap();
        match t[0] {
            "put" => Op::Put {
                key: s(1),
                value: s(2),
                lease: n(3),
            },
            "delete" => Op::Delete {
                key: s(1),
                end: s(2),
            },
            "txn" => Op::Txn {
                ck: s(1),
                cv: n(2),
                a: s(3),
                b: s(4),
                c: s(5),
                v: s(6),
                d: s(7),
                e: s(8),
                w: s(9),
            },
            "compact" => Op::Compact { rev: n(1) },
            "grant" => Op::Grant { id: n(1) },
            "revoke" => Op::Revoke { id: n(1) },
            "restore" => Op::Restore {
                puts: t[1]
                    .split(',')
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
            },
            "defrag" => Op::Defrag,
            other => panic!("unknown op {other:?} in {line:?}"),
        }
    }

    fn txn_branches(&self) -> (Vec<Write>, Vec<Write>) {
        let Op::Txn {
            a,
            b,
            c,
            v,
            d,
            e,
            w,
            ..
        } = self
        else {
            unreachable!()
        };
        let bs = |x: &String| x.as_bytes().to_vec();
        (
            vec![
                Write::Put(bs(a), bs(v), 0),
                Write::Put(bs(b), bs(v), 0),
                Write::Delete(bs(c), Vec::new()),
            ],
            vec![
                Write::Put(bs(d), bs(w), 0),
                Write::Delete(bs(e), Vec::new()),
            ],
        )
    }

    /// Applies the operation to the model; returns the acknowledgement the store must give.
    fn apply(&self, m: &mut Model) -> String {
        match self {
            Op::Put { key, value, lease } => {
                m.put(key.as_bytes(), value.as_bytes(), *lease).to_string()
            }
            Op::Delete { key, end } => {
                let (rev, n) = m.delete_range(key.as_bytes(), &end_bytes(end));
                format!("{rev} {n}")
            }
            Op::Txn { ck, cv, .. } => {
                let (s, f) = self.txn_branches();
                let (ok, rev) = m.txn_version(ck.as_bytes(), *cv, &s, &f);
                format!("{rev} {}", u8::from(ok))
            }
            Op::Compact { rev } => {
                m.compact(*rev);
                rev.to_string()
            }
            Op::Grant { id } => {
                m.grant(*id);
                id.to_string()
            }
            Op::Revoke { id } => m.revoke(*id).to_string(),
            Op::Restore { puts } => {
                for (k, v) in puts {
                    m.put(k.as_bytes(), v.as_bytes(), 0);
                }
                m.current.to_string()
            }
            Op::Defrag => "-".into(),
        }
    }
}

fn txn_ops(ws: &[Write]) -> Vec<TxnOp> {
    ws.iter()
        .map(|w| match w {
            Write::Put(k, v, l) => TxnOp::put(k.clone(), v.clone(), *l),
            Write::Delete(k, e) => TxnOp::delete(k.clone(), e.clone()),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Configuration shared by child and parent.

fn backend_config(dir: &Path, mode: Mode) -> BackendConfig {
    let durability = match mode {
        Mode::Sync => Durability::Sync,
        Mode::Group => Durability::Buffered {
            interval: Duration::from_secs(3600),
        },
    };
    BackendConfig::new(dir)
        .with_durability(durability)
        .with_cache_size_mb(16)
}

fn store_config(mode: Mode) -> StoreConfig {
    StoreConfig::default()
        // Small batches with a pause: a compaction spans many backend writes and takes a few
        // milliseconds, so kills land inside it.
        .with_compaction_batch_limit(3)
        .with_compaction_sleep_interval(Duration::from_millis(1))
        .with_commit_mode(match mode {
            Mode::Sync => CommitMode::Backend,
            Mode::Group => CommitMode::GroupSync,
        })
}

// ---------------------------------------------------------------------------------------------
// The child.

/// Entry point of the child process; a no-op in a normal test run.
#[test]
fn crash_child_entry() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let kind: BackendKind = std::env::var(ENGINE_ENV).unwrap().parse().unwrap();
    let mode = match std::env::var(MODE_ENV).unwrap().as_str() {
        "sync" => Mode::Sync,
        _ => Mode::Group,
    };
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let cycle: u64 = std::env::var(CYCLE_ENV).unwrap().parse().unwrap();
    child_run(&dir, kind, mode, seed, cycle);
}

fn child_choose(rng: &mut Rng, store: &MvccStore<AnyBackend>, cycle: u64, n: u64) -> Op {
    let value = |tag: &str| format!("c{cycle}{tag}{n}");
    loop {
        let leases = store.leases();
        let op = match rng.range(0, 100) {
            0..=37 => {
                let lease = if !leases.is_empty() && rng.range(0, 4) == 0 {
                    leases[rng.range(0, leases.len() as u64) as usize]
                } else {
                    0
                };
                Op::Put {
                    key: rng.key(),
                    value: value("p"),
                    lease,
                }
            }
            38..=49 => {
                let key = rng.key();
                let end = match rng.range(0, 3) {
                    0 => "-".to_string(),
                    1 => "~".to_string(),
                    _ => rng.key(),
                };
                Op::Delete { key, end }
            }
            50..=74 => {
                let ck = rng.key();
                let version = store
                    .range(ck.as_bytes(), b"", 0, 0, false)
                    .unwrap()
                    .kvs
                    .first()
                    .map_or(0, |kv| kv.version);
                let cv = version + i64::from(rng.range(0, 2) == 0);
                let a = rng.key();
                let mut b = rng.key();
                while b == a {
                    b = rng.key();
                }
                let mut c = rng.key();
                while c == a || c == b {
                    c = rng.key();
                }
                let d = rng.key();
                let mut e = rng.key();
                while e == d {
                    e = rng.key();
                }
                Op::Txn {
                    ck,
                    cv,
                    a,
                    b,
                    c,
                    v: value("t"),
                    d,
                    e,
                    w: value("f"),
                }
            }
            75..=82 => {
                let (cur, comp) = (store.current_revision(), store.compact_revision());
                if comp >= cur {
                    continue;
                }
                let lo = comp.max(0) as u64 + 1;
                Op::Compact {
                    rev: rng.range(lo, cur as u64 + 1) as i64,
                }
            }
            83..=87 => {
                if leases.len() >= 4 {
                    continue;
                }
                Op::Grant {
                    id: leases.last().map_or(1, |m| m + 1),
                }
            }
            88..=92 => {
                if leases.is_empty() {
                    continue;
                }
                Op::Revoke {
                    id: leases[rng.range(0, leases.len() as u64) as usize],
                }
            }
            93..=96 => Op::Restore {
                puts: (0..rng.range(1, 4))
                    .map(|i| (rng.key(), value(&format!("r{i}x"))))
                    .collect(),
            },
            _ => Op::Defrag,
        };
        return op;
    }
}

fn child_run(dir: &Path, kind: BackendKind, mode: Mode, seed: u64, cycle: u64) {
    let backend = AnyBackend::open(kind, backend_config(dir, mode)).unwrap();
    let mut store = MvccStore::with_config(backend.clone(), store_config(mode)).unwrap();
    println!(
        "@@ READY {} {}",
        store.current_revision(),
        store.compact_revision()
    );
    let mut rng = Rng::new(seed);
    for n in 0..MAX_CHILD_OPS {
        let op = child_choose(&mut rng, &store, cycle, n);
        println!("@@ BEGIN {}", op.to_line());
        let ack = match &op {
            Op::Put { key, value, lease } => store
                .put(key.as_bytes(), value.as_bytes(), *lease)
                .unwrap()
                .0
                .to_string(),
            Op::Delete { key, end } => {
                let (rev, deleted) = store.delete_range(key.as_bytes(), &end_bytes(end)).unwrap();
                format!("{rev} {}", deleted.len())
            }
            Op::Txn { ck, cv, .. } => {
                let (s, f) = op.txn_branches();
                let r = store
                    .txn(
                        &[Compare::version(ck.as_bytes(), CompareOp::Equal, *cv)],
                        &txn_ops(&s),
                        &txn_ops(&f),
                    )
                    .unwrap();
                format!("{} {}", r.revision, u8::from(r.succeeded))
            }
            Op::Compact { rev } => {
                store.compact(*rev).unwrap();
                rev.to_string()
            }
            Op::Grant { id } => store.lease_grant(*id, LEASE_TTL).unwrap().id.to_string(),
            Op::Revoke { id } => store.lease_revoke(*id).unwrap().to_string(),
            Op::Restore { puts } => {
                let side = MemoryBackend::volatile();
                side.restore(&backend.snapshot().unwrap()).unwrap();
                let side_store = MvccStore::new(side.clone()).unwrap();
                for (k, v) in puts {
                    side_store.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
                }
                backend.restore(&side.snapshot().unwrap()).unwrap();
                if mode == Mode::Group {
                    // A restore is a backend call, not an MVCC write: make it durable explicitly.
                    backend.flush().unwrap();
                }
                // The index of the old store describes the old content: recover a new one.
                store = MvccStore::with_config(backend.clone(), store_config(mode)).unwrap();
                store.current_revision().to_string()
            }
            Op::Defrag => {
                backend.defragment().unwrap();
                "-".into()
            }
        };
        println!("@@ ACK {ack}");
    }
    println!("@@ DONE");
}

// ---------------------------------------------------------------------------------------------
// The parent.

fn cycles() -> usize {
    std::env::var("RUSD_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

fn base_seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// What one child run printed.
struct ChildRun {
    /// `(current, compact)` the child recovered, if it got that far.
    ready: Option<(i64, i64)>,
    acked: Vec<(Op, String)>,
    pending: Option<Op>,
    done: bool,
}

#[allow(clippy::too_many_arguments)]
fn run_child(
    dir: &Path,
    log: &Path,
    kind: BackendKind,
    mode: Mode,
    seed: u64,
    cycle: usize,
    target: Option<&str>,
    delay: Duration,
) -> ChildRun {
    let stderr = std::fs::File::create(log).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env(DIR_ENV, dir)
        .env(ENGINE_ENV, kind.name())
        .env(MODE_ENV, mode.name())
        .env(SEED_ENV, seed.to_string())
        .env(CYCLE_ENV, cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let (rx, reader) = spawn_reader(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let stderr_text = || std::fs::read_to_string(log).unwrap_or_default();
    // Wait for READY (the child recovers the store first), except when the kill targets the
    // startup (recovery, e.g. resuming an interrupted compaction).
    let ready_deadline = Instant::now() + Duration::from_secs(120);
    while target != Some("startup") {
        let left = ready_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let ready = l.starts_with("@@ READY");
                lines.push(l);
                if ready {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cycle {cycle}: child never became ready; stderr:\n{}",
                    stderr_text()
                );
            }
        }
    }
    // Kill after the delay, or shortly after the targeted operation began.
    collect_until(
        &rx,
        &mut lines,
        delay,
        target,
        Duration::from_micros(seed % 6000),
    );
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let done = lines.iter().any(|l| l == "@@ DONE");
    assert!(
        status.signal() == Some(9) || (done && status.success()),
        "cycle {cycle}: child failed ({status}); stderr:\n{}",
        stderr_text()
    );

    let mut run = ChildRun {
        ready: None,
        acked: Vec::new(),
        pending: None,
        done,
    };
    for l in lines {
        let Some(rest) = l.strip_prefix("@@ ") else {
            continue;
        };
        if let Some(r) = rest.strip_prefix("READY ") {
            let (a, b) = r.split_once(' ').unwrap();
            run.ready = Some((a.parse().unwrap(), b.parse().unwrap()));
        } else if let Some(op) = rest.strip_prefix("BEGIN ") {
            assert!(run.pending.is_none(), "two operations in flight");
            run.pending = Some(Op::parse(op));
        } else if let Some(ack) = rest.strip_prefix("ACK ") {
            let op = run.pending.take().expect("ACK without BEGIN");
            run.acked.push((op, ack.to_string()));
        }
    }
    run
}

/// What a reopened store shows: `(current, compact, leases, key-values at current)`.
type Observed = (i64, i64, Vec<i64>, Vec<KeyValue>);

fn observe(store: &MvccStore<AnyBackend>) -> Observed {
    (
        store.current_revision(),
        store.compact_revision(),
        store.leases(),
        store.range(b"k", b"l", 0, 0, false).unwrap().kvs,
    )
}

fn expected(m: &Model) -> Observed {
    (
        m.current,
        m.compact,
        m.leases.iter().copied().collect(),
        m.kvs(),
    )
}

/// Every check of a reopened store against the model.
fn verify(store: &MvccStore<AnyBackend>, m: &Model, rng: &mut Rng, ctx: &str) {
    assert_eq!(observe(store), expected(m), "{ctx}: state");
    // Every retained revision reads exactly as recorded (all of them when few, else a sample
    // plus the most recent ones).
    let lo = m.compact.max(1);
    let revs: Vec<i64> = if m.current - lo <= 256 {
        (lo..=m.current).collect()
    } else {
        let mut v: Vec<i64> = (0..128)
            .map(|_| rng.range(lo as u64, m.current as u64 + 1) as i64)
            .collect();
        v.extend(m.current - 32..=m.current);
        v.push(lo);
        v
    };
    for r in revs {
        let got = store.range(b"k", b"l", r, 0, false).unwrap();
        let want: Vec<KeyValue> = m.state_at(r).values().cloned().collect();
        assert_eq!(got.kvs, want, "{ctx}: read at revision {r}");
        assert_eq!(got.count, want.len() as i64, "{ctx}: count at {r}");
        assert_eq!(got.revision, m.current, "{ctx}: header revision");
    }
    if m.compact > 1 {
        assert!(
            matches!(
                store.range(b"k", b"l", m.compact - 1, 0, false),
                Err(MvccError::Compacted)
            ),
            "{ctx}: read below the compaction revision"
        );
    }
    // The backend's rows after the compaction revision are exactly the model's events.
    let start = m.compact.max(0) + 1;
    assert_eq!(
        store.watch_events(start).unwrap(),
        m.events_from(start),
        "{ctx}: kv rows after revision {}",
        start - 1
    );
    // Leases and attachments.
    for id in &m.leases {
        assert_eq!(
            store.lease_time_to_live(*id).unwrap().keys,
            m.lease_keys(*id),
            "{ctx}: keys of lease {id}"
        );
    }
}

#[derive(Default, Debug)]
struct Stats {
    acked: usize,
    startup_kills: usize,
    killed_in: BTreeMap<&'static str, (usize, usize)>,
    done: usize,
}

fn crash_cycles(kind: BackendKind) {
    let cycles = cycles();
    let seed = base_seed();
    eprintln!("crash_recovery[{kind}]: {cycles} cycles, {SEED_ENV}={seed}");
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let log = tmp.path().join("child.stderr");
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    let mut stats = Stats::default();
    let mut last_current = 1;
    for cycle in 0..cycles {
        let mode = if cycle % 2 == 0 {
            Mode::Sync
        } else {
            Mode::Group
        };
        let target = match rng.range(0, 9) {
            0 => Some("compact"),
            1 => Some("restore"),
            2 => Some("defrag"),
            3 => Some("txn"),
            4 => Some("startup"),
            _ => None,
        };
        let delay = Duration::from_millis(match target {
            Some("startup") => rng.range(0, 60),
            Some(_) => 1500,
            None => rng.range(5, 300),
        });
        if target == Some("startup") {
            stats.startup_kills += 1;
        }
        let child_seed = rng.next();
        let ctx = format!("{kind} cycle {cycle} ({}, seed {seed})", mode.name());
        let run = run_child(&dir, &log, kind, mode, child_seed, cycle, target, delay);
        if let Some(ready) = run.ready {
            assert_eq!(
                ready,
                (model.current, model.compact),
                "{ctx}: child recovered another revision"
            );
        }
        for (i, (op, ack)) in run.acked.iter().enumerate() {
            let want = op.apply(&mut model);
            assert_eq!(ack, &want, "{ctx}: acknowledgement of op {i} {op:?}");
        }
        stats.acked += run.acked.len();
        if run.done {
            stats.done += 1;
        }

        let backend = AnyBackend::open(kind, backend_config(&dir, Mode::Sync)).unwrap();
        let store = MvccStore::new(backend.clone()).unwrap();
        let seen = observe(&store);
        if let Some(op) = &run.pending {
            let mut with = model.clone();
            op.apply(&mut with);
            let applied = if seen == expected(&with) {
                model = with;
                true
            } else {
                false
            };
            let e = stats.killed_in.entry(op.kind()).or_default();
            e.0 += 1;
            e.1 += usize::from(applied);
            // Not applied: the store must be exactly the acknowledged state.
            assert!(
                applied || seen == expected(&model),
                "{ctx}: in-flight {op:?} half-applied or acknowledged writes lost\n\
                 store: {seen:?}\nbefore: {:?}\nafter: {:?}",
                expected(&model),
                {
                    let mut w = model.clone();
                    op.apply(&mut w);
                    expected(&w)
                }
            );
        }
        assert!(
            store.current_revision() >= last_current,
            "{ctx}: revision went back from {last_current} to {}",
            store.current_revision()
        );
        last_current = store.current_revision();
        verify(&store, &model, &mut rng, &ctx);
        backend.close().unwrap();
        drop(store);
    }
    eprintln!(
        "crash_recovery[{kind}]: {cycles} cycles in {:.1?}, {} acknowledged ops, final revision \
         {} (compacted at {}), runs that finished unkilled: {}, kills aimed at startup: {}, killed in (op: kills, \
         applied): {:?}",
        started.elapsed(),
        stats.acked,
        model.current,
        model.compact,
        stats.done,
        stats.startup_kills,
        stats.killed_in
    );
    assert!(stats.acked > 0, "no operation was ever acknowledged");
}

/// The memory engine's image + append-only log (always compiled).
#[test]
fn crash_recovery_memory() {
    crash_cycles(BackendKind::Memory);
}

#[cfg(feature = "sled")]
#[test]
fn crash_recovery_sled() {
    crash_cycles(BackendKind::Sled);
}

#[cfg(feature = "redb")]
#[test]
fn crash_recovery_redb() {
    crash_cycles(BackendKind::Redb);
}

#[cfg(feature = "rocksdb")]
#[test]
fn crash_recovery_rocksdb() {
    crash_cycles(BackendKind::Rocksdb);
}

/// The harness itself: an operation log replays to the same model, and a pending operation of
/// each kind changes the observable state (so "applied whole" is distinguishable from "not").
#[test]
fn op_lines_round_trip() {
    let ops = [
        Op::Put {
            key: "k01".into(),
            value: "c0p1".into(),
            lease: 3,
        },
        Op::Delete {
            key: "k02".into(),
            end: "~".into(),
        },
        Op::Txn {
            ck: "k01".into(),
            cv: 2,
            a: "k01".into(),
            b: "k02".into(),
            c: "k03".into(),
            v: "v".into(),
            d: "k04".into(),
            e: "k05".into(),
            w: "w".into(),
        },
        Op::Compact { rev: 7 },
        Op::Grant { id: 2 },
        Op::Revoke { id: 2 },
        Op::Restore {
            puts: vec![("k00".into(), "a".into()), ("k01".into(), "b".into())],
        },
        Op::Defrag,
    ];
    for op in ops {
        assert_eq!(Op::parse(&op.to_line()), op);
    }
}
