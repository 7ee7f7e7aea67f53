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
use tonic::Status;

use crate::config::ETCD_VERSION;
use crate::pb::etcdserverpb::{AlarmType, WatchRequest};
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

/// `/v3/watch`: a full-duplex stream, as etcd's grpc-gateway: every JSON object of the request
/// body is a `WatchRequest` (create, cancel, progress) served as it arrives, by the same stream
/// machinery as gRPC ([`crate::watch::serve`]); every response is a `{"result":..}` line. The
/// stream lasts after the body ends, until the client disconnects or the server stops. A body
/// object that is not valid JSON or not a valid request ends the stream with grpc-gateway's
/// `{"error":..}` line; an unfinished object larger than the request size limit too.
async fn watch(req: Request<Incoming>, state: Arc<State>) -> Response<Body> {
    use tokio_stream::StreamExt as _;
    let creds = crate::auth::http_credentials(req.headers());
    let limit = state.max_request_bytes.saturating_add(64 * 1024);
    let mut body = req.into_body();
    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Result<WatchRequest, Status>>(16);
    let (line_tx, line_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let responses = crate::watch::serve(
        state.clone(),
        creds,
        tokio_stream::wrappers::ReceiverStream::new(in_rx),
    );
    // Body reader: JSON objects → watch requests.
    let error_tx = line_tx.clone();
    tokio::spawn(async move {
        let mut decoder = crate::gateway::WatchBodyDecoder::new();
        loop {
            let chunk = match body.frame().await {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "gateway watch body failed");
                    let _ = in_tx.send(Err(Status::cancelled(e.to_string()))).await;
                    break;
                }
            };
            let requests = decoder.push(&chunk).and_then(|r| {
                if decoder.pending() > limit {
                    Err(Status::invalid_argument(format!(
                        "request body object larger than {limit} bytes"
                    )))
                } else {
                    Ok(r)
                }
            });
            match requests {
                Ok(requests) => {
                    for r in requests {
                        if in_tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(status) => {
                    let _ = error_tx
                        .send(crate::gateway::watch_error_line(&status))
                        .await;
                    let _ = in_tx.send(Err(status)).await;
                    return;
                }
            }
        }
        // End of body: the stream goes on (see `crate::watch::serve`).
        drop(in_tx);
    });
    // Responses → result lines.
    tokio::spawn(async move {
        let mut responses = tokio_stream::wrappers::ReceiverStream::new(responses);
        while let Some(r) = responses.next().await {
            let line = match r {
                Ok(r) => crate::gateway::watch_response_line(&r),
                Err(_) => break, // already reported by the body reader
            };
            if line_tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let frames = tokio_stream::wrappers::ReceiverStream::new(line_rx)
        .map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    crate::gateway::cors(&mut r);
    r
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
