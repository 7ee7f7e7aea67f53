//! Three `rusd` processes on loopback as one cluster (etcd's flags): writes through every
//! endpoint with `etcd-client`, SIGKILL of the leader, a new leader, every acknowledged write
//! readable, the killed member restarted catches up, and a fourth member is added (a learner
//! promoted once in sync) and removed.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use rusd_testkit::cluster::{initial_cluster, ClusterState, Member};

const RUSD: &str = env!("CARGO_BIN_EXE_rusd");
const TOKEN: &str = "rusd-cluster-test";

/// A member of this test's clusters.
fn member(tmp: &std::path::Path, name: &str, backend: &str) -> Member {
    Member::new(RUSD, tmp, name)
        .unwrap()
        .backend(backend)
        .token(TOKEN)
        .arg("--durability")
        .arg("sync")
}

/// The leader every one of `clients` reports, once they agree (and it is not `not`).
async fn agreed_leader(clients: &mut [Client], not: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for c in clients.iter_mut() {
            match tokio::time::timeout(Duration::from_secs(1), c.status()).await {
                Ok(Ok(s)) => leaders.push(s.leader()),
                _ => leaders.push(0),
            }
        }
        let first = leaders[0];
        if first != 0 && first != not && leaders.iter().all(|l| *l == first) {
            return first;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader within {within:?}: {leaders:x?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    let r = tokio::time::timeout(Duration::from_secs(10), c.put(key, value, None))
        .await
        .expect("put timed out")
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    r.header().unwrap().revision()
}

async fn check_all(c: &mut Client, acked: &BTreeMap<String, (String, i64)>, serializable: bool) {
    let opts = GetOptions::new().with_prefix();
    let opts = if serializable {
        opts.with_serializable()
    } else {
        opts
    };
    let r = c.get("k/", Some(opts)).await.unwrap();
    let got: BTreeMap<String, (String, i64)> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect();
    assert_eq!(&got, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_survive_a_leader_kill_and_the_member_catches_up() {
    tokio::time::timeout(Duration::from_secs(180), run())
        .await
        .expect("cluster test took longer than 180 s");
}

async fn run() {
    let tmp = tempfile::tempdir().unwrap();
    let backends = ["sled", "redb", "memory"];
    let mut members: Vec<Member> = (0..3)
        .map(|i| member(tmp.path(), &format!("m{}", i + 1), backends[i]))
        .collect();
    let cluster_flag = initial_cluster(&members);
    for m in &mut members {
        m.spawn(&cluster_flag, ClusterState::New).unwrap();
    }
    // Dropping the members kills them, whatever happened.
    let mut cluster = members;
    let mut clients = Vec::new();
    for m in &cluster {
        clients.push(common::connect_to(&m.endpoint()).await);
    }
    let leader = agreed_leader(&mut clients, 0, Duration::from_secs(20)).await;

    // Every member lists the three, with real ids; headers carry them.
    let list = clients[0].member_list().await.unwrap();
    assert_eq!(list.members().len(), 3);
    let ids: Vec<u64> = list.members().iter().map(|m| m.id()).collect();
    assert!(ids.contains(&leader));
    let status = clients[1].status().await.unwrap();
    let header = status.header().unwrap();
    assert!(ids.contains(&header.member_id()));
    assert!(header.raft_term() >= 1);

    // Writes through every endpoint (followers forward to the leader): exact revisions.
    let mut acked: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut next_rev = 2;
    for i in 0..30 {
        let (key, value) = (format!("k/{i:03}"), format!("v{i}"));
        let rev = put(&mut clients[i % 3], &key, &value).await;
        assert_eq!(rev, next_rev, "put {key}");
        next_rev += 1;
        acked.insert(key, (value, rev));
    }
    for c in clients.iter_mut() {
        check_all(c, &acked, false).await;
    }

    // SIGKILL the leader.
    let li = cluster
        .iter()
        .position(|m| rusd_raft::member_id(&[m.peer_url()], TOKEN) == leader)
        .expect("the leader is one of the members");
    cluster[li].kill().unwrap();
    let killed_at = Instant::now();
    let mut survivors: Vec<Client> = (0..3)
        .filter(|i| *i != li)
        .map(|i| clients[i].clone())
        .collect();
    // Election timeout 300-600 ms: a new leader within a few of them.
    let new_leader = agreed_leader(&mut survivors, leader, Duration::from_secs(5)).await;
    assert_ne!(new_leader, leader);
    assert!(killed_at.elapsed() < Duration::from_secs(5));

    // Every acknowledged write survived; the clients continue, revisions continue exactly.
    for c in survivors.iter_mut() {
        check_all(c, &acked, false).await;
    }
    for i in 30..40 {
        let (key, value) = (format!("k/{i:03}"), format!("v{i}"));
        let rev = put(&mut survivors[i % 2], &key, &value).await;
        assert_eq!(rev, next_rev, "put {key} after the leader change");
        next_rev += 1;
        acked.insert(key, (value, rev));
    }
    for c in survivors.iter_mut() {
        check_all(c, &acked, false).await;
    }

    // The killed member restarts from its data dir and catches up.
    cluster[li].restart().unwrap();
    let mut back = common::connect_to(&cluster[li].endpoint()).await;
    let target = survivors[0].status().await.unwrap().raft_index();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), back.status()).await {
            if s.raft_applied_index() >= target && s.leader() == new_leader {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_all(&mut back, &acked, true).await;
    check_all(&mut back, &acked, false).await;
    // And it takes writes again (forwarded to the leader).
    let rev = put(&mut back, "k/zz", "last").await;
    assert_eq!(rev, next_rev);
    acked.insert("k/zz".into(), ("last".into(), rev));
    for c in survivors.iter_mut() {
        check_all(c, &acked, false).await;
    }

    // MemberAdd a fourth member, start it with `existing`: it catches up, is promoted to
    // voter, publishes its name, serves reads and writes; then MemberRemove.
    let mut m4 = member(tmp.path(), "m4", "sled");
    let peer4 = m4.peer_url();
    let id4 = rusd_raft::member_id(std::slice::from_ref(&peer4), TOKEN);
    let added = back.member_add([peer4.as_str()], None).await.unwrap();
    assert_eq!(added.member().unwrap().id(), id4);
    assert_eq!(added.member_list().len(), 4);
    let cluster4 = format!("{cluster_flag},m4={peer4}");
    m4.spawn(&cluster4, ClusterState::Existing).unwrap();
    cluster.push(m4);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = survivors[0].member_list().await.unwrap();
        let m = list.members().iter().find(|m| m.id() == id4).cloned();
        if m.as_ref()
            .is_some_and(|m| !m.is_learner() && m.name() == "m4" && !m.client_urls().is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "m4 not promoted/published: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c4 = common::connect_to(&cluster[3].endpoint()).await;
    check_all(&mut c4, &acked, false).await;
    let rev = put(&mut c4, "k/zz4", "four").await;
    assert_eq!(rev, next_rev + 1);
    acked.insert("k/zz4".into(), ("four".into(), rev));
    check_all(&mut survivors[1], &acked, false).await;
    let left = survivors[0].member_remove(id4).await.unwrap();
    assert_eq!(left.members().len(), 3);
    assert!(left.members().iter().all(|m| m.id() != id4));
    check_all(&mut survivors[0], &acked, false).await;
    drop(cluster);
}
