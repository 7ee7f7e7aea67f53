//! The etcd data plane of the library ([`mvcc_core::request`]), on every compiled engine.
//!
//! Every table here is etcd's own answer: the same requests were sent to etcd 3.4.23
//! (`/usr/bin/etcd`, single member on 127.0.0.1, fresh data dir, JSON gateway `/v3/kv/*`) and
//! the responses recorded as the expected values — revisions, versions, counts, `more`, key
//! order and `prev_kv`s. The probe scripts and their recorded answers are in
//! `tests/etcd_probe/` (`sh run.sh`). Where etcd's answer differs (a nested transaction's
//! header, which etcd 3.4 leaves empty; a case where etcd panics) the test says so.
//!
//! The nested operation budget, as etcd 3.4.23 answered (`max-txn-ops` = 128):
//! * 128 nested txns of one put each: `etcdserver: too many operations in txn request` (gRPC
//!   InvalidArgument), revision stays 1; 127 of them: accepted at revision 2, 127 keys.
//! * one nested txn of 127 puts: accepted; of 128: rejected. Two top-level ops (a nested txn
//!   and a range): the nested txn may hold 126 puts, not 127. 64 top-level ops: 64 / 65.
//! * three levels (txn → txn → txn of n puts): 126 accepted, 127 rejected.
//! * 65 nested txns of 2 puts each (130 puts in total): accepted — siblings do not share.
//! * 100 compares + one nested txn: 28 puts accepted, 29 rejected (compares count).
//! * 100 ranges in `success` + a nested txn of 29 puts in `failure`: rejected (the count is
//!   `max(compare, success, failure)` and the branch not taken is checked too).

mod common;

use common::{kv, Env};
use mvcc_core::{
    Compare, CompareOp, DeleteRange, DeleteRangeResponse, KeyValue, MvccError, MvccStore, Put,
    PutResponse, Range, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, StoreConfig,
    Txn, TxnResponse,
};
use storage_api::Backend;

use SortOrder::{Ascend, Descend};
use SortTarget::{Create, Key, Mod, Value, Version};

/// The etcd probe's key space: a{1,c2,m5,v2} b{5,c3,m8,v3} c{7,c10,m10,v1} d{0,c6,m6,v1}
/// e{4,c11,m11,v1} at revision 11 (c deleted at 9 and re-created at 10).
fn populate<B: Backend>(s: &MvccStore<B>) {
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("a", "1"), ("d", "0")] {
        s.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
    }
    s.put(b"b", b"9", 0).unwrap();
    s.put(b"b", b"5", 0).unwrap();
    s.delete_range(b"c", b"").unwrap();
    s.put(b"c", b"7", 0).unwrap();
    s.put(b"e", b"4", 0).unwrap();
    assert_eq!(s.current_revision(), 11);
}

/// Tells whether an error is the expected one.
type IsError = fn(&MvccError) -> bool;

fn all() -> Range {
    Range::new("a", "z")
}

fn keys(r: &RangeResponse) -> String {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn full_state() -> Vec<KeyValue> {
    vec![
        kv("a", "1", 2, 5, 2, 0),
        kv("b", "5", 3, 8, 3, 0),
        kv("c", "7", 10, 10, 1, 0),
        kv("d", "0", 6, 6, 1, 0),
        kv("e", "4", 11, 11, 1, 0),
    ]
}

fn range_sort_table<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    let r = s.kv_range(&all()).unwrap();
    assert_eq!(
        (r.kvs.clone(), r.count, r.more, r.revision),
        (full_state(), 5, false, 11)
    );
    // (target, order, limit) -> (keys, more); etcd 3.4.23. With order None and a limit, etcd
    // sorts only the `limit + 1` keys it read (VERSION/NONE/2 = "ca", VALUE/NONE/2 = "ab").
    let table = [
        (Key, SortOrder::None, 0, "abcde", false),
        (Key, SortOrder::None, 2, "ab", true),
        (Key, Ascend, 0, "abcde", false),
        (Key, Ascend, 2, "ab", true),
        (Key, Descend, 0, "edcba", false),
        (Key, Descend, 2, "ed", true),
        (Version, SortOrder::None, 0, "cdeab", false),
        (Version, SortOrder::None, 2, "ca", true),
        (Version, Ascend, 0, "cdeab", false),
        (Version, Ascend, 2, "cd", true),
        (Version, Descend, 0, "bacde", false),
        (Version, Descend, 2, "ba", true),
        (Create, SortOrder::None, 0, "abdce", false),
        (Create, SortOrder::None, 2, "ab", true),
        (Create, Ascend, 0, "abdce", false),
        (Create, Ascend, 2, "ab", true),
        (Create, Descend, 0, "ecdba", false),
        (Create, Descend, 2, "ec", true),
        (Mod, SortOrder::None, 0, "adbce", false),
        (Mod, SortOrder::None, 2, "ab", true),
        (Mod, Ascend, 0, "adbce", false),
        (Mod, Ascend, 2, "ad", true),
        (Mod, Descend, 0, "ecbda", false),
        (Mod, Descend, 2, "ec", true),
        (Value, SortOrder::None, 0, "daebc", false),
        (Value, SortOrder::None, 2, "ab", true),
        (Value, Ascend, 0, "daebc", false),
        (Value, Ascend, 2, "da", true),
        (Value, Descend, 0, "cbead", false),
        (Value, Descend, 2, "cb", true),
    ];
    for (target, order, limit, want, more) in table {
        let req = Range {
            sort_target: target,
            sort_order: order,
            limit,
            ..all()
        };
        let r = s.kv_range(&req).unwrap();
        assert_eq!(
            (keys(&r).as_str(), r.more, r.count, r.revision),
            (want, more, 5, 11),
            "{target:?} {order:?} limit {limit}"
        );
        // Whole key-values, not just the keys.
        for kv in &r.kvs {
            assert!(full_state().contains(kv), "{kv:?}");
        }
    }
}

fn range_filter_table<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    let table: Vec<(Range, &str, bool, i64)> = vec![
        (
            Range {
                min_mod_revision: 6,
                ..all()
            },
            "bcde",
            false,
            5,
        ),
        (
            Range {
                max_mod_revision: 8,
                ..all()
            },
            "abd",
            false,
            5,
        ),
        (
            Range {
                min_create_revision: 3,
                ..all()
            },
            "bcde",
            false,
            5,
        ),
        (
            Range {
                max_create_revision: 6,
                ..all()
            },
            "abd",
            false,
            5,
        ),
        (
            Range {
                min_mod_revision: 6,
                max_mod_revision: 10,
                ..all()
            },
            "bcd",
            false,
            5,
        ),
        (
            Range {
                min_create_revision: 3,
                max_create_revision: 10,
                ..all()
            },
            "bcd",
            false,
            5,
        ),
        // Limit applies after the filters; `more` counts the filtered key-values; `count`
        // stays the whole range.
        (
            Range {
                min_mod_revision: 6,
                limit: 1,
                ..all()
            },
            "b",
            true,
            5,
        ),
        (
            Range {
                min_mod_revision: 6,
                limit: 3,
                ..all()
            },
            "bcd",
            true,
            5,
        ),
        (
            Range {
                min_mod_revision: 6,
                limit: 4,
                ..all()
            },
            "bcde",
            false,
            5,
        ),
        (
            Range {
                max_create_revision: 6,
                limit: 2,
                ..all()
            },
            "ab",
            true,
            5,
        ),
        (
            Range {
                min_mod_revision: 11,
                limit: 1,
                ..all()
            },
            "e",
            false,
            5,
        ),
        (
            Range {
                min_mod_revision: 99,
                ..all()
            },
            "",
            false,
            5,
        ),
        (
            Range {
                sort_order: Descend,
                limit: 1,
                min_mod_revision: 6,
                max_mod_revision: 10,
                ..all()
            },
            "d",
            true,
            5,
        ),
        (Range { limit: 5, ..all() }, "abcde", false, 5),
        (Range { limit: 4, ..all() }, "abcd", true, 5),
        // At an older revision: count is the range at that revision, the header the current.
        (
            Range {
                revision: 5,
                sort_target: Mod,
                sort_order: Descend,
                limit: 1,
                ..all()
            },
            "a",
            true,
            3,
        ),
        (
            Range {
                revision: 8,
                min_create_revision: 3,
                limit: 1,
                ..all()
            },
            "b",
            true,
            4,
        ),
    ];
    for (req, want, more, count) in table {
        let r = s.kv_range(&req).unwrap();
        assert_eq!(
            (keys(&r).as_str(), r.more, r.count, r.revision),
            (want, more, count, 11),
            "{req:?}"
        );
    }
    let r = s
        .kv_range(&Range {
            revision: 5,
            ..all()
        })
        .unwrap();
    assert_eq!(
        (r.kvs, r.count, r.revision),
        (
            vec![
                kv("a", "1", 2, 5, 2, 0),
                kv("b", "1", 3, 3, 1, 0),
                kv("c", "2", 4, 4, 1, 0)
            ],
            3,
            11
        )
    );
    let r = s
        .kv_range(&Range {
            revision: 8,
            min_create_revision: 3,
            limit: 1,
            ..all()
        })
        .unwrap();
    assert_eq!(r.kvs, vec![kv("b", "5", 3, 8, 3, 0)]);
}

fn keys_only_and_count_only<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    let stripped = |kvs: Vec<KeyValue>| -> Vec<KeyValue> {
        kvs.into_iter()
            .map(|mut kv| {
                kv.value.clear();
                kv
            })
            .collect()
    };
    let r = s
        .kv_range(&Range {
            keys_only: true,
            ..all()
        })
        .unwrap();
    assert_eq!((r.kvs, r.count, r.more), (stripped(full_state()), 5, false));
    let r = s
        .kv_range(&Range {
            keys_only: true,
            limit: 2,
            ..all()
        })
        .unwrap();
    assert_eq!(
        (r.kvs, r.count, r.more),
        (stripped(full_state()[..2].to_vec()), 5, true)
    );
    // Sorted by value, then stripped.
    let r = s
        .kv_range(&Range {
            keys_only: true,
            sort_target: Value,
            sort_order: Descend,
            limit: 2,
            ..all()
        })
        .unwrap();
    assert_eq!(
        (r.kvs, r.more),
        (
            vec![kv("c", "", 10, 10, 1, 0), kv("b", "", 3, 8, 3, 0)],
            true
        )
    );
    // count_only: no key-values, never `more`, count unaffected by limit and filters.
    for req in [
        Range {
            count_only: true,
            ..all()
        },
        Range {
            count_only: true,
            limit: 2,
            ..all()
        },
        Range {
            count_only: true,
            min_mod_revision: 8,
            ..all()
        },
        Range {
            count_only: true,
            sort_order: Descend,
            keys_only: true,
            ..all()
        },
    ] {
        let r = s.kv_range(&req).unwrap();
        assert_eq!(
            (r.kvs.len(), r.more, r.count, r.revision),
            (0, false, 5, 11),
            "{req:?}"
        );
    }
    // A single key, and serializable (no effect on one store).
    let r = s
        .kv_range(&Range {
            serializable: true,
            keys_only: true,
            ..Range::new("b", "")
        })
        .unwrap();
    assert_eq!((r.kvs, r.count), (vec![kv("b", "", 3, 8, 3, 0)], 1));
}

fn range_errors<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    assert!(matches!(
        s.kv_range(&Range::new("", "z")),
        Err(MvccError::EmptyKey)
    ));
    assert!(matches!(
        s.kv_range(&Range {
            revision: 12,
            ..all()
        }),
        Err(MvccError::FutureRevision)
    ));
    s.compact(5).unwrap();
    assert!(matches!(
        s.kv_range(&Range {
            revision: 4,
            sort_order: Descend,
            ..all()
        }),
        Err(MvccError::Compacted)
    ));
    assert_eq!(
        keys(
            &s.kv_range(&Range {
                revision: 5,
                sort_order: Descend,
                ..all()
            })
            .unwrap()
        ),
        "cba"
    );
}

fn put(key: &str, value: &str) -> Put {
    Put::new(key, value, 0)
}

/// The put sequence of the etcd probe, after `populate` and a grant of lease 7.
fn put_prev_kv_and_ignore_flags<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    s.lease_grant(7, 1000).unwrap();
    let errors: Vec<(Put, IsError)> = vec![
        (
            Put {
                ignore_value: true,
                ..put("p", "")
            },
            |e| matches!(e, MvccError::KeyNotFound),
        ),
        (
            Put {
                ignore_lease: true,
                ..put("p", "x")
            },
            |e| matches!(e, MvccError::KeyNotFound),
        ),
        (
            Put {
                ignore_value: true,
                ..put("p", "x")
            },
            |e| matches!(e, MvccError::ValueProvided),
        ),
        (
            Put {
                ignore_lease: true,
                lease: 7,
                ..put("p", "x")
            },
            |e| matches!(e, MvccError::LeaseProvided),
        ),
        // The request checks come first...
        (
            Put {
                ignore_value: true,
                lease: 99,
                ..put("p", "x")
            },
            |e| matches!(e, MvccError::ValueProvided),
        ),
        (Put::new("p", "x", 99), |e| {
            matches!(e, MvccError::LeaseNotFound(99))
        }),
        // ... then the lease, then the key (outside a transaction).
        (
            Put {
                ignore_value: true,
                lease: 99,
                ..put("p", "")
            },
            |e| matches!(e, MvccError::LeaseNotFound(99)),
        ),
        (
            Put {
                ignore_value: true,
                ..put("", "")
            },
            |e| matches!(e, MvccError::EmptyKey),
        ),
    ];
    for (req, is) in errors {
        let e = s.kv_put(&req).unwrap_err();
        assert!(is(&e), "{req:?}: {e:?}");
        assert_eq!(s.current_revision(), 11, "{req:?} wrote");
    }
    let with = |p: Put| s.kv_put(&p).unwrap();
    let r = with(Put {
        prev_kv: true,
        ..Put::new("p", "1", 7)
    });
    assert_eq!(
        r,
        PutResponse {
            revision: 12,
            prev_kv: None,
            kv: kv("p", "1", 12, 12, 1, 7)
        }
    );
    let r = with(Put {
        prev_kv: true,
        ..Put::new("p", "2", 7)
    });
    assert_eq!(
        (r.revision, r.prev_kv),
        (13, Some(kv("p", "1", 12, 12, 1, 7)))
    );
    // ignore_value keeps the value; the lease is the given one (0).
    let r = with(Put {
        ignore_value: true,
        prev_kv: true,
        ..put("p", "")
    });
    assert_eq!(
        (r.revision, r.prev_kv, r.kv),
        (
            14,
            Some(kv("p", "2", 12, 13, 2, 7)),
            kv("p", "2", 12, 14, 3, 0)
        )
    );
    let r = with(Put {
        ignore_lease: true,
        prev_kv: true,
        ..put("p", "3")
    });
    assert_eq!(
        (r.revision, r.prev_kv),
        (15, Some(kv("p", "2", 12, 14, 3, 0)))
    );
    let r = with(Put {
        ignore_lease: true,
        ignore_value: true,
        prev_kv: true,
        ..put("p", "")
    });
    assert_eq!(
        (r.revision, r.prev_kv),
        (16, Some(kv("p", "3", 12, 15, 4, 0)))
    );
    assert_eq!(
        s.kv_range(&Range::new("p", "")).unwrap().kvs,
        vec![kv("p", "3", 12, 16, 5, 0)]
    );
    // Without prev_kv nothing comes back; an absent key has no prev_kv.
    let r = with(Put {
        prev_kv: true,
        ..put("q", "1")
    });
    assert_eq!((r.revision, r.prev_kv), (17, None));
    // ignore_lease keeps an attached lease (and the key stays attached to it).
    s.kv_put(&Put::new("l", "1", 7)).unwrap(); // 18
    let r = with(Put {
        ignore_lease: true,
        ..put("l", "2")
    });
    assert_eq!(
        (r.revision, r.prev_kv, r.kv),
        (19, None, kv("l", "2", 18, 19, 2, 7))
    );
    assert_eq!(s.lease_time_to_live(7).unwrap().keys, vec![b"l".to_vec()]);
}

fn delete_prev_kv<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    s.put(b"p", b"3", 0).unwrap(); // 12
    s.put(b"q", b"1", 0).unwrap(); // 13
    let del = |d: DeleteRange| s.kv_delete_range(&d).unwrap();
    assert_eq!(
        del(DeleteRange {
            prev_kv: true,
            ..DeleteRange::new("p", "r")
        }),
        DeleteRangeResponse {
            revision: 14,
            deleted: 2,
            prev_kvs: vec![kv("p", "3", 12, 12, 1, 0), kv("q", "1", 13, 13, 1, 0)]
        }
    );
    // Nothing matched: the current revision, nothing written.
    assert_eq!(
        del(DeleteRange {
            prev_kv: true,
            ..DeleteRange::new("p", "r")
        }),
        DeleteRangeResponse {
            revision: 14,
            deleted: 0,
            prev_kvs: vec![]
        }
    );
    // Without prev_kv: the count only.
    assert_eq!(
        del(DeleteRange::new("a", "c")),
        DeleteRangeResponse {
            revision: 15,
            deleted: 2,
            prev_kvs: vec![]
        }
    );
    // From-key.
    assert_eq!(del(DeleteRange::new("d", "\0")).deleted, 2);
    assert!(matches!(
        s.kv_delete_range(&DeleteRange::new("", "")),
        Err(MvccError::EmptyKey)
    ));
}

fn range_op(r: Range) -> RequestOp {
    RequestOp::Range(r)
}

fn put_op(p: Put) -> RequestOp {
    RequestOp::Put(p)
}

fn txn(success: Vec<RequestOp>) -> Txn {
    Txn {
        success,
        ..Txn::default()
    }
}

/// The transaction of the etcd probe: ranges see earlier writes, prev_kv on puts and deletes,
/// a nested transaction.
fn txn_ops_with_prev_kv<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    s.kv_txn(&txn(vec![put_op(put("t1", "a")), put_op(put("t2", "b"))]))
        .unwrap(); // 12
    let req = txn(vec![
        range_op(Range::new("t1", "")),
        put_op(Put {
            prev_kv: true,
            ..put("t1", "c")
        }),
        RequestOp::DeleteRange(DeleteRange {
            prev_kv: true,
            ..DeleteRange::new("t2", "")
        }),
        RequestOp::Txn(txn(vec![
            put_op(Put {
                prev_kv: true,
                ..put("t3", "x")
            }),
            range_op(Range {
                keys_only: true,
                ..Range::new("t1", "")
            }),
            range_op(Range {
                count_only: true,
                ..Range::new("t", "u")
            }),
        ])),
        RequestOp::DeleteRange(DeleteRange {
            prev_kv: true,
            ..DeleteRange::new("zz", "")
        }),
        range_op(Range::new("t1", "")),
    ]);
    let r = s.kv_txn(&req).unwrap();
    let range = |kvs, count, revision| {
        ResponseOp::Range(RangeResponse {
            kvs,
            more: false,
            count,
            revision,
        })
    };
    let want = TxnResponse {
        revision: 13,
        succeeded: true,
        responses: vec![
            range(vec![kv("t1", "a", 12, 12, 1, 0)], 1, 12),
            ResponseOp::Put(PutResponse {
                revision: 13,
                prev_kv: Some(kv("t1", "a", 12, 12, 1, 0)),
                kv: kv("t1", "c", 12, 13, 2, 0),
            }),
            ResponseOp::DeleteRange(DeleteRangeResponse {
                revision: 13,
                deleted: 1,
                prev_kvs: vec![kv("t2", "b", 12, 12, 1, 0)],
            }),
            // etcd 3.4 leaves a nested txn's header empty; the library reports the revision.
            ResponseOp::Txn(TxnResponse {
                revision: 13,
                succeeded: true,
                responses: vec![
                    ResponseOp::Put(PutResponse {
                        revision: 13,
                        prev_kv: None,
                        kv: kv("t3", "x", 13, 13, 1, 0),
                    }),
                    range(vec![kv("t1", "", 12, 13, 2, 0)], 1, 13),
                    range(vec![], 2, 13),
                ],
            }),
            ResponseOp::DeleteRange(DeleteRangeResponse {
                revision: 13,
                deleted: 0,
                prev_kvs: vec![],
            }),
            range(vec![kv("t1", "c", 12, 13, 2, 0)], 1, 13),
        ],
    };
    assert_eq!(r, want);
    // A read-only transaction with sort, keys_only, filters.
    let r = s
        .kv_txn(&txn(vec![
            range_op(Range {
                sort_order: Descend,
                ..Range::new("t1", "")
            }),
            range_op(Range {
                sort_target: Mod,
                sort_order: Descend,
                limit: 2,
                keys_only: true,
                ..all()
            }),
            range_op(Range {
                min_create_revision: 3,
                limit: 1,
                ..all()
            }),
        ]))
        .unwrap();
    assert_eq!(r.revision, 13);
    let ranges: Vec<(Vec<KeyValue>, bool, i64)> = r
        .responses
        .into_iter()
        .map(|r| match r {
            ResponseOp::Range(r) => (r.kvs, r.more, r.count),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ranges,
        vec![
            (vec![kv("t1", "c", 12, 13, 2, 0)], false, 1),
            (
                vec![kv("t1", "", 12, 13, 2, 0), kv("t3", "", 13, 13, 1, 0)],
                true,
                7
            ),
            (vec![kv("b", "5", 3, 8, 3, 0)], true, 7),
        ]
    );
    // ignore_value inside a transaction reads the key as the transaction sees it.
    let r = s
        .kv_txn(&txn(vec![put_op(Put {
            ignore_value: true,
            prev_kv: true,
            ..put("t1", "")
        })]))
        .unwrap();
    assert_eq!(
        r.responses,
        vec![ResponseOp::Put(PutResponse {
            revision: 14,
            prev_kv: Some(kv("t1", "c", 12, 13, 2, 0)),
            kv: kv("t1", "c", 12, 14, 3, 0),
        })]
    );
}

fn txn_ignore_flag_errors<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    let before = s.kv_range(&Range::new("\0", "\0")).unwrap();
    let missing = || {
        put_op(Put {
            ignore_value: true,
            ..put("m", "")
        })
    };
    let cases: Vec<(Txn, IsError)> = vec![
        // On the branch taken: key not found, nothing written (the first put neither).
        (txn(vec![put_op(put("n1", "1")), missing()]), |e| {
            matches!(e, MvccError::KeyNotFound)
        }),
        // In a nested transaction.
        (
            txn(vec![
                put_op(put("n1", "1")),
                RequestOp::Txn(txn(vec![missing()])),
            ]),
            |e| matches!(e, MvccError::KeyNotFound),
        ),
        (
            txn(vec![put_op(Put {
                ignore_value: true,
                ..put("t1", "v")
            })]),
            |e| matches!(e, MvccError::ValueProvided),
        ),
        (
            txn(vec![put_op(Put {
                ignore_lease: true,
                lease: 7,
                ..put("t1", "v")
            })]),
            |e| matches!(e, MvccError::LeaseProvided),
        ),
        // Request checks hold on the branch not taken too.
        (
            Txn {
                compare: vec![Compare::version("a", CompareOp::Equal, 99)],
                success: vec![put_op(Put {
                    ignore_lease: true,
                    lease: 7,
                    ..put("t1", "")
                })],
                failure: vec![],
            },
            |e| matches!(e, MvccError::LeaseProvided),
        ),
        // In a transaction the key is checked before the lease (etcd `checkRequestPut`).
        (
            txn(vec![put_op(Put {
                ignore_value: true,
                lease: 99,
                ..put("m", "")
            })]),
            |e| matches!(e, MvccError::KeyNotFound),
        ),
        // The key exists before the transaction but an earlier from-key delete of the same
        // transaction removed it (the raw interval [t, "\0") does not trip checkIntervals):
        // etcd 3.4.23 panics ("unexpected error during txn: etcdserver: key not found"); the
        // library rejects the transaction and writes nothing.
        (
            txn(vec![
                RequestOp::DeleteRange(DeleteRange::new("a", "\0")),
                put_op(Put {
                    ignore_value: true,
                    ..put("b", "")
                }),
            ]),
            |e| matches!(e, MvccError::KeyNotFound),
        ),
    ];
    for (req, is) in cases {
        let e = s.kv_txn(&req).unwrap_err();
        assert!(is(&e), "{req:?}: {e:?}");
        assert_eq!(
            s.kv_range(&Range::new("\0", "\0")).unwrap(),
            before,
            "{req:?} wrote"
        );
    }
    // On the branch not taken the key is not checked (etcd: revision 21 in the probe).
    let r = s
        .kv_txn(&Txn {
            compare: vec![Compare::version("zz", CompareOp::Equal, 1)],
            success: vec![missing()],
            failure: vec![put_op(put("n2", "1"))],
        })
        .unwrap();
    assert_eq!((r.succeeded, r.revision), (false, 12));
}

/// `n` nested transactions of one put each.
fn nested_puts(n: usize, prefix: &str) -> Txn {
    txn((0..n)
        .map(|i| RequestOp::Txn(txn(vec![put_op(put(&format!("{prefix}{i}"), "v"))])))
        .collect())
}

/// One nested transaction of `inner` puts, after `outer - 1` ranges.
fn one_nested(outer: usize, inner: usize, prefix: &str) -> Txn {
    let mut ops = vec![RequestOp::Txn(txn((0..inner)
        .map(|i| put_op(put(&format!("{prefix}{i}"), "v")))
        .collect()))];
    ops.extend((1..outer).map(|_| range_op(Range::new("x", ""))));
    txn(ops)
}

fn nested_op_budget<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    let too_many =
        |r: Result<TxnResponse, MvccError>| matches!(r, Err(MvccError::TooManyOps { max: 128 }));
    let count = |prefix: &str| {
        s.kv_range(&Range {
            count_only: true,
            ..Range::new(prefix, "\0")
        })
        .unwrap()
        .count
    };
    // The issue: 128 nested one-put txns are rejected and nothing is written.
    assert!(too_many(s.kv_txn(&nested_puts(128, "a"))));
    assert_eq!((s.current_revision(), count("a")), (1, 0));
    let r = s.kv_txn(&nested_puts(127, "b")).unwrap();
    assert_eq!((r.revision, r.responses.len()), (2, 127));
    assert_eq!((s.current_revision(), count("b")), (2, 127));
    // The compact form has the same budget.
    let legacy: Vec<mvcc_core::TxnOp> = (0..128)
        .map(|i| {
            mvcc_core::TxnOp::txn(
                vec![],
                vec![mvcc_core::TxnOp::put(format!("c{i}"), "v", 0)],
                vec![],
            )
        })
        .collect();
    assert!(matches!(
        s.txn(&[], &legacy, &[]),
        Err(MvccError::TooManyOps { max: 128 })
    ));
    assert!(s.txn(&[], &legacy[..127], &[]).is_ok()); // 3
                                                      // One nested txn after `outer - 1` ranges: 128 - outer puts fit.
    for (outer, inner, ok) in [
        (64, 64, true),
        (64, 65, false),
        (1, 127, true),
        (1, 128, false),
        (2, 126, true),
        (2, 127, false),
    ] {
        let r = s.kv_txn(&one_nested(outer, inner, &format!("d{outer}_{inner}_")));
        assert_eq!(r.is_ok(), ok, "outer {outer} inner {inner}: {r:?}");
        if !ok {
            assert!(too_many(r));
        }
    }
    // Three levels: 128 - 1 - 1.
    let three = |n: usize, p: &str| {
        txn(vec![RequestOp::Txn(txn(vec![RequestOp::Txn(txn((0..n)
            .map(|i| put_op(put(&format!("{p}{i}"), "v")))
            .collect()))]))])
    };
    assert!(s.kv_txn(&three(126, "L")).is_ok());
    assert!(too_many(s.kv_txn(&three(127, "M"))));
    // Siblings do not share: 65 nested txns of 2 puts (130 puts) are accepted.
    let pairs = txn((0..65)
        .map(|j| {
            RequestOp::Txn(txn((0..2)
                .map(|i| put_op(put(&format!("O{j}_{i}"), "v")))
                .collect()))
        })
        .collect());
    let rev = s.current_revision();
    assert_eq!(s.kv_txn(&pairs).unwrap().revision, rev + 1);
    assert_eq!(count("O") - count("P"), 130);
    // Compares count: 100 compares leave 28.
    let with_compares = |n: usize| Txn {
        compare: vec![Compare::version("x", CompareOp::Equal, 0); 100],
        ..one_nested(1, n, "c")
    };
    assert!(s.kv_txn(&with_compares(28)).is_ok());
    assert!(too_many(s.kv_txn(&with_compares(29))));
    // The failure branch is checked against max(compare, success, failure) too.
    let failure_side = Txn {
        compare: vec![Compare::version("x", CompareOp::Equal, 5)],
        success: vec![range_op(Range::new("x", "")); 100],
        failure: one_nested(1, 29, "f").success,
    };
    assert!(too_many(s.kv_txn(&failure_side)));
    // A smaller configured budget scales the same way.
    let env = Env::<B>::with_config(StoreConfig::default().with_max_txn_ops(4));
    let s = env.open();
    assert!(s.kv_txn(&nested_puts(3, "a")).is_ok());
    assert!(matches!(
        s.kv_txn(&nested_puts(4, "b")),
        Err(MvccError::TooManyOps { max: 4 })
    ));
}

fn watch_events_limited<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    // Revision 12 has three events.
    s.kv_txn(&txn(vec![
        put_op(put("x", "1")),
        put_op(put("y", "1")),
        RequestOp::DeleteRange(DeleteRange::new("a", "")),
    ]))
    .unwrap();
    s.put(b"z", b"1", 0).unwrap(); // 13
    let all = s.watch_events(1).unwrap();
    assert_eq!(all.len(), 14);
    assert_eq!(s.watch_events_limited(1, None).unwrap(), all);
    assert_eq!(s.watch_events_limited(0, Some(100)).unwrap(), all);
    let revs =
        |evs: &[mvcc_core::Event]| -> Vec<i64> { evs.iter().map(|e| e.kv.mod_revision).collect() };
    assert_eq!(revs(&s.watch_events_limited(5, Some(2)).unwrap()), [5, 6]);
    // A revision is never split: the limit is reached inside revision 12.
    assert_eq!(
        revs(&s.watch_events_limited(11, Some(2)).unwrap()),
        [11, 12, 12, 12]
    );
    assert_eq!(
        revs(&s.watch_events_limited(12, Some(1)).unwrap()),
        [12, 12, 12]
    );
    assert_eq!(revs(&s.watch_events_limited(13, Some(1)).unwrap()), [13]);
    assert_eq!(
        revs(&s.watch_events_limited(12, Some(0)).unwrap()),
        [12, 12, 12]
    );
    assert!(s.watch_events_limited(14, Some(1)).unwrap().is_empty());
    // Polling in pages yields the whole history once.
    let mut paged = Vec::new();
    let mut from = 1;
    loop {
        let page = s.watch_events_limited(from, Some(3)).unwrap();
        let Some(last) = page.last() else { break };
        from = last.kv.mod_revision + 1;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    s.compact(6).unwrap();
    assert!(matches!(
        s.watch_events_limited(5, Some(1)),
        Err(MvccError::Compacted)
    ));
    assert_eq!(revs(&s.watch_events_limited(6, Some(1)).unwrap()), [6]);
}

/// The conveniences answer what the requests answer.
fn conveniences_are_requests<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    populate(&s);
    let r = s.range(b"a", b"z", 0, 2, false).unwrap();
    assert_eq!(r, s.kv_range(&Range { limit: 2, ..all() }).unwrap());
    assert_eq!((r.more, r.count), (true, 5));
    // `range` reads without building a request: same answers and errors as `kv_range`.
    let mut cases = 0;
    for (key, end) in [
        ("a", ""),
        ("c", ""),
        ("zz", ""),
        ("", ""),
        ("a", "z"),
        ("b", "d"),
        ("d", "b"),
        ("c", "\0"),
        ("a", "a"),
    ] {
        for revision in [0, 4, 9, 11, 12] {
            for limit in [0, 1, 2, 10] {
                for count_only in [false, true] {
                    let req = Range {
                        key: key.as_bytes().to_vec(),
                        range_end: end.as_bytes().to_vec(),
                        revision,
                        limit,
                        count_only,
                        ..Range::default()
                    };
                    let fast = s.range(&req.key, &req.range_end, revision, limit, count_only);
                    let slow = s.kv_range(&req);
                    assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{req:?}");
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 9 * 5 * 4 * 2);
    let r = s.range(b"b", b"d", 9, 1, false).unwrap();
    assert_eq!(
        (r.kvs, r.count, r.more, r.revision),
        (vec![kv("b", "5", 3, 8, 3, 0)], 1, false, 11)
    );
    let r = s.range(b"a", b"\0", 0, 3, true).unwrap();
    assert_eq!((r.kvs, r.count, r.more, r.revision), (vec![], 5, false, 11));
    assert!(matches!(
        s.range(b"a", b"", 12, 0, false),
        Err(MvccError::FutureRevision)
    ));
    assert!(matches!(
        s.range(b"", b"z", 0, 0, false),
        Err(MvccError::EmptyKey)
    ));
    let (rev, kv1) = s.put(b"k", b"1", 0).unwrap();
    let p = s.kv_put(&put("k", "2")).unwrap();
    assert_eq!((rev, kv1.version, p.revision, p.kv.version), (12, 1, 13, 2));
    let (rev, deleted) = s.delete_range(b"k", b"").unwrap();
    assert_eq!((rev, deleted), (14, vec![kv("k", "2", 12, 13, 2, 0)]));
}

/// `kv_put_group`: the same revisions, responses, errors, watch events and leases as the same
/// puts one by one with `kv_put`; the apply record is written with them (rusd-raft's
/// `batch_replay` test checks that the group is one backend write).
fn put_group_is_sequential_puts_in_one_write<B: Backend>() {
    let (env_group, env_seq) = (Env::<B>::new(), Env::<B>::new());
    let (g, q) = (env_group.open(), env_seq.open());
    for s in [&g, &q] {
        s.lease_grant(7, 600).unwrap();
        s.put(b"a", b"0", 0).unwrap();
    }
    let watcher = g.watch(b"", b"\0", 0).unwrap();
    let puts = [
        Put::new("a", "1", 0),
        Put::new("b", "2", 7),
        Put::new("", "x", 0),
        Put::new("a", "3", 0),
        Put::new("c", "4", 99),
        Put::new("b", "5", 0),
    ];
    g.set_apply_meta(b"record".to_vec());
    let refs: Vec<&Put> = puts.iter().collect();
    let grouped: Vec<String> = g
        .kv_put_group(&refs)
        .unwrap()
        .into_iter()
        .map(|r| format!("{r:?}"))
        .collect();
    let sequential: Vec<String> = puts.iter().map(|p| format!("{:?}", q.kv_put(p))).collect();
    assert_eq!(grouped, sequential);
    let expected = |key: &str, value: &str, create: i64, rev: i64, version: i64, lease: i64| {
        format!(
            "{:?}",
            Ok::<_, MvccError>(PutResponse {
                revision: rev,
                prev_kv: None,
                kv: kv(key, value, create, rev, version, lease),
            })
        )
    };
    assert_eq!(
        grouped,
        vec![
            expected("a", "1", 2, 3, 2, 0),
            expected("b", "2", 4, 4, 1, 7),
            format!("{:?}", Err::<PutResponse, _>(MvccError::EmptyKey)),
            expected("a", "3", 2, 5, 3, 0),
            format!("{:?}", Err::<PutResponse, _>(MvccError::LeaseNotFound(99))),
            expected("b", "5", 4, 6, 2, 0),
        ]
    );
    assert_eq!((g.current_revision(), q.current_revision()), (6, 6));
    // One watch response per revision, as for separate puts.
    let got: Vec<(i64, Vec<String>)> = (0..4)
        .map(|_| {
            let r = watcher
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            let keys = r
                .events
                .iter()
                .map(|e| String::from_utf8_lossy(&e.kv.key).into_owned())
                .collect();
            (r.revision, keys)
        })
        .collect();
    let names = |k: &str| vec![k.to_string()];
    assert_eq!(
        got,
        vec![
            (3, names("a")),
            (4, names("b")),
            (5, names("a")),
            (6, names("b"))
        ]
    );
    assert_eq!(g.watch_events(3).unwrap(), q.watch_events(3).unwrap());
    // b's last put has no lease: revoking 7 deletes nothing, on both.
    assert_eq!(g.lease_revoke(7).unwrap(), q.lease_revoke(7).unwrap());
    assert_eq!(g.current_revision(), 6);
    // A plain put after the group continues the revisions.
    assert_eq!(g.put(b"d", b"6", 0).unwrap().0, 7);
    // A put reading its key is refused, nothing written.
    let reads = Put {
        prev_kv: true,
        ..Put::new("e", "7", 0)
    };
    assert!(matches!(
        g.kv_put_group(&[&puts[0], &reads]),
        Err(MvccError::InvalidArgument(_))
    ));
    assert_eq!(g.current_revision(), 7);
    // Everything, the record included, is in the engine.
    let g = env_group.reopen(g);
    assert_eq!(g.apply_meta().unwrap(), Some(b"record".to_vec()));
    assert_eq!(
        g.kv_range(&all()).unwrap().kvs,
        vec![
            kv("a", "3", 2, 5, 3, 0),
            kv("b", "5", 4, 6, 2, 0),
            kv("d", "6", 7, 7, 1, 0)
        ]
    );
}

engine_tests!(
    put_group_is_sequential_puts_in_one_write,
    range_sort_table,
    range_filter_table,
    keys_only_and_count_only,
    range_errors,
    put_prev_kv_and_ignore_flags,
    delete_prev_kv,
    txn_ops_with_prev_kv,
    txn_ignore_flag_errors,
    nested_op_budget,
    watch_events_limited,
    conveniences_are_requests,
);
