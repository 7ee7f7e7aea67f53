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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_batch_is_replayed_without_applying_anything_twice() {
    let inner = MemoryBackend::volatile();
    let faulty = FaultyBackend::wrap(inner.clone());
    let mut sm = StateMachine::open(faulty.clone(), StoreConfig::default()).unwrap();
    let first = entry(1, EntryPayload::Normal(put("a")));
    let batch = entry(
        2,
        EntryPayload::Normal(Command::Batch(vec![put("b"), put("c"), put("d")])),
    );
    sm.apply(vec![first.clone()]).await.unwrap();
    // The third command's write fails: b and c are in the store, d is not.
    faulty.plan().fail_nth(FaultOp::Write, 3, FaultKind::Before);
    assert!(sm.apply(vec![batch.clone()]).await.is_err());
    drop(sm);

    // A new state machine over what the backend holds resumes inside the batch.
    let mut sm =
        StateMachine::open(FaultyBackend::wrap(inner.clone()), StoreConfig::default()).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(first.log_id));
    let out = sm.apply(vec![batch.clone()]).await.unwrap();
    match &out[0].0 {
        Ok(rusd_raft::CommandResponse::Batch(results)) => {
            assert_eq!(results.len(), 3);
            assert!(results[0].is_err() && results[1].is_err(), "{results:?}");
            match &results[2] {
                Ok(rusd_raft::CommandResponse::Put(p)) => assert_eq!(p.revision, 5),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    let store = sm.store();
    assert_eq!(store.current_revision(), 5);
    for (k, rev) in [("a", 2), ("b", 3), ("c", 4), ("d", 5)] {
        let r = store.range(k.as_bytes(), b"", 0, 0, false).unwrap();
        assert_eq!(
            (r.kvs.len(), r.kvs[0].mod_revision, r.kvs[0].version),
            (1, rev, 1),
            "{k}"
        );
    }
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(batch.log_id));
}
