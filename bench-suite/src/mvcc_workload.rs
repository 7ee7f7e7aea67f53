//! The same workload through `mvcc_core::MvccStore`, so every MVCC figure can be set
//! next to its raw `Backend` figure.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{CommitMode, Compare, CompareOp, MvccError, MvccStore, StoreConfig, TxnOp};
use storage_api::{Backend, BackendConfig, Durability, StorageResult};

use crate::measure::{on_threads, phase, PhaseResult};
use crate::workload::{key, shuffled, value, Profile};

type Open<'a, B> = &'a dyn Fn(BackendConfig) -> StorageResult<Arc<B>>;

/// The share of the cache budget given to the store's row cache (the engine gets the rest), so
/// the MVCC phases use the same memory budget as the raw ones.
pub const ROW_CACHE_SHARE: u64 = 4;

/// `(engine cache MiB, row cache bytes)` for a budget of `cache_mb` MiB.
pub fn split_cache(cache_mb: u64) -> (u64, usize) {
    let row_mb = cache_mb / ROW_CACHE_SHARE;
    (
        cache_mb - row_mb,
        usize::try_from(row_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
    )
}

/// Runs the MVCC phases; phase names match the raw ones where the operation is the same.
/// `durable_phases` is false for a volatile store; `key_ordered_copy` runs the stores with
/// `StoreConfig::with_key_ordered_copy`.
#[allow(clippy::too_many_arguments)]
pub fn run_mvcc<B: Backend>(
    open: Open<'_, B>,
    dir: &Path,
    cache_mb: u64,
    durability: Durability,
    profile: Profile,
    durable_phases: bool,
    key_ordered_copy: bool,
    on_phase: &mut dyn FnMut(&str),
) -> Result<Vec<PhaseResult>, MvccError> {
    let (engine_mb, row_cache) = split_cache(cache_mb);
    let cfg = |sub: &str, d: Durability| {
        BackendConfig::new(dir.join(sub))
            .with_cache_size_mb(engine_mb)
            .with_durability(d)
    };
    let store = Arc::new(MvccStore::with_config(
        open(cfg("mvcc", durability))?,
        StoreConfig::default()
            .with_row_cache_bytes(row_cache)
            .with_key_ordered_copy(key_ordered_copy),
    )?);
    let mut phases = Vec::new();
    let n = profile.keys;
    let order = shuffled(n, 1);
    let values: Vec<Vec<u8>> = (0..64).map(|i| value(i, profile.value_size)).collect();

    on_phase("mvcc put");
    phase::<MvccError>("put", n, &mut phases, |lat| {
        for &i in &order {
            lat.time(|| store.put(&key(i), &values[i % 64], 0))?;
        }
        Ok(n as u64)
    })?;

    let reads = shuffled(n, 2);
    let probes: Vec<usize> = (0..profile.reads).map(|j| reads[j % n]).collect();
    on_phase("mvcc get");
    phase::<MvccError>("get", probes.len(), &mut phases, |lat| {
        for &i in &probes {
            lat.time(|| store.range(&key(i), &[], 0, 0, false))?;
        }
        Ok(probes.len() as u64)
    })?;
    on_phase("mvcc get (2 threads)");
    phase::<MvccError>("get (2 threads)", probes.len(), &mut phases, |lat| {
        let half = probes.len().div_ceil(2);
        lat.merge(on_threads(2, |t, l| -> Result<(), MvccError> {
            for &i in probes.iter().skip(t * half).take(half) {
                l.time(|| store.range(&key(i), &[], 0, 0, false))?;
            }
            Ok(())
        })?);
        Ok(probes.len() as u64)
    })?;
    // An explicit interval of 10 (100) keys: etcd's `count` is the size of the whole
    // interval, so a "from key, limit 10" range would count every key to the end.
    let range_ops = (profile.reads / 10).max(1);
    on_phase("mvcc range (10)");
    phase::<MvccError>("range (10 keys)", range_ops, &mut phases, |lat| {
        for &i in probes.iter().take(range_ops) {
            lat.time(|| store.range(&key(i), &key(i + 10), 0, 0, false))?;
        }
        Ok(range_ops as u64)
    })?;
    let scan_ops = (profile.reads / 100).max(1);
    on_phase("mvcc scan (100)");
    phase::<MvccError>("scan (100 keys)", scan_ops, &mut phases, |lat| {
        for &i in probes.iter().take(scan_ops) {
            lat.time(|| store.range(&key(i), &key(i + 100), 0, 0, false))?;
        }
        Ok(scan_ops as u64)
    })?;
    let txn_ops = (n / 10).max(1);
    on_phase("mvcc txn");
    phase::<MvccError>("txn (compare + put)", txn_ops, &mut phases, |lat| {
        for &i in order.iter().take(txn_ops) {
            let k = key(i);
            lat.time(|| {
                store.txn(
                    &[Compare::version(k.clone(), CompareOp::Greater, 0)],
                    &[TxnOp::put(k.clone(), values[(i + 1) % 64].clone(), 0)],
                    &[],
                )
            })?;
        }
        Ok(txn_ops as u64)
    })?;
    let deletes = shuffled(n, 3);
    let del_n = n / 2;
    on_phase("mvcc delete");
    phase::<MvccError>("delete", del_n, &mut phases, |lat| {
        for &i in deletes.iter().take(del_n) {
            lat.time(|| store.delete_range(&key(i), &[]))?;
        }
        Ok(del_n as u64)
    })?;
    on_phase("mvcc compaction");
    let mut rows = 0u64;
    phase::<MvccError>("compaction (rows)", 1, &mut phases, |lat| {
        let rev = store.current_revision();
        let stats = lat.time(|| store.compact(rev))?;
        rows = stats.rows_deleted;
        Ok(1)
    })?;
    if let Some(p) = phases.last_mut() {
        p.ops = rows;
        p.ops_per_sec = rows as f64 / p.seconds;
    }
    store.flush()?;
    store.backend().close()?;
    drop(store);
    if !durable_phases {
        return Ok(phases);
    }

    // Ack = durable through group commit: a buffered backend, every mutation waits for a
    // shared flush.
    let durable_backend = open(cfg(
        "mvcc-durable",
        Durability::Buffered {
            interval: Duration::from_secs(1),
        },
    ))?;
    let durable = Arc::new(MvccStore::with_config(
        durable_backend,
        StoreConfig::default()
            .with_commit_mode(CommitMode::GroupSync)
            .with_row_cache_bytes(row_cache)
            .with_key_ordered_copy(key_ordered_copy),
    )?);
    on_phase("mvcc durable put (1 writer)");
    phase::<MvccError>(
        "durable put (1 writer)",
        profile.durable_single,
        &mut phases,
        |lat| {
            for i in 0..profile.durable_single {
                lat.time(|| durable.put(&key(i), &values[i % 64], 0))?;
            }
            Ok(profile.durable_single as u64)
        },
    )?;
    on_phase("mvcc durable put (64 writers)");
    let total = 64 * profile.durable_each;
    phase::<MvccError>("durable put (64 writers)", total, &mut phases, |lat| {
        lat.merge(on_threads(64, |w, l| -> Result<(), MvccError> {
            for j in 0..profile.durable_each {
                let i = 1_000_000_000 + w * profile.durable_each + j;
                l.time(|| durable.put(&key(i), &values[j % 64], 0))?;
            }
            Ok(())
        })?);
        Ok(total as u64)
    })?;
    durable.backend().close()?;
    Ok(phases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_budget_is_split_not_added() {
        assert_eq!(split_cache(256), (192, 64 << 20));
        assert_eq!(split_cache(64), (48, 16 << 20));
        // Below the share's granularity the engine keeps the whole budget.
        assert_eq!(split_cache(3), (3, 0));
    }
}
