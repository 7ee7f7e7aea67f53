//! Behaviour specific to the sled backend: durability mapping and crash durability, the
//! generation layout used by restore and defragment, close/reopen, and directory checks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backend_sled::{SledBackend, CURRENT_FILE, SYNC_MAINTENANCE_INTERVAL_MS};
use storage_api::dir::{dir_size, MARKER_FILE};
use storage_api::{
    Backend, BackendConfig, Durability, KvPair, MemoryBackend, StorageError, Tree, WriteBatch,
};

fn config(path: &Path) -> BackendConfig {
    BackendConfig::new(path)
        .with_cache_size_mb(16)
        .with_durability(Durability::Buffered {
            interval: Duration::from_millis(20),
        })
}

/// Values longer than this are shown as a length and hash, to keep failures readable.
const SHOWN_VALUE_LEN: usize = 64;

fn shorten((k, v): KvPair) -> KvPair {
    if v.len() <= SHOWN_VALUE_LEN {
        return (k, v);
    }
    let hash = v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    (
        k,
        format!("<{} bytes, fnv {hash:016x}>", v.len()).into_bytes(),
    )
}

/// The whole content of every tree, with long values shortened by [`shorten`].
fn dump<B: Backend>(db: &B) -> Vec<(Tree, Vec<KvPair>)> {
    Tree::ALL
        .into_iter()
        .map(|t| {
            (
                t,
                db.scan(t, b"", b"", 0)
                    .unwrap()
                    .into_iter()
                    .map(shorten)
                    .collect(),
            )
        })
        .collect()
}

fn kv(k: &[u8], v: &[u8]) -> KvPair {
    (k.to_vec(), v.to_vec())
}

/// A value larger than sled's inline threshold (segment size / 4), so sled stores it as a
/// separate blob file.
fn big_value() -> Vec<u8> {
    (0..600_000u32).map(|i| (i % 251) as u8).collect()
}

/// Content with something in every tree, an overwrite, a delete and a blob-sized value.
fn fill<B: Backend>(db: &B) {
    let mut batch = WriteBatch::new();
    for t in Tree::ALL {
        batch.put(t, vec![t.id(), 1], vec![b'v', t.id()]);
        batch.put(t, vec![t.id(), 2], b"gone".to_vec());
    }
    db.write(&batch).unwrap();
    db.put(Tree::Kv, b"", b"empty-key").unwrap();
    db.put(Tree::Kv, b"big", &big_value()).unwrap();
    db.put(Tree::Meta, &[0xff, 0x00], b"").unwrap();
    db.put(Tree::Lease, &[3, 1], b"overwritten").unwrap();
    let mut deletes = WriteBatch::new();
    for t in Tree::ALL {
        deletes.delete(t, vec![t.id(), 2]);
    }
    db.write(&deletes).unwrap();
}

fn expected() -> Vec<(Tree, Vec<KvPair>)> {
    vec![
        (
            Tree::Kv,
            vec![
                kv(b"", b"empty-key"),
                kv(&[0, 1], b"v\x00"),
                shorten(kv(b"big", &big_value())),
            ],
        ),
        (Tree::Index, vec![kv(&[1, 1], b"v\x01")]),
        (
            Tree::Meta,
            vec![kv(&[2, 1], b"v\x02"), kv(&[0xff, 0x00], b"")],
        ),
        (Tree::Lease, vec![kv(&[3, 1], b"overwritten")]),
        (Tree::Auth, vec![kv(&[4, 1], b"v\x04")]),
    ]
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn assert_closed<T: std::fmt::Debug>(r: Result<T, StorageError>, what: &str) {
    match r {
        Err(StorageError::Closed) => {}
        other => panic!("{what}: expected Closed, got {other:?}"),
    }
}

#[test]
fn durability_maps_to_sled_flush_interval() {
    assert_eq!(
        SledBackend::flush_every_ms(Durability::Sync),
        Some(SYNC_MAINTENANCE_INTERVAL_MS)
    );
    assert_eq!(SYNC_MAINTENANCE_INTERVAL_MS, 1000);
    assert_eq!(
        SledBackend::flush_every_ms(Durability::Buffered {
            interval: Duration::from_millis(100)
        }),
        Some(100)
    );
    assert_eq!(
        SledBackend::flush_every_ms(Durability::Buffered {
            interval: Duration::from_secs(3)
        }),
        Some(3000)
    );
    assert_eq!(
        SledBackend::flush_every_ms(Durability::Buffered {
            interval: Duration::from_nanos(1)
        }),
        Some(1)
    );
}

#[test]
fn layout_of_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let db = SledBackend::new(config(&path)).unwrap();
    assert_eq!(db.active_dir().unwrap(), path.join("sled"));
    assert_eq!(
        entries(&path),
        vec![MARKER_FILE.to_string(), "sled".to_string()]
    );
    assert_eq!(
        fs::read_to_string(path.join(MARKER_FILE)).unwrap(),
        "rusd-storage engine=sled layout=1\n"
    );
    assert!(path.join("sled").join("db").is_file());
    assert_eq!(db.config(), &config(&path));
    db.put(Tree::Kv, b"a", b"1").unwrap();
    db.flush().unwrap();
    assert_eq!(db.size().unwrap(), dir_size(&path).unwrap());
    assert!(db.size().unwrap() > 0);
    db.close().unwrap();
}

#[test]
fn close_then_every_call_is_closed_and_reopen_sees_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let db = SledBackend::new(config(&path)).unwrap();
    fill(&*db);
    let snap = db.snapshot().unwrap();
    db.close().unwrap();

    assert_closed(db.close(), "second close");
    assert_closed(db.put(Tree::Kv, b"a", b"1"), "put");
    assert_closed(db.get(Tree::Kv, b"a"), "get");
    assert_closed(db.delete(Tree::Kv, b"a"), "delete");
    assert_closed(db.write(&WriteBatch::new()), "empty write");
    let mut batch = WriteBatch::new();
    batch.put(Tree::Kv, b"a".to_vec(), b"1".to_vec());
    batch.put(Tree::Meta, b"a".to_vec(), b"1".to_vec());
    assert_closed(db.write(&batch), "write");
    assert_closed(db.batch_put(Tree::Kv, &[kv(b"a", b"1")]), "batch_put");
    assert_closed(db.batch_delete(Tree::Kv, &[b"a".to_vec()]), "batch_delete");
    assert_closed(db.scan(Tree::Kv, b"", b"", 0), "scan");
    assert_closed(db.scan_prefix(Tree::Kv, b"a", 0), "scan_prefix");
    assert_closed(db.snapshot(), "snapshot");
    assert_closed(db.restore(&snap), "restore");
    assert_closed(db.compact(5), "compact");
    assert_closed(db.size(), "size");
    assert_closed(db.defragment(), "defragment");
    assert_closed(db.flush(), "flush");
    assert_closed(db.active_dir(), "active_dir");

    // Reopening at once in the same process works (sled's file lock is released).
    let again = SledBackend::new(config(&path)).unwrap();
    assert_eq!(dump(&*again), expected());
    assert_eq!(again.snapshot().unwrap(), snap);
    // Dropping without close flushes too.
    again.put(Tree::Auth, b"dropped", b"yes").unwrap();
    drop(again);
    let third = SledBackend::new(config(&path)).unwrap();
    assert_eq!(
        third.get(Tree::Auth, b"dropped").unwrap(),
        Some(b"yes".to_vec())
    );
    third.close().unwrap();
}

#[test]
fn wrong_engine_and_invalid_paths_are_rejected() {
    let dir = tempfile::tempdir().unwrap();

    let redb_dir = dir.path().join("redb-store");
    storage_api::dir::prepare_data_dir(&redb_dir, "redb").unwrap();
    match SledBackend::new(config(&redb_dir)) {
        Err(StorageError::WrongEngine {
            path,
            expected,
            found,
        }) => {
            assert_eq!(path, redb_dir);
            assert_eq!(expected, "sled");
            assert_eq!(found, "redb");
        }
        other => panic!("expected WrongEngine, got {other:?}"),
    }
    // Nothing was created in the other engine's directory.
    assert_eq!(entries(&redb_dir), vec![MARKER_FILE.to_string()]);

    let foreign = dir.path().join("foreign");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("member.db"), b"etcd").unwrap();
    match SledBackend::new(config(&foreign)) {
        Err(StorageError::WrongEngine {
            expected, found, ..
        }) => {
            assert_eq!(expected, "sled");
            assert_eq!(found, "a non-empty directory without a rusd marker");
        }
        other => panic!("expected WrongEngine, got {other:?}"),
    }
    assert_eq!(entries(&foreign), vec!["member.db".to_string()]);

    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(
        SledBackend::new(config(&file)),
        Err(StorageError::InvalidPath { .. })
    ));
    assert!(matches!(
        SledBackend::new(config(Path::new(""))),
        Err(StorageError::InvalidPath { .. })
    ));
}

#[test]
fn defragment_rebuilds_into_a_new_generation_and_keeps_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let db = SledBackend::new(config(&path)).unwrap();
    fill(&*db);
    // Churn so that there is garbage to drop.
    for round in 0..5u8 {
        let pairs: Vec<KvPair> = (0..200u16)
            .map(|i| (format!("churn{i:04}").into_bytes(), vec![round; 300]))
            .collect();
        db.batch_put(Tree::Index, &pairs).unwrap();
        let keys: Vec<Vec<u8>> = pairs.into_iter().map(|(k, _)| k).collect();
        db.batch_delete(Tree::Index, &keys).unwrap();
    }
    let before = db.snapshot().unwrap();
    assert_eq!(dump(&*db), expected());

    db.defragment().unwrap();
    assert_eq!(db.active_dir().unwrap(), path.join("sled.1"));
    assert_eq!(
        fs::read_to_string(path.join(CURRENT_FILE)).unwrap(),
        "sled.1\n"
    );
    assert_eq!(
        entries(&path),
        vec![
            MARKER_FILE.to_string(),
            CURRENT_FILE.to_string(),
            "sled.1".to_string()
        ]
    );
    assert_eq!(dump(&*db), expected());
    assert_eq!(db.snapshot().unwrap(), before);

    // The store stays fully usable, and a second defragment moves on to generation 2.
    db.put(Tree::Kv, b"after", b"defrag").unwrap();
    db.defragment().unwrap();
    assert_eq!(db.active_dir().unwrap(), path.join("sled.2"));
    assert_eq!(
        db.get(Tree::Kv, b"after").unwrap(),
        Some(b"defrag".to_vec())
    );
    db.compact(10).unwrap();
    db.close().unwrap();

    let again = SledBackend::new(config(&path)).unwrap();
    assert_eq!(again.active_dir().unwrap(), path.join("sled.2"));
    assert_eq!(
        again.get(Tree::Kv, b"after").unwrap(),
        Some(b"defrag".to_vec())
    );
    again.delete(Tree::Kv, b"after").unwrap();
    assert_eq!(dump(&*again), expected());
    again.close().unwrap();
}

#[test]
fn restore_switches_generation_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let source = MemoryBackend::volatile();
    source.put(Tree::Lease, b"l", b"1").unwrap();
    source.put(Tree::Auth, b"", b"root").unwrap();
    let snap = source.snapshot().unwrap();

    let db = SledBackend::new(config(&path)).unwrap();
    fill(&*db);
    db.restore(&snap).unwrap();
    assert_eq!(db.active_dir().unwrap(), path.join("sled.1"));
    assert!(!path.join("sled").exists());
    let restored = vec![
        (Tree::Kv, vec![]),
        (Tree::Index, vec![]),
        (Tree::Meta, vec![]),
        (Tree::Lease, vec![kv(b"l", b"1")]),
        (Tree::Auth, vec![kv(b"", b"root")]),
    ];
    assert_eq!(dump(&*db), restored);
    assert_eq!(db.snapshot().unwrap(), snap);

    // A rejected snapshot changes nothing, not even the generation.
    assert!(matches!(
        db.restore(b"RUSDSNAP-garbage"),
        Err(StorageError::Snapshot(_))
    ));
    assert_eq!(db.active_dir().unwrap(), path.join("sled.1"));
    assert_eq!(dump(&*db), restored);
    // Do not close: dropping must leave the switch durable as well.
    drop(db);

    let again = SledBackend::new(config(&path)).unwrap();
    assert_eq!(again.active_dir().unwrap(), path.join("sled.1"));
    assert_eq!(dump(&*again), restored);
    again.close().unwrap();
}

#[test]
fn stale_generations_from_a_crash_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let db = SledBackend::new(config(&path)).unwrap();
    fill(&*db);
    db.close().unwrap();
    // What a crash in the middle of a defragment/restore leaves behind.
    fs::create_dir_all(path.join("sled.4").join("blobs")).unwrap();
    fs::write(path.join("sled.4").join("db"), b"half-built").unwrap();
    fs::write(path.join(format!("{CURRENT_FILE}.tmp")), b"sled.4\n").unwrap();
    // Not ours: left alone.
    fs::write(path.join("notes.txt"), b"keep").unwrap();

    let db = SledBackend::new(config(&path)).unwrap();
    assert_eq!(db.active_dir().unwrap(), path.join("sled"));
    assert_eq!(
        entries(&path),
        vec![
            MARKER_FILE.to_string(),
            "notes.txt".to_string(),
            "sled".to_string()
        ]
    );
    assert_eq!(dump(&*db), expected());
    db.close().unwrap();
}

#[test]
fn a_current_file_naming_a_missing_generation_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    SledBackend::new(config(&path)).unwrap().close().unwrap();
    fs::write(path.join(CURRENT_FILE), b"sled.9\n").unwrap();
    assert!(matches!(
        SledBackend::new(config(&path)),
        Err(StorageError::Corruption(_))
    ));
    fs::write(path.join(CURRENT_FILE), b"../elsewhere\n").unwrap();
    assert!(matches!(
        SledBackend::new(config(&path)),
        Err(StorageError::Corruption(_))
    ));
    // The live generation was not touched by the failed opens.
    fs::remove_file(path.join(CURRENT_FILE)).unwrap();
    SledBackend::new(config(&path)).unwrap().close().unwrap();
}

#[test]
fn sync_mode_writes_blobs_and_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let cfg = config(&path).with_durability(Durability::Sync);
    let db = SledBackend::new(cfg.clone()).unwrap();
    fill(&*db);
    let blobs = path.join("sled").join("blobs");
    assert!(
        fs::read_dir(&blobs).unwrap().count() >= 1,
        "the big value should live in a blob file"
    );
    drop(db);
    let again = SledBackend::new(cfg).unwrap();
    assert_eq!(dump(&*again), expected());
    again.close().unwrap();
}

#[test]
fn scans_and_snapshots_never_see_half_of_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = SledBackend::new(config(&dir.path().join("store"))).unwrap();
    // Enough keys between the two watched ones for a scan to span many sled leaves.
    let filler: Vec<KvPair> = (0..3000u32)
        .map(|i| (format!("m{i:05}").into_bytes(), vec![7u8; 64]))
        .collect();
    db.batch_put(Tree::Kv, &filler).unwrap();
    let gen = |g: u32| g.to_be_bytes().to_vec();
    db.put(Tree::Kv, b"a", &gen(0)).unwrap();
    db.put(Tree::Kv, b"z", &gen(0)).unwrap();
    let rounds = 400u32;
    let stop = Arc::new(AtomicBool::new(false));
    // Writer: generation g goes to "a" first, then to "z", then to meta+lease in one batch.
    let writer = {
        let db = db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            for g in 1..=rounds {
                db.put(Tree::Kv, b"a", &gen(g)).unwrap();
                db.put(Tree::Kv, b"z", &gen(g)).unwrap();
                let mut b = WriteBatch::new();
                b.put(Tree::Meta, b"gen".to_vec(), gen(g));
                b.put(Tree::Lease, b"gen".to_vec(), gen(g));
                db.write(&b).unwrap();
            }
            stop.store(true, Ordering::Release);
        })
    };
    let value = |pairs: &[KvPair], key: &[u8]| {
        let (_, v) = pairs.iter().find(|(k, _)| k == key).unwrap();
        u32::from_be_bytes(v.as_slice().try_into().unwrap())
    };
    let mut checks = 0;
    while !stop.load(Ordering::Acquire) || checks < 3 {
        // A point-in-time view never shows "z" newer than "a" ("a" is written first).
        let pairs = db.scan(Tree::Kv, b"", b"", 0).unwrap();
        assert_eq!(pairs.len(), 3002);
        let (a, z) = (value(&pairs, b"a"), value(&pairs, b"z"));
        assert!(z <= a, "torn scan: a = {a}, z = {z}");
        let snap = db.snapshot().unwrap();
        let mem = MemoryBackend::volatile();
        mem.restore(&snap).unwrap();
        let pairs = mem.scan(Tree::Kv, b"", b"", 0).unwrap();
        let (a, z) = (value(&pairs, b"a"), value(&pairs, b"z"));
        assert!(z <= a, "torn snapshot: a = {a}, z = {z}");
        assert_eq!(
            mem.get(Tree::Meta, b"gen").unwrap(),
            mem.get(Tree::Lease, b"gen").unwrap()
        );
        checks += 1;
    }
    writer.join().unwrap();
    assert_eq!(db.get(Tree::Kv, b"a").unwrap(), Some(gen(rounds)));
    assert_eq!(db.get(Tree::Kv, b"z").unwrap(), Some(gen(rounds)));
    db.close().unwrap();
}

/// Runs the named test of this binary in a child process with `RUSD_SLED_CHILD` set to
/// `path`; the child writes and then aborts without closing, flushing or dropping.
fn run_child(test: &str, path: &Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("RUSD_SLED_CHILD", path)
        .status()
        .unwrap();
    // SIGABRT: the child reached `abort()` after its writes were acknowledged.
    assert!(!status.success(), "child should have aborted: {status:?}");
}

fn child_path() -> Option<PathBuf> {
    std::env::var_os("RUSD_SLED_CHILD").map(PathBuf::from)
}

#[test]
fn sync_writes_survive_a_process_crash() {
    if let Some(path) = child_path() {
        let db = SledBackend::new(config(&path).with_durability(Durability::Sync)).unwrap();
        fill(&*db);
        db.put(Tree::Meta, b"last", b"acknowledged").unwrap();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    run_child("sync_writes_survive_a_process_crash", &path);
    let db = SledBackend::new(config(&path)).unwrap();
    assert_eq!(
        db.get(Tree::Meta, b"last").unwrap(),
        Some(b"acknowledged".to_vec())
    );
    db.delete(Tree::Meta, b"last").unwrap();
    assert_eq!(dump(&*db), expected());
    db.close().unwrap();
}

#[test]
fn buffered_writes_survive_a_process_crash_after_flush() {
    if let Some(path) = child_path() {
        let cfg = config(&path).with_durability(Durability::Buffered {
            interval: Duration::from_secs(3600),
        });
        let db = SledBackend::new(cfg).unwrap();
        fill(&*db);
        db.flush().unwrap();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    run_child("buffered_writes_survive_a_process_crash_after_flush", &path);
    let db = SledBackend::new(config(&path)).unwrap();
    assert_eq!(dump(&*db), expected());
    db.close().unwrap();
}

#[test]
fn restored_generation_survives_a_process_crash() {
    if let Some(path) = child_path() {
        let db = SledBackend::new(config(&path)).unwrap();
        db.put(Tree::Kv, b"old", b"data").unwrap();
        let mem = MemoryBackend::volatile();
        fill(&*mem);
        db.restore(&mem.snapshot().unwrap()).unwrap();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    run_child("restored_generation_survives_a_process_crash", &path);
    let db = SledBackend::new(config(&path)).unwrap();
    assert_eq!(db.active_dir().unwrap(), path.join("sled.1"));
    assert_eq!(dump(&*db), expected());
    db.close().unwrap();
}
