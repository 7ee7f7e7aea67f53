//! The fixed-seed workload run against every engine through the raw [`Backend`] trait.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use storage_api::{
    Backend, BackendConfig, Durability, StorageError, StorageResult, Tree, WriteBatch,
};

use crate::measure::{on_threads, phase, reset_peak_rss, Latencies, PhaseResult};

/// Seed of every random choice, so every engine sees the same operations.
pub const SEED: u64 = 0x5eed_e7cd;

/// Sizes of one run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    /// Profile name (`quick` or `full`).
    pub name: &'static str,
    /// Keys loaded by the put phase.
    pub keys: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Operations of each read phase.
    pub reads: usize,
    /// Durable puts by the single writer.
    pub durable_single: usize,
    /// Durable puts by each of the 64 writers.
    pub durable_each: usize,
}

impl Profile {
    /// A few minutes for every engine together; used by CI.
    pub const QUICK: Profile = Profile {
        name: "quick",
        keys: 20_000,
        value_size: 256,
        reads: 20_000,
        durable_single: 200,
        durable_each: 8,
    };

    /// The README profile: one million keys.
    pub const FULL: Profile = Profile {
        name: "full",
        keys: 1_000_000,
        value_size: 256,
        reads: 1_000_000,
        durable_single: 2_000,
        durable_each: 50,
    };
}

/// The `i`-th key of the load: 16 bytes, etcd-like.
pub fn key(i: usize) -> Vec<u8> {
    format!("k{i:015}").into_bytes()
}

/// The `i`-th key of the batch phase (a separate key space).
pub fn batch_key(i: usize) -> Vec<u8> {
    format!("b{i:015}").into_bytes()
}

/// A deterministic value of `size` bytes for key `i`.
pub fn value(i: usize, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut rng = StdRng::seed_from_u64(i as u64);
    rng.fill(&mut v[..]);
    v
}

/// `0..n` shuffled with the fixed seed.
pub fn shuffled(n: usize, salt: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut StdRng::seed_from_u64(SEED ^ salt));
    v
}

/// Disk usage at three points of the run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskUsage {
    /// After the load and a flush.
    pub after_load: u64,
    /// After deletes and the backend's compaction hook.
    pub after_compaction: u64,
    /// After `defragment`.
    pub after_defragment: u64,
}

/// Everything the raw workload measured on one engine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RawReport {
    /// One entry per phase, in run order.
    pub phases: Vec<PhaseResult>,
    /// Disk usage.
    pub disk: DiskUsage,
}

/// Runs the raw workload on a backend opened by `open` under `dir`.
///
/// `on_phase` is called with each phase name before it starts (progress reporting).
/// `durable_phases` is false for a volatile store, where "durable" has no meaning.
pub fn run_raw<B: Backend>(
    open: &dyn Fn(BackendConfig) -> StorageResult<Arc<B>>,
    dir: &Path,
    cache_mb: u64,
    durability: Durability,
    profile: Profile,
    durable_phases: bool,
    on_phase: &mut dyn FnMut(&str),
) -> StorageResult<RawReport> {
    let cfg = |sub: &str, d: Durability| {
        BackendConfig::new(dir.join(sub))
            .with_cache_size_mb(cache_mb)
            .with_durability(d)
    };
    let db = open(cfg("main", durability))?;
    let mut phases = Vec::new();
    let n = profile.keys;
    let order = shuffled(n, 1);
    let values: Vec<Vec<u8>> = (0..64).map(|i| value(i, profile.value_size)).collect();

    on_phase("put");
    phase::<StorageError>("put", n, &mut phases, |lat| {
        for &i in &order {
            lat.time(|| db.put(Tree::Kv, &key(i), &values[i % 64]))?;
        }
        Ok(n as u64)
    })?;

    on_phase("batch put (10)");
    phase::<StorageError>("batch put (10 keys)", n / 10, &mut phases, |lat| {
        for b in 0..n / 10 {
            let mut batch = WriteBatch::with_capacity(10);
            for j in 0..10 {
                let i = b * 10 + j;
                batch.put(Tree::Kv, batch_key(i), values[i % 64].clone());
            }
            lat.time(|| db.write(&batch))?;
        }
        Ok((n / 10) as u64)
    })?;
    db.flush()?;
    let after_load = db.size()?;

    let reads = shuffled(n, 2);
    let probes: Vec<usize> = (0..profile.reads).map(|j| reads[j % n]).collect();
    on_phase("get");
    phase::<StorageError>("get", probes.len(), &mut phases, |lat| {
        for &i in &probes {
            let got = lat.time(|| db.get(Tree::Kv, &key(i)))?;
            debug_assert!(got.is_some());
        }
        Ok(probes.len() as u64)
    })?;

    on_phase("get (2 threads)");
    phase::<StorageError>("get (2 threads)", probes.len(), &mut phases, |lat| {
        let half = probes.len().div_ceil(2);
        lat.merge(on_threads(2, |t, l| -> StorageResult<()> {
            for &i in probes.iter().skip(t * half).take(half) {
                l.time(|| db.get(Tree::Kv, &key(i)))?;
            }
            Ok(())
        })?);
        Ok(probes.len() as u64)
    })?;

    let range_ops = (profile.reads / 10).max(1);
    on_phase("range (10)");
    phase::<StorageError>("range (10 keys)", range_ops, &mut phases, |lat| {
        for &i in probes.iter().take(range_ops) {
            let got = lat.time(|| db.scan(Tree::Kv, &key(i), &[], 10))?;
            debug_assert!(!got.is_empty());
        }
        Ok(range_ops as u64)
    })?;

    let scan_ops = (profile.reads / 100).max(1);
    on_phase("scan (100)");
    phase::<StorageError>("scan (100 keys)", scan_ops, &mut phases, |lat| {
        for &i in probes.iter().take(scan_ops) {
            lat.time(|| db.scan(Tree::Kv, &key(i), &[], 100))?;
        }
        Ok(scan_ops as u64)
    })?;

    on_phase("snapshot");
    let mut image = Vec::new();
    phase::<StorageError>("snapshot", 1, &mut phases, |lat| {
        lat.time(|| db.snapshot_to(&mut image))?;
        Ok(1)
    })?;
    set_mb(phases.last_mut(), image.len());

    on_phase("restore");
    let target = open(cfg("restore", durability))?;
    phase::<StorageError>("restore", 1, &mut phases, |lat| {
        lat.time(|| target.restore(&image))?;
        Ok(1)
    })?;
    set_mb(phases.last_mut(), image.len());
    target.close()?;
    drop(image);

    let deletes = shuffled(n, 3);
    let del_n = n / 2;
    on_phase("delete");
    phase::<StorageError>("delete", del_n, &mut phases, |lat| {
        for &i in deletes.iter().take(del_n) {
            lat.time(|| db.delete(Tree::Kv, &key(i)))?;
        }
        Ok(del_n as u64)
    })?;
    db.compact(1)?;
    db.flush()?;
    let after_compaction = db.size()?;
    on_phase("defragment");
    phase::<StorageError>("defragment", 1, &mut phases, |lat| {
        lat.time(|| db.defragment())?;
        Ok(1)
    })?;
    db.flush()?;
    let after_defragment = db.size()?;
    on_phase("defragment under load");
    crate::defrag_load::measure(&*db, n, profile.value_size, &mut phases)?;
    db.close()?;

    if durable_phases {
        on_phase("durable put (1 writer)");
        let durable = open(cfg("durable", Durability::Sync))?;
        phase::<StorageError>(
            "durable put (1 writer)",
            profile.durable_single,
            &mut phases,
            |lat| {
                for i in 0..profile.durable_single {
                    lat.time(|| durable.put(Tree::Kv, &key(i), &values[i % 64]))?;
                }
                Ok(profile.durable_single as u64)
            },
        )?;
        on_phase("durable put (64 writers)");
        let total = 64 * profile.durable_each;
        phase::<StorageError>("durable put (64 writers)", total, &mut phases, |lat| {
            lat.merge(on_threads(64, |w, l| -> StorageResult<()> {
                for j in 0..profile.durable_each {
                    let i = 1_000_000_000 + w * profile.durable_each + j;
                    l.time(|| durable.put(Tree::Kv, &key(i), &values[j % 64]))?;
                }
                Ok(())
            })?);
            Ok(total as u64)
        })?;
        durable.close()?;
    }

    Ok(RawReport {
        phases,
        disk: DiskUsage {
            after_load,
            after_compaction,
            after_defragment,
        },
    })
}

fn set_mb(p: Option<&mut PhaseResult>, bytes: usize) {
    if let Some(p) = p {
        p.mb_per_sec = Some(bytes as f64 / 1e6 / p.seconds);
    }
}

/// The in-process `BTreeMap` baseline: the same single-threaded phases on a bare map,
/// the ceiling for in-memory work.
pub fn run_baseline(profile: Profile) -> Vec<PhaseResult> {
    let mut map: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let n = profile.keys;
    let values: Vec<Vec<u8>> = (0..64).map(|i| value(i, profile.value_size)).collect();
    let mut phases = Vec::new();
    let mut run = |name: &str, ops: usize, f: &mut dyn FnMut(&mut Latencies)| {
        reset_peak_rss();
        let mut lat = Latencies::with_capacity(ops);
        let start = Instant::now();
        f(&mut lat);
        phases.push(PhaseResult::new(
            name,
            ops as u64,
            start.elapsed(),
            &mut lat,
        ));
    };
    let order = shuffled(n, 1);
    run("put", n, &mut |lat| {
        for &i in &order {
            lat.time(|| map.insert(key(i), values[i % 64].clone()));
        }
    });
    let reads = shuffled(n, 2);
    let probes: Vec<usize> = (0..profile.reads).map(|j| reads[j % n]).collect();
    run("get", probes.len(), &mut |lat| {
        for &i in &probes {
            lat.time(|| map.get(&key(i)).cloned());
        }
    });
    let range_ops = (profile.reads / 10).max(1);
    run("range (10 keys)", range_ops, &mut |lat| {
        for &i in probes.iter().take(range_ops) {
            lat.time(|| {
                map.range(key(i)..)
                    .take(10)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            });
        }
    });
    let scan_ops = (profile.reads / 100).max(1);
    run("scan (100 keys)", scan_ops, &mut |lat| {
        for &i in probes.iter().take(scan_ops) {
            lat.time(|| {
                map.range(key(i)..)
                    .take(100)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            });
        }
    });
    let deletes = shuffled(n, 3);
    run("delete", n / 2, &mut |lat| {
        for &i in deletes.iter().take(n / 2) {
            lat.time(|| map.remove(&key(i)));
        }
    });
    phases
}

/// A short pause so background flushers settle between engines' phases.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}
