//! The batched read path (`Backend::get_many` in revision order, answers back in key order):
//! every range at every revision, current and past, answers exactly what a model of the
//! history says, on every compiled engine, also across a reopen and a compaction.

mod common;

use std::collections::BTreeMap;

use common::Env;
use mvcc_core::{Compare, CompareOp, KeyValue, MvccError, MvccStore, TxnOp};
use storage_api::Backend;

/// The model: for each revision, the key-values alive at it.
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

fn point_in_time_reads_are_exact<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    let history = write_history(&s);
    check_history(&s, &history, 1);
    // The same answers from disk after a reopen (rows read back by the engine, not a cache).
    let s = env.reopen(s);
    check_history(&s, &history, 1);
    // Compact half-way: older revisions are refused, every later one is still exact.
    let at = history[history.len() / 2].0;
    s.compact(at).unwrap();
    assert!(matches!(
        s.range(b"key/", b"key0", at - 1, 0, false),
        Err(MvccError::Compacted)
    ));
    check_history(&s, &history, at);
    s.backend().close().unwrap();
}

engine_tests!(point_in_time_reads_are_exact);
