//! The unmodified `etcdctl` (v3 API; Debian's `etcd-client` package ships 3.4) against rusd on
//! every compiled engine, comparing its output with what it prints for etcd. Skipped, with a
//! notice, when `etcdctl` is not installed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn etcdctl_available() -> bool {
    Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Kills the child (an `etcdctl watch`) when dropped, also when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ctl {
    endpoint: String,
}

impl Ctl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--command-timeout=10s")
            .args(args);
        c
    }

    /// Runs etcdctl; returns (exit code, stdout, stderr).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut c = self.cmd(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args, None);
        assert_eq!(code, 0, "etcdctl {args:?}: {err}");
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_against_every_engine() {
    if !etcdctl_available() {
        // CI installs etcdctl (.ci/run); there a missing binary is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "etcdctl is not installed but CI is set: .ci/run must install etcd-client"
        );
        println!("NOTICE: etcdctl not found; skipping (install Debian's etcd-client package)");
        return;
    }
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c).await;
        let port = server.client_addrs()[0].port();
        let member = format!("{:x}", server.member_id());
        // etcdctl 3.4 dials `endpoint status`/`defrag`/`hashkv` with the endpoint (scheme
        // included) as the HTTP/2 authority: both endpoint forms are exercised.
        let ctl = Ctl {
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = Ctl {
            endpoint: format!("127.0.0.1:{port}"),
        };
        let ctl = &ctl;

        let job = tokio::task::spawn_blocking({
            let ctl = Ctl {
                endpoint: ctl.endpoint.clone(),
            };
            let member = member.clone();
            // The peer URL of this one-member cluster (a free loopback port).
            let peer =
                server.raft().unwrap().metrics().members[&server.member_id()].peer_urls[0].clone();
            let cluster = server.cluster_id();
            let member_id = server.member_id();
            move || {
                // put / get
                assert_eq!(ctl.ok(&["put", "foo", "bar"]), "OK\n");
                assert_eq!(http.ok(&["put", "foo2", "bar2"]), "OK\n");
                assert_eq!(ctl.ok(&["put", "zoo", "z"]), "OK\n");
                assert_eq!(ctl.ok(&["put", "foo", "baz"]), "OK\n"); // revision 5
                assert_eq!(ctl.ok(&["get", "foo"]), "foo\nbaz\n");
                assert_eq!(
                    ctl.ok(&["get", "foo", "--prefix"]),
                    "foo\nbaz\nfoo2\nbar2\n"
                );
                assert_eq!(ctl.ok(&["get", "foo", "--rev=2"]), "foo\nbar\n");
                assert_eq!(
                    ctl.ok(&["get", "foo", "--prefix", "--limit=1"]),
                    "foo\nbaz\n"
                );
                assert_eq!(
                    ctl.ok(&["get", "", "--from-key", "--keys-only"]),
                    "foo\n\nfoo2\n\nzoo\n\n"
                );
                assert_eq!(
                    ctl.ok(&["get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"]),
                    "foo\nbaz\nzoo\nz\nfoo2\nbar2\n"
                );
                assert_eq!(ctl.ok(&["get", "foo", "--print-value-only"]), "baz\n");
                assert_eq!(
                    ctl.ok(&["get", "foo", "-w", "json"]),
                    format!(
                        "{{\"header\":{{\"cluster_id\":{cluster},\"member_id\":{member_id},\"revision\":5,\"raft_term\":1}},\"kvs\":[{{\"key\":\"Zm9v\",\"create_revision\":2,\"mod_revision\":5,\"version\":2,\"value\":\"YmF6\"}}],\"count\":1}}\n"
                    )
                );

                // del
                assert_eq!(ctl.ok(&["del", "zoo"]), "1\n");
                assert_eq!(ctl.ok(&["del", "nothing"]), "0\n");

                // txn (non-interactive, from stdin)
                let (code, out, err) = ctl.run(
                    &["txn"],
                    Some("value(\"foo\") = \"baz\"\n\nput foo qux\nget foo\n\nput foo nope\n\n"),
                );
                assert_eq!(code, 0, "{err}");
                assert_eq!(out, "SUCCESS\n\nOK\n\nfoo\nqux\n");
                let (_, out, _) = ctl.run(
                    &["txn"],
                    Some("version(\"foo\") = \"1\"\n\nput foo x\n\nget foo2\n\n"),
                );
                assert_eq!(out, "FAILURE\n\nfoo2\nbar2\n");

                // watch: history from a revision, then a live event
                let mut watch = KillOnDrop(
                    ctl.cmd(&["watch", "foo", "--rev=5"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                );
                let mut lines = BufReader::new(watch.0.stdout.take().unwrap()).lines();
                let mut next = || lines.next().unwrap().unwrap();
                assert_eq!(
                    (next(), next(), next()),
                    ("PUT".into(), "foo".into(), "baz".into())
                );
                assert_eq!(
                    (next(), next(), next()),
                    ("PUT".into(), "foo".into(), "qux".into())
                );
                assert_eq!(ctl.ok(&["del", "foo"]), "1\n");
                assert_eq!((next(), next()), ("DELETE".into(), "foo".into()));
                drop(watch);

                // lease grant / keep-alive / timetolive / revoke
                let out = ctl.ok(&["lease", "grant", "60"]);
                let id = out
                    .strip_prefix("lease ")
                    .and_then(|s| s.strip_suffix(" granted with TTL(60s)\n"))
                    .unwrap_or_else(|| panic!("{out}"))
                    .to_string();
                assert_eq!(
                    ctl.ok(&["put", "lk", "v", &format!("--lease={id}")]),
                    "OK\n"
                );
                assert_eq!(
                    ctl.ok(&["lease", "list"]),
                    format!("found 1 leases\n{id}\n")
                );
                assert_eq!(
                    ctl.ok(&["lease", "keep-alive", "--once", &id]),
                    format!("lease {id} keepalived with TTL(60)\n")
                );
                let out = ctl.ok(&["lease", "timetolive", &id, "--keys"]);
                assert!(
                    out == format!(
                        "lease {id} granted with TTL(60s), remaining(60s), attached keys([lk])\n"
                    ) || out
                        == format!(
                        "lease {id} granted with TTL(60s), remaining(59s), attached keys([lk])\n"
                    ),
                    "{out}"
                );
                assert_eq!(
                    ctl.ok(&["lease", "revoke", &id]),
                    format!("lease {id} revoked\n")
                );
                assert_eq!(
                    ctl.ok(&["lease", "timetolive", &id]),
                    format!("lease {id} already expired\n")
                );
                assert_eq!(ctl.ok(&["get", "lk"]), "");
                let (code, _, err) = ctl.run(&["put", "k", "v", "--lease=1234"], None);
                assert_ne!(code, 0);
                assert!(
                    err.contains("Error: etcdserver: requested lease not found"),
                    "{err}"
                );

                // compaction
                let rev: i64 = {
                    let out = ctl.ok(&["get", "foo2", "-w", "json"]);
                    let i = out.find("\"revision\":").unwrap() + 11;
                    out[i..]
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                assert_eq!(ctl.ok(&["compaction", "4"]), "compacted revision 4\n");
                let (code, _, err) = ctl.run(&["get", "foo", "--rev=3"], None);
                assert_ne!(code, 0);
                assert!(
                    err.contains("Error: etcdserver: mvcc: required revision has been compacted"),
                    "{err}"
                );
                assert_eq!(
                    ctl.ok(&["compaction", "--physical", &rev.to_string()]),
                    format!("compacted revision {rev}\n")
                );

                // endpoint status / health / hashkv, member list, alarm list
                let out = ctl.ok(&["endpoint", "status", "-w", "json"]);
                for part in [
                    format!("\"Endpoint\":\"{}\"", ctl.endpoint),
                    "\"version\":\"3.5.0\"".to_string(),
                    format!("\"leader\":{member_id}"),
                    "\"raftTerm\":1".to_string(),
                ] {
                    assert!(out.contains(&part), "{part} not in {out}");
                }
                // The raft index counts log entries (leases, compactions and refused requests
                // included), so it is at least the revision; all of them are applied.
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                let st = &v[0]["Status"];
                let index = st["raftIndex"].as_i64().unwrap();
                assert!(index >= rev, "{out}");
                assert_eq!(st["raftAppliedIndex"].as_i64(), Some(index), "{out}");
                let out = ctl.ok(&["endpoint", "status", "-w", "table"]);
                assert!(
                    out.contains(&format!("| {} | {member} |   3.5.0 |", ctl.endpoint)),
                    "{out}"
                );
                let (code, out, err) = ctl.run(&["endpoint", "health"], None);
                assert_eq!(code, 0, "{err}");
                let health = format!("{out}{err}");
                assert!(
                    health.contains(&format!(
                        "{} is healthy: successfully committed proposal: took = ",
                        ctl.endpoint
                    )),
                    "{health}"
                );
                assert!(ctl
                    .ok(&["endpoint", "hashkv"])
                    .starts_with(&format!("{}, ", ctl.endpoint)));
                assert_eq!(
                    ctl.ok(&["member", "list"]),
                    format!("{member}, started, m1, {peer}, {}, false\n", ctl.endpoint)
                );
                assert_eq!(ctl.ok(&["alarm", "list"]), "");

                // snapshot save, defrag
                let snap = tempfile::tempdir().unwrap();
                let path = snap.path().join("snap.db");
                let path = path.to_str().unwrap();
                assert_eq!(
                    ctl.ok(&["snapshot", "save", path]),
                    format!("Snapshot saved at {path}\n")
                );
                let bytes = std::fs::read(path).unwrap();
                assert_eq!(bytes.len() % 512, 32);
                assert!(rusd_server::maintenance::frame::unframe(&bytes).is_some());
                assert_eq!(
                    ctl.ok(&["defrag"]),
                    format!("Finished defragmenting etcd member[{}]\n", ctl.endpoint)
                );
                assert_eq!(ctl.ok(&["get", "foo2", "--print-value-only"]), "bar2\n");
                // The scheme-less endpoint form of the per-endpoint maintenance commands.
                let out = http.ok(&["endpoint", "status", "-w", "table"]);
                assert!(
                    out.contains(&format!("| {} | {member} |   3.5.0 |", http.endpoint)),
                    "{out}"
                );
                assert_eq!(
                    http.ok(&["defrag"]),
                    format!("Finished defragmenting etcd member[{}]\n", http.endpoint)
                );
            }
        });
        tokio::time::timeout(Duration::from_secs(300), job)
            .await
            .expect("etcdctl scenario finished in time")
            .unwrap();
        let _ = ctl;
        tokio::time::sleep(Duration::from_millis(10)).await;
        server.shutdown().await.unwrap();
    }
}
