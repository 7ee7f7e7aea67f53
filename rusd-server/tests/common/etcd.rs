//! A real etcd (Debian's `etcd-server`, 3.4) started for a test on free loopback ports in a
//! temporary data directory, killed when dropped. Tests that compare with etcd skip with a
//! notice when `etcd` is not installed, and fail instead when the environment variable `CI` is
//! set.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd; killed (and its data directory removed) on drop.
pub struct Etcd {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The client address.
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when an `etcd` binary runs; false (after a notice) when it does not and `CI` is unset;
/// panics when it does not and `CI` is set.
pub fn available() -> bool {
    let ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd is not installed but CI is set: install Debian's etcd-server"
        );
        eprintln!("NOTICE: etcd is not installed; skipping the comparison with etcd");
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

impl Etcd {
    /// Starts etcd with `extra` flags and waits until it answers on its client port.
    pub fn start(extra: &[&str]) -> Etcd {
        Etcd::start_with("http", extra, &[])
    }

    /// Starts etcd serving `scheme` (`http` or `https`) with `extra` flags; `ctl` are the
    /// etcdctl flags (certificates) of the readiness check.
    pub fn start_with(scheme: &str, extra: &[&str], ctl: &[String]) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{client}").parse().unwrap();
        let etcd = Etcd {
            child,
            url,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", etcd.url))
                .args(ctl)
                .args(["--command-timeout=2s", "endpoint", "health"])
                .output();
            if out.map(|o| o.status.success()).unwrap_or(false) {
                break;
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }
}
