//! Peer TLS (etcd's `--peer-*` flags) with `rusd` processes on loopback: a three-member
//! cluster over `https` peer URLs with mutual TLS elects a leader and replicates; a member
//! whose certificate comes from a foreign CA is refused at the handshake and never starts;
//! plain-text traffic to an `https` peer port gets no HTTP/2 answer; a `--peer-auto-tls`
//! cluster works; misconfigurations are refused at start-up.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::Ca;
use etcd_client::Client;
use rusd_testkit::cluster::{initial_cluster, ClusterState, Member};

const RUSD: &str = env!("CARGO_BIN_EXE_rusd");
const TOKEN: &str = "rusd-peer-tls-test";

fn free_port() -> u16 {
    rusd_testkit::process::free_port().unwrap()
}

/// A member with https peer URLs (its TLS flags are added per test).
fn member(tmp: &Path, name: &str) -> Member {
    Member::new(RUSD, tmp, name)
        .unwrap()
        .backend("memory")
        .token(TOKEN)
        .https_peers()
}

/// Waits until every member reports the same leader; returns it.
async fn agreed_leader(clients: &mut [Client]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut leaders = Vec::new();
        for c in clients.iter_mut() {
            match tokio::time::timeout(Duration::from_secs(1), c.status()).await {
                Ok(Ok(s)) => leaders.push(s.leader()),
                _ => leaders.push(0),
            }
        }
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:x?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Puts `key` through the first member and reads it back linearizably from every member.
async fn put_and_read_everywhere(clients: &mut [Client], key: &str, value: &str) {
    let rev = tokio::time::timeout(Duration::from_secs(10), clients[0].put(key, value, None))
        .await
        .expect("put timed out")
        .unwrap()
        .header()
        .unwrap()
        .revision();
    for c in clients.iter_mut() {
        let r = c.get(key, None).await.unwrap();
        let got = common::kvs(&r);
        assert_eq!(got, vec![(key.to_string(), value.to_string(), rev)]);
    }
}

/// Waits until `path` contains `needle`.
async fn wait_for_log(path: &Path, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} has no {needle:?} within {within:?}:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects to the peer port `port` over TLS trusting `ca` and presenting `identity` (none:
/// no client certificate), sends the HTTP/2 preface and an empty SETTINGS frame, and returns
/// the first 4 bytes answered (an HTTP/2 frame header) or the error.
fn tls_h2_answer(
    port: u16,
    ca: &Path,
    identity: Option<&common::certs::Pair>,
) -> Result<[u8; 4], String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(p) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&p.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&p.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "127.0.0.1".try_into().unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 4];
    tls.read_exact(&mut head).map_err(|e| e.to_string())?;
    Ok(head)
}

/// A TLS record (type 0x15, alert; TLS 1.2 record version) of a fatal (2) `decode_error`
/// (50) alert: what a TLS server answers to bytes that are not a ClientHello.
const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];

/// What a plain-text HTTP/2 client gets from `port`: the bytes answered to the HTTP/2
/// preface and an empty SETTINGS frame, until the server closes the connection.
fn plaintext_h2_answer(port: u16) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut answer = Vec::new();
    // A refused connection is closed (or reset) after the answer.
    let _ = s.read_to_end(&mut answer);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_peers_replicate_and_refuse_foreign_and_plaintext_peers() {
    tokio::time::timeout(Duration::from_secs(120), mutual_tls())
        .await
        .expect("peer TLS test took longer than 120 s");
}

async fn mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, ca_file) = Ca::new(dir, "peer-ca");
    let (foreign, foreign_file) = Ca::new(dir, "foreign-ca");
    let flags = |cert: &common::certs::Pair, ca: &Path| -> Vec<String> {
        vec![
            "--peer-cert-file".into(),
            cert.cert.to_str().unwrap().into(),
            "--peer-key-file".into(),
            cert.key.to_str().unwrap().into(),
            "--peer-trusted-ca-file".into(),
            ca.to_str().unwrap().into(),
            "--peer-client-cert-auth".into(),
        ]
    };
    let mut members: Vec<Member> = (1..=3)
        .map(|i| {
            let name = format!("m{i}");
            let cert = ca.leaf(dir, &name, &name, false);
            member(dir, &name).args(flags(&cert, &ca_file))
        })
        .collect();
    let cluster = initial_cluster(&members);
    for m in &mut members {
        m.spawn(&cluster, ClusterState::New).unwrap();
    }
    // Dropping the members kills them, whatever happened.
    let mut clients = Vec::new();
    for m in &members {
        clients.push(common::connect_to(&m.endpoint()).await);
    }
    let leader = agreed_leader(&mut clients).await;
    assert_ne!(leader, 0);
    put_and_read_everywhere(&mut clients, "k/tls", "over-mtls").await;

    // Plain text to an https peer port: no HTTP/2 SETTINGS frame comes back (a plain peer
    // port answers `00 00 12 04 ...`), only rustls' fatal `decode_error` alert record before
    // the connection is closed, and the member logs the refused handshake.
    assert_eq!(
        plaintext_h2_answer(members[0].peer_port()),
        DECODE_ERROR_ALERT
    );
    wait_for_log(
        &members[0].log_path(),
        "peer TLS handshake refused",
        Duration::from_secs(10),
    )
    .await;

    // TLS clients on the peer port: with a member certificate of the peer CA, HTTP/2 answers
    // (a SETTINGS frame, type 4); with a foreign CA's certificate or none, the member refuses
    // the handshake (TLS 1.3: the client learns it from the alert after its Finished).
    let m1 = ca.leaf(dir, "probe", "probe", false);
    let alien = foreign.leaf(dir, "alien", "alien", false);
    let settings = tls_h2_answer(members[0].peer_port(), &ca_file, Some(&m1)).unwrap();
    assert_eq!(settings[3], 4, "{settings:x?}");
    assert_eq!(
        tls_h2_answer(members[0].peer_port(), &ca_file, Some(&alien)).unwrap_err(),
        "received fatal alert: UnknownCA"
    );
    assert_eq!(
        tls_h2_answer(members[0].peer_port(), &ca_file, None).unwrap_err(),
        "received fatal alert: CertificateRequired"
    );

    // A fourth member with a certificate of a foreign CA: MemberAdd succeeds (as in etcd),
    // but no handshake between it and the members succeeds, so it never starts: it stays a
    // learner without a name, and the cluster keeps working.
    let cert4 = foreign.leaf(dir, "m4", "m4", false);
    let mut m4 = member(dir, "m4").args(flags(&cert4, &foreign_file));
    let id4 = rusd_raft::member_id(&[m4.peer_url()], TOKEN);
    let added = clients[0]
        .member_add([m4.peer_url().as_str()], None)
        .await
        .unwrap();
    assert_eq!(added.member().unwrap().id(), id4);
    let cluster4 = format!("{cluster},m4={}", m4.peer_url());
    m4.spawn(&cluster4, ClusterState::Existing).unwrap();
    let log4 = m4.log_path();
    members.push(m4);
    // The leader keeps dialling m4 and rejects its certificate; m4 sees the refusal.
    wait_for_log(&log4, "peer TLS handshake refused", Duration::from_secs(20)).await;
    let list = clients[1].member_list().await.unwrap();
    let m = list.members().iter().find(|m| m.id() == id4).unwrap();
    assert_eq!(
        (m.name(), m.is_learner(), m.client_urls().len()),
        ("", true, 0)
    );
    put_and_read_everywhere(&mut clients, "k/after", "still-up").await;
    drop(members);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_auto_tls_cluster_replicates() {
    tokio::time::timeout(Duration::from_secs(90), auto_tls())
        .await
        .expect("peer auto-TLS test took longer than 90 s");
}

async fn auto_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut members: Vec<Member> = (1..=3)
        .map(|i| member(dir, &format!("a{i}")).arg("--peer-auto-tls"))
        .collect();
    let cluster = initial_cluster(&members);
    for m in &mut members {
        m.spawn(&cluster, ClusterState::New).unwrap();
    }
    let mut clients = Vec::new();
    for m in &members {
        clients.push(common::connect_to(&m.endpoint()).await);
    }
    agreed_leader(&mut clients).await;
    put_and_read_everywhere(&mut clients, "k/auto", "over-auto-tls").await;
    for m in &members {
        let fixtures = m.data_dir().join("fixtures").join("peer");
        assert!(
            fixtures.join("cert.pem").is_file(),
            "{}",
            fixtures.display()
        );
        assert!(fixtures.join("key.pem").is_file(), "{}", fixtures.display());
    }
    assert_eq!(
        plaintext_h2_answer(members[1].peer_port()),
        DECODE_ERROR_ALERT
    );
    drop(members);
}

/// Runs `rusd` with `args` expecting a configuration error; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(RUSD)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn https_peers_without_certificates_or_mixed_with_http_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let data = data.to_str().unwrap();
    let p1 = format!("https://127.0.0.1:{}", free_port());
    let p2 = format!("http://127.0.0.1:{}", free_port());
    let c = format!("http://127.0.0.1:{}", free_port());
    let err = refused(&[
        "--data-dir",
        data,
        "--listen-client-urls",
        &c,
        "--listen-peer-urls",
        &p1,
    ]);
    assert_eq!(
        err.trim(),
        format!(
            "rusd: invalid configuration: cannot listen on TLS for {}: KeyFile and CertFile are \
             not presented (--peer-cert-file and --peer-key-file, or --peer-auto-tls)",
            p1.trim_start_matches("https://")
        )
    );
    let cluster = format!("default={p1},other={p2}");
    let err = refused(&[
        "--data-dir",
        data,
        "--listen-client-urls",
        &c,
        "--listen-peer-urls",
        &p1,
        "--initial-cluster",
        &cluster,
        "--peer-auto-tls",
    ]);
    assert_eq!(
        err.trim(),
        format!(
            "rusd: invalid configuration: peer URLs mix https ({p1}) and http ({p2}): use https for \
             every peer URL (with --peer-cert-file/--peer-key-file or --peer-auto-tls) or http \
             for all"
        )
    );
    let err = refused(&[
        "--data-dir",
        data,
        "--listen-peer-urls",
        &p1,
        "--peer-cert-file",
        "/nonexistent/cert.pem",
    ]);
    assert_eq!(
        err.trim(),
        "rusd: invalid configuration: --peer-cert-file and --peer-key-file must be given together"
    );
    // Certificate files that do not exist: a start-up error naming the file.
    let out = Command::new(RUSD)
        .args([
            "--data-dir",
            data,
            "--listen-client-urls",
            &c,
            "--listen-peer-urls",
            &p1,
            "--peer-cert-file",
            "/nonexistent/peer.pem",
            "--peer-key-file",
            "/nonexistent/peer-key.pem",
            "--peer-trusted-ca-file",
            "/nonexistent/ca.pem",
        ])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.starts_with("rusd: tls: /nonexistent/peer.pem: "),
        "{err}"
    );
}
