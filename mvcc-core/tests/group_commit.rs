//! Commit modes: "durable within an interval" (backend buffered) vs "ack = durable" with
//! group commit (shared flushes).

use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{CommitMode, MvccStore, StoreConfig, TxnOp};
use storage_api::{Backend, BackendConfig, Durability, MemoryBackend, Tree};

fn config(dir: &std::path::Path) -> BackendConfig {
    BackendConfig::new(dir.join("db")).with_durability(Durability::Buffered {
        interval: Duration::from_secs(3600),
    })
}

/// What a crash right now would leave: the memory engine's persisted image, read by a second
/// handle on the same directory.
fn durable_rows(dir: &std::path::Path) -> usize {
    let peek = MemoryBackend::new(config(dir)).unwrap();
    let n = peek.scan(Tree::Kv, &[], &[], 0).unwrap().len();
    // Do not let the peek handle write anything back.
    std::mem::forget(peek);
    n
}

#[test]
fn group_sync_acknowledges_only_durable_writes_and_shares_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = MemoryBackend::new(config(dir.path())).unwrap();
    let store = Arc::new(
        MvccStore::with_config(
            backend,
            StoreConfig::default().with_commit_mode(CommitMode::GroupSync),
        )
        .unwrap(),
    );
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = store.clone();
            scope.spawn(move || {
                for i in 0..25 {
                    if i % 5 == 0 {
                        s.txn(&[], &[TxnOp::put(format!("t{t}-{i}"), "v", 0)], &[])
                            .unwrap();
                    } else {
                        s.put(format!("t{t}-{i}").as_bytes(), b"v", 0).unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(durable_rows(dir.path()), 100);
    let (writes, flushes) = store.commit_stats();
    assert_eq!(writes, 100);
    assert!((1..=100).contains(&flushes), "flushes {flushes}");
    // Deletes and lease operations are acknowledged durable too.
    store.lease_grant(1, 60).unwrap();
    store.put(b"leased", b"v", 1).unwrap();
    store.delete_range(b"t0-", b"t0-9").unwrap();
    store.lease_revoke(1).unwrap();
    assert_eq!(durable_rows(dir.path()), 100 + 1 + 24 + 1);
}

#[test]
fn backend_mode_is_durable_within_the_interval_or_on_flush() {
    let dir = tempfile::tempdir().unwrap();
    let backend = MemoryBackend::new(config(dir.path())).unwrap();
    let store = MvccStore::new(backend).unwrap();
    for i in 0..10 {
        store.put(format!("k{i}").as_bytes(), b"v", 0).unwrap();
    }
    assert_eq!(store.commit_stats(), (10, 0));
    assert_eq!(durable_rows(dir.path()), 0);
    store.flush().unwrap();
    assert_eq!(durable_rows(dir.path()), 10);
}
