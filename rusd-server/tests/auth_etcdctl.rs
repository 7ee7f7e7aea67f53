//! `etcdctl` (3.4) user, role and auth flows against rusd and against a real etcd 3.4 started
//! by the test: every command's exit code, stdout and stderr must be the same on both (stderr
//! without its timestamps and connection ids). Also over mutual TLS with `--client-cert-auth`,
//! where the client certificate's common name is the user. Skipped with a notice when etcd or
//! etcdctl is missing, unless `CI` is set.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::certs::Ca;
use common::etcd::Etcd;
use rusd_server::auth::AuthSettings;
use rusd_server::tls::TlsSettings;
use storage_api::BackendKind;

/// One etcdctl invocation: exit code, stdout, normalised stderr.
type Outcome = (i32, String, String);

/// etcdctl's stderr without what differs between runs: the `ts` and `target` fields of its
/// JSON log lines (time, client id and port).
fn normalise(stderr: &str) -> String {
    stderr
        .lines()
        .map(
            |line| match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(mut o)) => {
                    o.remove("ts");
                    o.remove("target");
                    serde_json::Value::Object(o).to_string()
                }
                _ => line.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

fn etcdctl(endpoint: &str, tls: &[String], args: &[&str], stdin: Option<&str>) -> Outcome {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(tls)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    // The endpoint (its port) is the one thing that differs between two servers.
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace(endpoint, "<endpoint>"),
        normalise(&String::from_utf8_lossy(&out.stderr)).replace(endpoint, "<endpoint>"),
    )
}

fn tools_available() -> bool {
    let ctl = Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ctl {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcdctl is not installed but CI is set"
        );
        eprintln!("NOTICE: etcdctl is not installed; skipping");
        return false;
    }
    common::etcd::available()
}

/// The script: (etcdctl arguments, stdin). Every line runs against both servers.
fn script() -> Vec<(Vec<&'static str>, Option<&'static str>)> {
    let root = "--user=root:rootpw";
    let alice = "--user=alice:alicepw";
    let lines: Vec<(Vec<&str>, Option<&str>)> = vec![
        (
            vec!["user", "add", "root", "--new-user-password=rootpw"],
            None,
        ),
        (vec!["user", "grant-role", "root", "root"], None),
        (vec!["role", "add", "app"], None),
        (
            vec![
                "role",
                "grant-permission",
                "--prefix=true",
                "app",
                "readwrite",
                "/app/",
            ],
            None,
        ),
        (vec!["role", "add", "ro"], None),
        (vec!["role", "grant-permission", "ro", "read", "/cfg"], None),
        (
            vec!["user", "add", "alice", "--new-user-password=alicepw"],
            None,
        ),
        (vec!["user", "grant-role", "alice", "app"], None),
        (vec!["user", "grant-role", "alice", "ro"], None),
        (
            vec!["user", "add", "bob", "--new-user-password=bobpw"],
            None,
        ),
        (vec!["put", "/cfg", "c"], None),
        (vec!["auth", "enable"], None),
        // Allowed.
        (vec![root, "put", "/secret/x", "s"], None),
        (vec![alice, "put", "/app/a", "1"], None),
        (vec![alice, "get", "/app/a"], None),
        (
            vec![alice, "get", "--prefix", "/app/", "--print-value-only"],
            None,
        ),
        (vec![alice, "get", "/cfg"], None),
        (vec![alice, "del", "/app/a"], None),
        (vec![alice, "user", "get", "alice"], None),
        (vec![alice, "role", "get", "app"], None),
        (vec![root, "user", "list"], None),
        (vec![root, "role", "list"], None),
        (vec![root, "user", "get", "alice"], None),
        (vec![root, "user", "get", "alice", "--detail"], None),
        (vec![root, "role", "get", "app"], None),
        (vec![root, "role", "get", "ro"], None),
        (vec![root, "get", "/secret/x"], None),
        // Refused.
        (vec!["get", "/app/a"], None),
        (vec!["put", "/app/a", "x"], None),
        (vec![alice, "get", "/secret/x"], None),
        (vec![alice, "put", "/secret/x", "x"], None),
        (vec![alice, "put", "/cfg", "x"], None),
        (vec![alice, "del", "/secret/x"], None),
        (vec![alice, "get", "--prefix", "/"], None),
        (vec!["--user=alice:wrong", "get", "/app/a"], None),
        (vec!["--user=nobody:pw", "get", "/app/a"], None),
        (vec!["--user=bob:bobpw", "get", "/app/a"], None),
        (vec![alice, "user", "list"], None),
        (
            vec![alice, "user", "add", "eve", "--new-user-password=x"],
            None,
        ),
        (vec![alice, "user", "grant-role", "alice", "root"], None),
        (vec![alice, "role", "get", "root"], None),
        (vec![alice, "user", "get", "root"], None),
        (vec![alice, "auth", "disable"], None),
        (vec![alice, "defrag"], None),
        (
            vec![alice, "txn"],
            Some("\nput /app/t 1\n\nput /secret/t 1\n\n"),
        ),
        (vec![root, "user", "delete", "root"], None),
        (vec![root, "user", "revoke-role", "root", "root"], None),
        (
            vec![root, "user", "add", "alice", "--new-user-password=x"],
            None,
        ),
        (vec![root, "role", "add", "app"], None),
        (vec![root, "user", "grant-role", "alice", "nope"], None),
        (vec![root, "user", "revoke-role", "alice", "nope"], None),
        (
            vec![root, "role", "revoke-permission", "app", "/nope"],
            None,
        ),
        (vec![root, "role", "delete", "nope"], None),
        (vec![root, "user", "delete", "nope"], None),
        // Changes mid-session, then auth off.
        (
            vec![
                root,
                "role",
                "revoke-permission",
                "app",
                "/app/",
                "--prefix=true",
            ],
            None,
        ),
        (vec![alice, "put", "/app/a", "2"], None),
        (vec![root, "user", "revoke-role", "alice", "ro"], None),
        (vec![alice, "get", "/cfg"], None),
        (
            vec![root, "user", "passwd", "alice", "--interactive=false"],
            Some("newpw\n"),
        ),
        (vec![alice, "get", "/cfg"], None),
        (vec![root, "role", "delete", "ro"], None),
        (vec![root, "user", "delete", "bob"], None),
        (vec![root, "auth", "disable"], None),
        (vec!["get", "/secret/x", "--print-value-only"], None),
        (vec!["--user=root:rootpw", "get", "/secret/x"], None),
        (vec!["auth", "disable"], None),
    ];
    lines
}

fn run_script(endpoint: &str, tls: &[String]) -> Vec<Outcome> {
    script()
        .iter()
        .map(|(args, stdin)| etcdctl(endpoint, tls, args, *stdin))
        .collect()
}

fn compare(rusd: &[Outcome], etcd: &[Outcome]) {
    let script = script();
    let mut diffs = Vec::new();
    for (i, ((r, e), (args, _))) in rusd.iter().zip(etcd).zip(&script).enumerate() {
        if r != e {
            diffs.push(format!(
                "line {i} etcdctl {}:\n  rusd: {r:?}\n  etcd: {e:?}",
                args.join(" ")
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    assert_eq!(rusd.len(), script.len());
}

fn rusd_auth() -> AuthSettings {
    AuthSettings {
        bcrypt_cost: 4,
        ..AuthSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_flow_matches_etcd_3_4() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(BackendKind::Memory, dir.path(), |c| {
        c.with_auth(rusd_auth())
    })
    .await;
    let url = server.client_url();
    let rusd = tokio::task::spawn_blocking(move || run_script(&url, &[]))
        .await
        .unwrap();
    let etcd = Etcd::start(&["--bcrypt-cost=4"]);
    let etcd_url = etcd.url.clone();
    let theirs = tokio::task::spawn_blocking(move || run_script(&etcd_url, &[]))
        .await
        .unwrap();
    drop(etcd);
    // A few lines spelled out, so the comparison is not between two broken servers.
    assert_eq!(rusd[0], (0, "User root created\n".into(), String::new()));
    assert_eq!(
        rusd[11],
        (0, "Authentication Enabled\n".into(), String::new())
    );
    assert_eq!(rusd[14].1, "/app/a\n1\n");
    let denied = &rusd[29];
    assert_eq!(denied.0, 1);
    assert!(
        denied.2.ends_with("Error: etcdserver: permission denied"),
        "{denied:?}"
    );
    for (o, (a, _)) in rusd.iter().zip(script()) {
        println!("etcdctl {}: {o:?}", a.join(" "));
    }
    compare(&rusd, &theirs);
    server.shutdown().await.unwrap();
}

/// etcdctl over mutual TLS with `--client-cert-auth`: the certificate's common name is the
/// user when no `--user` is given; same answers as etcd 3.4 with the same certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_with_client_certificate_users_matches_etcd_3_4() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_path) = Ca::new(dir.path(), "ca");
    let server_pair = ca.leaf(dir.path(), "server", "server", false);
    let root = ca.leaf(dir.path(), "root", "root", false);
    let alice = ca.leaf(dir.path(), "alice", "alice", false);
    let tls_flags = |p: &common::certs::Pair| {
        vec![
            format!("--cacert={}", ca_path.display()),
            format!("--cert={}", p.cert.display()),
            format!("--key={}", p.key.display()),
        ]
    };
    let (as_root, as_alice) = (tls_flags(&root), tls_flags(&alice));
    let steps: Vec<(bool, Vec<&str>)> = vec![
        (
            true,
            vec!["user", "add", "root", "--new-user-password=rootpw"],
        ),
        (true, vec!["user", "grant-role", "root", "root"]),
        (true, vec!["role", "add", "app"]),
        (
            true,
            vec![
                "role",
                "grant-permission",
                "--prefix=true",
                "app",
                "readwrite",
                "/app/",
            ],
        ),
        (true, vec!["user", "add", "alice", "--no-password"]),
        (true, vec!["user", "grant-role", "alice", "app"]),
        (true, vec!["auth", "enable"]),
        (true, vec!["put", "/secret/x", "s"]),
        (false, vec!["put", "/app/a", "1"]),
        (false, vec!["get", "/app/a", "--print-value-only"]),
        (false, vec!["get", "/secret/x"]),
        (false, vec!["user", "list"]),
        (false, vec!["--user=alice:x", "get", "/app/a"]),
        (true, vec!["user", "list"]),
        (true, vec!["get", "/secret/x", "--print-value-only"]),
        (true, vec!["auth", "disable"]),
    ];
    let run = |endpoint: &str| -> Vec<Outcome> {
        steps
            .iter()
            .map(|(is_root, args)| {
                let tls = if *is_root { &as_root } else { &as_alice };
                etcdctl(endpoint, tls, args, None)
            })
            .collect()
    };
    let data = dir.path().join("rusd");
    let tls = TlsSettings::default()
        .with_cert(&server_pair.cert, &server_pair.key)
        .with_trusted_ca(&ca_path)
        .with_client_cert_auth(true);
    let server = common::start(BackendKind::Memory, &data, |c| {
        c.with_listen_client_urls(vec!["https://127.0.0.1:0".into()])
            .with_client_tls(tls)
            .with_auth(rusd_auth())
    })
    .await;
    let url = server.client_url();
    let ours = tokio::task::block_in_place(|| run(&url));
    let cert = format!("--cert-file={}", server_pair.cert.display());
    let key = format!("--key-file={}", server_pair.key.display());
    let ca_flag = format!("--trusted-ca-file={}", ca_path.display());
    let etcd = Etcd::start_with(
        "https",
        &[
            cert.as_str(),
            key.as_str(),
            ca_flag.as_str(),
            "--client-cert-auth",
            "--bcrypt-cost=4",
        ],
        &as_root,
    );
    let theirs = tokio::task::block_in_place(|| run(&etcd.url));
    drop(etcd);
    assert_eq!(ours[8], (0, "OK\n".into(), String::new()));
    assert_eq!(ours[9].1, "1\n");
    assert!(
        ours[10].2.ends_with("Error: etcdserver: permission denied"),
        "{:?}",
        ours[10]
    );
    let mut diffs = Vec::new();
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        if o != t {
            diffs.push(format!(
                "step {i} {:?}:\n  rusd: {o:?}\n  etcd: {t:?}",
                steps[i].1
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    server.shutdown().await.unwrap();
}
