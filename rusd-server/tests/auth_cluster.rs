//! Auth in a cluster of three `rusd` processes: every auth change goes through the raft log,
//! so a user added via one member exists on all of them, a simple token issued by one member
//! is accepted by the others, a revocation made via one member is enforced by the others,
//! and a member that was down while users changed (and catches up by snapshot, the log having
//! been purged) has the same users.

use std::time::{Duration, Instant};

use rusd_server::pb::authpb;
use rusd_server::pb::etcdserverpb as pb;
use rusd_server::pb::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use rusd_testkit::cluster::{initial_cluster, ClusterState, Member};
use tonic::transport::Channel;
use tonic::Code;

const RUSD: &str = env!("CARGO_BIN_EXE_rusd");
const TOKEN: &str = "rusd-auth-cluster-test";

#[derive(Clone)]
struct Clients {
    kv: KvClient<Channel>,
    auth: AuthClient<Channel>,
    maint: MaintenanceClient<Channel>,
}

async fn connect(endpoint: &str) -> Clients {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Channel::from_shared(endpoint.to_string())
            .unwrap()
            .connect()
            .await
        {
            return Clients {
                kv: KvClient::new(ch.clone()),
                auth: AuthClient::new(ch.clone()),
                maint: MaintenanceClient::new(ch),
            };
        }
        assert!(Instant::now() < deadline, "cannot connect to {endpoint}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn req<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().unwrap());
    }
    r
}

/// Waits until every member reports the same leader and has applied everything the leader
/// has (so the next request on any member sees every change made so far).
async fn in_sync(members: &mut [&mut Clients]) {
    in_sync_without(members, 0).await
}

/// [`in_sync`] with a leader other than `not`.
async fn in_sync_without(members: &mut [&mut Clients], not: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for m in members.iter_mut() {
            match tokio::time::timeout(Duration::from_secs(1), m.maint.status(pb::StatusRequest {}))
                .await
            {
                Ok(Ok(s)) => {
                    let s = s.into_inner();
                    seen.push((s.leader, s.raft_index, s.raft_applied_index));
                }
                _ => seen.push((0, 0, 0)),
            }
        }
        let leader = seen[0].0;
        let top = seen.iter().map(|s| s.1).max().unwrap_or(0);
        if leader != 0 && leader != not && seen.iter().all(|s| s.0 == leader && s.2 >= top) {
            return;
        }
        assert!(Instant::now() < deadline, "members not in sync: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn authenticate(c: &mut Clients, name: &str, password: &str) -> String {
    c.auth
        .authenticate(pb::AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("authenticate {name}: {e}"))
        .into_inner()
        .token
}

async fn put(c: &mut Clients, key: &str, token: &str) -> Result<i64, tonic::Status> {
    c.kv.put(req(
        pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        },
        Some(token),
    ))
    .await
    .map(|r| r.into_inner().header.unwrap().revision)
}

fn denied(r: Result<i64, tonic::Status>) -> (Code, String) {
    let e = r.unwrap_err();
    (e.code(), e.message().to_string())
}

async fn users(c: &mut Clients, root: &str) -> Vec<String> {
    c.auth
        .user_list(req(pb::AuthUserListRequest {}, Some(root)))
        .await
        .unwrap()
        .into_inner()
        .users
}

async fn status(c: &mut Clients, root: &str) -> (bool, u64) {
    let s = c
        .auth
        .auth_status(req(pb::AuthStatusRequest {}, Some(root)))
        .await
        .unwrap()
        .into_inner();
    (s.enabled, s.auth_revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_changes_and_simple_tokens_are_shared_by_every_member() {
    tokio::time::timeout(Duration::from_secs(180), run())
        .await
        .expect("auth cluster test took longer than 180 s");
}

async fn run() {
    let tmp = tempfile::tempdir().unwrap();
    let backends = ["sled", "redb", "sled"];
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            Member::new(RUSD, tmp.path(), &format!("m{}", i + 1))
                .unwrap()
                .backend(backends[i])
                .token(TOKEN)
                .args(["--snapshot-count", "20", "--bcrypt-cost", "4"])
        })
        .collect();
    let cluster_flag = initial_cluster(&members);
    for m in &mut members {
        m.spawn(&cluster_flag, ClusterState::New).unwrap();
    }
    // Dropping the members kills them, whatever happened.
    let mut cluster = members;
    let mut c1 = connect(&cluster[0].endpoint()).await;
    let mut c2 = connect(&cluster[1].endpoint()).await;
    let mut c3 = connect(&cluster[2].endpoint()).await;
    in_sync(&mut [&mut c1, &mut c2, &mut c3]).await;

    // Users, a role and auth enabled, all via member 1 (no token: auth is still disabled).
    let a = &mut c1.auth;
    for (name, pw) in [("root", "rootpw"), ("alice", "alicepw")] {
        a.user_add(pb::AuthUserAddRequest {
            name: name.into(),
            password: pw.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    a.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    a.role_add(pb::AuthRoleAddRequest { name: "r".into() })
        .await
        .unwrap();
    a.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
        name: "r".into(),
        perm: Some(authpb::Permission {
            perm_type: authpb::permission::Type::Readwrite as i32,
            key: b"a/".to_vec(),
            range_end: b"a0".to_vec(),
        }),
    })
    .await
    .unwrap();
    a.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "alice".into(),
        role: "r".into(),
    })
    .await
    .unwrap();
    a.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    // Already known here: the member that answered applied it.
    let err = a
        .user_add(pb::AuthUserAddRequest {
            name: "bob".into(),
            password: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: user name is empty")
    );

    // alice authenticates via member 2; member 3 accepts her simple token.
    let alice = authenticate(&mut c2, "alice", "alicepw").await;
    in_sync(&mut [&mut c1, &mut c2, &mut c3]).await;
    assert_eq!(put(&mut c3, "a/1", &alice).await.unwrap(), 2);
    assert_eq!(
        denied(put(&mut c3, "b/1", &alice).await),
        (
            Code::PermissionDenied,
            "etcdserver: permission denied".into()
        )
    );
    // Her token is no root token on any member.
    let err = c1
        .auth
        .user_list(req(pb::AuthUserListRequest {}, Some(&alice)))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::PermissionDenied, "etcdserver: permission denied")
    );

    // Every member has the same users and auth revision (2 users, 3 grants, 1 role: 1 + 6).
    let root3 = authenticate(&mut c3, "root", "rootpw").await;
    in_sync(&mut [&mut c1, &mut c2, &mut c3]).await;
    for c in [&mut c1, &mut c2, &mut c3] {
        assert_eq!(status(c, &root3).await, (true, 7));
        assert_eq!(users(c, &root3).await, vec!["alice", "root"]);
    }

    // The permission is revoked via member 3: member 1 refuses alice's put.
    c3.auth
        .role_revoke_permission(req(
            pb::AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: b"a/".to_vec(),
                range_end: b"a0".to_vec(),
            },
            Some(&root3),
        ))
        .await
        .unwrap();
    // At once, member 1 refuses it whether or not it applied the revocation yet: checked on
    // the old auth state, the put is refused when applied (etcd's ErrAuthOldRevision).
    let at_once = denied(put(&mut c1, "a/2", &alice).await);
    assert!(
        at_once
            == (
                Code::PermissionDenied,
                "etcdserver: permission denied".into()
            )
            || at_once
                == (
                    Code::InvalidArgument,
                    "etcdserver: revision of auth store is old".into()
                ),
        "{at_once:?}"
    );
    in_sync(&mut [&mut c1, &mut c2, &mut c3]).await;
    assert_eq!(
        denied(put(&mut c1, "a/2", &alice).await),
        (
            Code::PermissionDenied,
            "etcdserver: permission denied".into()
        )
    );

    // Member 2 goes down; meanwhile a user is added and the log is purged behind snapshots
    // (--snapshot-count 20); restarted, it catches up by snapshot and has the new user.
    cluster[1].kill().unwrap();
    let id2 = rusd_raft::member_id(&[cluster[1].peer_url()], TOKEN);
    in_sync_without(&mut [&mut c1, &mut c3], id2).await;
    c3.auth
        .user_add(req(
            pb::AuthUserAddRequest {
                name: "carol".into(),
                password: "carolpw".into(),
                ..Default::default()
            },
            Some(&root3),
        ))
        .await
        .unwrap();
    for i in 0..60 {
        put(&mut c1, &format!("k/{i:02}"), &root3).await.unwrap();
    }
    cluster[1].restart().unwrap();
    let mut c2 = connect(&cluster[1].endpoint()).await;
    in_sync(&mut [&mut c1, &mut c2, &mut c3]).await;
    let log = cluster[1].log().unwrap();
    assert!(
        log.contains("installed snapshot"),
        "m2 caught up by log only"
    );
    // Its own root token (a new login on member 2), then the same state as the others.
    let root2 = authenticate(&mut c2, "root", "rootpw").await;
    assert_eq!(status(&mut c2, &root2).await, (true, 9));
    assert_eq!(users(&mut c2, &root2).await, vec!["alice", "carol", "root"]);
    let carol = authenticate(&mut c2, "carol", "carolpw").await;
    in_sync(&mut [&mut c1, &mut c2, &mut c3]).await;
    assert_eq!(
        denied(put(&mut c1, "a/3", &carol).await),
        (
            Code::PermissionDenied,
            "etcdserver: permission denied".into()
        )
    );
    drop(cluster);
}
