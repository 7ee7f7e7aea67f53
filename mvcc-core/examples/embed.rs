//! Embedding rusd's MVCC store: Backend → MvccStore → Compactor.
//!
//! Run with `cargo run -p mvcc-core --example embed` (default engine: sled), or
//! `cargo run -p mvcc-core --no-default-features --features memory --example embed`.

use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{
    CompactionMode, Compactor, Compare, CompareOp, DefaultBackend, MvccError, MvccStore, TxnOp,
};
use storage_api::{Backend, BackendConfig, Durability};

#[tokio::main]
async fn main() -> Result<(), MvccError> {
    let dir = std::env::temp_dir().join(format!("rusd-embed-{}", std::process::id()));

    // 1. The storage engine (the build's default; see mvcc_core::engine for run-time choice).
    let config = BackendConfig::new(&dir).with_durability(Durability::Sync);
    let backend = DefaultBackend::new(config)?;
    println!("engine: {}", <DefaultBackend as Backend>::KIND);

    // 2. The MVCC store (recovers whatever the directory already holds).
    let store = Arc::new(MvccStore::new(backend)?);

    // 3. Automatic compaction: keep the last 10 revisions, checking every 50 ms.
    let compactor = Compactor::new(store.clone(), CompactionMode::Revision(10))
        .with_check_interval(Duration::from_millis(50));
    let task = compactor.run();

    // Use it like etcd.
    let watcher = store.watch(b"config/", b"config0", 0)?;
    let lease = store.lease_grant(0, 30)?;
    let (rev, kv) = store.put(b"config/a", b"1", lease.id)?;
    println!("put config/a at revision {rev}, version {}", kv.version);
    for i in 0..20 {
        store.put(b"config/b", format!("{i}").as_bytes(), 0)?;
    }
    let txn = store.txn(
        &[Compare::value("config/a", CompareOp::Equal, "1")],
        &[
            TxnOp::put("config/a", "2", lease.id),
            TxnOp::range("config/", "config0"),
        ],
        &[],
    )?;
    println!(
        "txn succeeded={} at revision {}",
        txn.succeeded, txn.revision
    );
    let r = store.range(b"config/", b"config0", 0, 1, false)?;
    println!(
        "range: {} of {} keys, more={}",
        r.kvs.len(),
        r.count,
        r.more
    );
    if let Some(resp) = watcher.recv_timeout(Duration::from_secs(1)) {
        println!(
            "watch: revision {} with {} event(s)",
            resp.revision,
            resp.events.len()
        );
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "current revision {}, compacted up to {}",
        store.current_revision(),
        store.compact_revision()
    );
    compactor.stop();
    let _ = task.await;
    store.flush()?;
    store.backend().close()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
