//! Lease scenarios (etcd `lessor.go`, robustness `deterministic_test.go`), on every engine.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{kv, Env};
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
);
