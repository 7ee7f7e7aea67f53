//! Watch scenarios (etcd `watchable_store_test.go`, `watcher_test.go`), on every engine.

mod common;

use std::time::Duration;

use common::{kv, Env};
use mvcc_core::{Event, EventKind, KeyValue, MvccError, TxnOp, WatchResponse};
use storage_api::Backend;

const WAIT: Duration = Duration::from_secs(5);

fn put_ev(kv: KeyValue) -> Event {
    Event {
        kind: EventKind::Put,
        kv,
    }
}

fn del_ev(key: &str, rev: i64) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue::tombstone(key.as_bytes().to_vec(), rev),
    }
}

fn watch_delete_range<B: Backend>() {
    // TestWatchDeleteRange.
    let env = Env::<B>::new();
    let s = env.open();
    for i in 0..3 {
        s.put(format!("foo_{i}").as_bytes(), b"bar", 0).unwrap();
    }
    let w = s.watch(b"foo", b"foo_99", 0).unwrap();
    s.delete_range(b"foo", b"foo_99").unwrap();
    let resp = w.recv_timeout(WAIT).unwrap();
    assert_eq!(resp.revision, 5);
    assert_eq!(
        resp.events,
        vec![del_ev("foo_0", 5), del_ev("foo_1", 5), del_ev("foo_2", 5)]
    );
    assert!(w.try_recv().is_none());
}

fn watch_compacted<B: Backend>() {
    // TestWatchCompacted: puts at 2..=11, compact(5), watch from 4.
    let env = Env::<B>::new();
    let s = env.open();
    for _ in 0..10 {
        s.put(b"foo", b"bar", 0).unwrap();
    }
    s.compact(5).unwrap();
    let w = s.watch(b"foo", b"", 4).unwrap();
    let resp = w.recv_timeout(WAIT).unwrap();
    assert_eq!(
        resp,
        WatchResponse {
            watch_id: w.id(),
            revision: 5,
            events: vec![],
            compact_revision: 5,
            canceled: true,
        }
    );
    assert!(w.recv_timeout(Duration::from_millis(50)).is_none());
    s.put(b"foo", b"more", 0).unwrap();
    assert!(w.try_recv().is_none());
    assert!(matches!(s.watch_events(4), Err(MvccError::Compacted)));
    // Watching from exactly the compaction revision replays it.
    let w = s.watch(b"foo", b"", 5).unwrap();
    let revs: Vec<i64> = (0..8)
        .map(|_| w.recv_timeout(WAIT).unwrap().revision)
        .collect();
    assert_eq!(revs, vec![5, 6, 7, 8, 9, 10, 11, 12]);
}

fn history_then_live_once_in_order<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"a", b"1", 0).unwrap(); // 2
    s.put(b"b", b"1", 0).unwrap(); // 3
    s.delete_range(b"a", b"").unwrap(); // 4
    let w = s.watch(b"a", b"c", 2).unwrap();
    s.txn(
        &[],
        &[
            TxnOp::put("a", "2", 0),
            TxnOp::put("z", "x", 0),
            TxnOp::put("b", "2", 0),
        ],
        &[],
    )
    .unwrap(); // 5
    let got: Vec<WatchResponse> = (0..4).map(|_| w.recv_timeout(WAIT).unwrap()).collect();
    let evs: Vec<(i64, Vec<Event>)> = got.into_iter().map(|r| (r.revision, r.events)).collect();
    assert_eq!(
        evs,
        vec![
            (2, vec![put_ev(kv("a", "1", 2, 2, 1, 0))]),
            (3, vec![put_ev(kv("b", "1", 3, 3, 1, 0))]),
            (4, vec![del_ev("a", 4)]),
            (
                5,
                vec![
                    put_ev(kv("a", "2", 5, 5, 1, 0)),
                    put_ev(kv("b", "2", 3, 5, 2, 0))
                ]
            ),
        ]
    );
    assert!(w.recv_timeout(Duration::from_millis(50)).is_none());
    // Single-key and from-key watchers; a future start revision skips earlier events.
    let single = s.watch(b"b", b"", 0).unwrap();
    let from = s.watch(b"b", b"\0", 7).unwrap();
    let all = s.watch(b"", b"\0", 0).unwrap();
    s.put(b"a", b"3", 0).unwrap(); // 6
    s.put(b"b", b"3", 0).unwrap(); // 7
    s.put(b"zz", b"3", 0).unwrap(); // 8
    assert_eq!(single.recv_timeout(WAIT).unwrap().revision, 7);
    assert_eq!(from.recv_timeout(WAIT).unwrap().revision, 7);
    assert_eq!(from.recv_timeout(WAIT).unwrap().revision, 8);
    let all_revs: Vec<i64> = (0..3)
        .map(|_| all.recv_timeout(WAIT).unwrap().revision)
        .collect();
    assert_eq!(all_revs, vec![6, 7, 8]);
    assert!(single.try_recv().is_none());
    assert_eq!(s.watcher_count(), 4);
    drop(single);
    from.cancel();
    assert_eq!(s.watcher_count(), 2);
    assert!(matches!(
        s.watch(b"b", b"a", 0),
        Err(MvccError::EmptyWatcherRange)
    ));
    assert!(matches!(
        s.watch(b"b", b"", -1),
        Err(MvccError::InvalidArgument(_))
    ));
}

fn watch_events_replay<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"a", b"1", 0).unwrap();
    s.txn(&[], &[TxnOp::put("b", "1", 0), TxnOp::delete("a", "")], &[])
        .unwrap();
    assert_eq!(
        s.watch_events(0).unwrap(),
        vec![
            put_ev(kv("a", "1", 2, 2, 1, 0)),
            put_ev(kv("b", "1", 3, 3, 1, 0)),
            del_ev("a", 3),
        ]
    );
    assert_eq!(s.watch_events(3).unwrap().len(), 2);
    assert!(s.watch_events(4).unwrap().is_empty());
    let s = env.reopen(s);
    assert_eq!(s.watch_events(1).unwrap().len(), 3);
}

fn no_event_loss_with_concurrent_writers<B: Backend>() {
    // Watchers created while writes are running see every event exactly once, in order.
    let env = Env::<B>::new();
    let s = std::sync::Arc::new(env.open());
    for i in 0..50 {
        s.put(format!("k{i}").as_bytes(), b"v", 0).unwrap();
    }
    let total = 300i64;
    std::thread::scope(|scope| {
        let w = s.clone();
        scope.spawn(move || {
            for i in 0..total {
                w.put(format!("k{}", i % 17).as_bytes(), b"x", 0).unwrap();
            }
        });
        for start in [2i64, 20, 51] {
            let s = s.clone();
            scope.spawn(move || {
                let watcher = s.watch(b"k", b"l", start).unwrap();
                let mut expect = start;
                while expect <= 51 + total {
                    let resp = watcher.recv_timeout(WAIT).expect("event");
                    assert_eq!(resp.revision, expect);
                    assert_eq!(resp.events.len(), 1);
                    expect += 1;
                }
            });
        }
    });
}

engine_tests!(
    watch_delete_range,
    watch_compacted,
    history_then_live_once_in_order,
    watch_events_replay,
    no_event_loss_with_concurrent_writers,
);
