//! RocksDB-specific behaviour: flusher, memory budget, defragment, reopen, close, layout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_rocksdb::{RocksdbBackend, DB_DIR};
use proptest::prelude::*;
use storage_api::{
    Backend, BackendConfig, Durability, KvPair, MemoryBackend, StorageError, Tree, WriteBatch,
};

const MIB: u64 = 1024 * 1024;

fn buffered(path: std::path::PathBuf, interval_ms: u64) -> BackendConfig {
    BackendConfig::new(path)
        .with_cache_size_mb(16)
        .with_durability(Durability::Buffered {
            interval: Duration::from_millis(interval_ms),
        })
}

fn sync(path: std::path::PathBuf) -> BackendConfig {
    BackendConfig::new(path)
        .with_cache_size_mb(16)
        .with_durability(Durability::Sync)
}

/// Deterministic, incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

type Dump = Vec<(Tree, Vec<KvPair>)>;

/// The whole content of every tree.
fn dump<B: Backend>(db: &B) -> Dump {
    Tree::ALL
        .into_iter()
        .map(|t| (t, db.scan(t, &[], &[], 0).unwrap()))
        .collect()
}

fn fill_sample(db: &RocksdbBackend) {
    let mut batch = WriteBatch::new();
    for tree in Tree::ALL {
        batch.put(tree, Vec::new(), format!("empty-{tree}").into_bytes());
        batch.put(tree, vec![0xff; 33], b"ff".to_vec());
        batch.put(tree, b"k".to_vec(), Vec::new());
        for i in 0..50u32 {
            batch.put(tree, i.to_be_bytes().to_vec(), noise(u64::from(i), 100));
        }
    }
    db.write(&batch).unwrap();
}

#[test]
fn layout_marker_and_column_families() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let db = RocksdbBackend::new(sync(path.clone())).unwrap();
    assert_eq!(db.db_path(), path.join("rocksdb"));
    assert_eq!(DB_DIR, "rocksdb");
    let marker = std::fs::read_to_string(path.join(storage_api::dir::MARKER_FILE)).unwrap();
    assert_eq!(marker, "rusd-storage engine=rocksdb layout=1\n");
    assert!(path.join("rocksdb").join("CURRENT").is_file());
    db.close().unwrap();
    let mut cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), path.join("rocksdb")).unwrap();
    cfs.sort();
    assert_eq!(cfs, ["auth", "default", "index", "kv", "lease", "meta"]);
}

#[test]
fn buffered_flusher_syncs_the_wal_periodically_and_stops_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let db = RocksdbBackend::new(buffered(dir.path().join("b"), 10)).unwrap();
    db.put(Tree::Kv, b"a", b"1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.background_wal_syncs() < 3 {
        assert!(Instant::now() < deadline, "the flusher did not run");
        std::thread::sleep(Duration::from_millis(5));
    }
    db.close().unwrap();
    let after = db.background_wal_syncs();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(db.background_wal_syncs(), after);

    // Sync durability has no flusher.
    let s = RocksdbBackend::new(sync(dir.path().join("s"))).unwrap();
    s.put(Tree::Kv, b"a", b"1").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.background_wal_syncs(), 0);
    s.close().unwrap();
}

#[test]
fn buffered_writes_survive_drop_without_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = buffered(dir.path().join("store"), 1000);
    let db = RocksdbBackend::new(config.clone()).unwrap();
    fill_sample(&db);
    db.delete(Tree::Meta, b"k").unwrap();
    let before = dump(&*db);
    let image = db.snapshot().unwrap();
    drop(db);
    let db = RocksdbBackend::new(config.clone()).unwrap();
    assert_eq!(dump(&*db), before);
    assert_eq!(db.snapshot().unwrap(), image);
    assert_eq!(db.get(Tree::Meta, b"k").unwrap(), None);
    assert_eq!(db.get(Tree::Kv, b"k").unwrap(), Some(Vec::new()));
    db.close().unwrap();
    let db = RocksdbBackend::new(config).unwrap();
    assert_eq!(db.snapshot().unwrap(), image);
    db.close().unwrap();
}

#[test]
fn second_open_of_an_open_store_is_an_engine_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = sync(dir.path().join("store"));
    let db = RocksdbBackend::new(config.clone()).unwrap();
    match RocksdbBackend::new(config.clone()) {
        Err(e @ StorageError::Engine { engine, .. }) => {
            assert_eq!(engine, "rocksdb");
            assert!(std::error::Error::source(&e).is_some());
        }
        other => panic!("expected an engine error, got {other:?}"),
    }
    db.close().unwrap();
    // The lock is released by close.
    let db = RocksdbBackend::new(config).unwrap();
    db.close().unwrap();
}

#[test]
fn every_call_after_close_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let db = RocksdbBackend::new(buffered(dir.path().join("store"), 10)).unwrap();
    fill_sample(&db);
    let image = db.snapshot().unwrap();
    db.close().unwrap();
    let closed = |r: Result<(), StorageError>, what: &str| match r {
        Err(StorageError::Closed) => {}
        other => panic!("{what}: expected Closed, got {other:?}"),
    };
    closed(db.put(Tree::Kv, b"a", b"1"), "put");
    closed(db.get(Tree::Kv, b"a").map(drop), "get");
    closed(db.delete(Tree::Kv, b"a"), "delete");
    closed(db.write(&WriteBatch::new()), "empty write");
    closed(
        db.batch_put(Tree::Kv, &[(b"a".to_vec(), b"1".to_vec())]),
        "batch_put",
    );
    closed(db.batch_delete(Tree::Kv, &[b"a".to_vec()]), "batch_delete");
    closed(db.scan(Tree::Kv, b"", b"", 0).map(drop), "scan");
    closed(db.scan(Tree::Kv, b"b", b"a", 0).map(drop), "inverted scan");
    closed(db.scan_prefix(Tree::Kv, b"", 0).map(drop), "scan_prefix");
    closed(db.snapshot().map(drop), "snapshot");
    closed(db.restore(&image), "restore");
    closed(db.compact(1), "compact");
    closed(db.size().map(drop), "size");
    closed(db.defragment(), "defragment");
    closed(db.flush(), "flush");
    closed(db.memory_stats().map(drop), "memory_stats");
    closed(db.close(), "second close");
}

#[test]
fn foreign_directories_are_rejected() {
    let dir = tempfile::tempdir().unwrap();

    // A memory store cannot be opened as rocksdb...
    let mem_path = dir.path().join("mem");
    let mem = MemoryBackend::new(sync(mem_path.clone())).unwrap();
    mem.close().unwrap();
    match RocksdbBackend::new(sync(mem_path)) {
        Err(StorageError::WrongEngine {
            expected, found, ..
        }) => {
            assert_eq!(expected, "rocksdb");
            assert_eq!(found, "memory");
        }
        other => panic!("expected WrongEngine, got {other:?}"),
    }

    // ...nor a rocksdb store as memory.
    let rocks_path = dir.path().join("rocks");
    let rocks = RocksdbBackend::new(sync(rocks_path.clone())).unwrap();
    rocks.close().unwrap();
    match MemoryBackend::new(sync(rocks_path)) {
        Err(StorageError::WrongEngine {
            expected, found, ..
        }) => {
            assert_eq!(expected, "memory");
            assert_eq!(found, "rocksdb");
        }
        other => panic!("expected WrongEngine, got {other:?}"),
    }

    // A bare RocksDB directory without the rusd marker is not claimed.
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    std::fs::write(bare.join("CURRENT"), b"MANIFEST-000001\n").unwrap();
    assert!(matches!(
        RocksdbBackend::new(sync(bare.clone())),
        Err(StorageError::WrongEngine { .. })
    ));
    assert_eq!(std::fs::read_dir(&bare).unwrap().count(), 1);

    // A file is not a directory.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        RocksdbBackend::new(sync(file)),
        Err(StorageError::InvalidPath { .. })
    ));
}

#[test]
fn cache_budget_is_applied_to_every_tree() {
    let dir = tempfile::tempdir().unwrap();
    for (mb, cache, buffers) in [
        (8, 8 * MIB, 4 * MIB),
        (0, MIB, MIB / 2),
        (storage_api::DEFAULT_CACHE_SIZE_MB, 256 * MIB, 128 * MIB),
    ] {
        let config = sync(dir.path().join(format!("c{mb}"))).with_cache_size_mb(mb);
        let db = RocksdbBackend::new(config).unwrap();
        let stats = db.memory_stats().unwrap();
        assert_eq!(stats.block_cache_capacity, [cache; 5], "budget {mb} MiB");
        assert_eq!(stats.write_buffer_limit, buffers, "budget {mb} MiB");
        db.close().unwrap();
    }
}

#[test]
fn memtables_are_charged_to_the_block_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = buffered(dir.path().join("store"), 1000).with_cache_size_mb(8);
    let db = RocksdbBackend::new(config).unwrap();
    let idle = db.memory_stats().unwrap();
    let pairs: Vec<_> = (0..256u32)
        .map(|i| (i.to_be_bytes().to_vec(), noise(u64::from(i), 1024)))
        .collect();
    db.batch_put(Tree::Kv, &pairs).unwrap();
    let busy = db.memory_stats().unwrap();
    assert!(
        busy.write_buffer_usage > idle.write_buffer_usage,
        "{idle:?} -> {busy:?}"
    );
    assert!(busy.write_buffer_usage >= 256 * 1024, "{busy:?}");
    assert!(
        busy.block_cache_usage >= busy.write_buffer_usage,
        "{busy:?}"
    );
    db.close().unwrap();
}

fn size_settled(db: &RocksdbBackend, below: u64) -> u64 {
    // Obsolete files are deleted by RocksDB's background threads.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let size = db.size().unwrap();
        if size < below || Instant::now() > deadline {
            return size;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn defragment_reclaims_deleted_space_and_keeps_content() {
    let dir = tempfile::tempdir().unwrap();
    let config = buffered(dir.path().join("store"), 50).with_cache_size_mb(8);
    let db = RocksdbBackend::new(config.clone()).unwrap();
    for chunk in 0..16u64 {
        let pairs: Vec<_> = (0..256u64)
            .map(|i| {
                let n = chunk * 256 + i;
                (n.to_be_bytes().to_vec(), noise(n, 4096))
            })
            .collect();
        db.batch_put(Tree::Kv, &pairs).unwrap();
    }
    db.put(Tree::Meta, b"m", b"v").unwrap();
    db.flush().unwrap();
    let full = db.size().unwrap();
    assert!(full > 16 * MIB, "4096 values of 4 KiB take {full} bytes");

    // Keep one key in 64.
    let doomed: Vec<Vec<u8>> = (0..4096u64)
        .filter(|n| n % 64 != 0)
        .map(|n| n.to_be_bytes().to_vec())
        .collect();
    db.batch_delete(Tree::Kv, &doomed).unwrap();
    let image = db.snapshot().unwrap();
    let content = dump(&*db);
    assert_eq!(content[0].1.len(), 64);

    db.defragment().unwrap();
    let small = size_settled(&db, full / 8);
    assert!(small < full / 8, "defragment left {small} of {full} bytes");
    assert_eq!(db.snapshot().unwrap(), image);
    assert_eq!(dump(&*db), content);

    db.close().unwrap();
    let db = RocksdbBackend::new(config).unwrap();
    assert_eq!(db.snapshot().unwrap(), image);
    db.close().unwrap();
}

#[test]
fn compact_keeps_content() {
    let dir = tempfile::tempdir().unwrap();
    let db = RocksdbBackend::new(buffered(dir.path().join("store"), 50)).unwrap();
    fill_sample(&db);
    let doomed: Vec<Vec<u8>> = (0..40u32).map(|i| i.to_be_bytes().to_vec()).collect();
    db.batch_delete(Tree::Kv, &doomed).unwrap();
    let image = db.snapshot().unwrap();
    db.compact(41).unwrap();
    assert_eq!(db.snapshot().unwrap(), image);
    assert_eq!(db.scan(Tree::Kv, b"", b"", 0).unwrap().len(), 13);
    db.close().unwrap();
}

#[test]
fn restore_replaces_keys_at_the_edges_of_the_keyspace() {
    let dir = tempfile::tempdir().unwrap();
    let config = sync(dir.path().join("store"));
    let db = RocksdbBackend::new(config.clone()).unwrap();
    fill_sample(&db);

    let source = MemoryBackend::volatile();
    source.put(Tree::Lease, b"only", b"this").unwrap();
    source.put(Tree::Kv, &[0xff; 34], b"longer ff").unwrap();
    let image = source.snapshot().unwrap();

    db.restore(&image).unwrap();
    let expected = dump(&*source);
    assert_eq!(dump(&*db), expected);
    assert_eq!(db.get(Tree::Kv, &[0xff; 33]).unwrap(), None);
    assert_eq!(db.get(Tree::Auth, b"").unwrap(), None);
    assert_eq!(db.snapshot().unwrap(), image);

    // Writes after a restore land on top of it.
    db.put(Tree::Kv, &[0xff; 40], b"after").unwrap();
    assert_eq!(db.scan(Tree::Kv, b"", b"", 0).unwrap().len(), 2);

    db.close().unwrap();
    let db = RocksdbBackend::new(config).unwrap();
    assert_eq!(
        db.scan(Tree::Kv, b"", b"", 0).unwrap(),
        vec![
            (vec![0xff; 34], b"longer ff".to_vec()),
            (vec![0xff; 40], b"after".to_vec()),
        ]
    );
    assert_eq!(db.scan(Tree::Lease, b"", b"", 0).unwrap().len(), 1);
    db.close().unwrap();
}

#[test]
fn concurrent_snapshots_see_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = RocksdbBackend::new(buffered(dir.path().join("store"), 20)).unwrap();
    let writer = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || {
            for i in 0..300u32 {
                let mut b = WriteBatch::new();
                for tree in Tree::ALL {
                    b.put(tree, b"counter".to_vec(), i.to_be_bytes().to_vec());
                }
                db.write(&b).unwrap();
            }
        })
    };
    for _ in 0..50 {
        let image = db.snapshot().unwrap();
        let copy = MemoryBackend::volatile();
        copy.restore(&image).unwrap();
        let values: Vec<_> = Tree::ALL
            .into_iter()
            .map(|t| copy.get(t, b"counter").unwrap())
            .collect();
        assert!(values.iter().all(|v| *v == values[0]), "{values:?}");
    }
    writer.join().unwrap();
    assert_eq!(
        db.get(Tree::Auth, b"counter").unwrap(),
        Some(299u32.to_be_bytes().to_vec())
    );
    db.close().unwrap();
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(0u8),
            Just(1u8),
            Just(0xfeu8),
            Just(0xffu8),
            any::<u8>()
        ],
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Scans and prefix scans over keys crowded at the byte edges match the reference.
    #[test]
    fn scans_match_the_memory_backend(
        keys in prop::collection::vec(key_strategy(), 0..40),
        deleted in prop::collection::vec(key_strategy(), 0..10),
        bounds in prop::collection::vec((key_strategy(), key_strategy(), 0usize..4), 1..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = RocksdbBackend::new(buffered(dir.path().join("store"), 100)).unwrap();
        let model = MemoryBackend::volatile();
        for (i, k) in keys.iter().enumerate() {
            let v = (i as u32).to_be_bytes();
            db.put(Tree::Index, k, &v).unwrap();
            model.put(Tree::Index, k, &v).unwrap();
        }
        for k in &deleted {
            db.delete(Tree::Index, k).unwrap();
            model.delete(Tree::Index, k).unwrap();
        }
        for (start, end, limit) in &bounds {
            prop_assert_eq!(
                db.scan(Tree::Index, start, end, *limit).unwrap(),
                model.scan(Tree::Index, start, end, *limit).unwrap()
            );
            prop_assert_eq!(
                db.scan_prefix(Tree::Index, start, *limit).unwrap(),
                model.scan_prefix(Tree::Index, start, *limit).unwrap()
            );
        }
        prop_assert_eq!(db.snapshot().unwrap(), model.snapshot().unwrap());
        db.close().unwrap();
    }
}
