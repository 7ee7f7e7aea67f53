//! etcd `kv_test.go` / `kvstore_test.go` scenarios, on every compiled engine.

mod common;

use common::{kv, rows, Env};
use mvcc_core::{KeyValue, MvccError, Revision};
use storage_api::{Backend, Tree};

/// etcd `put3TestKVs` (with leases 1, 2, 3 granted first).
fn put3<B: Backend>(s: &mvcc_core::MvccStore<B>) -> Vec<KeyValue> {
    for id in 1..=3 {
        s.lease_grant(id, 100).unwrap();
    }
    assert_eq!(s.put(b"foo", b"bar", 1).unwrap().0, 2);
    assert_eq!(s.put(b"foo1", b"bar1", 2).unwrap().0, 3);
    assert_eq!(s.put(b"foo2", b"bar2", 3).unwrap().0, 4);
    vec![
        kv("foo", "bar", 2, 2, 1, 1),
        kv("foo1", "bar1", 3, 3, 1, 2),
        kv("foo2", "bar2", 4, 4, 1, 3),
    ]
}

fn store_rev<B: Backend>() {
    // TestStoreRev: a fresh store is at 1, each put adds one.
    let env = Env::<B>::new();
    let s = env.open();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.compact_revision(), -1);
    for i in 1..=3 {
        s.put(b"foo", b"bar", 0).unwrap();
        assert_eq!(s.current_revision(), i + 1);
    }
}

fn range_table<B: Backend>() {
    // testKVRange (entire keyspace uses the wire form "\0".."\0").
    let env = Env::<B>::new();
    let s = env.open();
    let kvs = put3(&s);
    let cases: Vec<(&[u8], &[u8], Vec<KeyValue>)> = vec![
        (b"doo", b"foo", vec![]),
        (b"foo", b"foo", vec![]),
        (b"doo", b"", vec![]),
        (b"foo", b"foo3", kvs.clone()),
        (b"foo", b"foo1", kvs[..1].to_vec()),
        (b"foo", b"", kvs[..1].to_vec()),
        (b"\0", b"\0", kvs.clone()),
        (b"foo1", b"\0", kvs[1..].to_vec()),
        (b"d", b"b", vec![]),
    ];
    for (key, end, want) in cases {
        let r = s.range(key, end, 0, 0, false).unwrap();
        assert_eq!(r.kvs, want, "range {key:?}..{end:?}");
        assert_eq!(r.count, want.len() as i64);
        assert_eq!(r.revision, 4);
        assert!(!r.more);
    }
    assert!(matches!(
        s.range(b"", b"\0", 0, 0, false),
        Err(MvccError::EmptyKey)
    ));
}

fn range_rev<B: Backend>() {
    // testKVRangeRev: the response revision is the current one, not the requested one.
    let env = Env::<B>::new();
    let s = env.open();
    let kvs = put3(&s);
    for (rev, want) in [
        (-1, kvs.clone()),
        (0, kvs.clone()),
        (2, kvs[..1].to_vec()),
        (3, kvs[..2].to_vec()),
        (4, kvs.clone()),
    ] {
        let r = s.range(b"foo", b"foo3", rev, 0, false).unwrap();
        assert_eq!(r.kvs, want, "rev {rev}");
        assert_eq!(r.revision, 4);
    }
}

fn range_bad_rev<B: Backend>() {
    // testKVRangeBadRev.
    let env = Env::<B>::new();
    let s = env.open();
    put3(&s);
    s.compact(4).unwrap();
    for (rev, want) in [
        (-1, Ok(())),
        (0, Ok(())),
        (1, Err("compacted")),
        (2, Err("compacted")),
        (3, Err("compacted")),
        (4, Ok(())),
        (5, Err("future")),
        (100, Err("future")),
    ] {
        let got = match s.range(b"foo", b"foo3", rev, 0, false) {
            Ok(_) => Ok(()),
            Err(MvccError::Compacted) => Err("compacted"),
            Err(MvccError::FutureRevision) => Err("future"),
            Err(e) => panic!("rev {rev}: {e}"),
        };
        assert_eq!(got, want, "rev {rev}");
    }
}

fn range_limit<B: Backend>() {
    // testKVRangeLimit: count is the total regardless of limit.
    let env = Env::<B>::new();
    let s = env.open();
    let kvs = put3(&s);
    for (limit, want, more) in [
        (-1, kvs.clone(), false),
        (0, kvs.clone(), false),
        (1, kvs[..1].to_vec(), true),
        (2, kvs[..2].to_vec(), true),
        (3, kvs.clone(), false),
        (100, kvs.clone(), false),
    ] {
        let r = s.range(b"foo", b"foo3", 0, limit, false).unwrap();
        assert_eq!(r.kvs, want, "limit {limit}");
        assert_eq!(r.count, 3, "limit {limit}");
        assert_eq!(r.more, more, "limit {limit}");
        assert_eq!(r.revision, 4);
    }
    let r = s.range(b"foo", b"foo3", 0, 1, true).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 3, false));
    let r = s.range(b"foo", b"foo3", 2, 0, true).unwrap();
    assert_eq!(r.count, 1);
}

fn put_multiple_times<B: Backend>() {
    // testKVPutMultipleTimes.
    let env = Env::<B>::new();
    let s = env.open();
    for base in 1..=10i64 {
        s.lease_grant(base, 100).unwrap();
        let (rev, got) = s.put(b"foo", b"bar", base).unwrap();
        assert_eq!(rev, base + 1);
        let want = kv("foo", "bar", 2, base + 1, base, base);
        assert_eq!(got, want);
        let r = s.range(b"foo", b"", 0, 0, false).unwrap();
        assert_eq!(r.kvs, vec![want]);
        assert_eq!(r.revision, base + 1);
    }
}

fn delete_range_table<B: Backend>() {
    // testKVDeleteRange.
    for (key, end, wrev, wn) in [
        (&b"foo"[..], &b""[..], 5, 1),
        (b"foo", b"foo1", 5, 1),
        (b"foo", b"foo2", 5, 2),
        (b"foo", b"foo3", 5, 3),
        (b"foo3", b"foo8", 4, 0),
        (b"foo3", b"", 4, 0),
        (b"foo", b"\0", 5, 3),
    ] {
        let env = Env::<B>::new();
        let s = env.open();
        s.put(b"foo", b"bar", 0).unwrap();
        s.put(b"foo1", b"bar1", 0).unwrap();
        s.put(b"foo2", b"bar2", 0).unwrap();
        let (rev, deleted) = s.delete_range(key, end).unwrap();
        assert_eq!((rev, deleted.len()), (wrev, wn), "delete {key:?}..{end:?}");
        assert_eq!(s.current_revision(), wrev);
    }
}

fn delete_multiple_times<B: Backend>() {
    // testKVDeleteMultipleTimes.
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"foo", b"bar", 0).unwrap();
    let (rev, deleted) = s.delete_range(b"foo", b"").unwrap();
    assert_eq!((rev, deleted), (3, vec![kv("foo", "bar", 2, 2, 1, 0)]));
    for _ in 0..10 {
        let (rev, deleted) = s.delete_range(b"foo", b"").unwrap();
        assert_eq!((rev, deleted.len()), (3, 0));
    }
}

fn operation_in_sequence<B: Backend>() {
    // TestKVOperationInSequence.
    let env = Env::<B>::new();
    let s = env.open();
    for i in 0..10i64 {
        let base = i * 2 + 1;
        let (rev, _) = s.put(b"foo", b"bar", 0).unwrap();
        assert_eq!(rev, base + 1);
        let r = s.range(b"foo", b"", base + 1, 0, false).unwrap();
        assert_eq!(r.kvs, vec![kv("foo", "bar", base + 1, base + 1, 1, 0)]);
        assert_eq!(r.revision, base + 1);
        let (rev, deleted) = s.delete_range(b"foo", b"").unwrap();
        assert_eq!((rev, deleted.len()), (base + 2, 1));
        let r = s.range(b"foo", b"", base + 2, 0, false).unwrap();
        assert!(r.kvs.is_empty());
        assert_eq!(r.revision, base + 2);
    }
}

fn generations_and_versions<B: Backend>() {
    // Rules 5-7: versions reset only through deletion; point-in-time reads.
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"k", b"v1", 0).unwrap(); // 2
    s.put(b"k", b"v2", 0).unwrap(); // 3
    s.delete_range(b"k", b"").unwrap(); // 4
    s.put(b"k", b"v3", 0).unwrap(); // 5
    s.put(b"k", b"v4", 0).unwrap(); // 6
    let at = |rev| s.range(b"k", b"", rev, 0, false).unwrap().kvs;
    assert_eq!(at(1), vec![]);
    assert_eq!(at(2), vec![kv("k", "v1", 2, 2, 1, 0)]);
    assert_eq!(at(3), vec![kv("k", "v2", 2, 3, 2, 0)]);
    assert_eq!(at(4), vec![]);
    assert_eq!(at(5), vec![kv("k", "v3", 5, 5, 1, 0)]);
    assert_eq!(at(6), vec![kv("k", "v4", 5, 6, 2, 0)]);
    assert_eq!(s.count_revisions(b"k"), 5);
}

fn storage_layout<B: Backend>() {
    // TestStoreDeleteRange: the tombstone row key is (3, 0, 't').
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"foo", b"bar", 0).unwrap();
    s.delete_range(b"foo", b"").unwrap();
    let keys: Vec<Vec<u8>> = rows(s.backend().as_ref(), Tree::Kv)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![
            Revision::new(2, 0).to_key(false),
            Revision::new(3, 0).to_key(true)
        ]
    );
    // A delete writes the kv tree alone: the current revision is recovered from it (the
    // currentRev guard row is written only when a compaction is scheduled).
    assert_eq!(s.backend().get(Tree::Meta, b"currentRev").unwrap(), None);
    let tomb = s
        .backend()
        .get(Tree::Kv, &Revision::new(3, 0).to_key(true))
        .unwrap()
        .unwrap();
    assert_eq!(
        KeyValue::decode(&tomb).unwrap(),
        KeyValue::tombstone(b"foo".to_vec(), 3)
    );
}

fn limits<B: Backend>() {
    let env = Env::<B>::with_config(
        mvcc_core::StoreConfig::default()
            .with_max_key_size(4)
            .with_max_value_size(8),
    );
    let s = env.open();
    assert!(matches!(s.put(b"", b"v", 0), Err(MvccError::EmptyKey)));
    assert!(matches!(
        s.put(b"12345", b"v", 0),
        Err(MvccError::KeyTooLarge { size: 5, max: 4 })
    ));
    assert!(matches!(
        s.put(b"k", b"123456789", 0),
        Err(MvccError::ValueTooLarge { size: 9, max: 8 })
    ));
    assert!(matches!(
        s.put(b"k", b"v", 7),
        Err(MvccError::LeaseNotFound(7))
    ));
    assert!(matches!(
        s.delete_range(b"", b"\0"),
        Err(MvccError::EmptyKey)
    ));
    assert_eq!(s.current_revision(), 1);
    assert!(rows(s.backend().as_ref(), Tree::Kv).is_empty());
    // Empty values are fine.
    assert_eq!(s.put(b"k", b"", 0).unwrap().1, kv("k", "", 2, 2, 1, 0));
}

/// Every readable revision, as (rev, all kvs) or the error name.
fn history<B: Backend>(s: &mvcc_core::MvccStore<B>) -> Vec<(i64, Result<Vec<KeyValue>, String>)> {
    (0..=s.current_revision() + 1)
        .map(|rev| {
            let r = s
                .range(b"\0", b"\0", rev, 0, false)
                .map(|r| r.kvs)
                .map_err(|e| e.to_string());
            (rev, r)
        })
        .collect()
}

fn restore_preserves_history<B: Backend>() {
    // TestKVRestore: every readable revision is identical after reopening.
    let env = Env::<B>::new();
    let s = env.open();
    s.lease_grant(7, 100).unwrap();
    s.put(b"foo", b"bar0", 7).unwrap();
    s.put(b"foo", b"bar1", 0).unwrap();
    s.put(b"foo1", b"x", 7).unwrap();
    s.delete_range(b"foo", b"foo1").unwrap();
    s.put(b"foo", b"bar2", 0).unwrap();
    s.put(b"foo2", b"", 0).unwrap();
    s.delete_range(b"foo1", b"\0").unwrap();
    let before = history(&s);
    let (cur, comp) = (s.current_revision(), s.compact_revision());
    let s = env.reopen(s);
    assert_eq!((s.current_revision(), s.compact_revision()), (cur, comp));
    assert_eq!(history(&s), before);
    // Compact and reopen again.
    s.compact(5).unwrap();
    let before = history(&s);
    let s = env.reopen(s);
    assert_eq!((s.current_revision(), s.compact_revision()), (cur, 5));
    assert_eq!(history(&s), before);
    // The store continues from the right revision and versions.
    let (rev, kvv) = s.put(b"foo", b"bar3", 0).unwrap();
    assert_eq!(rev, cur + 1);
    assert_eq!(kvv, kv("foo", "bar3", 6, cur + 1, 2, 0));
}

fn restore_delete<B: Backend>() {
    // TestRestoreDelete: deterministic mix of puts and deletes, then reopen.
    let env = Env::<B>::new();
    let s = env.open();
    let mut live = std::collections::BTreeMap::new();
    for i in 0..60u32 {
        let key = format!("key{}", (i * 7) % 13);
        if i % 3 == 2 {
            let (_, deleted) = s.delete_range(key.as_bytes(), b"").unwrap();
            assert_eq!(deleted.len(), usize::from(live.remove(&key).is_some()));
        } else {
            s.put(key.as_bytes(), format!("v{i}").as_bytes(), 0)
                .unwrap();
            live.insert(key, format!("v{i}"));
        }
    }
    let before = history(&s);
    let s = env.reopen(s);
    assert_eq!(history(&s), before);
    let r = s.range(b"key", b"kez", 0, 0, false).unwrap();
    let got: Vec<(String, String)> = r
        .kvs
        .iter()
        .map(|k| {
            (
                String::from_utf8(k.key.clone()).unwrap(),
                String::from_utf8(k.value.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, live.into_iter().collect::<Vec<_>>());
}

fn revision_never_decreases<B: Backend>() {
    // Issue #17780: compacting the latest revision when it is a tombstone, then restart.
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"a", b"1", 0).unwrap();
    s.delete_range(b"a", b"").unwrap(); // 3
    s.compact(3).unwrap();
    s.put(b"b", b"1", 0).unwrap(); // 4
    s.delete_range(b"b", b"").unwrap(); // 5
    s.delete_range(b"a", b"").unwrap(); // no-op
    let s = env.reopen(s);
    assert_eq!(s.current_revision(), 5);
    s.compact(5).unwrap();
    let s = env.reopen(s);
    assert_eq!(s.current_revision(), 5);
    assert_eq!(s.compact_revision(), 5);
    assert_eq!(s.put(b"c", b"1", 0).unwrap().0, 6);
}

fn concurrent_readers_and_writers<B: Backend>() {
    // Readers see a consistent revision while writers run (rules 18-19).
    let env = Env::<B>::new();
    let s = std::sync::Arc::new(env.open());
    std::thread::scope(|scope| {
        for w in 0..2 {
            let s = s.clone();
            scope.spawn(move || {
                for i in 0..100 {
                    let rev = s
                        .txn(
                            &[],
                            &[
                                mvcc_core::TxnOp::put(format!("a{w}"), format!("{i}"), 0),
                                mvcc_core::TxnOp::put(format!("b{w}"), format!("{i}"), 0),
                            ],
                            &[],
                        )
                        .unwrap()
                        .revision;
                    assert!(rev >= 2);
                }
            });
        }
        for _ in 0..2 {
            let s = s.clone();
            scope.spawn(move || {
                for _ in 0..200 {
                    let r = s.range(b"a", b"c", 0, 0, false).unwrap();
                    // a{w} and b{w} are always written together.
                    for w in 0..2 {
                        let a = r.kvs.iter().find(|k| k.key == format!("a{w}").as_bytes());
                        let b = r.kvs.iter().find(|k| k.key == format!("b{w}").as_bytes());
                        assert_eq!(a.map(|k| &k.value), b.map(|k| &k.value));
                        assert_eq!(a.map(|k| k.mod_revision), b.map(|k| k.mod_revision));
                    }
                    assert!(r.kvs.iter().all(|k| k.mod_revision <= r.revision));
                }
            });
        }
    });
    assert_eq!(s.current_revision(), 201);
}

engine_tests!(
    store_rev,
    range_table,
    range_rev,
    range_bad_rev,
    range_limit,
    put_multiple_times,
    delete_range_table,
    delete_multiple_times,
    operation_in_sequence,
    generations_and_versions,
    storage_layout,
    limits,
    restore_preserves_history,
    restore_delete,
    revision_never_decreases,
    concurrent_readers_and_writers,
);
