//! Watch in bounded memory: a watcher that is not read holds at most its queue's capacity;
//! the rest waits in storage and is read back (catch-up) as the watcher is read, in order,
//! each event once; a watcher that falls behind compaction is cancelled with the compaction
//! revision; many watchers share one stream; progress notifications follow queued events.

use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{EventKind, MvccStore};
use storage_api::MemoryBackend;

fn store() -> MvccStore<MemoryBackend> {
    MvccStore::new(MemoryBackend::volatile()).unwrap()
}

/// Collects every response of `stream` (catching up as needed) until `want` events arrived.
fn drain(stream: &mvcc_core::WatchStream, want: usize) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut idle = 0;
    while out.len() < want {
        match stream.try_recv() {
            Some(r) => {
                assert!(!r.canceled, "{r:?}");
                assert!(stream.queued() <= stream.capacity());
                for e in r.events {
                    assert_eq!(e.kind, EventKind::Put);
                    out.push((r.watch_id, e.kv.mod_revision, e.kv.value));
                }
            }
            None if stream.needs_catch_up() => stream.catch_up().unwrap(),
            None => {
                idle += 1;
                assert!(idle < 1000, "stalled after {} events", out.len());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    out
}

#[test]
fn an_unread_watcher_holds_at_most_its_capacity_and_misses_nothing() {
    let s = store();
    let stream = s.watch_stream(16);
    let id = stream.watch(b"k", b"", 0).unwrap();
    for i in 0..5000 {
        let (rev, _) = s.put(b"k", format!("v{i}").as_bytes(), 0).unwrap();
        assert_eq!(rev, i + 2);
        assert!(stream.queued() <= 16);
    }
    assert_eq!(stream.queued(), 16);
    // Catch-up waits for room in the queue.
    assert!(!stream.needs_catch_up());
    let got = drain(&stream, 5000);
    assert_eq!(got.len(), 5000);
    for (i, (wid, rev, value)) in got.iter().enumerate() {
        assert_eq!(*wid, id);
        assert_eq!(*rev, i as i64 + 2);
        assert_eq!(value, format!("v{i}").as_bytes());
    }
    // Synced again: the next write is pushed.
    s.put(b"k", b"live", 0).unwrap();
    let r = stream.try_recv().unwrap();
    assert_eq!((r.revision, r.events.len()), (5002, 1));
    assert!(!stream.needs_catch_up());
}

#[test]
fn history_from_revision_one_streams_through_a_small_queue() {
    let s = store();
    for i in 0..20_000 {
        s.put(format!("k{:05}", i % 100).as_bytes(), b"x", 0)
            .unwrap();
    }
    let stream = s.watch_stream(8);
    let id = stream.watch(b"k00007", b"", 1).unwrap();
    assert_eq!(stream.queued(), 0);
    let got = drain(&stream, 200);
    assert_eq!(got.len(), 200);
    // Key k00007 is written at revisions 9, 109, 209, ...
    for (n, (wid, rev, _)) in got.iter().enumerate() {
        assert_eq!((*wid, *rev), (id, 9 + 100 * n as i64));
    }
    // The last catch-up stopped when the queue was full: one more finds nothing and syncs.
    if stream.needs_catch_up() {
        stream.catch_up().unwrap();
    }
    assert_eq!(stream.try_recv(), None);
    assert!(!stream.needs_catch_up());
}

#[test]
fn a_watcher_that_falls_behind_compaction_is_cancelled_with_the_compaction_revision() {
    let s = store();
    let stream = s.watch_stream(4);
    let id = stream.watch(b"k", b"", 0).unwrap();
    for i in 0..100 {
        s.put(b"k", format!("v{i}").as_bytes(), 0).unwrap();
    }
    // Queue full at revision 5 (revisions 2-5 queued); compaction passes it.
    s.compact(50).unwrap();
    let mut revs = Vec::new();
    let last = loop {
        match stream.try_recv() {
            Some(r) if r.canceled => break r,
            Some(r) => revs.push(r.revision),
            None => {
                assert!(stream.needs_catch_up());
                stream.catch_up().unwrap();
            }
        }
    };
    assert_eq!(revs, vec![2, 3, 4, 5]);
    assert_eq!(
        (last.watch_id, last.compact_revision, last.revision),
        (id, 50, 50)
    );
    assert_eq!(s.watcher_count(), 0);
    // A watcher created below the compaction revision: one cancellation.
    let w = s.watch(b"k", b"", 10).unwrap();
    let r = w.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(r.canceled);
    assert_eq!(r.compact_revision, 50);
    assert_eq!(w.recv_timeout(Duration::from_millis(50)), None);
}

#[test]
fn many_watchers_share_one_stream_in_order() {
    let s = Arc::new(store());
    let stream = s.watch_stream(128);
    let ids: Vec<i64> = (0..1000)
        .map(|i| {
            stream
                .watch(format!("k{:03}", i % 10).as_bytes(), b"", 0)
                .unwrap()
        })
        .collect();
    assert_eq!(s.watcher_count(), 1000);
    for i in 0..10 {
        s.put(format!("k{i:03}").as_bytes(), b"v", 0).unwrap();
    }
    // Every watcher of key i gets revision i + 2, exactly once.
    let got = drain(&stream, 1000);
    let mut per_watcher = std::collections::HashMap::new();
    for (wid, rev, _) in got {
        assert!(
            per_watcher.insert(wid, rev).is_none(),
            "watcher {wid} twice"
        );
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(per_watcher[id], (n % 10) as i64 + 2);
    }
    drop(stream);
    assert_eq!(s.watcher_count(), 0);
}

#[test]
fn progress_follows_queued_events_and_waits_for_catch_up() {
    let s = store();
    let stream = s.watch_stream(2);
    let id = stream.watch(b"k", b"", 0).unwrap();
    for _ in 0..5 {
        s.put(b"k", b"v", 0).unwrap();
    }
    // Unsynced (queue full at revision 4): the stream-wide progress waits for catch-up.
    stream.request_progress();
    assert!(!stream.progress(id));
    let mut seen = Vec::new();
    loop {
        match stream.try_recv() {
            Some(r) if r.is_progress() => {
                assert_eq!((r.watch_id, r.revision), (-1, 6));
                break;
            }
            Some(r) => seen.push(r.revision),
            None => stream.catch_up().unwrap(),
        }
    }
    assert_eq!(seen, vec![2, 3, 4, 5, 6]);
    // Synced: a per-watcher progress is queued at once.
    assert!(stream.progress(id));
    let r = stream.try_recv().unwrap();
    assert_eq!((r.watch_id, r.revision, r.is_progress()), (id, 6, true));
}

#[test]
fn cancel_and_close_end_watchers() {
    let s = store();
    let w = s.watch(b"k", b"", 0).unwrap();
    s.put(b"k", b"1", 0).unwrap();
    w.cancel();
    // What was queued stays readable, then the end.
    assert_eq!(w.recv().map(|r| r.revision), Some(2));
    assert_eq!(w.recv(), None);
    let w = s.watch(b"k", b"", 0).unwrap();
    s.close().unwrap();
    assert_eq!(w.recv(), None);
}

/// A consumer that takes one response at a time and checks for catch-up after each one (what
/// a gRPC watch stream does) reads each stored event about once: catch-up waits until half
/// the queue is free and reads no more rows than fit. Reading 1000 rows per catch-up whatever
/// the room read 2,371,626 events for these 3,000 (each catch-up moved one response).
#[test]
fn a_consumer_that_reads_response_by_response_reads_the_history_about_once() {
    let s = store();
    for i in 0..3000 {
        let (rev, _) = s
            .put(format!("k{:04}", i % 500).as_bytes(), b"x", 0)
            .unwrap();
        assert_eq!(rev, i + 2);
    }
    let stream = s.watch_stream(128);
    let id = stream.watch(b"k", b"l", 1).unwrap();
    let mut next = 2;
    let mut idle = 0;
    while next <= 3001 {
        if stream.needs_catch_up() {
            stream.catch_up().unwrap();
        }
        match stream.try_recv() {
            Some(r) => {
                assert_eq!((r.watch_id, r.revision, r.events.len()), (id, next, 1));
                next += 1;
            }
            None => {
                idle += 1;
                assert!(idle < 1000, "stalled at revision {next}");
            }
        }
    }
    let read = stream.history_events_read();
    assert!(
        (3000..=3000 + 3000 / 64 + 128).contains(&read),
        "{read} events read for 3000 delivered"
    );
    assert!(!stream.needs_catch_up());
}
