//! Persistence of the path-backed memory engine: exact log and image sizes, recovery after a
//! crash at every byte of the last record, damaged records, and crashes inside a rewrite.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::dir::MARKER_FILE;

fn sync_config(path: &Path) -> BackendConfig {
    BackendConfig::new(path).with_durability(Durability::Sync)
}

fn buffered_config(path: &Path) -> BackendConfig {
    BackendConfig::new(path).with_durability(Durability::Buffered {
        interval: Duration::from_secs(3600),
    })
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn log_len(dir: &Path) -> u64 {
    file_len(&dir.join(MEMORY_LOG_FILE))
}

fn image_len(dir: &Path) -> u64 {
    file_len(&dir.join(MEMORY_IMAGE_FILE))
}

fn be_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().unwrap())
}

fn image_generation(dir: &Path) -> u64 {
    let b = fs::read(dir.join(MEMORY_IMAGE_FILE)).unwrap();
    assert_eq!(&b[..8], b"RUSDMIMG");
    be_u64(&b[8..16])
}

fn log_generation(dir: &Path) -> u64 {
    let b = fs::read(dir.join(MEMORY_LOG_FILE)).unwrap();
    assert_eq!(&b[..8], b"RUSDMLOG");
    be_u64(&b[12..20])
}

/// Log bytes of a put record.
fn put_record(key: usize, value: usize) -> u64 {
    (8 + 2 + 4 + key + 4 + value) as u64
}

/// Log bytes of a delete record.
fn delete_record(key: usize) -> u64 {
    (8 + 2 + 4 + key) as u64
}

/// Bytes of an image with no entries: 16 header + 16 snapshot header + 13 trailer.
const EMPTY_IMAGE: u64 = 16 + 16 + 13;

/// Every tree's pairs.
type Dump = Vec<(Tree, Vec<KvPair>)>;

fn dump(b: &MemoryBackend) -> Dump {
    Tree::ALL
        .iter()
        .map(|t| (*t, b.scan(*t, &[], &[], 0).unwrap()))
        .collect()
}

fn kv(k: &[u8], v: &[u8]) -> KvPair {
    (k.to_vec(), v.to_vec())
}

/// A copy of a store directory whose log is replaced by `log`.
fn copy_with_log(src: &Path, dst: &Path, log: &[u8]) {
    fs::create_dir_all(dst).unwrap();
    for f in [MARKER_FILE, MEMORY_IMAGE_FILE] {
        fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    fs::write(dst.join(MEMORY_LOG_FILE), log).unwrap();
}

#[test]
fn a_new_store_is_an_empty_image_and_log_of_generation_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    assert_eq!(image_len(&dir), EMPTY_IMAGE);
    assert_eq!(log_len(&dir), 24);
    assert_eq!(image_generation(&dir), 1);
    assert_eq!(log_generation(&dir), 1);
    b.close().unwrap();
    assert_eq!(log_len(&dir), 24);
}

#[test]
fn sync_writes_append_exactly_their_own_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    // 200 KiB of content in one batch: one record.
    let pairs: Vec<KvPair> = (0..200u32)
        .map(|i| (format!("key-{i:06}").into_bytes(), vec![7u8; 1024]))
        .collect();
    b.batch_put(Tree::Kv, &pairs).unwrap();
    let batch_record = 8 + 200 * (2 + 4 + 10 + 4 + 1024);
    assert_eq!(log_len(&dir), 24 + batch_record);
    // Fold it into the image: the image now holds the 200 KiB.
    b.defragment().unwrap();
    assert_eq!(log_len(&dir), 24);
    assert_eq!(image_generation(&dir), 2);
    let image = image_len(&dir);
    assert_eq!(image, 16 + 16 + 200 * (2 + 4 + 10 + 4 + 1024) + 13);
    let dir_before = b.size().unwrap();
    // 100 small puts and 50 deletes: each costs its own record, the image is not touched.
    for i in 0..100u32 {
        let before = log_len(&dir);
        b.put(Tree::Lease, format!("small-{i:04}").as_bytes(), &[1u8; 20])
            .unwrap();
        assert_eq!(log_len(&dir) - before, put_record(10, 20), "put {i}");
        assert_eq!(image_len(&dir), image);
    }
    for i in 0..50u32 {
        let before = log_len(&dir);
        b.delete(Tree::Kv, format!("key-{i:06}").as_bytes())
            .unwrap();
        assert_eq!(log_len(&dir) - before, delete_record(10), "delete {i}");
    }
    let mut batch = WriteBatch::new();
    batch.put(Tree::Meta, b"m".to_vec(), b"1".to_vec());
    batch.delete(Tree::Lease, b"small-0000".to_vec());
    let before = log_len(&dir);
    b.write(&batch).unwrap();
    assert_eq!(
        log_len(&dir) - before,
        8 + (2 + 4 + 1 + 4 + 1) + (2 + 4 + 10)
    );
    assert_eq!(
        b.size().unwrap() - dir_before,
        100 * put_record(10, 20) + 50 * delete_record(10) + 8 + 12 + 16
    );
    assert_eq!(image_len(&dir), image);
    let expected = dump(&b);
    b.close().unwrap();
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    assert_eq!(dump(&b), expected);
    assert_eq!(b.scan(Tree::Kv, &[], &[], 0).unwrap().len(), 150);
    assert_eq!(b.scan(Tree::Lease, &[], &[], 0).unwrap().len(), 99);
}

#[test]
fn buffered_writes_stay_in_memory_until_flush_then_make_one_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = MemoryBackend::new(buffered_config(&dir)).unwrap();
    for i in 0..10u32 {
        b.put(Tree::Kv, format!("k{i}").as_bytes(), b"value")
            .unwrap();
    }
    assert_eq!(log_len(&dir), 24);
    // What a crash now would leave: nothing.
    let peek = MemoryBackend::new(buffered_config(&dir)).unwrap();
    assert_eq!(peek.scan(Tree::Kv, &[], &[], 0).unwrap().len(), 0);
    peek.close().unwrap();
    b.flush().unwrap();
    assert_eq!(log_len(&dir), 24 + 8 + 10 * (2 + 4 + 2 + 4 + 5));
    b.flush().unwrap();
    assert_eq!(log_len(&dir), 24 + 8 + 10 * 17);
    b.delete(Tree::Kv, b"k0").unwrap();
    b.close().unwrap();
    assert_eq!(log_len(&dir), 24 + 8 + 10 * 17 + delete_record(2));
    let b = MemoryBackend::new(buffered_config(&dir)).unwrap();
    assert_eq!(b.scan(Tree::Kv, &[], &[], 0).unwrap().len(), 9);
    assert_eq!(b.get(Tree::Kv, b"k0").unwrap(), None);
    assert_eq!(b.get(Tree::Kv, b"k9").unwrap(), Some(b"value".to_vec()));
}

/// Three batches; returns the directory, the content before and after the last batch, and
/// the offset where the last record starts.
fn three_batches(root: &Path) -> (PathBuf, Dump, Dump, u64) {
    let dir = root.join("orig");
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    b.batch_put(Tree::Kv, &[kv(b"a", b"1"), kv(b"b", b"2")])
        .unwrap();
    let mut second = WriteBatch::new();
    second.delete(Tree::Kv, b"a".to_vec());
    second.put(Tree::Meta, b"c".to_vec(), b"3".to_vec());
    b.write(&second).unwrap();
    let before = dump(&b);
    let start = log_len(&dir);
    let mut last = WriteBatch::new();
    last.put(Tree::Index, b"x1".to_vec(), b"v1".to_vec());
    last.put(Tree::Auth, b"x2".to_vec(), b"".to_vec());
    last.delete(Tree::Kv, b"b".to_vec());
    b.write(&last).unwrap();
    let after = dump(&b);
    b.close().unwrap();
    assert_eq!(log_len(&dir) - start, 8 + 14 + 12 + 7);
    (dir, before, after, start)
}

#[test]
fn a_crash_at_every_byte_of_the_last_record_keeps_it_whole_or_drops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, before, after, start) = three_batches(tmp.path());
    let log = fs::read(dir.join(MEMORY_LOG_FILE)).unwrap();
    assert_eq!(
        before[0].1,
        vec![kv(b"b", b"2")],
        "the earlier batches are in the expected content"
    );
    for cut in start..=log.len() as u64 {
        let copy = tmp.path().join(format!("cut-{cut}"));
        copy_with_log(&dir, &copy, &log[..cut as usize]);
        let b = MemoryBackend::new(sync_config(&copy)).unwrap();
        if cut == log.len() as u64 {
            assert_eq!(dump(&b), after, "cut at {cut}");
        } else {
            assert_eq!(dump(&b), before, "cut at {cut}");
        }
        // The torn tail was truncated away; new writes follow the good records.
        let kept = if cut == log.len() as u64 { cut } else { start };
        assert_eq!(log_len(&copy), kept, "cut at {cut}");
        b.put(Tree::Kv, b"new", b"n").unwrap();
        b.close().unwrap();
        assert_eq!(log_len(&copy), kept + put_record(3, 1));
        let b = MemoryBackend::new(sync_config(&copy)).unwrap();
        assert_eq!(b.get(Tree::Kv, b"new").unwrap(), Some(b"n".to_vec()));
        assert_eq!(b.get(Tree::Meta, b"c").unwrap(), Some(b"3".to_vec()));
        b.close().unwrap();
    }
}

#[test]
fn a_bit_flip_anywhere_in_the_tail_record_drops_only_that_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, before, _, start) = three_batches(tmp.path());
    let log = fs::read(dir.join(MEMORY_LOG_FILE)).unwrap();
    for at in start as usize..log.len() {
        let mut bad = log.clone();
        bad[at] ^= 0x01;
        let copy = tmp.path().join(format!("flip-{at}"));
        copy_with_log(&dir, &copy, &bad);
        let b = MemoryBackend::new(sync_config(&copy)).unwrap();
        assert_eq!(dump(&b), before, "flip at {at}");
        assert_eq!(log_len(&copy), start, "flip at {at}");
        b.close().unwrap();
    }
}

#[test]
fn a_damaged_record_followed_by_valid_ones_is_corruption_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _, _, _) = three_batches(tmp.path());
    let log = fs::read(dir.join(MEMORY_LOG_FILE)).unwrap();
    // The value byte of the first record's first put: header 24, record header 8, op 2+4+1+4.
    let mut bad = log.clone();
    bad[24 + 8 + 11] ^= 0x01;
    let copy = tmp.path().join("mid");
    copy_with_log(&dir, &copy, &bad);
    match MemoryBackend::new(sync_config(&copy)) {
        Err(StorageError::Corruption(msg)) => {
            assert!(msg.contains("the record at byte 24 is damaged"), "{msg}")
        }
        other => panic!("expected Corruption, got {other:?}"),
    }
    assert_eq!(fs::read(copy.join(MEMORY_LOG_FILE)).unwrap(), bad);
    // A damaged log header is corruption too.
    let mut bad_header = log.clone();
    bad_header[13] ^= 0x01;
    let copy = tmp.path().join("header");
    copy_with_log(&dir, &copy, &bad_header);
    assert!(matches!(
        MemoryBackend::new(sync_config(&copy)),
        Err(StorageError::Corruption(_))
    ));
}

#[test]
fn the_log_is_folded_into_a_new_image_past_4_mib_and_the_image_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    let mib = vec![5u8; 1 << 20];
    let record = put_record(1, 1 << 20);
    for (i, key) in [b"a", b"b", b"c"].iter().enumerate() {
        b.put(Tree::Kv, *key, &mib).unwrap();
        assert_eq!(log_len(&dir), 24 + (i as u64 + 1) * record);
        assert_eq!(image_generation(&dir), 1);
    }
    // 24 + 4 records = 4 194 404 bytes > 4 MiB: this write triggers the rewrite.
    b.put(Tree::Kv, b"d", &mib).unwrap();
    assert_eq!(log_len(&dir), 24);
    assert_eq!(image_generation(&dir), 2);
    assert_eq!(log_generation(&dir), 2);
    let image = 16 + 16 + 4 * (2 + 4 + 1 + 4 + (1 << 20)) + 13;
    assert_eq!(image_len(&dir), image);
    // The threshold is now the image size (4 194 393 > 4 MiB): four more records pass it.
    for key in [b"e", b"f", b"g"] {
        b.put(Tree::Kv, key, b"small").unwrap();
    }
    assert_eq!(log_len(&dir), 24 + 3 * put_record(1, 5));
    b.close().unwrap();
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    let rows = b.scan(Tree::Kv, &[], &[], 0).unwrap();
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[3], (b"d".to_vec(), mib.clone()));
    assert_eq!(rows[6], kv(b"g", b"small"));
}

#[test]
fn the_rewrite_threshold_is_the_larger_of_the_minimum_and_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    b.set_rewrite_min(0);
    b.put(Tree::Kv, b"a", b"1").unwrap();
    // 24 + 20 = 44 <= 45 (the empty image): no rewrite.
    assert_eq!(log_len(&dir), 44);
    assert_eq!(image_generation(&dir), 1);
    b.put(Tree::Kv, b"b", b"2").unwrap();
    // 64 > 45: rewritten.
    assert_eq!(log_len(&dir), 24);
    assert_eq!(image_generation(&dir), 2);
    assert_eq!(image_len(&dir), 16 + 16 + 2 * 12 + 13);
    b.close().unwrap();
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    assert_eq!(
        b.scan(Tree::Kv, &[], &[], 0).unwrap(),
        vec![kv(b"a", b"1"), kv(b"b", b"2")]
    );
}

#[test]
fn recovery_after_a_crash_between_the_steps_of_a_rewrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    b.put(Tree::Kv, b"a", b"1").unwrap();
    b.put(Tree::Kv, b"b", b"2").unwrap();
    b.delete(Tree::Kv, b"a").unwrap();
    let image_g1 = fs::read(dir.join(MEMORY_IMAGE_FILE)).unwrap();
    let log_g1 = fs::read(dir.join(MEMORY_LOG_FILE)).unwrap();
    let expected = dump(&b);
    b.defragment().unwrap();
    let image_g2 = fs::read(dir.join(MEMORY_IMAGE_FILE)).unwrap();
    let log_g2 = fs::read(dir.join(MEMORY_LOG_FILE)).unwrap();
    assert_eq!(log_g2.len(), 24);
    b.close().unwrap();
    let open = |name: &str, image: &[u8], log: &[u8], temporaries: bool| {
        let d = tmp.path().join(name);
        fs::create_dir_all(&d).unwrap();
        fs::copy(dir.join(MARKER_FILE), d.join(MARKER_FILE)).unwrap();
        fs::write(d.join(MEMORY_IMAGE_FILE), image).unwrap();
        fs::write(d.join(MEMORY_LOG_FILE), log).unwrap();
        if temporaries {
            fs::write(d.join("memory.snapshot.tmp"), &image_g2[..10]).unwrap();
            fs::write(d.join("memory.wal.tmp"), &log_g2[..5]).unwrap();
        }
        (MemoryBackend::new(sync_config(&d)), d)
    };
    // Steps 1-2 done (temporary files written), crash before the image rename.
    let (b, d) = open("before-commit", &image_g1, &log_g1, true);
    let b = b.unwrap();
    assert_eq!(dump(&b), expected);
    assert!(!d.join("memory.snapshot.tmp").exists());
    assert!(!d.join("memory.wal.tmp").exists());
    assert_eq!((image_generation(&d), log_generation(&d)), (1, 1));
    b.close().unwrap();
    // Crash after the image rename, before the log rename: the old log is discarded.
    let (b, d) = open("between-renames", &image_g2, &log_g1, true);
    let b = b.unwrap();
    assert_eq!(dump(&b), expected);
    assert_eq!((image_generation(&d), log_generation(&d)), (2, 2));
    assert_eq!(log_len(&d), 24);
    b.put(Tree::Kv, b"c", b"3").unwrap();
    b.close().unwrap();
    let b = MemoryBackend::new(sync_config(&d)).unwrap();
    assert_eq!(b.get(Tree::Kv, b"c").unwrap(), Some(b"3".to_vec()));
    assert_eq!(b.get(Tree::Kv, b"b").unwrap(), Some(b"2".to_vec()));
    b.close().unwrap();
    // After both renames.
    let (b, _) = open("after", &image_g2, &log_g2, false);
    assert_eq!(dump(&b.unwrap()), expected);
    // A log newer than its image cannot come from a crash: corruption.
    let (b, _) = open("newer-log", &image_g1, &log_g2, false);
    match b {
        Err(StorageError::Corruption(msg)) => assert!(msg.contains("generation 2"), "{msg}"),
        other => panic!("expected Corruption, got {other:?}"),
    }
    // A log without an image too.
    let d = tmp.path().join("no-image");
    fs::create_dir_all(&d).unwrap();
    fs::copy(dir.join(MARKER_FILE), d.join(MARKER_FILE)).unwrap();
    fs::write(d.join(MEMORY_LOG_FILE), &log_g1).unwrap();
    assert!(matches!(
        MemoryBackend::new(sync_config(&d)),
        Err(StorageError::Corruption(_))
    ));
}

#[test]
fn restore_writes_a_new_generation_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let source = MemoryBackend::volatile();
    source.put(Tree::Auth, b"u", b"p").unwrap();
    let snap = source.snapshot().unwrap();
    let b = MemoryBackend::new(buffered_config(&dir)).unwrap();
    b.put(Tree::Kv, b"gone", b"x").unwrap();
    b.restore(&snap).unwrap();
    assert_eq!((image_generation(&dir), log_generation(&dir)), (2, 2));
    assert_eq!(log_len(&dir), 24);
    assert_eq!(image_len(&dir), 16 + snap.len() as u64);
    drop(b);
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    assert_eq!(b.snapshot().unwrap(), snap);
}

#[test]
fn a_store_from_before_the_log_opens_as_generation_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    crate::dir::prepare_data_dir(&dir, "memory").unwrap();
    let source = MemoryBackend::volatile();
    source.put(Tree::Kv, b"old", b"image").unwrap();
    let snap = source.snapshot().unwrap();
    fs::write(dir.join(MEMORY_IMAGE_FILE), &snap).unwrap();
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    assert_eq!(b.get(Tree::Kv, b"old").unwrap(), Some(b"image".to_vec()));
    assert_eq!(log_generation(&dir), 0);
    assert_eq!(fs::read(dir.join(MEMORY_IMAGE_FILE)).unwrap(), snap);
    b.put(Tree::Kv, b"new", b"log").unwrap();
    b.close().unwrap();
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    assert_eq!(b.scan(Tree::Kv, &[], &[], 0).unwrap().len(), 2);
    b.defragment().unwrap();
    assert_eq!((image_generation(&dir), log_generation(&dir)), (1, 1));
    b.close().unwrap();
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    assert_eq!(
        b.scan(Tree::Kv, &[], &[], 0).unwrap(),
        vec![kv(b"new", b"log"), kv(b"old", b"image")]
    );
}

#[test]
fn a_failed_append_applies_nothing_and_an_uncut_log_refuses_writes_until_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    b.put(Tree::Kv, b"a", b"1").unwrap();
    // A handle that can neither append nor truncate: the append and its cut-back both fail.
    let read_only = File::open(dir.join(MEMORY_LOG_FILE)).unwrap();
    let Some(disk) = &b.disk else {
        panic!("a path-backed store has a disk")
    };
    disk.lock().log = read_only;
    match b.put(Tree::Kv, b"b", b"2") {
        Err(StorageError::Io { context, .. }) => {
            assert_eq!(context, "appending to the memory log")
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(b.get(Tree::Kv, b"b").unwrap(), None);
    match b.put(Tree::Kv, b"c", b"3") {
        Err(StorageError::Io { context, .. }) => assert_eq!(
            context,
            "writing the memory log (reopen the store to recover)"
        ),
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(b.get(Tree::Kv, b"c").unwrap(), None);
    assert_eq!(log_len(&dir), 24 + put_record(1, 1));
    b.close().unwrap();
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    assert_eq!(b.scan(Tree::Kv, &[], &[], 0).unwrap(), vec![kv(b"a", b"1")]);
    b.put(Tree::Kv, b"d", b"4").unwrap();
    assert_eq!(log_len(&dir), 24 + 2 * put_record(1, 1));
}

#[test]
fn a_buffered_write_that_would_pass_4_mib_first_writes_the_buffer_as_one_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = MemoryBackend::new(buffered_config(&dir)).unwrap();
    let value = vec![9u8; 1 << 20];
    let op = 2 + 4 + 1 + 4 + (1 << 20);
    // Three 1 MiB ops stay buffered; with a fourth the buffer would hold
    // 4 * 1 048 587 = 4 194 348 > 4 194 304 bytes, so that write first flushes the three.
    for key in [b"a", b"b", b"c"] {
        b.put(Tree::Kv, key, &value).unwrap();
        assert_eq!(log_len(&dir), 24);
    }
    b.put(Tree::Kv, b"d", &value).unwrap();
    assert_eq!(log_len(&dir), 24 + 8 + 3 * op);
    b.close().unwrap();
    assert_eq!(log_len(&dir), 24 + 8 + 3 * op + 8 + op);
    let b = MemoryBackend::new(buffered_config(&dir)).unwrap();
    assert_eq!(b.scan(Tree::Kv, &[], &[], 0).unwrap().len(), 4);
}

#[test]
fn concurrent_sync_writers_across_rewrites_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    // Rewrite whenever the log passes the image: many rewrites under concurrent writers.
    b.set_rewrite_min(0);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let b = &b;
            s.spawn(move || {
                for i in 0..100u8 {
                    let mut batch = WriteBatch::new();
                    batch.put(Tree::Kv, vec![t, i], vec![i; 50]);
                    batch.put(Tree::Index, vec![t, i], vec![t]);
                    if i > 0 {
                        batch.delete(Tree::Index, vec![t, i - 1]);
                    }
                    b.write(&batch).unwrap();
                }
            });
        }
    });
    assert!(image_generation(&dir) > 2, "rewrites happened");
    let expected = dump(&b);
    assert_eq!(expected[0].1.len(), 400);
    assert_eq!(expected[1].1.len(), 4);
    b.close().unwrap();
    let b = MemoryBackend::new(sync_config(&dir)).unwrap();
    assert_eq!(dump(&b), expected);
}
