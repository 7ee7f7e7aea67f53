//! Fault tests of a three-member cluster with a linearizability check (issue #11, item 7).
//!
//! Three `rusd` processes on loopback; every member reaches every other member through its
//! own [`Proxy`] (six directed links, set up with `--peer-url-rewrite`), so that a test can
//! partition any member. Clients (`etcd-client`, each bound to a random member) run a
//! register workload (put, linearizable get, compare-and-set txn) on a few fresh keys per
//! run while faults are injected: the leader or a follower isolated (its four links cut),
//! a member paused (SIGSTOP/SIGCONT), a member killed (SIGKILL) and restarted. After every
//! run the cluster is healed and must converge; the recorded history is checked per key
//! with the Wing–Gong–Lowe checker of `rusd-testkit` (writes whose outcome the client does
//! not know are recorded as possibly applied), and every member must serve the same final
//! values. While a member is isolated, a put and a linearizable get sent to it must not
//! succeed, while the majority elects a leader (if needed) and keeps committing.
//!
//! `RUSD_LIN_RUNS` (default 100) sets the number of runs; `RUSD_LIN_SEED` the seed (printed
//! at the start and on failure). A failing run's history is written as JSON to the
//! temporary directory and the members' logs are kept.
//!
//! `the_checker_catches_stale_reads_from_an_isolated_member` proves the harness can fail:
//! serializable reads from an isolated member, recorded as linearizable reads, make the
//! checker report a violation.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use rusd_testkit::cluster::{ClusterState, Member as Server};
use rusd_testkit::history::History;
use rusd_testkit::linearizability::{
    check_kv, Budget, CheckResult, KvInput, RegisterInput, RegisterOutput,
};
use rusd_testkit::proxy::Proxy;

const RUSD: &str = env!("CARGO_BIN_EXE_rusd");
const TOKEN: &str = "rusd-faults";
const HEARTBEAT_MS: u64 = 30;
/// A member campaigns after 200-400 ms without a leader.
const ELECTION_MS: u64 = 200;
/// A new leader must be agreed by the majority within this bound after a leader fault
/// (10 maximal election timeouts; leaves room for split votes on a loaded machine).
const ELECTION_BOUND: Duration = Duration::from_secs(4);
/// Client timeout of a workload operation.
const OP_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a request to an isolated member is given to (wrongly) succeed.
const PROBE_TIMEOUT: Duration = Duration::from_millis(600);
/// Keys per run.
const KEYS: usize = 3;
/// Workload clients per run.
const WORKERS: u64 = 4;

type In = KvInput<String, u64>;
type Out = RegisterOutput<u64>;
type Hist = History<In, Out>;

/// SplitMix64: a small deterministic generator for the fault schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

struct Member {
    id: u64,
    server: Server,
}

impl Member {
    fn endpoint(&self) -> String {
        self.server.endpoint()
    }
}

/// Three members, six proxies, one client per member. Dropping it stops everything; after
/// a panic the members' directories (data and logs) are kept and their path printed.
struct Cluster {
    members: Vec<Member>,
    /// `links[i][j]`: the proxy member `i` dials to reach member `j`.
    links: Vec<Vec<Option<Proxy>>>,
    clients: Arc<RwLock<Vec<Client>>>,
    tmp: Option<tempfile::TempDir>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.server.resume();
            let _ = m.server.kill();
        }
        if std::thread::panicking() {
            if let Some(tmp) = self.tmp.take() {
                eprintln!("member directories kept in {}", tmp.keep().display());
            }
        }
    }
}

impl Cluster {
    async fn start() -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("rusd-faults-")
            .tempdir()
            .unwrap();
        let backends = ["sled", "redb", "memory"];
        let servers: Vec<Server> = (0..3)
            .map(|i| {
                Server::new(RUSD, tmp.path(), &format!("m{}", i + 1))
                    .unwrap()
                    .backend(backends[i])
                    .token(TOKEN)
                    .timing(HEARTBEAT_MS, ELECTION_MS)
            })
            .collect();
        let initial = rusd_testkit::cluster::initial_cluster(&servers);
        let peer_urls: Vec<String> = servers.iter().map(Server::peer_url).collect();
        let mut links: Vec<Vec<Option<Proxy>>> = Vec::new();
        for i in 0..3 {
            links.push(
                (0..3)
                    .map(|j| {
                        (i != j).then(|| {
                            Proxy::start(([127, 0, 0, 1], servers[j].peer_port()).into()).unwrap()
                        })
                    })
                    .collect(),
            );
        }
        let mut members = Vec::new();
        for (i, mut server) in servers.into_iter().enumerate() {
            for (j, link) in links[i].iter().enumerate() {
                if let Some(p) = link {
                    server = server.arg("--peer-url-rewrite").arg(format!(
                        "{}=http://{}",
                        peer_urls[j],
                        p.addr()
                    ));
                }
            }
            server.spawn(&initial, ClusterState::New).unwrap();
            members.push(Member {
                id: rusd_raft::member_id(std::slice::from_ref(&peer_urls[i]), TOKEN),
                server,
            });
        }
        let cluster = Cluster {
            members,
            links,
            clients: Arc::new(RwLock::new(Vec::new())),
            tmp: Some(tmp),
        };
        let mut clients = Vec::new();
        for m in &cluster.members {
            m.server.wait_client(Duration::from_secs(30)).unwrap();
            clients.push(common::connect_to(&m.endpoint()).await);
        }
        *cluster.clients.write().unwrap() = clients;
        cluster
            .leader(&[0, 1, 2], None, Duration::from_secs(20))
            .await;
        cluster
    }

    fn client(&self, i: usize) -> Client {
        self.clients.read().unwrap()[i].clone()
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// Status of member `i` (leader id, term), or `None` if it does not answer in 300 ms.
    async fn status(&self, i: usize) -> Option<(u64, u64, u64)> {
        let mut c = self.client(i);
        match tokio::time::timeout(Duration::from_millis(300), c.status()).await {
            Ok(Ok(s)) => Some((s.leader(), s.raft_term(), s.raft_applied_index())),
            _ => None,
        }
    }

    /// The leader every member of `among` reports, once they agree on one that is not
    /// `not`; its index and term.
    async fn leader(&self, among: &[usize], not: Option<usize>, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for &i in among {
                seen.push(self.status(i).await);
            }
            if let Some(Some((leader, term, _))) = seen.first().cloned() {
                let agreed = seen
                    .iter()
                    .all(|s| s.is_some_and(|(l, t, _)| l == leader && t == term));
                if let Some(li) = self.index_of(leader) {
                    if agreed && Some(li) != not {
                        return (li, term);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "members {among:?} agreed on no leader (other than {not:?}) within {within:?}: \
                 {seen:x?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Cuts (or heals) every link to and from member `i`.
    fn isolate(&self, i: usize, cut: bool) {
        for j in 0..3 {
            for (a, b) in [(i, j), (j, i)] {
                if let Some(p) = &self.links[a][b] {
                    if cut {
                        p.cut().unwrap();
                    } else {
                        p.heal();
                    }
                }
            }
        }
    }

    /// Waits until all three members agree on the leader and have applied the same index
    /// twice in a row (nothing in flight).
    async fn converge(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            let mut seen = Vec::new();
            for i in 0..3 {
                seen.push(self.status(i).await);
            }
            let first = seen[0];
            if first.is_some_and(|(l, _, _)| l != 0) && seen.iter().all(|s| *s == first) {
                if last == first {
                    return;
                }
                last = first;
            } else {
                last = None;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not converge within {within:?}: {seen:x?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts member `i` (killed) and reconnects its client.
    async fn restart(&mut self, i: usize) {
        self.members[i].server.restart().unwrap();
        self.members[i]
            .server
            .wait_client(Duration::from_secs(30))
            .unwrap();
        let c = common::connect_to(&self.members[i].endpoint()).await;
        self.clients.write().unwrap()[i] = c;
    }
}

fn value_of(kvs: &[etcd_client::KeyValue]) -> Option<u64> {
    kvs.first().map(|kv| {
        kv.value_str()
            .unwrap()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("value {:?}: {e}", kv.value()))
    })
}

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Answer<T> {
    Ok(T),
    /// The server answered with this error message.
    Error(String),
    /// No answer within the client's timeout.
    TimedOut,
}

async fn answer<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Answer<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Answer::Ok(v),
        Ok(Err(etcd_client::Error::GRpcStatus(s))) => Answer::Error(s.message().to_string()),
        Ok(Err(e)) => Answer::Error(e.to_string()),
        Err(_) => Answer::TimedOut,
    }
}

/// A put recorded in `h`: ok when acknowledged, otherwise possibly applied (info).
async fn put(h: &Hist, who: u64, c: &mut Client, key: &str, v: u64, t: Duration) -> Answer<()> {
    let op = h.invoke(
        who,
        KvInput {
            key: key.to_string(),
            op: RegisterInput::Write(v),
        },
    );
    match answer(t, c.put(key, v.to_string(), None)).await {
        Answer::Ok(_) => {
            op.ok(RegisterOutput::Written);
            Answer::Ok(())
        }
        other => {
            op.info();
            other.map_unit()
        }
    }
}

/// A linearizable (or, with `serializable`, a local read recorded as if it were
/// linearizable) get recorded in `h`; a failed read took no effect.
async fn get(
    h: &Hist,
    who: u64,
    c: &mut Client,
    key: &str,
    serializable: bool,
    t: Duration,
) -> Answer<Option<u64>> {
    let op = h.invoke(
        who,
        KvInput {
            key: key.to_string(),
            op: RegisterInput::Read,
        },
    );
    let opts = serializable.then(|| GetOptions::new().with_serializable());
    match answer(t, c.get(key, opts)).await {
        Answer::Ok(r) => {
            let v = value_of(r.kvs());
            op.ok(RegisterOutput::Read(v));
            Answer::Ok(v)
        }
        other => {
            op.fail();
            other.map_unit().map_none()
        }
    }
}

/// A compare-and-set txn recorded in `h`: `expected` `None` means "absent" (version 0).
async fn cas(
    h: &Hist,
    who: u64,
    c: &mut Client,
    key: &str,
    expected: Option<u64>,
    new: u64,
) -> Answer<bool> {
    let op = h.invoke(
        who,
        KvInput {
            key: key.to_string(),
            op: RegisterInput::Cas { expected, new },
        },
    );
    let cmp = match expected {
        Some(e) => Compare::value(key, CompareOp::Equal, e.to_string()),
        None => Compare::version(key, CompareOp::Equal, 0),
    };
    let txn = Txn::new()
        .when([cmp])
        .and_then([TxnOp::put(key, new.to_string(), None)]);
    match answer(OP_TIMEOUT, c.txn(txn)).await {
        Answer::Ok(r) => {
            op.ok(RegisterOutput::Cas(r.succeeded()));
            Answer::Ok(r.succeeded())
        }
        other => {
            op.info();
            other.map_unit().map_false()
        }
    }
}

impl<T> Answer<T> {
    fn map_unit(self) -> Answer<()> {
        match self {
            Answer::Ok(_) => Answer::Ok(()),
            Answer::Error(e) => Answer::Error(e),
            Answer::TimedOut => Answer::TimedOut,
        }
    }
    fn is_ok(&self) -> bool {
        matches!(self, Answer::Ok(_))
    }
}

impl Answer<()> {
    fn map_none<U>(self) -> Answer<Option<U>> {
        match self {
            Answer::Ok(()) => Answer::Ok(None),
            Answer::Error(e) => Answer::Error(e),
            Answer::TimedOut => Answer::TimedOut,
        }
    }
    fn map_false(self) -> Answer<bool> {
        match self {
            Answer::Ok(()) => Answer::Ok(false),
            Answer::Error(e) => Answer::Error(e),
            Answer::TimedOut => Answer::TimedOut,
        }
    }
}

/// What the workload clients of a run share.
struct Workload {
    clients: Arc<RwLock<Vec<Client>>>,
    keys: Vec<String>,
    h: Hist,
    /// The next value to write (values are unique within a run).
    values: AtomicU64,
    stop: AtomicBool,
}

/// One workload client: random operations on the run's keys through member `member`'s
/// client until `stop`.
async fn worker(w: Arc<Workload>, member: usize, who: u64, seed: u64) {
    let Workload {
        clients: cluster_clients,
        keys,
        h,
        values,
        stop,
    } = &*w;
    let mut rng = Rng(seed);
    let mut last_read: BTreeMap<String, Option<u64>> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        let mut c = cluster_clients.read().unwrap()[member].clone();
        let key = &keys[rng.below(keys.len() as u64) as usize];
        let v = values.fetch_add(1, Ordering::SeqCst);
        let ok = match rng.below(10) {
            0..=3 => {
                let r = get(h, who, &mut c, key, false, OP_TIMEOUT).await;
                if let Answer::Ok(v) = r {
                    last_read.insert(key.clone(), v);
                }
                r.is_ok()
            }
            4..=6 => put(h, who, &mut c, key, v, OP_TIMEOUT).await.is_ok(),
            _ => {
                let expected = last_read.get(key).copied().flatten();
                let expected = if expected.is_none() && rng.below(2) == 0 {
                    None
                } else {
                    expected.or(Some(v.saturating_sub(1)))
                };
                cas(h, who, &mut c, key, expected, v).await.is_ok()
            }
        };
        if !ok {
            // The member is down or cut off: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    IsolateLeader,
    IsolateFollower,
    Pause { leader: bool },
    KillRestart { leader: bool },
}

/// Figures of a whole test.
#[derive(Debug, Default)]
struct Tally {
    runs: u64,
    ops: u64,
    info_ops: u64,
    faults: BTreeMap<String, u64>,
    /// Answers of requests sent to an isolated member.
    minority_answers: BTreeMap<String, u64>,
    elections: u64,
    max_election: Duration,
    /// Failed final linearizable gets (retried), by answer.
    final_get_retries: BTreeMap<String, u64>,
}

/// How a member refused a request it must not serve, or `None` if it served it (or
/// answered something unexpected).
fn refusal<T>(a: &Answer<T>) -> Option<&'static str> {
    match a {
        Answer::Ok(_) => None,
        Answer::TimedOut => Some("client timeout"),
        Answer::Error(e) => match e.as_str() {
            "etcdserver: no leader" => Some("etcdserver: no leader"),
            "etcdserver: request timed out" => Some("etcdserver: request timed out"),
            "etcdserver: leader changed" => Some("etcdserver: leader changed"),
            // rusd's text (not etcd's): a follower whose forwarding connection to the
            // leader was closed by the cut.
            e if e.starts_with("etcdserver: peer ") && e.contains(" unreachable") => {
                Some("etcdserver: peer unreachable (rusd)")
            }
            _ => None,
        },
    }
}

/// Injects `fault`, asserts what must hold while it lasts, and repairs it.
async fn inject(
    cluster: &mut Cluster,
    fault: Fault,
    rng: &mut Rng,
    h: &Hist,
    keys: &[String],
    values: &AtomicU64,
    tally: &mut Tally,
) {
    let (leader, term) = cluster
        .leader(&[0, 1, 2], None, Duration::from_secs(10))
        .await;
    let follower = (leader + 1 + rng.below(2) as usize) % 3;
    let target = match fault {
        Fault::IsolateLeader
        | Fault::Pause { leader: true }
        | Fault::KillRestart { leader: true } => leader,
        _ => follower,
    };
    let majority: Vec<usize> = (0..3).filter(|i| *i != target).collect();
    *tally.faults.entry(format!("{fault:?}")).or_default() += 1;
    let started = Instant::now();
    match fault {
        Fault::IsolateLeader | Fault::IsolateFollower => cluster.isolate(target, true),
        Fault::Pause { .. } => cluster.members[target].server.pause().unwrap(),
        Fault::KillRestart { .. } => {
            cluster.members[target].server.kill().unwrap();
        }
    }
    let pick = rng.below(2) as usize;
    let isolated = matches!(fault, Fault::IsolateLeader | Fault::IsolateFollower);
    let probes = async {
        if !isolated {
            return Vec::new();
        }
        // The isolated member must neither commit a put nor serve a linearizable get.
        let (mut c1, mut c2) = (cluster.client(target), cluster.client(target));
        let key = &keys[0];
        let v = values.fetch_add(1, Ordering::SeqCst);
        let (p, g) = tokio::join!(
            put(h, 900, &mut c1, key, v, PROBE_TIMEOUT),
            get(h, 901, &mut c2, key, false, PROBE_TIMEOUT)
        );
        vec![("put", p), ("get", g.map_unit())]
    };
    let majority_side = async {
        let elected = if target == leader {
            let (new_leader, new_term) = cluster
                .leader(&majority, Some(target), ELECTION_BOUND)
                .await;
            assert!(majority.contains(&new_leader));
            assert!(
                new_term > term,
                "term {new_term} after a leader fault at term {term}"
            );
            Some((started.elapsed(), new_term - term))
        } else {
            None
        };
        // The majority keeps committing.
        let mut c = cluster.client(majority[pick]);
        let v = values.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if put(h, 902, &mut c, &keys[1], v, OP_TIMEOUT).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the majority {majority:?} did not commit a put within 10 s ({fault:?} of {target})"
            );
        }
        elected
    };
    let (answers, elected) = tokio::join!(probes, majority_side);
    for (what, a) in answers {
        let kind = refusal(&a)
            .unwrap_or_else(|| panic!("{what} on the isolated member {target} ({fault:?}): {a:?}"));
        *tally
            .minority_answers
            .entry(format!("{what}: {kind}"))
            .or_default() += 1;
    }
    if let Some((took, terms)) = elected {
        tally.elections += terms;
        tally.max_election = tally.max_election.max(took);
    }
    // Let the fault last a little longer under load.
    tokio::time::sleep(rng.ms(50, 250)).await;
    match fault {
        Fault::IsolateLeader | Fault::IsolateFollower => cluster.isolate(target, false),
        Fault::Pause { .. } => cluster.members[target].server.resume().unwrap(),
        Fault::KillRestart { .. } => cluster.restart(target).await,
    }
}

/// One run: fresh keys, a workload, one or two faults, heal, converge, check.
async fn run_once(cluster: &mut Cluster, run: u64, seed: u64, tally: &mut Tally) {
    let mut rng = Rng(seed);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("run{run}/k{k}")).collect();
    let h: Hist = History::new();
    let work = Arc::new(Workload {
        clients: cluster.clients.clone(),
        keys: keys.clone(),
        h: h.clone(),
        values: AtomicU64::new(1),
        stop: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let member = rng.below(3) as usize;
        tasks.push(tokio::spawn(worker(work.clone(), member, w, rng.next())));
    }
    tokio::time::sleep(rng.ms(30, 100)).await;
    let n_faults = if rng.below(4) == 0 { 2 } else { 1 };
    for _ in 0..n_faults {
        let fault = match rng.below(6) {
            0 => Fault::IsolateLeader,
            1 => Fault::IsolateFollower,
            2 => Fault::Pause { leader: true },
            3 => Fault::Pause { leader: false },
            4 => Fault::KillRestart { leader: true },
            _ => Fault::KillRestart { leader: false },
        };
        let t = Instant::now();
        inject(cluster, fault, &mut rng, &h, &keys, &work.values, tally).await;
        eprintln!("run {run} (seed {seed}): {fault:?} {:?}", t.elapsed());
        tokio::time::sleep(rng.ms(30, 100)).await;
    }
    work.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let t = Instant::now();
    cluster.converge(Duration::from_secs(20)).await;
    let converged = t.elapsed();

    // Every member serves the same final values, and they are linearizable with the rest.
    for (i, key) in keys.iter().enumerate() {
        let mut finals = Vec::new();
        for m in 0..3 {
            // Right after healing, a read barrier may still fail while the leader's
            // connections come back ("not enough for a quorum"): retry for a while.
            let deadline = Instant::now() + Duration::from_secs(10);
            let v = loop {
                let mut c = cluster.client(m);
                let a = get(
                    &h,
                    1000 + m as u64,
                    &mut c,
                    key,
                    false,
                    Duration::from_secs(2),
                )
                .await;
                match a {
                    Answer::Ok(v) => break v,
                    _ if Instant::now() < deadline => {
                        let kind = match &a {
                            Answer::Error(e) => {
                                e.split(", cluster:").next().unwrap_or(e).to_string()
                            }
                            other => format!("{other:?}"),
                        };
                        *tally.final_get_retries.entry(kind).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ => panic!("run {run} (seed {seed}): final get of {key} on member {m}: {a:?}"),
                }
            };
            finals.push(v);
        }
        assert!(
            finals.iter().all(|v| *v == finals[0]),
            "run {run} (seed {seed}): members disagree on {key} (#{i}): {finals:?}"
        );
        for m in 0..3 {
            let mut c = cluster.client(m);
            let r = c
                .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                .await
                .unwrap();
            assert_eq!(
                value_of(r.kvs()),
                finals[0],
                "run {run} (seed {seed}): serializable get of {key} on member {m}"
            );
        }
    }

    eprintln!(
        "run {run}: converged in {converged:?}, final reads after {:?}",
        t.elapsed()
    );
    let ops = h.operations();
    tally.runs += 1;
    tally.ops += ops.len() as u64;
    tally.info_ops += ops.iter().filter(|o| o.ret().is_none()).count() as u64;
    let verdict = check_kv(&ops, Budget::default()).unwrap();
    if !verdict.is_linearizable() {
        let path: PathBuf = std::env::temp_dir().join(format!("rusd-faults-{seed}-run{run}.json"));
        let _ = h.dump_json(&path);
        panic!(
            "run {run} (seed {seed}): {verdict:?}; history in {}",
            path.display()
        );
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_keep_histories_linearizable() {
    let runs = env_u64("RUSD_LIN_RUNS").unwrap_or(100);
    let seed = env_u64("RUSD_LIN_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!("cluster_faults: {runs} runs, RUSD_LIN_SEED={seed}");
    let started = Instant::now();
    let mut cluster = Cluster::start().await;
    let mut tally = Tally::default();
    let mut rng = Rng(seed);
    for run in 0..runs {
        let run_seed = rng.next();
        let budget = Duration::from_secs(120);
        tokio::time::timeout(budget, run_once(&mut cluster, run, run_seed, &mut tally))
            .await
            .unwrap_or_else(|_| panic!("run {run} (seed {run_seed}) took more than {budget:?}"));
    }
    assert_eq!(tally.runs, runs);
    eprintln!(
        "cluster_faults: {} runs, {} operations checked ({} of unknown outcome), 0 violations, \
         faults {:?}, isolated-member answers {:?}, {} elections after leader faults (slowest \
         {:?}), retried final gets {:?}, {:.1} s",
        tally.runs,
        tally.ops,
        tally.info_ops,
        tally.faults,
        tally.minority_answers,
        tally.elections,
        tally.max_election,
        tally.final_get_retries,
        started.elapsed().as_secs_f64()
    );
    drop(cluster);
}

/// Proves the harness can fail: reads served locally by an isolated member (serializable),
/// recorded as linearizable reads, are stale after a write on the majority, and the
/// checker says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_stale_reads_from_an_isolated_member() {
    let cluster = Cluster::start().await;
    let (leader, _) = cluster
        .leader(&[0, 1, 2], None, Duration::from_secs(10))
        .await;
    let follower = (leader + 1) % 3;
    let key = "stale/k";
    let h: Hist = History::new();
    let mut lc = cluster.client(leader);
    let mut fc = cluster.client(follower);
    assert_eq!(
        put(&h, 1, &mut lc, key, 1, Duration::from_secs(5)).await,
        Answer::Ok(())
    );
    // The follower has applied the first value before it is cut off.
    cluster.converge(Duration::from_secs(10)).await;
    cluster.isolate(follower, true);
    assert_eq!(
        put(&h, 1, &mut lc, key, 2, Duration::from_secs(5)).await,
        Answer::Ok(())
    );
    // A linearizable read is refused by the isolated member...
    let honest = get(&h, 2, &mut fc, key, false, PROBE_TIMEOUT).await;
    assert!(
        !honest.is_ok(),
        "linearizable get on the isolated member: {honest:?}"
    );
    // ...but a serializable one answers from its stale state.
    assert_eq!(
        get(&h, 2, &mut fc, key, true, Duration::from_secs(5)).await,
        Answer::Ok(Some(1))
    );
    cluster.isolate(follower, false);
    let verdict = check_kv(&h.operations(), Budget::default()).unwrap();
    match verdict {
        CheckResult::NotLinearizable(v) => {
            assert_eq!(v.partition.as_deref(), Some("\"stale/k\""));
            // Both writes linearize; the stale read (operation 2 of the checked history:
            // the refused read is left out) cannot.
            assert_eq!(v.stuck_at, Some(2));
        }
        other => panic!("the checker accepted a stale read: {other:?}"),
    }
    drop(cluster);
}
