//! The tokio background compactor (etcd Periodic and Revision modes).

use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{CompactionMode, Compactor, MvccError, MvccStore};
use storage_api::MemoryBackend;

async fn wait_for(store: &MvccStore<MemoryBackend>, compact: i64) {
    for _ in 0..200 {
        if store.compact_revision() == compact {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "compaction revision stayed {} (wanted {compact})",
        store.compact_revision()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_mode_keeps_the_last_n_revisions() {
    let store = Arc::new(MvccStore::new(MemoryBackend::volatile()).unwrap());
    let compactor = Compactor::new(store.clone(), CompactionMode::Revision(5))
        .with_check_interval(Duration::from_millis(10));
    assert_eq!(compactor.mode(), CompactionMode::Revision(5));
    // Nothing to do while current - 5 <= 0.
    let task = compactor.run();
    store.put(b"k", b"v", 0).unwrap(); // 2
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.compact_revision(), -1);
    for _ in 0..10 {
        store.put(b"k", b"v", 0).unwrap();
    }
    // current = 12 → compact(7).
    wait_for(&store, 7).await;
    assert!(matches!(
        store.range(b"k", b"", 6, 0, false),
        Err(MvccError::Compacted)
    ));
    assert_eq!(
        store.range(b"k", b"", 7, 0, false).unwrap().kvs[0].version,
        6
    );
    compactor.stop();
    task.await.unwrap();
    // Stopped: no more compaction.
    for _ in 0..10 {
        store.put(b"k", b"v", 0).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.compact_revision(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_mode_keeps_the_last_period() {
    let store = Arc::new(MvccStore::new(MemoryBackend::volatile()).unwrap());
    let compactor = Compactor::new(
        store.clone(),
        CompactionMode::Periodic(Duration::from_millis(200)),
    );
    assert_eq!(compactor.check_interval(), Duration::from_millis(20));
    for _ in 0..5 {
        store.put(b"k", b"v", 0).unwrap();
    }
    let task = compactor.run();
    // Revision 6 was current more than one period ago at some point → compacted to 6.
    wait_for(&store, 6).await;
    for _ in 0..5 {
        store.put(b"k", b"v", 0).unwrap();
    }
    // The new revisions are younger than the period.
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(store.compact_revision(), 6);
    wait_for(&store, 11).await;
    drop(compactor);
    task.await.unwrap();
}

#[tokio::test]
async fn compact_to_runs_on_the_blocking_pool() {
    let store = Arc::new(MvccStore::new(MemoryBackend::volatile()).unwrap());
    for _ in 0..3 {
        store.put(b"k", b"v", 0).unwrap();
    }
    let compactor = Compactor::new(store.clone(), CompactionMode::Revision(100));
    let stats = compactor.compact_to(3).await.unwrap();
    assert_eq!((stats.revision, stats.rows_deleted), (3, 1));
    assert!(matches!(
        compactor.compact_to(3).await,
        Err(MvccError::Compacted)
    ));
    assert!(matches!(
        compactor.compact_to(9).await,
        Err(MvccError::FutureRevision)
    ));
}
