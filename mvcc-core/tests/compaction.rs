//! Compaction scenarios (etcd `kv_test.go` TestKVCompact*, `kvstore_compaction_test.go`,
//! `kvstore_test.go` TestRestoreContinueUnfinishedCompaction, spec §2.11), on every engine.

mod common;

use common::{kv, rows, Env};
use mvcc_core::{KeyValue, MvccError, MvccStore, Revision, StoreConfig, TxnOp};
use storage_api::{Backend, Tree};

fn all_at<B: Backend>(s: &MvccStore<B>, rev: i64) -> Result<Vec<KeyValue>, String> {
    s.range(b"\0", b"\0", rev, 0, false)
        .map(|r| r.kvs)
        .map_err(|e| e.to_string())
}

fn kv_keys<B: Backend>(s: &MvccStore<B>) -> Vec<Vec<u8>> {
    rows(s.backend().as_ref(), Tree::Kv)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn meta<B: Backend>(s: &MvccStore<B>, key: &[u8]) -> Option<i64> {
    s.backend()
        .get(Tree::Meta, key)
        .unwrap()
        .map(|v| i64::from_be_bytes(v.try_into().unwrap()))
}

fn compact_reserve_last_value<B: Backend>() {
    // TestKVCompactReserveLastValue.
    let env = Env::<B>::new();
    let s = env.open();
    for id in 1..=3 {
        s.lease_grant(id, 100).unwrap();
    }
    s.put(b"foo", b"bar0", 1).unwrap(); // 2
    s.put(b"foo", b"bar1", 2).unwrap(); // 3
    s.delete_range(b"foo", b"").unwrap(); // 4
    s.put(b"foo", b"bar2", 3).unwrap(); // 5
    let cases = [
        (1, vec![kv("foo", "bar0", 2, 2, 1, 1)]),
        (2, vec![kv("foo", "bar1", 2, 3, 2, 2)]),
        (3, vec![]),
        (4, vec![kv("foo", "bar2", 5, 5, 1, 3)]),
    ];
    for (rev, want) in cases {
        s.compact(rev).unwrap();
        let r = s.range(b"foo", b"", rev + 1, 0, false).unwrap();
        assert_eq!(r.kvs, want, "after compact({rev})");
    }
}

fn compact_bad<B: Backend>() {
    // TestKVCompactBad.
    let env = Env::<B>::new();
    let s = env.open();
    for v in ["bar0", "bar1", "bar2"] {
        s.put(b"foo", v.as_bytes(), 0).unwrap();
    }
    let cases: [(i64, Result<(), &str>); 6] = [
        (0, Ok(())),
        (1, Ok(())),
        (1, Err("compacted")),
        (4, Ok(())),
        (5, Err("future")),
        (100, Err("future")),
    ];
    for (rev, want) in cases {
        let got = match s.compact(rev) {
            Ok(_) => Ok(()),
            Err(MvccError::Compacted) => Err("compacted"),
            Err(MvccError::FutureRevision) => Err("future"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(got, want, "compact({rev})");
    }
    assert_eq!(s.compact_revision(), 4);
    assert_eq!(s.current_revision(), 4);
}

fn compaction_is_invisible_at_or_above<B: Backend>() {
    // Rules 12-13, incrementally at every revision, with physical row checks.
    let env = Env::<B>::with_config(StoreConfig::default().with_compaction_batch_limit(3));
    let s = env.open();
    s.put(b"a", b"1", 0).unwrap(); // 2
    s.put(b"b", b"1", 0).unwrap(); // 3
    s.put(b"a", b"2", 0).unwrap(); // 4
    s.delete_range(b"b", b"").unwrap(); // 5
    s.txn(
        &[],
        &[TxnOp::put("c", "1", 0), TxnOp::put("a", "3", 0)],
        &[],
    )
    .unwrap(); // 6
    s.delete_range(b"a", b"b").unwrap(); // 7
    s.put(b"b", b"2", 0).unwrap(); // 8
    let cur = s.current_revision();
    let before: Vec<_> = (1..=cur).map(|r| all_at(&s, r)).collect();
    for c in 1..=cur {
        s.compact(c).unwrap();
        for r in 1..=cur {
            let got = all_at(&s, r);
            if r < c {
                assert_eq!(got, Err(MvccError::Compacted.to_string()), "c {c} r {r}");
            } else {
                assert_eq!(got, before[(r - 1) as usize], "c {c} r {r}");
            }
        }
        assert_eq!(meta(&s, b"finishedCompactRev"), Some(c));
        assert_eq!(meta(&s, b"scheduledCompactRev"), Some(c));
    }
    // After compact(8): a's tombstone (7) dropped, b@8, c@6 kept.
    assert_eq!(
        kv_keys(&s),
        vec![
            Revision::new(6, 0).to_key(false),
            Revision::new(8, 0).to_key(false),
        ]
    );
    assert_eq!(s.index_len(), 2);
}

fn tombstone_at_compaction_revision_is_kept<B: Backend>() {
    // PR #18274: compact(C) keeps a tombstone at exactly C; a later compaction removes it.
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"foo", b"bar", 0).unwrap(); // 2
    s.delete_range(b"foo", b"").unwrap(); // 3
    s.put(b"zzz", b"1", 0).unwrap(); // 4
    s.compact(3).unwrap();
    assert_eq!(
        kv_keys(&s),
        vec![
            Revision::new(3, 0).to_key(true),
            Revision::new(4, 0).to_key(false)
        ]
    );
    assert_eq!(s.count_revisions(b"foo"), 1);
    // A watcher from 3 still gets the DELETE.
    let events = s.watch_events(3).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, mvcc_core::EventKind::Delete);
    assert_eq!(events[0].kv, KeyValue::tombstone(b"foo".to_vec(), 3));
    s.compact(4).unwrap();
    assert_eq!(kv_keys(&s), vec![Revision::new(4, 0).to_key(false)]);
    assert_eq!(s.count_revisions(b"foo"), 0);
    assert_eq!(s.index_len(), 1);
}

fn delete_and_recreate_in_compaction_revision<B: Backend>() {
    // etcd issue #22376: a key deleted and re-created inside revision C survives compact(C).
    // (A from-key delete [k, "\0") does not conflict with a put of k in etcd's checkIntervals.)
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"k", b"old", 0).unwrap(); // 2
    let r = s
        .txn(
            &[],
            &[TxnOp::delete("k", "\0"), TxnOp::put("k", "new", 0)],
            &[],
        )
        .unwrap();
    assert_eq!(r.revision, 3);
    let want = vec![kv("k", "new", 3, 3, 1, 0)];
    assert_eq!(s.range(b"k", b"", 0, 0, false).unwrap().kvs, want);
    s.compact(3).unwrap();
    assert_eq!(s.range(b"k", b"", 0, 0, false).unwrap().kvs, want);
    assert_eq!(
        kv_keys(&s),
        vec![
            Revision::new(3, 0).to_key(true),
            Revision::new(3, 1).to_key(false)
        ]
    );
    let s = env.reopen(s);
    assert_eq!(s.range(b"k", b"", 0, 0, false).unwrap().kvs, want);
    s.put(b"x", b"1", 0).unwrap(); // 4
    s.compact(4).unwrap();
    assert_eq!(s.range(b"k", b"", 0, 0, false).unwrap().kvs, want);
    let s = env.reopen(s);
    assert_eq!(s.range(b"k", b"", 0, 0, false).unwrap().kvs, want);
    assert_eq!(
        s.put(b"k", b"newer", 0).unwrap().1,
        kv("k", "newer", 3, 5, 2, 0)
    );
}

fn compact_all_and_restore<B: Backend>() {
    // TestCompactAllAndRestore.
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"foo", b"bar", 0).unwrap();
    s.put(b"foo", b"bar1", 0).unwrap();
    s.put(b"foo", b"bar2", 0).unwrap();
    s.delete_range(b"foo", b"").unwrap();
    let rev = s.current_revision();
    assert_eq!(rev, 5);
    s.compact(rev).unwrap();
    let s = env.reopen(s);
    assert_eq!(s.current_revision(), 5);
    assert_eq!(s.compact_revision(), 5);
    let r = s.range(b"foo", b"", 0, 0, false).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.revision), (0, 0, 5));
    // The tombstone-only key was restored into the index (PR #19188).
    assert_eq!(s.count_revisions(b"foo"), 1);
    assert_eq!(
        s.put(b"foo", b"again", 0).unwrap().1,
        kv("foo", "again", 6, 6, 1, 0)
    );
}

fn continue_unfinished_compaction<B: Backend>() {
    // TestRestoreContinueUnfinishedCompaction: a scheduled but unfinished compaction resumes.
    let env = Env::<B>::new();
    let s = env.open();
    s.put(b"foo", b"bar", 0).unwrap(); // 2
    s.put(b"foo", b"bar1", 0).unwrap(); // 3
    s.put(b"foo", b"bar2", 0).unwrap(); // 4
    s.put(b"other", b"x", 0).unwrap(); // 5
    s.put(b"other", b"y", 0).unwrap(); // 6
                                       // Crash after scheduling compact(4) and deleting only part of the rows.
    s.backend()
        .put(Tree::Meta, b"scheduledCompactRev", &4i64.to_be_bytes())
        .unwrap();
    s.backend()
        .delete(Tree::Kv, &Revision::new(2, 0).to_key(false))
        .unwrap();
    let s = env.reopen(s);
    assert_eq!(s.compact_revision(), 4);
    assert_eq!(s.current_revision(), 6);
    assert!(matches!(
        s.range(b"foo", b"", 3, 0, false),
        Err(MvccError::Compacted)
    ));
    assert_eq!(
        s.range(b"foo", b"", 4, 0, false).unwrap().kvs,
        vec![kv("foo", "bar2", 2, 4, 3, 0)]
    );
    assert_eq!(
        kv_keys(&s),
        vec![
            Revision::new(4, 0).to_key(false),
            Revision::new(5, 0).to_key(false),
            Revision::new(6, 0).to_key(false),
        ]
    );
    assert_eq!(meta(&s, b"finishedCompactRev"), Some(4));
    // Reopening again changes nothing.
    let s = env.reopen(s);
    assert_eq!((s.compact_revision(), s.current_revision()), (4, 6));
    assert!(matches!(s.compact(4), Err(MvccError::Compacted)));
    s.compact(5).unwrap();
}

fn compaction_in_batches<B: Backend>() {
    let env = Env::<B>::with_config(
        StoreConfig::default()
            .with_compaction_batch_limit(10)
            .with_compaction_sleep_interval(std::time::Duration::from_millis(1)),
    );
    let s = env.open();
    for i in 0..95 {
        s.put(
            format!("k{}", i % 5).as_bytes(),
            format!("{i}").as_bytes(),
            0,
        )
        .unwrap();
    }
    let stats = s.compact(96).unwrap();
    assert_eq!(stats.revision, 96);
    assert_eq!(stats.rows_scanned, 95);
    assert_eq!(stats.rows_deleted, 90);
    assert_eq!(stats.batches, 10);
    assert_eq!(kv_keys(&s).len(), 5);
    let r = s.range(b"k", b"l", 0, 0, false).unwrap();
    assert_eq!(r.count, 5);
    assert_eq!(r.kvs[0], kv("k0", "90", 2, 92, 19, 0));
}

fn compaction_concurrent_with_writers_and_readers<B: Backend>() {
    let env = Env::<B>::with_config(
        StoreConfig::default()
            .with_compaction_batch_limit(7)
            .with_compaction_sleep_interval(std::time::Duration::ZERO),
    );
    let s = std::sync::Arc::new(env.open());
    for i in 0..200 {
        s.put(format!("k{}", i % 10).as_bytes(), b"v", 0).unwrap();
    }
    std::thread::scope(|scope| {
        let w = s.clone();
        scope.spawn(move || {
            for i in 0..200 {
                w.put(format!("k{}", i % 10).as_bytes(), b"w", 0).unwrap();
            }
        });
        let r = s.clone();
        scope.spawn(move || {
            for _ in 0..200 {
                match r.range(b"k", b"l", 150, 0, false) {
                    Ok(res) => assert_eq!(res.count, 10),
                    Err(MvccError::Compacted) => {}
                    Err(e) => panic!("{e}"),
                }
                let res = r.range(b"k", b"l", 0, 0, false).unwrap();
                assert_eq!(res.count, 10);
            }
        });
        let c = s.clone();
        scope.spawn(move || {
            for rev in [50, 120, 180, 201] {
                c.compact(rev).unwrap();
            }
        });
    });
    assert_eq!(s.current_revision(), 401);
    assert_eq!(s.compact_revision(), 201);
    let s = std::sync::Arc::try_unwrap(s).unwrap();
    let before = all_at(&s, 0);
    let s = env.reopen(s);
    assert_eq!(all_at(&s, 0), before);
}

fn compaction_races_deletes_and_recreates<B: Backend>() {
    // Index compaction runs outside the write lock: keys deleted, re-created and compacted
    // concurrently must leave the index and the backend consistent (checked through reopen).
    let env = Env::<B>::with_config(
        StoreConfig::default()
            .with_compaction_batch_limit(5)
            .with_compaction_sleep_interval(std::time::Duration::ZERO),
    );
    let s = std::sync::Arc::new(env.open());
    std::thread::scope(|scope| {
        for w in 0..2u32 {
            let s = s.clone();
            scope.spawn(move || {
                for i in 0..150u32 {
                    let key = format!("k{}", (i * 7 + w) % 6);
                    if i % 3 == 0 {
                        s.delete_range(key.as_bytes(), b"").unwrap();
                    } else {
                        s.put(key.as_bytes(), format!("{w}-{i}").as_bytes(), 0)
                            .unwrap();
                    }
                }
            });
        }
        let c = s.clone();
        scope.spawn(move || {
            for _ in 0..30 {
                let target = c.current_revision() - 3;
                match c.compact(target) {
                    Ok(_) | Err(MvccError::Compacted) => {}
                    Err(e) => panic!("{e}"),
                }
                std::thread::yield_now();
            }
        });
        let r = s.clone();
        scope.spawn(move || {
            for _ in 0..300 {
                let res = r.range(b"k", b"l", 0, 0, false).unwrap();
                assert!(res.count <= 6);
            }
        });
    });
    let s = std::sync::Arc::try_unwrap(s).unwrap();
    let cur = s.current_revision();
    let comp = s.compact_revision();
    let before: Vec<_> = (comp.max(1)..=cur).map(|r| all_at(&s, r)).collect();
    let s = env.reopen(s);
    assert_eq!((s.current_revision(), s.compact_revision()), (cur, comp));
    let after: Vec<_> = (comp.max(1)..=cur).map(|r| all_at(&s, r)).collect();
    assert_eq!(after, before);
    assert!(after.iter().all(|r| r.is_ok()));
}

fn scheduled_compaction_is_in_force_before_its_rows_go<B: Backend>() {
    let env = Env::<B>::new();
    let s = std::sync::Arc::new(env.open());
    for v in ["a", "b", "c"] {
        s.put(b"foo", v.as_bytes(), 0).unwrap(); // 2, 3, 4
    }
    let job = s.schedule_compaction(3).unwrap();
    assert_eq!(job.revision(), 3);
    // In force: below 3 is compacted, at 3 the history is intact; the rows are all there.
    assert!(matches!(
        s.range(b"foo", b"", 2, 0, false),
        Err(MvccError::Compacted)
    ));
    assert_eq!(
        s.range(b"foo", b"", 3, 0, false).unwrap().kvs,
        vec![kv("foo", "b", 2, 3, 2, 0)]
    );
    assert!(matches!(s.compact(3), Err(MvccError::Compacted)));
    assert_eq!(kv_keys(&s).len(), 3);
    assert_eq!(meta(&s, b"scheduledCompactRev"), Some(3));
    assert_eq!(meta(&s, b"finishedCompactRev"), None);
    assert!(!s.wait_compacted(3, std::time::Duration::ZERO).unwrap());
    // Writes go on meanwhile.
    assert_eq!(s.put(b"foo", b"d", 0).unwrap().0, 5);

    let stats = s.finish_compaction(job).unwrap().unwrap();
    assert_eq!(
        (stats.revision, stats.rows_scanned, stats.rows_deleted),
        (3, 2, 1)
    );
    assert_eq!(
        kv_keys(&s),
        vec![
            Revision::new(3, 0).to_key(false),
            Revision::new(4, 0).to_key(false),
            Revision::new(5, 0).to_key(false),
        ]
    );
    assert_eq!(meta(&s, b"finishedCompactRev"), Some(3));
    assert!(s.wait_compacted(3, std::time::Duration::ZERO).unwrap());

    // A job overtaken by a later compaction that finished first does nothing (and does not
    // move `finishedCompactRev` back).
    let early = s.schedule_compaction(4).unwrap();
    s.compact(5).unwrap();
    assert_eq!(meta(&s, b"finishedCompactRev"), Some(5));
    assert_eq!(s.finish_compaction(early).unwrap(), None);
    assert_eq!(meta(&s, b"finishedCompactRev"), Some(5));
    assert_eq!(kv_keys(&s), vec![Revision::new(5, 0).to_key(false)]);

    // In the background: the compaction thread deletes the rows; `wait_compacted` sees it.
    s.put(b"foo", b"e", 0).unwrap(); // 6
    s.put(b"foo", b"f", 0).unwrap(); // 7
    let res = s
        .kv_compact_in_background(&mvcc_core::Compaction {
            revision: 7,
            physical: true,
        })
        .unwrap();
    assert_eq!(
        (res.revision, res.stats.revision, res.stats.rows_deleted),
        (7, 7, 0)
    );
    assert!(s
        .wait_compacted(7, std::time::Duration::from_secs(30))
        .unwrap());
    assert_eq!(kv_keys(&s), vec![Revision::new(7, 0).to_key(false)]);
    assert_eq!(meta(&s, b"finishedCompactRev"), Some(7));
}

fn a_reload_voids_the_jobs_scheduled_before_it<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    for v in ["a", "b", "c"] {
        s.put(b"foo", v.as_bytes(), 0).unwrap(); // 2, 3, 4
    }
    let before = rows(s.backend().as_ref(), Tree::Kv);
    let job = s.schedule_compaction(4).unwrap();
    // The backend's content is replaced by its earlier rows (as a snapshot install does,
    // here without the marker), then reloaded: the job must not delete anything.
    s.backend()
        .delete(Tree::Meta, b"scheduledCompactRev")
        .unwrap();
    s.reload().unwrap();
    assert_eq!((s.current_revision(), s.compact_revision()), (4, -1));
    assert_eq!(s.finish_compaction(job).unwrap(), None);
    assert_eq!(rows(s.backend().as_ref(), Tree::Kv), before);
    assert!(!s.wait_compacted(4, std::time::Duration::ZERO).unwrap());
    assert_eq!(
        s.range(b"foo", b"", 2, 0, false).unwrap().kvs[0].value,
        b"a"
    );
}

fn a_dropped_job_is_finished_by_the_reopen<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    for v in ["a", "b", "c"] {
        s.put(b"foo", v.as_bytes(), 0).unwrap(); // 2, 3, 4
    }
    drop(s.schedule_compaction(4).unwrap());
    assert_eq!(kv_keys(&s).len(), 3);
    let s = env.reopen(s);
    assert_eq!(s.compact_revision(), 4);
    assert_eq!(kv_keys(&s), vec![Revision::new(4, 0).to_key(false)]);
    assert_eq!(meta(&s, b"finishedCompactRev"), Some(4));
    assert!(s.wait_compacted(4, std::time::Duration::ZERO).unwrap());
}

engine_tests!(
    scheduled_compaction_is_in_force_before_its_rows_go,
    a_reload_voids_the_jobs_scheduled_before_it,
    a_dropped_job_is_finished_by_the_reopen,
    compaction_races_deletes_and_recreates,
    compact_reserve_last_value,
    compact_bad,
    compaction_is_invisible_at_or_above,
    tombstone_at_compaction_revision_is_kept,
    delete_and_recreate_in_compaction_revision,
    compact_all_and_restore,
    continue_unfinished_compaction,
    compaction_in_batches,
    compaction_concurrent_with_writers_and_readers,
);
