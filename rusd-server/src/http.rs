//! HTTP/1.1 on the client and metrics listeners: `/health`, `/readyz`, `/livez`, `/version`,
//! Prometheus `/metrics` ([`crate::metrics`]) and, on the client listener, etcd's v3 JSON
//! gateway ([`crate::gateway`]).
//!
//! The client listener serves gRPC and HTTP/1.1 side by side, as etcd does:
//! [`crate::sniff`] sends connections that open with the HTTP/2 preface to tonic and everything
//! else to [`serve_connection`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::config::ETCD_VERSION;
use crate::pb::etcdserverpb::AlarmType;
use crate::state::State;

/// Longest a connection may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` (a `--listen-metrics-urls` listener: no gateway) until `shutdown` turns
/// true.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, _)) => match &tls {
                None => {
                    tokio::spawn(serve_connection(
                        stream,
                        state.clone(),
                        false,
                        shutdown.clone(),
                    ));
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let (state, shutdown) = (state.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        if let Ok(Ok(tls)) =
                            tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await
                        {
                            serve_connection(tls, state, false, shutdown).await;
                        }
                    });
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves HTTP/1.1 requests on one connection until the client closes it or `shutdown` turns
/// true. `gateway` enables the `/v3/...` JSON gateway (client listeners).
pub async fn serve_connection<S>(
    io: S,
    state: Arc<State>,
    gateway: bool,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let st = state.clone();
        async move { Ok::<_, Infallible>(handle(req, st, gateway).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        _ = async { let _ = shutdown.wait_for(|v| *v).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// A response with `status`, `content_type` and `body`.
pub fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// etcd's `/health` answer: `(healthy, JSON body)`.
pub fn health(state: &State) -> (bool, String) {
    if state.has_alarm(AlarmType::Nospace) {
        (
            false,
            r#"{"health":"false","reason":"ALARM NOSPACE"}"#.to_string(),
        )
    } else if let Some(reason) = state.store.failure() {
        (
            false,
            serde_json::json!({
                "health": "false",
                "reason": format!("STORE FAILED: {reason}"),
            })
            .to_string(),
        )
    } else if let Some(reason) = state.raft.as_ref().and_then(|r| r.failure()) {
        (
            false,
            serde_json::json!({
                "health": "false",
                "reason": format!("RAFT FAILED: {reason}"),
            })
            .to_string(),
        )
    } else if state.raft.as_ref().is_some_and(|r| r.leader().is_none()) {
        // etcd's answer while the member knows no leader (lost quorum, election running).
        (
            false,
            r#"{"health":"false","reason":"RAFT NO LEADER"}"#.to_string(),
        )
    } else {
        (true, r#"{"health":"true","reason":""}"#.to_string())
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>, state: Arc<State>, gateway: bool) -> Response<Body> {
    if gateway && req.method() == Method::POST && req.uri().path() == "/v3/watch" {
        return watch(req, state).await;
    }
    handle_unary(req, state, gateway).await.map(|b| b.boxed())
}

/// `/v3/watch`: reads the request body, then streams the watchers' result lines.
async fn watch(req: Request<Incoming>, state: Arc<State>) -> Response<Body> {
    let creds = crate::auth::http_credentials(req.headers());
    let limit = state.max_request_bytes.saturating_add(64 * 1024);
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("cannot read the request body: {e}\n"),
            )
            .map(|b| b.boxed())
        }
    };
    match crate::gateway::watch(&state, &body, &creds) {
        Ok(rx) => {
            use tokio_stream::StreamExt as _;
            let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            crate::gateway::cors(&mut r);
            r
        }
        Err(status) => crate::gateway::error_response(&status).map(|b| b.boxed()),
    }
}

async fn handle_unary(
    req: Request<Incoming>,
    state: Arc<State>,
    gateway: bool,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    match path.as_str() {
        "/health" | "/readyz" | "/livez" if get => {
            let (ok, body) = health(&state);
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            response(status, "application/json", body)
        }
        "/metrics" if get => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(&state),
        ),
        "/version" if get => response(
            StatusCode::OK,
            "application/json",
            format!(r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"3.5.0"}}"#),
        ),
        p if gateway && p.starts_with("/v3/") => {
            if method != Method::POST {
                return response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    "method not allowed\n".into(),
                );
            }
            let creds = crate::auth::http_credentials(req.headers());
            let limit = state.max_request_bytes.saturating_add(64 * 1024);
            let body = match Limited::new(req.into_body(), limit).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "text/plain",
                        format!("cannot read the request body: {e}\n"),
                    )
                }
            };
            crate::gateway::handle_unary(&state, p, &body, &creds).await
        }
        _ if get => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found\n".into(),
        ),
        _ => response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
    }
}

/// Renders the metrics in the Prometheus text format (see [`crate::metrics`]).
pub fn render_metrics(state: &State) -> String {
    state.metrics.render(state)
}
