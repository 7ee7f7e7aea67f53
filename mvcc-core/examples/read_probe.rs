//! Read-path probe (docs/READS-PROFILE.md §7): MVCC point gets, range(10) and scan(100) against
//! the raw memory engine, 20 000 shuffled keys of 256-byte values, row cache on.
//!
//! * `cargo run --release -p mvcc-core --example read_probe`: ns per operation, best of 7 rounds.
//! * `read_probe only-<op>` with op = `none`, `warm`, `get`, `get-warm`, `range`, `scan`,
//!   `raw-get`, `raw-range`, `raw-scan`: that operation alone (20 000 ops per round, 2 000 for
//!   the scans; `ROUNDS` rounds, default 10) for `perf record` or `valgrind --tool=callgrind`;
//!   subtract the run of `none` (cold operations) or `warm` (`get-warm`, `range`, `scan`) to get
//!   the operation's own instruction count.
//! * `ROW_BUDGET=<bytes>` sets the row budget (default 16 MiB, every row held); `0` holds none,
//!   so every range row is read from the copy of the current rows when `COPY=1` (the store
//!   then keeps it: `StoreConfig::with_key_ordered_copy`), by revision otherwise.
use std::sync::Arc;
use std::time::Instant;

use mvcc_core::{MvccStore, StoreConfig};
use storage_api::{Backend, MemoryBackend, Tree};

fn key(i: usize) -> Vec<u8> {
    format!("k{i:015}").into_bytes()
}

fn main() {
    let copy = std::env::var("COPY").is_ok_and(|v| v == "1");
    let n = 20_000usize;
    let mut order: Vec<usize> = (0..n).collect();
    let mut s = 88172645463325252u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for i in (1..n).rev() {
        let j = (rnd() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let value = vec![7u8; 256];
    let raw = MemoryBackend::volatile();
    let mvb = MemoryBackend::volatile();
    {
        let st = MvccStore::with_config(
            mvb.clone(),
            StoreConfig::default().with_key_ordered_copy(copy),
        )
        .unwrap();
        for &i in &order {
            raw.put(Tree::Kv, &key(i), &value).unwrap();
            st.put(&key(i), &value, 0).unwrap();
        }
    }
    let mode = std::env::args().nth(1).unwrap_or_default();
    // `ROW_BUDGET=0`: no current rows held, every range row comes from the copy scan.
    let row_budget: usize = std::env::var("ROW_BUDGET")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(16 << 20);
    let keys: Vec<Vec<u8>> = order.iter().map(|&i| key(i)).collect();
    let ends10: Vec<Vec<u8>> = order.iter().map(|&i| key(i + 10)).collect();
    let ends100: Vec<Vec<u8>> = order.iter().map(|&i| key(i + 100)).collect();
    if let Some(op) = mode.strip_prefix("only-") {
        // One operation kind, 10 rounds, for `perf stat` (subtract `only-none`).
        let rounds: usize = std::env::var("ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(10);
        for _ in 0..rounds {
            let st = MvccStore::with_config(
                mvb.clone(),
                StoreConfig::default()
                    .with_row_cache_bytes(row_budget)
                    .with_key_ordered_copy(copy),
            )
            .unwrap();
            if op.contains("warm") || op.contains("range") || op.contains("scan") {
                for k in &keys {
                    std::hint::black_box(st.range(k, &[], 0, 0, false).unwrap());
                }
            }
            let t0 = Instant::now();
            match op {
                "none" | "warm" => {}
                "get" | "get-warm" => {
                    for k in &keys {
                        std::hint::black_box(st.range(k, &[], 0, 0, false).unwrap());
                    }
                }
                "raw-get" => {
                    for k in &keys {
                        std::hint::black_box(raw.get(Tree::Kv, k).unwrap());
                    }
                }
                "range" => {
                    for (k, e) in keys.iter().zip(&ends10) {
                        std::hint::black_box(st.range(k, e, 0, 0, false).unwrap());
                    }
                }
                "scan" => {
                    for (k, e) in keys[..n / 10].iter().zip(&ends100) {
                        std::hint::black_box(st.range(k, e, 0, 0, false).unwrap());
                    }
                }
                "raw-range" => {
                    for k in &keys {
                        std::hint::black_box(raw.scan(Tree::Kv, k, &[], 10).unwrap());
                    }
                }
                "raw-scan" => {
                    for k in &keys[..n / 10] {
                        std::hint::black_box(raw.scan(Tree::Kv, k, &[], 100).unwrap());
                    }
                }
                _ => panic!("mode"),
            }
            eprint!("{:.0} ", t0.elapsed().as_nanos() as f64 / n as f64);
        }
        eprintln!();
        return;
    }
    let mut best = [f64::MAX; 9];
    for _round in 0..7 {
        let st = Arc::new(
            MvccStore::with_config(
                mvb.clone(),
                StoreConfig::default()
                    .with_row_cache_bytes(row_budget)
                    .with_key_ordered_copy(copy),
            )
            .unwrap(),
        );
        let t = |f: &mut dyn FnMut() -> usize| {
            let t0 = Instant::now();
            let ops = f();
            t0.elapsed().as_nanos() as f64 / ops as f64
        };
        let r = [
            t(&mut || {
                for k in &keys {
                    std::hint::black_box(raw.get(Tree::Kv, k).unwrap());
                }
                n
            }),
            t(&mut || {
                for k in &keys {
                    std::hint::black_box(st.range(k, &[], 0, 0, false).unwrap());
                }
                n
            }),
            t(&mut || {
                for k in &keys {
                    std::hint::black_box(st.range(k, &[], 0, 0, false).unwrap());
                }
                n
            }),
            t(&mut || {
                for k in &keys[..n / 10] {
                    std::hint::black_box(raw.scan(Tree::Kv, k, &[], 10).unwrap());
                }
                n / 10
            }),
            t(&mut || {
                for (k, e) in keys[..n / 10].iter().zip(&ends10) {
                    std::hint::black_box(st.range(k, e, 0, 0, false).unwrap());
                }
                n / 10
            }),
            t(&mut || {
                for k in &keys[..n / 100] {
                    std::hint::black_box(raw.scan(Tree::Kv, k, &[], 100).unwrap());
                }
                n / 100
            }),
            t(&mut || {
                for (k, e) in keys[..n / 100].iter().zip(&ends100) {
                    std::hint::black_box(st.range(k, e, 0, 0, false).unwrap());
                }
                n / 100
            }),
            t(&mut || {
                for (k, e) in keys[..n / 10].iter().zip(&ends10) {
                    std::hint::black_box(st.range(k, e, 0, 0, true).unwrap());
                }
                n / 10
            }),
            t(&mut || {
                for (k, e) in keys[..n / 100].iter().zip(&ends100) {
                    std::hint::black_box(st.range(k, e, 0, 0, true).unwrap());
                }
                n / 100
            }),
        ];
        for (b, x) in best.iter_mut().zip(r) {
            *b = b.min(x);
        }
        if mode == "loop" {
            for _ in 0..200 {
                for (k, e) in keys[..n / 10].iter().zip(&ends10) {
                    std::hint::black_box(st.range(k, e, 0, 0, false).unwrap());
                }
            }
        }
    }
    let names = [
        "raw get",
        "mvcc get first",
        "mvcc get warm",
        "raw range10",
        "mvcc range10",
        "raw scan100",
        "mvcc scan100",
        "idx range10",
        "idx scan100",
    ];
    for (nm, b) in names.iter().zip(best) {
        println!("{nm:16} {b:8.0} ns");
    }
    println!(
        "ratios: get first x{:.2} warm x{:.2} range x{:.2} scan x{:.2}",
        best[0] / best[1],
        best[0] / best[2],
        best[3] / best[4],
        best[5] / best[6]
    );
}
