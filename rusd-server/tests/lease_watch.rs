//! Lease and Watch services through the etcd-client crate, on every compiled engine.

mod common;

use std::time::{Duration, Instant};

use etcd_client::{
    EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchFilterType,
    WatchOptions, WatchResponse, WatchStream,
};
use tonic::Code;

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("watch response in time")
        .unwrap()
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_every_engine() {
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c).await;
        let mut c = common::connect(&server).await;

        let auto = c.lease_grant(60, None).await.unwrap();
        assert!(auto.id() > 0, "{kind}");
        assert_eq!(auto.ttl(), 60);
        let l = c
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(42)))
            .await
            .unwrap();
        assert_eq!((l.id(), l.ttl()), (42, 30));
        let (code, msg) = common::status(
            c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(42)))
                .await,
        );
        assert_eq!(
            (code, msg.as_str()),
            (Code::FailedPrecondition, "etcdserver: lease already exists")
        );
        // TTLs below etcd's minimum are raised to it.
        let short = c
            .lease_grant(1, Some(LeaseGrantOptions::new().with_id(43)))
            .await
            .unwrap();
        assert_eq!(short.ttl(), 2);

        c.put("lk1", "a", Some(PutOptions::new().with_lease(42)))
            .await
            .unwrap(); // 2
        c.put("lk2", "b", Some(PutOptions::new().with_lease(42)))
            .await
            .unwrap(); // 3
        let t = c
            .lease_time_to_live(42, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!((t.id(), t.granted_ttl()), (42, 30));
        assert!(t.ttl() == 30 || t.ttl() == 29, "ttl {}", t.ttl());
        assert_eq!(t.keys(), &[b"lk1".to_vec(), b"lk2".to_vec()]);
        let t = c.lease_time_to_live(42, None).await.unwrap();
        assert!(t.keys().is_empty());
        let t = c.lease_time_to_live(12345, None).await.unwrap();
        assert_eq!((t.id(), t.ttl()), (12345, -1));

        let mut ids: Vec<i64> = c
            .leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        ids.sort();
        let mut expected = vec![42, 43, auto.id()];
        expected.sort();
        assert_eq!(ids, expected);

        // Keep-alive stream: renews known leases, answers TTL 0 for unknown ones.
        let (mut keeper, mut stream) = c.lease_keep_alive(42).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let r = stream.message().await.unwrap().unwrap();
        assert_eq!((r.id(), r.ttl()), (42, 30));
        assert_eq!(r.header().unwrap().revision(), 3);
        // (the client turns the server's TTL 0 for an unknown lease into an error)
        match c.lease_keep_alive(4242).await {
            Err(etcd_client::Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
            other => panic!("{other:?}"),
        }

        // Revoke deletes the attached keys in one revision.
        let r = c.lease_revoke(42).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), 4);
        assert_eq!(
            c.get("lk", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap()
                .count(),
            0
        );
        let (code, msg) = common::status(c.lease_revoke(42).await);
        assert_eq!(
            (code, msg.as_str()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
        keeper.keep_alive().await.unwrap();
        let r = stream.message().await.unwrap().unwrap();
        assert_eq!((r.id(), r.ttl()), (42, 0));

        // Expiry revokes the lease and deletes its keys.
        c.put("ek", "v", Some(PutOptions::new().with_lease(43)))
            .await
            .unwrap(); // 5
        let start = Instant::now();
        let mut cc = c.clone();
        let gone = common::eventually(Duration::from_secs(10), || {
            let mut cc = cc.clone();
            async move { cc.get("ek", None).await.unwrap().count() == 0 }
        })
        .await;
        assert!(gone, "{kind}: lease 43 did not expire");
        assert!(
            start.elapsed() >= Duration::from_millis(1500),
            "expired too early"
        );
        assert_eq!(cc.lease_time_to_live(43, None).await.unwrap().ttl(), -1);
        assert_eq!(
            cc.get("ek", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision(),
            6
        );

        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_every_engine() {
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c).await;
        let mut c = common::connect(&server).await;

        let mut w = c.watch("wk", None).await.unwrap();
        let r = next(&mut w).await;
        assert!(r.created(), "{kind}");
        assert_eq!((r.watch_id(), r.header().unwrap().revision()), (0, 1));

        c.put("wk", "v1", None).await.unwrap(); // 2
        let r = next(&mut w).await;
        assert_eq!((r.watch_id(), r.header().unwrap().revision()), (0, 2));
        let ev = &r.events()[0];
        assert_eq!(ev.event_type(), EventType::Put);
        let kv = ev.kv().unwrap();
        assert_eq!(
            (
                kv.key(),
                kv.value(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version()
            ),
            (&b"wk"[..], &b"v1"[..], 2, 2, 1)
        );
        assert!(ev.prev_kv().is_none());

        // A second watcher on the same stream with prev_kv, then a delete.
        w.watch("wk", Some(WatchOptions::new().with_prev_key()))
            .await
            .unwrap();
        let r = next(&mut w).await;
        assert!(r.created());
        assert_eq!(r.watch_id(), 1);
        c.delete("wk", None).await.unwrap(); // 3
        let mut got = vec![next(&mut w).await, next(&mut w).await];
        got.sort_by_key(|r| r.watch_id());
        for r in &got {
            let ev = &r.events()[0];
            assert_eq!(ev.event_type(), EventType::Delete);
            assert_eq!(
                (ev.kv().unwrap().key(), ev.kv().unwrap().mod_revision()),
                (&b"wk"[..], 3)
            );
        }
        assert!(got[0].events()[0].prev_kv().is_none());
        assert_eq!(got[1].events()[0].prev_kv().unwrap().value(), b"v1");

        // Cancel.
        w.cancel(1).await.unwrap();
        let r = next(&mut w).await;
        assert!(r.canceled());
        assert_eq!(r.watch_id(), 1);

        // Progress request: stream-wide response at the current revision.
        w.request_progress().await.unwrap();
        let r = next(&mut w).await;
        assert_eq!(
            (
                r.watch_id(),
                r.events().len(),
                r.header().unwrap().revision()
            ),
            (-1, 0, 3)
        );

        // History replay of a prefix from revision 1, with a client-chosen id and a filter.
        c.put("p/a", "1", None).await.unwrap(); // 4
        c.put("p/b", "2", None).await.unwrap(); // 5
        c.delete("p/a", None).await.unwrap(); // 6
        let mut h = c
            .watch(
                "p/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(1)
                        .with_watch_id(100),
                ),
            )
            .await
            .unwrap();
        let r = next(&mut h).await;
        assert!(r.created());
        assert_eq!(r.watch_id(), 100);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let r = next(&mut h).await;
            assert_eq!(r.watch_id(), 100);
            for ev in r.events() {
                seen.push((
                    ev.event_type(),
                    ev.kv().unwrap().key().to_vec(),
                    ev.kv().unwrap().mod_revision(),
                ));
            }
        }
        assert_eq!(
            seen,
            vec![
                (EventType::Put, b"p/a".to_vec(), 4),
                (EventType::Put, b"p/b".to_vec(), 5),
                (EventType::Delete, b"p/a".to_vec(), 6)
            ]
        );
        h.watch(
            "p/",
            Some(WatchOptions::new().with_prefix().with_watch_id(100)),
        )
        .await
        .unwrap();
        let r = next(&mut h).await;
        assert!(r.created() && r.canceled());
        assert_eq!(
            r.cancel_reason(),
            "mvcc: duplicate watch ID provided on the WatchStream"
        );

        let mut f = c
            .watch(
                "p/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(4)
                        .with_filters([WatchFilterType::NoPut]),
                ),
            )
            .await
            .unwrap();
        assert!(next(&mut f).await.created());
        let r = next(&mut f).await;
        assert_eq!(r.events().len(), 1);
        assert_eq!(
            (r.events()[0].event_type(), r.header().unwrap().revision()),
            (EventType::Delete, 6)
        );

        // A watcher whose start revision is compacted is cancelled with the compact revision.
        c.compact(5, None).await.unwrap();
        let mut old = c
            .watch(
                "p/",
                Some(WatchOptions::new().with_prefix().with_start_revision(2)),
            )
            .await
            .unwrap();
        assert!(next(&mut old).await.created());
        let r = next(&mut old).await;
        assert!(r.canceled());
        assert_eq!(r.compact_revision(), 5);

        // A slow client loses and repeats nothing.
        let mut slow = c
            .watch("s/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(next(&mut slow).await.created());
        for i in 0..400 {
            c.put(format!("s/{:03}", i % 7), format!("{i}"), None)
                .await
                .unwrap(); // 7..=406
        }
        let mut revs = Vec::new();
        while revs.len() < 400 {
            let r = next(&mut slow).await;
            for ev in r.events() {
                revs.push(ev.kv().unwrap().mod_revision());
            }
        }
        assert_eq!(revs, (7..=406).collect::<Vec<i64>>());

        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watch_streams_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(storage_api::BackendKind::Memory, dir.path(), |c| c).await;
    let mut c = common::connect(&server).await;
    let mut streams = Vec::new();
    for i in 0..300 {
        let mut w = c.watch(format!("m{i}"), None).await.unwrap();
        assert!(next(&mut w).await.created());
        streams.push(w);
    }
    c.put("m299", "v", None).await.unwrap();
    let r = next(&mut streams[299]).await;
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 2);
    drop(streams);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_progress_notify() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(storage_api::BackendKind::Memory, dir.path(), |c| {
        c.with_progress_notify_interval(Duration::from_millis(300))
    })
    .await;
    let mut c = common::connect(&server).await;
    c.put("a", "1", None).await.unwrap(); // 2
    let mut w = c
        .watch("a", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    let created = next(&mut w).await;
    assert!(created.created());
    let r = next(&mut w).await;
    assert_eq!(
        (
            r.watch_id(),
            r.events().len(),
            r.header().unwrap().revision()
        ),
        (0, 0, 2)
    );
    // An empty watch key means the key "\0"; watch_id auto-assignment continues.
    w.watch("b", None).await.unwrap();
    let r = next(&mut w).await;
    assert_eq!((r.created(), r.watch_id()), (true, 1));
    server.shutdown().await.unwrap();
}
