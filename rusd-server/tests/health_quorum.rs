//! `/health` follows raft as etcd's does: a member that knows no leader (its cluster has no
//! quorum) answers 503 `RAFT NO LEADER`; once a quorum forms it answers healthy.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    rusd_testkit::process::free_port().unwrap()
}

fn start(dir: &std::path::Path, name: &str, client: u16, peer: u16, cluster: &str) -> Member {
    Member(
        Command::new(env!("CARGO_BIN_EXE_rusd"))
            .args([
                "--name",
                name,
                "--data-dir",
                dir.join(name).to_str().unwrap(),
                "--backend",
                "memory",
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                cluster,
                "--initial-cluster-token",
                "health-test",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `GET /health` on the client port: `(status line, body)`, or `None` while not listening.
fn health(port: u16) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.lines().next()?.to_string();
    let body = out.split("\r\n\r\n").nth(1)?.to_string();
    Some((status, body))
}

fn wait_for(port: u16, want: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((status, body)) = health(port) {
            if status.contains(want) {
                return (status, body);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {want} from /health on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_is_unhealthy_without_a_leader_and_healthy_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, pa, cb, pb) = (free_port(), free_port(), free_port(), free_port());
    let cluster = format!("a=http://127.0.0.1:{pa},b=http://127.0.0.1:{pb}");
    // One of two members: no quorum, no leader.
    let _a = start(dir.path(), "a", ca, pa, &cluster);
    let (status, body) = wait_for(ca, "503");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(body, r#"{"health":"false","reason":"RAFT NO LEADER"}"#);
    // The second member makes a quorum: a leader, healthy.
    let _b = start(dir.path(), "b", cb, pb, &cluster);
    let (status, body) = wait_for(ca, "200");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
}
