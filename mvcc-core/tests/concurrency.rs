//! Concurrency: writers, readers, a watcher and the compactor on one store, on every compiled
//! engine, with bounded loop counts (each engine runs in about a second or two).
//!
//! Writers:
//! * two pair writers: transactions that put `p<i>/a` and `p<i>/b` with the same value, or
//!   delete both;
//! * a transfer writer: moves units between `t/a` and `t/b` (sum always 100) with a
//!   compare-and-swap transaction on both mod revisions;
//! * a lease writer: grants a lease, puts `l<i>/a` and `l<i>/b` on it in one txn, revokes it
//!   (the revoke deletes both in one revision);
//! * the compactor: compacts to 20 revisions behind the current one, repeatedly.
//!
//! Readers (two threads) check on every read: the header revision never goes back for a reader;
//! every key-value's `mod_revision` is at most the read revision; count equals the number of
//! key-values; the pairs are both present with the same value or both absent; the transfer sum
//! is 100; a read at an older revision is either `Compacted` or consistent, and repeats
//! identically; a read-only transaction sees both keys of a pair equal.
//! The watcher checks that every revision's events carry whole transactions.
//! At the end the store is reopened and must read the same.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Env;
use mvcc_core::{
    Compare, CompareOp, EventKind, KeyValue, MvccError, RangeResult, TxnOp, TxnOpResponse,
};
use storage_api::Backend;

/// `(kind, key, value)` of a watch event.
type EventRow = (EventKind, Vec<u8>, Vec<u8>);

const PAIRS: usize = 6;
const PAIR_WRITES: usize = 2_500;
const TRANSFERS: usize = 1_000;
const LEASE_ROUNDS: usize = 300;
const READS: usize = 50_000;
const COMPACTIONS: usize = 5_000;

fn pair_key(i: usize, side: &str) -> Vec<u8> {
    format!("p{i}/{side}").into_bytes()
}

/// Checks the pairs, leases and transfer keys of one read at `at`.
fn check_read(r: &RangeResult, at: i64, ctx: &str) {
    assert_eq!(r.count as usize, r.kvs.len(), "{ctx}: count");
    let mut by_key: BTreeMap<&[u8], &KeyValue> = BTreeMap::new();
    for kv in &r.kvs {
        assert!(
            kv.mod_revision <= at,
            "{ctx}: key {:?} modified at {} in a read at {at}",
            String::from_utf8_lossy(&kv.key),
            kv.mod_revision
        );
        by_key.insert(&kv.key, kv);
    }
    // Pairs written by one txn: both or neither, same value, same revision.
    for kv in &r.kvs {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        if let Some(prefix) = key.strip_suffix("/a").filter(|p| !p.starts_with('t')) {
            let other = format!("{prefix}/b");
            let b = by_key.get(other.as_bytes()).unwrap_or_else(|| {
                panic!("{ctx}: partial txn visible: {key} without {other} at {at}")
            });
            assert_eq!(
                b.value, kv.value,
                "{ctx}: {prefix} pair values differ at {at}"
            );
            assert_eq!(
                b.mod_revision, kv.mod_revision,
                "{ctx}: {prefix} pair revisions"
            );
        }
        if let Some(prefix) = key.strip_suffix("/b").filter(|p| !p.starts_with('t')) {
            assert!(
                by_key.contains_key(format!("{prefix}/a").as_bytes()),
                "{ctx}: partial txn visible: {key} alone at {at}"
            );
        }
    }
    // Transfers: the sum is always 100 once initialised.
    let num = |k: &[u8]| -> Option<i64> {
        by_key
            .get(k)
            .map(|kv| String::from_utf8_lossy(&kv.value).parse().unwrap())
    };
    if let (Some(a), Some(b)) = (num(b"t/a"), num(b"t/b")) {
        assert_eq!(a + b, 100, "{ctx}: transfer sum at {at}");
    }
}

fn concurrent_writers_readers_compactor<B: Backend>() {
    let env: Env<B> = Env::new();
    let store = Arc::new(env.open());
    store.put(b"t/a", b"100", 0).unwrap();
    store.put(b"t/b", b"0", 0).unwrap();
    let writers_done = Arc::new(AtomicBool::new(false));
    // Read only at the end, with the compactor running: a queue large enough for the whole
    // run (a watcher whose events do not fit would be caught up from storage, and cancelled
    // once compaction passes it, as etcd does; tests/watch_bounded.rs covers that).
    let watcher = store.watch_stream(1 << 22);
    watcher.watch(b"a", b"z", 0).unwrap();

    std::thread::scope(|scope| {
        let mut writers = Vec::new();
        for w in 0..2usize {
            let store = store.clone();
            writers.push(scope.spawn(move || {
                let mut last = 0;
                for n in 0..PAIR_WRITES {
                    let i = (n * 7 + w * 3) % PAIRS;
                    let (a, b) = (pair_key(i, "a"), pair_key(i, "b"));
                    let ops = if n % 5 == 4 {
                        vec![TxnOp::delete(a, b""), TxnOp::delete(b, b"")]
                    } else {
                        let v = format!("w{w}-{n}");
                        vec![TxnOp::put(a, v.clone(), 0), TxnOp::put(b, v, 0)]
                    };
                    let r = store.txn(&[], &ops, &[]).unwrap();
                    assert!(r.revision >= last, "writer {w}: revision went back");
                    last = r.revision;
                }
            }));
        }
        {
            let store = store.clone();
            writers.push(scope.spawn(move || {
                let mut done = 0;
                let mut attempts = 0;
                while done < TRANSFERS {
                    attempts += 1;
                    assert!(attempts < TRANSFERS * 100, "transfers never succeed");
                    let r = store.range(b"t/a", b"t/c", 0, 0, false).unwrap();
                    let (a, b) = (&r.kvs[0], &r.kvs[1]);
                    let va: i64 = String::from_utf8_lossy(&a.value).parse().unwrap();
                    let vb: i64 = String::from_utf8_lossy(&b.value).parse().unwrap();
                    let amount = (done as i64 % 7) - 3;
                    let t = store
                        .txn(
                            &[
                                Compare::modified("t/a", CompareOp::Equal, a.mod_revision),
                                Compare::modified("t/b", CompareOp::Equal, b.mod_revision),
                            ],
                            &[
                                TxnOp::put("t/a", (va - amount).to_string(), 0),
                                TxnOp::put("t/b", (vb + amount).to_string(), 0),
                            ],
                            &[],
                        )
                        .unwrap();
                    if t.succeeded {
                        done += 1;
                    }
                }
            }));
        }
        {
            let store = store.clone();
            writers.push(scope.spawn(move || {
                for n in 0..LEASE_ROUNDS {
                    let lease = store.lease_grant(0, 1_000_000).unwrap().id;
                    let v = format!("lease{lease}");
                    let (a, b) = (format!("l{}/a", n % 3), format!("l{}/b", n % 3));
                    store
                        .txn(
                            &[],
                            &[TxnOp::put(a, v.clone(), lease), TxnOp::put(b, v, lease)],
                            &[],
                        )
                        .unwrap();
                    if n % 2 == 1 {
                        store.lease_revoke(lease).unwrap();
                    }
                }
            }));
        }
        // Compactor.
        {
            let store = store.clone();
            let done = writers_done.clone();
            scope.spawn(move || {
                for _ in 0..COMPACTIONS {
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                    let target = store.current_revision() - 20;
                    if target > store.compact_revision() {
                        match store.compact(target) {
                            // Another compaction got there first.
                            Ok(_) | Err(MvccError::Compacted) => {}
                            Err(e) => panic!("compaction failed: {e:?}"),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
        // Readers.
        let mut readers = Vec::new();
        for id in 0..2usize {
            let store = store.clone();
            let done = writers_done.clone();
            readers.push(scope.spawn(move || {
                let mut last = 0;
                let mut reads = 0;
                for n in 0..READS {
                    reads += 1;
                    if done.load(Ordering::Acquire) && n > 100 {
                        break;
                    }
                    let ctx = format!("reader {id} read {n}");
                    let r = store.range(b"a", b"z", 0, 0, false).unwrap();
                    assert!(
                        r.revision >= last,
                        "{ctx}: revision went back {last} -> {}",
                        r.revision
                    );
                    last = r.revision;
                    check_read(&r, r.revision, &ctx);
                    // An older revision: compacted, or consistent and repeatable.
                    let at = r.revision - (n as i64 % 30);
                    if at >= 1 {
                        match store.range(b"a", b"z", at, 0, false) {
                            Ok(old) => {
                                check_read(&old, at, &format!("{ctx} at {at}"));
                                match store.range(b"a", b"z", at, 0, false) {
                                    Ok(again) => assert_eq!(
                                        again.kvs, old.kvs,
                                        "{ctx}: read at {at} repeated"
                                    ),
                                    Err(MvccError::Compacted) => {}
                                    Err(e) => panic!("{ctx}: {e:?}"),
                                }
                            }
                            Err(MvccError::Compacted) => {}
                            Err(e) => panic!("{ctx}: read at {at}: {e:?}"),
                        }
                    }
                    // A read-only txn sees one revision.
                    let i = n % PAIRS;
                    let t = store
                        .txn(
                            &[],
                            &[
                                TxnOp::range(pair_key(i, "a"), b""),
                                TxnOp::range(pair_key(i, "b"), b""),
                            ],
                            &[],
                        )
                        .unwrap();
                    let vals: Vec<Vec<Vec<u8>>> = t
                        .responses
                        .iter()
                        .map(|resp| match resp {
                            TxnOpResponse::Range(r) => {
                                r.kvs.iter().map(|kv| kv.value.clone()).collect()
                            }
                            other => panic!("{ctx}: {other:?}"),
                        })
                        .collect();
                    assert_eq!(vals[0], vals[1], "{ctx}: txn read of pair {i}");
                }
                (last, reads)
            }));
        }
        for w in writers {
            w.join().unwrap();
        }
        writers_done.store(true, Ordering::Release);
        for r in readers {
            let (last, reads) = r.join().unwrap();
            assert!(last >= 3, "reader saw no revision");
            eprintln!("{}: reader: {reads} rounds, last revision {last}", B::KIND);
        }
    });

    // The watcher received every revision whole, in order.
    let final_rev = store.current_revision();
    eprintln!(
        "{}: final revision {final_rev}, compacted at {}",
        B::KIND,
        store.compact_revision()
    );
    let mut by_rev: BTreeMap<i64, Vec<EventRow>> = BTreeMap::new();
    let mut last_rev = 0;
    while let Some(resp) = watcher.try_recv() {
        assert!(!resp.canceled, "watcher canceled");
        for ev in resp.events {
            assert!(ev.kv.mod_revision >= last_rev, "watch events out of order");
            last_rev = ev.kv.mod_revision;
            by_rev
                .entry(ev.kv.mod_revision)
                .or_default()
                .push((ev.kind, ev.kv.key, ev.kv.value));
        }
    }
    assert_eq!(last_rev, final_rev, "watcher missed the last revision");
    for (rev, evs) in &by_rev {
        let keys: Vec<String> = evs
            .iter()
            .map(|(_, k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        for (kind, k, v) in evs {
            let key = String::from_utf8_lossy(k);
            if let Some(prefix) = key.strip_suffix("/a").filter(|p| !p.starts_with('t')) {
                let other = evs
                    .iter()
                    .find(|(_, k2, _)| k2.as_slice() == format!("{prefix}/b").as_bytes())
                    .unwrap_or_else(|| panic!("revision {rev}: {key} without its pair: {keys:?}"));
                assert_eq!(
                    (other.0, &other.2),
                    (*kind, v),
                    "revision {rev}: pair events"
                );
            }
        }
    }

    // A reopened store reads the same.
    let before = store.range(b"a", b"z", 0, 0, false).unwrap();
    check_read(&before, before.revision, "final");
    let store = Arc::into_inner(store).expect("threads joined");
    let store = env.reopen(store);
    let after = store.range(b"a", b"z", 0, 0, false).unwrap();
    assert_eq!(after.kvs, before.kvs);
    assert_eq!(store.current_revision(), final_rev);
    store.backend().close().unwrap();
}

/// Two compactors racing each other and a writer: every compaction either succeeds or reports
/// `Compacted`, and the compaction revision only moves forward.
fn racing_compactors<B: Backend>() {
    let env: Env<B> = Env::new();
    let store = Arc::new(env.open());
    std::thread::scope(|scope| {
        let writer = {
            let store = store.clone();
            scope.spawn(move || {
                for n in 0..800 {
                    store
                        .put(format!("k{}", n % 10).as_bytes(), b"v", 0)
                        .unwrap();
                }
            })
        };
        let mut compactors = Vec::new();
        for _ in 0..2 {
            let store = store.clone();
            compactors.push(scope.spawn(move || {
                let mut last = -1;
                for _ in 0..300 {
                    let target = store.current_revision() - 5;
                    match store.compact(target) {
                        Ok(stats) => assert_eq!(stats.revision, target),
                        Err(MvccError::Compacted) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                    let c = store.compact_revision();
                    assert!(c >= last, "compaction revision went back {last} -> {c}");
                    last = c;
                }
            }));
        }
        writer.join().unwrap();
        for c in compactors {
            c.join().unwrap();
        }
    });
    let r = store.range(b"k", b"l", 0, 0, false).unwrap();
    assert_eq!(r.count, 10);
    let store = Arc::into_inner(store).unwrap();
    let compact = store.compact_revision();
    let store = env.reopen(store);
    assert_eq!(store.compact_revision(), compact);
    assert_eq!(store.range(b"k", b"l", 0, 0, false).unwrap().kvs, r.kvs);
    store.backend().close().unwrap();
}

engine_tests!(concurrent_writers_readers_compactor, racing_compactors);

/// The checker itself catches a partial pair and a broken transfer sum.
#[test]
fn checker_detects_partial_transactions() {
    let kv = |k: &str, v: &str, rev: i64| KeyValue {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease: 0,
    };
    let result = |kvs: Vec<KeyValue>| RangeResult {
        count: kvs.len() as i64,
        kvs,
        more: false,
        revision: 9,
    };
    let good = result(vec![
        kv("p1/a", "x", 5),
        kv("p1/b", "x", 5),
        kv("t/a", "60", 4),
        kv("t/b", "40", 4),
    ]);
    check_read(&good, 9, "good");
    for bad in [
        result(vec![kv("p1/a", "x", 5)]),
        result(vec![kv("p1/b", "x", 5)]),
        result(vec![kv("p1/a", "x", 5), kv("p1/b", "y", 5)]),
        result(vec![kv("t/a", "60", 4), kv("t/b", "41", 4)]),
        result(vec![kv("z/a", "x", 10)]),
    ] {
        let caught = std::panic::catch_unwind(|| check_read(&bad, 9, "bad")).is_err();
        assert!(caught, "not caught: {bad:?}");
    }
}
