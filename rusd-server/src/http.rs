//! A tiny HTTP/1.1 responder for `/health` and Prometheus-style `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::ETCD_VERSION;
use crate::pb::etcdserverpb::AlarmType;
use crate::state::State;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Serves `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let st = state.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), handle(stream, st)).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/health" | "/readyz" | "/livez") => {
            if state.has_alarm(AlarmType::Nospace) {
                (
                    "503 Service Unavailable",
                    "application/json",
                    r#"{"health":"false","reason":"ALARM NOSPACE"}"#.to_string(),
                )
            } else if let Some(reason) = state.store.failure() {
                (
                    "503 Service Unavailable",
                    "application/json",
                    serde_json::json!({
                        "health": "false",
                        "reason": format!("STORE FAILED: {reason}"),
                    })
                    .to_string(),
                )
            } else {
                (
                    "200 OK",
                    "application/json",
                    r#"{"health":"true","reason":""}"#.to_string(),
                )
            }
        }
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(&state),
        ),
        ("GET" | "HEAD", "/version") => (
            "200 OK",
            "application/json",
            format!(r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"3.5.0"}}"#),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "404 page not found\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".into(),
        ),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// Renders the metrics in the Prometheus text format.
pub fn render_metrics(state: &State) -> String {
    let store = &state.store;
    let mut out = String::new();
    metric(
        &mut out,
        "etcd_server_has_leader",
        "gauge",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        1,
    );
    metric(
        &mut out,
        "etcd_server_is_leader",
        "gauge",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        1,
    );
    let _ = writeln!(out, "# HELP etcd_server_version Which version is running. 1 for 'server_version' label with current version.");
    let _ = writeln!(out, "# TYPE etcd_server_version gauge");
    let _ = writeln!(
        out,
        "etcd_server_version{{server_version=\"{ETCD_VERSION}\"}} 1"
    );
    let _ = writeln!(out, "# HELP etcd_server_id Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.");
    let _ = writeln!(out, "# TYPE etcd_server_id gauge");
    let _ = writeln!(
        out,
        "etcd_server_id{{server_id=\"{:x}\"}} 1",
        state.member_id
    );
    let _ = writeln!(
        out,
        "# HELP rusd_backend_info The storage engine. 1 for 'engine' label with its name."
    );
    let _ = writeln!(out, "# TYPE rusd_backend_info gauge");
    let _ = writeln!(
        out,
        "rusd_backend_info{{engine=\"{}\"}} 1",
        store.backend().kind()
    );
    metric(
        &mut out,
        "etcd_server_quota_backend_bytes",
        "gauge",
        "Current backend storage quota size in bytes.",
        state.quota.unwrap_or(0),
    );
    let size = state.db_size.load(Ordering::Relaxed);
    metric(
        &mut out,
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        size,
    );
    metric(
        &mut out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "gauge",
        "Total size of the underlying database logically in use in bytes.",
        size,
    );
    metric(
        &mut out,
        "etcd_debugging_mvcc_current_revision",
        "gauge",
        "The current revision of store.",
        store.current_revision(),
    );
    metric(
        &mut out,
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction in store.",
        store.compact_revision().max(0),
    );
    metric(
        &mut out,
        "etcd_debugging_mvcc_keys_total",
        "gauge",
        "Total number of keys.",
        store.index_len(),
    );
    metric(
        &mut out,
        "etcd_debugging_mvcc_watcher_total",
        "gauge",
        "Total number of watchers.",
        state.metrics.watchers.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "etcd_debugging_mvcc_watch_stream_total",
        "gauge",
        "Total number of watch streams.",
        state.metrics.watch_streams.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "etcd_debugging_lease_total",
        "gauge",
        "The number of leases.",
        store.leases().len(),
    );
    metric(
        &mut out,
        "etcd_debugging_server_lease_expired_total",
        "counter",
        "The total number of expired leases.",
        state.metrics.leases_expired.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "etcd_server_has_alarm",
        "gauge",
        "Number of active alarms.",
        state.alarm_list().len(),
    );
    let _ = writeln!(out, "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.");
    let _ = writeln!(out, "# TYPE grpc_server_handled_total counter");
    for ((service, method, code), n) in state.metrics.handled.lock().iter() {
        let _ = writeln!(
            out,
            "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"{service}\"}} {n}"
        );
    }
    out
}
