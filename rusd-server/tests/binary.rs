//! The `rusd` binary: flags, engine selection, SIGTERM/SIGINT shutdown with exit 0, restart on
//! the same data directory.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const RUSD: &str = env!("CARGO_BIN_EXE_rusd");

fn free_port() -> u16 {
    rusd_testkit::process::free_port().unwrap()
}

fn spawn(dir: &Path, backend: &str, port: u16, metrics: u16) -> Child {
    spawn_with(dir, backend, port, metrics, &[])
}

fn spawn_with(dir: &Path, backend: &str, port: u16, metrics: u16, extra: &[&str]) -> Child {
    Command::new(RUSD)
        .args([
            "--name",
            "bin",
            "--data-dir",
            dir.to_str().unwrap(),
            "--backend",
            backend,
            "--listen-client-urls",
            &format!("http://127.0.0.1:{port}"),
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{metrics}"),
            "--durability",
            "sync",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn connect(port: u16) -> etcd_client::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            if let Ok(c) =
                etcd_client::Client::connect([format!("http://127.0.0.1:{port}")], None).await
            {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "rusd did not start listening on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

async fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rusd did not exit after the signal");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_exit_zero_and_data_survives() {
    for (backend, sig) in [("sled", "-TERM"), ("redb", "-INT"), ("memory", "-TERM")] {
        let dir = tempfile::tempdir().unwrap();
        let (port, metrics) = (free_port(), free_port());
        let mut child = spawn(dir.path(), backend, port, metrics);
        let mut c = connect(port).await;
        c.put("survives", backend, None).await.unwrap();
        let mut w = c.watch("x", None).await.unwrap();
        assert!(w.message().await.unwrap().unwrap().created());
        drop(c);
        signal(&child, sig);
        let status = wait_exit(&mut child).await;
        assert_eq!(status.code(), Some(0), "{backend}: {status:?}");
        drop(w);

        let (port, metrics) = (free_port(), free_port());
        let mut child = spawn(dir.path(), backend, port, metrics);
        let mut c = connect(port).await;
        let r = c.get("survives", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), backend.as_bytes(), "{backend}");
        assert_eq!(r.header().unwrap().revision(), 2);
        signal(&child, "-TERM");
        assert_eq!(wait_exit(&mut child).await.code(), Some(0));
    }
}

/// The engine's `mvccFormat` and its number of `index` rows (the key-ordered copy of the
/// current rows), read with the member stopped.
fn format_and_copy_rows(dir: &Path, backend: &str) -> (Option<Vec<u8>>, usize) {
    use storage_api::{Backend, BackendConfig, Tree};
    let kind = backend.parse::<storage_api::BackendKind>().unwrap();
    let b = mvcc_core::AnyBackend::open(kind, BackendConfig::new(dir.join("member"))).unwrap();
    let format = b.get(Tree::Meta, mvcc_core::store::META_FORMAT).unwrap();
    let rows = b.scan(Tree::Index, &[], &[], 0).unwrap().len();
    b.close().unwrap();
    (format, rows)
}

/// `--key-ordered-copy` keeps the copy of the current rows in the engine (format 2, one row
/// per live key); restarted without it, the member writes format 1, drops the copy and still
/// serves every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_ordered_copy_flag_keeps_the_copy_and_drops_it_when_off() {
    let backend = "redb";
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &'static [&'static str]| {
        let dir = dir.path().to_path_buf();
        async move {
            let (port, metrics) = (free_port(), free_port());
            let mut child = spawn_with(&dir, backend, port, metrics, extra);
            let mut c = connect(port).await;
            if !extra.is_empty() {
                for i in 0..20 {
                    c.put(format!("k{i:02}"), format!("v{i}"), None)
                        .await
                        .unwrap();
                }
                c.delete("k07", None).await.unwrap();
            }
            let opts = etcd_client::GetOptions::new().with_prefix();
            let r = c.get("k", Some(opts)).await.unwrap();
            let keys: Vec<String> = r
                .kvs()
                .iter()
                .map(|kv| kv.key_str().unwrap().into())
                .collect();
            signal(&child, "-TERM");
            assert_eq!(wait_exit(&mut child).await.code(), Some(0));
            keys
        }
    };
    let want: Vec<String> = (0..20)
        .filter(|i| *i != 7)
        .map(|i| format!("k{i:02}"))
        .collect();
    assert_eq!(run(&["--key-ordered-copy"]).await, want);
    assert_eq!(
        format_and_copy_rows(dir.path(), backend),
        (Some(vec![2]), 19)
    );
    assert_eq!(run(&[]).await, want);
    assert_eq!(
        format_and_copy_rows(dir.path(), backend),
        (Some(vec![1]), 0)
    );
}

#[test]
fn rejects_engines_not_compiled_and_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(RUSD)
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    if !mvcc_core::is_compiled(storage_api::BackendKind::Rocksdb) {
        let (code, err) = run(&["--backend", "rocksdb"]);
        assert_eq!(code, Some(2));
        assert!(
            err.contains("the rocksdb engine is not compiled into this rusd build (rebuild with `--features rocksdb`); compiled engines: memory"),
            "{err}"
        );
    }
    let (code, err) = run(&["--backend", "bbolt"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown backend \"bbolt\""), "{err}");
    let (code, err) = run(&["--durability", "sometimes"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--durability"), "{err}");
    let (code, err) = run(&[
        "--auto-compaction-mode",
        "revision",
        "--auto-compaction-retention",
        "1h",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("expected a revision count"), "{err}");
    let (code, err) = run(&["--listen-client-urls", "https://127.0.0.1:1"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "rusd: invalid configuration: TLS key/cert (--cert-file, --key-file) must be provided for https client URLs (or use --auto-tls)\n"
    );
    let (code, err) = run(&["--cert-file", "/nonexistent.pem"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "rusd: invalid configuration: --cert-file and --key-file must be given together\n"
    );
    let out = Command::new(RUSD).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--listen-client-urls",
        "--advertise-client-urls",
        "--name",
        "--listen-metrics-urls",
        "--auto-compaction-mode",
        "--auto-compaction-retention",
        "--quota-backend-bytes",
        "--max-txn-ops",
        "--max-request-bytes",
        "--backend",
        "--cert-file",
        "--key-file",
        "--trusted-ca-file",
        "--client-cert-auth",
        "--auto-tls",
        "--cache-size-mb",
        "--durability",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// A tmpfs of a given size mounted on a temporary directory (needs root); unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Outside CI (`CI` unset) `None` when it cannot mount; in CI that fails the test.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(Tmpfs { dir })
        } else if std::env::var_os("CI").is_some() {
            panic!("cannot mount a tmpfs (root is required); CI must run this test");
        } else {
            eprintln!("skipped: cannot mount a tmpfs (not root?)");
            None
        }
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount of the tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// `(status line, body)` of a plain HTTP GET.
fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn grpc_status<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> (tonic::Code, String) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// Fills a 6 MiB tmpfs holding the data directory: the write that does not fit gets etcd's
/// NOSPACE answer, the alarm is raised, `/health` is unhealthy; after the file system grows and
/// the process restarts, every acknowledged write is there and no revision is reused.
async fn full_disk(backend: &str) {
    use etcd_client::{AlarmAction, AlarmType};
    use tonic::Code;
    let Some(fs) = Tmpfs::mount("6m") else {
        return;
    };
    let data = fs.dir.path().join("data");
    let (port, metrics) = (free_port(), free_port());
    let mut child = spawn(&data, backend, port, metrics);
    let mut c = connect(port).await;
    let value = vec![b'x'; 64 * 1024];
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..400 {
        let key = format!("k{i:04}");
        match c.put(key.as_str(), value.clone(), None).await {
            Ok(r) => acked.push((key, r.header().map(|h| h.revision()).unwrap_or(0))),
            Err(e) => {
                refusal = Some(grpc_status::<()>(Err(e)));
                break;
            }
        }
    }
    let (code, msg) = refusal.unwrap_or_else(|| panic!("{backend}: 25 MiB fit on 6 MiB"));
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        ),
        "{backend}: the write that does not fit"
    );
    assert!(!acked.is_empty(), "{backend}: nothing fitted at all");
    let (code, _) = grpc_status(c.put("after", "1", None).await);
    assert_eq!(code, Code::ResourceExhausted, "{backend}: a later write");
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(alarms.alarms().len(), 1, "{backend}");
    assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace, "{backend}");
    let (line, body) = http_get(metrics, "/health");
    assert!(line.contains("503"), "{backend}: {line}");
    assert!(body.contains(r#""health":"false""#), "{backend}: {body}");
    // Reads are still served (sled refuses every call, reads included, once its log hit an
    // I/O error: it keeps a global error until reopened).
    for (key, rev) in &acked {
        match c.get(key.as_str(), None).await {
            Ok(r) => {
                assert_eq!(r.kvs().len(), 1, "{backend}: {key} acknowledged at {rev}");
                assert_eq!(r.kvs()[0].mod_revision(), *rev, "{backend}: {key}");
            }
            Err(e) if backend == "sled" => {
                assert_eq!(grpc_status::<()>(Err(e)).0, Code::ResourceExhausted);
            }
            Err(e) => panic!("{backend}: read of {key}: {e}"),
        }
    }
    drop(c);
    signal(&child, "-KILL");
    wait_exit(&mut child).await;

    fs.resize("64m");
    let mut child = spawn(&data, backend, port, metrics);
    let mut c = connect(port).await;
    for (key, rev) in &acked {
        let r = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "{backend}: {key} lost after the restart");
        assert_eq!(r.kvs()[0].mod_revision(), *rev, "{backend}: {key}");
        assert_eq!(r.kvs()[0].value(), value.as_slice(), "{backend}: {key}");
    }
    let last = acked.last().map(|(_, r)| *r).unwrap_or(1);
    let r = c.put("again", "1", None).await.unwrap();
    assert!(
        r.header().map(|h| h.revision()).unwrap_or(0) > last,
        "{backend}: a revision was reused"
    );
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(alarms.alarms().len(), 0, "{backend}");
    drop(c);
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).await.success(), "{backend}");
}

#[tokio::test]
async fn a_full_disk_is_the_nospace_alarm_and_loses_nothing() {
    for backend in ["sled", "redb"] {
        full_disk(backend).await;
    }
    #[cfg(feature = "rocksdb")]
    full_disk("rocksdb").await;
}

/// `--experimental-lease-checkpoint-interval`: with checkpoints every second, a lease's
/// remaining TTL survives a SIGKILL and restart (etcd's lease checkpointing); with `0s` (etcd
/// 3.4's default, no checkpoints) the restarted member gives it its full TTL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_checkpoints_survive_a_kill_and_restart() {
    for (interval, resumed_below_full) in [("1s", true), ("0s", false)] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let run = || {
            Command::new(RUSD)
                .args([
                    "--data-dir",
                    dir.path().to_str().unwrap(),
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{port}"),
                    "--experimental-lease-checkpoint-interval",
                    interval,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut child = run();
        let mut c = connect(port).await;
        let id = c.lease_grant(60, None).await.unwrap().id();
        // Long enough for checkpoints to carry a remaining TTL of at most 56 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let mut child = run();
        let mut c = connect(port).await;
        let ttl = c.lease_time_to_live(id, None).await.unwrap();
        assert_eq!(ttl.granted_ttl(), 60);
        if resumed_below_full {
            assert!(
                ttl.ttl() > 0 && ttl.ttl() <= 57,
                "{interval}: TTL {} after the restart",
                ttl.ttl()
            );
        } else {
            assert!(
                ttl.ttl() >= 58,
                "{interval}: TTL {} after the restart",
                ttl.ttl()
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// `rusd snapshot save|status|restore` and `rusd export` on a stopped member's data
/// directory (`--data-dir` as given to `rusd`); the restored store, on another engine, serves
/// the same keys and revision; a bad input is a one-line error and exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_snapshot_restore_and_export_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let (port, metrics) = (free_port(), free_port());
    let mut child = spawn(&a, "sled", port, metrics);
    let mut c = connect(port).await;
    for i in 0..5 {
        c.put(format!("k{i}"), format!("v{i}"), None).await.unwrap();
    }
    c.delete("k0", None).await.unwrap();
    drop(c);
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child).await.code(), Some(0));

    let tool = |args: &[&str]| {
        let out = Command::new(RUSD).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let snap = dir.path().join("s.snap");
    let (code, out, err) = tool(&[
        "snapshot",
        "save",
        a.to_str().unwrap(),
        snap.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("saved "), "{out}");
    let (code, out, _) = tool(&["snapshot", "status", snap.to_str().unwrap(), "-w", "json"]);
    assert_eq!(code, Some(0));
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["revision"], 7, "{out}");
    assert_eq!(status["totalKey"], 4, "{out}");
    let b = dir.path().join("b");
    let (code, out, err) = tool(&[
        "snapshot",
        "restore",
        snap.to_str().unwrap(),
        "--data-dir",
        b.to_str().unwrap(),
        "--backend",
        "redb",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(b.join("member").is_dir());
    let exported = dir.path().join("etcd.db");
    let (code, out, err) = tool(&[
        "export",
        "--data-dir",
        a.to_str().unwrap(),
        "--etcd-db",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(std::fs::metadata(&exported).unwrap().len() > 0);
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let (code, _, err) = tool(&[
        "import",
        "--etcd-db",
        empty.to_str().unwrap(),
        "--data-dir",
        dir.path().join("c").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("rusd: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let (port, metrics) = (free_port(), free_port());
    let mut child = spawn(&b, "redb", port, metrics);
    let mut c = connect(port).await;
    let r = c
        .get("k", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let kvs = common::kvs(&r);
    assert_eq!(
        kvs,
        vec![
            ("k1".to_string(), "v1".to_string(), 3),
            ("k2".to_string(), "v2".to_string(), 4),
            ("k3".to_string(), "v3".to_string(), 5),
            ("k4".to_string(), "v4".to_string(), 6),
        ]
    );
    assert_eq!(r.header().unwrap().revision(), 7);
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child).await.code(), Some(0));
}
