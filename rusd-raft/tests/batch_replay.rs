//! A batch entry interrupted by a storage failure after some of its commands is replayed
//! exactly: the commands already in the store are skipped, the others applied once.

use mvcc_core::{Put, StoreConfig};
use rusd_raft::openraft::storage::RaftStateMachine;
use rusd_raft::openraft::{Entry, EntryPayload, LogId};
use rusd_raft::state_machine::StateMachine;
use rusd_raft::{Command, TypeConfig};
use storage_api::fault::{FaultKind, FaultOp, FaultyBackend};
use storage_api::MemoryBackend;

fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(rusd_raft::openraft::CommittedLeaderId::new(1, 1), index),
        payload,
    }
}

fn put(k: &str) -> Command {
    Command::Put(Put::new(k, "v", 0))
}

fn put_prev(k: &str, v: &str) -> Command {
    Command::Put(Put {
        prev_kv: true,
        ..Put::new(k, v, 0)
    })
}

/// The batch `[b, c, b' (reads its key), d, e]` after the entry `a`: three backend writes
/// (the runs of plain puts `[b, c]` and `[d, e]` are one write each, see
/// `MvccStore::kv_put_group`), the `n`th of which fails (counted from the batch). A new state machine resumes inside
/// the batch; every command is applied exactly once and the revisions are those of an
/// uninterrupted apply.
async fn interrupted_at(n: u64, skipped: usize) {
    let inner = MemoryBackend::volatile();
    let faulty = FaultyBackend::wrap(inner.clone());
    let mut sm = StateMachine::open(faulty.clone(), StoreConfig::default()).unwrap();
    let first = entry(1, EntryPayload::Normal(put("a")));
    let batch = entry(
        2,
        EntryPayload::Normal(Command::Batch(vec![
            put("b"),
            put("c"),
            put_prev("b", "w"),
            put("d"),
            put("e"),
        ])),
    );
    sm.apply(vec![first.clone()]).await.unwrap();
    // Write `n` (1, 2 or 3) of the batch fails.
    faulty.plan().fail_nth(FaultOp::Write, n, FaultKind::Before);
    assert!(sm.apply(vec![batch.clone()]).await.is_err());
    drop(sm);

    let mut sm =
        StateMachine::open(FaultyBackend::wrap(inner.clone()), StoreConfig::default()).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(first.log_id));
    let out = sm.apply(vec![batch.clone()]).await.unwrap();
    let revisions: Vec<Option<i64>> = match &out[0].0 {
        Ok(rusd_raft::CommandResponse::Batch(results)) => results
            .iter()
            .map(|r| match r {
                Ok(rusd_raft::CommandResponse::Put(p)) => Some(p.revision),
                Err(rusd_raft::CommandError::Other(m)) if m == "applied before a restart" => None,
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    };
    let all = [Some(3), Some(4), Some(5), Some(6), Some(7)];
    let mut expected = vec![None; skipped];
    expected.extend_from_slice(&all[skipped..]);
    assert_eq!(revisions, expected, "write {n} failed");
    let store = sm.store();
    assert_eq!(store.current_revision(), 7);
    for (k, v, rev, version) in [
        ("a", "v", 2, 1),
        ("b", "w", 5, 2),
        ("c", "v", 4, 1),
        ("d", "v", 6, 1),
        ("e", "v", 7, 1),
    ] {
        let r = store.range(k.as_bytes(), b"", 0, 0, false).unwrap();
        assert_eq!(
            (
                r.kvs.len(),
                r.kvs[0].value.as_slice(),
                r.kvs[0].mod_revision,
                r.kvs[0].version
            ),
            (1, v.as_bytes(), rev, version),
            "{k} after write {n} failed"
        );
    }
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(batch.log_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_batch_is_replayed_without_applying_anything_twice() {
    // The first run of puts failed: nothing of the batch was applied.
    interrupted_at(1, 0).await;
    // The put reading its key failed: the first run is skipped.
    interrupted_at(2, 2).await;
    // The second run failed: all before it is skipped.
    interrupted_at(3, 3).await;
}
