//! Put probe (docs/READS-PROFILE.md §9): `MvccStore::put` on every compiled engine (buffered
//! durability, a data directory in a temporary folder), 20 000 shuffled keys of 256-byte values,
//! without and with apply metadata (a replicated store sets it before every apply, so every
//! write is a batch over the `kv` and `meta` trees), next to the raw engine's `put`. Prints ns
//! per put, best of `ROUNDS` (default 3) rounds, each on a fresh store; `ENGINE=<name>` runs
//! one engine; `COPY=1` runs the stores with the key-ordered copy of the current rows
//! (`StoreConfig::with_key_ordered_copy`).
//!
//! `cargo run --release -p mvcc-core --features redb --example put_probe`
use std::time::{Duration, Instant};

use mvcc_core::engine::{compiled_backends, AnyBackend};
use mvcc_core::{MvccStore, StoreConfig};
use storage_api::{Backend, BackendConfig, Durability, Tree};

fn key(i: usize) -> Vec<u8> {
    format!("k{i:015}").into_bytes()
}

fn main() {
    let n = 20_000usize;
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut order: Vec<usize> = (0..n).collect();
    let mut s = 88172645463325252u64;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let value = vec![7u8; 256];
    // `ENGINE=<name>`: that engine alone.
    let only = std::env::var("ENGINE").ok();
    let copy = std::env::var("COPY").is_ok_and(|v| v == "1");
    for kind in compiled_backends() {
        if only.as_deref().is_some_and(|o| o != kind.to_string()) {
            continue;
        }
        let mut best = [u128::MAX; 3];
        for _ in 0..rounds {
            for (mode, slot) in best.iter_mut().enumerate() {
                let dir = tempfile::tempdir().unwrap();
                let config = BackendConfig::new(dir.path().join("db")).with_durability(
                    Durability::Buffered {
                        interval: Duration::from_millis(100),
                    },
                );
                let backend = AnyBackend::open(kind, config).unwrap();
                let ns = if mode == 0 {
                    let t = Instant::now();
                    for &i in &order {
                        backend.put(Tree::Kv, &key(i), &value).unwrap();
                    }
                    t.elapsed().as_nanos()
                } else {
                    let store = MvccStore::with_config(
                        backend.clone(),
                        StoreConfig::default().with_key_ordered_copy(copy),
                    )
                    .unwrap();
                    let t = Instant::now();
                    for (j, &i) in order.iter().enumerate() {
                        if mode == 2 {
                            store.set_apply_meta((j as u64).to_be_bytes().to_vec());
                        }
                        store.put(&key(i), &value, 0).unwrap();
                    }
                    t.elapsed().as_nanos()
                };
                *slot = (*slot).min(ns / n as u128);
                backend.close().unwrap();
            }
        }
        println!(
            "{kind:<7} raw put {:>6} ns   mvcc put {:>6} ns   mvcc put + apply meta {:>6} ns",
            best[0], best[1], best[2]
        );
    }
}
