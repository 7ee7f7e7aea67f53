//! Maintenance (Status, Alarm, Defragment, Snapshot, HashKV), Cluster (MemberList), the metrics
//! endpoint and restarts on the same data directory, on every compiled engine.

mod common;

use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, GetOptions, LeaseGrantOptions, PutOptions,
};
use rusd_server::maintenance::frame;
use storage_api::snapshot::ValidatedSnapshot;
use tonic::Code;

/// (key, value, mod revision, version, lease)
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64);

async fn workload(c: &mut etcd_client::Client) {
    for i in 0..20 {
        c.put(format!("k{:02}", i % 8), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.delete("k03", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_members_hash_snapshot_defrag_on_every_engine() {
    let mut hashes = Vec::new();
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c).await;
        let mut c = common::connect(&server).await;
        workload(&mut c).await; // revisions 2..=22

        let s = c.status().await.unwrap();
        assert_eq!(s.version(), "3.5.0");
        assert_eq!(s.leader(), server.member_id());
        // Raft log: the initial membership (0), the leader's blank entry (1), its no-op entry
        // (2, see rusd_raft::node "Leadership"), the 21 writes.
        assert_eq!(
            (s.raft_index(), s.raft_applied_index(), s.raft_term()),
            (23, 23, 1)
        );
        assert!(!s.is_learner());
        assert!(s.errors().is_empty());
        assert!(s.db_size() >= 0);
        assert_eq!(s.header().unwrap().revision(), 22);

        let m = c.member_list().await.unwrap();
        assert_eq!(m.members().len(), 1);
        let me = &m.members()[0];
        assert_eq!(
            (me.id(), me.name(), me.is_learner()),
            (server.member_id(), "m1", false)
        );
        assert_eq!(me.client_urls(), &[server.client_url()]);

        // Membership: a learner is added, listed, refused promotion while it is not in sync
        // (it never runs here), and removed. No auth; leadership stays here.
        let added = c
            .member_add(
                ["http://127.0.0.1:1"],
                Some(etcd_client::MemberAddOptions::new().with_is_learner()),
            )
            .await
            .unwrap();
        let learner = added.member().unwrap().id();
        assert!(added.member().unwrap().is_learner());
        assert_eq!(added.member_list().len(), 2);
        let (code, msg) = common::status(c.member_promote(learner).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader"
            )
        );
        let (code, _) = common::status(c.member_add(["http://127.0.0.1:1"], None).await);
        assert_eq!(code, Code::FailedPrecondition);
        let left = c.member_remove(learner).await.unwrap();
        assert_eq!(left.members().len(), 1);
        let (code, _) = common::status(c.member_remove(learner).await);
        assert_eq!(code, Code::NotFound);
        assert_eq!(
            common::status(c.auth_enable().await),
            (
                Code::FailedPrecondition,
                "etcdserver: root user does not exist".to_string()
            )
        );
        c.move_leader(server.member_id()).await.unwrap();
        let (code, msg) = common::status(c.move_leader(server.member_id() ^ 1).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee"
            )
        );

        // HashKV: identical history gives identical hashes on every engine.
        let h = c.hash_kv(0).await.unwrap();
        assert_eq!(h.hash_revision(), 22);
        let h10 = c.hash_kv(10).await.unwrap();
        assert_eq!(h10.hash_revision(), 10);
        assert_ne!(h.hash(), h10.hash());
        hashes.push((kind, h.hash(), h10.hash()));
        let (code, msg) = common::status(c.hash_kv(23).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision"
            )
        );

        // Snapshot: a framed portable snapshot that etcdctl accepts.
        let mut stream = c.snapshot().await.unwrap();
        let mut blob = Vec::new();
        let mut last_remaining = u64::MAX;
        while let Some(r) = stream.message().await.unwrap() {
            blob.extend_from_slice(r.blob());
            last_remaining = r.remaining_bytes();
        }
        assert_eq!(last_remaining, 0);
        assert_eq!(blob.len() % 512, 32);
        let snap = frame::unframe(&blob).expect("valid framing");
        let v = ValidatedSnapshot::read_from(&mut &snap[..]).unwrap();
        assert!(v.entry_count() >= 21, "{kind}: {} entries", v.entry_count());

        // Defragment keeps the data.
        c.defragment().await.unwrap();
        let r = c
            .get("k", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!((r.count(), r.header().unwrap().revision()), (7, 22));
        assert_eq!(c.hash_kv(0).await.unwrap().hash(), h.hash());

        // Metrics and health.
        let maddr = server.metrics_addrs()[0];
        let (status, body) = common::http_get(maddr, "/health").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", r#"{"health":"true","reason":""}"#)
        );
        let (status, body) = common::http_get(maddr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            body.contains("\netcd_debugging_mvcc_current_revision 22\n"),
            "{body}"
        );
        assert!(body.contains(&format!("rusd_backend_info{{engine=\"{kind}\"}} 1")));
        assert!(body.contains("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 20"), "{body}");
        let (status, _) = common::http_get(maddr, "/nope").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");

        server.shutdown().await.unwrap();
    }
    for w in hashes.windows(2) {
        assert_eq!(
            (w[0].1, w[0].2),
            (w[1].1, w[1].2),
            "{:?} vs {:?}",
            w[0].0,
            w[1].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_on_every_engine() {
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c.with_quota_backend_bytes(Some(1))).await;
        let mut c = common::connect(&server).await;
        let (code, msg) = common::status(c.put("k", "v", None).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded"
            ),
            "{kind}"
        );
        let alarms = c
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap();
        assert_eq!(alarms.alarms().len(), 1);
        assert_eq!(
            (alarms.alarms()[0].member_id(), alarms.alarms()[0].alarm()),
            (server.member_id(), AlarmType::Nospace)
        );
        let s = c.status().await.unwrap();
        assert_eq!(
            s.errors(),
            &[format!("memberID:{} alarm:NOSPACE ", server.member_id())]
        );
        let (status, _) = common::http_get(server.metrics_addrs()[0], "/health").await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        // Reads, deletes and lease-less maintenance still work; leases and puts do not.
        assert_eq!(c.get("k", None).await.unwrap().count(), 0);
        assert_eq!(c.delete("k", None).await.unwrap().deleted(), 0);
        let (code, _) = common::status(c.lease_grant(10, None).await);
        assert_eq!(code, Code::ResourceExhausted);
        // Disarm: the next write over quota raises it again.
        let mut opts = AlarmOptions::new();
        opts.with_member(server.member_id());
        let r = c
            .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
            .await
            .unwrap();
        assert_eq!(r.alarms().len(), 1);
        assert!(c
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap()
            .alarms()
            .is_empty());
        let (code, _) = common::status(c.put("k", "v", None).await);
        assert_eq!(code, Code::ResourceExhausted);
        assert_eq!(
            c.alarm(AlarmAction::Get, AlarmType::None, None)
                .await
                .unwrap()
                .alarms()
                .len(),
            1
        );
        assert_eq!(
            c.get("k", None).await.unwrap().header().unwrap().revision(),
            1
        );
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_same_data_dir_on_every_engine() {
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c).await;
        let mut c = common::connect(&server).await;
        c.lease_grant(100, Some(LeaseGrantOptions::new().with_id(5)))
            .await
            .unwrap();
        c.put("a", "1", None).await.unwrap(); // 2
        c.put("a", "2", None).await.unwrap(); // 3
        c.put("b", "x", Some(PutOptions::new().with_lease(5)))
            .await
            .unwrap(); // 4
        c.put("c", "y", None).await.unwrap(); // 5
        c.delete("c", None).await.unwrap(); // 6
        c.compact(3, None).await.unwrap();
        let hash = c.hash_kv(0).await.unwrap().hash();
        drop(c);
        server.shutdown().await.unwrap();

        let server = common::start(kind, dir.path(), |c| c).await;
        let mut c = common::connect(&server).await;
        let r = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(r.header().unwrap().revision(), 6, "{kind}");
        let kvs: Vec<Row> = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                )
            })
            .collect();
        assert_eq!(
            kvs,
            vec![
                (b"a".to_vec(), b"2".to_vec(), 3, 2, 0),
                (b"b".to_vec(), b"x".to_vec(), 4, 1, 5)
            ]
        );
        let (code, msg) =
            common::status(c.get("a", Some(GetOptions::new().with_revision(2))).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        assert_eq!(c.hash_kv(0).await.unwrap().hash(), hash);
        let t = c
            .lease_time_to_live(
                5,
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .unwrap();
        assert_eq!((t.granted_ttl(), t.keys()), (100, &[b"b".to_vec()][..]));
        // New writes continue the revision sequence.
        assert_eq!(
            c.put("d", "z", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision(),
            7
        );
        let r = c.lease_revoke(5).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), 8);
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_by_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(storage_api::BackendKind::Memory, dir.path(), |c| {
        c.with_auto_compaction(Some(mvcc_core::CompactionMode::Revision(5)))
            .with_auto_compaction_check_interval(Some(Duration::from_millis(20)))
    })
    .await;
    let mut c = common::connect(&server).await;
    for i in 0..10 {
        c.put("k", format!("{i}"), None).await.unwrap(); // 2..=11
    }
    let compacted = common::eventually(Duration::from_secs(5), || async {
        server.store().compact_revision() == 6
    })
    .await;
    assert!(compacted);
    let (code, _) = common::status(c.get("k", Some(GetOptions::new().with_revision(5))).await);
    assert_eq!(code, Code::OutOfRange);
    server.shutdown().await.unwrap();
}
