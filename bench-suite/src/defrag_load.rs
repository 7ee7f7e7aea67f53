//! Put and range latency while `defragment` runs, next to the same load on an idle store.
//!
//! One writer thread (puts of existing keys) and one reader thread (ranges of 10 keys) run a
//! *paced* load: each issues [`PACED_RATE`] operations per second on a fixed schedule, and an
//! operation's latency is measured from the moment it was due, not from when it started. A
//! call that blocks therefore counts once for every operation that should have run
//! meanwhile (no coordinated omission): a defragment that stops writes for a second shows up
//! as a second of latency on a thousand puts, not on one.
//!
//! [`measure`] runs the load while `defragment` runs (the phase lasts exactly as long as the
//! defragment), then the same load as long again (at least 5 s, at most 60 s) on the idle
//! store, and reports four latency phases plus the defragment's duration.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use storage_api::{Backend, StorageResult, Tree};

use crate::measure::{Latencies, PhaseResult};
use crate::workload::{key, shuffled, value};

/// Operations per second of each load thread (writer and reader).
pub const PACED_RATE: u64 = 1000;
/// Shortest idle comparison run.
const MIN_IDLE: Duration = Duration::from_secs(5);
/// Longest idle comparison run.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Name of the phase: puts while `defragment` runs.
pub const PUT_DURING: &str = "put (paced 1k/s) during defragment";
/// Name of the phase: puts on the idle store.
pub const PUT_IDLE: &str = "put (paced 1k/s) idle";
/// Name of the phase: ranges of 10 keys while `defragment` runs.
pub const RANGE_DURING: &str = "range (10 keys, paced 1k/s) during defragment";
/// Name of the phase: ranges of 10 keys on the idle store.
pub const RANGE_IDLE: &str = "range (10 keys, paced 1k/s) idle";
/// Name of the phase: the defragment that ran beside the load.
pub const DEFRAG_UNDER_LOAD: &str = "defragment beside paced put + range";

/// What [`measure`] found, beyond the phases (for the `defrag-load` table).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DefragLoad {
    /// Seconds the defragment took.
    pub defrag_seconds: f64,
    /// Put latency quantiles in µs during the defragment: p50, p99, max.
    pub put_during_us: [f64; 3],
    /// Put latency quantiles in µs on the idle store: p50, p99, max.
    pub put_idle_us: [f64; 3],
    /// Range latency quantiles in µs during the defragment: p50, p99, max.
    pub range_during_us: [f64; 3],
    /// Range latency quantiles in µs on the idle store: p50, p99, max.
    pub range_idle_us: [f64; 3],
}

fn quantiles(l: &mut Latencies) -> [f64; 3] {
    [l.quantile_us(0.5), l.quantile_us(0.99), l.quantile_us(1.0)]
}

/// Runs `op(i)` every `1 / PACED_RATE` s until `stop` (at least once), recording each latency from the time
/// the operation was due.
fn paced(
    stop: &AtomicBool,
    mut op: impl FnMut(usize) -> StorageResult<()>,
) -> StorageResult<Latencies> {
    let interval = Duration::from_nanos(1_000_000_000 / PACED_RATE);
    let mut lat = Latencies::default();
    let start = Instant::now();
    let mut i = 0usize;
    // At least one operation, even if `stop` is already set.
    while i == 0 || !stop.load(Ordering::Acquire) {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        op(i)?;
        lat.record(due.elapsed());
        i += 1;
    }
    Ok(lat)
}

/// Runs the paced writer and reader over the `keys` keys [`key`]`(0..keys)` until `body`
/// returns; returns (puts, ranges) and `body`'s result.
fn with_load<B: Backend, T>(
    db: &B,
    keys: usize,
    value_size: usize,
    body: impl FnOnce() -> T,
) -> StorageResult<(Latencies, Latencies, T)> {
    let keys = keys.max(1);
    let order = shuffled(keys, 11);
    let probes = shuffled(keys, 12);
    let values: Vec<Vec<u8>> = (0..64).map(|i| value(i + 7, value_size)).collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            paced(&stop, |i| {
                let k = order[i % order.len()];
                db.put(Tree::Kv, &key(k), &values[i % 64])
            })
        });
        let reader = s.spawn(|| {
            paced(&stop, |i| {
                db.scan(Tree::Kv, &key(probes[i % probes.len()]), &[], 10)
                    .map(drop)
            })
        });
        let out = body();
        stop.store(true, Ordering::Release);
        let puts = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        let ranges = reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        Ok((puts, ranges, out))
    })
}

/// Measures put and range latency during `db.defragment()` and on the idle store (see the
/// [module docs](self)); appends the five phases to `phases`.
pub fn measure<B: Backend>(
    db: &B,
    keys: usize,
    value_size: usize,
    phases: &mut Vec<PhaseResult>,
) -> StorageResult<DefragLoad> {
    let (mut put_during, mut range_during, (defrag, took)) =
        with_load(db, keys, value_size, || {
            let t = Instant::now();
            let r = db.defragment();
            (r, t.elapsed())
        })?;
    defrag?;
    let idle = took.clamp(MIN_IDLE, MAX_IDLE);
    let (mut put_idle, mut range_idle, ()) = with_load(db, keys, value_size, || {
        std::thread::sleep(idle);
    })?;
    let result = DefragLoad {
        defrag_seconds: took.as_secs_f64(),
        put_during_us: quantiles(&mut put_during),
        put_idle_us: quantiles(&mut put_idle),
        range_during_us: quantiles(&mut range_during),
        range_idle_us: quantiles(&mut range_idle),
    };
    phases.push(PhaseResult::new(
        DEFRAG_UNDER_LOAD,
        1,
        took,
        &mut Latencies::default(),
    ));
    for (name, lat, elapsed) in [
        (PUT_IDLE, &mut put_idle, idle),
        (PUT_DURING, &mut put_during, took),
        (RANGE_IDLE, &mut range_idle, idle),
        (RANGE_DURING, &mut range_during, took),
    ] {
        let ops = lat.len() as u64;
        phases.push(PhaseResult::new(name, ops, elapsed, lat));
    }
    Ok(result)
}

/// The `rusd-bench defrag-load` table: one row per engine with the defragment's duration
/// and p50 / p99 / max of puts and ranges during it and idle, and the p99 ratios.
pub fn markdown(rows: &[(String, usize, DefragLoad)]) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "| engine | keys | defragment | put p50 / p99 / max idle (µs) | put p50 / p99 / max during (µs) | put p99 ×idle | range p50 / p99 / max idle (µs) | range p50 / p99 / max during (µs) | range p99 ×idle |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let q = |v: [f64; 3]| format!("{:.0} / {:.0} / {:.0}", v[0], v[1], v[2]);
    let ratio = |during: f64, idle: f64| {
        if idle > 0.0 {
            format!("×{:.1}", during / idle)
        } else {
            "–".into()
        }
    };
    for (engine, keys, r) in rows {
        let _ = writeln!(
            out,
            "| {engine} | {keys} | {:.2} s | {} | {} | {} | {} | {} | {} |",
            r.defrag_seconds,
            q(r.put_idle_us),
            q(r.put_during_us),
            ratio(r.put_during_us[1], r.put_idle_us[1]),
            q(r.range_idle_us),
            q(r.range_during_us),
            ratio(r.range_during_us[1], r.range_idle_us[1]),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_api::{BackendConfig, MemoryBackend};

    #[test]
    fn measures_five_phases_with_paced_counts() {
        let db = MemoryBackend::new(BackendConfig::new("")).unwrap();
        for i in 0..100 {
            db.put(Tree::Kv, &key(i), b"v").unwrap();
        }
        let mut phases = Vec::new();
        let r = measure(&*db, 100, 16, &mut phases).unwrap();
        let names: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                DEFRAG_UNDER_LOAD,
                PUT_IDLE,
                PUT_DURING,
                RANGE_IDLE,
                RANGE_DURING
            ]
        );
        // Each load thread runs at least its first operation in each run.
        for p in &phases[1..] {
            assert!(p.ops >= 1, "{}: {} operations", p.name, p.ops);
        }
        assert_eq!(phases[0].ops, 1);
        assert_eq!(r.put_idle_us[1], phases[1].p99_us);
        assert_eq!(db.scan(Tree::Kv, &[], &[], 0).unwrap().len(), 100);
        let table = markdown(&[("memory".into(), 100, r)]);
        assert_eq!(table.lines().count(), 3);
        assert!(table.contains("| memory | 100 |"), "{table}");
    }
}
