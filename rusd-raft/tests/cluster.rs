//! In-process members on loopback gRPC: election, forwarding, convergence across engines,
//! leader loss, catch-up by snapshot, restart and replay.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{AnyBackend, Compare, CompareOp, Put, RequestOp, StoreConfig, Txn};
use rusd_raft::{
    Command, CommandError, CommandResponse, InitialState, Member, MembershipChange, NodeId,
    RaftError, RaftNode, RaftNodeConfig, RaftNodeMetrics,
};
use storage_api::{Backend, BackendConfig, BackendKind, Durability, MemoryBackend};
use tokio::net::TcpListener;

type Node = RaftNode<AnyBackend>;

/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

fn raft_config() -> rusd_raft::openraft::Config {
    rusd_raft::openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..rusd_raft::default_raft_config()
    }
}

fn open_backend(kind: BackendKind, dir: &Path) -> Arc<AnyBackend> {
    let path = if kind == BackendKind::Memory {
        // Volatile: the tests that restart a memory member restore it themselves.
        std::path::PathBuf::new()
    } else {
        dir.join("db")
    };
    AnyBackend::open(
        kind,
        BackendConfig::new(path).with_durability(Durability::Buffered {
            interval: Duration::from_millis(100),
        }),
    )
    .unwrap()
}

struct Spec {
    id: NodeId,
    kind: BackendKind,
    dir: std::path::PathBuf,
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn member(id: NodeId, listener: &TcpListener) -> Member {
    Member {
        name: format!("m{id}"),
        peer_urls: vec![format!("http://{}", listener.local_addr().unwrap())],
        client_urls: Vec::new(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn start(
    spec: &Spec,
    listener: TcpListener,
    backend: Arc<AnyBackend>,
    members: &BTreeMap<NodeId, Member>,
    state: InitialState,
    raft: rusd_raft::openraft::Config,
) -> Node {
    let mut config = RaftNodeConfig::new(
        spec.id,
        format!("m{}", spec.id),
        listener,
        &spec.dir,
        backend,
    );
    // Member 2 keeps its log on a storage engine, the others in the log file.
    config.log_engine = (spec.id == 2).then_some(BackendKind::Sled);
    config.cluster_id = 77;
    config.initial_members = members.clone();
    config.initial_state = state;
    config.raft_config = raft;
    config.request_timeout = Duration::from_secs(10);
    config.lease_check_interval = Duration::from_millis(100);
    config.store_config = StoreConfig::default();
    RaftNode::start(config).await.unwrap()
}

async fn leader_of(nodes: &[&Node]) -> NodeId {
    let first = nodes[0]
        .wait_for(WAIT, |m| m.leader.is_some())
        .await
        .unwrap()
        .leader
        .unwrap();
    for n in nodes {
        n.wait_for(WAIT, |m| m.leader == Some(first)).await.unwrap();
    }
    first
}

/// The leader the members agree on, and one of its followers.
async fn leader_and_follower<'a>(nodes: &[&'a Node]) -> (&'a Node, &'a Node) {
    let leader = leader_of(nodes).await;
    let find = |is_leader: bool| {
        *nodes
            .iter()
            .find(|n| (n.id() == leader) == is_leader)
            .unwrap()
    };
    (find(true), find(false))
}

async fn converge(nodes: &[&Node]) {
    let mut last = 0;
    for n in nodes {
        last = last.max(n.indexes().0);
    }
    for n in nodes {
        n.wait_for(WAIT, |m| m.applied_index >= last).await.unwrap();
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(Put::new(key, value, 0))
}

fn revision_of(resp: CommandResponse) -> i64 {
    match resp {
        CommandResponse::Put(p) => p.revision,
        CommandResponse::DeleteRange(d) => d.revision,
        CommandResponse::Txn(t) => t.revision,
        CommandResponse::LeaseRevoke { revision } => revision,
        other => panic!("no revision in {other:?}"),
    }
}

fn values(node: &Node, prefix: &str) -> BTreeMap<String, String> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    node.store()
        .range(prefix.as_bytes(), &end, 0, 0, false)
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
            )
        })
        .collect()
}

fn image(node: &Node) -> Vec<u8> {
    node.store().backend().snapshot().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_on_three_engines_replicate_forward_converge_and_survive_the_leader() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let kinds = [BackendKind::Memory, BackendKind::Sled, BackendKind::Redb];
        let mut listeners = Vec::new();
        let mut members = BTreeMap::new();
        for (i, _) in kinds.iter().enumerate() {
            let l = bind().await;
            members.insert(i as NodeId + 1, member(i as NodeId + 1, &l));
            listeners.push(l);
        }
        let mut nodes: Vec<Option<Node>> = Vec::new();
        for (i, (kind, l)) in kinds.iter().zip(listeners).enumerate() {
            let spec = Spec {
                id: i as NodeId + 1,
                kind: *kind,
                dir: tmp.path().join(format!("m{}", i + 1)),
            };
            let backend = open_backend(spec.kind, &spec.dir);
            nodes.push(Some(
                start(
                    &spec,
                    l,
                    backend,
                    &members,
                    InitialState::New,
                    raft_config(),
                )
                .await,
            ));
        }
        let all: Vec<&Node> = nodes.iter().flatten().collect();
        let leader = leader_of(&all).await;
        let li = (leader - 1) as usize;
        let fi = (li + 1) % 3;
        for n in &all {
            assert_eq!(n.metrics().voters.len(), 3);
        }

        // Writes through the leader and (forwarded) through a follower: exact revisions.
        let mut expected = BTreeMap::new();
        for i in 0..10 {
            let (k, v) = (format!("k/{i:02}"), format!("v{i}"));
            let rev = revision_of(all[li].write(put(&k, &v)).await.unwrap());
            assert_eq!(rev, 2 + i);
            expected.insert(k, v);
        }
        for i in 10..20 {
            let (k, v) = (format!("k/{i:02}"), format!("v{i}"));
            let rev = revision_of(all[fi].write(put(&k, &v)).await.unwrap());
            assert_eq!(rev, 2 + i);
            expected.insert(k, v);
        }
        // A txn, a delete, a lease through the follower; etcd's errors come back.
        let txn = Txn {
            compare: vec![Compare::version("k/00", CompareOp::Equal, 1)],
            success: vec![RequestOp::Put(Put::new("k/00", "txn", 0))],
            failure: vec![],
        };
        match all[fi].write(Command::Txn(txn)).await.unwrap() {
            CommandResponse::Txn(t) => assert_eq!((t.succeeded, t.revision), (true, 22)),
            other => panic!("{other:?}"),
        }
        expected.insert("k/00".into(), "txn".into());
        match all[fi]
            .write(Command::LeaseGrant { id: 0, ttl: 100 })
            .await
            .unwrap()
        {
            CommandResponse::LeaseGrant(l) => assert_eq!((l.id, l.ttl), (1, 100)),
            other => panic!("{other:?}"),
        }
        let lost = all[fi]
            .write(Command::LeaseRevoke { id: 42 })
            .await
            .unwrap_err();
        assert!(
            matches!(lost, RaftError::Command(CommandError::LeaseNotFound(42))),
            "{lost:?}"
        );
        let compact_err = all[li]
            .write(Command::Compaction(mvcc_core::Compaction {
                revision: 1000,
                physical: false,
            }))
            .await
            .unwrap_err();
        assert!(
            matches!(
                compact_err,
                RaftError::Command(CommandError::FutureRevision)
            ),
            "{compact_err:?}"
        );

        // Linearizable read on a follower sees the last acknowledged write.
        let last = revision_of(all[li].write(put("k/20", "v20")).await.unwrap());
        assert_eq!(last, 23);
        expected.insert("k/20".into(), "v20".into());
        let other = (li + 2) % 3;
        all[other].linearizable_barrier().await.unwrap();
        assert_eq!(all[other].store().current_revision(), 23);
        assert_eq!(values(all[other], "k/"), expected);

        // Every member converges to the same bytes, whatever its engine.
        converge(&all).await;
        let images: Vec<Vec<u8>> = all.iter().map(|n| image(n)).collect();
        assert_eq!(images[0], images[1]);
        assert_eq!(images[1], images[2]);
        for n in &all {
            assert_eq!(values(n, "k/"), expected);
            assert_eq!(n.store().current_revision(), 23);
        }

        // The leader goes away: a new leader within a few election timeouts, nothing lost.
        let old = nodes[li].take().unwrap();
        let stopped_at = std::time::Instant::now();
        old.shutdown().await.unwrap();
        let rest: Vec<&Node> = nodes.iter().flatten().collect();
        let new_leader = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let m = rest[0].metrics();
                if let Some(l) = m.leader {
                    if l != leader && rest.iter().all(|n| n.metrics().leader == Some(l)) {
                        return l;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a new leader within 5 s (election timeout 300-600 ms)");
        assert_ne!(new_leader, leader);
        assert!(stopped_at.elapsed() < Duration::from_secs(5));
        for i in 21..26 {
            let (k, v) = (format!("k/{i:02}"), format!("v{i}"));
            let rev = revision_of(rest[i % 2].write(put(&k, &v)).await.unwrap());
            assert_eq!(rev, i as i64 + 3);
            expected.insert(k, v);
        }
        converge(&rest).await;
        for n in &rest {
            assert_eq!(values(n, "k/"), expected);
            assert_eq!(n.store().current_revision(), 28);
        }
        assert_eq!(image(rest[0]), image(rest[1]));
        for n in nodes.into_iter().flatten() {
            n.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test took longer than 120 s");
}

/// The files of a member's snapshot directory, sorted.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir.join(rusd_raft::state_machine::SNAPSHOT_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
    names.sort();
    names
}

/// Whether the directory holds one `<n>-<id>.snap` with its `<n>-<id>.meta`, nothing else.
fn one_snapshot(names: &[String]) -> bool {
    match names {
        [meta, snap] => meta
            .strip_suffix(".meta")
            .is_some_and(|stem| *snap == format!("{stem}.snap")),
        _ => false,
    }
}

/// Waits until a member's snapshot directory holds exactly one snapshot (a build may be
/// under way when asked), failing with the directory's content after [`WAIT`].
async fn wait_one_snapshot(dir: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let names = snapshot_files(dir);
        if one_snapshot(&names) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not exactly one snapshot: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member that has to catch up by snapshot: member 1 (sled) leads alone, writes `writes`
/// puts of `value` under `prefix` (revisions 2..), purges its log behind a snapshot (at least
/// up to index `purged`), then a learner `learner` of engine `kind` joins; the entries it
/// needs are gone, so it gets the snapshot. Returns the leader and the learner (caught up,
/// with a snapshot at `purged` or later installed) with their specs.
async fn catch_up_by_snapshot(
    tmp: &Path,
    raft: rusd_raft::openraft::Config,
    (prefix, writes, value): (&str, i64, &str),
    purged: u64,
    (learner, kind): (NodeId, BackendKind),
) -> ((Node, Spec), (Node, Spec)) {
    let l1 = bind().await;
    let m1 = member(1, &l1);
    let s1 = Spec {
        id: 1,
        kind: BackendKind::Sled,
        dir: tmp.join("m1"),
    };
    let n1 = start(
        &s1,
        l1,
        open_backend(s1.kind, &s1.dir),
        &BTreeMap::from([(1, m1)]),
        InitialState::New,
        raft.clone(),
    )
    .await;
    leader_of(&[&n1]).await;
    for i in 0..writes {
        let rev = revision_of(
            n1.write(put(&format!("{prefix}{i:03}"), value))
                .await
                .unwrap(),
        );
        assert_eq!(rev, i + 2);
    }
    n1.raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= purged),
            "the log is purged behind a snapshot",
        )
        .await
        .unwrap();
    wait_one_snapshot(&s1.dir).await;

    let l = bind().await;
    let m = member(learner, &l);
    let spec = Spec {
        id: learner,
        kind,
        dir: tmp.join(format!("m{learner}")),
    };
    let n = start(
        &spec,
        l,
        open_backend(spec.kind, &spec.dir),
        &BTreeMap::new(),
        InitialState::Existing,
        raft,
    )
    .await;
    n1.add_learner(learner, m).await.unwrap();
    converge(&[&n1, &n]).await;
    let snap = n.raft().metrics().borrow().snapshot;
    assert!(
        snap.is_some_and(|s| s.index >= purged),
        "the learner installed a snapshot: {snap:?}"
    );
    assert_eq!(n.store().current_revision(), writes + 1);
    assert_eq!(values(&n, prefix).len(), usize::try_from(writes).unwrap());
    assert_eq!(image(&n1), image(&n));
    ((n1, s1), (n, spec))
}

fn purging_config() -> rusd_raft::openraft::Config {
    rusd_raft::openraft::Config {
        snapshot_policy: rusd_raft::openraft::SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..raft_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_member_catches_up_by_snapshot_after_the_log_was_purged() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        // A redb learner.
        let ((n1, _), (n2, _)) = catch_up_by_snapshot(
            tmp.path(),
            purging_config(),
            ("s/", 100, "x"),
            60,
            (2, BackendKind::Redb),
        )
        .await;

        // Promoted, it takes writes (forwarded to the leader) and stays identical.
        n2.change_membership(MembershipChange::Promote { id: 2 })
            .await
            .unwrap();
        n2.wait_for(WAIT, |m| m.voters.len() == 2).await.unwrap();
        let rev = revision_of(n2.write(put("s/new", "y")).await.unwrap());
        assert_eq!(rev, 102);
        converge(&[&n1, &n2]).await;
        assert_eq!(image(&n1), image(&n2));
        n2.shutdown().await.unwrap();
        n1.shutdown().await.unwrap();
    })
    .await
    .expect("test took longer than 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_catches_up_by_a_snapshot_sent_in_many_chunks() {
    tokio::time::timeout(Duration::from_secs(120), async {
        const CHUNK: u64 = 4096;
        let tmp = tempfile::tempdir().unwrap();
        let raft = rusd_raft::openraft::Config {
            snapshot_max_chunk_size: CHUNK,
            ..purging_config()
        };
        // A memory learner receives the snapshot in many chunks.
        let value = "v".repeat(500);
        let ((n1, _), (n3, s3)) = catch_up_by_snapshot(
            tmp.path(),
            raft,
            ("c/", 60, &value),
            40,
            (3, BackendKind::Memory),
        )
        .await;
        let leader_image = image(&n1);
        assert!(
            leader_image.len() as u64 > 6 * CHUNK,
            "{} bytes: several chunks",
            leader_image.len()
        );
        // The received snapshot is the learner's current one: one file, no temporary left.
        wait_one_snapshot(&s3.dir).await;
        n3.shutdown().await.unwrap();
        n1.shutdown().await.unwrap();
    })
    .await
    .expect("test took longer than 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_member_resumes_from_its_data_dir_without_applying_twice() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Spec {
            id: 1,
            kind: BackendKind::Sled,
            dir: tmp.path().join("m1"),
        };
        let l = bind().await;
        let members = BTreeMap::from([(1, member(1, &l))]);
        let n = start(
            &spec,
            l,
            open_backend(spec.kind, &spec.dir),
            &members,
            InitialState::New,
            raft_config(),
        )
        .await;
        leader_of(&[&n]).await;
        for i in 0..10 {
            assert_eq!(
                revision_of(n.write(put("r", &format!("{i}"))).await.unwrap()),
                2 + i
            );
            // A write's entry counts as applied once it is answered (what Status reports).
            let index = 3 + u64::try_from(i).unwrap();
            assert_eq!(n.indexes(), (index, index));
        }
        // Index 0: the initial membership, 1: the leader's blank entry, 2: its no-op entry,
        // 3..=12: the puts (metrics are published just after the writes are answered).
        let m = n.wait_for(WAIT, |m| m.applied_index == 12).await.unwrap();
        let (applied, term) = (m.applied_index, m.term);
        n.shutdown().await.unwrap();

        // Same address, same data dir: the store resumes at its revision; the log is not
        // applied a second time (the key has exactly 10 versions).
        let l = TcpListener::bind(members[&1].peer_urls[0].trim_start_matches("http://"))
            .await
            .unwrap();
        let n = start(
            &spec,
            l,
            open_backend(spec.kind, &spec.dir),
            &members,
            InitialState::New,
            raft_config(),
        )
        .await;
        leader_of(&[&n]).await;
        // Leadership comes back in the same term (a lone voter whose vote is committed) or in
        // a new one (one blank entry); either way the leader proposes one no-op entry, and
        // nothing else is applied.
        let m = n
            .wait_for(WAIT, |m| {
                m.state == rusd_raft::ServerState::Leader
                    && m.applied_index == applied + 1 + u64::from(m.term > term)
            })
            .await
            .unwrap();
        assert!(m.term >= term);
        assert_eq!(m.last_log_index, m.applied_index);
        let store = n.store();
        assert_eq!(store.current_revision(), 11);
        let kv = store.range(b"r", b"", 0, 0, false).unwrap().kvs.remove(0);
        assert_eq!(
            (kv.version, kv.mod_revision, kv.value),
            (10, 11, b"9".to_vec())
        );
        assert_eq!(revision_of(n.write(put("r", "10")).await.unwrap()), 12);
        n.shutdown().await.unwrap();
    })
    .await
    .expect("test took longer than 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_behind_the_log_replays_exactly_the_missing_entries() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Spec {
            id: 1,
            kind: BackendKind::Memory,
            dir: tmp.path().join("m1"),
        };
        let l = bind().await;
        let members = BTreeMap::from([(1, member(1, &l))]);
        let backend = open_backend(spec.kind, &spec.dir);
        let n = start(
            &spec,
            l,
            backend.clone(),
            &members,
            InitialState::New,
            raft_config(),
        )
        .await;
        leader_of(&[&n]).await;
        for i in 0..5 {
            assert_eq!(
                revision_of(n.write(put("a", &format!("{i}"))).await.unwrap()),
                2 + i
            );
        }
        // What a crash would leave of a buffered store: its state at this point.
        let durable = backend.snapshot().unwrap();
        for i in 5..12 {
            assert_eq!(
                revision_of(n.write(put("a", &format!("{i}"))).await.unwrap()),
                2 + i
            );
        }
        n.write(Command::LeaseGrant { id: 5, ttl: 1000 })
            .await
            .unwrap();
        n.write(put("b", "1")).await.unwrap();
        let before = backend.snapshot().unwrap();
        let last = n.metrics().last_log_index;
        n.shutdown().await.unwrap();

        // Restart over the older store state and the full log: the entries after the
        // store's consistent index are applied once, and the store ends byte-identical.
        let older = MemoryBackend::volatile();
        older.restore(&durable).unwrap();
        let older = Arc::new(AnyBackend::Memory(older));
        let l = TcpListener::bind(members[&1].peer_urls[0].trim_start_matches("http://"))
            .await
            .unwrap();
        let n = start(
            &spec,
            l,
            older.clone(),
            &members,
            InitialState::New,
            raft_config(),
        )
        .await;
        leader_of(&[&n]).await;
        // Everything in the log is applied once the leader's first entry commits.
        n.wait_for(WAIT, |m| {
            m.last_log_index > last && m.applied_index == m.last_log_index
        })
        .await
        .unwrap();
        let store = n.store();
        assert_eq!(store.current_revision(), 14);
        let kv = store.range(b"a", b"", 0, 0, false).unwrap().kvs.remove(0);
        assert_eq!((kv.version, kv.mod_revision), (12, 13));
        assert_eq!(store.leases(), vec![5]);
        // Byte-identical to the store before the restart, up to the apply record, which now
        // names the leader's new no-op entry.
        let strip = |image: Vec<u8>| -> Vec<(storage_api::Tree, Vec<u8>, Vec<u8>)> {
            let v =
                storage_api::snapshot::ValidatedSnapshot::read_from(&mut image.as_slice()).unwrap();
            v.entries()
                .unwrap()
                .map(Result::unwrap)
                .filter(|e| e.key != mvcc_core::store::META_APPLY)
                .map(|e| (e.tree, e.key, e.value))
                .collect()
        };
        assert_eq!(strip(older.snapshot().unwrap()), strip(before));
        n.shutdown().await.unwrap();
    })
    .await
    .expect("test took longer than 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_leader_expires_leases_and_every_member_applies_the_revoke() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        let mut members = BTreeMap::new();
        for id in 1..=3 {
            let l = bind().await;
            members.insert(id, member(id, &l));
            listeners.push(l);
        }
        let mut nodes = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let spec = Spec {
                id: i as NodeId + 1,
                kind: BackendKind::Memory,
                dir: tmp.path().join(format!("m{}", i + 1)),
            };
            let backend = open_backend(spec.kind, &spec.dir);
            nodes.push(
                start(
                    &spec,
                    l,
                    backend,
                    &members,
                    InitialState::New,
                    raft_config(),
                )
                .await,
            );
        }
        let all: Vec<&Node> = nodes.iter().collect();
        let leader = leader_of(&all).await;
        let follower = all.iter().find(|n| n.id() != leader).unwrap();
        match follower
            .write(Command::LeaseGrant { id: 9, ttl: 1 })
            .await
            .unwrap()
        {
            CommandResponse::LeaseGrant(l) => assert_eq!((l.id, l.ttl), (9, 1)),
            other => panic!("{other:?}"),
        }
        let rev = revision_of(
            follower
                .write(Command::Put(Put::new("leased", "v", 9)))
                .await
                .unwrap(),
        );
        assert_eq!(rev, 2);
        // Keep-alives (forwarded to the leader) hold the lease past its TTL.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(follower.lease_keep_alive(9).await.unwrap(), 1);
        }
        for n in &all {
            assert_eq!(n.store().leases(), vec![9]);
        }
        // Then it expires: the leader revokes it through the log, on every member, once.
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                converge(&all).await;
                if all.iter().all(|n| n.store().leases().is_empty()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("lease revoked on every member");
        for n in &all {
            assert_eq!(n.store().current_revision(), 3);
            assert!(values(n, "leased").is_empty());
        }
        let lost = follower.lease_keep_alive(9).await.unwrap_err();
        assert!(
            matches!(lost, RaftError::Command(CommandError::LeaseNotFound(9))),
            "{lost:?}"
        );
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test took longer than 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_foreign_requests_get_typed_errors_not_panics() {
    use rusd_raft::pb::peer_reply::Result as Reply;
    use rusd_raft::pb::raft_peer_client::RaftPeerClient;
    use rusd_raft::pb::PeerRequest;

    tokio::time::timeout(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Spec {
            id: 1,
            kind: BackendKind::Memory,
            dir: tmp.path().join("m1"),
        };
        let l = bind().await;
        let members = BTreeMap::from([(1, member(1, &l))]);
        let url = members[&1].peer_urls[0].clone();
        let n = start(
            &spec,
            l,
            open_backend(spec.kind, &spec.dir),
            &members,
            InitialState::New,
            raft_config(),
        )
        .await;
        leader_of(&[&n]).await;
        let mut client = RaftPeerClient::connect(url).await.unwrap();
        let garbage = vec![0xff, 0x13, 0x00, 0x42, 0x99];
        let req = |cluster_id: u64, payload: &[u8]| PeerRequest {
            cluster_id,
            payload: payload.to_vec(),
        };
        for status in [
            client.append_entries(req(77, &garbage)).await.unwrap_err(),
            client.vote(req(77, &garbage)).await.unwrap_err(),
            client.install_snapshot(req(77, &garbage)).await.unwrap_err(),
            client.append_entries(req(77, &[])).await.unwrap_err(),
        ] {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
        let foreign = client.vote(req(78, &garbage)).await.unwrap_err();
        assert_eq!(foreign.code(), tonic::Code::FailedPrecondition);
        // A forwarded request that does not decode is answered with a typed error.
        let reply = client.forward(req(77, &garbage)).await.unwrap().into_inner();
        match reply.result {
            Some(Reply::Err(bytes)) => {
                let wire: rusd_raft::WireError = postcard::from_bytes(&bytes).unwrap();
                assert!(
                    matches!(&wire, rusd_raft::WireError::Other(m) if m.contains("cannot decode forwarded request")),
                    "{wire:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The member is unharmed.
        assert_eq!(revision_of(n.write(put("after", "1")).await.unwrap()), 2);
        n.shutdown().await.unwrap();
    })
    .await
    .expect("test took longer than 60 s");
}

/// Runs `test` on three in-memory members ([`three_memory_members`]) within 60 s, then shuts
/// them down.
async fn on_three_memory_members(test: impl AsyncFnOnce(Vec<&Node>)) {
    tokio::time::timeout(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let nodes = three_memory_members(tmp.path()).await;
        test(nodes.iter().collect()).await;
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test took longer than 60 s");
}

/// Three in-memory members with [`raft_config`] timings.
async fn three_memory_members(tmp: &Path) -> Vec<Node> {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3 {
        let l = bind().await;
        members.insert(id, member(id, &l));
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let spec = Spec {
            id: i as NodeId + 1,
            kind: BackendKind::Memory,
            dir: tmp.join(format!("m{}", i + 1)),
        };
        let backend = open_backend(spec.kind, &spec.dir);
        nodes.push(
            start(
                &spec,
                l,
                backend,
                &members,
                InitialState::New,
                raft_config(),
            )
            .await,
        );
    }
    nodes
}

/// etcd forwards LeaseTimeToLive to the leader: only the leader sees keep-alives. Runs in
/// about 4 s (a 3 s wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_answers_lease_time_to_live_and_leases_from_the_leader() {
    on_three_memory_members(async |all: Vec<&Node>| {
        let (leader, follower) = leader_and_follower(&all).await;
        match leader
            .write(Command::LeaseGrant { id: 7, ttl: 10 })
            .await
            .unwrap()
        {
            CommandResponse::LeaseGrant(l) => assert_eq!((l.id, l.ttl), (7, 10)),
            other => panic!("{other:?}"),
        }
        leader
            .write(Command::Put(Put::new("k1", "v", 7)))
            .await
            .unwrap();
        converge(&all).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(leader.lease_keep_alive(7).await.unwrap(), 10);
        // The follower's own lessor never saw the keep-alive: about 7 s left there.
        let local = follower.store().lease_time_to_live(7).unwrap();
        assert!(local.remaining_ttl <= 8, "{local:?}");
        // Asked through the follower, the leader answers: renewed 10 s, just now.
        let info = follower.lease_time_to_live(7, true).await.unwrap().unwrap();
        assert_eq!(
            (info.id, info.ttl, &info.keys),
            (7, 10, &vec![b"k1".to_vec()])
        );
        assert!(info.remaining_ttl >= 9, "{info:?}");
        let info = follower
            .lease_time_to_live(7, false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((info.id, info.ttl), (7, 10));
        assert!(info.keys.is_empty());
        // An unknown lease: none, as on the leader.
        assert_eq!(follower.lease_time_to_live(8, true).await.unwrap(), None);
        assert_eq!(leader.lease_time_to_live(8, true).await.unwrap(), None);
        assert_eq!(follower.leases().await.unwrap(), vec![7]);
        assert_eq!(leader.leases().await.unwrap(), vec![7]);
    })
    .await;
}

/// etcd's MoveLeader: only on the leader, only to a voter; the transferee becomes leader and
/// takes writes. Runs in about 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_leader_hands_leadership_to_the_transferee() {
    on_three_memory_members(async |all: Vec<&Node>| {
        let old = leader_of(&all).await;
        let leader = all.iter().find(|n| n.id() == old).unwrap();
        let target = all.iter().find(|n| n.id() != old).unwrap().id();
        let other = all
            .iter()
            .find(|n| n.id() != old && n.id() != target)
            .unwrap();
        leader.write(put("before", "1")).await.unwrap();
        let refused = other.move_leader(target).await.unwrap_err();
        assert!(
            matches!(refused, RaftError::NotLeader(Some(l)) if l == old),
            "{refused:?}"
        );
        let refused = leader.move_leader(99).await.unwrap_err();
        assert!(
            matches!(refused, RaftError::BadLeaderTransferee(99)),
            "{refused:?}"
        );
        leader.move_leader(old).await.unwrap();
        assert_eq!(leader.metrics().leader, Some(old));

        leader.move_leader(target).await.unwrap();
        for n in &all {
            n.wait_for(WAIT, |m| m.leader == Some(target))
                .await
                .unwrap();
        }
        // Writes through the old leader (now a follower) go to the new one.
        let rev = revision_of(leader.write(put("after", "2")).await.unwrap());
        assert_eq!(rev, 3);
        converge(&all).await;
        for n in &all {
            assert_eq!(
                values(n, "after"),
                BTreeMap::from([("after".to_string(), "2".to_string())])
            );
        }
    })
    .await;
}

/// A membership change while another is being committed (a MemberAdd right after another
/// member's promotion, as `cluster_restore.rs` does): openraft refuses a change while another
/// is in progress, and the member waits for it and retries, as etcd accepts back-to-back
/// changes. Without the retry the MemberAdd failed with "the cluster is already undergoing a
/// configuration change" (`MembershipInProgress`) in 2 of 3 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_added_during_a_promotion_waits_for_it() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let mut listeners = BTreeMap::new();
        let mut members = BTreeMap::new();
        for id in 1..=3 {
            let l = bind().await;
            members.insert(id, member(id, &l));
            listeners.insert(id, l);
        }
        let mut nodes = BTreeMap::new();
        for (id, l) in listeners {
            let spec = Spec {
                id,
                kind: BackendKind::Memory,
                dir: tmp.path().join(format!("m{id}")),
            };
            let initial = if id == 1 {
                BTreeMap::from([(1, members[&1].clone())])
            } else {
                BTreeMap::new()
            };
            let state = if id == 1 {
                InitialState::New
            } else {
                InitialState::Existing
            };
            let backend = open_backend(spec.kind, &spec.dir);
            nodes.insert(
                id,
                start(&spec, l, backend, &initial, state, raft_config()).await,
            );
        }
        let n1 = &nodes[&1];
        leader_of(&[n1]).await;
        assert_eq!(revision_of(n1.write(put("a", "1")).await.unwrap()), 2);
        n1.add_learner(2, members[&2].clone()).await.unwrap();
        converge(&[n1, &nodes[&2]]).await;
        // The promotion's joint configuration needs member 2's answer to commit; the
        // learner added meanwhile waits for it.
        let (promoted, added) = tokio::join!(
            n1.change_membership(MembershipChange::Promote { id: 2 }),
            n1.add_learner(3, members[&3].clone()),
        );
        promoted.unwrap();
        added.unwrap();
        n1.wait_for(WAIT, |m| m.voters.len() == 2).await.unwrap();
        converge(&[n1, &nodes[&2], &nodes[&3]]).await;
        n1.change_membership(MembershipChange::Promote { id: 3 })
            .await
            .unwrap();
        n1.wait_for(WAIT, |m| m.voters.len() == 3).await.unwrap();
        assert_eq!(
            revision_of(nodes[&3].write(put("b", "2")).await.unwrap()),
            3
        );
        converge(&[n1, &nodes[&2], &nodes[&3]]).await;
        for id in [2, 3] {
            assert_eq!(image(&nodes[&id]), image(n1));
        }
        for (_, n) in nodes {
            n.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test took longer than 60 s");
}

/// Polls every future of `futures` in turn until all are ready (each first poll in their
/// order, in this one task), and returns their outputs in that order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

/// Command `i` of the forwarding tests: a put of its own key, or (every fourth) the revoke of
/// a lease that does not exist, which fails with its own id.
fn forwarded_command(i: usize) -> Command {
    if i % 4 == 3 {
        Command::LeaseRevoke {
            id: 1000 + i as i64,
        }
    } else {
        put(&format!("fw{i:03}"), &format!("v{i}"))
    }
}

/// Sends commands `0..n` of [`forwarded_command`] through `follower` at once; checks that
/// each was forwarded once and returns their results, in order, and the follower's metrics.
async fn write_at_once_through(
    follower: &Node,
    n: usize,
) -> (Vec<Result<CommandResponse, RaftError>>, RaftNodeMetrics) {
    let results = join_all(
        (0..n)
            .map(|i| follower.write(forwarded_command(i)))
            .collect(),
    )
    .await;
    let after = follower.metrics();
    assert_eq!(after.forwarded_writes, n as u64);
    (results, after)
}

/// Checks that write `i` of [`forwarded_command`] got its own result (every fourth, a revoke
/// of the unknown lease `1000 + i`, `LeaseNotFound` of that id) and returns the puts'
/// `(i, revision)`.
fn own_results(results: Vec<Result<CommandResponse, RaftError>>) -> Vec<(usize, i64)> {
    let mut revisions = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        if i % 4 == 3 {
            match result {
                Err(RaftError::Command(CommandError::LeaseNotFound(id))) => {
                    assert_eq!(id, 1000 + i as i64)
                }
                other => panic!("write {i}: {other:?}"),
            }
        } else {
            revisions.push((i, revision_of(result.unwrap())));
        }
    }
    revisions
}

/// A follower forwards the writes that arrive while its forwarding requests are in flight
/// together, one request for all of them, and every caller gets its own command's response
/// or error. Runs in about 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_through_a_follower_share_requests_and_get_their_own_results() {
    on_three_memory_members(async |all: Vec<&Node>| {
        let (_, follower) = leader_and_follower(&all).await;
        let before = follower.metrics();
        assert_eq!((before.write_forwards, before.forwarded_writes), (0, 0));

        const N: usize = 200;
        let (results, after) = write_at_once_through(follower, N).await;

        // Every write was forwarded once (checked above). Usually the first two find free
        // forwarding slots and go alone and the other 198, arriving meanwhile, go together in
        // one request (3 requests); on a loaded machine a forward may come back while the
        // writes are still arriving, which splits them into a few more requests. Without
        // batching it is 200.
        assert!(
            (3..=20).contains(&after.write_forwards),
            "{} forwarding requests for {N} writes",
            after.write_forwards
        );

        let revisions = own_results(results);
        // 150 puts, each its own revision, 2..=151.
        let mut sorted: Vec<i64> = revisions.iter().map(|(_, r)| *r).collect();
        sorted.sort_unstable();
        assert_eq!(sorted, (2..=151).collect::<Vec<i64>>());
        // With one shared request (the usual case) it was applied in its order; requests of
        // a split run on two slots, whose order between them is not fixed.
        if after.write_forwards == 3 {
            let batched: Vec<i64> = revisions
                .iter()
                .filter(|(i, _)| *i >= 2)
                .map(|(_, r)| *r)
                .collect();
            assert!(batched.windows(2).all(|w| w[0] < w[1]), "{batched:?}");
        }
        converge(&all).await;
        for n in &all {
            for (i, revision) in &revisions {
                let key = format!("fw{i:03}");
                let kv = n
                    .store()
                    .range(key.as_bytes(), &[], 0, 0, false)
                    .unwrap()
                    .kvs;
                assert_eq!(kv.len(), 1, "{key} on {}", n.id());
                assert_eq!(
                    (kv[0].mod_revision, kv[0].value.clone()),
                    (*revision, format!("v{i}").into_bytes()),
                    "{key} on {}",
                    n.id()
                );
            }
        }
    })
    .await;
}

/// A leader of a build older than batched forwards cannot decode a `Writes` request (it
/// proposes nothing): the follower then forwards each of those writes on its own, so a
/// rolling upgrade loses no write. Runs in about 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_a_follower_fall_back_to_one_request_each_for_an_older_leader() {
    on_three_memory_members(async |all: Vec<&Node>| {
        for n in &all {
            n.answer_writes_as_older_member(true);
        }
        let (_, follower) = leader_and_follower(&all).await;

        const N: usize = 40;
        let (results, after) = write_at_once_through(follower, N).await;
        // Some writes went together (and were refused, then sent again one by one).
        assert!(after.write_forwards < N as u64, "{after:?}");

        let mut revisions: Vec<i64> = own_results(results).into_iter().map(|(_, r)| r).collect();
        // 30 puts, each its own revision, 2..=31.
        revisions.sort_unstable();
        assert_eq!(revisions, (2..=31).collect::<Vec<i64>>());
    })
    .await;
}

/// The leader answers a forwarded `Writes` request (postcard: variant 7, the commands) with
/// one result per command in their order (variant 6); a follower answers it "not leader".
/// Runs in about 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_answers_forwarded_writes_each_with_its_own_result() {
    use rusd_raft::pb::peer_reply::Result as Reply;
    use rusd_raft::pb::raft_peer_client::RaftPeerClient;
    use rusd_raft::pb::PeerRequest;
    use rusd_raft::{Applied, WireError};

    on_three_memory_members(async |all: Vec<&Node>| {
        let (leader, follower) = leader_and_follower(&all).await;
        let url_of = |n: &Node| n.metrics().members[&n.id()].peer_urls[0].clone();
        let cmds: Vec<Command> = vec![
            put("a", "1"),
            Command::LeaseRevoke { id: 42 },
            put("b", "2"),
            Command::DeleteRange(mvcc_core::DeleteRange::new("a", "")),
        ];
        let mut payload = vec![7u8];
        payload.extend(postcard::to_stdvec(&cmds).unwrap());
        let request = || PeerRequest {
            cluster_id: 77,
            payload: payload.clone(),
        };

        let mut client = RaftPeerClient::connect(url_of(leader)).await.unwrap();
        let reply = client.forward(request()).await.unwrap().into_inner();
        let Some(Reply::Ok(bytes)) = reply.result else {
            panic!("{reply:?}")
        };
        assert_eq!(bytes[0], 6, "ForwardReply::Writes");
        let results: Vec<Result<Option<Applied>, WireError>> =
            postcard::from_bytes(&bytes[1..]).unwrap();
        let summary: Vec<Result<Option<Result<i64, CommandError>>, WireError>> = results
            .into_iter()
            .map(|r| r.map(|a| a.map(|Applied(r)| r.map(revision_of))))
            .collect();
        assert_eq!(
            summary,
            vec![
                Ok(Some(Ok(2))),
                Ok(Some(Err(CommandError::LeaseNotFound(42)))),
                Ok(Some(Ok(3))),
                Ok(Some(Ok(4))),
            ]
        );
        // Applied in their order: "a" put then deleted, "b" put.
        assert!(values(leader, "a").is_empty());
        assert_eq!(
            values(leader, "b"),
            BTreeMap::from([("b".to_string(), "2".to_string())])
        );

        let mut client = RaftPeerClient::connect(url_of(follower)).await.unwrap();
        let reply = client.forward(request()).await.unwrap().into_inner();
        let Some(Reply::Err(bytes)) = reply.result else {
            panic!("{reply:?}")
        };
        assert_eq!(
            postcard::from_bytes::<WireError>(&bytes).unwrap(),
            WireError::NotLeader(Some(leader.id()))
        );
    })
    .await;
}
