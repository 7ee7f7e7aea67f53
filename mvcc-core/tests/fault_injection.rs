//! Fault injection: every backend call an MVCC operation makes is failed in turn, with
//! [`FaultyBackend`] over every compiled engine (memory, sled, redb, rocksdb).
//!
//! For each operation (put, put with a lease, txn, delete-range, compaction, lease grant, lease
//! revoke, snapshot restore), each call class it uses (write, read, flush in
//! `CommitMode::GroupSync`, the backend compaction hook, restore) and each fault kind
//! (`Before`: the call fails without effect; `After`: it takes effect and then reports an
//! error, i.e. a lost acknowledgement), the n-th call is failed for n = 1, 2, ... until the
//! operation makes fewer than n calls of that class. Each run checks:
//! * the operation returns the injected error, typed: `MvccError::Storage(StorageError::Io)`;
//! * the store's visible state (revisions, key-values at every retained revision, the rows after
//!   the compaction revision, leases and their keys) is exactly the state before the operation
//!   or exactly the state after it;
//! * a new `MvccStore` over the same backend recovers, with the state before or after, and so
//!   does a reopen of the engine from disk (identical to the first reopen); the recovered store
//!   accepts a write at the next revision.
//!
//! What the store does after a failed call (documented by these tests):
//! * after a failed commit write the store reads back a row the write wrote: after a `Before`
//!   fault the in-memory state (index, revisions, leases) is untouched and the store shows the
//!   state before; after an `After` fault the backend holds the operation and the store applies
//!   it in memory too, showing the state after (see
//!   `a_write_after_a_lost_acknowledgement_keeps_the_history_consistent`); either way the error
//!   is returned;
//! * a failed group-commit flush (`GroupSync`) reports the error although the write is applied
//!   and visible (durability unknown): the visible state is the state after;
//! * a compaction that fails after its `scheduledCompactRev` marker is written keeps the new
//!   compaction revision in memory, and a reopen finishes it;
//! * a failed restore leaves the backend as it was (`Before`) or restored (`After`); either way
//!   the store object must be reopened after a restore, which these tests do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mvcc_core::engine::{compiled_backends, AnyBackend};
use mvcc_core::{
    CommitMode, Compare, CompareOp, Event, KeyValue, MvccError, MvccStore, StoreConfig, TxnOp,
};
use storage_api::fault::{FaultKind, FaultOp, FaultyBackend};
use storage_api::{Backend, BackendConfig, BackendKind, Durability, MemoryBackend, StorageError};

type Faulty = FaultyBackend<AnyBackend>;
type Store = MvccStore<Faulty>;

/// Upper bound of the n of "fail the n-th call" (no operation here makes more calls).
const MAX_N: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Put,
    PutLease,
    Txn,
    DeleteRange,
    Compact,
    LeaseGrant,
    LeaseRevoke,
    LeaseCheckpoint,
    Restore,
}

/// A lease id, its attached keys and its checkpointed remaining TTL.
type LeaseState = (i64, Vec<Vec<u8>>, i64);

/// Everything a client can observe of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    current: i64,
    compact: i64,
    /// Key-values at every retained revision.
    reads: Vec<(i64, Vec<KeyValue>)>,
    /// Rows after the compaction revision.
    events: Vec<Event>,
    /// Leases with their keys and checkpointed remaining TTLs; `None` when the store refuses
    /// lease reads because a flush failed (`MvccError::Failed`: the lease table may hold
    /// changes that are not durable).
    leases: Option<Vec<LeaseState>>,
}

impl Fingerprint {
    /// Equal to `other`, or a failed store's fingerprint equal to `other` in all it shows.
    fn shows(&self, other: &Fingerprint) -> bool {
        match self.leases {
            Some(_) => self == other,
            None => {
                let visible = Fingerprint {
                    leases: other.leases.clone(),
                    ..self.clone()
                };
                visible == *other
            }
        }
    }
}

fn fingerprint<B: Backend>(s: &MvccStore<B>) -> Fingerprint {
    let current = s.current_revision();
    let compact = s.compact_revision();
    let reads = (compact.max(1)..=current)
        .map(|r| (r, s.range(&[0], &[0], r, 0, false).unwrap().kvs))
        .collect();
    Fingerprint {
        current,
        compact,
        reads,
        events: s.watch_events(compact.max(0) + 1).unwrap(),
        leases: match s.failure() {
            None => Some(
                s.leases()
                    .into_iter()
                    .map(|id| {
                        (
                            id,
                            s.lease_time_to_live(id).unwrap().keys,
                            s.lease_checkpointed_ttl(id).unwrap(),
                        )
                    })
                    .collect(),
            ),
            Some(reason) => {
                assert!(reason.starts_with("flush failed: "), "{reason}");
                for id in s.leases() {
                    assert!(
                        matches!(s.lease_time_to_live(id), Err(MvccError::Failed(_))),
                        "lease {id} read from a failed store"
                    );
                }
                None
            }
        },
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    path: PathBuf,
    kind: BackendKind,
    config: StoreConfig,
}

impl Env {
    fn new(kind: BackendKind, mode: CommitMode) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        Env {
            _tmp: tmp,
            path,
            kind,
            config: StoreConfig::default()
                .with_commit_mode(mode)
                .with_compaction_batch_limit(2)
                .with_compaction_sleep_interval(Duration::ZERO),
        }
    }

    fn backend_config(&self) -> BackendConfig {
        BackendConfig::new(&self.path)
            .with_durability(Durability::Buffered {
                interval: Duration::from_secs(3600),
            })
            .with_cache_size_mb(8)
    }

    fn open_faulty(&self) -> Arc<Faulty> {
        FaultyBackend::wrap(AnyBackend::open(self.kind, self.backend_config()).unwrap())
    }

    fn store(&self, b: &Arc<Faulty>) -> Store {
        MvccStore::with_config(b.clone(), self.config.clone()).unwrap()
    }
}

/// The common starting state: a lease with two keys, history with an update and a deletion.
fn setup<B: Backend>(s: &MvccStore<B>) {
    s.lease_grant(7, 1_000_000).unwrap();
    s.put(b"a", b"1", 0).unwrap();
    s.put(b"b", b"1", 0).unwrap();
    s.put(b"c", b"1", 7).unwrap();
    s.put(b"a", b"2", 0).unwrap();
    s.put(b"d", b"1", 7).unwrap();
    s.delete_range(b"b", b"").unwrap();
    s.put(b"e", b"1", 0).unwrap();
    s.put(b"e", b"2", 0).unwrap();
}

/// The image restored by [`Scenario::Restore`]: the common state, then more history.
fn restore_image() -> Vec<u8> {
    let b = MemoryBackend::volatile();
    let s = MvccStore::new(b.clone()).unwrap();
    setup(&s);
    s.put(b"x", b"restored", 0).unwrap();
    s.txn(&[], &[TxnOp::put("y", "1", 7), TxnOp::delete("a", "")], &[])
        .unwrap();
    b.snapshot().unwrap()
}

/// Runs the scenario's operation; the restore scenario replaces the store.
fn run_op(
    sc: Scenario,
    env: &Env,
    b: &Arc<Faulty>,
    store: &mut Store,
    image: &[u8],
) -> Result<(), MvccError> {
    match sc {
        Scenario::Put => store.put(b"a", b"3", 0).map(drop),
        Scenario::PutLease => store.put(b"f", b"1", 7).map(drop),
        Scenario::Txn => store
            .txn(
                &[Compare::version("a", CompareOp::Equal, 2)],
                &[
                    TxnOp::put("a", "t", 0),
                    TxnOp::put("g", "t", 7),
                    TxnOp::delete("c", ""),
                ],
                &[TxnOp::put("z", "f", 0)],
            )
            .map(|r| assert!(r.succeeded)),
        Scenario::DeleteRange => store.delete_range(b"a", &[0]).map(drop),
        Scenario::Compact => {
            let rev = store.current_revision() - 1;
            store.compact(rev).map(drop)
        }
        Scenario::LeaseGrant => store.lease_grant(9, 100).map(drop),
        Scenario::LeaseRevoke => store.lease_revoke(7).map(drop),
        Scenario::LeaseCheckpoint => store.lease_checkpoint(7, 500),
        Scenario::Restore => {
            b.restore(image)?;
            *store = MvccStore::with_config(b.clone(), env.config.clone())?;
            Ok(())
        }
    }
}

fn assert_injected(res: &Result<(), MvccError>, what: &str) {
    match res {
        Err(MvccError::Storage(StorageError::Io { context, .. }))
            if context.starts_with("injected fault") => {}
        other => panic!("{what}: expected the injected Storage(Io) error, got {other:?}"),
    }
}

/// `(before, after)` fingerprints of the scenario without faults.
fn reference(
    kind: BackendKind,
    mode: CommitMode,
    sc: Scenario,
    image: &[u8],
) -> (Fingerprint, Fingerprint) {
    let env = Env::new(kind, mode);
    let b = env.open_faulty();
    let mut s = env.store(&b);
    setup(&s);
    let before = fingerprint(&s);
    run_op(sc, &env, &b, &mut s, image).unwrap();
    let after = fingerprint(&s);
    assert_ne!(before, after, "{sc:?} must change the state");
    b.inner().close().unwrap();
    (before, after)
}

/// Fails the n-th call of `class` as `fault`, for every n the operation reaches.
/// Returns how many calls of the class the operation makes.
fn sweep(
    kind: BackendKind,
    mode: CommitMode,
    sc: Scenario,
    class: FaultOp,
    fault: FaultKind,
) -> u64 {
    let image = restore_image();
    let (before, after) = reference(kind, mode, sc, &image);
    for n in 1..=MAX_N {
        let what = format!("{kind} {sc:?} {mode:?}: {fault:?} fault on {class:?} call {n}");
        let env = Env::new(kind, mode);
        let b = env.open_faulty();
        let mut store = env.store(&b);
        setup(&store);
        b.plan().fail_nth(class, n, fault);
        let res = run_op(sc, &env, &b, &mut store, &image);
        let fired = b.plan().injected() > 0;
        b.plan().clear();
        if !fired {
            res.unwrap_or_else(|e| panic!("{what}: no fault fired but {e:?}"));
            assert_eq!(fingerprint(&store), after, "{what}: no fault fired");
            b.inner().close().unwrap();
            return n - 1;
        }
        assert_injected(&res, &what);
        // Visible state: exactly before or exactly after. (A restore replaces the store object,
        // so after a failed restore the visible state is what a reopen shows.)
        if sc != Scenario::Restore {
            let seen = fingerprint(&store);
            assert!(
                seen.leases.is_some() || (mode == CommitMode::GroupSync && class == FaultOp::Flush),
                "{what}: only a failed flush refuses lease reads"
            );
            assert!(
                seen.shows(&before) || seen.shows(&after),
                "{what}: visible state is neither before nor after:\n{seen:#?}\nbefore {before:#?}\nafter {after:#?}"
            );
            if mode == CommitMode::GroupSync && class == FaultOp::Flush {
                // Nothing a failed flush covered is published, and the store is failed. (A
                // compaction's second flush covers row deletions of a compaction already
                // durable and visible.)
                if sc != Scenario::Compact || n == 1 {
                    assert!(
                        seen.shows(&before),
                        "{what}: a failed flush published its write"
                    );
                }
                assert!(
                    matches!(store.put(b"next", b"1", 0), Err(MvccError::Failed(_))),
                    "{what}: writes after a failed flush"
                );
            }
            if fault == FaultKind::Before && n == 1 && class == FaultOp::Write {
                assert_eq!(
                    seen, before,
                    "{what}: the first write failed without effect"
                );
            }
        }
        drop(store);
        // Reopen over the same backend.
        let reopened = env.store(&b);
        let recovered = fingerprint(&reopened);
        assert!(
            recovered == before || recovered == after,
            "{what}: reopened state is neither before nor after:\n{recovered:#?}"
        );
        drop(reopened);
        // Reopen the engine from disk.
        b.inner().close().unwrap();
        let b2 = env.open_faulty();
        let again = env.store(&b2);
        assert_eq!(fingerprint(&again), recovered, "{what}: engine reopen");
        let (rev, _) = again.put(b"after", b"1", 0).unwrap();
        assert_eq!(rev, recovered.current + 1, "{what}: next write");
        b2.inner().close().unwrap();
    }
    panic!("{kind} {sc:?}: more than {MAX_N} calls of {class:?}");
}

/// Every class and kind of fault for one scenario; returns the call counts per class.
fn all_faults(kind: BackendKind, sc: Scenario) {
    let mut calls = Vec::new();
    for class in [
        FaultOp::Write,
        FaultOp::Read,
        FaultOp::Maintenance,
        FaultOp::Restore,
    ] {
        let n_before = sweep(kind, CommitMode::Backend, sc, class, FaultKind::Before);
        let n_after = sweep(kind, CommitMode::Backend, sc, class, FaultKind::After);
        assert_eq!(n_before, n_after, "{kind} {sc:?}: calls of {class:?}");
        calls.push((class, n_before));
    }
    for fault in [FaultKind::Before, FaultKind::After] {
        let n = sweep(kind, CommitMode::GroupSync, sc, FaultOp::Flush, fault);
        if fault == FaultKind::Before {
            calls.push((FaultOp::Flush, n));
        }
    }
    eprintln!("{kind} {sc:?}: backend calls per class {calls:?}");
    // Every scenario writes something.
    assert!(calls
        .iter()
        .any(|(c, n)| matches!(c, FaultOp::Write | FaultOp::Restore) && *n > 0));
}

macro_rules! fault_tests {
    ($($engine:ident => $kind:expr),* $(,)?) => {$(
        mod $engine {
            use super::*;
            #[test] fn put() { all_faults($kind, Scenario::Put) }
            #[test] fn put_with_lease() { all_faults($kind, Scenario::PutLease) }
            #[test] fn txn() { all_faults($kind, Scenario::Txn) }
            #[test] fn delete_range() { all_faults($kind, Scenario::DeleteRange) }
            #[test] fn compact() { all_faults($kind, Scenario::Compact) }
            #[test] fn lease_grant() { all_faults($kind, Scenario::LeaseGrant) }
            #[test] fn lease_revoke() { all_faults($kind, Scenario::LeaseRevoke) }
            #[test] fn lease_checkpoint() { all_faults($kind, Scenario::LeaseCheckpoint) }
            #[test] fn restore() { all_faults($kind, Scenario::Restore) }
        }
    )*};
}

fault_tests!(memory => BackendKind::Memory);
#[cfg(feature = "sled")]
fault_tests!(sled => BackendKind::Sled);
#[cfg(feature = "redb")]
fault_tests!(redb => BackendKind::Redb);
#[cfg(feature = "rocksdb")]
fault_tests!(rocksdb => BackendKind::Rocksdb);

#[test]
fn every_compiled_engine_is_covered() {
    let kinds = compiled_backends();
    assert!(kinds.contains(&BackendKind::Memory));
    assert_eq!(kinds.contains(&BackendKind::Sled), cfg!(feature = "sled"));
    assert_eq!(kinds.contains(&BackendKind::Redb), cfg!(feature = "redb"));
    assert_eq!(
        kinds.contains(&BackendKind::Rocksdb),
        cfg!(feature = "rocksdb")
    );
}

/// The faults reach the operations at all: the counts of backend calls of each operation
/// (these pin the harness; a change in how many calls an operation makes shows up here).
#[test]
fn operations_make_the_expected_calls() {
    let count = |sc: Scenario, class: FaultOp| {
        sweep(
            BackendKind::Memory,
            CommitMode::Backend,
            sc,
            class,
            FaultKind::Before,
        )
    };
    // Every mutation is one atomic commit.
    for sc in [
        Scenario::Put,
        Scenario::PutLease,
        Scenario::Txn,
        Scenario::DeleteRange,
        Scenario::LeaseGrant,
        Scenario::LeaseRevoke,
        Scenario::LeaseCheckpoint,
    ] {
        assert_eq!(count(sc, FaultOp::Write), 1, "{sc:?}");
    }
    // Compaction: the scheduled marker, then batches of 2 rows.
    assert!(count(Scenario::Compact, FaultOp::Write) >= 3);
    assert_eq!(count(Scenario::Compact, FaultOp::Maintenance), 1);
    assert_eq!(count(Scenario::Restore, FaultOp::Restore), 1);
    // In GroupSync every acknowledged mutation flushes once.
    assert_eq!(
        sweep(
            BackendKind::Memory,
            CommitMode::GroupSync,
            Scenario::Put,
            FaultOp::Flush,
            FaultKind::Before
        ),
        1
    );
}

/// `CommitMode::GroupSync` promises "ack = durable" for every mutation, compaction included:
/// `compact` must flush its `scheduledCompactRev` marker and delete batches before it
/// acknowledges, or an acknowledged compaction can be lost by a crash on a `Buffered` backend.
#[test]
fn group_sync_compaction_is_durable_when_acknowledged() {
    let b = FaultyBackend::wrap(MemoryBackend::volatile());
    let s = MvccStore::with_config(
        b.clone(),
        StoreConfig::default().with_commit_mode(CommitMode::GroupSync),
    )
    .unwrap();
    setup(&s);
    b.plan().fail_nth(FaultOp::Flush, 1, FaultKind::Before);
    let res = s.compact(s.current_revision()).map(drop);
    assert_injected(
        &res,
        "GroupSync compaction must flush before it is acknowledged",
    );
}

/// After a commit write whose acknowledgement was lost (`After` fault: the backend holds the
/// transaction, the store's memory does not), the next write reuses the same revision number.
/// Its rows overwrite the rows of the lost transaction with the same sub-revision but not the
/// others, so after a reopen a part of the lost transaction reappears at the revision of the
/// next write: a partial transaction becomes visible, and revision `r` reads differently before
/// and after the reopen. The store reads back the outcome of a failed commit instead (and marks
/// itself failed when it cannot).
#[test]
fn a_write_after_a_lost_acknowledgement_keeps_the_history_consistent() {
    for kind in compiled_backends() {
        let env = Env::new(kind, CommitMode::Backend);
        let b = env.open_faulty();
        let store = env.store(&b);
        setup(&store);
        b.plan().fail_nth(FaultOp::Write, 1, FaultKind::After);
        let res = store
            .txn(
                &[],
                &[TxnOp::put("p", "1", 0), TxnOp::put("q", "1", 0)],
                &[],
            )
            .map(drop);
        assert_injected(&res, "txn");
        // If the store carries on (it did not mark itself failed) and serves another write,
        // what it served must be what it recovers. (Marking the store failed, so that later
        // writes are refused, is an acceptable fix.)
        if store.put(b"r", b"1", 0).is_ok() {
            let served = fingerprint(&store);
            drop(store);
            let reopened = env.store(&b);
            assert_eq!(
                fingerprint(&reopened),
                served,
                "{kind}: what the store served differs from what it recovers"
            );
        }
        b.inner().close().unwrap();
    }
}
