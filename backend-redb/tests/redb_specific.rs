//! Behaviour specific to the redb backend: file layout, durability across real process
//! crashes, the buffered flusher, defragmentation, close and directory checks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use backend_redb::{RedbBackend, DATA_FILE};
use proptest::prelude::*;
use storage_api::dir::MARKER_FILE;
use storage_api::{
    Backend, BackendConfig, Durability, MemoryBackend, StorageError, Tree, WriteBatch,
};

const CHILD_ENV: &str = "RUSD_REDB_CRASH_CHILD";
const CHILD_DIR_ENV: &str = "RUSD_REDB_CRASH_DIR";
const HOUR: Duration = Duration::from_secs(3600);

fn buffered(path: &Path, interval: Duration) -> BackendConfig {
    BackendConfig::new(path)
        .with_cache_size_mb(16)
        .with_durability(Durability::Buffered { interval })
}

fn sync(path: &Path) -> BackendConfig {
    BackendConfig::new(path)
        .with_cache_size_mb(16)
        .with_durability(Durability::Sync)
}

fn all(db: &RedbBackend, tree: Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.scan(tree, &[], &[], 0).unwrap()
}

// ---------------------------------------------------------------------------------------
// Crash tests: the test binary re-runs itself as a child that writes and then aborts the
// process (no destructor, no flush), and the parent reopens the store.
// ---------------------------------------------------------------------------------------

/// Entry point of the crash children; a no-op in a normal test run.
#[test]
fn crash_child_entry() {
    let (Ok(scenario), Ok(dir)) = (std::env::var(CHILD_ENV), std::env::var(CHILD_DIR_ENV)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    // Each scenario returns the backend it still holds open at the crash.
    let _open: Option<Arc<RedbBackend>> = match scenario.as_str() {
        "sync" => {
            let db = RedbBackend::new(sync(&dir)).unwrap();
            db.put(Tree::Kv, b"k", b"sync-value").unwrap();
            let mut b = WriteBatch::new();
            b.put(Tree::Meta, b"m", b"1").put(Tree::Lease, b"l", b"2");
            db.write(&b).unwrap();
            Some(db)
        }
        "buffered_no_flush" => {
            let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
            db.put(Tree::Kv, b"durable", b"yes").unwrap();
            db.flush().unwrap();
            db.put(Tree::Kv, b"volatile", b"lost").unwrap();
            db.delete(Tree::Kv, b"durable").unwrap();
            assert_eq!(
                db.get(Tree::Kv, b"volatile").unwrap(),
                Some(b"lost".to_vec())
            );
            Some(db)
        }
        "buffered_flusher" => {
            let db = RedbBackend::new(buffered(&dir, Duration::from_millis(20))).unwrap();
            db.put(Tree::Kv, b"k", b"flushed-by-thread").unwrap();
            db.put(Tree::Auth, b"a", b"x").unwrap();
            std::thread::sleep(Duration::from_millis(600));
            Some(db)
        }
        "buffered_explicit_flush" => {
            let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
            db.put(Tree::Index, b"i", b"flushed").unwrap();
            db.put(Tree::Index, b"j", b"flushed").unwrap();
            db.flush().unwrap();
            db.put(Tree::Index, b"k", b"lost").unwrap();
            Some(db)
        }
        "drop_flushes" => {
            let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
            db.put(Tree::Kv, b"k", b"dropped").unwrap();
            drop(db);
            None
        }
        "restore_is_durable" => {
            let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
            db.put(Tree::Kv, b"old", b"1").unwrap();
            db.flush().unwrap();
            let mem = MemoryBackend::volatile();
            mem.put(Tree::Meta, b"new", b"2").unwrap();
            db.restore(&mem.snapshot().unwrap()).unwrap();
            Some(db)
        }
        other => panic!("unknown crash scenario {other}"),
    };
    // Crash: no destructors, no flush.
    std::process::abort();
}

/// Runs `scenario` in a child process that aborts, and returns the store directory.
fn crash_child(scenario: &str, tmp: &Path) -> PathBuf {
    let dir = tmp.join("store");
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, scenario)
        .env(CHILD_DIR_ENV, &dir)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "child {scenario} should have aborted; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dir.join(DATA_FILE).exists(),
        "child {scenario} did not create the store; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn sync_writes_survive_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = crash_child("sync", tmp.path());
    let db = RedbBackend::new(sync(&dir)).unwrap();
    assert_eq!(
        db.get(Tree::Kv, b"k").unwrap(),
        Some(b"sync-value".to_vec())
    );
    assert_eq!(db.get(Tree::Meta, b"m").unwrap(), Some(b"1".to_vec()));
    assert_eq!(db.get(Tree::Lease, b"l").unwrap(), Some(b"2".to_vec()));
    db.close().unwrap();
}

#[test]
fn buffered_writes_without_flush_are_lost_in_a_crash_but_never_partially() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = crash_child("buffered_no_flush", tmp.path());
    let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
    // The store is back at the last durable commit: the flushed put, without the later
    // put and delete.
    assert_eq!(
        all(&db, Tree::Kv),
        vec![(b"durable".to_vec(), b"yes".to_vec())]
    );
    db.close().unwrap();
}

#[test]
fn background_flusher_makes_buffered_writes_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = crash_child("buffered_flusher", tmp.path());
    let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
    assert_eq!(
        db.get(Tree::Kv, b"k").unwrap(),
        Some(b"flushed-by-thread".to_vec())
    );
    assert_eq!(db.get(Tree::Auth, b"a").unwrap(), Some(b"x".to_vec()));
    db.close().unwrap();
}

#[test]
fn explicit_flush_makes_buffered_writes_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = crash_child("buffered_explicit_flush", tmp.path());
    let db = RedbBackend::new(sync(&dir)).unwrap();
    // The put after the flush was only buffered and is lost.
    assert_eq!(
        all(&db, Tree::Index),
        vec![
            (b"i".to_vec(), b"flushed".to_vec()),
            (b"j".to_vec(), b"flushed".to_vec())
        ]
    );
    db.close().unwrap();
}

#[test]
fn dropping_the_backend_flushes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = crash_child("drop_flushes", tmp.path());
    let db = RedbBackend::new(sync(&dir)).unwrap();
    assert_eq!(db.get(Tree::Kv, b"k").unwrap(), Some(b"dropped".to_vec()));
    db.close().unwrap();
}

#[test]
fn restore_is_durable_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = crash_child("restore_is_durable", tmp.path());
    let db = RedbBackend::new(sync(&dir)).unwrap();
    assert_eq!(all(&db, Tree::Kv), vec![]);
    assert_eq!(all(&db, Tree::Meta), vec![(b"new".to_vec(), b"2".to_vec())]);
    db.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// In-process behaviour.
// ---------------------------------------------------------------------------------------

#[test]
fn layout_is_marker_plus_single_database_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
    assert_eq!(db.data_file(), dir.join("data.redb"));
    let marker = std::fs::read_to_string(dir.join(MARKER_FILE)).unwrap();
    assert_eq!(marker, "rusd-storage engine=redb layout=1\n");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![MARKER_FILE.to_string(), "data.redb".to_string()]
    );
    let len = std::fs::metadata(dir.join("data.redb")).unwrap().len();
    assert_eq!(db.size().unwrap(), len);
    assert!(len > 0);
    db.close().unwrap();
}

#[test]
fn reopen_keeps_every_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
    for (i, tree) in Tree::ALL.into_iter().enumerate() {
        db.put(tree, b"same-key", format!("value-{i}").as_bytes())
            .unwrap();
        db.put(tree, &[], &[]).unwrap();
    }
    db.delete(Tree::Auth, &[]).unwrap();
    db.close().unwrap();
    drop(db);

    let db = RedbBackend::new(sync(&dir)).unwrap();
    for (i, tree) in Tree::ALL.into_iter().enumerate() {
        let mut expected = vec![(b"same-key".to_vec(), format!("value-{i}").into_bytes())];
        if tree != Tree::Auth {
            expected.insert(0, (vec![], vec![]));
        }
        assert_eq!(all(&db, tree), expected, "tree {tree}");
    }
    db.close().unwrap();
}

#[test]
fn every_call_after_close_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let db = RedbBackend::new(buffered(&dir, Duration::from_millis(5))).unwrap();
    db.put(Tree::Kv, b"a", b"1").unwrap();
    let snap = db.snapshot().unwrap();
    db.close().unwrap();

    fn closed<T: std::fmt::Debug>(r: Result<T, StorageError>) {
        assert!(
            matches!(r, Err(StorageError::Closed)),
            "expected Closed, got {r:?}"
        );
    }
    closed(db.put(Tree::Kv, b"a", b"2"));
    closed(db.get(Tree::Kv, b"a"));
    closed(db.delete(Tree::Kv, b"a"));
    closed(db.write(&WriteBatch::new()));
    let mut b = WriteBatch::new();
    b.put(Tree::Kv, b"x", b"y");
    closed(db.write(&b));
    closed(db.batch_put(Tree::Kv, &[(b"x".to_vec(), b"y".to_vec())]));
    closed(db.batch_delete(Tree::Kv, &[b"x".to_vec()]));
    closed(db.scan(Tree::Kv, b"", b"", 0));
    closed(db.scan(Tree::Kv, b"b", b"a", 0));
    closed(db.scan_prefix(Tree::Kv, b"a", 0));
    closed(db.snapshot());
    closed(db.restore(&snap));
    closed(db.compact(1));
    closed(db.size());
    closed(db.defragment());
    closed(db.flush());
    closed(db.close());
    drop(db);

    // The file was released: the store opens again with its content.
    let db = RedbBackend::new(sync(&dir)).unwrap();
    assert_eq!(db.get(Tree::Kv, b"a").unwrap(), Some(b"1".to_vec()));
    db.close().unwrap();
}

#[test]
fn close_releases_the_file_while_other_handles_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
    let other: Arc<RedbBackend> = Arc::clone(&db);
    db.put(Tree::Kv, b"k", b"v").unwrap();
    // A second open of the same file in this process is refused by redb.
    assert!(matches!(
        RedbBackend::new(buffered(&dir, HOUR)),
        Err(StorageError::Engine { engine: "redb", .. })
    ));
    db.close().unwrap();
    let reopened = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
    assert_eq!(reopened.get(Tree::Kv, b"k").unwrap(), Some(b"v".to_vec()));
    assert!(matches!(
        other.get(Tree::Kv, b"k"),
        Err(StorageError::Closed)
    ));
    drop(other);
    drop(db);
    reopened.close().unwrap();
}

#[test]
fn foreign_directories_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();

    let sled_dir = tmp.path().join("sled-store");
    storage_api::dir::prepare_data_dir(&sled_dir, "sled").unwrap();
    match RedbBackend::new(sync(&sled_dir)) {
        Err(StorageError::WrongEngine {
            expected,
            found,
            path,
        }) => {
            assert_eq!(expected, "redb");
            assert_eq!(found, "sled");
            assert_eq!(path, sled_dir);
        }
        other => panic!("expected WrongEngine, got {other:?}"),
    }
    assert!(!sled_dir.join(DATA_FILE).exists());

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("member.db"), b"etcd").unwrap();
    assert!(matches!(
        RedbBackend::new(sync(&foreign)),
        Err(StorageError::WrongEngine {
            expected: "redb",
            ..
        })
    ));
    assert!(!foreign.join(DATA_FILE).exists());

    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        RedbBackend::new(sync(&file)),
        Err(StorageError::InvalidPath { .. })
    ));

    // A redb store is refused by another engine's marker check.
    let redb_dir = tmp.path().join("redb-store");
    RedbBackend::new(sync(&redb_dir)).unwrap().close().unwrap();
    match storage_api::dir::prepare_data_dir(&redb_dir, "sled") {
        Err(StorageError::WrongEngine { found, .. }) => assert_eq!(found, "redb"),
        other => panic!("expected WrongEngine, got {other:?}"),
    }
}

#[test]
fn a_damaged_database_file_is_an_engine_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    storage_api::dir::prepare_data_dir(&dir, "redb").unwrap();
    std::fs::write(dir.join(DATA_FILE), vec![0xAB; 4096]).unwrap();
    match RedbBackend::new(sync(&dir)) {
        Err(e @ StorageError::Engine { engine: "redb", .. }) => {
            assert!(
                std::error::Error::source(&e).is_some(),
                "source kept: {e:?}"
            );
        }
        other => panic!("expected an engine error, got {other:?}"),
    }
}

fn value(i: u32) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; 2048];
    v[..4].copy_from_slice(&i.to_be_bytes());
    v
}

#[test]
fn defragment_shrinks_the_file_and_keeps_content() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
    const N: u32 = 8000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let pairs: Vec<_> = chunk
            .iter()
            .map(|i| (format!("key-{i:06}").into_bytes(), value(*i)))
            .collect();
        db.batch_put(Tree::Kv, &pairs).unwrap();
    }
    db.put(Tree::Meta, b"consistent_index", b"42").unwrap();
    db.flush().unwrap();
    let full = db.size().unwrap();
    assert!(full > 16 * 1024 * 1024, "file after loading: {full}");

    // Keep every 20th key so that live pages are spread over the whole file.
    let doomed: Vec<Vec<u8>> = (0..N)
        .filter(|i| i % 20 != 0)
        .map(|i| format!("key-{i:06}").into_bytes())
        .collect();
    for chunk in doomed.chunks(1000) {
        db.batch_delete(Tree::Kv, chunk).unwrap();
    }
    db.compact(7).unwrap();
    db.flush().unwrap();
    let before = db.snapshot().unwrap();
    let fragmented = db.size().unwrap();

    db.defragment().unwrap();
    let compacted = db.size().unwrap();
    assert!(
        compacted * 4 < fragmented,
        "defragment should shrink the file: {fragmented} -> {compacted}"
    );
    assert_eq!(db.snapshot().unwrap(), before);
    let kv = all(&db, Tree::Kv);
    assert_eq!(kv.len(), (N / 20) as usize);
    for (n, (k, v)) in kv.iter().enumerate() {
        let i = n as u32 * 20;
        assert_eq!(k, &format!("key-{i:06}").into_bytes());
        assert_eq!(v, &value(i));
    }

    // Still writable, and a second defragment is a harmless no-op.
    db.put(Tree::Kv, b"after", b"defrag").unwrap();
    db.defragment().unwrap();
    assert_eq!(
        db.get(Tree::Kv, b"after").unwrap(),
        Some(b"defrag".to_vec())
    );
    db.close().unwrap();
    drop(db);

    let db = RedbBackend::new(sync(&dir)).unwrap();
    assert_eq!(
        db.get(Tree::Kv, b"after").unwrap(),
        Some(b"defrag".to_vec())
    );
    assert_eq!(all(&db, Tree::Kv).len(), (N / 20) as usize + 1);
    assert_eq!(
        db.get(Tree::Meta, b"consistent_index").unwrap(),
        Some(b"42".to_vec())
    );
    db.close().unwrap();
}

#[test]
fn defragment_runs_alongside_readers_and_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let db = RedbBackend::new(buffered(
        &tmp.path().join("store"),
        Duration::from_millis(10),
    ))
    .unwrap();
    const WRITERS: u32 = 2;
    const PER_WRITER: u32 = 200;
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let db = Arc::clone(&db);
        handles.push(std::thread::spawn(move || {
            for i in 0..PER_WRITER {
                let key = format!("w{w}-{i:04}");
                let mut b = WriteBatch::new();
                b.put(Tree::Kv, key.as_bytes(), value(i))
                    .put(Tree::Index, key.as_bytes(), b"idx");
                db.write(&b).unwrap();
                if i % 10 == 0 {
                    db.delete(Tree::Kv, key.as_bytes()).unwrap();
                }
                // Batches are atomic even while the file is being compacted.
                let snap = db.scan(Tree::Index, b"", b"", 0).unwrap().len();
                assert!(snap >= (i + 1) as usize);
            }
        }));
    }
    {
        let db = Arc::clone(&db);
        handles.push(std::thread::spawn(move || {
            for _ in 0..5 {
                db.defragment().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let kv = all(&db, Tree::Kv);
    assert_eq!(
        kv.len(),
        (WRITERS * (PER_WRITER - PER_WRITER / 10)) as usize
    );
    assert_eq!(all(&db, Tree::Index).len(), (WRITERS * PER_WRITER) as usize);
    db.close().unwrap();
}

#[test]
fn scan_handles_inverted_and_open_ranges_without_touching_redb_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let db = RedbBackend::new(buffered(&tmp.path().join("store"), HOUR)).unwrap();
    for k in [&b""[..], b"a", b"b", b"c", &[0xff, 0xff]] {
        db.put(Tree::Lease, k, k).unwrap();
    }
    assert_eq!(db.scan(Tree::Lease, b"c", b"a", 0).unwrap(), vec![]);
    assert_eq!(db.scan(Tree::Lease, b"b", b"b", 0).unwrap(), vec![]);
    assert_eq!(
        db.scan(Tree::Lease, b"", b"b", 0).unwrap(),
        vec![(vec![], vec![]), (b"a".to_vec(), b"a".to_vec())]
    );
    assert_eq!(
        db.scan(Tree::Lease, b"b", b"", 2).unwrap(),
        vec![
            (b"b".to_vec(), b"b".to_vec()),
            (b"c".to_vec(), b"c".to_vec())
        ]
    );
    assert_eq!(
        db.scan_prefix(Tree::Lease, &[0xff], 0).unwrap(),
        vec![(vec![0xff, 0xff], vec![0xff, 0xff])]
    );
    db.close().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>, Vec<u8>),
    Delete(u8, Vec<u8>),
    Batch(Vec<(bool, u8, Vec<u8>, Vec<u8>)>),
    Flush,
    Defragment,
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop::collection::vec(prop::sample::select(vec![0u8, 1, 0x7f, 0x80, 0xff]), 0..4);
    let val = prop::collection::vec(any::<u8>(), 0..6);
    let tree = 0u8..5;
    prop_oneof![
        6 => (tree.clone(), key.clone(), val.clone()).prop_map(|(t, k, v)| Op::Put(t, k, v)),
        3 => (tree.clone(), key.clone()).prop_map(|(t, k)| Op::Delete(t, k)),
        3 => prop::collection::vec((any::<bool>(), tree, key, val), 0..6).prop_map(Op::Batch),
        1 => Just(Op::Flush),
        1 => Just(Op::Defragment),
    ]
}

fn apply<B: Backend>(db: &B, op: &Op) {
    let tree = |t: u8| Tree::from_id(t).unwrap();
    match op {
        Op::Put(t, k, v) => db.put(tree(*t), k, v).unwrap(),
        Op::Delete(t, k) => db.delete(tree(*t), k).unwrap(),
        Op::Batch(ops) => {
            let mut b = WriteBatch::new();
            for (put, t, k, v) in ops {
                if *put {
                    b.put(tree(*t), k.clone(), v.clone());
                } else {
                    b.delete(tree(*t), k.clone());
                }
            }
            db.write(&b).unwrap();
        }
        Op::Flush => db.flush().unwrap(),
        Op::Defragment => db.defragment().unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// After any sequence of operations (and a reopen) the redb store holds exactly what the
    /// memory reference backend holds: byte-identical snapshots.
    #[test]
    fn matches_the_memory_backend(ops in prop::collection::vec(op(), 0..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
        let model = MemoryBackend::volatile();
        for op in &ops {
            apply(&*db, op);
            apply(&*model, op);
        }
        prop_assert_eq!(db.snapshot().unwrap(), model.snapshot().unwrap());
        db.close().unwrap();
        drop(db);
        let db = RedbBackend::new(buffered(&dir, HOUR)).unwrap();
        prop_assert_eq!(db.snapshot().unwrap(), model.snapshot().unwrap());
        for tree in Tree::ALL {
            for start in [&b""[..], &[0x7f], &[0xff, 0]] {
                for end in [&b""[..], &[0x80], &[0x7f]] {
                    prop_assert_eq!(
                        db.scan(tree, start, end, 0).unwrap(),
                        model.scan(tree, start, end, 0).unwrap()
                    );
                    prop_assert_eq!(
                        db.scan(tree, start, end, 2).unwrap(),
                        model.scan(tree, start, end, 2).unwrap()
                    );
                }
            }
        }
        db.close().unwrap();
    }
}
