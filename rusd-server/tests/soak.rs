//! The soak test: one `rusd` process (sled, `--durability sync`) on loopback under a mixed load
//! for `RUSD_SOAK_SECS` seconds (120 by default; the long run is `RUSD_SOAK_SECS=1800`, see
//! the README), while misbehaving clients attack it.
//!
//! Well-behaved load, all through `etcd-client`:
//! * 4 writers, each owning 200 keys: puts (values of 1 B to 4 KiB), deletes, and
//!   compare-and-swap transactions on the value it last wrote (which must succeed: nobody else
//!   writes its keys);
//! * 2 readers: prefix ranges (linearizable and serializable, with limits), and ranges at
//!   old revisions (which may be compacted: the one expected error);
//! * a watcher of the whole prefix that rebuilds the keyspace from its events;
//! * lease churn: leases of 1-3 s with an attached key, revoked, kept alive once or left to
//!   expire (revoking an expired lease is the other expected error);
//! * maintenance: a compaction every 3 s keeping the last 5,000 revisions, a defragment
//!   every 15 s, status calls.
//!
//! Misbehaving clients, in a loop: connections sending random bytes, HTTP/2 connections
//! sending garbage frames and a malformed HPACK block, watch streams opened and dropped
//! mid-stream, watchers that never read, requests over the size limit, bad JSON to the
//! gateway.
//!
//! Pass: no client error other than the expected typed ones; the server never panics and is
//! healthy at the end; its resident set stays below [`RSS_BOUND_MIB`]; every acknowledged
//! write reads back exactly (and the watcher's rebuilt keyspace equals the store's); no key of
//! an ended lease remains; a SIGTERM stops it cleanly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const RUSD: &str = env!("CARGO_BIN_EXE_rusd");
const WRITERS: u64 = 4;
const KEYS_PER_WRITER: u64 = 200;
/// Revisions kept by the periodic compaction.
const KEEP_REVISIONS: i64 = 5_000;
/// The stated bound on the server's resident set during the soak.
const RSS_BOUND_MIB: u64 = 512;

/// A small deterministic generator (xorshift64*), seeded per task.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn free_addr() -> SocketAddr {
    rusd_testkit::process::free_addr().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Kills the server if the test fails before its clean stop.
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the test saw go wrong; empty at the end of a passing run.
#[derive(Default)]
struct Failures(Mutex<Vec<String>>);

impl Failures {
    fn add(&self, what: String) {
        let mut f = self.0.lock().unwrap();
        if f.len() < 50 {
            f.push(what);
        }
    }
}

/// A writer's view of its keys: the value it knows is stored, or the possible values after a
/// call whose outcome it could not learn (none is expected).
type Model = BTreeMap<String, Vec<Option<Vec<u8>>>>;

struct Shared {
    stop: AtomicBool,
    failures: Failures,
    ops: AtomicU64,
    expected_errors: AtomicU64,
}

fn seed() -> u64 {
    std::env::var("RUSD_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_load_with_misbehaving_clients() {
    let secs: u64 = std::env::var("RUSD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed = seed();
    println!("soak: {secs} s, seed {seed} (RUSD_SOAK_SEED={seed} to replay the schedule)");
    let dir = tempfile::tempdir().unwrap();
    let client_addr = free_addr();
    let log = std::fs::File::create(dir.path().join("rusd.log")).unwrap();
    let child = Command::new(RUSD)
        .args([
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--backend",
            "sled",
            "--durability",
            "sync",
            "--listen-client-urls",
            &format!("http://{client_addr}"),
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut server = Server(Some(child));
    let endpoint = format!("http://{client_addr}");
    let client = connect_when_up(&endpoint).await;

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        failures: Failures::default(),
        ops: AtomicU64::new(0),
        expected_errors: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        writers.push(tokio::spawn(writer(
            client.clone(),
            shared.clone(),
            w,
            seed + w,
        )));
    }
    for r in 0..2 {
        tasks.push(tokio::spawn(reader(
            client.clone(),
            shared.clone(),
            seed + 10 + r,
        )));
    }
    let watcher = tokio::spawn(watcher(client.clone()));
    let leases = tokio::spawn(lease_churn(client.clone(), shared.clone(), seed + 20));
    tasks.push(tokio::spawn(maintenance(client.clone(), shared.clone())));
    tasks.push(tokio::spawn(misbehave(
        endpoint.clone(),
        client_addr,
        shared.clone(),
        seed + 30,
    )));

    // Run, sampling the resident set.
    let started = Instant::now();
    let mut peak_kib = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = rss_kib(pid);
        peak_kib = peak_kib.max(rss);
        if server.0.as_mut().unwrap().try_wait().unwrap().is_some() {
            shared
                .failures
                .add("the server exited during the soak".into());
            break;
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let leases_left = leases.await.unwrap();
    let mut model = Model::new();
    for w in writers {
        model.extend(w.await.unwrap());
    }

    // Every acknowledged write reads back exactly.
    let mut c = client.clone();
    let end = c
        .get("s/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let end_rev = end.header().unwrap().revision();
    let stored: BTreeMap<String, Vec<u8>> = end
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value().to_vec()))
        .collect();
    for (key, possible) in &model {
        let got = stored.get(key).cloned();
        if !possible.contains(&got) {
            shared.failures.add(format!(
                "{key}: stored {:?}, acknowledged {:?}",
                got.map(|v| v.len()),
                possible
                    .iter()
                    .map(|p| p.as_ref().map(Vec::len))
                    .collect::<Vec<_>>()
            ));
        }
    }
    for key in stored.keys() {
        if !model.contains_key(key) {
            shared
                .failures
                .add(format!("{key}: stored but never written"));
        }
    }
    // The watcher saw the same keyspace.
    let watched = watcher_result(watcher, end_rev).await;
    match watched {
        Ok(seen) if seen == stored => {}
        Ok(seen) => shared.failures.add(format!(
            "the watcher rebuilt {} keys, the store has {}",
            seen.len(),
            stored.len()
        )),
        Err(e) => shared.failures.add(format!("watcher: {e}")),
    }
    // No key of an ended lease remains.
    for id in leases_left {
        match c.lease_revoke(id).await {
            Ok(_) => {}
            Err(e) if is_lease_not_found(&e) => {}
            Err(e) => shared.failures.add(format!("final revoke of {id:x}: {e}")),
        }
    }
    let lease_keys = c
        .get(
            "l/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    if lease_keys != 0 {
        shared
            .failures
            .add(format!("{lease_keys} keys of ended leases remain"));
    }
    // Healthy, no panic, a clean stop.
    let (status, body) = http_get(client_addr, "/health").await;
    if status != "HTTP/1.1 200 OK" || body != r#"{"health":"true","reason":""}"# {
        shared
            .failures
            .add(format!("/health at the end: {status} {body}"));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut child = server.0.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.path().join("rusd.log")).unwrap_or_default();
    if log.contains("panicked") {
        shared
            .failures
            .add(format!("the server panicked:\n{}", tail(&log)));
    }
    if !exit.is_some_and(|s| s.success()) {
        shared.failures.add(format!(
            "SIGTERM did not stop the server cleanly: {exit:?}\n{}",
            tail(&log)
        ));
    }
    let peak_mib = peak_kib / 1024;
    println!(
        "soak: {} ops, {} expected errors, {} keys at revision {end_rev}, peak RSS {peak_mib} MiB",
        shared.ops.load(Ordering::Relaxed),
        shared.expected_errors.load(Ordering::Relaxed),
        stored.len()
    );
    if peak_mib > RSS_BOUND_MIB {
        shared.failures.add(format!(
            "peak RSS {peak_mib} MiB above the bound {RSS_BOUND_MIB} MiB"
        ));
    }
    let failures = shared.failures.0.lock().unwrap();
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(shared.ops.load(Ordering::Relaxed) > 0);
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn connect_when_up(endpoint: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::connect([endpoint], None).await {
            if c.status().await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "rusd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == Code::OutOfRange
            && s.message() == "etcdserver: mvcc: required revision has been compacted")
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == Code::NotFound && s.message() == "etcdserver: requested lease not found")
}

/// Puts, deletes and compare-and-swaps on the writer's own keys; returns what it knows is
/// stored.
async fn writer(mut c: Client, shared: Arc<Shared>, w: u64, seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    let mut known: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let key = format!("s/{w}/{:04}", rng.below(KEYS_PER_WRITER));
        seq += 1;
        let len = [1, 16, 256, 4096][rng.below(4) as usize];
        let mut value = format!("{w}-{seq}-").into_bytes();
        value.extend(rng.bytes(len));
        let before = known.get(&key).cloned().flatten();
        let op = rng.below(10);
        let (result, after) = if op < 6 {
            let r = c.put(key.clone(), value.clone(), None).await.map(|_| ());
            (r, Some(value))
        } else if op < 8 {
            let r = c.delete(key.clone(), None).await.map(|_| ());
            (r, None)
        } else {
            // Compare-and-swap on the value this writer last stored.
            let cmp = match &before {
                Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
                None => Compare::version(key.clone(), CompareOp::Equal, 0),
            };
            let txn =
                Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
            match c.txn(txn).await {
                Ok(r) if r.succeeded() => (Ok(()), Some(value)),
                Ok(_) => {
                    shared
                        .failures
                        .add(format!("{key}: compare-and-swap on its own value failed"));
                    (Ok(()), before.clone())
                }
                Err(e) => (Err(e), Some(value)),
            }
        };
        shared.ops.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                known.insert(key.clone(), after.clone());
                model.insert(key, vec![after]);
            }
            Err(e) => {
                // No error is expected; keep both outcomes possible for the final check.
                shared.failures.add(format!("writer {w} on {key}: {e}"));
                known.remove(&key);
                model.insert(key, vec![before, after]);
            }
        }
    }
    model
}

/// Prefix ranges, linearizable and serializable; ranges at old revisions.
async fn reader(mut c: Client, shared: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut last = 0i64;
    while !shared.stop.load(Ordering::Relaxed) {
        let mut opts = GetOptions::new()
            .with_prefix()
            .with_limit(1 + rng.below(100) as i64);
        let serializable = rng.below(2) == 0;
        if serializable {
            opts = opts.with_serializable();
        }
        let old = rng.below(4) == 0 && last > 10;
        if old {
            opts = opts.with_revision(1 + rng.below(last as u64) as i64);
        }
        let w = rng.below(WRITERS);
        shared.ops.fetch_add(1, Ordering::Relaxed);
        match c.get(format!("s/{w}/"), Some(opts)).await {
            Ok(r) => {
                let rev = r.header().map_or(0, |h| h.revision());
                if !serializable && rev < last {
                    shared
                        .failures
                        .add(format!("a linearizable read went back: {rev} < {last}"));
                }
                last = last.max(rev);
            }
            Err(e) if old && is_compacted(&e) => {
                shared.expected_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared.failures.add(format!("reader: {e}")),
        }
    }
}

/// Watches `s/` from the current revision (the store is empty) and rebuilds the keyspace;
/// the returned sender asks for it once the watcher reached the revision it is given.
async fn watcher(
    mut c: Client,
) -> tokio::sync::oneshot::Sender<(i64, tokio::sync::oneshot::Sender<WatchOutcome>)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stream = c
        .watch("s/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    tokio::spawn(rebuild(stream, rx));
    tx
}

type WatchOutcome = Result<BTreeMap<String, Vec<u8>>, String>;

async fn rebuild(
    mut stream: etcd_client::WatchStream,
    mut until: tokio::sync::oneshot::Receiver<(i64, tokio::sync::oneshot::Sender<WatchOutcome>)>,
) {
    let mut state = BTreeMap::new();
    let mut last = 0i64;
    let mut responses = 0u64;
    let mut target: Option<(i64, tokio::sync::oneshot::Sender<WatchOutcome>)> = None;
    let outcome = 'outer: loop {
        if let Some((rev, _)) = &target {
            if last >= *rev {
                break Ok(state);
            }
        }
        let msg = tokio::select! {
            m = stream.message() => m,
            t = &mut until, if target.is_none() => {
                match t {
                    Ok(t) => target = Some(t),
                    Err(_) => return,
                }
                // The last events may be of other prefixes: a progress response carries the
                // revision the watcher has caught up to.
                if let Err(e) = stream.request_progress().await {
                    break Err(format!("progress request: {e}"));
                }
                continue;
            }
            _ = tokio::time::sleep(Duration::from_secs(60)) => {
                break Err(format!("no event for 60 s; last revision seen {last}, {responses} responses"))
            }
        };
        responses += 1;
        let r = match msg {
            Ok(Some(r)) => r,
            Ok(None) => break Err("the watch stream ended".into()),
            Err(e) => break Err(format!("the watch stream failed: {e}")),
        };
        if r.canceled() {
            break Err(format!(
                "watch canceled (compact revision {}, reason {:?})",
                r.compact_revision(),
                r.cancel_reason()
            ));
        }
        for ev in r.events() {
            let Some(kv) = ev.kv() else { continue };
            if kv.mod_revision() < last {
                break 'outer Err(format!(
                    "an event of revision {} after revision {last}",
                    kv.mod_revision()
                ));
            }
            last = kv.mod_revision();
            let key = kv.key_str().unwrap_or_default().to_string();
            match ev.event_type() {
                EventType::Put => {
                    state.insert(key, kv.value().to_vec());
                }
                EventType::Delete => {
                    state.remove(&key);
                }
            }
        }
        if let Some(h) = r.header() {
            if r.events().is_empty() {
                last = last.max(h.revision());
            }
        }
    };
    if let Some((_, reply)) = target {
        let _ = reply.send(outcome);
    } else if let Ok((_, reply)) = until.await {
        let _ = reply.send(outcome);
    }
}

async fn watcher_result(
    handle: tokio::task::JoinHandle<
        tokio::sync::oneshot::Sender<(i64, tokio::sync::oneshot::Sender<WatchOutcome>)>,
    >,
    end_rev: i64,
) -> WatchOutcome {
    let until = handle.await.map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    until
        .send((end_rev, tx))
        .map_err(|_| "the watcher is gone".to_string())?;
    tokio::time::timeout(Duration::from_secs(120), rx)
        .await
        .map_err(|_| "the watcher did not reach the end revision in 120 s".to_string())?
        .map_err(|_| "the watcher is gone".to_string())?
}

/// Grants short leases with a key each; revokes some, keeps some alive once, lets the rest
/// expire. Returns the leases it did not revoke.
async fn lease_churn(mut c: Client, shared: Arc<Shared>, seed: u64) -> Vec<i64> {
    let mut rng = Rng::new(seed);
    let mut open = Vec::new();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let ttl = 1 + rng.below(3) as i64;
        shared.ops.fetch_add(1, Ordering::Relaxed);
        let id = match c.lease_grant(ttl, None).await {
            Ok(r) => r.id(),
            Err(e) => {
                shared.failures.add(format!("lease grant: {e}"));
                continue;
            }
        };
        if let Err(e) = c
            .put(
                format!("l/{n}"),
                "v",
                Some(PutOptions::new().with_lease(id)),
            )
            .await
        {
            shared.failures.add(format!("put with lease {id:x}: {e}"));
        }
        match rng.below(3) {
            0 => match c.lease_revoke(id).await {
                Ok(_) => {}
                Err(e) => shared.failures.add(format!("revoke {id:x}: {e}")),
            },
            1 => match c.lease_keep_alive(id).await {
                Ok((mut keeper, mut stream)) => {
                    let _ = keeper.keep_alive().await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
                    open.push(id);
                }
                Err(e) => shared.failures.add(format!("keep-alive {id:x}: {e}")),
            },
            _ => open.push(id),
        }
        // Revoke an older lease that may have expired meanwhile.
        if open.len() > 20 {
            let old = open.remove(0);
            match c.lease_revoke(old).await {
                Ok(_) => {}
                Err(e) if is_lease_not_found(&e) => {
                    shared.expected_errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => shared.failures.add(format!("revoke {old:x}: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open
}

/// Compaction every 3 s (keeping [`KEEP_REVISIONS`]), defragment every 15 s, status.
async fn maintenance(mut c: Client, shared: Arc<Shared>) {
    let mut tick = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let rev = match c.status().await {
            Ok(s) => s.header().map_or(0, |h| h.revision()),
            Err(e) => {
                shared.failures.add(format!("status: {e}"));
                continue;
            }
        };
        if tick.is_multiple_of(3) && rev > KEEP_REVISIONS {
            if let Err(e) = c.compact(rev - KEEP_REVISIONS, None).await {
                // A compaction at or below the current compacted revision is refused.
                if !is_compacted(&e) {
                    shared.failures.add(format!("compact: {e}"));
                } else {
                    shared.expected_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if tick.is_multiple_of(15) {
            if let Err(e) = c.defragment().await {
                shared.failures.add(format!("defragment: {e}"));
            }
        }
    }
}

/// Misbehaving clients, one kind after another, until the soak ends.
async fn misbehave(endpoint: String, addr: SocketAddr, shared: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut stalled: Vec<etcd_client::WatchStream> = Vec::new();
    let mut stalled_clients: Vec<Client> = Vec::new();
    let mut round = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        round += 1;
        match round % 6 {
            // Random bytes on a fresh connection.
            0 => {
                let n = 1 + rng.below(4096) as usize;
                let junk = rng.bytes(n);
                garbage(addr, &junk).await;
            }
            // An HTTP/2 connection with garbage frames and a malformed HPACK block.
            1 => {
                let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
                match rng.below(3) {
                    0 => bytes.extend([0, 0, 1, 1, 5, 0, 0, 0, 1, 0x3f]),
                    1 => {
                        // CONTINUATION flood without an end.
                        bytes.extend([0, 0, 1, 1, 0, 0, 0, 0, 1, 0x82]);
                        for _ in 0..200 {
                            bytes.extend([0, 0, 1, 9, 0, 0, 0, 0, 1, 0x82]);
                        }
                    }
                    _ => {
                        for _ in 0..20 {
                            let len = rng.below(64) as usize;
                            bytes.extend([0, 0, len as u8, rng.below(12) as u8, 0]);
                            bytes.extend((rng.below(8) as u32).to_be_bytes());
                            bytes.extend(rng.bytes(len));
                        }
                    }
                }
                garbage(addr, &bytes).await;
            }
            // A watch stream dropped mid-stream, with its connection.
            2 => {
                if let Ok(mut c) = Client::connect([endpoint.as_str()], None).await {
                    if let Ok(mut w) = c
                        .watch(
                            "s/",
                            Some(WatchOptions::new().with_prefix().with_prev_key()),
                        )
                        .await
                    {
                        let _ = tokio::time::timeout(Duration::from_millis(50), w.message()).await;
                    }
                }
            }
            // Watchers that never read (replaced now and then).
            3 => {
                if stalled.len() >= 8 {
                    stalled.clear();
                    stalled_clients.clear();
                }
                if let Ok(mut c) = Client::connect([endpoint.as_str()], None).await {
                    if let Ok(w) = c
                        .watch(
                            "s/",
                            Some(WatchOptions::new().with_prefix().with_start_revision(1)),
                        )
                        .await
                    {
                        stalled.push(w);
                    }
                    stalled_clients.push(c);
                }
            }
            // A request over the size limit: etcd's typed refusal.
            4 => {
                if let Ok(mut c) = Client::connect([endpoint.as_str()], None).await {
                    // Over --max-request-bytes (1.5 MiB), under gRPC's own limit (+512 KiB).
                    match c.put("big", vec![0u8; 1800 * 1024], None).await {
                        Err(etcd_client::Error::GRpcStatus(s))
                            if s.code() == Code::InvalidArgument
                                && s.message() == "etcdserver: request is too large" =>
                        {
                            shared.expected_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        other => shared
                            .failures
                            .add(format!("an oversized put was answered {other:?}")),
                    }
                }
            }
            // Bad JSON to the gateway: 400.
            _ => {
                let body = "{\"key\": nope";
                let req = format!(
                    "POST /v3/kv/put HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let answer = garbage(addr, req.as_bytes()).await;
                if !answer.starts_with("HTTP/1.1 400 ") {
                    shared.failures.add(format!(
                        "bad gateway JSON answered {:?}",
                        answer.lines().next()
                    ));
                } else {
                    shared.expected_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `bytes` on a new connection, reads the answer for up to a second, hangs up.
async fn garbage(addr: SocketAddr, bytes: &[u8]) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let answer = garbage(addr, req.as_bytes()).await;
    let status = answer.lines().next().unwrap_or("").to_string();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    (status, body)
}
