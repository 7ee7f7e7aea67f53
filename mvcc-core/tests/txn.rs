//! Transaction scenarios (etcd `txn.go` semantics, `v3_grpc_test.go` TestV3Txn*), on every
//! compiled engine.

mod common;

use common::{kv, rows, Env};
use mvcc_core::{
    Compare, CompareOp, MvccError, RangeRequest, Revision, StoreConfig, TxnOp, TxnOpResponse,
    TxnResult,
};
use storage_api::{Backend, Tree};

use CompareOp::{Equal, Greater, Less, NotEqual};

fn range_resp(r: &TxnResult, i: usize) -> &mvcc_core::RangeResult {
    match &r.responses[i] {
        TxnOpResponse::Range(rr) => rr,
        other => panic!("response {i} is not a range: {other:?}"),
    }
}

fn compares_on_missing_key<B: Backend>() {
    // A missing key compares as the zero KeyValue, except VALUE which is always false.
    let env = Env::<B>::new();
    let s = env.open();
    let cases = [
        (Compare::create("k", Equal, 0), true),
        (Compare::modified("k", Equal, 0), true),
        (Compare::version("k", Equal, 0), true),
        (Compare::lease("k", Equal, 0), true),
        (Compare::version("k", Greater, 0), false),
        (Compare::version("k", Less, 1), true),
        (Compare::version("k", NotEqual, 0), false),
        (Compare::value("k", Equal, ""), false),
        (Compare::value("k", NotEqual, "x"), false),
        (Compare::value("k", Less, "x"), false),
    ];
    for (c, want) in cases {
        let r = s.txn(std::slice::from_ref(&c), &[], &[]).unwrap();
        assert_eq!(r.succeeded, want, "{c:?}");
        assert_eq!(r.revision, 1);
    }
    // An empty compare list succeeds.
    assert!(s.txn(&[], &[], &[]).unwrap().succeeded);
}

fn compares_on_existing_key<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    s.lease_grant(9, 100).unwrap();
    s.put(b"k", b"abc", 9).unwrap(); // 2
    s.put(b"k", b"abd", 9).unwrap(); // 3
    let cases = [
        (Compare::create("k", Equal, 2), true),
        (Compare::create("k", Greater, 1), true),
        (Compare::modified("k", Equal, 3), true),
        (Compare::modified("k", Less, 3), false),
        (Compare::version("k", Equal, 2), true),
        (Compare::version("k", Greater, 2), false),
        (Compare::lease("k", Equal, 9), true),
        (Compare::lease("k", NotEqual, 9), false),
        (Compare::value("k", Equal, "abd"), true),
        (Compare::value("k", Greater, "abc"), true),
        (Compare::value("k", Less, "abda"), true),
        (Compare::value("k", Greater, "b"), false),
        (Compare::value("k", NotEqual, "abd"), false),
    ];
    for (c, want) in cases {
        assert_eq!(
            s.txn(std::slice::from_ref(&c), &[], &[]).unwrap().succeeded,
            want,
            "{c:?}"
        );
    }
    // All compares are ANDed.
    let both = [
        Compare::version("k", Equal, 2),
        Compare::value("k", Equal, "x"),
    ];
    assert!(!s.txn(&both, &[], &[]).unwrap().succeeded);
}

fn compares_over_ranges<B: Backend>() {
    // Over a range, every existing key must satisfy the compare; missing keys are ignored.
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"a1", b"x", 0).unwrap(); // 2
    s.put(b"a2", b"x", 0).unwrap(); // 3
    s.put(b"a2", b"y", 0).unwrap(); // 4
    let cases = [
        (Compare::version("a", Greater, 0).with_range_end("b"), true),
        (Compare::version("a", Equal, 1).with_range_end("b"), false),
        (Compare::version("a1", Equal, 1).with_range_end("a2"), true),
        (Compare::value("a", Equal, "x").with_range_end("b"), false),
        (Compare::value("a", Less, "z").with_range_end("b"), true),
        (Compare::create("a", Less, 4).with_range_end("\0"), true),
        (
            Compare::modified("a", Greater, 2).with_range_end("\0"),
            false,
        ),
        // Empty range: zero KeyValue.
        (Compare::create("c", Equal, 0).with_range_end("d"), true),
        (Compare::value("c", Equal, "").with_range_end("d"), false),
    ];
    for (c, want) in cases {
        assert_eq!(
            s.txn(std::slice::from_ref(&c), &[], &[]).unwrap().succeeded,
            want,
            "{c:?}"
        );
    }
}

fn txn_revisions<B: Backend>() {
    // TestV3TxnRevision: read-only and no-op txns keep the revision; a changing txn is one
    // revision with consecutive sub revisions.
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"abc", b"1", 0).unwrap(); // 2
    let r = s.txn(&[], &[TxnOp::range("abc", "")], &[]).unwrap();
    assert_eq!(r.revision, 2);
    assert_eq!(range_resp(&r, 0).kvs, vec![kv("abc", "1", 2, 2, 1, 0)]);
    let r = s.txn(&[], &[TxnOp::delete("nope", "")], &[]).unwrap();
    assert_eq!(r.revision, 2);
    assert_eq!(s.current_revision(), 2);
    let r = s
        .txn(
            &[Compare::version("abc", Equal, 1)],
            &[
                TxnOp::put("x", "1", 0),
                TxnOp::put("y", "2", 0),
                TxnOp::delete("abc", ""),
                TxnOp::range("\0", "\0"),
            ],
            &[],
        )
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, 3);
    assert_eq!(r.responses[0], TxnOpResponse::Put(kv("x", "1", 3, 3, 1, 0)));
    assert_eq!(r.responses[1], TxnOpResponse::Put(kv("y", "2", 3, 3, 1, 0)));
    assert_eq!(
        r.responses[2],
        TxnOpResponse::DeleteRange(vec![kv("abc", "1", 2, 2, 1, 0)])
    );
    // The range sees the txn's own writes and reports the txn's revision.
    let rr = range_resp(&r, 3);
    assert_eq!(
        rr.kvs,
        vec![kv("x", "1", 3, 3, 1, 0), kv("y", "2", 3, 3, 1, 0)]
    );
    assert_eq!((rr.count, rr.revision), (2, 3));
    let keys: Vec<Vec<u8>> = rows(s.backend().as_ref(), Tree::Kv)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![
            Revision::new(2, 0).to_key(false),
            Revision::new(3, 0).to_key(false),
            Revision::new(3, 1).to_key(false),
            Revision::new(3, 2).to_key(true),
        ]
    );
    // A failed compare runs the failure branch.
    let r = s
        .txn(
            &[Compare::version("abc", Equal, 1)],
            &[TxnOp::put("z", "1", 0)],
            &[TxnOp::put("w", "1", 0)],
        )
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, 4);
    assert_eq!(
        r.responses,
        vec![TxnOpResponse::Put(kv("w", "1", 4, 4, 1, 0))]
    );
}

fn txn_reads_in_sequence<B: Backend>() {
    // TestKVTxnOperationInSequence, split where the API forbids put and delete of one key.
    let env = Env::<B>::new();
    let s = env.open();
    for i in 0..5i64 {
        let base = i * 2 + 1;
        let r = s
            .txn(
                &[],
                &[TxnOp::put("foo", "bar", 0), TxnOp::range("foo", "")],
                &[],
            )
            .unwrap();
        assert_eq!(r.revision, base + 1);
        let rr = range_resp(&r, 1);
        assert_eq!(rr.kvs, vec![kv("foo", "bar", base + 1, base + 1, 1, 0)]);
        assert_eq!(rr.revision, base + 1);
        let r = s
            .txn(
                &[],
                &[
                    TxnOp::range("foo", ""),
                    TxnOp::delete("foo", ""),
                    TxnOp::range("foo", ""),
                ],
                &[],
            )
            .unwrap();
        assert_eq!(r.revision, base + 2);
        assert_eq!(range_resp(&r, 0).revision, base + 1);
        assert_eq!(range_resp(&r, 0).kvs.len(), 1);
        let rr = range_resp(&r, 2);
        assert!(rr.kvs.is_empty());
        assert_eq!((rr.count, rr.revision), (0, base + 2));
    }
}

fn multiple_puts_same_key_nested<B: Backend>() {
    // Put in nested then and the same put in nested else is allowed; a put of the same key in
    // the nested and the outer txn is rejected.
    let env = Env::<B>::new();
    let s = env.open();
    let nested = TxnOp::txn(
        vec![Compare::version("k", Equal, 0)],
        vec![TxnOp::put("k", "then", 0)],
        vec![TxnOp::put("k", "else", 0)],
    );
    let r = s.txn(&[], std::slice::from_ref(&nested), &[]).unwrap();
    assert_eq!(r.revision, 2);
    let TxnOpResponse::Txn(inner) = &r.responses[0] else {
        panic!("expected nested response")
    };
    assert!(inner.succeeded);
    assert_eq!(inner.revision, 2);
    let r = s.txn(&[], std::slice::from_ref(&nested), &[]).unwrap();
    let TxnOpResponse::Txn(inner) = &r.responses[0] else {
        panic!("expected nested response")
    };
    assert!(!inner.succeeded);
    assert_eq!(
        s.range(b"k", b"", 0, 0, false).unwrap().kvs,
        vec![kv("k", "else", 2, 3, 2, 0)]
    );
    assert!(matches!(
        s.txn(&[], &[nested, TxnOp::put("k", "x", 0)], &[]),
        Err(MvccError::DuplicateKey)
    ));
}

fn nested_compares_see_pre_txn_state<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    let r = s
        .txn(
            &[],
            &[
                TxnOp::put("a", "1", 0),
                TxnOp::txn(
                    vec![Compare::version("a", Equal, 0)],
                    vec![TxnOp::put("b", "seen-missing", 0), TxnOp::range("a", "")],
                    vec![TxnOp::put("b", "seen-present", 0)],
                ),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(r.revision, 2);
    let TxnOpResponse::Txn(inner) = &r.responses[1] else {
        panic!("expected nested response")
    };
    assert!(inner.succeeded);
    // But nested ranges see earlier writes.
    assert_eq!(range_resp(inner, 1).kvs, vec![kv("a", "1", 2, 2, 1, 0)]);
    assert_eq!(
        s.range(b"b", b"", 0, 0, false).unwrap().kvs,
        vec![kv("b", "seen-missing", 2, 2, 1, 0)]
    );
}

fn validation_rejects_before_any_effect<B: Backend>() {
    let env = Env::<B>::with_config(StoreConfig::default().with_max_txn_ops(3));
    let s = env.open();
    s.put(b"k", b"v", 0).unwrap(); // 2
    let four: Vec<TxnOp> = (0..4)
        .map(|i| TxnOp::put(format!("p{i}"), "v", 0))
        .collect();
    assert!(matches!(
        s.txn(&[], &four, &[]),
        Err(MvccError::TooManyOps { max: 3 })
    ));
    assert!(matches!(
        s.txn(&[], &[], &four),
        Err(MvccError::TooManyOps { .. })
    ));
    let cmps: Vec<Compare> = (0..4).map(|_| Compare::version("k", Equal, 1)).collect();
    assert!(matches!(
        s.txn(&cmps, &[], &[]),
        Err(MvccError::TooManyOps { .. })
    ));
    // Nested counts are checked recursively, even on the branch not taken.
    let nested = TxnOp::txn(vec![], vec![], four.clone());
    assert!(matches!(
        s.txn(
            &[Compare::version("k", Equal, 99)],
            &[TxnOp::put("a", "1", 0)],
            &[nested]
        ),
        Err(MvccError::TooManyOps { .. })
    ));
    // Empty keys anywhere.
    assert!(matches!(
        s.txn(&[Compare::version("", Equal, 1)], &[], &[]),
        Err(MvccError::EmptyKey)
    ));
    assert!(matches!(
        s.txn(&[], &[TxnOp::put("a", "1", 0), TxnOp::put("", "1", 0)], &[]),
        Err(MvccError::EmptyKey)
    ));
    assert!(matches!(
        s.txn(&[], &[], &[TxnOp::range("", "\0")]),
        Err(MvccError::EmptyKey)
    ));
    // Duplicate keys and put inside a delete range.
    assert!(matches!(
        s.txn(
            &[],
            &[TxnOp::put("a", "1", 0), TxnOp::put("a", "2", 0)],
            &[]
        ),
        Err(MvccError::DuplicateKey)
    ));
    assert!(matches!(
        s.txn(
            &[],
            &[],
            &[TxnOp::delete("a", "c"), TxnOp::put("b", "2", 0)]
        ),
        Err(MvccError::DuplicateKey)
    ));
    // Unknown lease on the taken branch.
    assert!(matches!(
        s.txn(
            &[],
            &[TxnOp::put("a", "1", 0), TxnOp::put("b", "1", 42)],
            &[]
        ),
        Err(MvccError::LeaseNotFound(42))
    ));
    // Future and compacted range revisions on the taken branch.
    let at = |rev| {
        TxnOp::Range(RangeRequest {
            key: b"k".to_vec(),
            revision: rev,
            ..RangeRequest::default()
        })
    };
    assert!(matches!(
        s.txn(&[], &[TxnOp::put("a", "1", 0), at(3)], &[]),
        Err(MvccError::FutureRevision)
    ));
    assert_eq!(s.current_revision(), 2);
    assert_eq!(rows(s.backend().as_ref(), Tree::Kv).len(), 1);
    s.put(b"k", b"v2", 0).unwrap(); // 3
    s.put(b"k", b"v3", 0).unwrap(); // 4
    s.compact(3).unwrap();
    let before = rows(s.backend().as_ref(), Tree::Kv);
    assert!(matches!(
        s.txn(&[], &[TxnOp::put("a", "1", 0), at(2)], &[]),
        Err(MvccError::Compacted)
    ));
    // Invalid ops on the branch not taken are not checked (revision and lease).
    let r = s
        .txn(
            &[Compare::version("k", Equal, 3)],
            &[TxnOp::put("a", "1", 0)],
            &[at(2), TxnOp::put("b", "1", 42)],
        )
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, 5);
    let after: Vec<_> = rows(s.backend().as_ref(), Tree::Kv);
    assert_eq!(after.len(), before.len() + 1);
    // A range at an explicit older revision inside a write txn reads that revision.
    let r = s.txn(&[], &[TxnOp::put("z", "1", 0), at(3)], &[]).unwrap();
    assert_eq!(range_resp(&r, 1).kvs, vec![kv("k", "v2", 2, 3, 2, 0)]);
    assert_eq!(range_resp(&r, 1).revision, 6);
}

fn read_only_txn_with_limits<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    for k in ["a", "b", "c"] {
        s.put(k.as_bytes(), b"v", 0).unwrap();
    }
    let op = TxnOp::Range(RangeRequest {
        key: b"a".to_vec(),
        range_end: b"\0".to_vec(),
        revision: 3,
        limit: 1,
        count_only: false,
    });
    let r = s.txn(&[], &[op], &[]).unwrap();
    let rr = range_resp(&r, 0);
    assert_eq!(rr.kvs, vec![kv("a", "v", 2, 2, 1, 0)]);
    assert_eq!((rr.count, rr.more, rr.revision), (2, true, 4));
    assert_eq!(r.revision, 4);
}

engine_tests!(
    compares_on_missing_key,
    compares_on_existing_key,
    compares_over_ranges,
    txn_revisions,
    txn_reads_in_sequence,
    multiple_puts_same_key_nested,
    nested_compares_see_pre_txn_state,
    validation_rejects_before_any_effect,
    read_only_txn_with_limits,
);
