//! Bad input, one table per layer, on every compiled engine:
//! * the storage layer (`Backend`, through `AnyBackend`): the shared table of
//!   `common/backend_bad_input.rs` (arguments, garbage / truncated / bit-flipped / wrong-version
//!   snapshots, other engines' snapshots and native files, bad paths, every call after close);
//! * the MVCC store: empty and oversized keys and values, empty watch ranges, future and
//!   compacted revisions, invalid transactions, unknown leases, bad snapshots, damaged stored
//!   data, every operation after the backend is closed.
//!
//! Every row asserts the exact error variant (or the documented non-error result) and that the
//! stored data is unchanged: the revisions, every retained revision's key-values, the leases and
//! the backend's snapshot bytes.

#[path = "common/backend_bad_input.rs"]
mod table;

use std::path::Path;
use std::sync::Arc;

use mvcc_core::engine::{compiled_backends, AnyBackend};
use mvcc_core::store::{META_CURRENT_REV, META_FORMAT};
use mvcc_core::{
    Compare, CompareOp, KeyValue, MvccError, MvccStore, RangeRequest, StoreConfig, TxnOp,
};
use storage_api::{Backend, BackendConfig, BackendKind, SnapshotError, StorageError, Tree};

fn opener(
    kind: BackendKind,
) -> impl Fn(BackendConfig) -> storage_api::StorageResult<Arc<AnyBackend>> {
    move |c| AnyBackend::open(kind, c)
}

/// The files of another engine's store (not snapshots), at least 8 bytes long.
fn native_files(kind: BackendKind) -> Vec<(String, Vec<u8>)> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let b = AnyBackend::open(kind, table::config(&dir)).unwrap();
    table::populate(b.as_ref());
    b.flush().unwrap();
    b.close().unwrap();
    let mut out = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let data = std::fs::read(&p).unwrap();
            if data.len() >= 8 && data[..8] != storage_api::snapshot::MAGIC {
                let name = p.strip_prefix(&dir).unwrap().display().to_string();
                out.push((format!("{kind} native file {name} as a snapshot"), data));
            }
        }
    }
    out
}

#[test]
fn backend_bad_arguments_and_snapshots_on_every_engine() {
    for kind in compiled_backends() {
        let tmp = tempfile::tempdir().unwrap();
        let foreign = compiled_backends()
            .into_iter()
            .find(|k| *k != kind)
            .map(|other| {
                let b =
                    AnyBackend::open(other, table::config(&tmp.path().join("foreign"))).unwrap();
                table::populate(b.as_ref());
                let s = b.snapshot().unwrap();
                b.close().unwrap();
                s
            });
        let native: Vec<(String, Vec<u8>)> = compiled_backends()
            .into_iter()
            .filter(|k| *k != kind && *k != BackendKind::Memory)
            .flat_map(native_files)
            .collect();
        let native: Vec<(&str, Vec<u8>)> = native
            .iter()
            .map(|(n, d)| (n.as_str(), d.clone()))
            .collect();
        if kind != BackendKind::Memory {
            assert!(foreign.is_some());
        }
        table::bad_argument_rows(kind.name(), &opener(kind), foreign, &native);
    }
}

#[test]
fn backend_bad_paths_on_every_engine() {
    for kind in compiled_backends() {
        let other = if kind == BackendKind::Memory {
            compiled_backends().into_iter().find(|k| *k != kind)
        } else {
            Some(BackendKind::Memory)
        };
        let Some(other) = other else { continue };
        table::bad_path_rows(kind.name(), &opener(kind), &|p: &Path| {
            let b = AnyBackend::open(other, table::config(p)).unwrap();
            table::populate(b.as_ref());
            b.close().unwrap();
            other.name()
        });
    }
}

#[test]
fn backend_every_call_after_close_on_every_engine() {
    for kind in compiled_backends() {
        table::closed_rows(kind.name(), &opener(kind));
    }
}

// ---------------------------------------------------------------------------------------------
// The MVCC store table.

const MAX_KEY: usize = 16;
const MAX_VALUE: usize = 32;
const MAX_OPS: usize = 4;

type S = MvccStore<AnyBackend>;

#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    current: i64,
    compact: i64,
    reads: Vec<(i64, Vec<KeyValue>)>,
    leases: Vec<(i64, Vec<Vec<u8>>)>,
    backend: Vec<u8>,
}

fn fingerprint(s: &S) -> Fingerprint {
    let (current, compact) = (s.current_revision(), s.compact_revision());
    Fingerprint {
        current,
        compact,
        reads: (compact.max(1)..=current)
            .map(|r| (r, s.range(&[0], &[0], r, 0, false).unwrap().kvs))
            .collect(),
        leases: s
            .leases()
            .into_iter()
            .map(|id| (id, s.lease_time_to_live(id).unwrap().keys))
            .collect(),
        backend: s.backend().snapshot().unwrap(),
    }
}

fn store_config() -> StoreConfig {
    StoreConfig::default()
        .with_max_key_size(MAX_KEY)
        .with_max_value_size(MAX_VALUE)
        .with_max_txn_ops(MAX_OPS)
}

/// A store with history, a compaction (at 4) and a lease (5, on key `l`); current revision 7.
fn populated(kind: BackendKind, path: &Path) -> S {
    let b = AnyBackend::open(kind, table::config(path)).unwrap();
    let s = MvccStore::with_config(b, store_config()).unwrap();
    s.lease_grant(5, 1_000_000).unwrap();
    s.put(b"a", b"1", 0).unwrap(); // 2
    s.put(b"b", b"1", 0).unwrap(); // 3
    s.put(b"a", b"2", 0).unwrap(); // 4
    s.put(b"c", b"1", 0).unwrap(); // 5
    s.put(b"l", b"1", 5).unwrap(); // 6
    s.delete_range(b"b", b"").unwrap(); // 7
    s.compact(4).unwrap();
    assert_eq!((s.current_revision(), s.compact_revision()), (7, 4));
    s
}

type RowFn = Box<dyn Fn(&S) -> (bool, String)>;

macro_rules! row {
    ($name:expr, |$s:ident| $call:expr, $pat:pat $(if $guard:expr)?) => {
        (
            $name,
            Box::new(|$s: &S| {
                let r = $call;
                (matches!(r, $pat $(if $guard)?), format!("{r:?}"))
            }) as RowFn,
        )
    };
}

fn long(n: usize) -> Vec<u8> {
    vec![b'x'; n]
}

fn store_rows() -> Vec<(&'static str, RowFn)> {
    use MvccError as E;
    vec![
        row!(
            "put with an empty key",
            |s| s.put(b"", b"v", 0),
            Err(E::EmptyKey)
        ),
        row!(
            "range with an empty key",
            |s| s.range(b"", b"", 0, 0, false),
            Err(E::EmptyKey)
        ),
        row!(
            "delete_range with an empty key",
            |s| s.delete_range(b"", b"z"),
            Err(E::EmptyKey)
        ),
        row!(
            "put with a key over the maximum",
            |s| s.put(&long(MAX_KEY + 1), b"v", 0),
            Err(E::KeyTooLarge { size, max: MAX_KEY }) if size == MAX_KEY + 1
        ),
        row!(
            "put with a value over the maximum",
            |s| s.put(b"a", &long(MAX_VALUE + 1), 0),
            Err(E::ValueTooLarge { size, max: MAX_VALUE }) if size == MAX_VALUE + 1
        ),
        row!(
            "txn put with a key over the maximum",
            |s| s.txn(&[], &[TxnOp::put(long(MAX_KEY + 1), "v", 0)], &[]),
            Err(E::KeyTooLarge { max: MAX_KEY, .. })
        ),
        row!(
            "txn put with a value over the maximum (failure branch)",
            |s| s.txn(&[], &[], &[TxnOp::put("a", long(MAX_VALUE + 1), 0)]),
            Err(E::ValueTooLarge { max: MAX_VALUE, .. })
        ),
        row!(
            "watch with start == end",
            |s| s.watch(b"b", b"b", 0),
            Err(E::EmptyWatcherRange)
        ),
        row!(
            "watch with start > end",
            |s| s.watch(b"c", b"a", 0),
            Err(E::EmptyWatcherRange)
        ),
        row!(
            "watch with a negative start revision",
            |s| s.watch(b"a", b"", -1),
            Err(E::InvalidArgument(_))
        ),
        row!(
            "range with start > end is an empty result, not an error",
            |s| s.range(b"c", b"a", 0, 0, false),
            Ok(ref r) if r.kvs.is_empty() && r.count == 0 && r.revision == 7
        ),
        row!(
            "range with start == end is an empty result",
            |s| s.range(b"a", b"a", 0, 0, false),
            Ok(ref r) if r.kvs.is_empty() && r.count == 0
        ),
        row!(
            "range at a future revision",
            |s| s.range(b"a", b"", 8, 0, false),
            Err(E::FutureRevision)
        ),
        row!(
            "range far in the future",
            |s| s.range(b"a", b"", i64::MAX, 0, false),
            Err(E::FutureRevision)
        ),
        row!(
            "range at a compacted revision",
            |s| s.range(b"a", b"", 3, 0, false),
            Err(E::Compacted)
        ),
        row!(
            "range at the compaction revision is readable",
            |s| s.range(b"a", b"", 4, 0, false),
            Ok(ref r) if r.kvs.len() == 1 && r.kvs[0].value == b"2"
        ),
        row!(
            "range at revision 0 reads the current revision",
            |s| s.range(&[0], &[0], 0, 0, false),
            Ok(ref r) if r.count == 3 && r.revision == 7
        ),
        row!(
            "range at a negative revision reads the current revision",
            |s| s.range(&[0], &[0], -5, 0, false),
            Ok(ref r) if r.count == 3 && r.revision == 7
        ),
        row!(
            "watch_events from a compacted revision",
            |s| s.watch_events(2),
            Err(E::Compacted)
        ),
        row!(
            "txn with duplicate put keys",
            |s| s.txn(
                &[],
                &[TxnOp::put("a", "1", 0), TxnOp::put("a", "2", 0)],
                &[]
            ),
            Err(E::DuplicateKey)
        ),
        row!(
            "txn putting a key its own delete covers",
            |s| s.txn(
                &[],
                &[TxnOp::delete("a", "c"), TxnOp::put("b", "2", 0)],
                &[]
            ),
            Err(E::DuplicateKey)
        ),
        row!(
            "txn with duplicate puts in a nested txn",
            |s| s.txn(
                &[],
                &[
                    TxnOp::put("a", "1", 0),
                    TxnOp::txn(vec![], vec![TxnOp::put("a", "2", 0)], vec![])
                ],
                &[]
            ),
            Err(E::DuplicateKey)
        ),
        row!(
            "txn with too many ops",
            |s| s.txn(
                &[],
                &(0..=MAX_OPS)
                    .map(|i| TxnOp::put(format!("k{i}"), "v", 0))
                    .collect::<Vec<_>>(),
                &[]
            ),
            Err(E::TooManyOps { max: MAX_OPS })
        ),
        row!(
            "txn with too many compares",
            |s| s.txn(
                &(0..=MAX_OPS)
                    .map(|_| Compare::version("a", CompareOp::Equal, 2))
                    .collect::<Vec<_>>(),
                &[],
                &[]
            ),
            Err(E::TooManyOps { max: MAX_OPS })
        ),
        row!(
            "nested txn with too many ops",
            |s| s.txn(
                &[],
                &[TxnOp::txn(
                    vec![],
                    (0..=MAX_OPS)
                        .map(|i| TxnOp::put(format!("k{i}"), "v", 0))
                        .collect(),
                    vec![]
                )],
                &[]
            ),
            Err(E::TooManyOps { max: MAX_OPS })
        ),
        row!(
            "txn compare with an empty key",
            |s| s.txn(
                &[Compare::version("", CompareOp::Equal, 0)],
                &[TxnOp::put("a", "1", 0)],
                &[]
            ),
            Err(E::EmptyKey)
        ),
        row!(
            "txn range at a future revision",
            |s| s.txn(
                &[],
                &[
                    TxnOp::put("a", "9", 0),
                    TxnOp::Range(RangeRequest {
                        key: b"a".to_vec(),
                        revision: 99,
                        ..RangeRequest::default()
                    })
                ],
                &[]
            ),
            Err(E::FutureRevision)
        ),
        row!(
            "txn range at a compacted revision",
            |s| s.txn(
                &[],
                &[
                    TxnOp::put("a", "9", 0),
                    TxnOp::Range(RangeRequest {
                        key: b"a".to_vec(),
                        revision: 2,
                        ..RangeRequest::default()
                    })
                ],
                &[]
            ),
            Err(E::Compacted)
        ),
        row!(
            "put with an unknown lease",
            |s| s.put(b"a", b"v", 99),
            Err(E::LeaseNotFound(99))
        ),
        row!(
            "txn put with an unknown lease",
            |s| s.txn(&[], &[TxnOp::put("a", "v", 99)], &[]),
            Err(E::LeaseNotFound(99))
        ),
        row!(
            "revoke an unknown lease",
            |s| s.lease_revoke(99),
            Err(E::LeaseNotFound(99))
        ),
        row!(
            "keep-alive of an unknown lease",
            |s| s.lease_keep_alive(99),
            Err(E::LeaseNotFound(99))
        ),
        row!(
            "time-to-live of an unknown lease",
            |s| s.lease_time_to_live(99),
            Err(E::LeaseNotFound(99))
        ),
        row!(
            "grant an existing lease id",
            |s| s.lease_grant(5, 10),
            Err(E::LeaseExists(5))
        ),
        row!(
            "grant a negative lease id",
            |s| s.lease_grant(-1, 10),
            Err(E::InvalidArgument(_))
        ),
        row!(
            "grant a lease with ttl 0",
            |s| s.lease_grant(6, 0),
            Err(E::InvalidArgument(_))
        ),
        row!(
            "compact at a future revision",
            |s| s.compact(8),
            Err(E::FutureRevision)
        ),
        row!(
            "compact at the compaction revision",
            |s| s.compact(4),
            Err(E::Compacted)
        ),
        row!(
            "compact below the compaction revision",
            |s| s.compact(2),
            Err(E::Compacted)
        ),
        row!(
            "restore a garbage snapshot",
            |s| s.backend().restore(b"garbage").map_err(MvccError::from),
            Err(E::Storage(StorageError::Snapshot(SnapshotError::BadMagic)))
        ),
        row!(
            "restore a truncated snapshot",
            |s| {
                let snap = s.backend().snapshot().unwrap();
                s.backend()
                    .restore(&snap[..snap.len() - 3])
                    .map_err(MvccError::from)
            },
            Err(E::Storage(StorageError::Snapshot(SnapshotError::Truncated)))
        ),
    ]
}

#[test]
fn store_bad_input_on_every_engine() {
    for kind in compiled_backends() {
        let tmp = tempfile::tempdir().unwrap();
        let s = populated(kind, &tmp.path().join("db"));
        let before = fingerprint(&s);
        for (name, run) in store_rows() {
            let (ok, got) = run(&s);
            assert!(ok, "{kind}: {name}: unexpected outcome {got}");
            assert_eq!(
                fingerprint(&s),
                before,
                "{kind}: {name}: stored data changed"
            );
        }
        // A watch from a compacted revision is not an error either: one cancellation response
        // carrying the compaction revision (etcd).
        let w = s.watch(b"a", b"", 2).unwrap();
        let resp = w.try_recv().unwrap();
        assert!(resp.canceled);
        assert_eq!(resp.compact_revision, 4);
        s.backend().close().unwrap();
    }
}

/// Damaged stored data is reported as `Corruption` when the store opens, and left as it is.
#[test]
fn store_open_on_damaged_data_on_every_engine() {
    type Damage = (&'static str, fn(&AnyBackend));
    let damages: [Damage; 4] = [
        ("unknown mvcc format version", |b| {
            b.put(Tree::Meta, META_FORMAT, &[3]).unwrap()
        }),
        ("current revision not 8 bytes", |b| {
            b.put(Tree::Meta, META_CURRENT_REV, b"xyz").unwrap()
        }),
        ("undecodable kv row", |b| {
            let key = mvcc_core::Revision::new(3, 0).to_key(false);
            b.put(Tree::Kv, &key, b"\x07garbage").unwrap()
        }),
        ("kv row key that is not a revision", |b| {
            b.put(Tree::Kv, b"\x00\x00\x00\x00\x00\x00\x00\x09zz", b"x")
                .unwrap()
        }),
    ];
    for kind in compiled_backends() {
        for (name, damage) in damages {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("db");
            let s = populated(kind, &path);
            let b = s.backend().clone();
            drop(s);
            damage(&b);
            let damaged = b.snapshot().unwrap();
            match MvccStore::with_config(b.clone(), store_config()) {
                Err(MvccError::Corruption(_)) => {}
                other => panic!("{kind}: {name}: expected Corruption, got {other:?}"),
            }
            assert_eq!(
                b.snapshot().unwrap(),
                damaged,
                "{kind}: {name}: data changed"
            );
            b.close().unwrap();
        }
    }
}

/// Every MVCC operation that reaches the backend after the backend was closed fails with
/// `Storage(Closed)` and changes nothing; the data on disk is intact.
#[test]
fn store_operations_after_close_on_every_engine() {
    use MvccError as E;
    for kind in compiled_backends() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        let s = populated(kind, &path);
        let before = fingerprint(&s);
        s.backend().close().unwrap();
        let rows: Vec<(&str, RowFn)> = vec![
            row!(
                "put",
                |s| s.put(b"a", b"v", 0),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "delete_range of a live key",
                |s| s.delete_range(b"a", b""),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "write txn",
                |s| s.txn(&[], &[TxnOp::put("z", "1", 0)], &[]),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "range of a live key",
                |s| s.range(b"a", b"", 0, 0, false),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "compact",
                |s| s.compact(6),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "lease_grant",
                |s| s.lease_grant(8, 10),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "lease_revoke",
                |s| s.lease_revoke(5),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "watch_events",
                |s| s.watch_events(5),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "flush",
                |s| s.flush(),
                Err(E::Storage(StorageError::Closed))
            ),
        ];
        for (name, run) in rows {
            let (ok, got) = run(&s);
            assert!(ok, "{kind}: {name} after close: {got}");
            assert_eq!(s.current_revision(), 7, "{kind}: {name}");
            assert_eq!(s.compact_revision(), 4, "{kind}: {name}");
        }
        let b = s.backend().clone();
        match MvccStore::with_config(b, store_config()) {
            Err(E::Storage(StorageError::Closed)) => {}
            other => panic!("{kind}: opening a store on a closed backend: {other:?}"),
        }
        drop(s);
        let reopened = MvccStore::with_config(
            AnyBackend::open(kind, table::config(&path)).unwrap(),
            store_config(),
        )
        .unwrap();
        assert_eq!(fingerprint(&reopened), before, "{kind}: data after close");
        reopened.backend().close().unwrap();
    }
}

/// After its backend is closed, `MvccStore` fails every operation with a typed error, also the
/// calls it could serve from memory (reads of absent keys and count-only reads, which need no
/// row, delete-range of absent keys, read-only txns on absent keys, lease keep-alive and
/// time-to-live, watch creation).
#[test]
fn every_store_operation_after_close_fails() {
    use MvccError as E;
    for kind in compiled_backends() {
        let tmp = tempfile::tempdir().unwrap();
        let s = populated(kind, &tmp.path().join("db"));
        s.backend().close().unwrap();
        let rows: Vec<(&str, RowFn)> = vec![
            row!(
                "range of an absent key",
                |s| s.range(b"zz", b"", 0, 0, false),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "count-only range",
                |s| s.range(b"a", b"", 0, 0, true),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "delete_range of an absent key",
                |s| s.delete_range(b"zz", b""),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "read-only txn",
                |s| s.txn(&[], &[TxnOp::range("zz", "")], &[]),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "lease_keep_alive",
                |s| s.lease_keep_alive(5),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "lease_time_to_live",
                |s| s.lease_time_to_live(5),
                Err(E::Storage(StorageError::Closed))
            ),
            row!(
                "watch",
                |s| s.watch(b"a", b"", 0).map(drop),
                Err(E::Storage(StorageError::Closed))
            ),
        ];
        let mut failures = Vec::new();
        for (name, run) in rows {
            let (ok, got) = run(&s);
            if !ok {
                failures.push(format!("{name}: {got}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{kind}: calls that succeed after close: {failures:#?}"
        );
    }
}
