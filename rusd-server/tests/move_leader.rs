//! Cluster operations across three `rusd` processes (issue #11): LeaseTimeToLive and
//! LeaseLeases asked of a follower are answered by the leader, whose lessor alone sees the
//! keep-alives; MoveLeader hands leadership to the named follower, and is refused as etcd
//! refuses it (on a follower: `etcdserver: not leader`; to an unknown member: `etcdserver:
//! bad leader transferee`).
//!
//! About 6 s in a debug build (2 s of it a wait for a lease to age).

mod common;

use std::time::{Duration, Instant};

use etcd_client::{Client, LeaseTimeToLiveOptions};
use rusd_testkit::cluster::{initial_cluster, ClusterState, Member};
use tonic::Code;

const RUSD: &str = env!("CARGO_BIN_EXE_rusd");
const TOKEN: &str = "rusd-move-leader-test";
/// `--election-timeout` of the members (ms).
const ELECTION_MS: u64 = 300;

/// The leader and term every one of `clients` reports, once they agree.
async fn agreed_leader(clients: &mut [Client], within: Duration) -> (u64, u64) {
    let deadline = Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for c in clients.iter_mut() {
            match tokio::time::timeout(Duration::from_secs(1), c.status()).await {
                Ok(Ok(s)) => seen.push((s.leader(), s.raft_term())),
                _ => seen.push((0, 0)),
            }
        }
        if seen[0].0 != 0 && seen.iter().all(|s| *s == seen[0]) {
            return seen[0];
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader within {within:?}: {seen:x?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_time_to_live_comes_from_the_leader_and_move_leader_moves_it() {
    tokio::time::timeout(Duration::from_secs(120), run())
        .await
        .expect("move-leader test took longer than 120 s");
}

async fn run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members: Vec<Member> = (1..=3)
        .map(|i| {
            Member::new(RUSD, tmp.path(), &format!("m{i}"))
                .unwrap()
                .backend("memory")
                .token(TOKEN)
                .timing(50, ELECTION_MS)
        })
        .collect();
    let cluster = initial_cluster(&members);
    for m in &mut members {
        m.spawn(&cluster, ClusterState::New).unwrap();
    }
    // Dropping the members kills them, whatever happened.
    let ids: Vec<u64> = members
        .iter()
        .map(|m| rusd_raft::member_id(&[m.peer_url()], TOKEN))
        .collect();
    let mut clients = Vec::new();
    for m in &members {
        clients.push(common::connect_to(&m.endpoint()).await);
    }
    let (leader, term) = agreed_leader(&mut clients, Duration::from_secs(20)).await;
    let li = ids.iter().position(|id| *id == leader).unwrap();
    let (fi, oi) = ((li + 1) % 3, (li + 2) % 3);

    // A lease of 10 s, kept alive on the leader after 2 s: a follower answers TimeToLive
    // with the leader's 10 s (its own lessor never saw the keep-alive: 8 s).
    let granted = clients[li].lease_grant(10, None).await.unwrap();
    let lease = granted.id();
    clients[li]
        .put(
            "leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut keeper, mut renewals) = clients[li].lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let renewed = renewals.message().await.unwrap().unwrap();
    assert_eq!((renewed.id(), renewed.ttl()), (lease, 10));
    let ttl = clients[fi]
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(
        (ttl.id(), ttl.granted_ttl(), ttl.keys().to_vec()),
        (lease, 10, vec![b"leased".to_vec()])
    );
    assert!(ttl.ttl() >= 9, "a follower's stale TTL: {ttl:?}");
    let unknown = clients[fi]
        .lease_time_to_live(lease + 1, None)
        .await
        .unwrap();
    assert_eq!((unknown.id(), unknown.ttl()), (lease + 1, -1));
    let listed = clients[oi].leases().await.unwrap();
    let listed: Vec<i64> = listed.leases().iter().map(|l| l.id()).collect();
    assert_eq!(listed, vec![lease]);

    // MoveLeader on a follower: etcd's ErrGRPCNotLeader; to an unknown member: etcd's
    // ErrGRPCBadLeaderTransferee; to the leader itself: done.
    assert_eq!(
        common::status(clients[fi].move_leader(ids[oi]).await),
        (Code::FailedPrecondition, "etcdserver: not leader".into())
    );
    let unknown_id = ids.iter().fold(1u64, |a, id| a ^ id) | 1;
    assert!(!ids.contains(&unknown_id));
    assert_eq!(
        common::status(clients[li].move_leader(unknown_id).await),
        (
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee".into()
        )
    );
    clients[li].move_leader(leader).await.unwrap();
    assert_eq!(
        agreed_leader(&mut clients, Duration::from_secs(5)).await,
        (leader, term)
    );

    // MoveLeader to follower `fi`: answered once it leads; every member agrees within a few
    // election timeouts, in a later term.
    clients[li].move_leader(ids[fi]).await.unwrap();
    let (new_leader, new_term) =
        agreed_leader(&mut clients, Duration::from_millis(10 * ELECTION_MS)).await;
    assert_eq!(new_leader, ids[fi]);
    assert!(new_term > term, "term {new_term} after {term}");

    // Writes through the old leader (forwarded) and the new one; read back linearizably on
    // every member; headers name the answering member and the new term.
    let r1 = clients[li].put("moved/1", "a", None).await.unwrap();
    let r2 = clients[fi].put("moved/2", "b", None).await.unwrap();
    let rev1 = r1.header().unwrap().revision();
    assert_eq!(r2.header().unwrap().revision(), rev1 + 1);
    for (i, c) in clients.iter_mut().enumerate() {
        let got = c
            .get("moved/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let header = got.header().unwrap();
        assert_eq!((header.member_id(), header.raft_term()), (ids[i], new_term));
        let kvs = common::kvs(&got);
        assert_eq!(
            kvs,
            vec![
                ("moved/1".to_string(), "a".to_string(), rev1),
                ("moved/2".to_string(), "b".to_string(), rev1 + 1),
            ]
        );
        assert_eq!(c.status().await.unwrap().leader(), ids[fi]);
    }
    // The old leader is a follower now: MoveLeader there is refused.
    assert_eq!(
        common::status(clients[li].move_leader(ids[oi]).await),
        (Code::FailedPrecondition, "etcdserver: not leader".into())
    );
    drop(members);
}
