//! The conformance cases. Each panics with a message naming the violated rule.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use super::fixture::{dump, Fixture};
use crate::dir::prepare_data_dir;
use crate::{
    Backend, Durability, KvPair, MemoryBackend, SnapshotError, StorageError, Tree, WriteBatch,
};

fn kv(k: &[u8], v: &[u8]) -> KvPair {
    (k.to_vec(), v.to_vec())
}

fn keys(pairs: &[KvPair]) -> Vec<Vec<u8>> {
    pairs.iter().map(|(k, _)| k.clone()).collect()
}

/// Fills every tree with a few distinct pairs; returns what was written.
fn fill_all_trees<B: Backend>(db: &B, tag: &str) {
    let mut batch = WriteBatch::new();
    for tree in Tree::ALL {
        for i in 0..5u8 {
            batch.put(
                tree,
                format!("{tree}/{i}").into_bytes(),
                format!("{tag}-{tree}-{i}").into_bytes(),
            );
        }
    }
    batch.put(Tree::Kv, Vec::new(), b"empty-key".to_vec());
    batch.put(Tree::Meta, vec![0xff; 4], Vec::new());
    db.write(&batch).expect("fill");
}

/// `put` then `get` returns the value; `get` on another key returns `None`.
pub fn put_get_roundtrip<B: Backend>() {
    let f = Fixture::<B>::new();
    f.db().put(Tree::Kv, b"foo", b"bar").unwrap();
    assert_eq!(f.db().get(Tree::Kv, b"foo").unwrap(), Some(b"bar".to_vec()));
    assert_eq!(f.db().get(Tree::Kv, b"fo").unwrap(), None);
    assert_eq!(f.db().get(Tree::Kv, b"foo0").unwrap(), None);
}

/// `get_many` answers exactly what one `get` per key answers, in the order asked: sorted,
/// unsorted, duplicated, missing and empty keys, the empty input, other trees untouched.
pub fn get_many_matches_get<B: Backend>() {
    let f = Fixture::<B>::new();
    let db = f.db();
    let mut batch = WriteBatch::new();
    for i in 0..200u32 {
        // Revision-like keys: big-endian, so byte order is numeric order.
        batch.put(
            Tree::Kv,
            i.to_be_bytes().to_vec(),
            format!("v{i}").into_bytes(),
        );
    }
    batch.put(Tree::Kv, Vec::new(), b"empty-key".to_vec());
    batch.put(Tree::Kv, vec![0xff, 0xff, 0xff, 0xff, 0x00], Vec::new());
    batch.put(
        Tree::Index,
        7u32.to_be_bytes().to_vec(),
        b"other tree".to_vec(),
    );
    db.write(&batch).unwrap();

    let check = |tree: Tree, keys: &[Vec<u8>], what: &str| {
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let got = db.get_many(tree, &refs).unwrap();
        let want: Vec<Option<Vec<u8>>> = keys.iter().map(|k| db.get(tree, k).unwrap()).collect();
        assert_eq!(got, want, "get_many differs from get: {what}");
        got
    };
    let be = |i: u32| i.to_be_bytes().to_vec();
    assert!(
        check(Tree::Kv, &[], "empty input").is_empty(),
        "empty input gives answers"
    );
    let sorted: Vec<Vec<u8>> = (0..200).step_by(3).map(be).collect();
    let got = check(Tree::Kv, &sorted, "sorted keys");
    assert!(
        got.iter().all(Option::is_some),
        "a present key read as None"
    );
    let dense: Vec<Vec<u8>> = (50..150).map(be).collect();
    check(Tree::Kv, &dense, "adjacent keys");
    let unsorted: Vec<Vec<u8>> = [150u32, 3, 199, 0, 77, 76, 150]
        .into_iter()
        .map(be)
        .collect();
    let got = check(Tree::Kv, &unsorted, "unsorted keys with a duplicate");
    assert_eq!(got[0], Some(b"v150".to_vec()));
    assert_eq!(got[6], Some(b"v150".to_vec()));
    let missing: Vec<Vec<u8>> = vec![be(200), be(5), vec![0], be(1000), be(6)];
    let got = check(Tree::Kv, &missing, "missing keys between present ones");
    assert_eq!(
        got,
        vec![None, Some(b"v5".to_vec()), None, None, Some(b"v6".to_vec())]
    );
    let edges = vec![Vec::new(), vec![0xff, 0xff, 0xff, 0xff, 0x00], vec![0xff]];
    let got = check(Tree::Kv, &edges, "empty key, empty value, absent 0xff");
    assert_eq!(
        got,
        vec![Some(b"empty-key".to_vec()), Some(Vec::new()), None]
    );
    let got = check(Tree::Index, &[be(7), be(8)], "another tree");
    assert_eq!(got, vec![Some(b"other tree".to_vec()), None]);
    assert_eq!(
        check(Tree::Lease, &sorted, "an empty tree"),
        vec![None; sorted.len()]
    );
}

/// A key never written reads as `None` in every tree of a fresh store.
pub fn get_missing_is_none<B: Backend>() {
    let f = Fixture::<B>::new();
    for tree in Tree::ALL {
        assert_eq!(f.db().get(tree, b"missing").unwrap(), None, "tree {tree}");
        assert!(
            f.db().scan(tree, &[], &[], 0).unwrap().is_empty(),
            "tree {tree}"
        );
    }
}

/// A second put replaces the value.
pub fn overwrite_replaces_value<B: Backend>() {
    let f = Fixture::<B>::new();
    f.db().put(Tree::Lease, b"k", b"one").unwrap();
    f.db().put(Tree::Lease, b"k", b"two-longer").unwrap();
    f.db().put(Tree::Lease, b"k", b"3").unwrap();
    assert_eq!(f.db().get(Tree::Lease, b"k").unwrap(), Some(b"3".to_vec()));
    assert_eq!(
        f.db().scan(Tree::Lease, &[], &[], 0).unwrap(),
        vec![kv(b"k", b"3")]
    );
}

/// `delete` removes exactly the key.
pub fn delete_removes_key<B: Backend>() {
    let f = Fixture::<B>::new();
    f.db().put(Tree::Kv, b"a", b"1").unwrap();
    f.db().put(Tree::Kv, b"b", b"2").unwrap();
    f.db().delete(Tree::Kv, b"a").unwrap();
    assert_eq!(f.db().get(Tree::Kv, b"a").unwrap(), None);
    assert_eq!(
        f.db().scan(Tree::Kv, &[], &[], 0).unwrap(),
        vec![kv(b"b", b"2")]
    );
}

/// Deleting an absent key (single and batched) succeeds and changes nothing.
pub fn delete_absent_is_ok<B: Backend>() {
    let f = Fixture::<B>::new();
    f.db().put(Tree::Auth, b"x", b"1").unwrap();
    f.db().delete(Tree::Auth, b"nope").unwrap();
    f.db().delete(Tree::Kv, b"x").unwrap();
    f.db()
        .batch_delete(Tree::Auth, &[b"n1".to_vec(), b"n2".to_vec()])
        .unwrap();
    assert_eq!(f.db().get(Tree::Auth, b"x").unwrap(), Some(b"1".to_vec()));
}

/// The same key in each tree holds an independent value; deletes and scans stay in their tree.
pub fn trees_are_isolated<B: Backend>() {
    let f = Fixture::<B>::new();
    for tree in Tree::ALL {
        f.db().put(tree, b"same", tree.name().as_bytes()).unwrap();
        f.db()
            .put(tree, format!("only-{tree}").as_bytes(), b"x")
            .unwrap();
    }
    f.db().delete(Tree::Index, b"same").unwrap();
    for tree in Tree::ALL {
        let expect = (tree != Tree::Index).then(|| tree.name().as_bytes().to_vec());
        assert_eq!(f.db().get(tree, b"same").unwrap(), expect, "tree {tree}");
        let scanned = keys(&f.db().scan(tree, &[], &[], 0).unwrap());
        let mut want = vec![format!("only-{tree}").into_bytes()];
        if tree != Tree::Index {
            want.push(b"same".to_vec());
        }
        assert_eq!(scanned, want, "tree {tree}");
        assert_eq!(
            f.db().scan_prefix(tree, b"only-", 0).unwrap().len(),
            1,
            "tree {tree}"
        );
    }
}

/// The empty key and the empty value are ordinary data.
pub fn empty_key_and_empty_value<B: Backend>() {
    let f = Fixture::<B>::new();
    f.db().put(Tree::Kv, b"", b"empty-key").unwrap();
    f.db().put(Tree::Kv, b"k", b"").unwrap();
    assert_eq!(
        f.db().get(Tree::Kv, b"").unwrap(),
        Some(b"empty-key".to_vec())
    );
    assert_eq!(f.db().get(Tree::Kv, b"k").unwrap(), Some(Vec::new()));
    assert_eq!(
        f.db().scan(Tree::Kv, &[], &[], 0).unwrap(),
        vec![kv(b"", b"empty-key"), kv(b"k", b"")]
    );
    f.db().delete(Tree::Kv, b"").unwrap();
    assert_eq!(f.db().get(Tree::Kv, b"").unwrap(), None);
}

/// Keys and values with 0x00 and 0xff bytes round-trip exactly.
pub fn binary_keys_and_values<B: Backend>() {
    let f = Fixture::<B>::new();
    let pairs: Vec<KvPair> = vec![
        kv(&[0], &[0, 0, 0]),
        kv(&[0, 0], &[0xff]),
        kv(&[0, 1, 0], b"a\0b"),
        kv(&[0x7f], &[0x80, 0x00]),
        kv(&[0xff, 0x00], &[1, 2, 3, 0, 4]),
    ];
    for (k, v) in &pairs {
        f.db().put(Tree::Index, k, v).unwrap();
    }
    for (k, v) in &pairs {
        assert_eq!(f.db().get(Tree::Index, k).unwrap().as_ref(), Some(v));
    }
    assert_eq!(f.db().scan(Tree::Index, &[], &[], 0).unwrap(), pairs);
}

/// A value over 1 MiB is stored, read, scanned and snapshotted whole.
pub fn large_value_round_trips<B: Backend>() {
    let mut f = Fixture::<B>::new();
    let big: Vec<u8> = (0..(1024 * 1024 + 7)).map(|i| (i % 251) as u8).collect();
    f.db().put(Tree::Kv, b"big", &big).unwrap();
    assert_eq!(
        f.db().get(Tree::Kv, b"big").unwrap().as_deref(),
        Some(&big[..])
    );
    f.reopen();
    assert_eq!(
        f.db().scan(Tree::Kv, b"b", b"c", 0).unwrap(),
        vec![(b"big".to_vec(), big.clone())]
    );
    let snap = f.db().snapshot().unwrap();
    f.db().delete(Tree::Kv, b"big").unwrap();
    f.db().restore(&snap).unwrap();
    assert_eq!(f.db().get(Tree::Kv, b"big").unwrap(), Some(big));
}

/// `batch_put` writes every pair, later duplicates winning.
pub fn batch_put_applies_all<B: Backend>() {
    let f = Fixture::<B>::new();
    let pairs: Vec<KvPair> = (0..100u32)
        .map(|i| (i.to_be_bytes().to_vec(), format!("v{i}").into_bytes()))
        .chain(std::iter::once(kv(&7u32.to_be_bytes(), b"dup")))
        .collect();
    f.db().batch_put(Tree::Kv, &pairs).unwrap();
    let all = f.db().scan(Tree::Kv, &[], &[], 0).unwrap();
    assert_eq!(all.len(), 100);
    assert_eq!(all[7], kv(&7u32.to_be_bytes(), b"dup"));
    assert_eq!(all[99], (99u32.to_be_bytes().to_vec(), b"v99".to_vec()));
    f.db().batch_put(Tree::Kv, &[]).unwrap();
    assert_eq!(f.db().scan(Tree::Kv, &[], &[], 0).unwrap().len(), 100);
}

/// `batch_delete` removes every listed key and nothing else.
pub fn batch_delete_removes_all<B: Backend>() {
    let f = Fixture::<B>::new();
    let pairs: Vec<KvPair> = (0..10u8).map(|i| (vec![i], vec![i])).collect();
    f.db().batch_put(Tree::Meta, &pairs).unwrap();
    f.db()
        .batch_delete(Tree::Meta, &[vec![0], vec![5], vec![9], vec![42]])
        .unwrap();
    assert_eq!(
        keys(&f.db().scan(Tree::Meta, &[], &[], 0).unwrap()),
        vec![
            vec![1],
            vec![2],
            vec![3],
            vec![4],
            vec![6],
            vec![7],
            vec![8]
        ]
    );
}

/// One `write` applies puts and deletes over several trees together.
pub fn write_batch_spans_trees<B: Backend>() {
    let f = Fixture::<B>::new();
    f.db().put(Tree::Lease, b"old", b"x").unwrap();
    let mut batch = WriteBatch::new();
    batch
        .put(Tree::Kv, b"rev1".to_vec(), b"value".to_vec())
        .put(Tree::Meta, b"current".to_vec(), b"1".to_vec())
        .delete(Tree::Lease, b"old".to_vec())
        .put(Tree::Auth, b"user".to_vec(), b"root".to_vec());
    assert_eq!(batch.len(), 4);
    f.db().write(&batch).unwrap();
    assert_eq!(
        f.db().get(Tree::Kv, b"rev1").unwrap(),
        Some(b"value".to_vec())
    );
    assert_eq!(
        f.db().get(Tree::Meta, b"current").unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(f.db().get(Tree::Lease, b"old").unwrap(), None);
    assert_eq!(
        f.db().get(Tree::Auth, b"user").unwrap(),
        Some(b"root".to_vec())
    );
    assert!(f.db().scan(Tree::Index, &[], &[], 0).unwrap().is_empty());
}

/// Within one batch, the last operation on a key decides.
pub fn write_batch_later_op_wins<B: Backend>() {
    let f = Fixture::<B>::new();
    let mut batch = WriteBatch::new();
    batch
        .put(Tree::Kv, b"a".to_vec(), b"1".to_vec())
        .delete(Tree::Kv, b"a".to_vec())
        .delete(Tree::Kv, b"b".to_vec())
        .put(Tree::Kv, b"b".to_vec(), b"2".to_vec())
        .put(Tree::Kv, b"c".to_vec(), b"3".to_vec())
        .put(Tree::Kv, b"c".to_vec(), b"4".to_vec());
    f.db().write(&batch).unwrap();
    assert_eq!(
        f.db().scan(Tree::Kv, &[], &[], 0).unwrap(),
        vec![kv(b"b", b"2"), kv(b"c", b"4")]
    );
}

/// An empty batch succeeds and changes nothing.
pub fn write_empty_batch_is_noop<B: Backend>() {
    let f = Fixture::<B>::new();
    f.db().put(Tree::Kv, b"k", b"v").unwrap();
    f.db().write(&WriteBatch::new()).unwrap();
    assert_eq!(
        f.db().scan(Tree::Kv, &[], &[], 0).unwrap(),
        vec![kv(b"k", b"v")]
    );
}

fn letters<B: Backend>(db: &B, tree: Tree) {
    let pairs: Vec<KvPair> = [b"a", b"b", b"c", b"d", b"e"]
        .iter()
        .map(|k| (k.to_vec(), k.to_ascii_uppercase()))
        .collect();
    db.batch_put(tree, &pairs).unwrap();
}

/// `scan` includes `start` and excludes `end`.
pub fn scan_half_open_bounds<B: Backend>() {
    let f = Fixture::<B>::new();
    letters(f.db(), Tree::Kv);
    assert_eq!(
        keys(&f.db().scan(Tree::Kv, b"b", b"d", 0).unwrap()),
        vec![b"b".to_vec(), b"c".to_vec()]
    );
    assert_eq!(
        keys(&f.db().scan(Tree::Kv, b"bb", b"dd", 0).unwrap()),
        vec![b"c".to_vec(), b"d".to_vec()]
    );
    assert_eq!(
        f.db().scan(Tree::Kv, b"a", b"b", 0).unwrap(),
        vec![kv(b"a", b"A")]
    );
    assert_eq!(f.db().scan(Tree::Kv, b"", b"a", 0).unwrap(), vec![]);
}

/// An empty `end` scans to the end of the tree.
pub fn scan_unbounded_end<B: Backend>() {
    let f = Fixture::<B>::new();
    letters(f.db(), Tree::Kv);
    f.db().put(Tree::Kv, &[0xff, 0xff], b"last").unwrap();
    let got = keys(&f.db().scan(Tree::Kv, b"d", b"", 0).unwrap());
    assert_eq!(got, vec![b"d".to_vec(), b"e".to_vec(), vec![0xff, 0xff]]);
    assert_eq!(f.db().scan(Tree::Kv, b"", b"", 0).unwrap().len(), 6);
}

/// `end <= start` (non-empty end) is an empty result, not an error.
pub fn scan_empty_and_inverted_ranges<B: Backend>() {
    let f = Fixture::<B>::new();
    letters(f.db(), Tree::Kv);
    assert!(f.db().scan(Tree::Kv, b"c", b"c", 0).unwrap().is_empty());
    assert!(f.db().scan(Tree::Kv, b"d", b"b", 0).unwrap().is_empty());
    assert!(f.db().scan(Tree::Kv, b"z", b"", 0).unwrap().is_empty());
    assert!(f
        .db()
        .scan(Tree::Kv, &[0xff], &[0x00], 5)
        .unwrap()
        .is_empty());
}

/// `limit` caps the result from the start; 0 is unlimited.
pub fn scan_limit<B: Backend>() {
    let f = Fixture::<B>::new();
    letters(f.db(), Tree::Kv);
    assert_eq!(
        keys(&f.db().scan(Tree::Kv, b"b", b"", 2).unwrap()),
        vec![b"b".to_vec(), b"c".to_vec()]
    );
    assert_eq!(
        f.db().scan(Tree::Kv, b"", b"", 1).unwrap(),
        vec![kv(b"a", b"A")]
    );
    assert_eq!(f.db().scan(Tree::Kv, b"", b"", 100).unwrap().len(), 5);
    assert_eq!(f.db().scan(Tree::Kv, b"", b"", 0).unwrap().len(), 5);
}

/// Keys sort as unsigned bytes, shorter prefixes first.
pub fn scan_orders_unsigned_bytes<B: Backend>() {
    let f = Fixture::<B>::new();
    let mixed: Vec<Vec<u8>> = vec![
        vec![0x80],
        vec![0x7f, 0xff],
        vec![0x7f],
        vec![0xff],
        vec![0x00, 0x01],
        vec![0x00],
        vec![0x01],
    ];
    for k in &mixed {
        f.db().put(Tree::Auth, k, b"").unwrap();
    }
    let mut sorted = mixed.clone();
    sorted.sort();
    assert_eq!(keys(&f.db().scan(Tree::Auth, &[], &[], 0).unwrap()), sorted);
    assert_eq!(sorted[0], vec![0x00]);
    assert_eq!(sorted[6], vec![0xff]);
}

/// Prefix scans are exact, including prefixes ending in or made of 0xff and the empty prefix.
pub fn scan_prefix_edge_table<B: Backend>() {
    let f = Fixture::<B>::new();
    let all: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![1],
        vec![1, 0],
        vec![1, 254],
        vec![1, 255],
        vec![1, 255, 0],
        vec![1, 255, 255],
        vec![2],
        vec![255],
        vec![255; 15],
        vec![255; 16],
        vec![255; 17],
    ];
    for k in &all {
        f.db().put(Tree::Kv, k, k).unwrap();
    }
    let table: Vec<(Vec<u8>, Vec<Vec<u8>>)> = vec![
        (vec![], all.clone()),
        (vec![0], vec![vec![0], vec![0, 0]]),
        (
            vec![1],
            vec![
                vec![1],
                vec![1, 0],
                vec![1, 254],
                vec![1, 255],
                vec![1, 255, 0],
                vec![1, 255, 255],
            ],
        ),
        (
            vec![1, 255],
            vec![vec![1, 255], vec![1, 255, 0], vec![1, 255, 255]],
        ),
        (vec![1, 255, 255], vec![vec![1, 255, 255]]),
        (vec![1, 255, 255, 255], vec![]),
        (vec![1, 254], vec![vec![1, 254]]),
        (
            vec![255],
            vec![vec![255], vec![255; 15], vec![255; 16], vec![255; 17]],
        ),
        (vec![255; 16], vec![vec![255; 16], vec![255; 17]]),
        (vec![255; 18], vec![]),
        (vec![3], vec![]),
    ];
    for (prefix, want) in table {
        let got = f.db().scan_prefix(Tree::Kv, &prefix, 0).unwrap();
        assert_eq!(keys(&got), want, "prefix {prefix:?}");
        for (k, v) in got {
            assert_eq!(k, v);
        }
    }
}

/// `scan_prefix` honours `limit`.
pub fn scan_prefix_limit<B: Backend>() {
    let f = Fixture::<B>::new();
    for i in 0..20u8 {
        f.db().put(Tree::Index, &[7, i], &[i]).unwrap();
    }
    f.db().put(Tree::Index, &[8], b"other").unwrap();
    let got = f.db().scan_prefix(Tree::Index, &[7], 3).unwrap();
    assert_eq!(
        got,
        vec![
            (vec![7, 0], vec![0]),
            (vec![7, 1], vec![1]),
            (vec![7, 2], vec![2])
        ]
    );
    assert_eq!(f.db().scan_prefix(Tree::Index, &[7], 0).unwrap().len(), 20);
}

/// Everything written before `close` is there after reopening.
pub fn persists_across_close_and_reopen<B: Backend>() {
    let mut f = Fixture::<B>::new();
    fill_all_trees(f.db(), "p");
    f.db().delete(Tree::Kv, b"kv/3").unwrap();
    f.db()
        .batch_delete(Tree::Lease, &[b"lease/0".to_vec()])
        .unwrap();
    let before = f.dump();
    assert_eq!(before[0].1.len(), 5);
    f.reopen();
    assert_eq!(f.dump(), before);
    f.db().put(Tree::Kv, b"after", b"reopen").unwrap();
    f.db().flush().unwrap();
    f.reopen();
    assert_eq!(
        f.db().get(Tree::Kv, b"after").unwrap(),
        Some(b"reopen".to_vec())
    );
    assert_eq!(f.db().get(Tree::Kv, b"kv/3").unwrap(), None);
}

/// With `Durability::Sync`, writes persist across reopen too.
pub fn sync_durability_persists<B: Backend>() {
    let mut f = Fixture::<B>::with(|c| c.with_durability(Durability::Sync));
    f.db().put(Tree::Kv, b"a", b"1").unwrap();
    let mut batch = WriteBatch::new();
    batch
        .put(Tree::Meta, b"m".to_vec(), b"2".to_vec())
        .delete(Tree::Kv, b"a".to_vec());
    f.db().write(&batch).unwrap();
    f.reopen();
    assert_eq!(f.db().get(Tree::Kv, b"a").unwrap(), None);
    assert_eq!(f.db().get(Tree::Meta, b"m").unwrap(), Some(b"2".to_vec()));
}

fn assert_closed<T: std::fmt::Debug>(what: &str, r: Result<T, StorageError>) {
    match r {
        Err(StorageError::Closed) => {}
        other => panic!("{what} after close: expected StorageError::Closed, got {other:?}"),
    }
}

/// After `close`, every call returns `StorageError::Closed`.
pub fn operations_after_close_fail<B: Backend>() {
    let f = Fixture::<B>::new();
    f.db().put(Tree::Kv, b"k", b"v").unwrap();
    let snap = f.db().snapshot().unwrap();
    assert!(!f.db().is_closed(), "is_closed() is true on an open store");
    f.db().close().unwrap();
    let db = f.db();
    assert!(db.is_closed(), "is_closed() is false after close");
    assert_closed("put", db.put(Tree::Kv, b"k", b"v"));
    assert_closed("get", db.get(Tree::Kv, b"k"));
    assert_closed("get_many", db.get_many(Tree::Kv, &[b"k", b"l"]));
    assert_closed("get_many(empty)", db.get_many(Tree::Kv, &[]));
    assert_closed("delete", db.delete(Tree::Kv, b"k"));
    assert_closed("batch_put", db.batch_put(Tree::Kv, &[kv(b"a", b"b")]));
    assert_closed("batch_delete", db.batch_delete(Tree::Kv, &[b"a".to_vec()]));
    let mut batch = WriteBatch::new();
    batch.put(Tree::Kv, b"x".to_vec(), b"y".to_vec());
    assert_closed("write", db.write(&batch));
    assert_closed("write(empty)", db.write(&WriteBatch::new()));
    assert_closed("scan", db.scan(Tree::Kv, b"", b"", 0));
    assert_closed("scan_prefix", db.scan_prefix(Tree::Kv, b"k", 0));
    assert_closed("snapshot", db.snapshot());
    assert_closed("restore", db.restore(&snap));
    assert_closed("compact", db.compact(1));
    assert_closed("size", db.size());
    assert_closed("defragment", db.defragment());
    assert_closed("flush", db.flush());
    assert_closed("close", db.close());
}

/// A file path and another engine's directory are refused with typed errors.
pub fn open_rejects_foreign_directories<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a store").unwrap();
    match B::new(Fixture::<B>::config(file)) {
        Err(StorageError::InvalidPath { .. }) => {}
        other => panic!(
            "path is a file: expected InvalidPath, got {:?}",
            other.map(|_| ())
        ),
    }
    let other = dir.path().join("other-engine");
    prepare_data_dir(&other, "some-other-engine").unwrap();
    match B::new(Fixture::<B>::config(other)) {
        Err(StorageError::WrongEngine { found, .. }) => assert_eq!(found, "some-other-engine"),
        r => panic!(
            "other engine dir: expected WrongEngine, got {:?}",
            r.map(|_| ())
        ),
    }
}

/// `snapshot` then `restore` into a store with other data reproduces the image exactly.
pub fn snapshot_restore_round_trip<B: Backend>() {
    let src = Fixture::<B>::new();
    fill_all_trees(src.db(), "src");
    let snap = src.db().snapshot().unwrap();
    let dst = Fixture::<B>::new();
    fill_all_trees(dst.db(), "dst");
    dst.db()
        .put(Tree::Auth, b"extra", b"gone after restore")
        .unwrap();
    dst.db().restore(&snap).unwrap();
    assert_eq!(dst.dump(), src.dump());
    assert_eq!(dst.db().get(Tree::Auth, b"extra").unwrap(), None);
    assert_eq!(dst.db().snapshot().unwrap(), snap);
}

/// The same content gives byte-identical snapshots on this engine and the memory engine.
pub fn snapshot_is_canonical_across_engines<B: Backend>() {
    let f = Fixture::<B>::new();
    let mem = MemoryBackend::volatile();
    let mut batch = WriteBatch::new();
    batch.put(Tree::Auth, b"z".to_vec(), b"1".to_vec());
    batch.put(Tree::Kv, b"b".to_vec(), b"2".to_vec());
    batch.put(Tree::Kv, b"a".to_vec(), Vec::new());
    batch.put(Tree::Lease, Vec::new(), vec![0; 3]);
    f.db().write(&batch).unwrap();
    mem.write(&batch).unwrap();
    assert_eq!(f.db().snapshot().unwrap(), mem.snapshot().unwrap());
}

/// `snapshot_to` streams exactly the bytes of `snapshot` and reports their count.
pub fn snapshot_to_matches_snapshot<B: Backend>() {
    let f = Fixture::<B>::new();
    fill_all_trees(f.db(), "s");
    let mut out = Vec::new();
    let n = f.db().snapshot_to(&mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    assert_eq!(out, f.db().snapshot().unwrap());
    let mut empty = Vec::new();
    let fresh = Fixture::<B>::new();
    assert_eq!(fresh.db().snapshot_to(&mut empty).unwrap(), 16 + 13);
}

/// Snapshots move between this engine and the memory engine in both directions.
pub fn restore_from_memory_and_into_memory<B: Backend>() {
    let mem = MemoryBackend::volatile();
    fill_all_trees(&*mem, "mem");
    let f = Fixture::<B>::new();
    f.db().put(Tree::Kv, b"stale", b"x").unwrap();
    f.db().restore(&mem.snapshot().unwrap()).unwrap();
    assert_eq!(f.dump(), dump(&*mem));
    f.db().put(Tree::Index, b"new", b"y").unwrap();
    let back = MemoryBackend::volatile();
    back.restore(&f.db().snapshot().unwrap()).unwrap();
    assert_eq!(dump(&*back), f.dump());
}

/// Restoring an empty snapshot empties every tree.
pub fn restore_empty_snapshot_clears_everything<B: Backend>() {
    let f = Fixture::<B>::new();
    fill_all_trees(f.db(), "x");
    let empty = MemoryBackend::volatile().snapshot().unwrap();
    f.db().restore(&empty).unwrap();
    for (tree, pairs) in f.dump() {
        assert!(
            pairs.is_empty(),
            "tree {tree} not empty after restoring an empty snapshot"
        );
    }
}

/// A restore is durable: it survives close and reopen.
pub fn restore_persists_across_reopen<B: Backend>() {
    let src = MemoryBackend::volatile();
    fill_all_trees(&*src, "r");
    let mut f = Fixture::<B>::new();
    f.db().put(Tree::Kv, b"zzz", b"old").unwrap();
    f.db().restore(&src.snapshot().unwrap()).unwrap();
    f.reopen();
    assert_eq!(f.dump(), dump(&*src));
}

fn assert_rejected<B: Backend>(f: &Fixture<B>, data: &[u8], what: &str) -> SnapshotError {
    let before = f.dump();
    let err = match f.db().restore(data) {
        Err(StorageError::Snapshot(e)) => e,
        other => panic!("{what}: expected StorageError::Snapshot, got {other:?}"),
    };
    assert_eq!(
        f.dump(),
        before,
        "{what}: data changed by a rejected restore"
    );
    err
}

fn sample_snapshot() -> Vec<u8> {
    let mem = MemoryBackend::volatile();
    fill_all_trees(&*mem, "sample");
    mem.snapshot().unwrap()
}

/// Garbage input is rejected and the store is untouched.
pub fn restore_rejects_garbage_and_keeps_data<B: Backend>() {
    let f = Fixture::<B>::new();
    fill_all_trees(f.db(), "keep");
    assert_eq!(
        assert_rejected(&f, b"this is not a snapshot at all", "garbage"),
        SnapshotError::BadMagic
    );
    assert_eq!(
        assert_rejected(&f, b"", "empty input"),
        SnapshotError::Truncated
    );
    let mut other = b"SQLite format 3\0".to_vec();
    other.extend_from_slice(&[0u8; 100]);
    assert_eq!(
        assert_rejected(&f, &other, "foreign file"),
        SnapshotError::BadMagic
    );
}

/// Every truncation of a valid snapshot is rejected and the store is untouched.
pub fn restore_rejects_truncated_and_keeps_data<B: Backend>() {
    let f = Fixture::<B>::new();
    fill_all_trees(f.db(), "keep");
    let snap = sample_snapshot();
    let step = (snap.len() / 23).max(1);
    for cut in (8..snap.len())
        .step_by(step)
        .chain([snap.len() - 1, snap.len() - 4])
    {
        let e = assert_rejected(&f, &snap[..cut], &format!("truncated at {cut}"));
        assert!(
            matches!(e, SnapshotError::Truncated | SnapshotError::Malformed(_)),
            "truncated at {cut}: {e:?}"
        );
    }
}

/// Single bit flips anywhere are rejected and the store is untouched.
pub fn restore_rejects_bit_flips_and_keeps_data<B: Backend>() {
    let f = Fixture::<B>::new();
    fill_all_trees(f.db(), "keep");
    let snap = sample_snapshot();
    let step = (snap.len() / 29).max(1);
    for pos in (0..snap.len()).step_by(step).chain([snap.len() - 1]) {
        let mut bad = snap.clone();
        bad[pos] ^= 0x10;
        assert_rejected(&f, &bad, &format!("bit flip at byte {pos}"));
    }
}

/// A snapshot of another format version is rejected with the versions named.
pub fn restore_rejects_wrong_version_and_keeps_data<B: Backend>() {
    let f = Fixture::<B>::new();
    fill_all_trees(f.db(), "keep");
    let mut snap = sample_snapshot();
    snap[8..12].copy_from_slice(&2u32.to_be_bytes());
    assert_eq!(
        assert_rejected(&f, &snap, "version 2"),
        SnapshotError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
}

/// Readers never see part of a multi-tree batch, neither through `get`s nor in a snapshot.
pub fn concurrent_batches_are_never_partial<B: Backend>() {
    let f = Fixture::<B>::new();
    let db = f.arc();
    let slots: Vec<(Tree, Vec<u8>)> = Tree::ALL
        .into_iter()
        .flat_map(|t| (0..4u8).map(move |i| (t, vec![b's', i])))
        .collect();
    let write_gen = |db: &B, gen: u64| {
        let mut batch = WriteBatch::new();
        for (t, k) in &slots {
            batch.put(*t, k.clone(), gen.to_be_bytes().to_vec());
        }
        db.write(&batch).unwrap();
    };
    write_gen(&db, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let db = db.clone();
            let stop = stop.clone();
            let slots = slots.clone();
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while !stop.load(Ordering::Acquire) || checks < 5 {
                    if r == 0 {
                        // Sequential gets: generations can only move forward along the walk.
                        let mut last = 0u64;
                        for (t, k) in &slots {
                            let v = db.get(*t, k).unwrap().expect("slot present");
                            let g = u64::from_be_bytes(v.try_into().expect("8-byte value"));
                            assert!(g >= last, "saw generation {g} after {last}: partial batch");
                            last = g;
                        }
                    } else {
                        let snap = db.snapshot().unwrap();
                        let mem = MemoryBackend::volatile();
                        mem.restore(&snap).unwrap();
                        let gens: Vec<Vec<u8>> = slots
                            .iter()
                            .map(|(t, k)| mem.get(*t, k).unwrap().expect("slot in snapshot"))
                            .collect();
                        assert!(
                            gens.windows(2).all(|w| w[0] == w[1]),
                            "snapshot holds a partial batch"
                        );
                    }
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    for gen in 1..=200u64 {
        write_gen(&db, gen);
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().expect("reader panicked") >= 5);
    }
    let last = 200u64.to_be_bytes().to_vec();
    for (t, k) in &slots {
        assert_eq!(db.get(*t, k).unwrap(), Some(last.clone()));
    }
}

/// Concurrent writers on distinct keys lose nothing.
pub fn concurrent_writers_do_not_lose_writes<B: Backend>() {
    let f = Fixture::<B>::new();
    let db = f.arc();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..100u8 {
                    if i % 10 == 0 {
                        let pairs: Vec<KvPair> =
                            (0..5u8).map(|j| (vec![t, i, j], vec![j])).collect();
                        db.batch_put(Tree::Kv, &pairs).unwrap();
                    } else {
                        db.put(Tree::Kv, &[t, i], &[i]).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer panicked");
    }
    // 4 threads × (90 single keys + 10 batches of 5)
    assert_eq!(db.scan(Tree::Kv, &[], &[], 0).unwrap().len(), 4 * (90 + 50));
    assert_eq!(db.get(Tree::Kv, &[3, 99]).unwrap(), Some(vec![99]));
    assert_eq!(db.get(Tree::Kv, &[2, 40, 4]).unwrap(), Some(vec![4]));
}

/// `size` reports bytes; `defragment` and `compact` never change what reads return.
pub fn size_defragment_and_compact_keep_content<B: Backend>() {
    let mut f = Fixture::<B>::new();
    let value = vec![0xabu8; 1000];
    let pairs: Vec<KvPair> = (0..500u32)
        .map(|i| (i.to_be_bytes().to_vec(), value.clone()))
        .collect();
    f.db().batch_put(Tree::Kv, &pairs).unwrap();
    f.db().flush().unwrap();
    let size = f.db().size().unwrap();
    assert!(
        size > 0,
        "size() after writing 500 KB and flushing is {size}"
    );
    let deleted: Vec<Vec<u8>> = (0..400u32).map(|i| i.to_be_bytes().to_vec()).collect();
    f.db().batch_delete(Tree::Kv, &deleted).unwrap();
    let before = f.dump();
    assert_eq!(before[0].1.len(), 100);
    f.db().compact(42).unwrap();
    assert_eq!(f.dump(), before);
    f.db().defragment().unwrap();
    assert_eq!(f.dump(), before);
    f.db().defragment().unwrap();
    assert_eq!(f.dump(), before);
    f.reopen();
    assert_eq!(f.dump(), before);
    assert!(f.db().size().unwrap() > 0);
}

/// Keys of [`defragment_under_concurrent_load`]: `base/<i>` in kv and index.
const LOAD_BASE_KEYS: usize = 2000;
/// Pair slots of [`defragment_under_concurrent_load`] (`pair/a/<j>` and `pair/b/<j>`).
const LOAD_PAIRS: usize = 40;
/// Operations the writer of [`defragment_under_concurrent_load`] performs at least.
const LOAD_MIN_OPS: usize = 400;

/// One acknowledged write: (tree, key) and the value written (`None`: deleted).
type AckedWrite = ((Tree, Vec<u8>), Option<Vec<u8>>);

fn base_key(i: usize) -> Vec<u8> {
    format!("base/{i:05}").into_bytes()
}

fn pair_key(side: char, j: usize) -> Vec<u8> {
    format!("pair/{side}/{j:03}").into_bytes()
}

/// `defragment` runs while a writer and a reader run on other threads: every write
/// acknowledged before, during or after the defragments reads back afterwards with the exact
/// value, deleted keys stay deleted, keys nobody wrote keep their value, every scan taken
/// meanwhile is one point-in-time view (the two keys of a pair, always written and deleted
/// together in one batch, are seen together with the same value or not at all), and all of
/// it survives a reopen.
pub fn defragment_under_concurrent_load<B: Backend>() {
    let mut f = Fixture::<B>::new();
    // The model of the whole store, per tree.
    let mut model: BTreeMap<(Tree, Vec<u8>), Vec<u8>> = BTreeMap::new();
    let mut batch = WriteBatch::new();
    for i in 0..LOAD_BASE_KEYS {
        let v = format!("initial-{i}-{}", "x".repeat(i % 200)).into_bytes();
        batch.put(Tree::Kv, base_key(i), v.clone());
        batch.put(Tree::Index, base_key(i), v.clone());
        model.insert((Tree::Kv, base_key(i)), v.clone());
        model.insert((Tree::Index, base_key(i)), v);
    }
    batch.put(Tree::Meta, b"untouched".to_vec(), b"still here".to_vec());
    model.insert((Tree::Meta, b"untouched".to_vec()), b"still here".to_vec());
    f.db().write(&batch).unwrap();

    let db = f.arc();
    let stop = AtomicBool::new(false);
    let (written, scans) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            // (tree, key) -> Some(value) written / None deleted, in acknowledgement order.
            let mut acked: Vec<AckedWrite> = Vec::new();
            let mut round = 0usize;
            while round < LOAD_MIN_OPS || !stop.load(Ordering::Acquire) {
                let value = format!("w{round}").into_bytes();
                match round % 5 {
                    0 => {
                        let k = base_key(round * 7 % LOAD_BASE_KEYS);
                        db.put(Tree::Kv, &k, &value).unwrap();
                        acked.push(((Tree::Kv, k), Some(value)));
                    }
                    1 => {
                        let k = base_key(round * 13 % LOAD_BASE_KEYS);
                        db.delete(Tree::Index, &k).unwrap();
                        acked.push(((Tree::Index, k), None));
                    }
                    2 => {
                        let j = round % LOAD_PAIRS;
                        let mut b = WriteBatch::new();
                        b.put(Tree::Kv, pair_key('a', j), value.clone());
                        b.put(Tree::Kv, pair_key('b', j), value.clone());
                        b.put(Tree::Lease, pair_key('a', j), value.clone());
                        db.write(&b).unwrap();
                        acked.push(((Tree::Kv, pair_key('a', j)), Some(value.clone())));
                        acked.push(((Tree::Kv, pair_key('b', j)), Some(value.clone())));
                        acked.push(((Tree::Lease, pair_key('a', j)), Some(value)));
                    }
                    3 => {
                        let j = (round * 3) % LOAD_PAIRS;
                        db.batch_delete(Tree::Kv, &[pair_key('a', j), pair_key('b', j)])
                            .unwrap();
                        acked.push(((Tree::Kv, pair_key('a', j)), None));
                        acked.push(((Tree::Kv, pair_key('b', j)), None));
                    }
                    _ => {
                        let k = format!("new/{round:06}").into_bytes();
                        db.put(Tree::Auth, &k, &value).unwrap();
                        acked.push(((Tree::Auth, k), Some(value)));
                    }
                }
                round += 1;
            }
            acked
        });
        let reader = s.spawn(|| {
            let mut scans = 0usize;
            while !stop.load(Ordering::Acquire) || scans == 0 {
                let pairs = db.scan_prefix(Tree::Kv, b"pair/", 0).unwrap();
                let a: BTreeMap<Vec<u8>, Vec<u8>> = pairs
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix(b"pair/a/")?.to_vec(), v.clone())))
                    .collect();
                let b: BTreeMap<Vec<u8>, Vec<u8>> = pairs
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix(b"pair/b/")?.to_vec(), v.clone())))
                    .collect();
                assert_eq!(a, b, "a scan during defragment saw half of a batch");
                assert_eq!(
                    db.get(Tree::Meta, b"untouched").unwrap(),
                    Some(b"still here".to_vec()),
                    "a key nobody writes changed during defragment"
                );
                scans += 1;
            }
            scans
        });
        for _ in 0..3 {
            db.defragment().unwrap();
        }
        stop.store(true, Ordering::Release);
        let written = writer.join().unwrap();
        let scans = reader.join().unwrap();
        (written, scans)
    });
    assert!(written.len() >= LOAD_MIN_OPS, "{} writes", written.len());
    assert!(scans >= 1);
    for (key, value) in written {
        match value {
            Some(v) => model.insert(key, v),
            None => model.remove(&key),
        };
    }
    let expected: Vec<(Tree, Vec<KvPair>)> = Tree::ALL
        .into_iter()
        .map(|t| {
            let pairs = model
                .range((t, Vec::new())..)
                .take_while(|((tree, _), _)| *tree == t)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            (t, pairs)
        })
        .collect();
    drop(db);
    assert_eq!(f.dump(), expected, "content after defragments under load");
    f.db().defragment().unwrap();
    assert_eq!(f.dump(), expected, "content after a quiet defragment");
    f.reopen();
    assert_eq!(f.dump(), expected, "content after reopen");
}

#[derive(Debug, Clone)]
enum ModelOp {
    Put(Tree, Vec<u8>, Vec<u8>),
    Delete(Tree, Vec<u8>),
    Batch(Vec<(Tree, Vec<u8>, Option<Vec<u8>>)>),
    Scan(Tree, Vec<u8>, Vec<u8>, usize),
    Prefix(Tree, Vec<u8>, usize),
    Get(Tree, Vec<u8>),
    Reopen,
    SnapshotRestore,
}

fn tree_strategy() -> impl Strategy<Value = Tree> {
    (0u8..5).prop_map(|i| Tree::from_id(i).unwrap_or(Tree::Kv))
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    // Small alphabet so operations collide; includes 0x00 and 0xff edges.
    proptest::collection::vec(
        prop_oneof![Just(0u8), Just(1u8), Just(0x7f), Just(0xff)],
        0..4,
    )
}

fn op_strategy() -> impl Strategy<Value = ModelOp> {
    let value = proptest::collection::vec(any::<u8>(), 0..8);
    prop_oneof![
        4 => (tree_strategy(), key_strategy(), value.clone()).prop_map(|(t, k, v)| ModelOp::Put(t, k, v)),
        2 => (tree_strategy(), key_strategy()).prop_map(|(t, k)| ModelOp::Delete(t, k)),
        2 => proptest::collection::vec((tree_strategy(), key_strategy(), proptest::option::of(value)), 0..6)
            .prop_map(ModelOp::Batch),
        2 => (tree_strategy(), key_strategy(), key_strategy(), 0usize..4).prop_map(|(t, s, e, l)| ModelOp::Scan(t, s, e, l)),
        1 => (tree_strategy(), key_strategy(), 0usize..4).prop_map(|(t, p, l)| ModelOp::Prefix(t, p, l)),
        2 => (tree_strategy(), key_strategy()).prop_map(|(t, k)| ModelOp::Get(t, k)),
        1 => Just(ModelOp::Reopen),
        1 => Just(ModelOp::SnapshotRestore),
    ]
}

type Model = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

fn model_scan(model: &Model, tree: Tree, start: &[u8], end: &[u8], limit: usize) -> Vec<KvPair> {
    let it = model
        .iter()
        .filter(|((t, k), _)| *t == tree.id() && crate::keys::in_range(k, start, end))
        .map(|((_, k), v)| (k.clone(), v.clone()));
    if limit == 0 {
        it.collect()
    } else {
        it.take(limit).collect()
    }
}

fn run_model<B: Backend>(ops: Vec<ModelOp>) -> Result<(), TestCaseError> {
    let mut f = Fixture::<B>::new();
    let mut model = Model::new();
    for op in ops {
        match op {
            ModelOp::Put(t, k, v) => {
                f.db()
                    .put(t, &k, &v)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.insert((t.id(), k), v);
            }
            ModelOp::Delete(t, k) => {
                f.db()
                    .delete(t, &k)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.remove(&(t.id(), k));
            }
            ModelOp::Batch(items) => {
                let mut batch = WriteBatch::new();
                for (t, k, v) in items {
                    match v {
                        Some(v) => {
                            batch.put(t, k.clone(), v.clone());
                            model.insert((t.id(), k), v);
                        }
                        None => {
                            batch.delete(t, k.clone());
                            model.remove(&(t.id(), k));
                        }
                    }
                }
                f.db()
                    .write(&batch)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            ModelOp::Scan(t, s, e, l) => {
                let got = f
                    .db()
                    .scan(t, &s, &e, l)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got, model_scan(&model, t, &s, &e, l));
            }
            ModelOp::Prefix(t, p, l) => {
                let got = f
                    .db()
                    .scan_prefix(t, &p, l)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want: Vec<KvPair> = model_scan(&model, t, &p, &[], 0)
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(&p))
                    .take(if l == 0 { usize::MAX } else { l })
                    .collect();
                prop_assert_eq!(got, want);
            }
            ModelOp::Get(t, k) => {
                let got = f
                    .db()
                    .get(t, &k)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got, model.get(&(t.id(), k)).cloned());
            }
            ModelOp::Reopen => f.reopen(),
            ModelOp::SnapshotRestore => {
                let snap = f
                    .db()
                    .snapshot()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                f.db()
                    .put(Tree::Kv, b"noise", b"x")
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                f.db()
                    .restore(&snap)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
    }
    let all: Vec<KvPair> = Tree::ALL
        .into_iter()
        .flat_map(|t| model_scan(&model, t, &[], &[], 0))
        .collect();
    let got: Vec<KvPair> = f.dump().into_iter().flat_map(|(_, p)| p).collect();
    prop_assert_eq!(got, all);
    Ok(())
}

/// Random operation sequences (with reopens and snapshot/restore) match a `BTreeMap` model.
///
/// The number of cases defaults to 24 and can be raised with `RUSD_CONFORMANCE_CASES`.
pub fn model_random_operations_with_reopen<B: Backend>() {
    let cases = std::env::var("RUSD_CONFORMANCE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(
        &proptest::collection::vec(op_strategy(), 1..40),
        run_model::<B>,
    );
    if let Err(e) = result {
        panic!("model test failed: {e}");
    }
}
