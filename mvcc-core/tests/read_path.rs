//! The batched read path (`Backend::get_many` in revision order, answers back in key order):
//! every range at every revision, current and past, answers exactly what a model of the
//! history says, on every compiled engine, also across a reopen and a compaction; the same with
//! the row cache on (large enough for every row, and too small for a range, so rows are evicted
//! while a read runs), and across a snapshot restore that reuses revision numbers. A row budget
//! also makes the key index keep each key's current row (set by writes and recovery): the same
//! checks then read current rows from the index and older ones by revision, and failed writes,
//! tiny budgets and readers racing writers, evictions and compactions never show a stale or
//! foreign row.

mod common;

use std::collections::BTreeMap;

use common::{assert_copy_is, rows, Env};
use mvcc_core::store::{copy_key, FORMAT_VERSION, FORMAT_VERSION_WITHOUT_COPY, META_FORMAT};
use mvcc_core::{
    CommitMode, Compare, CompareOp, KeyValue, MvccError, MvccStore, StoreConfig, TxnOp,
    CURRENT_ROW_OVERHEAD,
};
use storage_api::fault::{FaultKind, FaultOp, FaultyBackend};
use storage_api::{Backend, Tree};

/// The model: for each revision, the key-values alive at it.
/// The configuration of most tests here: the key-ordered copy of the current rows kept.
fn copy_on() -> StoreConfig {
    StoreConfig::default().with_key_ordered_copy(true)
}

/// Asserts the copy of the current rows of `s`: exactly the key-values of `live` when the
/// store keeps it, none at all when it does not.
fn check_copy<'a, B: Backend>(
    s: &MvccStore<B>,
    live: impl IntoIterator<Item = &'a KeyValue>,
    what: &str,
) {
    if s.config().key_ordered_copy {
        assert_copy_is(&**s.backend(), live, what);
    } else {
        assert_copy_is(&**s.backend(), [], what);
    }
}

type History = Vec<(i64, BTreeMap<Vec<u8>, KeyValue>)>;

fn key(i: usize) -> Vec<u8> {
    format!("key/{i:03}").into_bytes()
}

/// A history where adjacent keys have scattered revisions (keys written in a shuffled order),
/// several versions per key, deletions and re-creations, and multi-put transactions (rows that
/// share a main revision). Returns the model of every revision.
fn write_history<B: Backend>(s: &MvccStore<B>) -> History {
    let n = 60;
    let mut live: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    let mut history: History = vec![(s.current_revision(), live.clone())];
    let put = |live: &mut BTreeMap<Vec<u8>, KeyValue>, k: Vec<u8>, v: &[u8]| {
        let (rev, kv) = s.put(&k, v, 0).unwrap();
        let prev = live.get(&k);
        assert_eq!(kv.version, prev.map_or(1, |p| p.version + 1));
        live.insert(k, kv);
        check_copy(s, live.values(), &format!("put at {rev}"));
        rev
    };
    for round in 0..3usize {
        for j in 0..n {
            // A permutation of 0..n that differs per round.
            let i = (j * 37 + round * 11) % n;
            if (i + round) % 7 == 3 {
                continue;
            }
            let value = format!("value {i} round {round} {}", "x".repeat(i % 13)).into_bytes();
            let rev = put(&mut live, key(i), &value);
            history.push((rev, live.clone()));
        }
        // Delete every fifth key (deletions leave tombstone rows in the kv tree).
        for i in (round..n).step_by(5) {
            let (rev, deleted) = s.delete_range(&key(i), &[]).unwrap();
            if live.remove(&key(i)).is_some() {
                assert_eq!(deleted.len(), 1);
                history.push((rev, live.clone()));
            }
            check_copy(s, live.values(), &format!("delete at {rev}"));
        }
        // A transaction of three puts: three rows with one main revision, sub 0, 1, 2.
        let ks = [key(n - 1 - round), key(round), key(n / 2 + round)];
        let ops: Vec<TxnOp> = ks
            .iter()
            .map(|k| TxnOp::put(k.clone(), format!("txn {round}").into_bytes(), 0))
            .collect();
        let res = s
            .txn(
                &[Compare::version(key(0), CompareOp::Greater, -1)],
                &ops,
                &[],
            )
            .unwrap();
        assert!(res.succeeded);
        let rev = s.current_revision();
        for k in &ks {
            let prev = live.get(k);
            let kv = KeyValue {
                key: k.clone(),
                value: format!("txn {round}").into_bytes(),
                create_revision: prev.map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                version: prev.map_or(1, |p| p.version + 1),
                lease: 0,
            };
            live.insert(k.clone(), kv);
        }
        check_copy(s, live.values(), &format!("txn at {rev}"));
        history.push((rev, live.clone()));
    }
    history
}

/// Every revision from `from` on answers the model: the whole keyspace, sub-ranges of 10 and
/// 100 keys, limits, and single keys.
fn check_history<B: Backend>(s: &MvccStore<B>, history: &History, from: i64) {
    let current = s.current_revision();
    for (i, (rev, live)) in history.iter().enumerate() {
        let next = history.get(i + 1).map_or(current + 1, |(r, _)| *r);
        // Every revision of the span [rev, next) shows the same content.
        for at in (*rev).max(from)..next {
            let want: Vec<KeyValue> = live.values().cloned().collect();
            let all = s.range(b"key/", b"key0", at, 0, false).unwrap();
            assert_eq!(all.kvs, want, "whole range at revision {at}");
            assert_eq!(all.count, want.len() as i64);
            for (start, width) in [(0usize, 10usize), (17, 10), (5, 100), (44, 10)] {
                let (lo, hi) = (key(start), key(start + width));
                let want: Vec<KeyValue> = live
                    .range(lo.clone()..hi.clone())
                    .map(|(_, kv)| kv.clone())
                    .collect();
                let got = s.range(&lo, &hi, at, 0, false).unwrap();
                assert_eq!(got.kvs, want, "[{start}, +{width}) at revision {at}");
                let limited = s.range(&lo, &hi, at, 3, false).unwrap();
                assert_eq!(limited.kvs, want[..want.len().min(3)], "limit 3 at {at}");
                assert_eq!(limited.more, want.len() > 3);
            }
            for k in [0usize, 7, 30, 59] {
                let got = s.range(&key(k), &[], at, 0, false).unwrap();
                let want: Vec<KeyValue> = live.get(&key(k)).cloned().into_iter().collect();
                assert_eq!(got.kvs, want, "key {k} at revision {at}");
            }
        }
    }
}

/// Bytes the current rows of `live` are charged.
fn current_rows_bytes(live: &BTreeMap<Vec<u8>, KeyValue>) -> usize {
    live.values()
        .map(|kv| kv.encode().len() + CURRENT_ROW_OVERHEAD)
        .sum()
}

fn reads_are_exact_with<B: Backend>(config: StoreConfig) {
    let budget = config.row_cache_bytes;
    let env = Env::<B>::with_config(config);
    let s = env.open();
    let history = write_history(&s);
    check_history(&s, &history, 1);
    // Twice: the second pass reads what the first one cached.
    check_history(&s, &history, 1);
    assert!(
        s.row_cache_bytes() <= budget,
        "{} bytes",
        s.row_cache_bytes()
    );
    // The same answers from disk after a reopen (rows read back by the engine; recovery hands
    // the index the current rows that fit its three quarters of the budget).
    let s = env.reopen(s);
    let last = &history[history.len() - 1].1;
    check_copy(&s, last.values(), "after a reopen");
    let held = current_rows_bytes(last);
    if budget == 0 {
        assert_eq!(s.row_cache_bytes(), 0);
    } else if held <= budget / 4 * 3 {
        assert_eq!(s.row_cache_bytes(), held);
    } else {
        assert!(s.row_cache_bytes() <= budget / 4 * 3);
        assert!(s.row_cache_bytes() > 0);
    }
    check_history(&s, &history, 1);
    // Compact half-way: older revisions are refused, every later one is still exact.
    let at = history[history.len() / 2].0;
    s.compact(at).unwrap();
    assert!(matches!(
        s.range(b"key/", b"key0", at - 1, 0, false),
        Err(MvccError::Compacted)
    ));
    check_history(&s, &history, at);
    check_copy(&s, last.values(), "after a compaction");
    s.backend().close().unwrap();
}

/// Without the copy (the default): the `index` tree stays empty, every read is exact.
fn point_in_time_reads_are_exact_without_the_copy<B: Backend>() {
    reads_are_exact_with::<B>(StoreConfig::default());
    reads_are_exact_with::<B>(StoreConfig::default().with_row_cache_bytes(16 * 250));
}

/// A store that kept the copy, opened without it, writes format 1 and deletes the copy
/// before any write that would leave it stale; opened with it again, it builds it anew.
fn the_copy_can_be_switched_off_and_on<B: Backend>() {
    let on = Env::<B>::with_config(copy_on());
    let s = on.open();
    let history = write_history(&s);
    let mut live = history[history.len() - 1].1.clone();
    assert_eq!(
        s.backend().get(Tree::Meta, META_FORMAT).unwrap(),
        Some(vec![FORMAT_VERSION])
    );
    let backend = s.backend().clone();
    drop(s);

    let s = MvccStore::with_config(backend, StoreConfig::default()).unwrap();
    assert_eq!(
        s.backend().get(Tree::Meta, META_FORMAT).unwrap(),
        Some(vec![FORMAT_VERSION_WITHOUT_COPY])
    );
    check_copy(&s, live.values(), "switched off");
    check_history(&s, &history, 1);
    // Writes without the copy: none appears.
    let (_, kv) = s.put(&key(7), b"while off", 0).unwrap();
    live.insert(key(7), kv);
    let gone = live.keys().find(|k| **k != key(7)).unwrap().clone();
    assert_eq!(s.delete_range(&gone, &[]).unwrap().1.len(), 1);
    live.remove(&gone);
    check_copy(&s, live.values(), "written while off");
    let backend = s.backend().clone();
    drop(s);

    let s = MvccStore::with_config(backend, copy_on()).unwrap();
    assert_eq!(
        s.backend().get(Tree::Meta, META_FORMAT).unwrap(),
        Some(vec![FORMAT_VERSION])
    );
    check_copy(&s, live.values(), "switched on again");
    let all = s.range(b"key/", b"key0", 0, 0, false).unwrap();
    assert_eq!(all.kvs, live.values().cloned().collect::<Vec<_>>());
    s.backend().close().unwrap();
}

fn point_in_time_reads_are_exact<B: Backend>() {
    reads_are_exact_with::<B>(copy_on());
}

/// Every row fits: after the first pass every read is a cache hit.
fn point_in_time_reads_are_exact_with_row_cache<B: Backend>() {
    reads_are_exact_with::<B>(copy_on().with_row_cache_bytes(1 << 20));
}

/// 16 shards of 250 bytes hold 16 rows at most (one per shard): a range of 10 or 100 keys
/// evicts rows it has just cached.
fn point_in_time_reads_are_exact_with_tiny_row_cache<B: Backend>() {
    reads_are_exact_with::<B>(copy_on().with_row_cache_bytes(16 * 250));
}

/// A snapshot restore replaces every row, reusing revision numbers with other contents: after
/// `reload` no read answers a row cached before it.
fn restore_replaces_cached_rows<B: Backend>() {
    let config = copy_on().with_row_cache_bytes(1 << 20);
    let a_env = Env::<B>::with_config(config.clone());
    let a = a_env.open();
    let b_env = Env::<B>::with_config(config);
    let b = b_env.open();
    for i in 0..20 {
        a.put(&key(i), format!("a{i}").as_bytes(), 0).unwrap();
        b.put(&key(i), format!("b{i}").as_bytes(), 0).unwrap();
    }
    // Same revisions (2..=21) on both, different values; `a` caches all of its rows.
    assert_eq!(a.current_revision(), b.current_revision());
    let before = a.range(b"key/", b"key0", 0, 0, false).unwrap();
    assert_eq!(before.kvs[3].value, b"a3".to_vec());
    assert_eq!(
        a.range(&key(5), &[], 0, 0, false).unwrap().kvs[0].value,
        b"a5".to_vec()
    );
    assert!(a.row_cache_bytes() > 0);

    a.backend()
        .restore(&b.backend().snapshot().unwrap())
        .unwrap();
    a.reload().unwrap();
    // The cache is empty; the index holds the current rows recovered from `b`'s rows.
    let b_rows = b.range(b"key/", b"key0", 0, 0, false).unwrap().kvs;
    let b_live: BTreeMap<Vec<u8>, KeyValue> =
        b_rows.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    assert_eq!(a.row_cache_bytes(), current_rows_bytes(&b_live));
    check_copy(&a, b_live.values(), "after a restore");
    let all = a.range(b"key/", b"key0", 0, 0, false).unwrap();
    let want: Vec<Vec<u8>> = (0..20).map(|i| format!("b{i}").into_bytes()).collect();
    let got: Vec<Vec<u8>> = all.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(
        a.range(&key(5), &[], 0, 0, false).unwrap().kvs[0].value,
        b"b5".to_vec()
    );
    // Past revisions too.
    assert_eq!(
        a.range(&key(5), &[], 7, 0, false).unwrap().kvs[0].value,
        b"b5".to_vec()
    );
    a.backend().close().unwrap();
    b.backend().close().unwrap();
}

/// Readers racing a writer and compactions with a row cache smaller than the data: every
/// read answers each key's value as written for the version it reports, and no key's version
/// goes back between two reads (a stale or misplaced cached row would break one of them).
fn cached_reads_race_writes_and_compactions<B: Backend>() {
    reads_race_writes_and_compactions::<B>(16 * 2000);
}

/// As [`cached_reads_race_writes_and_compactions`] with a budget whose index share holds about
/// ten current rows of the forty keys: every write evicts another key's row while readers walk.
fn reads_race_current_row_evictions<B: Backend>() {
    reads_race_writes_and_compactions::<B>(1336);
}

fn reads_race_writes_and_compactions<B: Backend>(budget: usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::<B>::with_config(copy_on().with_row_cache_bytes(budget));
    let s = env.open();
    let n = 40;
    let value = |k: usize, version: i64| format!("{k}:{version}").into_bytes();
    for k in 0..n {
        s.put(&key(k), &value(k, 1), 0).unwrap();
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut seen = vec![0i64; n];
                let mut reads = 0;
                while !done.load(Ordering::Acquire) || reads < 20 {
                    let r = s.range(b"key/", b"key0", 0, 0, false).unwrap();
                    assert_eq!(r.kvs.len(), n);
                    for (k, kv) in r.kvs.iter().enumerate() {
                        assert_eq!(kv.key, key(k));
                        assert_eq!(kv.value, value(k, kv.version), "key {k}");
                        assert!(kv.version >= seen[k], "key {k} went back");
                        seen[k] = kv.version;
                    }
                    let one = s.range(&key(reads % n), &[], 0, 0, false).unwrap();
                    assert_eq!(one.kvs[0].value, value(reads % n, one.kvs[0].version));
                    reads += 1;
                }
            });
        }
        let mut versions = vec![1i64; n];
        for round in 0..600 {
            let k = (round * 7) % n;
            versions[k] += 1;
            s.put(&key(k), &value(k, versions[k]), 0).unwrap();
            if round % 50 == 49 {
                s.compact(s.current_revision()).unwrap();
            }
            assert!(
                s.row_cache_bytes() <= budget,
                "{} bytes",
                s.row_cache_bytes()
            );
        }
        done.store(true, Ordering::Release);
    });
    s.backend().close().unwrap();
}

/// The value of `key` at `at` (`None` when absent).
fn value_at<B: Backend>(s: &MvccStore<B>, key: &[u8], at: i64) -> Option<Vec<u8>> {
    let r = s.range(key, &[], at, 0, false).unwrap();
    assert!(r.kvs.len() <= 1);
    r.kvs.into_iter().next().map(|kv| kv.value)
}

/// A write that fails is not applied, and its revision number is reused by the next write:
/// no read may show its row, and neither its revision row nor its copy of the current row is
/// stored. One that is applied although it reported an error is read as applied; one whose
/// outcome is unknown fails the store, which keeps serving what it had (and a reopen reads
/// what the engine holds, the copy included).
fn failed_writes_leave_no_current_row<B: Backend>() {
    failed_writes_leave_no_row_with::<B>(copy_on().with_row_cache_bytes(1 << 20));
}

/// [`failed_writes_leave_no_current_row`] without a row budget: every range of two keys reads
/// the copy of the current rows.
fn failed_writes_leave_no_copy_row<B: Backend>() {
    failed_writes_leave_no_row_with::<B>(copy_on());
}

/// The values of every key, in key order, at the current revision.
fn range_values<B: Backend>(s: &MvccStore<B>) -> Vec<Vec<u8>> {
    let all = s.range(b"a", b"z", 0, 0, false).unwrap();
    all.kvs.into_iter().map(|kv| kv.value).collect()
}

fn failed_writes_leave_no_row_with<B: Backend>(config: StoreConfig) {
    let env = Env::<B>::with_config(config);
    let b = FaultyBackend::wrap(env.open_backend());
    let s = MvccStore::with_config(b.clone(), env.config.clone()).unwrap();
    let (r0, i1) = s.put(b"i", b"i1", 0).unwrap();
    let (r1, k1) = s.put(b"k", b"v1", 0).unwrap();
    assert_eq!(r1, r0 + 1);
    let no_row_at = |rev: i64| {
        for sub in 0..2 {
            for tombstone in [false, true] {
                let key = mvcc_core::Revision::new(rev, sub).to_key(tombstone);
                assert_eq!(b.inner().get(Tree::Kv, &key).unwrap(), None, "row of {rev}");
            }
        }
    };
    b.plan().fail_nth(FaultOp::Write, 1, FaultKind::Before);
    assert!(s.put(b"k", b"lost", 0).is_err());
    assert_eq!(value_at(&s, b"k", 0), Some(b"v1".to_vec()));
    assert_copy_is(&**b.inner(), [&i1, &k1], "a put not applied");
    no_row_at(r1 + 1);
    b.plan().fail_nth(FaultOp::Write, 1, FaultKind::Before);
    let ops = [TxnOp::put("k", "lost", 0), TxnOp::put("j", "lost", 0)];
    assert!(s.txn(&[], &ops, &[]).is_err());
    assert_eq!(value_at(&s, b"k", 0), Some(b"v1".to_vec()));
    assert_eq!(value_at(&s, b"j", 0), None);
    assert_eq!(range_values(&s), vec![b"i1".to_vec(), b"v1".to_vec()]);
    assert_copy_is(&**b.inner(), [&i1, &k1], "a txn not applied");
    no_row_at(r1 + 1);
    b.plan().fail_nth(FaultOp::Write, 1, FaultKind::Before);
    assert!(s.delete_range(b"k", &[]).is_err());
    assert_eq!(value_at(&s, b"k", 0), Some(b"v1".to_vec()));
    assert_copy_is(&**b.inner(), [&i1, &k1], "a delete not applied");
    no_row_at(r1 + 1);
    // The next write takes the revision the failed ones would have had.
    let (r2, k2) = s.put(b"k", b"v2", 0).unwrap();
    assert_eq!(r2, r1 + 1);
    assert_eq!(value_at(&s, b"k", 0), Some(b"v2".to_vec()));
    assert_eq!(value_at(&s, b"k", r1), Some(b"v1".to_vec()));
    assert_eq!(value_at(&s, b"j", 0), None);
    assert_eq!(range_values(&s), vec![b"i1".to_vec(), b"v2".to_vec()]);
    assert_copy_is(&**b.inner(), [&i1, &k2], "after a put");
    // Applied, acknowledgement lost: the store reads it back and applies it.
    b.plan().fail_nth(FaultOp::Write, 1, FaultKind::After);
    assert!(s.put(b"k", b"v3", 0).is_err());
    assert_eq!(s.failure(), None);
    assert_eq!(value_at(&s, b"k", 0), Some(b"v3".to_vec()));
    assert_eq!(value_at(&s, b"k", r2), Some(b"v2".to_vec()));
    let k3 = s.range(b"k", &[], 0, 0, false).unwrap().kvs.remove(0);
    assert_eq!(k3.mod_revision, r2 + 1);
    assert_copy_is(
        &**b.inner(),
        [&i1, &k3],
        "a put applied, acknowledgement lost",
    );
    // Outcome unknown (the read-back fails too): the store fails, nothing of the write shows.
    let before = s.current_revision();
    b.plan()
        .fail_nth(FaultOp::Write, 1, FaultKind::After)
        .fail_nth(FaultOp::Read, 1, FaultKind::Before);
    assert!(s.put(b"k", b"v4", 0).is_err());
    assert!(s.failure().is_some());
    assert_eq!(s.current_revision(), before);
    assert_eq!(value_at(&s, b"k", 0), Some(b"v3".to_vec()));
    assert_eq!(range_values(&s), vec![b"i1".to_vec(), b"v3".to_vec()]);
    // The engine applied it, its copy row included: a reopen reads both.
    let inner = b.inner().clone();
    drop(s);
    let s = env.reopen(MvccStore::with_config(inner, env.config.clone()).unwrap());
    let k4 = s.range(b"k", &[], 0, 0, false).unwrap().kvs.remove(0);
    assert_eq!(
        (k4.value.as_slice(), k4.mod_revision),
        (&b"v4"[..], before + 1)
    );
    assert_copy_is(
        &**s.backend(),
        [&i1, &k4],
        "after the unknown outcome and a reopen",
    );
    assert_eq!(range_values(&s), vec![b"i1".to_vec(), b"v4".to_vec()]);
    s.backend().close().unwrap();
}

/// Under group commit a write is in the index (with its current row) and in the engine (with
/// its copy of the current row) before its flush makes it visible: until then reads at the
/// visible revision answer the previous row.
fn unpublished_rows_stay_invisible<B: Backend>() {
    unpublished_rows_stay_invisible_with::<B>(copy_on().with_row_cache_bytes(1 << 20));
}

/// [`unpublished_rows_stay_invisible`] without a row budget: the range reads the copy, which
/// already holds the unpublished row.
fn unpublished_copy_rows_stay_invisible<B: Backend>() {
    unpublished_rows_stay_invisible_with::<B>(copy_on());
}

fn unpublished_rows_stay_invisible_with<B: Backend>(config: StoreConfig) {
    let env = Env::<B>::with_config(config.with_commit_mode(CommitMode::GroupSync));
    let b = FaultyBackend::wrap(env.open_backend());
    let s = std::sync::Arc::new(MvccStore::with_config(b.clone(), env.config.clone()).unwrap());
    let (r0, _) = s.put(b"j", b"j1", 0).unwrap();
    let (r1, _) = s.put(b"k", b"v1", 0).unwrap();
    assert_eq!(r1, r0 + 1);
    let hold = b.plan().hold_nth(FaultOp::Flush, 1);
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || s.put(b"k", b"v2", 0).map(|(rev, _)| rev))
    };
    hold.wait_reached();
    // The engine holds the new copy row already.
    let copy = b
        .inner()
        .get(Tree::Index, &copy_key(b"k"))
        .unwrap()
        .unwrap();
    assert_eq!(KeyValue::decode(&copy).unwrap().mod_revision, r1 + 1);
    assert_eq!(s.current_revision(), r1);
    assert_eq!(value_at(&s, b"k", 0), Some(b"v1".to_vec()));
    let all = s.range(b"a", b"z", 0, 0, false).unwrap();
    let got: Vec<(&[u8], i64)> = all
        .kvs
        .iter()
        .map(|kv| (kv.value.as_slice(), kv.mod_revision))
        .collect();
    assert_eq!(got, vec![(&b"j1"[..], r0), (&b"v1"[..], r1)]);
    hold.release();
    let r2 = writer.join().unwrap().unwrap();
    assert_eq!(r2, r1 + 1);
    assert_eq!(value_at(&s, b"k", 0), Some(b"v2".to_vec()));
    assert_eq!(value_at(&s, b"k", r1), Some(b"v1".to_vec()));
    let all = s.range(b"a", b"z", 0, 0, false).unwrap();
    let got: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(got, vec![&b"j1"[..], &b"v2"[..]]);
    b.inner().close().unwrap();
}

/// A format-1 store (the `kv` rows and meta, no copy of the current rows) opens, builds the
/// copy and writes format 2, and reads exactly as before. A build that fails part-way (a
/// write of the copy refused, as a crash would stop it) leaves format 1 and part of the copy;
/// the next open clears it (and a stale row planted there) and builds it again.
fn format_1_stores_build_the_copy<B: Backend>() {
    let env = Env::<B>::with_config(copy_on());
    let s = env.open();
    let history = write_history(&s);
    let live = history[history.len() - 1].1.clone();
    let stale = copy_key(b"key/999");
    let make_format_1 = |b: &B| {
        for (k, _) in rows(b, Tree::Index) {
            b.delete(Tree::Index, &k).unwrap();
        }
        b.put(Tree::Meta, META_FORMAT, &[FORMAT_VERSION_WITHOUT_COPY])
            .unwrap();
        // What a build that stopped could have left: a row of a key that is gone.
        b.put(Tree::Index, &stale, b"stale").unwrap();
    };
    make_format_1(s.backend());
    s.backend().close().unwrap();
    drop(s);

    // The build fails at its third write (clear, first chunk of 16 rows, rest): part done.
    let b = FaultyBackend::wrap(env.open_backend());
    b.plan().fail_nth(FaultOp::Write, 3, FaultKind::Before);
    assert!(MvccStore::with_config(b.clone(), env.config.clone()).is_err());
    assert_eq!(
        b.inner().get(Tree::Meta, META_FORMAT).unwrap(),
        Some(vec![FORMAT_VERSION_WITHOUT_COPY])
    );
    let partial = rows(&**b.inner(), Tree::Index);
    assert!(!partial.is_empty());
    assert_ne!(partial, common::copy_of(live.values()));
    assert!(!partial.iter().any(|(k, _)| *k == stale));
    b.inner().put(Tree::Index, &stale, b"stale").unwrap();
    b.inner().close().unwrap();
    drop(b);

    let s = env.open();
    assert_eq!(
        s.backend().get(Tree::Meta, META_FORMAT).unwrap(),
        Some(vec![FORMAT_VERSION])
    );
    check_copy(&s, live.values(), "built on open");
    check_history(&s, &history, 1);
    // Format 2 from now on: a reopen keeps the copy as it is.
    let s = env.reopen(s);
    check_copy(&s, live.values(), "reopened");
    check_history(&s, &history, 1);
    s.backend().close().unwrap();
}

engine_tests!(
    point_in_time_reads_are_exact,
    point_in_time_reads_are_exact_without_the_copy,
    the_copy_can_be_switched_off_and_on,
    point_in_time_reads_are_exact_with_row_cache,
    point_in_time_reads_are_exact_with_tiny_row_cache,
    restore_replaces_cached_rows,
    cached_reads_race_writes_and_compactions,
    reads_race_current_row_evictions,
    failed_writes_leave_no_current_row,
    failed_writes_leave_no_copy_row,
    unpublished_rows_stay_invisible,
    unpublished_copy_rows_stay_invisible,
    format_1_stores_build_the_copy,
);
