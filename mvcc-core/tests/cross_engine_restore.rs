//! A snapshot taken from any compiled engine restores into any compiled engine (every ordered
//! pair, same-engine pairs included) with identical content and byte-identical snapshots.

use std::sync::Arc;

use mvcc_core::engine::{compiled_backends, AnyBackend};
use storage_api::{Backend, BackendConfig, BackendKind, Tree, WriteBatch};

type Content = Vec<(Tree, Vec<(Vec<u8>, Vec<u8>)>)>;

fn content(b: &AnyBackend) -> Content {
    Tree::ALL
        .into_iter()
        .map(|t| (t, b.scan(t, &[], &[], 0).unwrap()))
        .collect()
}

fn fill_source(b: &AnyBackend) {
    let mut batch = WriteBatch::new();
    for tree in Tree::ALL {
        let tag = tree.name().as_bytes();
        batch.put(tree, Vec::new(), tag.to_vec()); // empty key
        batch.put(tree, b"empty-value".to_vec(), Vec::new());
        batch.put(tree, vec![0xff], tag.to_vec());
        batch.put(tree, vec![0xff, 0xff, 0xff], vec![0xff; 3]);
        batch.put(tree, vec![0x00], vec![0x00]);
        for i in 0..50u32 {
            batch.put(
                tree,
                format!("key-{i:04}").into_bytes(),
                i.to_be_bytes().to_vec(),
            );
        }
    }
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    batch.put(Tree::Kv, b"big".to_vec(), big);
    b.write(&batch).unwrap();
    b.delete(Tree::Auth, b"key-0007").unwrap();
}

fn fill_target(b: &AnyBackend) {
    let mut batch = WriteBatch::new();
    for tree in Tree::ALL {
        batch.put(tree, b"stale".to_vec(), b"must disappear".to_vec());
        batch.put(tree, b"key-0001".to_vec(), b"overwritten".to_vec());
    }
    b.write(&batch).unwrap();
}

fn open(kind: BackendKind, dir: &std::path::Path, name: &str) -> Arc<AnyBackend> {
    AnyBackend::open(kind, BackendConfig::new(dir.join(name)))
        .unwrap_or_else(|e| panic!("opening {kind} failed: {e}"))
}

/// Restores a snapshot of engine `a` into engine `b` and checks content and bytes.
fn restore_pair(a: BackendKind, b: BackendKind) {
    let pair = format!("{a} -> {b}");
    let dir = tempfile::tempdir().unwrap();
    let src = open(a, dir.path(), "src");
    let dst = open(b, dir.path(), "dst");
    assert_eq!(src.kind(), a);
    assert_eq!(dst.kind(), b);
    fill_source(&src);
    fill_target(&dst);
    let snap = src.snapshot().unwrap();
    dst.restore(&snap)
        .unwrap_or_else(|e| panic!("{pair}: restore failed: {e}"));
    let want = content(&src);
    let got = content(&dst);
    for ((tree, w), (_, g)) in want.iter().zip(got.iter()) {
        assert_eq!(g.len(), w.len(), "{pair}: tree {tree} row count");
        assert!(g == w, "{pair}: tree {tree} content differs");
    }
    assert_eq!(want[0].1.len(), 56, "{pair}: kv rows");
    let big = dst.get(Tree::Kv, b"big").unwrap().unwrap();
    assert_eq!(big.len(), 1024 * 1024, "{pair}");
    assert_eq!(
        dst.get(Tree::Meta, b"").unwrap(),
        Some(b"meta".to_vec()),
        "{pair}"
    );
    assert_eq!(dst.get(Tree::Lease, b"stale").unwrap(), None, "{pair}");
    let snap_b = dst.snapshot().unwrap();
    assert!(snap_b == snap, "{pair}: snapshots are not byte-identical");
    src.close().unwrap();
    dst.close().unwrap();
}

/// One `#[test]` per ordered engine pair, compiled when both engines are, so a failure names
/// its pair (e.g. `restore_pairs::sled_to_redb`).
macro_rules! restore_pairs {
    ($($name:ident: $a:ident [$($fa:literal)?] => $b:ident [$($fb:literal)?];)*) => {
        mod restore_pairs {
            use super::*;
            $(
                #[test]
                $(#[cfg(feature = $fa)])?
                $(#[cfg(feature = $fb)])?
                fn $name() {
                    restore_pair(BackendKind::$a, BackendKind::$b);
                }
            )*
        }
    };
}

restore_pairs! {
    memory_to_memory: Memory [] => Memory [];
    memory_to_sled: Memory [] => Sled ["sled"];
    memory_to_redb: Memory [] => Redb ["redb"];
    memory_to_rocksdb: Memory [] => Rocksdb ["rocksdb"];
    sled_to_memory: Sled ["sled"] => Memory [];
    sled_to_sled: Sled ["sled"] => Sled ["sled"];
    sled_to_redb: Sled ["sled"] => Redb ["redb"];
    sled_to_rocksdb: Sled ["sled"] => Rocksdb ["rocksdb"];
    redb_to_memory: Redb ["redb"] => Memory [];
    redb_to_sled: Redb ["redb"] => Sled ["sled"];
    redb_to_redb: Redb ["redb"] => Redb ["redb"];
    redb_to_rocksdb: Redb ["redb"] => Rocksdb ["rocksdb"];
    rocksdb_to_memory: Rocksdb ["rocksdb"] => Memory [];
    rocksdb_to_sled: Rocksdb ["rocksdb"] => Sled ["sled"];
    rocksdb_to_redb: Rocksdb ["rocksdb"] => Redb ["redb"];
    rocksdb_to_rocksdb: Rocksdb ["rocksdb"] => Rocksdb ["rocksdb"];
}

#[test]
fn mvcc_store_survives_cross_engine_restore() {
    // An MVCC store restored into another engine recovers the same history.
    let kinds = compiled_backends();
    for &a in &kinds {
        for &b in &kinds {
            let pair = format!("{a} -> {b}");
            let dir = tempfile::tempdir().unwrap();
            let src = open(a, dir.path(), "src");
            let store = mvcc_core::MvccStore::new(src.clone()).unwrap();
            store.lease_grant(3, 60).unwrap();
            store.put(b"a", b"1", 3).unwrap();
            store.put(b"b", b"1", 0).unwrap();
            store.delete_range(b"a", b"").unwrap();
            store.put(b"a", b"2", 3).unwrap();
            store.compact(3).unwrap();
            let want: Vec<_> = (3..=5)
                .map(|r| store.range(b"\0", b"\0", r, 0, false).unwrap().kvs)
                .collect();
            let dst = open(b, dir.path(), "dst");
            dst.restore(&src.snapshot().unwrap()).unwrap();
            let restored = mvcc_core::MvccStore::new(dst.clone()).unwrap();
            assert_eq!(restored.current_revision(), 5, "{pair}");
            assert_eq!(restored.compact_revision(), 3, "{pair}");
            let got: Vec<_> = (3..=5)
                .map(|r| restored.range(b"\0", b"\0", r, 0, false).unwrap().kvs)
                .collect();
            assert_eq!(got, want, "{pair}");
            assert_eq!(
                restored.lease_time_to_live(3).unwrap().keys,
                vec![b"a".to_vec()],
                "{pair}"
            );
            src.close().unwrap();
            dst.close().unwrap();
        }
    }
}
