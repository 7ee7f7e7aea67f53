//! The auth state survives a restart on every engine (memory with a data directory, sled,
//! redb), and the loader refuses records it cannot read.

mod common;

use std::sync::Arc;

use common::*;
use mvcc_core::request::{Put, Range};
use rusd_auth::*;
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
