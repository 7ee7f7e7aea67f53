//! Helpers shared by the integration tests: in-process servers on loopback port 0, clients,
//! error inspection.
#![allow(dead_code)]

pub mod certs;
pub mod etcd;

use std::path::Path;
use std::time::Duration;

use etcd_client::Client;
use rusd_server::{RunningServer, ServerConfig};
use storage_api::BackendKind;
use tonic::Code;

/// Every engine compiled into this build.
pub fn engines() -> Vec<BackendKind> {
    mvcc_core::compiled_backends()
}

/// Starts a server on a free loopback port (client and metrics) with `tweak` applied.
pub async fn start(
    kind: BackendKind,
    dir: &Path,
    tweak: impl FnOnce(ServerConfig) -> ServerConfig,
) -> RunningServer {
    let cfg = ServerConfig::new(dir)
        .with_name("m1")
        .with_backend(kind)
        .with_listen_client_urls(vec!["http://127.0.0.1:0".into()])
        .with_listen_metrics_urls(vec!["http://127.0.0.1:0".into()]);
    rusd_server::start(tweak(cfg)).await.unwrap()
}

/// A client of `server`.
pub async fn connect(server: &RunningServer) -> Client {
    Client::connect([server.client_url()], None).await.unwrap()
}

/// The gRPC code and message of a failed call.
pub fn status<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> (Code, String) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP GET (one request, then the server closes): `(status line, body)`.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// `(key, value, mod revision)` of every key-value of a Get response, in order.
pub fn kvs(r: &etcd_client::GetResponse) -> Vec<(String, String, i64)> {
    r.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect()
}

/// A client of `endpoint` (`127.0.0.1:port`), retrying for up to 30 s while the server starts
/// (each attempt capped at 2 s).
pub async fn connect_to(endpoint: &str) -> Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_secs(2), Client::connect([endpoint], None)).await
        {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cannot connect to {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
