//! etcd's lease checkpointing across in-process members: the leader checkpoints remaining
//! TTLs through the log, and a new leader resumes a lease from its checkpoint, not its full
//! TTL. Each member has its own manual clock, so every TTL asserted is exact.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mvcc_core::{AnyBackend, ManualClock, StoreConfig};
use rusd_raft::{Command, CommandResponse, InitialState, Member, NodeId, RaftNode, RaftNodeConfig};
use storage_api::{BackendConfig, BackendKind, Durability};
use tokio::net::TcpListener;

type Node = RaftNode<AnyBackend>;

/// Upper bound of every wait in this test.
const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, at most [`WAIT`].
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn remaining(node: &Node, id: i64) -> (i64, i64) {
    let info = node.store().lease_time_to_live(id).unwrap();
    (info.ttl, info.remaining_ttl)
}

/// Starts member `id` on `listener` with its own `clock`, its data in `<dir>/m<id>`.
async fn start_member(
    id: NodeId,
    listener: TcpListener,
    members: &BTreeMap<NodeId, Member>,
    dir: &std::path::Path,
    kind: BackendKind,
    clock: Arc<ManualClock>,
) -> Node {
    let data = dir.join(format!("m{id}"));
    let path = if kind == BackendKind::Memory {
        // Volatile.
        std::path::PathBuf::new()
    } else {
        data.join("db")
    };
    let backend = AnyBackend::open(
        kind,
        BackendConfig::new(path).with_durability(Durability::Buffered {
            interval: Duration::from_millis(100),
        }),
    )
    .unwrap();
    let mut config = RaftNodeConfig::new(id, format!("m{id}"), listener, data, backend);
    config.cluster_id = 78;
    config.initial_members = members.clone();
    config.initial_state = InitialState::New;
    config.raft_config = rusd_raft::openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..rusd_raft::default_raft_config()
    };
    config.request_timeout = Duration::from_secs(10);
    config.lease_check_interval = Duration::from_millis(50);
    config.lease_checkpoint_interval = Duration::from_millis(200);
    config.store_config = StoreConfig::default().with_clock(clock);
    RaftNode::start(config).await.unwrap()
}

/// Binds one loopback listener per member id and describes the members.
async fn bind_members(ids: &[NodeId]) -> (Vec<TcpListener>, BTreeMap<NodeId, Member>) {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for &id in ids {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(
            id,
            Member {
                name: format!("m{id}"),
                peer_urls: vec![format!("http://{}", l.local_addr().unwrap())],
                client_urls: Vec::new(),
            },
        );
        listeners.push(l);
    }
    (listeners, members)
}

/// The leader of `nodes` (once every member agrees) and its position.
async fn leader_of(nodes: &[Node]) -> (NodeId, usize) {
    let id = nodes[0]
        .wait_for(WAIT, |m| m.leader.is_some())
        .await
        .unwrap()
        .leader
        .unwrap();
    for n in nodes {
        n.wait_for(WAIT, |m| m.leader == Some(id)).await.unwrap();
    }
    (id, nodes.iter().position(|n| n.id() == id).unwrap())
}

/// Grants lease 5 with TTL 60 on the leader, moves the leader's clock 10 s and waits until
/// every member applied the leader's checkpoint of 50 s. (The leader renews every lease once
/// when it takes office, at its first lease check; should that come after the clock moved,
/// the lease is at 60 again: the clock moves once more.)
async fn grant_and_checkpoint(nodes: &[Node], leader: usize, clock: &ManualClock) {
    match nodes[leader]
        .write(Command::LeaseGrant { id: 5, ttl: 60 })
        .await
        .unwrap()
    {
        CommandResponse::LeaseGrant(l) => assert_eq!((l.id, l.ttl), (5, 60)),
        other => panic!("{other:?}"),
    }
    let last = nodes[leader].metrics().last_log_index;
    for n in nodes {
        n.wait_for(WAIT, |m| m.applied_index >= last).await.unwrap();
    }
    // Nothing to checkpoint while the remaining TTL is the full TTL.
    for n in nodes {
        assert_eq!(n.store().lease_checkpointed_ttl(5).unwrap(), 0);
    }
    let checkpoint = 'checkpointed: {
        for _ in 0..3 {
            clock.advance(Duration::from_secs(10));
            let left = remaining(&nodes[leader], 5).1;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while tokio::time::Instant::now() < deadline {
                if nodes[leader].store().lease_checkpointed_ttl(5).unwrap() == left {
                    break 'checkpointed left;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("the leader did not checkpoint the lease");
    };
    assert_eq!(checkpoint, 50);
    for n in nodes {
        eventually("checkpoint applied", || {
            (n.store().lease_checkpointed_ttl(5).unwrap() == 50).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_resumes_leases_from_their_checkpointed_remaining_ttl() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let (listeners, members) = bind_members(&[1, 2, 3]).await;
        let mut nodes: Vec<Node> = Vec::new();
        let mut clocks: BTreeMap<NodeId, Arc<ManualClock>> = BTreeMap::new();
        for (id, l) in (1..=3).zip(listeners) {
            let clock = ManualClock::new();
            clocks.insert(id, clock.clone());
            nodes.push(start_member(id, l, &members, tmp.path(), BackendKind::Memory, clock).await);
        }
        let (leader_id, leader) = leader_of(&nodes).await;
        // 10 s pass on the leader only: it checkpoints 50 s, which every member persists.
        grant_and_checkpoint(&nodes, leader, &clocks[&leader_id]).await;
        // The followers' clocks did not move: without the checkpoint they would resume at 60.
        for n in nodes.iter().filter(|n| n.id() != leader_id) {
            assert_eq!(remaining(n, 5), (60, 60));
        }

        // The leader goes away; the new one resumes the lease from its checkpoint.
        let old = nodes.remove(leader);
        old.shutdown().await.unwrap();
        let new_id = eventually("a new leader", || {
            nodes
                .iter()
                .find(|n| n.is_leader() && n.leader() == Some(n.id()))
                .map(|n| n.id())
        })
        .await;
        assert_ne!(new_id, leader_id);
        let new = nodes.iter().position(|n| n.id() == new_id).unwrap();
        eventually("the new leader's refresh", || {
            (remaining(&nodes[new], 5) == (60, 50)).then_some(())
        })
        .await;
        // Its clock did not move: nothing changed, nothing more to checkpoint.
        assert_eq!(nodes[new].store().lease_checkpointed_ttl(5).unwrap(), 50);

        // A keep-alive (through the follower) clears the checkpoint on every member first.
        let follower = 1 - new;
        assert_eq!(nodes[follower].lease_keep_alive(5).await.unwrap(), 60);
        assert_eq!(remaining(&nodes[new], 5), (60, 60));
        for n in &nodes {
            eventually("checkpoint cleared", || {
                (n.store().lease_checkpointed_ttl(5).unwrap() == 0).then_some(())
            })
            .await;
        }
        // The new leader checkpoints in turn: 20 s later, 40 s are left.
        clocks[&new_id].advance(Duration::from_secs(20));
        for n in &nodes {
            eventually("second checkpoint applied", || {
                (n.store().lease_checkpointed_ttl(5).unwrap() == 40).then_some(())
            })
            .await;
        }
        assert_eq!(remaining(&nodes[new], 5), (60, 40));
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test took longer than 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_restart_of_every_member_leases_resume_from_their_checkpoint() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let (listeners, members) = bind_members(&[1, 2, 3]).await;
        let mut nodes: Vec<Node> = Vec::new();
        let mut clocks: BTreeMap<NodeId, Arc<ManualClock>> = BTreeMap::new();
        for (id, l) in (1..=3).zip(listeners) {
            let clock = ManualClock::new();
            clocks.insert(id, clock.clone());
            nodes.push(start_member(id, l, &members, tmp.path(), BackendKind::Sled, clock).await);
        }
        let (leader_id, leader) = leader_of(&nodes).await;
        grant_and_checkpoint(&nodes, leader, &clocks[&leader_id]).await;
        for n in nodes.drain(..) {
            n.shutdown().await.unwrap();
        }

        // Same addresses and data dirs, new clocks at 0: every member loads the lease with
        // its checkpointed 50 s, and the leader elected keeps it.
        for id in 1..=3 {
            let addr = members[&id].peer_urls[0]
                .trim_start_matches("http://")
                .to_string();
            let l = TcpListener::bind(addr).await.unwrap();
            let node = start_member(
                id,
                l,
                &members,
                tmp.path(),
                BackendKind::Sled,
                ManualClock::new(),
            )
            .await;
            assert_eq!(remaining(&node, 5), (60, 50), "member {id} on open");
            nodes.push(node);
        }
        let (_, leader) = leader_of(&nodes).await;
        // A write goes through the new leader; the lease is still at 50 s everywhere (the
        // leader's refresh, whenever its first lease check runs, resumes from 50 s too: the
        // test above checks the refresh).
        nodes[leader].write(Command::Noop).await.unwrap();
        for n in &nodes {
            assert_eq!(remaining(n, 5), (60, 50), "member {}", n.id());
            assert_eq!(n.store().lease_checkpointed_ttl(5).unwrap(), 50);
        }
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    })
    .await
    .expect("test took longer than 120 s");
}
