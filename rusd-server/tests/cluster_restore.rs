//! The documented backup and restore of a cluster (issue #11; `rusd_raft`'s crate docs,
//! "Restore a cluster from a backup"), run with real `rusd` processes:
//!
//! 1. a 3-member sled cluster takes puts, a delete, a transaction and a key on a lease, and
//!    is compacted;
//! 2. a follower is backed up over the client API (Maintenance.Snapshot, what `etcdctl
//!    snapshot save` does);
//! 3. the old cluster is stopped; `rusd snapshot restore` writes the backup into a redb
//!    store (another engine); that member starts alone (no `--initial-cluster`), then two
//!    more are added one at a time (MemberAdd, `--initial-cluster-state existing`), a sled
//!    and a redb one, each waited for until it has caught up;
//! 4. each of the three new members answers, from its own store (serializable reads), every
//!    key with the same value, create and mod revisions, version and lease, the same store
//!    revision, the same content at the compaction revision, and refuses the compacted one
//!    with etcd's error; a new write gets the next revision on all three; there is one leader
//!    and the member list names the three new members.
//!
//! Leases: etcd 3.4's `etcdctl snapshot restore` keeps them (checked by hand with etcd
//! 3.4.23: a 100 s lease with 94 s left at the backup had 98 s left after the restore, its key
//! attached): a new leader renews every lease for its full TTL (etcd 3.4 does not persist
//! checkpointed TTLs). rusd does the same, which this test checks: the lease is listed, keeps
//! its key and its granted TTL, its remaining TTL is counted from the restored member's start,
//! not from the grant, and revoking it deletes its key at the next revision on all three.
//!
//! A second test crashes the restored member (a test hook makes it exit) after its raft log
//! exists and before its adoption snapshot: on restart it must adopt again, so that a member
//! added next gets the data.
//!
//! 6-13 s in a debug build, 5 s in a release build (a loaded 2-core machine; 3 s of it the
//! lease aging before the backup).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, GetOptions, LeaseTimeToLiveOptions, PutOptions,
    Txn, TxnOp,
};
use rusd_testkit::cluster::{initial_cluster, ClusterState, Member};
use tonic::Code;

const RUSD: &str = env!("CARGO_BIN_EXE_rusd");
/// `--initial-cluster-token` of the backed-up cluster.
const OLD_TOKEN: &str = "rusd-restore-test-old";
/// `--initial-cluster-token` of the restored cluster (member ids derive from it).
const NEW_TOKEN: &str = "rusd-restore-test-new";
/// The lease's TTL (s).
const LEASE_TTL: i64 = 60;
/// etcd's error for a read below the compaction revision (OutOfRange).
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// One key as a serializable range answers it: `(value, create revision, mod revision,
/// version, lease)`.
type Kv = (String, i64, i64, i64, i64);

fn member(parent: &Path, name: &str, backend: &str, token: &str) -> Member {
    Member::new(RUSD, parent, name)
        .unwrap()
        .backend(backend)
        .token(token)
        .arg("--durability")
        .arg("sync")
}

/// The leader every one of `clients` reports, once they agree.
async fn agreed_leader(clients: &mut [Client], within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for c in clients.iter_mut() {
            match tokio::time::timeout(Duration::from_secs(1), c.status()).await {
                Ok(Ok(s)) => leaders.push(s.leader()),
                _ => leaders.push(0),
            }
        }
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            return leaders[0];
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader within {within:?}: {leaders:x?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every key and the store revision, from `c`'s own store (serializable), optionally at
/// `revision`.
async fn everything(
    c: &mut Client,
    revision: Option<i64>,
) -> Result<(BTreeMap<String, Kv>, i64), etcd_client::Error> {
    let mut opts = GetOptions::new().with_all_keys().with_serializable();
    if let Some(rev) = revision {
        opts = opts.with_revision(rev);
    }
    let r = c.get("", Some(opts)).await?;
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (
                    kv.value_str().unwrap().to_string(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                ),
            )
        })
        .collect();
    Ok((kvs, r.header().unwrap().revision()))
}

/// Polls `c`'s own store until it is at `revision`.
async fn wait_revision(c: &mut Client, revision: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok((_, rev))) =
            tokio::time::timeout(Duration::from_secs(1), everything(c, None)).await
        {
            if rev == revision {
                return;
            }
            assert!(rev < revision, "{what}: revision {rev} beyond {revision}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not reach revision {revision}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the member `id` is a published voter in `c`'s member list.
async fn wait_voter(c: &mut Client, id: u64, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = c.member_list().await.unwrap();
        let m = list.members().iter().find(|m| m.id() == id).cloned();
        if m.as_ref()
            .is_some_and(|m| !m.is_learner() && m.name() == name && !m.client_urls().is_empty())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not promoted/published: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_a_followers_backup_has_the_same_content_and_revisions() {
    tokio::time::timeout(Duration::from_secs(180), run())
        .await
        .expect("restore test took longer than 180 s");
}

async fn run() {
    let tmp = tempfile::tempdir().unwrap();
    let old_dir = tmp.path().join("old");
    let new_dir = tmp.path().join("new");

    // 1. The old cluster and its history.
    let mut old: Vec<Member> = (1..=3)
        .map(|i| member(&old_dir, &format!("m{i}"), "sled", OLD_TOKEN))
        .collect();
    let flag = initial_cluster(&old);
    for m in &mut old {
        m.spawn(&flag, ClusterState::New).unwrap();
    }
    // Dropping the members kills them, whatever happened.
    let mut clients = Vec::new();
    for m in &old {
        clients.push(common::connect_to(&m.endpoint()).await);
    }
    let leader = agreed_leader(&mut clients, Duration::from_secs(20)).await;
    let c = &mut clients[0];
    let rev = |h: Option<&etcd_client::ResponseHeader>| h.unwrap().revision();
    assert_eq!(rev(c.put("a", "1", None).await.unwrap().header()), 2);
    assert_eq!(rev(c.put("a", "2", None).await.unwrap().header()), 3);
    assert_eq!(rev(c.put("b", "x", None).await.unwrap().header()), 4);
    assert_eq!(rev(c.put("c", "y", None).await.unwrap().header()), 5);
    let del = c.delete("c", None).await.unwrap();
    assert_eq!((rev(del.header()), del.deleted()), (6, 1));
    let txn = c
        .txn(
            Txn::new()
                .when([Compare::version("a", CompareOp::Equal, 2)])
                .and_then([TxnOp::put("a", "3", None), TxnOp::put("d", "z", None)]),
        )
        .await
        .unwrap();
    assert!(txn.succeeded());
    assert_eq!(rev(txn.header()), 7);
    let lease = c.lease_grant(LEASE_TTL, None).await.unwrap().id();
    let leased = c
        .put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert_eq!(rev(leased.header()), 8);
    assert_eq!(rev(c.put("b", "x2", None).await.unwrap().header()), 9);
    // The lease ages 3 s before the backup: a restored lease that kept counting from its
    // grant would have at most 57 s left when the restored member starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.compact(7, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let s = |v: &str| v.to_string();
    let want: BTreeMap<String, Kv> = [
        (s("a"), (s("3"), 2, 7, 3, 0)),
        (s("b"), (s("x2"), 4, 9, 2, 0)),
        (s("d"), (s("z"), 7, 7, 1, 0)),
        (s("leased"), (s("v"), 8, 8, 1, lease)),
    ]
    .into();
    let want_at_7: BTreeMap<String, Kv> = [
        (s("a"), (s("3"), 2, 7, 3, 0)),
        (s("b"), (s("x"), 4, 4, 1, 0)),
        (s("d"), (s("z"), 7, 7, 1, 0)),
    ]
    .into();
    assert_eq!(everything(c, None).await.unwrap(), (want.clone(), 9));
    assert_eq!(
        everything(c, Some(7)).await.unwrap(),
        (want_at_7.clone(), 9)
    );

    // 2. Back up a follower over the client API, once it has applied everything.
    let fi = old
        .iter()
        .position(|m| rusd_raft::member_id(&[m.peer_url()], OLD_TOKEN) != leader)
        .unwrap();
    // The compaction does not change the revision: wait for the follower to apply every
    // entry the leader has.
    let li = old
        .iter()
        .position(|m| rusd_raft::member_id(&[m.peer_url()], OLD_TOKEN) == leader)
        .unwrap();
    let last = clients[li].status().await.unwrap().raft_index();
    let follower = &mut clients[fi];
    let deadline = Instant::now() + Duration::from_secs(30);
    while follower.status().await.unwrap().raft_applied_index() < last {
        assert!(
            Instant::now() < deadline,
            "the follower did not apply {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        common::status(everything(follower, Some(6)).await),
        (Code::OutOfRange, COMPACTED.into())
    );
    let backup = tmp.path().join("backup.snap");
    let mut stream = follower.snapshot().await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(chunk.blob());
    }
    assert!(!bytes.is_empty());
    std::fs::write(&backup, &bytes).unwrap();

    // 3. Stop the old cluster; restore the backup into a redb store, start it alone.
    drop(clients);
    for m in &mut old {
        m.kill().unwrap();
    }
    let mut new: Vec<Member> = vec![
        member(&new_dir, "n1", "redb", NEW_TOKEN),
        member(&new_dir, "n2", "sled", NEW_TOKEN),
        member(&new_dir, "n3", "redb", NEW_TOKEN),
    ];
    let restored = std::process::Command::new(RUSD)
        .arg("snapshot")
        .arg("restore")
        .arg(&backup)
        .arg("--data-dir")
        .arg(new[0].data_dir())
        .args(["--backend", "redb"])
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "rusd snapshot restore: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let n1_started = Instant::now();
    new[0].spawn("", ClusterState::New).unwrap();
    new[0].wait_client(Duration::from_secs(30)).unwrap();
    let c1 = common::connect_to(&new[0].endpoint()).await;
    let ids: Vec<u64> = new
        .iter()
        .map(|m| rusd_raft::member_id(&[m.peer_url()], NEW_TOKEN))
        .collect();

    // Then n2 and n3, one at a time: MemberAdd, start with `existing` and the members so far.
    // n2 is added by the first request n1 answers: n1 serves clients only once it has
    // adopted the restored store (snapshot taken, log purged), so n2 gets that snapshot, not
    // the log of a store with no data.
    let mut new_clients = vec![c1];
    for i in 1..3 {
        let peer = new[i].peer_url();
        let added = new_clients[0]
            .member_add([peer.as_str()], None)
            .await
            .unwrap();
        assert_eq!(added.member().unwrap().id(), ids[i]);
        assert_eq!(added.member_list().len(), i + 1);
        let flag = initial_cluster(&new[..=i]);
        new[i].spawn(&flag, ClusterState::Existing).unwrap();
        let mut ci = common::connect_to(&new[i].endpoint()).await;
        let name = new[i].name().to_string();
        wait_voter(&mut new_clients[0], ids[i], &name).await;
        wait_revision(&mut ci, 9, &name).await;
        new_clients.push(ci);
    }

    // 4. Every member, from its own store: the same keys, revisions and compaction.
    for (i, c) in new_clients.iter_mut().enumerate() {
        assert_eq!(
            everything(c, None).await.unwrap(),
            (want.clone(), 9),
            "n{}",
            i + 1
        );
        assert_eq!(
            everything(c, Some(7)).await.unwrap(),
            (want_at_7.clone(), 9),
            "n{}",
            i + 1
        );
        assert_eq!(
            common::status(everything(c, Some(6)).await),
            (Code::OutOfRange, COMPACTED.into()),
            "n{}",
            i + 1
        );
    }
    // One leader, named by all; the member list is the new members.
    let leader = agreed_leader(&mut new_clients, Duration::from_secs(10)).await;
    let mut leading = Vec::new();
    for c in new_clients.iter_mut() {
        let st = c.status().await.unwrap();
        if st.header().unwrap().member_id() == st.leader() {
            leading.push(st.leader());
        }
    }
    assert_eq!(leading, vec![leader]);
    let mut listed: Vec<(u64, String, Vec<String>, bool)> = new_clients[1]
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .map(|m| {
            (
                m.id(),
                m.name().to_string(),
                m.peer_urls().to_vec(),
                m.is_learner(),
            )
        })
        .collect();
    listed.sort();
    let mut expected: Vec<(u64, String, Vec<String>, bool)> = new
        .iter()
        .zip(&ids)
        .map(|(m, id)| (*id, m.name().to_string(), vec![m.peer_url()], false))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    // The lease: kept with its key and granted TTL, renewed from the restored member's start.
    for (i, c) in new_clients.iter_mut().enumerate() {
        let ttl = c
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(
            (ttl.id(), ttl.granted_ttl(), ttl.keys().to_vec()),
            (lease, LEASE_TTL, vec![b"leased".to_vec()]),
            "n{}",
            i + 1
        );
        let since_start = i64::try_from(n1_started.elapsed().as_secs()).unwrap();
        assert!(
            ttl.ttl() <= LEASE_TTL && ttl.ttl() >= LEASE_TTL - since_start - 1,
            "n{}: {} s left, {since_start} s after the restored member started",
            i + 1,
            ttl.ttl()
        );
        let listed: Vec<i64> = c
            .leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        assert_eq!(listed, vec![lease], "n{}", i + 1);
    }

    // A new write gets the next revision and reaches every member; revoking the lease
    // deletes its key at the one after.
    let put = new_clients[2].put("after", "restore", None).await.unwrap();
    assert_eq!(rev(put.header()), 10);
    let revoked = new_clients[1].lease_revoke(lease).await.unwrap();
    assert_eq!(rev(revoked.header()), 11);
    let mut want = want;
    want.remove("leased");
    want.insert(s("after"), (s("restore"), 10, 10, 1, 0));
    for (i, c) in new_clients.iter_mut().enumerate() {
        wait_revision(c, 11, &format!("n{}", i + 1)).await;
        assert_eq!(
            everything(c, None).await.unwrap(),
            (want.clone(), 11),
            "n{}",
            i + 1
        );
        let gone = c.lease_time_to_live(lease, None).await.unwrap();
        assert_eq!((gone.id(), gone.ttl()), (lease, -1), "n{}", i + 1);
    }
    drop(new_clients);
    drop(new);
    drop(old);
}

/// A restored member that crashes after its raft log exists but before its adoption
/// snapshot adopts the store again when it restarts: a member added right after the restart
/// gets the data (by snapshot), not the log of a store with no data. Without the adoption
/// marker the restarted member skips the adoption (its raft log exists) and the added member
/// stays at revision 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_member_that_crashed_before_adopting_adopts_on_restart() {
    tokio::time::timeout(Duration::from_secs(120), crash_before_adopting())
        .await
        .expect("crash-before-adopt test took longer than 120 s");
}

async fn crash_before_adopting() {
    let tmp = tempfile::tempdir().unwrap();
    // A lone member's store with three revisions, backed up over the client API.
    let mut src = member(&tmp.path().join("old"), "s1", "sled", OLD_TOKEN);
    src.spawn("", ClusterState::New).unwrap();
    src.wait_client(Duration::from_secs(30)).unwrap();
    let mut c = common::connect_to(&src.endpoint()).await;
    for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
        let r = c.put(k, format!("v{i}"), None).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), i as i64 + 2);
    }
    let backup = tmp.path().join("backup.snap");
    let mut stream = c.snapshot().await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(chunk.blob());
    }
    std::fs::write(&backup, &bytes).unwrap();
    drop(c);
    src.kill().unwrap();

    let new_dir = tmp.path().join("new");
    let mut n1 = member(&new_dir, "n1", "sled", NEW_TOKEN);
    let n2 = member(&new_dir, "n2", "sled", NEW_TOKEN);
    let restored = std::process::Command::new(RUSD)
        .args(["snapshot", "restore"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(n1.data_dir())
        .args(["--backend", "sled"])
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "rusd snapshot restore: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    // The first start stops where a crash would hurt most: raft log written, no snapshot.
    let first = std::process::Command::new(RUSD)
        .args(n1.command_line("", ClusterState::New))
        .current_dir(n1.dir())
        .env(rusd_server::cluster::EXIT_BEFORE_ADOPT, "1")
        .output()
        .unwrap();
    assert_eq!(
        first.status.code(),
        Some(rusd_server::cluster::EXIT_BEFORE_ADOPT_CODE),
        "first start: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(n1.data_dir().join("raft-wal").exists());
    assert!(n1
        .data_dir()
        .join(rusd_server::cluster::ADOPT_MARKER)
        .exists());

    // The restart adopts; n2 is added by the first request n1 answers.
    n1.spawn("", ClusterState::New).unwrap();
    n1.wait_client(Duration::from_secs(30)).unwrap();
    let mut c1 = common::connect_to(&n1.endpoint()).await;
    let id2 = rusd_raft::member_id(&[n2.peer_url()], NEW_TOKEN);
    let added = c1.member_add([n2.peer_url().as_str()], None).await.unwrap();
    assert_eq!(added.member().unwrap().id(), id2);
    // n1 answered, so it has adopted: the marker is gone.
    assert!(!n1
        .data_dir()
        .join(rusd_server::cluster::ADOPT_MARKER)
        .exists());
    let mut members = [n1, n2];
    let flag = initial_cluster(&members);
    members[1].spawn(&flag, ClusterState::Existing).unwrap();
    members[1].wait_client(Duration::from_secs(30)).unwrap();
    let mut c2 = common::connect_to(&members[1].endpoint()).await;
    wait_voter(&mut c1, id2, "n2").await;
    wait_revision(&mut c2, 4, "n2").await;
    let want: BTreeMap<String, Kv> = [("a", "v0", 2), ("b", "v1", 3), ("c", "v2", 4)]
        .into_iter()
        .map(|(k, v, r)| (k.to_string(), (v.to_string(), r, r, 1, 0)))
        .collect();
    assert_eq!(everything(&mut c2, None).await.unwrap(), (want, 4));
    let put = c1.put("d", "v3", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 5);
    wait_revision(&mut c2, 5, "n2").await;
}
