//! etcd's v3 JSON gateway (grpc-gateway) on the client port: `POST /v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/deleterange`, `/v3/kv/txn`, `/v3/kv/compaction`, `/v3/lease/grant`,
//! `/v3/lease/revoke`, `/v3/lease/timetolive`, `/v3/lease/leases`, `/v3/lease/keepalive` (one
//! `{"result":..}` line per JSON object of the request body), `/v3/maintenance/status`, and
//! `/v3/watch` (full duplex: creates, cancels and progress requests are served as the body's
//! objects arrive, [`WatchBodyDecoder`]; answers as [`watch_response_line`]s).
//!
//! Requests are decoded from protobuf JSON as etcd's gateway accepts it (proto field names or
//! lowerCamelCase, bytes in base64, 64-bit integers as strings or numbers, enums by name or
//! number) and answered by the same gRPC service implementations as gRPC clients, so the
//! behaviour, the errors and the `grpc_server_handled_total` counts are the same. Responses are
//! written as etcd 3.4/3.5 writes them: proto field names (`create_revision`, `ID`, `TTL`,
//! `dbSize`), 64-bit integers as strings, bytes in base64, default values omitted. Errors are
//! `{"error":..,"message":..,"code":<gRPC code>}` with grpc-gateway's HTTP status.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value};
use tonic::{Code, Status};

use crate::auth::Credentials;
use crate::http::response;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::maintenance::MaintenanceService;
use crate::pb::etcdserverpb::{
    compare, kv_server::Kv, lease_server::Lease, maintenance_server::Maintenance, request_op,
    response_op, CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, StatusRequest,
    TxnRequest, TxnResponse, WatchRequest, WatchResponse,
};
use crate::pb::mvccpb::KeyValue;
use crate::state::State;

/// Deepest nesting of `request_txn` accepted.
const MAX_TXN_DEPTH: usize = 16;

/// Answers one unary gateway request: `path` is the URL path, `body` the JSON request.
///
/// `creds` are the request's credentials (the `Authorization` header's token).
pub async fn handle_unary(
    state: &Arc<State>,
    path: &str,
    body: &[u8],
    creds: &Credentials,
) -> Response<Full<Bytes>> {
    let mut r = match dispatch(state, path, body, creds).await {
        Ok(json) => response(StatusCode::OK, "application/json", json),
        Err(status) => error_response(&status),
    };
    cors(&mut r);
    r
}

/// Adds the cross-origin headers etcd's gateway sends.
pub fn cors<B>(r: &mut Response<B>) {
    let h = r.headers_mut();
    for (name, value) in [
        (
            "access-control-allow-headers",
            "accept, content-type, authorization",
        ),
        (
            "access-control-allow-methods",
            "POST, GET, OPTIONS, PUT, DELETE",
        ),
        ("access-control-allow-origin", "*"),
    ] {
        h.insert(name, hyper::header::HeaderValue::from_static(value));
    }
}

async fn dispatch(
    state: &Arc<State>,
    path: &str,
    body: &[u8],
    creds: &Credentials,
) -> Result<String, Status> {
    let kv = || KvService::new(state.clone());
    macro_rules! req {
        ($r:expr) => {
            crate::auth::grpc_request($r, creds)
        };
    }
    let lease = || LeaseService::new(state.clone());
    match path {
        "/v3/kv/range" => {
            let r = range_request(&parse(body)?)?;
            Ok(range_json(&kv().range(req!(r)).await?.into_inner()))
        }
        "/v3/kv/put" => {
            let r = put_request(&parse(body)?)?;
            Ok(put_json(&kv().put(req!(r)).await?.into_inner()))
        }
        "/v3/kv/deleterange" => {
            let r = delete_request(&parse(body)?)?;
            Ok(delete_json(&kv().delete_range(req!(r)).await?.into_inner()))
        }
        "/v3/kv/txn" => {
            let r = txn_request(&parse(body)?, 0)?;
            Ok(txn_json(&kv().txn(req!(r)).await?.into_inner()))
        }
        "/v3/kv/compaction" => {
            let o = parse(body)?;
            let r = CompactionRequest {
                revision: int(&o, &["revision"])?,
                physical: boolean(&o, &["physical"])?,
            };
            let resp = kv().compact(req!(r)).await?.into_inner();
            Ok(header_only(resp.header.as_ref()))
        }
        "/v3/lease/grant" => {
            let o = parse(body)?;
            let r = LeaseGrantRequest {
                ttl: int(&o, &["TTL", "ttl"])?,
                id: int(&o, &["ID", "id"])?,
            };
            let resp = lease().lease_grant(req!(r)).await?.into_inner();
            let mut j = Obj::new();
            j.header(resp.header.as_ref());
            j.int("ID", resp.id);
            j.int("TTL", resp.ttl);
            j.str("error", &resp.error);
            Ok(j.finish())
        }
        "/v3/lease/revoke" | "/v3/kv/lease/revoke" => {
            let o = parse(body)?;
            let r = LeaseRevokeRequest {
                id: int(&o, &["ID", "id"])?,
            };
            let resp = lease().lease_revoke(req!(r)).await?.into_inner();
            Ok(header_only(resp.header.as_ref()))
        }
        "/v3/lease/timetolive" | "/v3/kv/lease/timetolive" => {
            let o = parse(body)?;
            let r = LeaseTimeToLiveRequest {
                id: int(&o, &["ID", "id"])?,
                keys: boolean(&o, &["keys"])?,
            };
            let resp = lease().lease_time_to_live(req!(r)).await?.into_inner();
            let mut j = Obj::new();
            j.header(resp.header.as_ref());
            j.int("ID", resp.id);
            j.int("TTL", resp.ttl);
            j.int("grantedTTL", resp.granted_ttl);
            j.list("keys", resp.keys.iter().map(|k| quote(&b64(k))));
            Ok(j.finish())
        }
        "/v3/lease/leases" | "/v3/kv/lease/leases" => {
            parse(body)?;
            let resp = lease()
                .lease_leases(req!(LeaseLeasesRequest {}))
                .await?
                .into_inner();
            let mut j = Obj::new();
            j.header(resp.header.as_ref());
            j.list(
                "leases",
                resp.leases.iter().map(|l| {
                    let mut o = Obj::new();
                    o.int("ID", l.id);
                    o.finish()
                }),
            );
            Ok(j.finish())
        }
        "/v3/lease/keepalive" | "/v3/kv/lease/keepalive" => {
            state.authorize_token(&req!(()))?;
            keep_alive(state, body).await
        }
        p if p.starts_with("/v3/auth/") => auth(state, p, body, creds).await,
        "/v3/maintenance/status" => {
            parse(body)?;
            let resp = MaintenanceService::new(state.clone())
                .status(req!(StatusRequest {}))
                .await?
                .into_inner();
            let mut j = Obj::new();
            j.header(resp.header.as_ref());
            j.str("version", &resp.version);
            j.int("dbSize", resp.db_size);
            j.uint("leader", resp.leader);
            j.uint("raftIndex", resp.raft_index);
            j.uint("raftTerm", resp.raft_term);
            j.uint("raftAppliedIndex", resp.raft_applied_index);
            j.list("errors", resp.errors.iter().map(|e| quote(e)));
            j.int("dbSizeInUse", resp.db_size_in_use);
            j.boolean("isLearner", resp.is_learner);
            Ok(j.finish())
        }
        _ => Err(Status::new(Code::NotFound, "Not Found")),
    }
}

/// `LeaseKeepAlive` over the gateway: every JSON object of the request body renews its lease
/// (through the leader, as gRPC's keep-alive) and yields one `{"result":{...}}` line, as etcd
/// streams them (an unknown lease: no TTL).
async fn keep_alive(state: &Arc<State>, body: &[u8]) -> Result<String, Status> {
    let mut out = String::new();
    for value in serde_json::Deserializer::from_slice(body).into_iter::<Value>() {
        let value = value.map_err(|e| Status::unknown(e.to_string()))?;
        let id = int(as_object(&value)?, &["ID", "id"])?;
        // The same renewal as gRPC's: through the leader, clearing a checkpoint.
        let ttl = crate::lease::keep_alive(state, id).await;
        state
            .metrics
            .observe("etcdserverpb.Lease", "LeaseKeepAlive", &ttl);
        let mut j = Obj::new();
        j.header(state.header_now().as_ref());
        j.int("ID", id);
        j.int("TTL", ttl?);
        out.push_str(&format!("{{\"result\":{}}}\n", j.finish()));
    }
    Ok(out)
}

/// One JSON object of a `/v3/watch` request body as the `WatchRequest` it stands for
/// (`create_request`, `cancel_request` or `progress_request`, as grpc-gateway decodes them);
/// `None` for an object that holds none of them (grpc-gateway forwards an empty request, which
/// etcd ignores).
pub fn watch_request(value: &Value) -> Result<Option<WatchRequest>, Status> {
    use crate::pb::etcdserverpb::{
        watch_request::RequestUnion, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    };
    let o = as_object(value)?;
    let union = if let Some(c) = object(o, &["create_request"])? {
        let mut filters = Vec::new();
        if filter(c, "NOPUT", 0)? {
            filters.push(0);
        }
        if filter(c, "NODELETE", 1)? {
            filters.push(1);
        }
        RequestUnion::CreateRequest(WatchCreateRequest {
            key: bytes_field(c, &["key"])?,
            range_end: bytes_field(c, &["range_end"])?,
            start_revision: int(c, &["start_revision"])?,
            progress_notify: boolean(c, &["progress_notify"])?,
            filters,
            prev_kv: boolean(c, &["prev_kv"])?,
            watch_id: int(c, &["watch_id"])?,
            fragment: boolean(c, &["fragment"])?,
        })
    } else if let Some(c) = object(o, &["cancel_request"])? {
        RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: int(c, &["watch_id"])?,
        })
    } else if object(o, &["progress_request"])?.is_some() {
        RequestUnion::ProgressRequest(WatchProgressRequest {})
    } else {
        return Ok(None);
    };
    Ok(Some(WatchRequest {
        request_union: Some(union),
    }))
}

/// Splits a streamed `/v3/watch` request body into its JSON objects as their bytes arrive.
#[derive(Debug, Default)]
pub struct WatchBodyDecoder {
    buf: Vec<u8>,
}

impl WatchBodyDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received but not yet part of a complete JSON object.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Appends `chunk` and returns the requests of every JSON object it completes, in order;
    /// an error for the first object that is not valid JSON or not a valid request.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<WatchRequest>, Status> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        loop {
            match values.next() {
                None => {
                    consumed = self.buf.len();
                    break;
                }
                Some(Ok(v)) => {
                    consumed = values.byte_offset();
                    if let Some(r) = watch_request(&v)? {
                        out.push(r);
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(bad(e.to_string())),
            }
        }
        self.buf.drain(..consumed);
        Ok(out)
    }
}

/// A watch response as a `/v3/watch` result line (grpc-gateway's `{"result":{..}}` framing,
/// etcd's JSON: default values omitted, 64-bit integers as strings, bytes in base64).
pub fn watch_response_line(r: &WatchResponse) -> Bytes {
    let mut j = Obj::new();
    j.header(r.header.as_ref());
    j.int("watch_id", r.watch_id);
    j.boolean("created", r.created);
    j.boolean("canceled", r.canceled);
    j.int("compact_revision", r.compact_revision);
    j.str("cancel_reason", &r.cancel_reason);
    j.boolean("fragment", r.fragment);
    j.list(
        "events",
        r.events.iter().map(|ev| {
            let mut e = Obj::new();
            if ev.r#type == crate::pb::mvccpb::event::EventType::Delete as i32 {
                e.raw("type", "\"DELETE\"");
            }
            if let Some(kv) = &ev.kv {
                e.raw("kv", &kv_json(kv));
            }
            if let Some(prev) = &ev.prev_kv {
                e.raw("prev_kv", &kv_json(prev));
            }
            e.finish()
        }),
    );
    result_line(j.finish())
}

/// An error in the middle of a `/v3/watch` stream, as grpc-gateway writes it.
pub fn watch_error_line(status: &Status) -> Bytes {
    let code = http_status(status.code());
    Bytes::from(format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{},\"http_status\":{}}}}}\n",
        status.code() as i32,
        code.as_u16(),
        quote(status.message()),
        quote(code.canonical_reason().unwrap_or(""))
    ))
}

/// `{"header":..,"<field>":["name",..]}`: the answer of the auth list and get calls.
fn names_json(
    header: Option<&crate::pb::etcdserverpb::ResponseHeader>,
    field: &str,
    names: &[String],
) -> String {
    let mut j = Obj::new();
    j.header(header);
    j.list(field, names.iter().map(|n| quote(n)));
    j.finish()
}

fn result_line(json: String) -> Bytes {
    Bytes::from(format!("{{\"result\":{json}}}\n"))
}

/// True when `create_request.filters` holds the filter `name` (grpc-gateway accepts the enum's
/// name or its number).
fn filter(c: &Map<String, Value>, name: &str, number: i64) -> Result<bool, Status> {
    match c.get("filters") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Array(items)) => Ok(items.iter().any(|v| match v {
            Value::String(s) => s == name,
            Value::Number(n) => n.as_i64() == Some(number),
            _ => false,
        })),
        Some(other) => Err(bad(format!("filters: {other} is not a list"))),
    }
}

/// grpc-gateway's HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// etcd's JSON error answer for `status`.
pub fn error_response(status: &Status) -> Response<Full<Bytes>> {
    let m = quote(status.message());
    response(
        http_status(status.code()),
        "application/json",
        format!(
            r#"{{"error":{m},"message":{m},"code":{}}}"#,
            status.code() as i32
        ),
    )
}

// ---- decoding ----

fn bad(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn parse(body: &[u8]) -> Result<Map<String, Value>, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body).map_err(|e| bad(e.to_string()))? {
        Value::Object(o) => Ok(o),
        Value::Null => Ok(Map::new()),
        _ => Err(bad("the request body must be a JSON object")),
    }
}

fn get<'a>(o: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| o.get(*n))
        .filter(|v| !v.is_null())
}

/// `snake_case` → `lowerCamelCase` (protobuf JSON names).
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = false;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn lookup<'a>(o: &'a Map<String, Value>, names: &[&str]) -> Option<(&'a Value, String)> {
    let mut all: Vec<String> = names.iter().map(|s| (*s).to_string()).collect();
    all.extend(names.iter().map(|s| camel(s)));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    get(o, &refs).map(|v| (v, names.first().copied().unwrap_or("").to_string()))
}

fn int(o: &Map<String, Value>, names: &[&str]) -> Result<i64, Status> {
    let Some((v, name)) = lookup(o, names) else {
        return Ok(0);
    };
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| bad(format!("{name}: {n} is not a 64-bit integer"))),
        Value::String(s) => s
            .parse()
            .map_err(|_| bad(format!("{name}: {s:?} is not a 64-bit integer"))),
        other => Err(bad(format!("{name}: {other} is not a 64-bit integer"))),
    }
}

fn boolean(o: &Map<String, Value>, names: &[&str]) -> Result<bool, Status> {
    match lookup(o, names) {
        None => Ok(false),
        Some((Value::Bool(b), _)) => Ok(*b),
        Some((Value::String(s), _)) if s == "true" || s == "false" => Ok(s == "true"),
        Some((other, name)) => Err(bad(format!("{name}: {other} is not a boolean"))),
    }
}

fn bytes_field(o: &Map<String, Value>, names: &[&str]) -> Result<Vec<u8>, Status> {
    match lookup(o, names) {
        None => Ok(Vec::new()),
        Some((Value::String(s), name)) => {
            unb64(s).ok_or_else(|| bad(format!("{name}: bad base64")))
        }
        Some((other, name)) => Err(bad(format!("{name}: {other} is not base64 bytes"))),
    }
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .ok()
}

fn enumeration(
    o: &Map<String, Value>,
    names: &[&str],
    from_name: fn(&str) -> Option<i32>,
) -> Result<i32, Status> {
    match lookup(o, names) {
        None => Ok(0),
        Some((Value::String(s), name)) => {
            from_name(s).ok_or_else(|| bad(format!("{name}: unknown value {s:?}")))
        }
        Some((Value::Number(n), name)) => n
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| bad(format!("{name}: {n} is not an enum value"))),
        Some((other, name)) => Err(bad(format!("{name}: {other} is not an enum value"))),
    }
}

fn object<'a>(
    o: &'a Map<String, Value>,
    names: &[&str],
) -> Result<Option<&'a Map<String, Value>>, Status> {
    match lookup(o, names) {
        None => Ok(None),
        Some((Value::Object(m), _)) => Ok(Some(m)),
        Some((other, name)) => Err(bad(format!("{name}: {other} is not an object"))),
    }
}

fn array<'a>(o: &'a Map<String, Value>, names: &[&str]) -> Result<&'a [Value], Status> {
    match lookup(o, names) {
        None => Ok(&[]),
        Some((Value::Array(a), _)) => Ok(a),
        Some((other, name)) => Err(bad(format!("{name}: {other} is not an array"))),
    }
}

fn as_object(v: &Value) -> Result<&Map<String, Value>, Status> {
    v.as_object()
        .ok_or_else(|| bad(format!("{v} is not an object")))
}

fn range_request(o: &Map<String, Value>) -> Result<RangeRequest, Status> {
    use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
    Ok(RangeRequest {
        key: bytes_field(o, &["key"])?,
        range_end: bytes_field(o, &["range_end"])?,
        limit: int(o, &["limit"])?,
        revision: int(o, &["revision"])?,
        sort_order: enumeration(o, &["sort_order"], |s| {
            SortOrder::from_str_name(s).map(|v| v as i32)
        })?,
        sort_target: enumeration(o, &["sort_target"], |s| {
            SortTarget::from_str_name(s).map(|v| v as i32)
        })?,
        serializable: boolean(o, &["serializable"])?,
        keys_only: boolean(o, &["keys_only"])?,
        count_only: boolean(o, &["count_only"])?,
        min_mod_revision: int(o, &["min_mod_revision"])?,
        max_mod_revision: int(o, &["max_mod_revision"])?,
        min_create_revision: int(o, &["min_create_revision"])?,
        max_create_revision: int(o, &["max_create_revision"])?,
    })
}

fn put_request(o: &Map<String, Value>) -> Result<PutRequest, Status> {
    Ok(PutRequest {
        key: bytes_field(o, &["key"])?,
        value: bytes_field(o, &["value"])?,
        lease: int(o, &["lease"])?,
        prev_kv: boolean(o, &["prev_kv"])?,
        ignore_value: boolean(o, &["ignore_value"])?,
        ignore_lease: boolean(o, &["ignore_lease"])?,
    })
}

fn delete_request(o: &Map<String, Value>) -> Result<DeleteRangeRequest, Status> {
    Ok(DeleteRangeRequest {
        key: bytes_field(o, &["key"])?,
        range_end: bytes_field(o, &["range_end"])?,
        prev_kv: boolean(o, &["prev_kv"])?,
    })
}

fn compare_request(o: &Map<String, Value>) -> Result<Compare, Status> {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let target = enumeration(o, &["target"], |s| {
        CompareTarget::from_str_name(s).map(|v| v as i32)
    })?;
    let union = if lookup(o, &["version"]).is_some() {
        Some(TargetUnion::Version(int(o, &["version"])?))
    } else if lookup(o, &["create_revision"]).is_some() {
        Some(TargetUnion::CreateRevision(int(o, &["create_revision"])?))
    } else if lookup(o, &["mod_revision"]).is_some() {
        Some(TargetUnion::ModRevision(int(o, &["mod_revision"])?))
    } else if lookup(o, &["value"]).is_some() {
        Some(TargetUnion::Value(bytes_field(o, &["value"])?))
    } else if lookup(o, &["lease"]).is_some() {
        Some(TargetUnion::Lease(int(o, &["lease"])?))
    } else {
        None
    };
    Ok(Compare {
        result: enumeration(o, &["result"], |s| {
            CompareResult::from_str_name(s).map(|v| v as i32)
        })?,
        target,
        key: bytes_field(o, &["key"])?,
        range_end: bytes_field(o, &["range_end"])?,
        target_union: union,
    })
}

fn request_op(o: &Map<String, Value>, depth: usize) -> Result<RequestOp, Status> {
    use request_op::Request as R;
    let request = if let Some(r) = object(o, &["request_range"])? {
        Some(R::RequestRange(range_request(r)?))
    } else if let Some(p) = object(o, &["request_put"])? {
        Some(R::RequestPut(put_request(p)?))
    } else if let Some(d) = object(o, &["request_delete_range"])? {
        Some(R::RequestDeleteRange(delete_request(d)?))
    } else if let Some(t) = object(o, &["request_txn"])? {
        Some(R::RequestTxn(txn_request(t, depth + 1)?))
    } else {
        None
    };
    Ok(RequestOp { request })
}

fn txn_request(o: &Map<String, Value>, depth: usize) -> Result<TxnRequest, Status> {
    if depth > MAX_TXN_DEPTH {
        return Err(bad("request_txn nested too deeply"));
    }
    let ops = |name: &str| -> Result<Vec<RequestOp>, Status> {
        array(o, &[name])?
            .iter()
            .map(|v| request_op(as_object(v)?, depth))
            .collect()
    };
    Ok(TxnRequest {
        compare: array(o, &["compare"])?
            .iter()
            .map(|v| compare_request(as_object(v)?))
            .collect::<Result<_, _>>()?,
        success: ops("success")?,
        failure: ops("failure")?,
    })
}

fn string(o: &Map<String, Value>, names: &[&str]) -> Result<String, Status> {
    match lookup(o, names) {
        None => Ok(String::new()),
        Some((Value::String(s), _)) => Ok(s.clone()),
        Some((other, name)) => Err(bad(format!("{name}: {other} is not a string"))),
    }
}

/// The `/v3/auth/...` endpoints of etcd's gateway, answered by [`crate::auth::AuthService`].
async fn auth(
    state: &Arc<State>,
    path: &str,
    body: &[u8],
    creds: &Credentials,
) -> Result<String, Status> {
    use crate::auth::AuthService;
    use crate::pb::authpb;
    use crate::pb::etcdserverpb::auth_server::Auth as _;
    use crate::pb::etcdserverpb::*;
    let svc = AuthService::new(state.clone());
    macro_rules! req {
        ($r:expr) => {
            crate::auth::grpc_request($r, creds)
        };
    }
    let o = parse(body)?;
    let name = || string(&o, &["name"]);
    let role = || string(&o, &["role"]);
    let header = |h: Option<&ResponseHeader>| Ok(header_only(h));
    match path {
        "/v3/auth/authenticate" => {
            let r = AuthenticateRequest {
                name: name()?,
                password: string(&o, &["password"])?,
            };
            let resp = svc.authenticate(req!(r)).await?.into_inner();
            let mut j = Obj::new();
            j.header(resp.header.as_ref());
            j.str("token", &resp.token);
            Ok(j.finish())
        }
        "/v3/auth/status" => {
            let resp = svc
                .auth_status(req!(AuthStatusRequest {}))
                .await?
                .into_inner();
            let mut j = Obj::new();
            j.header(resp.header.as_ref());
            j.boolean("enabled", resp.enabled);
            j.uint("authRevision", resp.auth_revision);
            Ok(j.finish())
        }
        "/v3/auth/enable" => header(
            svc.auth_enable(req!(AuthEnableRequest {}))
                .await?
                .get_ref()
                .header
                .as_ref(),
        ),
        "/v3/auth/disable" => header(
            svc.auth_disable(req!(AuthDisableRequest {}))
                .await?
                .get_ref()
                .header
                .as_ref(),
        ),
        "/v3/auth/user/add" => {
            let no_password = match object(&o, &["options"])? {
                Some(opts) => boolean(opts, &["no_password"])?,
                None => false,
            };
            let r = AuthUserAddRequest {
                name: name()?,
                password: string(&o, &["password"])?,
                options: Some(authpb::UserAddOptions { no_password }),
                hashed_password: string(&o, &["hashedPassword", "hashed_password"])?,
            };
            header(svc.user_add(req!(r)).await?.get_ref().header.as_ref())
        }
        "/v3/auth/user/get" => {
            let resp = svc
                .user_get(req!(AuthUserGetRequest { name: name()? }))
                .await?
                .into_inner();
            Ok(names_json(resp.header.as_ref(), "roles", &resp.roles))
        }
        "/v3/auth/user/list" => {
            let resp = svc
                .user_list(req!(AuthUserListRequest {}))
                .await?
                .into_inner();
            Ok(names_json(resp.header.as_ref(), "users", &resp.users))
        }
        "/v3/auth/user/delete" => header(
            svc.user_delete(req!(AuthUserDeleteRequest { name: name()? }))
                .await?
                .get_ref()
                .header
                .as_ref(),
        ),
        "/v3/auth/user/changepw" => {
            let r = AuthUserChangePasswordRequest {
                name: name()?,
                password: string(&o, &["password"])?,
                hashed_password: string(&o, &["hashedPassword", "hashed_password"])?,
            };
            header(
                svc.user_change_password(req!(r))
                    .await?
                    .get_ref()
                    .header
                    .as_ref(),
            )
        }
        "/v3/auth/user/grant" => {
            let r = AuthUserGrantRoleRequest {
                user: string(&o, &["user"])?,
                role: role()?,
            };
            header(
                svc.user_grant_role(req!(r))
                    .await?
                    .get_ref()
                    .header
                    .as_ref(),
            )
        }
        "/v3/auth/user/revoke" => {
            let r = AuthUserRevokeRoleRequest {
                name: name()?,
                role: role()?,
            };
            header(
                svc.user_revoke_role(req!(r))
                    .await?
                    .get_ref()
                    .header
                    .as_ref(),
            )
        }
        "/v3/auth/role/add" => header(
            svc.role_add(req!(AuthRoleAddRequest { name: name()? }))
                .await?
                .get_ref()
                .header
                .as_ref(),
        ),
        "/v3/auth/role/get" => {
            let resp = svc
                .role_get(req!(AuthRoleGetRequest { role: role()? }))
                .await?
                .into_inner();
            let mut j = Obj::new();
            j.header(resp.header.as_ref());
            j.list(
                "perm",
                resp.perm.iter().map(|p| {
                    let mut o = Obj::new();
                    if let Ok(t) = authpb::permission::Type::try_from(p.perm_type) {
                        if p.perm_type != 0 {
                            o.str("permType", t.as_str_name());
                        }
                    }
                    o.bytes("key", &p.key);
                    o.bytes("range_end", &p.range_end);
                    o.finish()
                }),
            );
            Ok(j.finish())
        }
        "/v3/auth/role/list" => {
            let resp = svc
                .role_list(req!(AuthRoleListRequest {}))
                .await?
                .into_inner();
            Ok(names_json(resp.header.as_ref(), "roles", &resp.roles))
        }
        "/v3/auth/role/delete" => header(
            svc.role_delete(req!(AuthRoleDeleteRequest { role: role()? }))
                .await?
                .get_ref()
                .header
                .as_ref(),
        ),
        "/v3/auth/role/grant" => {
            let perm = match object(&o, &["perm"])? {
                Some(p) => Some(authpb::Permission {
                    perm_type: enumeration(p, &["permType", "perm_type"], |s| {
                        authpb::permission::Type::from_str_name(s).map(|t| t as i32)
                    })?,
                    key: bytes_field(p, &["key"])?,
                    range_end: bytes_field(p, &["range_end"])?,
                }),
                None => None,
            };
            let r = AuthRoleGrantPermissionRequest {
                name: name()?,
                perm,
            };
            header(
                svc.role_grant_permission(req!(r))
                    .await?
                    .get_ref()
                    .header
                    .as_ref(),
            )
        }
        "/v3/auth/role/revoke" => {
            let r = AuthRoleRevokePermissionRequest {
                role: role()?,
                key: bytes_field(&o, &["key"])?,
                range_end: bytes_field(&o, &["range_end"])?,
            };
            header(
                svc.role_revoke_permission(req!(r))
                    .await?
                    .get_ref()
                    .header
                    .as_ref(),
            )
        }
        _ => Err(Status::new(Code::NotFound, "Not Found")),
    }
}

// ---- encoding ----

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A JSON object written field by field in proto order, omitting default values (as
/// grpc-gateway's marshaller with `EmitDefaults: false`).
struct Obj {
    s: String,
}

impl Obj {
    fn new() -> Self {
        Obj {
            s: String::from("{"),
        }
    }

    fn raw(&mut self, name: &str, json: &str) {
        if self.s.len() > 1 {
            self.s.push(',');
        }
        self.s.push_str(&quote(name));
        self.s.push(':');
        self.s.push_str(json);
    }

    fn int(&mut self, name: &str, v: i64) {
        if v != 0 {
            self.raw(name, &format!("\"{v}\""));
        }
    }

    fn uint(&mut self, name: &str, v: u64) {
        if v != 0 {
            self.raw(name, &format!("\"{v}\""));
        }
    }

    fn boolean(&mut self, name: &str, v: bool) {
        if v {
            self.raw(name, "true");
        }
    }

    fn str(&mut self, name: &str, v: &str) {
        if !v.is_empty() {
            self.raw(name, &quote(v));
        }
    }

    fn bytes(&mut self, name: &str, v: &[u8]) {
        if !v.is_empty() {
            self.raw(name, &quote(&b64(v)));
        }
    }

    fn list(&mut self, name: &str, items: impl Iterator<Item = String>) {
        let items: Vec<String> = items.collect();
        if !items.is_empty() {
            self.raw(name, &format!("[{}]", items.join(",")));
        }
    }

    fn header(&mut self, h: Option<&ResponseHeader>) {
        if let Some(h) = h {
            let mut o = Obj::new();
            o.uint("cluster_id", h.cluster_id);
            o.uint("member_id", h.member_id);
            o.int("revision", h.revision);
            o.uint("raft_term", h.raft_term);
            self.raw("header", &o.finish());
        }
    }

    fn finish(mut self) -> String {
        self.s.push('}');
        self.s
    }
}

fn header_only(h: Option<&ResponseHeader>) -> String {
    let mut j = Obj::new();
    j.header(h);
    j.finish()
}

fn kv_json(kv: &KeyValue) -> String {
    let mut o = Obj::new();
    o.bytes("key", &kv.key);
    o.int("create_revision", kv.create_revision);
    o.int("mod_revision", kv.mod_revision);
    o.int("version", kv.version);
    o.bytes("value", &kv.value);
    o.int("lease", kv.lease);
    o.finish()
}

fn range_json(r: &RangeResponse) -> String {
    let mut j = Obj::new();
    j.header(r.header.as_ref());
    j.list("kvs", r.kvs.iter().map(kv_json));
    j.boolean("more", r.more);
    j.int("count", r.count);
    j.finish()
}

fn put_json(r: &PutResponse) -> String {
    let mut j = Obj::new();
    j.header(r.header.as_ref());
    if let Some(kv) = &r.prev_kv {
        j.raw("prev_kv", &kv_json(kv));
    }
    j.finish()
}

fn delete_json(r: &DeleteRangeResponse) -> String {
    let mut j = Obj::new();
    j.header(r.header.as_ref());
    j.int("deleted", r.deleted);
    j.list("prev_kvs", r.prev_kvs.iter().map(kv_json));
    j.finish()
}

/// A txn's inner response headers carry only the revision in etcd's answers.
fn nested(h: Option<&ResponseHeader>) -> Option<ResponseHeader> {
    h.map(|h| ResponseHeader {
        revision: h.revision,
        ..ResponseHeader::default()
    })
}

fn response_op_json(op: &ResponseOp) -> String {
    use response_op::Response as R;
    let mut j = Obj::new();
    match &op.response {
        Some(R::ResponseRange(r)) => {
            let r = RangeResponse {
                header: nested(r.header.as_ref()),
                ..r.clone()
            };
            j.raw("response_range", &range_json(&r))
        }
        Some(R::ResponsePut(r)) => {
            let r = PutResponse {
                header: nested(r.header.as_ref()),
                ..r.clone()
            };
            j.raw("response_put", &put_json(&r))
        }
        Some(R::ResponseDeleteRange(r)) => {
            let r = DeleteRangeResponse {
                header: nested(r.header.as_ref()),
                ..r.clone()
            };
            j.raw("response_delete_range", &delete_json(&r))
        }
        Some(R::ResponseTxn(r)) => {
            let r = TxnResponse {
                header: nested(r.header.as_ref()),
                ..r.clone()
            };
            j.raw("response_txn", &txn_json(&r))
        }
        None => {}
    }
    j.finish()
}

fn txn_json(r: &TxnResponse) -> String {
    let mut j = Obj::new();
    j.header(r.header.as_ref());
    j.boolean("succeeded", r.succeeded);
    j.list("responses", r.responses.iter().map(response_op_json));
    j.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_etcd_json() {
        let o = parse(br#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":"2","revision":3,"sort_order":"DESCEND","keys_only":true}"#).unwrap();
        let r = range_request(&o).unwrap();
        assert_eq!(
            (
                r.key,
                r.range_end,
                r.limit,
                r.revision,
                r.sort_order,
                r.keys_only
            ),
            (b"foo".to_vec(), b"fop".to_vec(), 2, 3, 2, true)
        );
        assert_eq!(camel("create_revision"), "createRevision");
        assert_eq!(parse(b"{bad").unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(
            range_request(&parse(br#"{"key":5}"#).unwrap())
                .unwrap_err()
                .message(),
            "key: 5 is not base64 bytes"
        );
    }

    #[test]
    fn encodes_as_etcd() {
        let r = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 2,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                value: b"baz".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            range_json(&r),
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}],"count":"1"}"#
        );
    }
}
