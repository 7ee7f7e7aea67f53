//! The bad-input table of the storage layer, generic over the engine: used by
//! `storage-api/tests/bad_input.rs` (MemoryBackend) and `mvcc-core/tests/bad_input.rs` (every
//! compiled engine through `AnyBackend`). Depends only on `storage_api` and `tempfile`.
//!
//! Every row names the input, runs it, asserts the exact outcome (error variant, or the
//! documented non-error result) and then asserts that the stored data is byte-for-byte the same
//! snapshot as before the row.
#![allow(dead_code)]

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use storage_api::snapshot::{FORMAT_VERSION, MAGIC};
use storage_api::{
    Backend, BackendConfig, Durability, MemoryBackend, SnapshotError, StorageError, StorageResult,
    Tree, WriteBatch,
};

/// Opens an engine with a configuration.
pub type Opener<'a, B> = &'a dyn Fn(BackendConfig) -> StorageResult<Arc<B>>;

/// A value that occurs exactly once in the populated snapshot, so it can be bit-flipped.
pub const MARK: &[u8] = b"value-to-flip-0123456789";

pub fn config(path: &Path) -> BackendConfig {
    BackendConfig::new(path).with_durability(Durability::Buffered {
        interval: std::time::Duration::from_secs(3600),
    })
}

pub fn populate<B: Backend>(b: &B) {
    b.put(Tree::Kv, b"a", b"1").unwrap();
    b.put(Tree::Kv, b"b", MARK).unwrap();
    b.put(Tree::Kv, b"c", b"3").unwrap();
    b.put(Tree::Meta, b"m", b"meta").unwrap();
    b.put(Tree::Lease, b"l", b"lease").unwrap();
}

/// What a row must produce.
#[derive(Debug)]
pub enum Expect {
    /// Success (documented non-error behaviour).
    Ok,
    /// This snapshot error.
    Snapshot(SnapshotError),
    /// `Snapshot(ChecksumMismatch { .. })` (the checksums depend on the content).
    ChecksumMismatch,
    /// `Snapshot(Malformed(..))`.
    Malformed,
    Closed,
}

fn check<T: Debug>(row: &str, res: StorageResult<T>, expect: &Expect) {
    let ok = match (&res, expect) {
        (Ok(_), Expect::Ok) => true,
        (Err(StorageError::Snapshot(got)), Expect::Snapshot(want)) => got == want,
        (
            Err(StorageError::Snapshot(SnapshotError::ChecksumMismatch { .. })),
            Expect::ChecksumMismatch,
        ) => true,
        (Err(StorageError::Snapshot(SnapshotError::Malformed(_))), Expect::Malformed) => true,
        (Err(StorageError::Closed), Expect::Closed) => true,
        _ => false,
    };
    assert!(ok, "{row}: expected {expect:?}, got {res:?}");
}

fn flipped(snap: &[u8], offset: usize) -> Vec<u8> {
    let mut v = snap.to_vec();
    v[offset] ^= 0x10;
    v
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("marker in snapshot")
}

/// Rows on an open backend: arguments and snapshots. `foreign` is a snapshot of the same content
/// written by another engine (portable: it restores), `native` are files of other engines
/// (not snapshots: rejected).
pub fn bad_argument_rows<B: Backend>(
    engine: &str,
    open: Opener<'_, B>,
    foreign: Option<Vec<u8>>,
    native: &[(&str, Vec<u8>)],
) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("db");
    let b = open(config(&path)).unwrap();
    populate(b.as_ref());
    let good = b.snapshot().unwrap();
    let len = good.len();
    let mut wrong_version = good.clone();
    wrong_version[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_be_bytes());
    let mut flags = good.clone();
    flags[12..16].copy_from_slice(&1u32.to_be_bytes());
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(&good[..8], &MAGIC);

    type Action<'r, B> = Box<dyn Fn(&B) -> StorageResult<()> + 'r>;
    type Row<'r, B> = (&'r str, Action<'r, B>, Expect);
    let restore = |data: Vec<u8>| -> Action<'static, B> { Box::new(move |b: &B| b.restore(&data)) };
    let mut rows: Vec<Row<'_, B>> = vec![
        (
            "empty key is a valid key at this layer (get)",
            Box::new(|b: &B| b.get(Tree::Kv, b"").map(|v| assert_eq!(v, None))),
            Expect::Ok,
        ),
        (
            "scan with end < start is empty, not an error",
            Box::new(|b: &B| {
                b.scan(Tree::Kv, b"c", b"a", 0)
                    .map(|v| assert!(v.is_empty()))
            }),
            Expect::Ok,
        ),
        (
            "scan with end == start is empty",
            Box::new(|b: &B| {
                b.scan(Tree::Kv, b"b", b"b", 0)
                    .map(|v| assert!(v.is_empty()))
            }),
            Expect::Ok,
        ),
        (
            "deleting an absent key succeeds",
            Box::new(|b: &B| b.delete(Tree::Kv, b"absent")),
            Expect::Ok,
        ),
        (
            "empty batch succeeds without effect",
            Box::new(|b: &B| b.write(&WriteBatch::new())),
            Expect::Ok,
        ),
        (
            "garbage snapshot",
            restore(b"this is not a snapshot, just text".to_vec()),
            Expect::Snapshot(SnapshotError::BadMagic),
        ),
        (
            "empty snapshot",
            restore(Vec::new()),
            Expect::Snapshot(SnapshotError::Truncated),
        ),
        (
            "snapshot cut inside the magic",
            restore(good[..5].to_vec()),
            Expect::Snapshot(SnapshotError::Truncated),
        ),
        (
            "snapshot cut inside the header",
            restore(good[..10].to_vec()),
            Expect::Snapshot(SnapshotError::Truncated),
        ),
        (
            "snapshot cut in the middle",
            restore(good[..len / 2].to_vec()),
            Expect::Snapshot(SnapshotError::Truncated),
        ),
        (
            "snapshot missing its last byte",
            restore(good[..len - 1].to_vec()),
            Expect::Snapshot(SnapshotError::Truncated),
        ),
        (
            "bit flipped in a value",
            restore(flipped(&good, find(&good, MARK) + 3)),
            Expect::ChecksumMismatch,
        ),
        (
            "bit flipped in the stored checksum",
            restore(flipped(&good, len - 1)),
            Expect::ChecksumMismatch,
        ),
        (
            "bit flipped in the magic",
            restore(flipped(&good, 0)),
            Expect::Snapshot(SnapshotError::BadMagic),
        ),
        (
            "wrong format version",
            restore(wrong_version),
            Expect::Snapshot(SnapshotError::UnsupportedVersion {
                found: FORMAT_VERSION + 1,
                supported: FORMAT_VERSION,
            }),
        ),
        ("unknown header flags", restore(flags), Expect::Malformed),
        (
            "trailing bytes after the trailer",
            restore(trailing),
            Expect::Malformed,
        ),
    ];
    if let Some(f) = foreign {
        rows.push((
            "portable snapshot of the same content written by another engine restores",
            restore(f),
            Expect::Ok,
        ));
    }
    for (name, data) in native {
        let data = data.clone();
        rows.push((
            name,
            Box::new(move |b: &B| b.restore(&data)),
            Expect::Snapshot(SnapshotError::BadMagic),
        ));
    }
    for (name, action, expect) in &rows {
        let row = format!("{engine}: {name}");
        check(&row, action(b.as_ref()), expect);
        assert_eq!(b.snapshot().unwrap(), good, "{row}: stored data changed");
    }
    // The empty key round-trips (contract: the empty key is valid) and leaves nothing behind.
    b.put(Tree::Kv, b"", b"empty-key").unwrap();
    assert_eq!(b.get(Tree::Kv, b"").unwrap(), Some(b"empty-key".to_vec()));
    b.delete(Tree::Kv, b"").unwrap();
    assert_eq!(
        b.snapshot().unwrap(),
        good,
        "{engine}: empty key round trip"
    );
    b.close().unwrap();
}

/// Rows opening bad paths. `other_engine_dir` creates another engine's store at a path.
/// Every row asserts the variant and that the path's content is unchanged.
pub fn bad_path_rows<B: Backend + Debug>(
    engine: &'static str,
    open: Opener<'_, B>,
    other_engine_dir: &dyn Fn(&Path) -> &'static str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"precious").unwrap();
    let other = tmp.path().join("other");
    let other_name = other_engine_dir(&other);
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("data.txt"), b"not ours").unwrap();

    let listing = |p: &Path| -> Vec<(PathBuf, u64)> {
        let mut v: Vec<(PathBuf, u64)> = walk(p);
        v.sort();
        v
    };
    let other_before = listing(&other);
    let foreign_before = listing(&foreign);

    let invalid = |row: &str, res: StorageResult<Arc<B>>, path: &Path| match res {
        Err(StorageError::InvalidPath { path: p, .. }) => assert_eq!(p, path, "{row}"),
        other => panic!("{engine}: {row}: expected InvalidPath, got {other:?}"),
    };
    let wrong = |row: &str, res: StorageResult<Arc<B>>, path: &Path, found: Option<&str>| match res
    {
        Err(StorageError::WrongEngine {
            path: p,
            expected,
            found: f,
        }) => {
            assert_eq!(p, path, "{row}");
            assert_eq!(expected, engine, "{row}");
            if let Some(found) = found {
                assert_eq!(f, found, "{row}");
            }
        }
        other => panic!("{engine}: {row}: expected WrongEngine, got {other:?}"),
    };

    invalid("path is a file", open(config(&file)), &file);
    // Tests run as root, so permission bits do not make a directory unwritable; a path below a
    // regular file cannot be created by anyone (ENOTDIR), nor can a directory inside /proc.
    let below = file.join("db");
    invalid(
        "path below a file (unwritable)",
        open(config(&below)),
        &below,
    );
    let proc_path = PathBuf::from("/proc/rusd-bad-input-test/db");
    invalid(
        "path inside /proc (unwritable)",
        open(config(&proc_path)),
        &proc_path,
    );
    wrong(
        "another engine's directory",
        open(config(&other)),
        &other,
        Some(other_name),
    );
    wrong(
        "non-empty directory without a rusd marker",
        open(config(&foreign)),
        &foreign,
        None,
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"precious",
        "{engine}: file changed"
    );
    assert!(!proc_path.exists());
    assert_eq!(
        listing(&other),
        other_before,
        "{engine}: other engine's dir changed"
    );
    assert_eq!(
        listing(&foreign),
        foreign_before,
        "{engine}: foreign dir changed"
    );
}

fn walk(p: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        if md.is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push((e.path(), md.len()));
        }
    }
    out
}

/// Every call after `close` returns `Closed`; the data on disk is unchanged (checked by
/// reopening the path).
pub fn closed_rows<B: Backend>(engine: &str, open: Opener<'_, B>) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("db");
    let b = open(config(&path)).unwrap();
    populate(b.as_ref());
    let good = b.snapshot().unwrap();
    b.close().unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Tree::Kv, b"x".to_vec(), b"y".to_vec());
    let pairs = vec![(b"x".to_vec(), b"y".to_vec())];
    let calls: Vec<(&str, StorageResult<()>)> = vec![
        ("put", b.put(Tree::Kv, b"x", b"y")),
        ("get", b.get(Tree::Kv, b"a").map(drop)),
        ("delete", b.delete(Tree::Kv, b"a")),
        ("batch_put", b.batch_put(Tree::Kv, &pairs)),
        ("batch_delete", b.batch_delete(Tree::Kv, &[b"a".to_vec()])),
        ("write", b.write(&batch)),
        ("empty write", b.write(&WriteBatch::new())),
        ("scan", b.scan(Tree::Kv, b"", b"", 0).map(drop)),
        ("scan_prefix", b.scan_prefix(Tree::Kv, b"", 0).map(drop)),
        ("snapshot", b.snapshot().map(drop)),
        ("restore of a valid snapshot", b.restore(&good)),
        ("compact", b.compact(5)),
        ("size", b.size().map(drop)),
        ("defragment", b.defragment()),
        ("flush", b.flush()),
        ("second close", b.close()),
    ];
    for (name, res) in calls {
        check(
            &format!("{engine}: {name} after close"),
            res,
            &Expect::Closed,
        );
    }
    drop(b);
    let again = open(config(&path)).unwrap();
    assert_eq!(
        again.snapshot().unwrap(),
        good,
        "{engine}: data after close"
    );
    again.close().unwrap();
}

/// A MemoryBackend store with `populate`d content, as a portable snapshot.
pub fn memory_snapshot() -> Vec<u8> {
    let m = MemoryBackend::volatile();
    populate(m.as_ref());
    m.snapshot().unwrap()
}
