//! The `rusd` binary: flags, engine selection, SIGTERM/SIGINT shutdown with exit 0, restart on
//! the same data directory.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const RUSD: &str = env!("CARGO_BIN_EXE_rusd");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &Path, backend: &str, port: u16, metrics: u16) -> Child {
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
    assert!(err.contains("only http:// URLs are supported"), "{err}");
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
        "--cache-size-mb",
        "--durability",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
