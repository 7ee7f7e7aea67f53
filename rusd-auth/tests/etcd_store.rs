//! Ports of etcd 3.4 `auth/store_test.go` cases that pin behaviour not covered elsewhere.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rusd_auth::*;
use storage_api::{Backend, BackendConfig, MemoryBackend};

fn store() -> AuthStore<MemoryBackend> {
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let s = AuthStore::open(
        be,
        AuthConfig {
            bcrypt_cost: COST,
            ..AuthConfig::default()
        },
    )
    .unwrap();
    apply_all(
        &s,
        &[
            user_add("root", "root"),
            grant("root", "root"),
            role_add("role-test"),
            user_add("foo", "bar"),
            grant("foo", "role-test"),
            AuthCommand::AuthEnable,
        ],
    );
    s
}

/// etcd TestRoleGrantInvalidPermission.
#[test]
fn role_grant_invalid_permission() {
    let s = store();
    s.apply(&role_add("role-test-1")).unwrap();
    let cases: [(&str, &[u8], &[u8], bool); 11] = [
        ("valid range", b"Keys", b"RangeEnd", true),
        ("invalid range: nil key", b"", b"RangeEnd", false),
        ("valid range: single key", b"Keys", b"", true),
        ("invalid range: empty (Key == RangeEnd)", b"a", b"a", false),
        ("invalid range: empty (Key > RangeEnd)", b"b", b"a", false),
        ("invalid range: length of key is 0", b"", b"a", false),
        ("invalid range: length of key is 0 (both)", b"", b"", false),
        (
            "invalid range: length of key is 0 (open end)",
            b"",
            &[0],
            false,
        ),
        (
            "valid range: single key permission for [0]",
            &[0],
            b"",
            true,
        ),
        ("valid range: \"a\" or larger keys", b"a", &[0], true),
        ("valid range: the entire keys", &[0], &[0], true),
    ];
    for (name, key, end, ok) in cases {
        let r = s.apply(&perm(
            "role-test-1",
            Permission::new(PermissionType::Write, key, end),
        ));
        match (ok, r) {
            (true, Ok(_)) => {}
            (false, Err(AuthError::InvalidAuthMgmt)) => {}
            (_, r) => panic!("{name}: {r:?}"),
        }
    }
}

/// etcd TestIsAdminPermitted.
#[test]
fn is_admin_permitted() {
    let s = store();
    let at = |u: &str| AuthInfo {
        user: u.into(),
        revision: 1,
    };
    s.check_admin(&at("root")).unwrap();
    assert!(matches!(
        s.check_admin(&at("rooti")),
        Err(AuthError::UserNotFound)
    ));
    assert!(matches!(s.check_admin(&at("")), Err(AuthError::UserEmpty)));
    assert!(matches!(
        s.check_admin(&at("foo")),
        Err(AuthError::PermissionDenied)
    ));
    s.apply(&AuthCommand::AuthDisable).unwrap();
    s.check_admin(&at("root")).unwrap();
}

/// etcd TestRolesOrder.
#[test]
fn roles_order() {
    let s = store();
    s.apply(&user_add("user", "pass")).unwrap();
    for r in ["role1", "role2", "abc", "xyz", "role3"] {
        s.apply(&role_add(r)).unwrap();
        s.apply(&grant("user", r)).unwrap();
    }
    let roles = s.user_get("user").unwrap().roles;
    assert!(roles.windows(2).all(|w| w[0] < w[1]), "{roles:?}");
}

/// etcd TestUserNoPasswordAdd.
#[test]
fn no_password_user_cannot_authenticate() {
    let s = store();
    s.apply(&AuthCommand::UserAdd {
        name: "usernopass".into(),
        password_hash: None,
        no_password: true,
    })
    .unwrap();
    assert!(matches!(
        s.assign_token("usernopass", "dummy", 1),
        Err(AuthError::AuthFailed)
    ));
    assert!(matches!(
        s.check_password("usernopass", ""),
        Err(AuthError::NoPasswordUser)
    ));
}

/// etcd TestCheckPassword.
#[test]
fn check_password() {
    let s = store();
    assert!(matches!(
        s.check_password("foo-test", "bar"),
        Err(AuthError::AuthFailed)
    ));
    assert_eq!(s.check_password("foo", "bar").unwrap(), s.revision());
    assert!(matches!(
        s.check_password("foo", ""),
        Err(AuthError::AuthFailed)
    ));
}

/// etcd TestUserDeleteAndPermCache: the deleted user's permissions go, a new user's come.
#[test]
fn user_delete_and_perm_cache() {
    let s = store();
    s.apply(&perm(
        "role-test",
        Permission::new(PermissionType::Read, "k", ""),
    ))
    .unwrap();
    s.apply(&AuthCommand::UserDelete { name: "foo".into() })
        .unwrap();
    assert!(matches!(
        s.apply(&AuthCommand::UserDelete { name: "foo".into() }),
        Err(AuthError::UserNotFound)
    ));
    let foo = AuthInfo {
        user: "foo".into(),
        revision: s.revision(),
    };
    assert!(matches!(
        s.check_read(&foo, b"k", b""),
        Err(AuthError::PermissionDenied)
    ));
    // Re-created with the role: the cache is rebuilt for the new user.
    apply_all(&s, &[user_add("foo", "x"), grant("foo", "role-test")]);
    let foo = AuthInfo {
        user: "foo".into(),
        revision: s.revision(),
    };
    s.check_read(&foo, b"k", b"").unwrap();
}

/// etcd TestAuthDisable: authentication refused while disabled, disabling twice is safe.
#[test]
fn auth_disable() {
    let s = store();
    s.apply(&AuthCommand::AuthDisable).unwrap();
    assert!(matches!(
        s.authenticate("foo", "bar"),
        Err(AuthError::AuthNotEnabled)
    ));
    assert!(!s.apply(&AuthCommand::AuthDisable).unwrap().changed);
    assert!(matches!(
        s.authenticate("foo", "bar"),
        Err(AuthError::AuthNotEnabled)
    ));
}

/// etcd TestHammerSimpleAuthenticate: many users authenticating and resolving tokens from
/// many threads while tokens expire.
#[test]
fn hammer_simple_authenticate() {
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000)));
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let s = Arc::new(
        AuthStore::open(
            be,
            AuthConfig {
                bcrypt_cost: COST,
                token: TokenProvider::Simple {
                    ttl: Duration::from_millis(10),
                },
                clock: clock.clone(),
            },
        )
        .unwrap(),
    );
    apply_all(&s, &[user_add("root", "root"), grant("root", "root")]);
    let users: Vec<String> = (0..16).map(|i| format!("user-{i}")).collect();
    for u in &users {
        s.apply(&user_add(u, "123")).unwrap();
    }
    s.apply(&AuthCommand::AuthEnable).unwrap();
    for round in 0..3u64 {
        std::thread::scope(|scope| {
            for (i, u) in users.iter().enumerate() {
                let s = s.clone();
                scope.spawn(move || {
                    let prefix = format!("{u}({round})");
                    let token = s.assign_token(u, &prefix, round * 100 + i as u64).unwrap();
                    assert_eq!(s.user_from_token(&token).unwrap().unwrap().user, *u);
                    s.purge_expired_tokens();
                });
            }
        });
        clock.advance(Duration::from_millis(11));
        assert_eq!(s.purge_expired_tokens(), users.len());
    }
}

/// etcd TestNewAuthStoreRevision: the revision survives a reopen.
#[test]
fn revision_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rev = {
        let be = MemoryBackend::new(BackendConfig::new(dir.path())).unwrap();
        let s = AuthStore::open(be.clone(), AuthConfig::default()).unwrap();
        assert_eq!(s.revision(), 1);
        s.apply(&role_add("r")).unwrap();
        let rev = s.revision();
        drop(s);
        be.close().unwrap();
        rev
    };
    let be = MemoryBackend::new(BackendConfig::new(dir.path())).unwrap();
    let s = AuthStore::open(be, AuthConfig::default()).unwrap();
    assert_eq!(s.revision(), rev);
    assert_eq!(rev, 2);
}
