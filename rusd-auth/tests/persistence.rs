//! The auth state survives a restart on every engine (memory with a data directory, sled,
//! redb), and the loader refuses records it cannot read.

mod common;

use std::sync::Arc;

use common::*;
use mvcc_core::request::{Put, Range};
use rusd_auth::*;
use storage_api::fault::{FaultKind, FaultOp, FaultyBackend};
use storage_api::{Backend, BackendConfig, MemoryBackend, Tree};

type Snapshot = (Vec<(Vec<u8>, Vec<u8>)>, AuthStatus, Vec<User>, Vec<Role>);

fn snapshot<B: Backend>(s: &AuthStore<B>) -> Snapshot {
    (
        dump(&**s.backend()),
        s.status(),
        s.user_list()
            .iter()
            .map(|u| s.user_get(u).unwrap())
            .collect(),
        s.role_list()
            .iter()
            .map(|r| s.role_get(r).unwrap())
            .collect(),
    )
}

fn config() -> AuthConfig {
    AuthConfig {
        bcrypt_cost: COST,
        ..AuthConfig::default()
    }
}

fn reopen_round_trip<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let be = B::new(BackendConfig::new(dir.path())).unwrap();
        let store = AuthStore::open(be.clone(), config()).unwrap();
        apply_all(&store, &setup_commands());
        apply_all(
            &store,
            &[
                AuthCommand::UserChangePassword {
                    name: "bob".into(),
                    hash: hash("bob2"),
                },
                AuthCommand::RoleRevokePermission {
                    role: "reader".into(),
                    key: b"cfg".to_vec(),
                    range_end: Vec::new(),
                },
                role_add("gone"),
                grant("carol", "gone"),
                AuthCommand::RoleDelete {
                    role: "gone".into(),
                },
            ],
        );
        let snap = snapshot(&store);
        drop(store);
        be.close().unwrap();
        snap
    };
    let be = B::new(BackendConfig::new(dir.path())).unwrap();
    let store = AuthStore::open(be, config()).unwrap();
    assert_eq!(snapshot(&store), before, "{:?}", B::KIND);
    assert!(store.is_enabled());
    // Passwords, grants and the permission cache are back.
    store.authenticate("bob", "bob2").unwrap();
    assert!(store.authenticate("bob", "bobpw").is_err());
    let alice = {
        let t = store.authenticate("alice", "alicepw").unwrap();
        store.user_from_token(&t).unwrap().unwrap()
    };
    store.check_put(&alice, &Put::new("app/a", "v", 0)).unwrap();
    assert!(store.check_put(&alice, &Put::new("x", "v", 0)).is_err());
    let bob = {
        let t = store.authenticate("bob", "bob2").unwrap();
        store.user_from_token(&t).unwrap().unwrap()
    };
    assert!(store.check_range(&bob, &Range::new("cfg", "")).is_err());
    store.check_range(&bob, &Range::new("r/a", "")).unwrap();
    // The revision continues where it stopped.
    let rev = store.revision();
    assert_eq!(store.apply(&role_add("next")).unwrap().revision, rev + 1);
}

#[test]
fn survives_reopen_on_memory() {
    reopen_round_trip::<MemoryBackend>();
}

#[test]
fn survives_reopen_on_sled() {
    reopen_round_trip::<backend_sled::SledBackend>();
}

#[test]
fn survives_reopen_on_redb() {
    reopen_round_trip::<backend_redb::RedbBackend>();
}

#[test]
fn simple_tokens_do_not_survive_a_restart() {
    // etcd keeps simple tokens in memory only.
    let dir = tempfile::tempdir().unwrap();
    let token = {
        let be = MemoryBackend::new(BackendConfig::new(dir.path())).unwrap();
        let store = AuthStore::open(be.clone(), config()).unwrap();
        apply_all(&store, &setup_commands());
        let t = store.authenticate("alice", "alicepw").unwrap();
        drop(store);
        be.close().unwrap();
        t
    };
    let be = MemoryBackend::new(BackendConfig::new(dir.path())).unwrap();
    let store = AuthStore::open(be, config()).unwrap();
    assert!(matches!(
        store.user_from_token(&token),
        Err(AuthError::InvalidAuthToken)
    ));
}

#[test]
fn recover_reloads_from_the_backend() {
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let a = AuthStore::open(be.clone(), config()).unwrap();
    apply_all(&a, &setup_commands());
    // A second store over the same backend (as after a snapshot restore) sees the state
    // after recover().
    let b = AuthStore::open(be, config()).unwrap();
    a.apply(&role_add("late")).unwrap();
    assert!(b.role_get("late").is_err());
    b.recover().unwrap();
    assert!(b.role_get("late").is_ok());
    assert_eq!(a.status(), b.status());
}

#[test]
fn the_encoding_is_documented_and_versioned() {
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let store = AuthStore::open(be.clone(), config()).unwrap();
    apply_all(&store, &setup_commands()[..2]);
    assert_eq!(
        be.get(Tree::Auth, b"meta/format").unwrap(),
        Some(1u32.to_be_bytes().to_vec())
    );
    assert_eq!(
        be.get(Tree::Auth, b"meta/revision").unwrap(),
        Some(3u64.to_be_bytes().to_vec())
    );
    let root: serde_json::Value =
        serde_json::from_slice(&be.get(Tree::Auth, b"user/root").unwrap().unwrap()).unwrap();
    assert_eq!(root["v"], 1);
    assert_eq!(root["name"], "root");
    assert_eq!(root["roles"][0], "root");
    assert!(root["password_hash"].as_str().unwrap().starts_with("$2"));
}

#[test]
fn unreadable_records_are_refused() {
    let open = |be: &Arc<MemoryBackend>| AuthStore::open(be.clone(), config());
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    be.put(Tree::Auth, b"user/x", b"{not json").unwrap();
    assert!(matches!(open(&be), Err(AuthError::Corrupt { .. })));

    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    be.put(
        Tree::Auth,
        b"role/x",
        br#"{"v":2,"name":"x","permissions":[]}"#,
    )
    .unwrap();
    let err = open(&be).unwrap_err();
    assert!(
        err.to_string().contains("unsupported record version 2"),
        "{err}"
    );

    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    be.put(Tree::Auth, b"meta/format", &9u32.to_be_bytes())
        .unwrap();
    let err = open(&be).unwrap_err();
    assert!(
        err.to_string()
            .contains("unsupported auth format version 9"),
        "{err}"
    );

    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    be.put(Tree::Auth, b"meta/revision", b"short").unwrap();
    assert!(matches!(open(&be), Err(AuthError::Corrupt { .. })));
}

#[test]
fn read_dump_writes_nothing_and_reads_a_fresh_tree_as_the_default() {
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    assert_eq!(persist::read_dump(&*be).unwrap(), AuthDump::default());
    assert!(persist::read_dump(&*be).unwrap().is_fresh());
    assert_eq!(dump(&*be), Vec::new());
}

#[test]
fn dump_restores_into_another_store_with_one_write() {
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let a = AuthStore::open(be.clone(), config()).unwrap();
    apply_all(&a, &setup_commands());
    let d = persist::read_dump(&*be).unwrap();
    assert_eq!(d, a.dump());
    assert!(d.enabled);
    assert!(!d.is_fresh());

    let target = MemoryBackend::new(BackendConfig::new("")).unwrap();
    // A stale user the restore must remove.
    let stale = AuthStore::open(target.clone(), config()).unwrap();
    stale.apply(&user_add("stale", "pw")).unwrap();
    let faulty = FaultyBackend::wrap(target.clone());
    // A failing write: nothing changes.
    let tree_before = dump(&*target);
    faulty.plan().fail_nth(FaultOp::Write, 1, FaultKind::Before);
    assert!(matches!(
        persist::restore(&*faulty, &d),
        Err(AuthError::Storage(_))
    ));
    assert_eq!(dump(&*target), tree_before);
    // One write: a fault armed on the second never fires.
    faulty.plan().fail_nth(FaultOp::Write, 2, FaultKind::Before);
    let restored = persist::restore(&*faulty, &d).unwrap();
    assert_eq!(faulty.plan().pending(), 1);
    faulty.plan().clear();
    assert_eq!(restored, d);
    let b = AuthStore::open(target.clone(), config()).unwrap();
    assert_eq!(b.dump(), d);
    assert_eq!(snapshot(&b), snapshot(&a));
    // The same bcrypt hashes: the same passwords work.
    b.authenticate("bob", "bobpw").unwrap();
    assert!(matches!(
        b.authenticate("bob", "wrong"),
        Err(AuthError::AuthFailed)
    ));
    // The stale store sees the restored state after recover().
    stale.recover().unwrap();
    assert!(matches!(
        stale.user_get("stale"),
        Err(AuthError::UserNotFound)
    ));
    assert_eq!(stale.status(), a.status());
}

#[test]
fn restore_normalises_order_and_refuses_broken_states() {
    let user = |name: &str, roles: &[&str]| User {
        name: name.into(),
        password_hash: Some(hash("pw")),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        options: UserOptions::default(),
    };
    let role = |name: &str, perms: Vec<Permission>| Role {
        name: name.into(),
        permissions: perms,
    };
    let d = AuthDump {
        enabled: false,
        revision: 7,
        users: vec![user("z", &["r2", "r1", "r2"]), user("a", &[])],
        roles: vec![
            role(
                "r2",
                vec![
                    Permission::new(PermissionType::Write, "b", ""),
                    Permission::new(PermissionType::Read, "a", "c"),
                ],
            ),
            role("r1", vec![]),
        ],
    };
    let n = persist::normalize_dump(&d).unwrap();
    let names: Vec<&str> = n.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["a", "z"]);
    assert_eq!(n.users[1].roles, ["r1", "r2"]);
    let names: Vec<&str> = n.roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r1", "r2"]);
    assert_eq!(
        n.roles[1].permissions,
        vec![
            Permission::new(PermissionType::Read, "a", "c"),
            Permission::new(PermissionType::Write, "b", ""),
        ]
    );

    let refused = |d: AuthDump, want: &str| {
        let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
        let err = persist::restore(&*be, &d).unwrap_err();
        assert!(matches!(err, AuthError::InvalidDump(_)), "{err:?}");
        assert_eq!(err.to_string(), format!("auth: invalid auth state: {want}"));
        assert_eq!(err.grpc_code(), grpc_code::INTERNAL);
        assert_eq!(dump(&*be), Vec::new());
    };
    refused(
        AuthDump {
            revision: 0,
            ..d.clone()
        },
        "auth revision 0",
    );
    let mut twice = d.clone();
    twice.users.push(user("a", &[]));
    refused(twice, "user \"a\" appears twice");
    let mut empty = d.clone();
    empty.roles.push(role("", vec![]));
    refused(empty, "a role with an empty name");
    let mut bad_range = d.clone();
    bad_range.roles[1]
        .permissions
        .push(Permission::new(PermissionType::Read, "b", "a"));
    refused(
        bad_range,
        "role \"r1\": invalid permission range \"b\"..\"a\"",
    );
    let mut empty_grant = d;
    empty_grant.users[0].roles.push(String::new());
    refused(empty_grant, "user \"z\" holds a role with an empty name");
}
