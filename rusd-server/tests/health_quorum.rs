//! `/health` follows raft as etcd's does: a member that knows no leader (its cluster has no
//! quorum) answers 503 `RAFT NO LEADER`; once a quorum forms it answers healthy.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use rusd_testkit::cluster::{ClusterState, Member};

/// A member with the server's default timings (heartbeat 100 ms, election 1 s).
fn member(dir: &std::path::Path, name: &str) -> Member {
    Member::new(env!("CARGO_BIN_EXE_rusd"), dir, name)
        .unwrap()
        .backend("memory")
        .token("health-test")
        .timing(100, 1000)
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
    let mut a = member(dir.path(), "a");
    let mut b = member(dir.path(), "b");
    let ca = a.client_port();
    let cluster = format!("a={},b={}", a.peer_url(), b.peer_url());
    // One of two members: no quorum, no leader.
    a.spawn(&cluster, ClusterState::New).unwrap();
    let (status, body) = wait_for(ca, "503");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(body, r#"{"health":"false","reason":"RAFT NO LEADER"}"#);
    // The second member makes a quorum: a leader, healthy.
    b.spawn(&cluster, ClusterState::New).unwrap();
    let (status, body) = wait_for(ca, "200");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
}
