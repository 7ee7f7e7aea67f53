//! Lease scenarios (etcd `lessor.go`, robustness `deterministic_test.go`), on every engine.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{kv, rows, Env};
use mvcc_core::lease::{legacy_remaining_ttl_key, LeaseRemaining};
use mvcc_core::{LeaseInfo, ManualClock, MvccError, StoreConfig, TxnOp};
use storage_api::{Backend, Tree};

fn grant_and_revoke<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    let info = s.lease_grant(5, 10).unwrap();
    assert_eq!(
        info,
        LeaseInfo {
            id: 5,
            ttl: 10,
            remaining_ttl: 10,
            keys: vec![]
        }
    );
    assert_eq!(
        s.current_revision(),
        1,
        "grant does not change the revision"
    );
    assert!(matches!(
        s.lease_grant(5, 10),
        Err(MvccError::LeaseExists(5))
    ));
    assert!(matches!(
        s.lease_grant(6, 0),
        Err(MvccError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.lease_grant(-1, 5),
        Err(MvccError::InvalidArgument(_))
    ));
    assert_eq!(s.lease_grant(0, 3).unwrap().id, 6);
    assert_eq!(s.leases(), vec![5, 6]);

    s.put(b"b", b"1", 5).unwrap(); // 2
    s.put(b"a", b"1", 5).unwrap(); // 3
    s.put(b"c", b"1", 6).unwrap(); // 4
    assert_eq!(
        s.lease_time_to_live(5).unwrap().keys,
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    // Revoke deletes every attached key in one revision, in key order.
    assert_eq!(s.lease_revoke(5).unwrap(), 5);
    let events = s.watch_events(5).unwrap();
    let keys: Vec<&[u8]> = events.iter().map(|e| e.kv.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"a"[..], &b"b"[..]]);
    assert_eq!(s.range(b"a", b"c", 0, 0, false).unwrap().count, 0);
    assert!(matches!(
        s.lease_revoke(5),
        Err(MvccError::LeaseNotFound(5))
    ));
    assert!(matches!(
        s.lease_time_to_live(5),
        Err(MvccError::LeaseNotFound(5))
    ));
    assert!(matches!(
        s.put(b"x", b"1", 5),
        Err(MvccError::LeaseNotFound(5))
    ));
    assert_eq!(s.leases(), vec![6]);
    assert_eq!(s.backend().scan(Tree::Lease, &[], &[], 0).unwrap().len(), 1);
}

fn revoke_without_live_keys_keeps_revision<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    s.lease_grant(1, 10).unwrap();
    s.lease_grant(2, 10).unwrap();
    s.lease_grant(3, 10).unwrap();
    // Key detached by a put without lease.
    s.put(b"k", b"v", 1).unwrap(); // 2
    s.put(b"k", b"v", 0).unwrap(); // 3
    assert_eq!(s.lease_revoke(1).unwrap(), 3);
    // Key moved to another lease.
    s.put(b"m", b"v", 2).unwrap(); // 4
    s.put(b"m", b"v", 3).unwrap(); // 5
    assert_eq!(s.lease_revoke(2).unwrap(), 5);
    // Key deleted before the revoke.
    s.put(b"d", b"v", 3).unwrap(); // 6
    s.delete_range(b"d", b"").unwrap(); // 7
    assert_eq!(s.lease_time_to_live(3).unwrap().keys, vec![b"m".to_vec()]);
    assert_eq!(s.lease_revoke(3).unwrap(), 8);
    assert_eq!(
        s.range(b"k", b"", 0, 0, false).unwrap().kvs,
        vec![kv("k", "v", 2, 3, 2, 0)]
    );
    assert_eq!(s.range(b"m", b"", 0, 0, false).unwrap().count, 0);
}

fn lease_attachments_in_txn<B: Backend>() {
    let env = Env::<B>::new();
    let s = env.open();
    s.lease_grant(1, 10).unwrap();
    s.txn(
        &[],
        &[TxnOp::put("a", "1", 1), TxnOp::put("b", "1", 1)],
        &[],
    )
    .unwrap();
    s.txn(&[], &[TxnOp::delete("a", "")], &[]).unwrap();
    assert_eq!(s.lease_time_to_live(1).unwrap().keys, vec![b"b".to_vec()]);
    assert_eq!(s.lease_revoke(1).unwrap(), 4);
}

fn leases_survive_reopen<B: Backend>() {
    let clock = ManualClock::new();
    let env = Env::<B>::with_config(StoreConfig::default().with_clock(clock.clone()));
    let s = env.open();
    s.lease_grant(7, 30).unwrap();
    s.lease_grant(8, 60).unwrap();
    s.put(b"a", b"1", 7).unwrap();
    s.put(b"b", b"1", 7).unwrap();
    s.put(b"c", b"1", 8).unwrap();
    s.put(b"b", b"2", 8).unwrap();
    s.delete_range(b"c", b"").unwrap();
    clock.advance(Duration::from_secs(20));
    let s = env.reopen(s);
    assert_eq!(s.leases(), vec![7, 8]);
    assert_eq!(s.lease_time_to_live(7).unwrap().keys, vec![b"a".to_vec()]);
    assert_eq!(s.lease_time_to_live(8).unwrap().keys, vec![b"b".to_vec()]);
    // TTLs are refreshed on recovery.
    assert_eq!(s.lease_time_to_live(7).unwrap().remaining_ttl, 30);
    assert_eq!(s.lease_revoke(8).unwrap(), 7);
    let s = env.reopen(s);
    assert_eq!(s.leases(), vec![7]);
    assert_eq!(s.range(b"a", b"\0", 0, 0, false).unwrap().count, 1);
}

fn expiry_with_injected_clock<B: Backend>() {
    let clock = ManualClock::new();
    let env = Env::<B>::with_config(StoreConfig::default().with_clock(clock.clone() as Arc<_>));
    let s = env.open();
    s.lease_grant(1, 5).unwrap();
    s.lease_grant(2, 10).unwrap();
    s.put(b"one", b"x", 1).unwrap(); // 2
    s.put(b"two", b"x", 2).unwrap(); // 3
    clock.advance(Duration::from_millis(4500));
    assert_eq!(s.lease_time_to_live(1).unwrap().remaining_ttl, 1);
    assert!(s.expired_leases().is_empty());
    assert_eq!(s.expire_leases().unwrap(), Vec::<i64>::new());
    // Keep-alive renews for the full TTL.
    assert_eq!(s.lease_keep_alive(1).unwrap(), 5);
    clock.advance(Duration::from_secs(5));
    assert_eq!(s.expired_leases(), vec![1]);
    // An expired lease cannot be renewed.
    assert!(matches!(
        s.lease_keep_alive(1),
        Err(MvccError::LeaseNotFound(1))
    ));
    assert_eq!(s.expire_leases().unwrap(), vec![1]);
    assert_eq!(s.current_revision(), 4);
    assert_eq!(s.range(b"one", b"", 0, 0, false).unwrap().count, 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.expire_leases().unwrap(), vec![2]);
    assert_eq!(s.current_revision(), 5);
    assert!(s.leases().is_empty());
    assert!(matches!(
        s.lease_keep_alive(3),
        Err(MvccError::LeaseNotFound(3))
    ));
}

engine_tests!(
    grant_and_revoke,
    revoke_without_live_keys_keeps_revision,
    lease_attachments_in_txn,
    leases_survive_reopen,
    expiry_with_injected_clock,
    checkpointed_remaining_ttl_survives_reopen,
    legacy_imported_remaining_ttl_rows_are_honoured_then_removed,
);

fn remaining(s: &mvcc_core::MvccStore<impl Backend>, id: i64) -> (i64, i64) {
    let info = s.lease_time_to_live(id).unwrap();
    (info.ttl, info.remaining_ttl)
}

/// etcd's lease checkpointing: a checkpoint is persisted in the lease record, does not move
/// the running expiry, and is what the lease resumes with on reopen and on `Promote`
/// (`lease_refresh_all`); a checkpoint of 0 clears it.
fn checkpointed_remaining_ttl_survives_reopen<B: Backend>() {
    let clock = ManualClock::new();
    let env = Env::<B>::with_config(StoreConfig::default().with_clock(clock.clone()));
    let s = env.open();
    s.lease_grant(1, 60).unwrap();
    s.lease_grant(2, 30).unwrap();
    s.put(b"k", b"v", 1).unwrap(); // 2
    clock.advance(Duration::from_millis(17_500));
    assert_eq!(
        s.lease_remaining_ttls(),
        vec![
            LeaseRemaining {
                id: 1,
                ttl: 60,
                remaining_ttl: 43,
                checkpointed_ttl: 0
            },
            LeaseRemaining {
                id: 2,
                ttl: 30,
                remaining_ttl: 13,
                checkpointed_ttl: 0
            },
        ]
    );
    assert_eq!(s.lease_remaining_ttls()[0].resume_ttl(), 60);
    s.lease_checkpoint(1, 42).unwrap();
    assert_eq!(s.lease_checkpointed_ttl(1).unwrap(), 42);
    assert_eq!(s.lease_checkpointed_ttl(2).unwrap(), 0);
    assert_eq!(s.lease_remaining_ttls()[0].resume_ttl(), 42);
    // The running expiry is unchanged, and so is the revision.
    assert_eq!(remaining(&s, 1), (60, 43));
    assert_eq!(s.current_revision(), 2);
    // Version 2 record: [2, ttl, remaining]; the lease without a checkpoint stays version 1.
    let mut v2 = vec![2u8];
    v2.extend_from_slice(&60i64.to_be_bytes());
    v2.extend_from_slice(&42i64.to_be_bytes());
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&30i64.to_be_bytes());
    assert_eq!(
        rows(s.backend().as_ref(), Tree::Lease),
        vec![
            (1i64.to_be_bytes().to_vec(), v2),
            (2i64.to_be_bytes().to_vec(), v1)
        ]
    );
    assert!(matches!(
        s.lease_checkpoint(3, 5),
        Err(MvccError::LeaseNotFound(3))
    ));
    assert!(matches!(
        s.lease_checkpoint(1, -1),
        Err(MvccError::InvalidArgument(_))
    ));

    // Reopen: lease 1 resumes from its checkpoint, lease 2 (none) from its full TTL.
    clock.advance(Duration::from_secs(100));
    let s = env.reopen(s);
    assert_eq!(remaining(&s, 1), (60, 42));
    assert_eq!(remaining(&s, 2), (30, 30));
    assert_eq!(s.lease_checkpointed_ttl(1).unwrap(), 42);
    assert_eq!(s.lease_time_to_live(1).unwrap().keys, vec![b"k".to_vec()]);
    clock.advance(Duration::from_secs(5));
    assert_eq!(remaining(&s, 1), (60, 37));
    // A keep-alive renews for the full TTL and leaves the checkpoint to its caller ...
    assert_eq!(s.lease_keep_alive(1).unwrap(), 60);
    assert_eq!(remaining(&s, 1), (60, 60));
    assert_eq!(s.lease_checkpointed_ttl(1).unwrap(), 42);
    // ... so a new leader's refresh resumes from the checkpoint until it is cleared.
    s.lease_refresh_all();
    assert_eq!(remaining(&s, 1), (60, 42));
    assert_eq!(remaining(&s, 2), (30, 30));
    s.lease_checkpoint(1, 0).unwrap();
    assert_eq!(s.lease_checkpointed_ttl(1).unwrap(), 0);
    s.lease_refresh_all();
    assert_eq!(remaining(&s, 1), (60, 60));
    let s = env.reopen(s);
    assert_eq!(remaining(&s, 1), (60, 60));
    assert_eq!(s.lease_checkpointed_ttl(1).unwrap(), 0);
    // An expiring checkpointed lease expires on time after a reopen.
    s.lease_checkpoint(2, 3).unwrap();
    let s = env.reopen(s);
    clock.advance(Duration::from_secs(3));
    assert_eq!(s.expired_leases(), vec![2]);
    assert_eq!(s.expire_leases().unwrap(), vec![2]);
    assert_eq!(rows(s.backend().as_ref(), Tree::Lease).len(), 1);
}

/// Stores imported by older etcd-import versions keep etcd's remaining TTL in a `meta` row:
/// it is honoured on open and removed by the lease's next checkpoint, revoke or re-grant.
fn legacy_imported_remaining_ttl_rows_are_honoured_then_removed<B: Backend>() {
    let clock = ManualClock::new();
    let env = Env::<B>::with_config(StoreConfig::default().with_clock(clock.clone()));
    let s = env.open();
    for id in [1, 2] {
        s.lease_grant(id, 600).unwrap();
        s.backend()
            .put(
                Tree::Meta,
                &legacy_remaining_ttl_key(id),
                &42i64.to_be_bytes(),
            )
            .unwrap();
    }
    // A row whose lease is gone (revoked by an older version).
    s.backend()
        .put(
            Tree::Meta,
            &legacy_remaining_ttl_key(3),
            &7i64.to_be_bytes(),
        )
        .unwrap();
    let s = env.reopen(s);
    assert_eq!(remaining(&s, 1), (600, 42));
    assert_eq!(remaining(&s, 2), (600, 42));
    assert_eq!(s.lease_checkpointed_ttl(1).unwrap(), 42);
    // Clearing the checkpoint removes the row with it.
    s.lease_checkpoint(1, 0).unwrap();
    assert_eq!(
        s.backend()
            .get(Tree::Meta, &legacy_remaining_ttl_key(1))
            .unwrap(),
        None
    );
    // Revoking removes it too; granting the stale row's id removes that one.
    s.lease_revoke(2).unwrap();
    s.lease_grant(3, 90).unwrap();
    for id in [1, 2, 3] {
        assert_eq!(
            s.backend()
                .get(Tree::Meta, &legacy_remaining_ttl_key(id))
                .unwrap(),
            None,
            "row of lease {id}"
        );
    }
    let s = env.reopen(s);
    assert_eq!(remaining(&s, 1), (600, 600));
    assert_eq!(remaining(&s, 3), (90, 90));
    assert_eq!(s.leases(), vec![1, 3]);
}
