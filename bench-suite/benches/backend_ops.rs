//! Criterion benchmarks of the raw `Backend` operations on every compiled engine.
//!
//! `cargo bench -p bench-suite` (add `--features rocksdb` for RocksDB).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mvcc_core::engine::{compiled_backends, AnyBackend};
use storage_api::{Backend, BackendConfig, Durability, Tree, WriteBatch};

const PRELOAD: usize = 10_000;

fn key(i: usize) -> Vec<u8> {
    format!("k{i:015}").into_bytes()
}

fn backend_ops(c: &mut Criterion) {
    let value = vec![0x42u8; 256];
    for kind in compiled_backends() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("temp dir: {e}"),
        };
        let config = BackendConfig::new(dir.path().join(kind.name()))
            .with_cache_size_mb(256)
            .with_durability(Durability::Buffered {
                interval: std::time::Duration::from_millis(100),
            });
        let db = match AnyBackend::open(kind, config) {
            Ok(db) => db,
            Err(e) => panic!("open {kind}: {e}"),
        };
        let mut batch = WriteBatch::new();
        for i in 0..PRELOAD {
            batch.put(Tree::Kv, key(i), value.clone());
        }
        db.write(&batch).expect("preload");

        let mut g = c.benchmark_group(kind.name());
        g.throughput(Throughput::Elements(1));
        let mut i = PRELOAD;
        g.bench_function(BenchmarkId::new("put", 256), |b| {
            b.iter(|| {
                i += 1;
                db.put(Tree::Kv, &key(i), &value).expect("put")
            })
        });
        g.bench_function(BenchmarkId::new("batch_put", 10), |b| {
            b.iter_batched(
                || {
                    let mut batch = WriteBatch::with_capacity(10);
                    for _ in 0..10 {
                        i += 1;
                        batch.put(Tree::Kv, key(i), value.clone());
                    }
                    batch
                },
                |batch| db.write(&batch).expect("write"),
                BatchSize::SmallInput,
            )
        });
        let mut r = 0usize;
        g.bench_function("get", |b| {
            b.iter(|| {
                r = (r + 7919) % PRELOAD;
                db.get(Tree::Kv, &key(r)).expect("get")
            })
        });
        g.bench_function(BenchmarkId::new("range", 10), |b| {
            b.iter(|| {
                r = (r + 7919) % PRELOAD;
                db.scan(Tree::Kv, &key(r), &[], 10).expect("scan")
            })
        });
        g.bench_function(BenchmarkId::new("scan", 100), |b| {
            b.iter(|| {
                r = (r + 7919) % PRELOAD;
                db.scan(Tree::Kv, &key(r), &[], 100).expect("scan")
            })
        });
        g.bench_function("delete", |b| {
            b.iter(|| {
                r = (r + 7919) % PRELOAD;
                db.delete(Tree::Kv, &key(r)).expect("delete")
            })
        });
        g.finish();
        db.close().expect("close");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = backend_ops
}
criterion_main!(benches);
