//! TLS on the client port with etcd's flags: gRPC (etcd-client, etcdctl) and HTTP/1.1 over
//! HTTPS, client-certificate authentication, certificates of foreign CAs, expired
//! certificates, plain-text clients on a TLS port, certificate reload and `--auto-tls`.
//! Certificates are generated at test time.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::certs::{Ca, Pair};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rusd_server::tls::TlsSettings;
use rusd_server::RunningServer;
use storage_api::BackendKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    dir: tempfile::TempDir,
    ca_path: std::path::PathBuf,
    ca_pem: String,
    server: Pair,
    alice: Pair,
    foreign: Pair,
    expired: Pair,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_path) = Ca::new(dir.path(), "ca");
    let (other, _) = Ca::new(dir.path(), "foreign-ca");
    let server = ca.leaf(dir.path(), "server", "server", false);
    let alice = ca.leaf(dir.path(), "alice", "alice", false);
    let foreign = other.leaf(dir.path(), "mallory", "mallory", false);
    let expired = ca.leaf(dir.path(), "old", "old", true);
    Setup {
        ca_pem: ca.pem.clone(),
        dir,
        ca_path,
        server,
        alice,
        foreign,
        expired,
    }
}

async fn start_tls(data: &Path, tls: TlsSettings) -> RunningServer {
    common::start(BackendKind::Memory, data, |c| {
        c.with_listen_client_urls(vec!["https://127.0.0.1:0".into()])
            .with_listen_metrics_urls(vec!["https://127.0.0.1:0".into()])
            .with_client_tls(tls)
    })
    .await
}

fn mtls(s: &Setup, client: Option<&Pair>) -> ConnectOptions {
    let mut tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(s.ca_pem.clone()))
        .domain_name("localhost");
    if let Some(p) = client {
        tls = tls.identity(Identity::from_pem(p.cert_pem.clone(), p.key_pem.clone()));
    }
    ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(5))
}

/// A put through a fresh client: Ok(revision) or the error text.
async fn try_put(url: &str, opts: ConnectOptions) -> Result<i64, String> {
    let mut c = Client::connect([url], Some(opts))
        .await
        .map_err(|e| e.to_string())?;
    c.put("k", "v", None)
        .await
        .map(|r| r.header().unwrap().revision())
        .map_err(|e| e.to_string())
}

/// HTTP/1.1 GET over TLS with a raw rustls client; returns the status line and body.
async fn https_get(
    addr: std::net::SocketAddr,
    s: &Setup,
    client: Option<&Pair>,
    path: &str,
) -> std::io::Result<(String, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(s.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some(p) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(p.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    // Offer both, as curl does: the server must pick HTTP/1.1.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

#[tokio::test]
async fn mutual_tls_accepts_trusted_clients_and_refuses_the_rest() {
    let s = setup();
    let data = s.dir.path().join("data");
    let server = start_tls(
        &data,
        TlsSettings::default()
            .with_cert(&s.server.cert, &s.server.key)
            .with_trusted_ca(&s.ca_path)
            .with_client_cert_auth(true),
    )
    .await;
    let url = server.client_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // A client certificate of the trusted CA: served, exact revisions.
    assert_eq!(try_put(&url, mtls(&s, Some(&s.alice))).await, Ok(2));
    assert_eq!(try_put(&url, mtls(&s, Some(&s.alice))).await, Ok(3));

    // Refused at the handshake, nothing written: no client certificate, a foreign CA's, an
    // expired one, a plain-text client.
    for (what, opts) in [
        ("no client certificate", mtls(&s, None)),
        ("foreign CA", mtls(&s, Some(&s.foreign))),
        ("expired certificate", mtls(&s, Some(&s.expired))),
    ] {
        let r = try_put(&url, opts).await;
        assert!(r.is_err(), "{what}: {r:?}");
    }
    let plain = url.replace("https://", "http://");
    let r = try_put(
        &plain,
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(3)),
    )
    .await;
    assert!(r.is_err(), "plain text on a TLS port: {r:?}");
    assert_eq!(server.store().current_revision(), 3);

    // HTTP/1.1 over TLS on the client port and the metrics port.
    let (status, body) = https_get(server.client_addrs()[0], &s, Some(&s.alice), "/health")
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains(r#""health":"true""#), "{body}");
    let (status, _) = https_get(server.metrics_addrs()[0], &s, Some(&s.alice), "/metrics")
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(https_get(server.client_addrs()[0], &s, None, "/health")
        .await
        .is_err());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn trusted_ca_without_client_cert_auth_makes_the_certificate_optional() {
    let s = setup();
    let server = start_tls(
        &s.dir.path().join("data"),
        TlsSettings::default()
            .with_cert(&s.server.cert, &s.server.key)
            .with_trusted_ca(&s.ca_path),
    )
    .await;
    let url = server.client_url();
    assert_eq!(try_put(&url, mtls(&s, None)).await, Ok(2));
    assert_eq!(try_put(&url, mtls(&s, Some(&s.alice))).await, Ok(3));
    // A presented certificate is still verified.
    assert!(try_put(&url, mtls(&s, Some(&s.foreign))).await.is_err());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_restart() {
    let s = setup();
    let (ca2, ca2_path) = Ca::new(s.dir.path(), "ca2");
    let cert = s.dir.path().join("live.pem");
    let key = s.dir.path().join("live-key.pem");
    std::fs::copy(&s.server.cert, &cert).unwrap();
    std::fs::copy(&s.server.key, &key).unwrap();
    let server = start_tls(
        &s.dir.path().join("data"),
        TlsSettings::default().with_cert(&cert, &key),
    )
    .await;
    let url = server.client_url();
    assert_eq!(try_put(&url, mtls(&s, None)).await, Ok(2));
    // Renew with a certificate of another CA: clients trusting only the first now fail, clients
    // trusting the second succeed.
    let renewed = ca2.leaf(s.dir.path(), "renewed", "server", false);
    // A different modification time even on coarse-grained file systems.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&key, &renewed.key_pem).unwrap();
    std::fs::write(&cert, &renewed.cert_pem).unwrap();
    assert!(try_put(&url, mtls(&s, None)).await.is_err());
    let opts2 = ConnectOptions::new().with_tls(
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read_to_string(&ca2_path).unwrap(),
            ))
            .domain_name("localhost"),
    );
    assert_eq!(try_put(&url, opts2).await, Ok(3));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn https_without_certificates_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = rusd_server::ServerConfig::new(dir.path())
        .with_backend(BackendKind::Memory)
        .with_listen_client_urls(vec!["https://127.0.0.1:0".into()]);
    let err = rusd_server::start(cfg).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "tls: TLS key/cert (--cert-file, --key-file) must be provided for https URLs (or use --auto-tls)"
    );
}

fn etcdctl(args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("etcdctl (Debian package etcd-client) must be installed for this test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_over_mutual_tls_and_auto_tls() {
    let s = setup();
    let server = start_tls(
        &s.dir.path().join("data"),
        TlsSettings::default()
            .with_cert(&s.server.cert, &s.server.key)
            .with_trusted_ca(&s.ca_path)
            .with_client_cert_auth(true),
    )
    .await;
    let ep = format!("--endpoints={}", server.client_url());
    let ca = format!("--cacert={}", s.ca_path.display());
    let cert = format!("--cert={}", s.alice.cert.display());
    let key = format!("--key={}", s.alice.key.display());
    let out = etcdctl(&[&ep, &ca, &cert, &key, "put", "greeting", "hello"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n", "{out:?}");
    let out = etcdctl(&[&ep, &ca, &cert, &key, "get", "greeting"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "greeting\nhello\n");
    // Without the client certificate etcdctl cannot connect.
    let out = etcdctl(&[
        &ep,
        &ca,
        "--dial-timeout=2s",
        "--command-timeout=3s",
        "get",
        "greeting",
    ]);
    assert!(!out.status.success(), "{out:?}");
    server.shutdown().await.unwrap();

    // --auto-tls: a generated self-signed certificate, kept in the data directory.
    let data = s.dir.path().join("auto");
    let server = start_tls(&data, TlsSettings::default().with_auto_tls(true)).await;
    assert!(data.join("fixtures/client/cert.pem").exists());
    let ep = format!("--endpoints={}", server.client_url());
    // etcdctl 3.4 dials in plain text unless some TLS file is given: pass the generated
    // certificate as the CA (the same command works against etcd's --auto-tls).
    let auto_ca = format!(
        "--cacert={}",
        data.join("fixtures/client/cert.pem").display()
    );
    let out = etcdctl(&[&ep, &auto_ca, "--insecure-skip-tls-verify", "put", "a", "1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n", "{out:?}");
    server.shutdown().await.unwrap();
}

#[test]
fn the_common_name_of_a_client_certificate() {
    let s = setup();
    use rustls::pki_types::pem::PemObject;
    let der =
        rustls::pki_types::CertificateDer::from_pem_slice(s.alice.cert_pem.as_bytes()).unwrap();
    let info = rusd_server::tls::ClientConnInfo {
        remote_addr: None,
        peer_certs: Some(Arc::new(vec![der])),
    };
    assert_eq!(info.common_name().as_deref(), Some("alice"));
    assert_eq!(
        rusd_server::tls::ClientConnInfo::default().common_name(),
        None
    );
}
