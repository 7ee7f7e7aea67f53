//! The write contract of `CommitMode::GroupSync` (ack = durable with shared flushes), checked
//! deterministically: a flush is held open (`FaultPlan::hold_nth`) while the test looks at
//! everything a client can observe.
//!
//! * nothing observes a revision before the flush that makes it durable: current revision,
//!   ranges, read-only txns, watch history, live watch events, the compaction revision;
//! * a failed flush fails the store, publishes nothing it covered, refuses later writes;
//! * the deliberately broken `with_early_publish` knob does show a write before its flush
//!   (so the power-loss harness can prove it detects such a store).

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use mvcc_core::{
    CommitMode, Compare, CompareOp, EventKind, MvccError, MvccStore, StoreConfig, TxnOp,
};
use storage_api::fault::{FaultKind, FaultOp, FaultyBackend};
use storage_api::{MemoryBackend, StorageError};

type Store = MvccStore<FaultyBackend<MemoryBackend>>;

fn open(early_publish: bool) -> (Arc<FaultyBackend<MemoryBackend>>, Arc<Store>) {
    let backend = FaultyBackend::wrap(MemoryBackend::volatile());
    let config = StoreConfig::default()
        .with_commit_mode(CommitMode::GroupSync)
        .with_early_publish(early_publish);
    let store = Arc::new(MvccStore::with_config(backend.clone(), config).unwrap());
    (backend, store)
}

#[test]
fn a_group_sync_write_is_invisible_until_its_flush_completes() {
    let (backend, store) = open(false);
    assert_eq!(store.put(b"a", b"1", 0).unwrap().0, 2);
    let watcher = store.watch(b"", &[0], 0).unwrap();

    let hold = backend.plan().hold_nth(FaultOp::Flush, 1);
    let writer = {
        let store = store.clone();
        thread::spawn(move || store.put(b"k", b"v", 0))
    };
    hold.wait_reached();
    // Committed to the backend and the index, not yet durable: invisible.
    assert_eq!(store.current_revision(), 2);
    let r = store.range(b"k", b"", 0, 0, false).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.revision), (0, 0, 2));
    assert!(matches!(
        store.range(b"k", b"", 3, 0, false),
        Err(MvccError::FutureRevision)
    ));
    let t = store
        .txn(
            &[Compare::version("k", CompareOp::Equal, 0)],
            &[TxnOp::range("k", "")],
            &[],
        )
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, 2);
    assert!(store.watch_events(3).unwrap().is_empty());
    assert_eq!(watcher.recv_timeout(Duration::from_millis(50)), None);
    assert!(matches!(store.compact(3), Err(MvccError::FutureRevision)));
    assert!(!writer.is_finished());

    hold.release();
    let (rev, kv) = writer.join().unwrap().unwrap();
    assert_eq!((rev, kv.version, kv.mod_revision), (3, 1, 3));
    assert_eq!(store.current_revision(), 3);
    let r = store.range(b"k", b"", 0, 0, false).unwrap();
    assert_eq!((r.kvs[0].value.as_slice(), r.revision), (&b"v"[..], 3));
    let resp = watcher.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(resp.revision, 3);
    assert_eq!(resp.events.len(), 1);
    assert_eq!(resp.events[0].kind, EventKind::Put);
    assert_eq!(resp.events[0].kv.key, b"k");
    assert_eq!(store.commit_stats(), (2, 2));
}

#[test]
fn a_watcher_created_while_a_write_waits_gets_its_event_after_the_flush() {
    // No watcher exists at commit, so the event is read back from the backend when published.
    let (backend, store) = open(false);
    let hold = backend.plan().hold_nth(FaultOp::Flush, 1);
    let writer = {
        let store = store.clone();
        thread::spawn(move || store.put(b"k", b"v", 0))
    };
    hold.wait_reached();
    let watcher = store.watch(b"k", b"", 0).unwrap();
    assert_eq!(watcher.recv_timeout(Duration::from_millis(50)), None);
    hold.release();
    assert_eq!(writer.join().unwrap().unwrap().0, 2);
    let resp = watcher.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((resp.revision, resp.events.len()), (2, 1));
    assert_eq!(resp.events[0].kv.value, b"v");
}

#[test]
fn a_write_txn_on_an_unflushed_revision_answers_after_it_is_durable() {
    let (backend, store) = open(false);
    let hold = backend.plan().hold_nth(FaultOp::Flush, 1);
    let writer = {
        let store = store.clone();
        thread::spawn(move || store.put(b"k", b"v", 0))
    };
    hold.wait_reached();
    // A write txn builds on the newest committed revision (it sees k), so it must not answer
    // before k is durable.
    let txn = {
        let store = store.clone();
        thread::spawn(move || {
            store.txn(
                &[Compare::version("k", CompareOp::Equal, 1)],
                &[TxnOp::put("k2", "w", 0)],
                &[],
            )
        })
    };
    thread::sleep(Duration::from_millis(50));
    assert!(!txn.is_finished());
    assert_eq!(store.current_revision(), 1);
    hold.release();
    assert_eq!(writer.join().unwrap().unwrap().0, 2);
    let t = txn.join().unwrap().unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, 3);
    assert_eq!(store.current_revision(), 3);
}

#[test]
fn a_failed_group_flush_fails_the_store_and_publishes_nothing() {
    let (backend, store) = open(false);
    assert_eq!(store.put(b"a", b"1", 0).unwrap().0, 2);
    let watcher = store.watch(b"", &[0], 0).unwrap();
    backend
        .plan()
        .fail_nth(FaultOp::Flush, 1, FaultKind::Before);
    match store.put(b"k", b"v", 0) {
        Err(MvccError::Storage(StorageError::Io { .. })) => {}
        other => panic!("expected the flush error, got {other:?}"),
    }
    let reason = store.failure().expect("the store is failed");
    assert_eq!(
        reason,
        "flush failed: I/O error while injected fault in Flush: injected fault"
    );
    // Nothing the failed flush covered is visible; reads keep serving revision 2.
    assert_eq!(store.current_revision(), 2);
    let r = store.range(&[0], &[0], 0, 0, false).unwrap();
    assert_eq!((r.count, r.revision), (1, 2));
    assert_eq!(watcher.recv_timeout(Duration::from_millis(50)), None);
    // Every later mutation is refused with the failure, flush included.
    assert!(matches!(store.put(b"x", b"1", 0), Err(MvccError::Failed(m)) if m == reason));
    assert!(matches!(
        store.delete_range(b"a", b""),
        Err(MvccError::Failed(_))
    ));
    assert!(matches!(
        store.lease_grant(1, 10),
        Err(MvccError::Failed(_))
    ));
    assert!(matches!(store.flush(), Err(MvccError::Failed(_))));
    assert_eq!(store.current_revision(), 2);
}

#[test]
fn the_broken_early_publish_knob_shows_a_write_before_its_flush() {
    let (backend, store) = open(true);
    let hold = backend.plan().hold_nth(FaultOp::Flush, 1);
    let writer = {
        let store = store.clone();
        thread::spawn(move || store.put(b"k", b"v", 0))
    };
    hold.wait_reached();
    assert_eq!(store.current_revision(), 2);
    assert_eq!(store.range(b"k", b"", 0, 0, false).unwrap().count, 1);
    hold.release();
    assert_eq!(writer.join().unwrap().unwrap().0, 2);
}

/// A deletion reads the deleted rows only when `prev_kv` asks for them (an armed read fault
/// must not fire otherwise); lease revoke never reads them.
#[test]
fn deletes_read_values_only_for_prev_kv() {
    use mvcc_core::request::DeleteRange;
    let (backend, store) = open(false);
    for k in ["a", "b", "c"] {
        store.put(k.as_bytes(), b"v", 0).unwrap();
    }
    store.lease_grant(9, 100).unwrap();
    store.put(b"l1", b"v", 9).unwrap();
    store.put(b"l2", b"v", 9).unwrap();

    backend.plan().fail_nth(FaultOp::Read, 1, FaultKind::Before);
    let r = store.kv_delete_range(&DeleteRange::new("a", "c")).unwrap();
    assert_eq!((r.revision, r.deleted, r.prev_kvs.len()), (7, 2, 0));
    assert_eq!(store.lease_revoke(9).unwrap(), 8);
    assert_eq!(backend.plan().injected(), 0, "a row was read");

    let mut with_prev = DeleteRange::new("c", "");
    with_prev.prev_kv = true;
    assert!(matches!(
        store.kv_delete_range(&with_prev),
        Err(MvccError::Storage(StorageError::Io { .. }))
    ));
    assert_eq!(backend.plan().injected(), 1);
    let r = store.kv_delete_range(&with_prev).unwrap();
    assert_eq!((r.revision, r.deleted), (9, 1));
    assert_eq!(r.prev_kvs[0].value, b"v");
    assert_eq!(r.prev_kvs[0].mod_revision, 4);
}

/// Over a `Sync` engine in `CommitMode::Backend` a write that fails after it was applied (its
/// sync may have failed) is never observed: the store fails instead of publishing it.
#[test]
fn an_applied_write_whose_sync_failed_is_not_observed() {
    use storage_api::{Backend, BackendConfig, Durability};
    let dir = tempfile::tempdir().unwrap();
    let config = BackendConfig::new(dir.path().join("db")).with_durability(Durability::Sync);
    let backend = FaultyBackend::wrap(MemoryBackend::new(config).unwrap());
    assert_eq!(backend.durability(), Durability::Sync);
    let store = MvccStore::new(backend.clone()).unwrap();
    assert_eq!(store.put(b"a", b"1", 0).unwrap().0, 2);
    let watcher = store.watch(b"", &[0], 0).unwrap();
    backend.plan().fail_nth(FaultOp::Write, 1, FaultKind::After);
    assert!(matches!(
        store.put(b"k", b"v", 0),
        Err(MvccError::Storage(StorageError::Io { .. }))
    ));
    let reason = store.failure().expect("the store is failed");
    assert!(reason.ends_with("its durability is unknown"), "{reason}");
    assert_eq!(store.current_revision(), 2);
    assert_eq!(store.range(b"k", b"", 0, 0, false).unwrap().count, 0);
    assert_eq!(watcher.recv_timeout(Duration::from_millis(50)), None);
    assert!(matches!(
        store.put(b"x", b"1", 0),
        Err(MvccError::Failed(_))
    ));
    // A buffered engine keeps the lost-acknowledgement rule: applied, published, reported.
    let buffered = FaultyBackend::wrap(MemoryBackend::volatile());
    assert_ne!(buffered.durability(), Durability::Sync);
    let store = MvccStore::new(buffered.clone()).unwrap();
    buffered
        .plan()
        .fail_nth(FaultOp::Write, 1, FaultKind::After);
    assert!(store.put(b"k", b"v", 0).is_err());
    assert_eq!((store.current_revision(), store.failure()), (2, None));
}
