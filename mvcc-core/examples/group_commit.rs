//! Durable put throughput with group commit (`CommitMode::GroupSync` over a buffered engine):
//! 1 writer, then 64 concurrent writers, on each engine named on the command line, each in a
//! fresh temporary directory. Prints puts/s, the 64:1 ratio and writes per flush.
//!
//! ```text
//! cargo run --release -p mvcc-core --features redb --example group_commit -- sled redb
//! cargo run --release -p mvcc-core --features redb,rocksdb --example group_commit -- rocksdb
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use mvcc_core::engine::AnyBackend;
use mvcc_core::{CommitMode, MvccStore, StoreConfig};
use storage_api::{BackendConfig, BackendKind, Durability};

/// Puts per writer: 1 writer does `SINGLE`, each of 64 writers does `EACH`.
const SINGLE: usize = 2_000;
const EACH: usize = 200;

fn run(kind: BackendKind) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = BackendConfig::new(dir.path().join("db")).with_durability(Durability::Buffered {
        interval: Duration::from_secs(1),
    });
    let backend = AnyBackend::open(kind, config)?;
    let store = Arc::new(MvccStore::with_config(
        backend,
        StoreConfig::default().with_commit_mode(CommitMode::GroupSync),
    )?);
    let value = vec![7u8; 256];

    let start = Instant::now();
    for i in 0..SINGLE {
        store.put(format!("single/{i:08}").as_bytes(), &value, 0)?;
    }
    let single = SINGLE as f64 / start.elapsed().as_secs_f64();

    let (writes0, flushes0) = store.commit_stats();
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<(), mvcc_core::MvccError> {
        let handles: Vec<_> = (0..64)
            .map(|w| {
                let store = &store;
                let value = &value;
                scope.spawn(move || -> Result<(), mvcc_core::MvccError> {
                    for j in 0..EACH {
                        store.put(format!("multi/{w:02}/{j:06}").as_bytes(), value, 0)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| mvcc_core::MvccError::InvalidArgument("a writer panicked".into()))??;
        }
        Ok(())
    })?;
    let multi = (64 * EACH) as f64 / start.elapsed().as_secs_f64();
    let (writes1, flushes1) = store.commit_stats();
    let per_flush = (writes1 - writes0) as f64 / (flushes1 - flushes0).max(1) as f64;
    println!(
        "| {kind} | {single:.0} | {multi:.0} | {:.2}x | {per_flush:.1} |",
        multi / single
    );
    store.close()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kinds: Vec<BackendKind> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<BackendKind>())
        .collect::<Result<_, _>>()?;
    println!("| engine | durable puts/s, 1 writer | 64 writers | 64:1 | writes per flush |");
    println!("|---|---:|---:|---:|---:|");
    for kind in kinds {
        run(kind)?;
    }
    Ok(())
}
