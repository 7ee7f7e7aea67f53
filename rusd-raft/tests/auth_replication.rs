//! Auth changes through the raft log: applied on every member (admin permission re-checked at
//! apply time), simple tokens registered on every member, the auth tree carried by the
//! snapshot a member catches up with, and an auth entry interrupted by a storage failure
//! replayed without applying anything twice (the auth rows and the apply record are one
//! atomic write).

use std::collections::BTreeMap;
use std::time::Duration;

use mvcc_core::{AnyBackend, Put, StoreConfig};
use rusd_auth::{AuthCommand, AuthInfo, Permission, PermissionType};
use rusd_raft::openraft::storage::RaftStateMachine;
use rusd_raft::openraft::{Entry, EntryPayload, LogId};
use rusd_raft::state_machine::StateMachine;
use rusd_raft::{
    Command, CommandError, CommandResponse, InitialState, Member, NodeId, RaftError, RaftNode,
    RaftNodeConfig, TypeConfig,
};
use storage_api::fault::{FaultKind, FaultOp, FaultyBackend};
use storage_api::{BackendConfig, BackendKind, Durability, MemoryBackend};
use tokio::net::TcpListener;

type Node = RaftNode<AnyBackend>;

const WAIT: Duration = Duration::from_secs(20);

fn auth(cmd: AuthCommand, user: &str) -> Command {
    Command::Auth {
        cmd,
        user: user.to_string(),
        auth_revision: 0,
    }
}

fn user_add(name: &str) -> AuthCommand {
    AuthCommand::UserAdd {
        name: name.into(),
        // bcrypt hash of "pw" at cost 4 (the proposer hashes; apply stores it as is).
        password_hash: Some(rusd_auth::hash_password("pw", 4).unwrap()),
        no_password: false,
    }
}

fn grant(user: &str, role: &str) -> AuthCommand {
    AuthCommand::UserGrantRole {
        user: user.into(),
        role: role.into(),
    }
}

fn perm(prefix: &str) -> AuthCommand {
    AuthCommand::RoleGrantPermission {
        name: "r".into(),
        perm: Permission::prefix(PermissionType::ReadWrite, prefix),
    }
}

fn auth_revision(resp: CommandResponse) -> u64 {
    match resp {
        CommandResponse::Auth { revision, .. } => revision,
        other => panic!("not an auth response: {other:?}"),
    }
}

async fn start(
    id: NodeId,
    kind: BackendKind,
    dir: &std::path::Path,
    listener: TcpListener,
    members: &BTreeMap<NodeId, Member>,
    state: InitialState,
) -> Node {
    let backend = AnyBackend::open(
        kind,
        BackendConfig::new(dir.join("db")).with_durability(Durability::Buffered {
            interval: Duration::from_millis(100),
        }),
    )
    .unwrap();
    let mut config = RaftNodeConfig::new(id, format!("m{id}"), listener, dir, backend);
    config.cluster_id = 78;
    config.initial_members = members.clone();
    config.initial_state = state;
    config.raft_config = rusd_raft::openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: rusd_raft::openraft::SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..rusd_raft::default_raft_config()
    };
    config.request_timeout = Duration::from_secs(10);
    config.store_config = StoreConfig::default();
    RaftNode::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_changes_replicate_checked_at_apply_and_travel_in_the_snapshot() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let m1 = Member {
            name: "m1".into(),
            peer_urls: vec![format!("http://{}", l1.local_addr().unwrap())],
            client_urls: Vec::new(),
        };
        let one = BTreeMap::from([(1, m1)]);
        let n1 = start(
            1,
            BackendKind::Sled,
            &tmp.path().join("m1"),
            l1,
            &one,
            InitialState::New,
        )
        .await;
        n1.wait_for(WAIT, |m| m.leader == Some(1)).await.unwrap();

        // Auth disabled: anyone may manage (etcd); revision 1 + one per change.
        let mut rev = 1;
        for cmd in [
            user_add("root"),
            grant("root", "root"),
            AuthCommand::RoleAdd { name: "r".into() },
            perm("a/"),
            user_add("alice"),
            grant("alice", "r"),
        ] {
            rev += 1;
            assert_eq!(auth_revision(n1.write(auth(cmd, "")).await.unwrap()), rev);
        }
        // AuthEnable does not count as a revision (etcd).
        assert_eq!(
            n1.write(auth(AuthCommand::AuthEnable, "root"))
                .await
                .unwrap(),
            CommandResponse::Auth {
                revision: rev,
                changed: true
            }
        );
        // Enabled: the requester carried in the entry must hold root when it is applied.
        for (user, code, message) in [
            ("alice", 7, "etcdserver: permission denied"),
            ("", 3, "etcdserver: user name is empty"),
            ("mallory", 9, "etcdserver: user name not found"),
        ] {
            let err = n1
                .write(auth(AuthCommand::RoleAdd { name: "x".into() }, user))
                .await
                .unwrap_err();
            match err {
                RaftError::Command(CommandError::Auth {
                    code: c,
                    message: m,
                }) => {
                    assert_eq!((c, m.as_str()), (code, message), "{user}")
                }
                other => panic!("{user}: {other:?}"),
            }
        }
        // A validation failure is etcd's too.
        match n1
            .write(auth(AuthCommand::RoleAdd { name: "r".into() }, "root"))
            .await
            .unwrap_err()
        {
            RaftError::Command(CommandError::Auth { code, message }) => assert_eq!(
                (code, message.as_str()),
                (9, "etcdserver: role name already exists")
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(n1.auth().revision(), rev);

        // Enough writes for a snapshot; the log is purged behind it.
        for i in 0..40 {
            n1.write(Command::Put(Put::new(format!("a/{i:02}"), "v", 0)))
                .await
                .unwrap();
        }
        tokio::time::timeout(WAIT, async {
            while n1
                .raft()
                .metrics()
                .borrow()
                .purged
                .is_none_or(|p| p.index < 20)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("log purged");

        // A member joining now gets the auth state from the snapshot (it has no log).
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let m2 = Member {
            name: "m2".into(),
            peer_urls: vec![format!("http://{}", l2.local_addr().unwrap())],
            client_urls: Vec::new(),
        };
        let n2 = start(
            2,
            BackendKind::Redb,
            &tmp.path().join("m2"),
            l2,
            &BTreeMap::new(),
            InitialState::Existing,
        )
        .await;
        n1.add_learner(2, m2).await.unwrap();
        let last = n1.indexes().0;
        n2.wait_for(WAIT, |m| m.applied_index >= last)
            .await
            .unwrap();
        let snap = n2.raft().metrics().borrow().snapshot;
        assert!(snap.is_some_and(|s| s.index >= 20), "{snap:?}");
        let a2 = n2.auth();
        assert!(a2.is_enabled());
        assert_eq!(a2.revision(), rev);
        assert_eq!(
            a2.user_list(),
            vec!["alice".to_string(), "root".to_string()]
        );
        assert_eq!(a2.role_list(), vec!["r".to_string()]);
        assert_eq!(a2.user_get("alice").unwrap().roles, vec!["r".to_string()]);
        assert_eq!(
            a2.role_get("r").unwrap().permissions,
            vec![Permission::prefix(PermissionType::ReadWrite, "a/")]
        );

        // A simple token registered through the log is known on both members.
        let prefix = n1.auth().gen_token_prefix();
        let token = match n1
            .write(Command::Authenticate {
                name: "alice".into(),
                simple_token_prefix: prefix.clone(),
            })
            .await
            .unwrap()
        {
            CommandResponse::Authenticate { token } => token,
            other => panic!("{other:?}"),
        };
        // `<prefix>.<raft index of the entry>` (etcd's simple token); nothing else is written.
        let index = n1.indexes().0;
        assert_eq!(token, format!("{prefix}.{index}"));
        n2.wait_for(WAIT, |m| m.applied_index >= index)
            .await
            .unwrap();
        for n in [&n1, &n2] {
            let info = n.auth().user_from_token(&token).unwrap().unwrap();
            assert_eq!(
                info,
                AuthInfo {
                    user: "alice".into(),
                    revision: rev
                }
            );
            n.auth().check_put(&info, &Put::new("a/1", "v", 0)).unwrap();
            assert_eq!(
                n.auth()
                    .check_put(&info, &Put::new("b/1", "v", 0))
                    .unwrap_err()
                    .to_string(),
                "etcdserver: permission denied"
            );
        }

        // A request checked at an older auth revision than the one it is applied at is
        // refused (etcd's ErrAuthOldRevision); checked at the current one, it is applied.
        let guarded = |auth_revision: u64, key: &str| Command::AuthChecked {
            auth_revision,
            cmd: Box::new(Command::Put(Put::new(key, "v", 0))),
        };
        match n2.write(guarded(rev - 1, "a/old")).await.unwrap_err() {
            RaftError::Command(CommandError::Auth { code, message }) => assert_eq!(
                (code, message.as_str()),
                (3, "etcdserver: revision of auth store is old")
            ),
            other => panic!("{other:?}"),
        }
        match n2.write(guarded(rev, "a/new")).await.unwrap() {
            CommandResponse::Put(p) => assert_eq!(p.revision, 42),
            other => panic!("{other:?}"),
        }

        // A revoke through the log takes the permission away on both members.
        let revoked = n1
            .write(auth(
                AuthCommand::RoleRevokePermission {
                    role: "r".into(),
                    key: b"a/".to_vec(),
                    range_end: b"a0".to_vec(),
                },
                "root",
            ))
            .await
            .unwrap();
        assert_eq!(auth_revision(revoked), rev + 1);
        let index = n1.indexes().0;
        n2.wait_for(WAIT, |m| m.applied_index >= index)
            .await
            .unwrap();
        for n in [&n1, &n2] {
            let info = n.auth().user_from_token(&token).unwrap().unwrap();
            assert_eq!(info.revision, rev + 1);
            assert_eq!(
                n.auth()
                    .check_put(&info, &Put::new("a/1", "v", 0))
                    .unwrap_err()
                    .to_string(),
                "etcdserver: permission denied"
            );
        }
        n2.shutdown().await.unwrap();
        n1.shutdown().await.unwrap();
    })
    .await
    .expect("test took longer than 120 s");
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(rusd_raft::openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// Granting the same permission twice bumps the auth revision twice (etcd replaces the
/// type and counts a revision), so a replay of an auth command that was already applied would
/// be visible in the revision: the test fails unless the auth rows and the apply record are
/// written atomically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_auth_entry_is_replayed_without_bumping_the_revision_twice() {
    let inner = MemoryBackend::volatile();
    let faulty = FaultyBackend::wrap(inner.clone());
    let mut sm = StateMachine::open(faulty.clone(), StoreConfig::default()).unwrap();
    let first = entry(1, auth(AuthCommand::RoleAdd { name: "r".into() }, ""));
    let out = sm.apply(vec![first.clone()]).await.unwrap();
    assert_eq!(
        out[0].0,
        Ok(CommandResponse::Auth {
            revision: 2,
            changed: true
        })
    );
    let batch = entry(
        2,
        Command::Batch(vec![
            auth(perm("a/"), ""),
            auth(perm("a/"), ""),
            Command::Put(Put::new("k", "v", 0)),
        ]),
    );
    // The second grant's write fails: the first grant is in the backend, the second is not.
    faulty.plan().fail_nth(FaultOp::Write, 2, FaultKind::Before);
    assert!(sm.apply(vec![batch.clone()]).await.is_err());
    drop(sm);

    let mut sm =
        StateMachine::open(FaultyBackend::wrap(inner.clone()), StoreConfig::default()).unwrap();
    assert_eq!(sm.auth().revision(), 3);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(first.log_id));
    let out = sm.apply(vec![batch.clone()]).await.unwrap();
    match &out[0].0 {
        Ok(CommandResponse::Batch(results)) => {
            assert_eq!(
                results[0],
                Err(CommandError::Other("applied before a restart".into()))
            );
            assert_eq!(
                results[1],
                Ok(CommandResponse::Auth {
                    revision: 4,
                    changed: true
                })
            );
            match &results[2] {
                Ok(CommandResponse::Put(p)) => assert_eq!(p.revision, 2),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sm.auth().revision(), 4);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(batch.log_id));
    drop(sm);

    // Reopened again: the auth state and the apply record agree.
    let mut sm = StateMachine::open(FaultyBackend::wrap(inner), StoreConfig::default()).unwrap();
    assert_eq!(sm.auth().revision(), 4);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(batch.log_id));
}
