//! KV service (Range, Put, DeleteRange, Txn, Compact) through the etcd-client crate, on every
//! compiled engine.

mod common;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use tonic::Code;

fn keys(r: &etcd_client::GetResponse) -> Vec<String> {
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8(kv.key().to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_put_delete_on_every_engine() {
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c).await;
        let mut c = common::connect(&server).await;

        let r = c.put("a", "1", None).await.unwrap();
        let h = r.header().unwrap();
        assert_eq!(h.revision(), 2, "{kind}");
        assert_eq!(h.member_id(), server.member_id());
        assert_eq!(h.cluster_id(), server.cluster_id());
        assert_eq!(h.raft_term(), 1); // a new one-member cluster elects itself in term 1
        for (k, v, rev) in [("b", "2", 3), ("c", "3", 4), ("a", "11", 5)] {
            let resp = c.put(k, v, None).await.unwrap();
            assert_eq!(resp.header().unwrap().revision(), rev, "{kind}: put {k}");
        }

        // Single key.
        let r = c.get("a", None).await.unwrap();
        assert_eq!(r.count(), 1);
        assert!(!r.more());
        let kv = &r.kvs()[0];
        assert_eq!(
            (
                kv.value(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease()
            ),
            (&b"11"[..], 2, 5, 2, 0)
        );
        assert_eq!(r.header().unwrap().revision(), 5);
        assert_eq!(c.get("zz", None).await.unwrap().count(), 0);

        // All keys (key "\0", end "\0"), prefix, from-key, explicit range.
        let all = Some(GetOptions::new().with_all_keys());
        let r = c.get("", all.clone()).await.unwrap();
        assert_eq!(
            (keys(&r), r.count()),
            (vec!["a".into(), "b".into(), "c".into()], 3)
        );
        let r = c
            .get("a", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["a"]);
        let r = c
            .get("b", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["b", "c"]);
        let r = c
            .get("a", Some(GetOptions::new().with_range("c")))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["a", "b"]);

        // Limit, more, count.
        let r = c
            .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
            .await
            .unwrap();
        assert_eq!(
            (keys(&r), r.more(), r.count()),
            (vec!["a".into(), "b".into()], true, 3)
        );
        let r = c
            .get("", Some(GetOptions::new().with_all_keys().with_limit(3)))
            .await
            .unwrap();
        assert_eq!((r.kvs().len(), r.more(), r.count()), (3, false, 3));

        // Historical revision; the header carries the current revision.
        let r = c
            .get("", Some(GetOptions::new().with_all_keys().with_revision(3)))
            .await
            .unwrap();
        assert_eq!((keys(&r), r.count()), (vec!["a".into(), "b".into()], 2));
        assert_eq!(r.kvs()[0].value(), b"1");
        assert_eq!(r.header().unwrap().revision(), 5);

        // count_only, keys_only.
        let r = c
            .get(
                "",
                Some(GetOptions::new().with_all_keys().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!((r.kvs().len(), r.count(), r.more()), (0, 3, false));
        let r = c
            .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["a", "b", "c"]);
        assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));

        // Sort orders and targets.
        let sorted = |t, o| Some(GetOptions::new().with_all_keys().with_sort(t, o));
        let r = c
            .get("", sorted(SortTarget::Mod, SortOrder::Descend))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["a", "c", "b"]);
        let r = c
            .get("", sorted(SortTarget::Create, SortOrder::Ascend))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["a", "b", "c"]);
        let r = c
            .get("", sorted(SortTarget::Value, SortOrder::Descend))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["c", "b", "a"]);
        let r = c
            .get("", sorted(SortTarget::Key, SortOrder::Descend))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["c", "b", "a"]);
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_sort(SortTarget::Mod, SortOrder::Descend)
                        .with_limit(1),
                ),
            )
            .await
            .unwrap();
        assert_eq!((keys(&r), r.more(), r.count()), (vec!["a".into()], true, 3));

        // Revision filters (count stays the total).
        let f = |o: GetOptions| Some(o.with_all_keys());
        let r = c
            .get("", f(GetOptions::new().with_min_mod_revision(4)))
            .await
            .unwrap();
        assert_eq!((keys(&r), r.count()), (vec!["a".into(), "c".into()], 3));
        let r = c
            .get("", f(GetOptions::new().with_max_mod_revision(4)))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["b", "c"]);
        let r = c
            .get("", f(GetOptions::new().with_min_create_revision(3)))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["b", "c"]);
        let r = c
            .get("", f(GetOptions::new().with_max_create_revision(2)))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["a"]);

        // Errors.
        let (code, msg) =
            common::status(c.get("a", Some(GetOptions::new().with_revision(6))).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision"
            )
        );
        let (code, msg) = common::status(c.get("", None).await);
        assert_eq!(
            (code, msg.as_str()),
            (Code::InvalidArgument, "etcdserver: key is not provided")
        );
        let (code, msg) = common::status(c.put("", "x", None).await);
        assert_eq!(
            (code, msg.as_str()),
            (Code::InvalidArgument, "etcdserver: key is not provided")
        );

        // Put options.
        let r = c
            .put("a", "12", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        let prev = r.prev_key().unwrap();
        assert_eq!(
            (prev.value(), prev.mod_revision(), prev.version()),
            (&b"11"[..], 5, 2)
        );
        assert_eq!(r.header().unwrap().revision(), 6);
        let r = c
            .put("new", "n", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert!(r.prev_key().is_none());
        assert_eq!(r.header().unwrap().revision(), 7);
        c.lease_grant(60, Some(etcd_client::LeaseGrantOptions::new().with_id(777)))
            .await
            .unwrap();
        let r = c
            .put(
                "a",
                "",
                Some(PutOptions::new().with_ignore_value().with_lease(777)),
            )
            .await
            .unwrap();
        assert_eq!(r.header().unwrap().revision(), 8);
        let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
        assert_eq!((kv.value(), kv.lease(), kv.version()), (&b"12"[..], 777, 4));
        c.put("a", "13", Some(PutOptions::new().with_ignore_lease()))
            .await
            .unwrap();
        let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
        assert_eq!(
            (kv.value(), kv.lease(), kv.mod_revision()),
            (&b"13"[..], 777, 9)
        );
        let (code, msg) = common::status(
            c.put("zz", "", Some(PutOptions::new().with_ignore_value()))
                .await,
        );
        assert_eq!(
            (code, msg.as_str()),
            (Code::InvalidArgument, "etcdserver: key not found")
        );
        let (code, msg) = common::status(
            c.put("a", "v", Some(PutOptions::new().with_ignore_value()))
                .await,
        );
        assert_eq!(
            (code, msg.as_str()),
            (Code::InvalidArgument, "etcdserver: value is provided")
        );
        let (code, msg) = common::status(
            c.put(
                "a",
                "",
                Some(PutOptions::new().with_ignore_lease().with_lease(777)),
            )
            .await,
        );
        assert_eq!(
            (code, msg.as_str()),
            (Code::InvalidArgument, "etcdserver: lease is provided")
        );
        let (code, msg) = common::status(
            c.put("x", "v", Some(PutOptions::new().with_lease(999)))
                .await,
        );
        assert_eq!(
            (code, msg.as_str()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
        // Rejected requests were not applied.
        let r = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(
            (keys(&r), r.header().unwrap().revision()),
            (vec!["a".into(), "b".into(), "c".into(), "new".into()], 9)
        );

        // Deletes.
        let r = c
            .delete("b", Some(DeleteOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!((r.deleted(), r.header().unwrap().revision()), (1, 10));
        assert_eq!(r.prev_kvs()[0].value(), b"2");
        let r = c.delete("zz", None).await.unwrap();
        assert_eq!((r.deleted(), r.header().unwrap().revision()), (0, 10));
        let r = c
            .delete("a", Some(DeleteOptions::new().with_range("d")))
            .await
            .unwrap();
        assert_eq!(
            (
                r.deleted(),
                r.prev_kvs().len(),
                r.header().unwrap().revision()
            ),
            (2, 0, 11)
        );
        let r = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!((keys(&r), r.count()), (vec!["new".into()], 1));
        // The deleted key is gone from its lease.
        let ttl = c
            .lease_time_to_live(
                777,
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .unwrap();
        assert!(ttl.keys().is_empty());
        let (code, msg) = common::status(c.delete("", None).await);
        assert_eq!(
            (code, msg.as_str()),
            (Code::InvalidArgument, "etcdserver: key is not provided")
        );

        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_on_every_engine() {
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c.with_max_txn_ops(4)).await;
        let mut c = common::connect(&server).await;
        c.put("k1", "v1", None).await.unwrap(); // 2
        c.put("k2", "v2", None).await.unwrap(); // 3

        // Every compare target, success branch, ops see earlier writes.
        let t = Txn::new()
            .when([
                Compare::value("k1", CompareOp::Equal, "v1"),
                Compare::version("k2", CompareOp::Equal, 1),
                Compare::create_revision("k1", CompareOp::Equal, 2),
                Compare::mod_revision("k2", CompareOp::Greater, 2),
            ])
            .and_then([
                TxnOp::put("k1", "v1b", None),
                TxnOp::get("k1", None),
                TxnOp::delete("k2", Some(DeleteOptions::new().with_prev_key())),
            ])
            .or_else([TxnOp::get("k1", None)]);
        let r = c.txn(t).await.unwrap();
        assert!(r.succeeded(), "{kind}");
        assert_eq!(r.header().unwrap().revision(), 4);
        let ops = r.op_responses();
        assert_eq!(ops.len(), 3);
        match &ops[1] {
            TxnOpResponse::Get(g) => {
                assert_eq!(
                    (g.kvs()[0].value(), g.kvs()[0].mod_revision()),
                    (&b"v1b"[..], 4)
                )
            }
            other => panic!("{other:?}"),
        }
        match &ops[2] {
            TxnOpResponse::Delete(d) => {
                assert_eq!((d.deleted(), d.prev_kvs()[0].value()), (1, &b"v2"[..]))
            }
            other => panic!("{other:?}"),
        }

        // Failing compare: failure branch, no new revision.
        let t = Txn::new()
            .when([
                Compare::value("k1", CompareOp::Equal, "nope"),
                Compare::lease("k1", CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put("k1", "x", None)])
            .or_else([TxnOp::get("k", Some(GetOptions::new().with_prefix()))]);
        let r = c.txn(t).await.unwrap();
        assert!(!r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 4);
        match &r.op_responses()[0] {
            TxnOpResponse::Get(g) => assert_eq!((g.count(), g.kvs()[0].value()), (1, &b"v1b"[..])),
            other => panic!("{other:?}"),
        }

        // Missing keys: version == 0 holds, a value compare does not.
        let t = Txn::new().when([Compare::version("missing", CompareOp::Equal, 0)]);
        assert!(c.txn(t).await.unwrap().succeeded());
        let t = Txn::new().when([Compare::value("missing", CompareOp::Equal, "")]);
        assert!(!c.txn(t).await.unwrap().succeeded());
        // A compare over a range holds when every key does.
        let t = Txn::new().when([Compare::version("k", CompareOp::Greater, 0).with_prefix()]);
        assert!(c.txn(t).await.unwrap().succeeded());
        let t = Txn::new().when([Compare::mod_revision("k", CompareOp::Less, 4).with_prefix()]);
        assert!(!c.txn(t).await.unwrap().succeeded());

        // Nested txn, put with prev_kv inside a txn.
        let inner = Txn::new()
            .when([Compare::version("k1", CompareOp::Equal, 2)])
            .and_then([TxnOp::put("n1", "x", None)])
            .or_else([TxnOp::put("n2", "y", None)]);
        let t = Txn::new().and_then([
            TxnOp::txn(inner),
            TxnOp::put("k1", "v1c", Some(PutOptions::new().with_prev_key())),
        ]);
        let r = c.txn(t).await.unwrap();
        assert!(r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 5);
        match &r.op_responses()[0] {
            TxnOpResponse::Txn(n) => assert!(n.succeeded()),
            other => panic!("{other:?}"),
        }
        match &r.op_responses()[1] {
            TxnOpResponse::Put(p) => assert_eq!(p.prev_key().unwrap().value(), b"v1b"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.get("n1", None).await.unwrap().kvs()[0].mod_revision(), 5);
        assert_eq!(c.get("n2", None).await.unwrap().count(), 0);

        // Rejected before any effect.
        let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
        let (code, msg) = common::status(c.txn(dup).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request"
            )
        );
        let overlap = Txn::new().and_then([
            TxnOp::delete("a", Some(DeleteOptions::new().with_range("z"))),
            TxnOp::put("b", "1", None),
        ]);
        let (code, msg) = common::status(c.txn(overlap).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request"
            )
        );
        let many: Vec<TxnOp> = (0..5)
            .map(|i| TxnOp::put(format!("m{i}"), "v", None))
            .collect();
        let (code, msg) = common::status(c.txn(Txn::new().and_then(many)).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request"
            )
        );
        // Nested budget: 4 - 2 outer ops leaves 2 for the nested txn.
        let nested = Txn::new().and_then([
            TxnOp::put("x1", "v", None),
            TxnOp::put("x2", "v", None),
            TxnOp::put("x3", "v", None),
        ]);
        let (code, msg) = common::status(
            c.txn(Txn::new().and_then([TxnOp::txn(nested), TxnOp::get("k1", None)]))
                .await,
        );
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request"
            )
        );
        let (code, msg) = common::status(
            c.txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))
                .await,
        );
        assert_eq!(
            (code, msg.as_str()),
            (Code::InvalidArgument, "etcdserver: key is not provided")
        );
        let bad_lease = Txn::new().and_then([TxnOp::put(
            "l",
            "v",
            Some(PutOptions::new().with_lease(31337)),
        )]);
        let (code, msg) = common::status(c.txn(bad_lease).await);
        assert_eq!(
            (code, msg.as_str()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
        // An unknown lease on the branch not taken is not checked.
        let other_branch = Txn::new()
            .when([Compare::version("k1", CompareOp::Greater, 0)])
            .and_then([TxnOp::get("k1", None)])
            .or_else([TxnOp::put(
                "l",
                "v",
                Some(PutOptions::new().with_lease(31337)),
            )]);
        assert!(c.txn(other_branch).await.unwrap().succeeded());
        let r = c
            .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
            .await
            .unwrap();
        assert_eq!(keys(&r), vec!["k1", "n1"]);
        assert_eq!(r.header().unwrap().revision(), 5);

        server.shutdown().await.unwrap();
    }
}

/// The nested op budget as etcd 3.4.23 answers it with the default `max-txn-ops` (128): 127
/// nested one-put txns are written at revision 2, 128 are refused and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_txn_budget_matches_etcd() {
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c).await;
        let mut c = common::connect(&server).await;
        let nested = |n: usize, prefix: &str| {
            Txn::new().and_then(
                (0..n)
                    .map(|i| {
                        TxnOp::txn(Txn::new().and_then([TxnOp::put(
                            format!("{prefix}{i}"),
                            "v",
                            None,
                        )]))
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let (code, msg) = common::status(c.txn(nested(128, "a")).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request"
            ),
            "{kind}"
        );
        let r = c
            .get("a", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!((r.count(), r.header().unwrap().revision()), (0, 1));
        let r = c.txn(nested(127, "b")).await.unwrap();
        assert_eq!(
            (r.header().unwrap().revision(), r.op_responses().len()),
            (2, 127)
        );
        let r = c
            .get("b", Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .unwrap();
        assert_eq!(r.count(), 127);
        // ignore_value on a missing key inside a txn: etcd's `key not found`, nothing written.
        let t = Txn::new().and_then([
            TxnOp::put("n1", "1", None),
            TxnOp::put("m", "", Some(PutOptions::new().with_ignore_value())),
        ]);
        let (code, msg) = common::status(c.txn(t).await);
        assert_eq!(
            (code, msg.as_str(), c.get("n1", None).await.unwrap().count()),
            (Code::InvalidArgument, "etcdserver: key not found", 0)
        );
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(storage_api::BackendKind::Memory, dir.path(), |c| {
        c.with_max_request_bytes(4096)
    })
    .await;
    let mut c = common::connect(&server).await;
    let big = vec![b'v'; 5000];
    let (code, msg) = common::status(c.put("k", big.clone(), None).await);
    assert_eq!(
        (code, msg.as_str()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    let (code, msg) = common::status(
        c.txn(Txn::new().and_then([TxnOp::put("k", big, None)]))
            .await,
    );
    assert_eq!(
        (code, msg.as_str()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    assert_eq!(
        c.put("k", vec![b'v'; 4000], None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision(),
        2
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_on_every_engine() {
    for kind in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(kind, dir.path(), |c| c).await;
        let mut c = common::connect(&server).await;
        for v in ["1", "2", "3"] {
            c.put("x", v, None).await.unwrap(); // revisions 2, 3, 4
        }
        let r = c.compact(3, None).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), 4, "{kind}");
        let (code, msg) =
            common::status(c.get("x", Some(GetOptions::new().with_revision(2))).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        let r = c
            .get("x", Some(GetOptions::new().with_revision(3)))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"2");
        let (code, msg) = common::status(c.compact(3, None).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        let (code, msg) = common::status(c.compact(10, None).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision"
            )
        );
        c.compact(
            4,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
        let r = c.get("x", None).await.unwrap();
        assert_eq!((r.kvs()[0].value(), r.kvs()[0].version()), (&b"3"[..], 3));
        // A txn range below the compaction revision fails too.
        let t = Txn::new().and_then([TxnOp::get("x", Some(GetOptions::new().with_revision(3)))]);
        let (code, msg) = common::status(c.txn(t).await);
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        server.shutdown().await.unwrap();
    }
}
