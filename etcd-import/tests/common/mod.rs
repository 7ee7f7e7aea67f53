//! Runs a real etcd 3.4 (Debian's `/usr/bin/etcd`) on loopback to produce test databases.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// `None` (skip) when etcd is not installed and `CI` is unset; panics when `CI` is set.
pub fn etcd_available() -> bool {
    let present = Path::new(ETCD).exists() && Path::new(ETCDCTL).exists();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {ETCD} / {ETCDCTL} are missing"
        );
        eprintln!("skipping: {ETCD} not installed");
    }
    present
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running etcd; killed on drop.
pub struct Etcd {
    child: Child,
    pub data_dir: PathBuf,
    pub endpoint: String,
}

impl Etcd {
    pub fn start(data_dir: &Path) -> Etcd {
        Self::start_with_peer(data_dir, free_port())
    }

    /// Starts etcd as member `imp` with peer URL `http://127.0.0.1:<peer>` (what
    /// `etcdctl snapshot restore --name imp` was told).
    pub fn start_with_peer(data_dir: &Path, peer: u16) -> Etcd {
        Self::start_as(data_dir, peer, None)
    }

    /// [`Etcd::start_with_peer`] on a store with auth enabled: the health check runs as
    /// `user` (`name:password`).
    pub fn start_as(data_dir: &Path, peer: u16, user: Option<&str>) -> Etcd {
        let client = free_port();
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(ETCD)
            .arg("--name=imp")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=imp={peer_url}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let etcd = Etcd {
            child,
            data_dir: data_dir.to_path_buf(),
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(ETCDCTL)
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", etcd.endpoint))
                .args(user.map(|u| format!("--user={u}")))
                .args(["endpoint", "health"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
        etcd
    }

    /// Runs etcdctl with `args` (and `stdin`), asserting success; returns stdout.
    pub fn ctl_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut cmd = Command::new(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("etcdctl");
        {
            let mut sin = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                sin.write_all(s.as_bytes()).expect("write stdin");
            }
        }
        let out = child.wait_with_output().expect("etcdctl output");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        self.ctl_in(args, None)
    }

    /// Every key at `rev` as etcd answers `get --prefix "" --rev=N -w json`.
    pub fn all_at(&self, rev: i64) -> Vec<Kv> {
        let out = self.ctl(&["get", "--prefix", "", &format!("--rev={rev}"), "-w", "json"]);
        let v: Value = serde_json::from_str(&out).expect("json");
        let b64 = |v: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or(""))
                .expect("base64")
        };
        let int = |v: &Value| v.as_i64().unwrap_or(0);
        v["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| Kv {
                        key: b64(&kv["key"]),
                        value: b64(&kv["value"]),
                        create_revision: int(&kv["create_revision"]),
                        mod_revision: int(&kv["mod_revision"]),
                        version: int(&kv["version"]),
                        lease: int(&kv["lease"]),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Grants a lease, returns its id.
    pub fn lease_grant(&self, ttl: i64) -> i64 {
        let out = self.ctl(&["lease", "grant", &ttl.to_string(), "-w", "json"]);
        let v: Value = serde_json::from_str(&out).expect("json");
        v["ID"].as_i64().expect("lease id")
    }

    /// `(granted TTL, attached keys)` of a lease.
    pub fn lease_info(&self, id: i64) -> (i64, Vec<Vec<u8>>) {
        let out = self.ctl(&[
            "lease",
            "timetolive",
            &format!("{id:x}"),
            "--keys",
            "-w",
            "json",
        ]);
        let v: Value = serde_json::from_str(&out).expect("json");
        let mut keys: Vec<Vec<u8>> = v["keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|k| {
                        base64::engine::general_purpose::STANDARD
                            .decode(k.as_str().unwrap_or(""))
                            .expect("base64")
                    })
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        (v["granted-ttl"].as_i64().unwrap_or(-1), keys)
    }

    /// Stops etcd gracefully (SIGTERM to the process this harness started), so its backend
    /// commits; falls back to a kill.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let termed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if termed {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key-value as both etcd and rusd answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// What the history test recorded from etcd before stopping it.
pub struct Fixture {
    /// Keeps the files alive.
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub snapshot: PathBuf,
    pub current: i64,
    pub compact: i64,
    /// `answers[i]` = every key at revision `compact + i`.
    pub answers: Vec<Vec<Kv>>,
    /// `(id, granted ttl, attached keys)` of the live leases.
    pub leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
}

/// Starts etcd, writes a history of 27 revisions (puts, overwrites, deletes, txns, leases, a
/// revoke, a compaction at 9), records etcd's answers, saves a snapshot and stops etcd.
pub fn build_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("etcd");
    let etcd = Etcd::start(&data_dir);
    let put = |k: &str, v: &str| {
        etcd.ctl(&["put", k, v]);
    };
    put("k1", "v1"); // 2
    put("k2", "v2"); // 3
    put("k1", "v1b"); // 4
    put("k3", "v3"); // 5
    etcd.ctl(&["del", "k2"]); // 6
    put("k2", "v2b"); // 7
    let l1 = etcd.lease_grant(600);
    etcd.ctl(&["put", &format!("--lease={l1:x}"), "lk1", "x"]); // 8
    etcd.ctl(&["put", &format!("--lease={l1:x}"), "lk2", "y"]); // 9
                                                                // 10: subs 0, 1, 2
    etcd.ctl_in(
        &["txn"],
        Some("mod(\"k1\") > \"0\"\n\nput k1 v1c\nput k4 v4\ndel k3\n\nput never x\n\n"),
    );
    etcd.ctl(&["del", "k4"]); // 11
    put("k4", "v4b"); // 12
    let l2 = etcd.lease_grant(300);
    etcd.ctl(&["put", &format!("--lease={l2:x}"), "lk3", "z"]); // 13
    etcd.ctl(&["lease", "revoke", &format!("{l2:x}")]); // 14
    etcd.ctl(&["compact", "9", "--physical"]);
    put("k1", "v1d"); // 15
    put("k6", ""); // 16: empty value
    for i in 0..6 {
        put(&format!("seq/{i}"), &format!("value {i}")); // 17..=22
    }
    put("k6", "six"); // 23
    etcd.ctl(&["del", "k6"]); // 24
                              // 25: the compare fails, the failure branch runs.
    etcd.ctl_in(
        &["txn"],
        Some("value(\"k1\") = \"nope\"\n\nput never x\n\nput k7 v7\nput lk1 moved\n\n"),
    );
    etcd.ctl(&["del", "--prefix", "seq/"]); // 26: subs 0..=5
    put("k1", "v1e"); // 27
    let l3 = etcd.lease_grant(900); // a lease without keys
    let current = 27;
    let compact = 9;
    let answers = (compact..=current).map(|r| etcd.all_at(r)).collect();
    let leases = [l1, l3]
        .into_iter()
        .map(|id| {
            let (ttl, keys) = etcd.lease_info(id);
            (id, ttl, keys)
        })
        .collect();
    let snapshot = dir.path().join("snapshot.db");
    etcd.ctl(&["snapshot", "save", &snapshot.display().to_string()]);
    etcd.stop();
    Fixture {
        dir,
        data_dir,
        snapshot,
        current,
        compact,
        answers,
        leases,
    }
}

/// Every key at `rev` as rusd's store answers it.
pub fn rusd_all_at<B: storage_api::Backend>(store: &mvcc_core::MvccStore<B>, rev: i64) -> Vec<Kv> {
    store
        .range(b"\0", b"\0", rev, 0, false)
        .expect("range")
        .kvs
        .into_iter()
        .map(|kv| Kv {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        })
        .collect()
}

/// Lease ids of the rusd history.
pub const L1: i64 = 0x1234;
pub const L2: i64 = 0x2345;
pub const L3: i64 = 0x3456;
/// The rusd history's compaction and current revisions.
pub const RUSD_COMPACT: i64 = 309;
pub const RUSD_CURRENT: i64 = 314;
/// The 10 000-byte value of key `big` (needs overflow pages in bbolt).
pub fn big_value() -> Vec<u8> {
    (0..10_000u32).map(|i| (i % 251) as u8).collect()
}

/// Writes a history into a new `kind` store in `dir` and closes it: puts, overwrites, a delete,
/// a txn of three changes, a 10 000-byte value, 300 keys (several bbolt leaf pages and a branch
/// page), a range delete of 50 keys, leases (one revoked with a key, one without keys), a
/// compaction at 309, then a put, an empty value and a txn whose failure branch runs: revision
/// 314. Returns nothing; tests read the store back.
pub fn build_rusd_store(dir: &Path, kind: storage_api::BackendKind) {
    use mvcc_core::{AnyBackend, Compare, CompareOp, MvccStore, TxnOp};
    let store =
        MvccStore::new(AnyBackend::open(kind, storage_api::BackendConfig::new(dir)).expect("open"))
            .expect("store");
    assert_eq!(store.put(b"a", b"1", 0).expect("put").0, 2);
    assert_eq!(store.put(b"b", b"2", 0).expect("put").0, 3);
    assert_eq!(store.put(b"a", b"1b", 0).expect("put").0, 4);
    assert_eq!(store.delete_range(b"b", b"").expect("del").0, 5);
    store.lease_grant(L1, 600).expect("grant");
    assert_eq!(store.put(b"la", b"x", L1).expect("put").0, 6);
    let t = store
        .txn(
            &[Compare::version("a", CompareOp::Equal, 2)],
            &[
                TxnOp::put("c", "3", 0),
                TxnOp::put("d", "4", 0),
                TxnOp::delete("a", ""),
            ],
            &[],
        )
        .expect("txn");
    assert!(t.succeeded);
    assert_eq!(t.revision, 7);
    assert_eq!(store.put(b"big", &big_value(), 0).expect("put").0, 8);
    for i in 0..300 {
        let k = format!("many/{i:03}");
        assert_eq!(
            store
                .put(k.as_bytes(), format!("value {i}").as_bytes(), 0)
                .expect("put")
                .0,
            9 + i
        );
    }
    let (rev, deleted) = store.delete_range(b"many/000", b"many/050").expect("del");
    assert_eq!((rev, deleted.len()), (309, 50));
    store.lease_grant(L2, 300).expect("grant");
    assert_eq!(store.put(b"lb", b"y", L2).expect("put").0, 310);
    assert_eq!(store.lease_revoke(L2).expect("revoke"), 311);
    store.compact(RUSD_COMPACT).expect("compact");
    assert_eq!(store.put(b"a", b"again", 0).expect("put").0, 312);
    assert_eq!(store.put(b"e", b"", 0).expect("put").0, 313);
    let t = store
        .txn(
            &[Compare::value("a", CompareOp::Equal, "nope")],
            &[TxnOp::put("never", "x", 0)],
            &[TxnOp::put("f", "6", 0), TxnOp::put("la", "moved", L1)],
        )
        .expect("txn");
    assert!(!t.succeeded);
    assert_eq!(t.revision, RUSD_CURRENT);
    store.lease_grant(L3, 900).expect("grant");
    assert_eq!(store.current_revision(), RUSD_CURRENT);
    assert_eq!(store.compact_revision(), RUSD_COMPACT);
    store.close().expect("close");
}

/// Reopens the rusd store in `dir`.
pub fn open_rusd(
    dir: &Path,
    kind: storage_api::BackendKind,
) -> mvcc_core::MvccStore<mvcc_core::AnyBackend> {
    mvcc_core::MvccStore::new(
        mvcc_core::AnyBackend::open(kind, storage_api::BackendConfig::new(dir)).expect("open"),
    )
    .expect("store")
}
