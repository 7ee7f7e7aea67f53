//! HTTP/1.1 on the client port next to gRPC: `/health`, `/version`, `/readyz`, `/livez`,
//! `/metrics` (parsed with a Prometheus text parser, etcd's names, types and exact counts) and
//! etcd's v3 JSON gateway, compared with the answers etcd 3.4.23 gave to the same requests.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};
use rusd_server::RunningServer;
use storage_api::BackendKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(dir: &std::path::Path) -> RunningServer {
    common::start(BackendKind::Memory, dir, |c| c).await
}

/// `(status code, body)` of one HTTP/1.1 request (`Connection: close`).
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    request(addr, "POST", path, body).await
}

#[tokio::test]
async fn http_and_grpc_share_the_client_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.client_addrs()[0];
    let mut c = common::connect(&server).await;
    c.put("foo", "bar", None).await.unwrap();

    for path in ["/health", "/readyz", "/livez"] {
        assert_eq!(
            request(addr, "GET", path, "").await,
            (200, r#"{"health":"true","reason":""}"#.to_string()),
            "{path}"
        );
    }
    assert_eq!(
        request(addr, "GET", "/version", "").await,
        (
            200,
            r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#.to_string()
        )
    );
    assert_eq!(
        request(addr, "GET", "/nope", "").await,
        (404, "404 page not found\n".to_string())
    );
    // What `etcdctl check datascale` reads.
    let (code, metrics) = request(addr, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    let rss = metrics
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .unwrap();
    assert!(rss.parse::<u64>().unwrap() > 0, "{rss}");

    // Keep-alive: two requests on one connection, both answered.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /version HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{out}");
    assert!(out.ends_with(r#"{"health":"true","reason":""}"#), "{out}");

    // gRPC keeps working on the same port, and sees the gateway's writes.
    let (code, _) = post(addr, "/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#).await;
    assert_eq!(code, 200);
    let r = c.get("a", None).await.unwrap();
    assert_eq!(
        (r.kvs()[0].value(), r.header().unwrap().revision()),
        (&b"1"[..], 3)
    );
    let r = c.get("foo", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"bar");
    drop(c);
    server.shutdown().await.unwrap();
}

fn sample<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Value {
    &scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .value
}

#[tokio::test]
async fn metrics_have_etcd_names_types_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.client_addrs()[0];
    let mut c = common::connect(&server).await;
    for i in 0..3 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    for _ in 0..2 {
        c.get("k0", None).await.unwrap();
    }
    c.delete("k2", None).await.unwrap();
    c.txn(etcd_client::Txn::new()).await.unwrap();
    assert_eq!(post(addr, "/v3/kv/range", r#"{"key":"azA="}"#).await.0, 200);
    assert_eq!(
        post(addr, "/v3/kv/range", r#"{"key":"azA=","revision":99}"#)
            .await
            .0,
        400
    );
    let watch = c.watch("k", None).await.unwrap();
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || async {
            let (_, b) = request(addr, "GET", "/metrics", "").await;
            b.contains("\netcd_debugging_mvcc_watcher_total 1\n")
        })
        .await
    );

    let (_, client_text) = request(addr, "GET", "/metrics", "").await;
    let (_, metrics_text) = common::http_get(server.metrics_addrs()[0], "/metrics").await;
    for text in [client_text, metrics_text] {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let counters = [
            ("etcd_server_leader_changes_seen_total", 1.0),
            ("etcd_mvcc_put_total", 3.0),
            ("etcd_mvcc_range_total", 3.0),
            ("etcd_mvcc_delete_total", 1.0),
            ("etcd_mvcc_txn_total", 1.0),
        ];
        for (name, v) in counters {
            assert_eq!(sample(&scrape, name, &[]), &Value::Counter(v), "{name}");
        }
        let gauges = [
            ("etcd_server_has_leader", 1.0),
            // The raft log's index: the initial membership, the leader's no-op, 4 writes.
            ("etcd_server_proposals_committed_total", 6.0),
            ("etcd_debugging_mvcc_keys_total", 3.0),
            ("etcd_debugging_mvcc_current_revision", 5.0),
            ("etcd_debugging_mvcc_watcher_total", 1.0),
            ("etcd_debugging_mvcc_slow_watcher_total", 0.0),
            ("rusd_mvcc_compaction_lag_revisions", 5.0),
        ];
        for (name, v) in gauges {
            assert_eq!(sample(&scrape, name, &[]), &Value::Gauge(v), "{name}");
        }
        assert_eq!(
            sample(&scrape, "rusd_backend_info", &[("engine", "memory")]),
            &Value::Gauge(1.0)
        );
        for name in [
            "etcd_mvcc_db_total_size_in_bytes",
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "process_resident_memory_bytes",
        ] {
            assert!(
                matches!(sample(&scrape, name, &[]), Value::Gauge(v) if *v > 0.0),
                "{name}"
            );
        }
        assert!(matches!(
            sample(&scrape, "process_cpu_seconds_total", &[]),
            Value::Counter(v) if *v >= 0.0
        ));
        // 3 puts, 1 delete, 1 txn went through the store's write path.
        for name in [
            "etcd_disk_backend_commit_duration_seconds",
            "etcd_disk_wal_fsync_duration_seconds",
        ] {
            match sample(&scrape, name, &[]) {
                Value::Histogram(b) => {
                    assert_eq!(b.len(), 15, "{name}");
                    let inf = b.iter().find(|h| h.less_than.is_infinite()).unwrap();
                    assert_eq!(inf.count, 5.0, "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let handled = |method: &str, code: &str| {
            sample(
                &scrape,
                "grpc_server_handled_total",
                &[
                    ("grpc_method", method),
                    ("grpc_code", code),
                    ("grpc_service", "etcdserverpb.KV"),
                    ("grpc_type", "unary"),
                ],
            )
            .clone()
        };
        assert_eq!(handled("Put", "OK"), Value::Counter(3.0));
        assert_eq!(handled("Range", "OK"), Value::Counter(3.0));
        assert_eq!(handled("Range", "OutOfRange"), Value::Counter(1.0));
        assert_eq!(handled("DeleteRange", "OK"), Value::Counter(1.0));
        assert_eq!(handled("Txn", "OK"), Value::Counter(1.0));
        let types: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        assert_eq!(types["etcd_mvcc_put_total"], "counter");
        assert_eq!(types["grpc_server_handled_total"], "counter");
        assert_eq!(types["etcd_debugging_mvcc_keys_total"], "gauge");
        assert!(!text.contains("# EOF"));
    }
    drop((watch, c));
    server.shutdown().await.unwrap();
}

/// The requests sent to etcd 3.4.23 and its answers (its cluster and member ids replaced by
/// `{C}` and `{M}`; `TimeToLive`'s remaining TTL, which depends on timing, by `{T}`).
const ETCD_SESSION: &[(&str, &str, u16, &str)] = &[
    (
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy"}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"2","raft_term":"1"}}"#,
    ),
    (
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"3","raft_term":"1"},"prev_kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key":"Zm9v"}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"3","raft_term":"1"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}],"count":"1"}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key":"eg=="}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"3","raft_term":"1"}}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key":"Zm9v","count_only":true}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"3","raft_term":"1"},"count":"1"}"#,
    ),
    (
        "/v3/kv/deleterange",
        r#"{"key":"eg=="}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"3","raft_term":"1"}}"#,
    ),
    (
        "/v3/lease/grant",
        r#"{"TTL":60,"ID":4660}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"3","raft_term":"1"},"ID":"4660","TTL":"60"}"#,
    ),
    (
        "/v3/lease/timetolive",
        r#"{"ID":4660,"keys":true}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"3","raft_term":"1"},"ID":"4660","TTL":"{T}","grantedTTL":"60"}"#,
    ),
    (
        "/v3/lease/leases",
        "{}",
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"3","raft_term":"1"},"leases":[{"ID":"4660"}]}"#,
    ),
    (
        "/v3/kv/put",
        r#"{"key":"YQ==","value":"MQ==","lease":4660}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"4","raft_term":"1"}}"#,
    ),
    (
        "/v3/lease/timetolive",
        r#"{"ID":4660,"keys":true}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"4","raft_term":"1"},"ID":"4660","TTL":"{T}","grantedTTL":"60","keys":["YQ=="]}"#,
    ),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2"}],"success":[{"requestRange":{"key":"Zm9v"}}],"failure":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}]}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"4","raft_term":"1"},"succeeded":true,"responses":[{"response_range":{"header":{"revision":"4"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}],"count":"1"}}]}"#,
    ),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"target":"VALUE","key":"Zm9v","value":"YmF6","result":"EQUAL"}],"success":[{"request_put":{"key":"Zm9v","value":"cXV4"}},{"request_delete_range":{"key":"YQ=="}}]}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"5","raft_term":"1"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"5"}}},{"response_delete_range":{"header":{"revision":"5"},"deleted":"1"}}]}"#,
    ),
    (
        "/v3/kv/deleterange",
        r#"{"key":"Zm9v","prev_kv":true}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"6","raft_term":"1"},"deleted":"1","prev_kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"5","version":"3","value":"cXV4"}]}"#,
    ),
    (
        "/v3/lease/revoke",
        r#"{"ID":4660}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"6","raft_term":"1"}}"#,
    ),
    (
        "/v3/lease/revoke",
        r#"{"ID":4660}"#,
        404,
        r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#,
    ),
    (
        "/v3/kv/compaction",
        r#"{"revision":3}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"6","raft_term":"1"}}"#,
    ),
    (
        "/v3/kv/compaction",
        r#"{"revision":3}"#,
        400,
        r#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key":"AA==","range_end":"AA=="}"#,
        200,
        r#"{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"6","raft_term":"1"}}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key":"Zm9v","revision":1}"#,
        400,
        r#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#,
    ),
];

#[tokio::test]
async fn gateway_answers_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.client_addrs()[0];
    let (cluster, member) = (
        server.cluster_id().to_string(),
        server.member_id().to_string(),
    );
    for (path, body, code, expected) in ETCD_SESSION {
        let (got_code, got) = post(addr, path, body).await;
        let mut expected = expected.replace("{C}", &cluster).replace("{M}", &member);
        if expected.contains("{T}") {
            // The remaining TTL: 60 right after the grant, 59 a second later.
            let ttl = if got.contains(r#""TTL":"59""#) {
                "59"
            } else {
                "60"
            };
            expected = expected.replace("{T}", ttl);
        }
        assert_eq!((got_code, got), (*code, expected), "{path} {body}");
    }

    // Keep-alive: one result line per request object, as etcd 3.4 streams them.
    let (code, _) = post(addr, "/v3/lease/grant", r#"{"TTL":60,"ID":4661}"#).await;
    assert_eq!(code, 200);
    let line = |id: &str, ttl: &str| {
        format!(
            r#"{{"result":{{"header":{{"cluster_id":"{cluster}","member_id":"{member}","revision":"6","raft_term":"1"}},"ID":"{id}"{ttl}}}}}"#
        ) + "\n"
    };
    assert_eq!(
        post(addr, "/v3/lease/keepalive", r#"{"ID":4661}{"ID":"4661"}"#).await,
        (200, line("4661", r#","TTL":"60""#).repeat(2))
    );
    assert_eq!(
        post(addr, "/v3/lease/keepalive", r#"{"ID":99}"#).await,
        (200, line("99", ""))
    );

    // Status: etcd's fields, rusd's values.
    let (code, status) = post(addr, "/v3/maintenance/status", "{}").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "header",
        "version",
        "dbSize",
        "leader",
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
        "dbSizeInUse",
    ];
    expected.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, expected, "{status}");
    assert_eq!(
        (
            v["version"].as_str(),
            v["leader"].as_str(),
            v["raftTerm"].as_str()
        ),
        (Some("3.5.0"), Some(member.as_str()), Some("1"))
    );

    // Bad requests: etcd's error shape with InvalidArgument.
    let (code, body) = post(addr, "/v3/kv/put", "{bad").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, v["code"].as_i64()), (400, Some(3)), "{body}");
    let (code, body) = post(addr, "/v3/kv/put", r#"{"key":"!!"}"#).await;
    assert_eq!(
        (code, body.as_str()),
        (
            400,
            r#"{"error":"key: bad base64","message":"key: bad base64","code":3}"#
        )
    );
    let (code, body) = post(addr, "/v3/kv/nope", "{}").await;
    assert_eq!(
        (code, body.as_str()),
        (
            404,
            r#"{"error":"Not Found","message":"Not Found","code":5}"#
        )
    );
    assert_eq!(request(addr, "GET", "/v3/kv/range", "").await.0, 405);
    // The gateway is on client URLs only.
    let (status, _) = common::http_get(server.metrics_addrs()[0], "/v3/kv/range").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn gateway_watch_streams_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.client_addrs()[0];
    let (cluster, member) = (
        server.cluster_id().to_string(),
        server.member_id().to_string(),
    );
    // The result lines of the chunked answer, as etcd 3.4.23 sent them (ids replaced).
    let expected = [
        r#"{"result":{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"1","raft_term":"1"},"created":true}}"#,
        r#"{"result":{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"2","raft_term":"1"},"events":[{"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}]}}"#,
        r#"{"result":{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"3","raft_term":"1"},"events":[{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"3"}}]}}"#,
    ]
    .map(|l| l.replace("{C}", &cluster).replace("{M}", &member));
    let body = r#"{"create_request":{"key":"Zm9v"}}"#;
    let writes = [
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        ("/v3/kv/deleterange", r#"{"key":"Zm9v"}"#),
    ];
    let (lines, raw, mut s) = watch_lines(addr, body, &writes, expected.len()).await;
    assert_eq!(lines, expected);
    let head = String::from_utf8_lossy(&raw).to_string();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    // Shutting down ends the open stream.
    server.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
}

/// `/v3/watch` with `prev_kv` and a `NOPUT` filter: only the deletion arrives, with the value
/// it deleted.
#[tokio::test]
async fn gateway_watch_prev_kv_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.client_addrs()[0];
    let (cluster, member) = (
        server.cluster_id().to_string(),
        server.member_id().to_string(),
    );
    let expected = [
        r#"{"result":{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"1","raft_term":"1"},"created":true}}"#,
        r#"{"result":{"header":{"cluster_id":"{C}","member_id":"{M}","revision":"4","raft_term":"1"},"events":[{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"4"},"prev_kv":{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}}]}}"#,
    ]
    .map(|l| l.replace("{C}", &cluster).replace("{M}", &member));
    let body = r#"{"create_request":{"key":"Zm9v","prev_kv":true,"filters":["NOPUT"]}}"#;
    let writes = [
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6"}"#),
        ("/v3/kv/deleterange", r#"{"key":"Zm9v"}"#),
    ];
    let (lines, _, _) = watch_lines(addr, body, &writes, expected.len()).await;
    assert_eq!(lines, expected);
    server.shutdown().await.unwrap();
}

/// Opens `/v3/watch` with `body`, makes the `writes` (gateway POSTs) once the first result line
/// arrived, and returns the first `n` result lines, the raw answer and the open connection.
async fn watch_lines(
    addr: std::net::SocketAddr,
    body: &str,
    writes: &[(&str, &str)],
    n: usize,
) -> (Vec<String>, Vec<u8>, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut lines = Vec::new();
    let mut wrote = false;
    while lines.len() < n {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(got > 0, "closed early: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..got]);
        lines = String::from_utf8_lossy(&raw)
            .split(['\r', '\n'])
            .filter(|l| l.starts_with(r#"{"result""#))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() && !wrote {
            wrote = true;
            for (path, body) in writes {
                assert_eq!(post(addr, path, body).await.0, 200);
            }
        }
    }
    (lines, raw, s)
}

/// `/v3/watch` is full duplex, as etcd's grpc-gateway: objects of a request body that is still
/// open (chunked) are served as they arrive: a create, a cancel in mid-stream (no event after
/// it), a progress request, a second create; a body object that is not JSON ends the stream
/// with grpc-gateway's error line.
#[tokio::test]
async fn gateway_watch_is_full_duplex_with_cancel_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.client_addrs()[0];
    let (cluster, member) = (
        server.cluster_id().to_string(),
        server.member_id().to_string(),
    );
    let header = |rev: i64| {
        format!(
            r#""header":{{"cluster_id":"{cluster}","member_id":"{member}","revision":"{rev}","raft_term":"1"}}"#
        )
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut reader = LineReader::default();
    // An object split over two chunks.
    send_chunk(&mut s, r#"{"create_request":{"key":"Zm9v","#).await;
    send_chunk(&mut s, r#""watch_id":"5"}}"#).await;
    assert_eq!(
        reader.next(&mut s).await,
        format!(
            r#"{{"result":{{{},"watch_id":"5","created":true}}}}"#,
            header(1)
        )
    );
    assert_eq!(
        post(addr, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#)
            .await
            .0,
        200
    );
    assert_eq!(
        reader.next(&mut s).await,
        format!(
            r#"{{"result":{{{},"watch_id":"5","events":[{{"kv":{{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}}}]}}}}"#,
            header(2)
        )
    );
    send_chunk(&mut s, r#"{"cancel_request":{"watch_id":5}}"#).await;
    assert_eq!(
        reader.next(&mut s).await,
        format!(
            r#"{{"result":{{{},"watch_id":"5","canceled":true}}}}"#,
            header(2)
        )
    );
    // No event after the cancel: the next line answers the progress request, at revision 3.
    assert_eq!(
        post(addr, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6"}"#)
            .await
            .0,
        200
    );
    send_chunk(&mut s, "\n{\"progress_request\":{}}\n").await;
    assert_eq!(
        reader.next(&mut s).await,
        format!(r#"{{"result":{{{},"watch_id":"-1"}}}}"#, header(3))
    );
    send_chunk(
        &mut s,
        r#"{"create_request":{"key":"Zm9v","start_revision":"3","watch_id":"6"}}"#,
    )
    .await;
    assert_eq!(
        reader.next(&mut s).await,
        format!(
            r#"{{"result":{{{},"watch_id":"6","created":true}}}}"#,
            header(3)
        )
    );
    assert_eq!(
        reader.next(&mut s).await,
        format!(
            r#"{{"result":{{{},"watch_id":"6","events":[{{"kv":{{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}}}}]}}}}"#,
            header(3)
        )
    );
    send_chunk(&mut s, "{nope").await;
    send_chunk(&mut s, "}").await;
    assert_eq!(
        reader.next(&mut s).await,
        r#"{"error":{"grpc_code":3,"http_code":400,"message":"key must be a string at line 1 column 2","http_status":"Bad Request"}}"#
    );
    // The stream ends after the error (the terminating chunk of the answer).
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !reader.raw_tail().ends_with(b"0\r\n\r\n") {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            reader.raw.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
    server.shutdown().await.unwrap();
}

async fn send_chunk(s: &mut tokio::net::TcpStream, data: &str) {
    s.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await
        .unwrap();
}

/// The JSON lines of a chunked HTTP answer, one at a time.
#[derive(Default)]
struct LineReader {
    raw: Vec<u8>,
    taken: usize,
}

impl LineReader {
    async fn next(&mut self, s: &mut tokio::net::TcpStream) -> String {
        loop {
            let text = String::from_utf8_lossy(&self.raw).to_string();
            let lines: Vec<&str> = text
                .split(['\r', '\n'])
                .filter(|l| l.starts_with(r#"{"result""#) || l.starts_with(r#"{"error""#))
                .collect();
            if lines.len() > self.taken {
                self.taken += 1;
                return lines[self.taken - 1].to_string();
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("a watch line within 10 s")
                .unwrap();
            assert!(n > 0, "closed early: {text}");
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    fn raw_tail(&self) -> &[u8] {
        &self.raw[self.raw.len().saturating_sub(5)..]
    }
}
