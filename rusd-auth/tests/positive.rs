//! What the auth store allows, token lifecycles, etcd's management semantics, atomicity and
//! determinism of `apply`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mvcc_core::request::{DeleteRange, Put, Range, RequestOp, Txn};
use mvcc_core::txn::{Compare, CompareOp};
use rusd_auth::*;
use storage_api::fault::{FaultKind, FaultOp, FaultyBackend};
use storage_api::{Backend, BackendConfig, MemoryBackend};

#[test]
fn prefix_grant_allows_inside_and_denies_outside() {
    let fx = Fx::new();
    let alice = fx.info("alice");
    fx.store
        .check_range(&alice, &Range::new("app/", "app0"))
        .unwrap();
    fx.store
        .check_range(&alice, &Range::new("app/x/y", ""))
        .unwrap();
    fx.store
        .check_put(&alice, &Put::new("app/k", "v", 0))
        .unwrap();
    let mut p = Put::new("app/k", "v", 0);
    p.prev_kv = true;
    fx.store.check_put(&alice, &p).unwrap();
    let mut d = DeleteRange::new("app/a", "app/z");
    d.prev_kv = true;
    fx.store.check_delete_range(&alice, &d).unwrap();
    fx.store.check_watch(&alice, b"app/", b"app0").unwrap();
    assert!(fx
        .store
        .check_put(&alice, &Put::new("apq", "v", 0))
        .is_err());
    assert!(fx
        .store
        .check_range(&alice, &Range::new("app/", "app1"))
        .is_err());
}

#[test]
fn read_write_and_readwrite_grants() {
    let fx = Fx::new();
    let bob = fx.info("bob");
    fx.store.check_range(&bob, &Range::new("cfg", "")).unwrap();
    fx.store.check_range(&bob, &Range::new("r/", "r0")).unwrap();
    fx.store
        .check_range(&bob, &Range::new("r/a", "r/b"))
        .unwrap();
    assert!(fx.store.check_put(&bob, &Put::new("r/a", "v", 0)).is_err());
    let dave = fx.info("dave");
    fx.store.check_put(&dave, &Put::new("w/a", "v", 0)).unwrap();
    fx.store
        .check_delete_range(&dave, &DeleteRange::new("w/", "w0"))
        .unwrap();
    assert!(fx.store.check_range(&dave, &Range::new("w/a", "")).is_err());
    // Upgrading WRITE to READWRITE on the same (key, range_end) replaces the type.
    fx.store
        .apply(&perm(
            "writer",
            Permission::prefix(PermissionType::ReadWrite, "w/"),
        ))
        .unwrap();
    let dave = fx.info("dave");
    fx.store.check_range(&dave, &Range::new("w/a", "")).unwrap();
    assert_eq!(fx.store.role_get("writer").unwrap().permissions.len(), 1);
}

#[test]
fn adjacent_grants_combine_and_open_ended_grants() {
    let fx = Fx::new();
    apply_all(
        &fx.store,
        &[
            perm("reader", Permission::new(PermissionType::Read, "r0", "s")),
            role_add("all"),
            perm(
                "all",
                Permission::new(PermissionType::Read, vec![0], vec![0]),
            ),
            user_add("erin", "erinpw"),
            grant("erin", "all"),
        ],
    );
    let bob = fx.info("bob");
    // [r/, r0) + [r0, s) cover [r/, s).
    fx.store.check_range(&bob, &Range::new("r/", "s")).unwrap();
    assert!(fx.store.check_range(&bob, &Range::new("r/", "t")).is_err());
    let erin = fx.info("erin");
    fx.store
        .check_range(&erin, &Range::new(vec![0], vec![0]))
        .unwrap();
    fx.store.check_watch(&erin, b"anything", &[0]).unwrap();
    assert!(fx.store.check_put(&erin, &Put::new("a", "v", 0)).is_err());
}

#[test]
fn txn_inside_the_grant_is_allowed_whichever_branch() {
    let fx = Fx::new();
    let alice = fx.info("alice");
    let inner = Txn {
        compare: vec![Compare::value("app/x", CompareOp::Equal, "1")],
        success: vec![RequestOp::DeleteRange(DeleteRange::new("app/a", "app/b"))],
        failure: vec![RequestOp::Range(Range::new("app/", "app0"))],
    };
    let t = Txn {
        compare: vec![Compare::version("app/a", CompareOp::Greater, 0)],
        success: vec![
            RequestOp::Put(Put::new("app/a", "v", 0)),
            RequestOp::Txn(inner),
        ],
        failure: vec![RequestOp::Put(Put::new("app/b", "v", 0))],
    };
    fx.store.check_txn(&alice, &t).unwrap();
    // The same txn with one failure op outside: denied even though only success would run.
    let mut bad = t.clone();
    bad.failure
        .push(RequestOp::Put(Put::new("outside", "v", 0)));
    assert!(matches!(
        fx.store.check_txn(&alice, &bad),
        Err(AuthError::PermissionDenied)
    ));
}

#[test]
fn root_may_do_everything_and_disabled_auth_checks_nothing() {
    let fx = Fx::new();
    let root = fx.info("root");
    fx.store
        .check_range(&root, &Range::new(vec![0], vec![0]))
        .unwrap();
    fx.store.check_put(&root, &Put::new("any", "v", 0)).unwrap();
    fx.store.check_admin(&root).unwrap();
    fx.store
        .check_lease_revoke(&root, &[b"secret".to_vec()])
        .unwrap();
    fx.store.check_user_get(&root, "alice").unwrap();
    fx.store.apply(&AuthCommand::AuthDisable).unwrap();
    let nobody = AuthInfo::default();
    fx.store
        .check_put(&nobody, &Put::new("any", "v", 0))
        .unwrap();
    fx.store.check_admin(&nobody).unwrap();
    assert_eq!(fx.store.user_from_token("whatever").unwrap(), None);
    assert_eq!(fx.store.user_from_common_name("alice"), None);
}

#[test]
fn users_may_read_themselves_and_their_roles() {
    let fx = Fx::new();
    let alice = fx.info("alice");
    fx.store.check_user_get(&alice, "alice").unwrap();
    fx.store.check_role_get(&alice, "app").unwrap();
}

#[test]
fn lease_checks() {
    let fx = Fx::new();
    let alice = fx.info("alice");
    fx.store
        .check_lease_revoke(&alice, &[b"app/a".to_vec(), b"app/b".to_vec()])
        .unwrap();
    let leases = |id: i64| {
        if id == 1 {
            vec![b"app/z".to_vec()]
        } else {
            vec![]
        }
    };
    fx.store
        .check_put_with_leases(&alice, &Put::new("app/a", "v", 1), &leases)
        .unwrap();
    fx.store
        .check_lease_time_to_live(&alice, &[b"app/a".to_vec()])
        .unwrap();
}

#[test]
fn revoked_permission_mid_session() {
    let fx = Fx::new();
    let token = fx.token("alice");
    let info = fx.store.user_from_token(&token).unwrap().unwrap();
    fx.store
        .check_put(&info, &Put::new("app/a", "v", 0))
        .unwrap();
    fx.store
        .apply(&AuthCommand::RoleRevokePermission {
            role: "app".into(),
            key: b"app/".to_vec(),
            range_end: b"app0".to_vec(),
        })
        .unwrap();
    // Credentials read before the change: the revision moved.
    assert!(matches!(
        fx.store.check_put(&info, &Put::new("app/a", "v", 0)),
        Err(AuthError::AuthOldRevision)
    ));
    // The same simple token read again carries the new revision: plainly denied.
    let info = fx.store.user_from_token(&token).unwrap().unwrap();
    assert!(matches!(
        fx.store.check_put(&info, &Put::new("app/a", "v", 0)),
        Err(AuthError::PermissionDenied)
    ));
}

#[test]
fn simple_token_lifecycle() {
    let fx = Fx::new();
    let token = fx.token("alice");
    let (prefix, index) = token.split_once('.').unwrap();
    assert_eq!(prefix.len(), 16);
    assert!(index.parse::<u64>().is_ok());
    // Refreshed on use: 4 uses 200 s apart keep it alive past 300 s.
    for _ in 0..4 {
        fx.clock.advance(Duration::from_secs(200));
        let info = fx.store.user_from_token(&token).unwrap().unwrap();
        assert_eq!(info.user, "alice");
        assert_eq!(info.revision, fx.store.revision());
    }
    // Idle for more than the TTL: gone.
    fx.clock.advance(Duration::from_secs(301));
    assert!(matches!(
        fx.store.user_from_token(&token),
        Err(AuthError::InvalidAuthToken)
    ));
    // Deleted user: its tokens die, other users' tokens live.
    let a = fx.token("alice");
    let b = fx.token("bob");
    fx.store
        .apply(&AuthCommand::UserDelete {
            name: "alice".into(),
        })
        .unwrap();
    assert!(matches!(
        fx.store.user_from_token(&a),
        Err(AuthError::InvalidAuthToken)
    ));
    assert_eq!(fx.store.user_from_token(&b).unwrap().unwrap().user, "bob");
    // Purge drops expired tokens.
    fx.clock.advance(Duration::from_secs(301));
    assert!(fx.store.purge_expired_tokens() >= 1);
    assert_eq!(fx.store.simple_token_count(), 0);
}

#[test]
fn raft_style_authentication_is_deterministic() {
    // The API layer checks the password and picks the prefix; every member applies the same
    // (name, prefix, index) and registers the same token.
    let a = Fx::new();
    let b = Fx::new();
    a.store.check_password("alice", "alicepw").unwrap();
    let prefix = a.store.gen_token_prefix();
    let ta = a.store.assign_token("alice", &prefix, 42).unwrap();
    let tb = b.store.assign_token("alice", &prefix, 42).unwrap();
    assert_eq!(ta, tb);
    assert_eq!(ta, format!("{prefix}.42"));
    assert_eq!(b.store.user_from_token(&ta).unwrap().unwrap().user, "alice");
    assert!(matches!(
        a.store.assign_token("nopw", &prefix, 43),
        Err(AuthError::AuthFailed)
    ));
}

#[test]
fn management_semantics_follow_etcd() {
    let fx = Fx::new();
    let rev = fx.store.revision();
    // Granting a role already granted is accepted and changes nothing.
    let r = fx.store.apply(&grant("alice", "app")).unwrap();
    assert!(!r.changed);
    assert_eq!(r.revision, rev);
    // Enabling when enabled: no-op.
    assert!(!fx.store.apply(&AuthCommand::AuthEnable).unwrap().changed);
    // Roles stay sorted; `root` can be granted without a root role record.
    apply_all(
        &fx.store,
        &[
            role_add("b"),
            role_add("a"),
            grant("carol", "b"),
            grant("carol", "a"),
        ],
    );
    assert_eq!(fx.store.user_get("carol").unwrap().roles, ["a", "b"]);
    // Deleting a role removes it from every user.
    fx.store
        .apply(&AuthCommand::RoleDelete { role: "b".into() })
        .unwrap();
    assert_eq!(fx.store.user_get("carol").unwrap().roles, ["a"]);
    assert_eq!(fx.store.revision(), rev + 5);
    // Lists are sorted.
    assert_eq!(
        fx.store.user_list(),
        ["alice", "bob", "carol", "dave", "nopw", "root"]
    );
    assert_eq!(fx.store.role_list(), ["a", "app", "reader", "writer"]);
    // Permissions are kept sorted by key.
    fx.store
        .apply(&perm(
            "reader",
            Permission::new(PermissionType::Read, "a", ""),
        ))
        .unwrap();
    let keys: Vec<Vec<u8>> = fx
        .store
        .role_get("reader")
        .unwrap()
        .permissions
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, [b"a".to_vec(), b"cfg".to_vec(), b"r/".to_vec()]);
    // AuthEnable does not bump the revision (etcd); AuthDisable does.
    let rev = fx.store.revision();
    fx.store.apply(&AuthCommand::AuthDisable).unwrap();
    assert_eq!(fx.store.revision(), rev + 1);
    fx.store.apply(&AuthCommand::AuthEnable).unwrap();
    assert_eq!(fx.store.revision(), rev + 1);
    // While disabled, root may be deleted (etcd only protects it while enabled).
    fx.store.apply(&AuthCommand::AuthDisable).unwrap();
    fx.store
        .apply(&AuthCommand::UserRevokeRole {
            name: "root".into(),
            role: "root".into(),
        })
        .unwrap();
    fx.store
        .apply(&AuthCommand::UserDelete {
            name: "root".into(),
        })
        .unwrap();
}

#[test]
fn password_change_takes_effect() {
    let fx = Fx::new();
    fx.store
        .apply(&AuthCommand::UserChangePassword {
            name: "alice".into(),
            hash: hash("newpw"),
        })
        .unwrap();
    assert!(matches!(
        fx.store.authenticate("alice", "alicepw"),
        Err(AuthError::AuthFailed)
    ));
    fx.store.authenticate("alice", "newpw").unwrap();
}

#[test]
fn fresh_store_starts_at_revision_one_and_every_change_bumps_it() {
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let store = AuthStore::open(be, AuthConfig::default()).unwrap();
    assert_eq!(
        store.status(),
        AuthStatus {
            enabled: false,
            revision: 1
        }
    );
    let cmds = setup_commands();
    let mut expected = 1;
    for c in &cmds {
        let r = store.apply(c).unwrap();
        if *c != AuthCommand::AuthEnable {
            expected += 1;
        }
        assert_eq!(r.revision, expected, "{c:?}");
    }
    assert!(store.is_enabled());
}

#[test]
fn a_failed_write_changes_nothing() {
    let inner = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let be = FaultyBackend::wrap(inner);
    let store = AuthStore::open(be.clone(), AuthConfig::default()).unwrap();
    apply_all(&store, &setup_commands());
    let before = (
        dump(&*be),
        store.status(),
        store.user_list(),
        store.role_list(),
    );
    be.plan().fail_nth(FaultOp::Write, 1, FaultKind::Before);
    let err = store
        .apply(&AuthCommand::RoleDelete { role: "app".into() })
        .unwrap_err();
    assert!(matches!(err, AuthError::Storage(_)));
    assert_eq!(err.grpc_code(), grpc_code::INTERNAL);
    let after = (
        dump(&*be),
        store.status(),
        store.user_list(),
        store.role_list(),
    );
    assert_eq!(before, after);
    // Memory still says alice holds app.
    assert!(store.has_role("alice", "app"));
    // The role delete is one batch: users' role lists and the role record together.
    store
        .apply(&AuthCommand::RoleDelete { role: "app".into() })
        .unwrap();
    assert!(!store.has_role("alice", "app"));
}

#[test]
fn same_commands_same_bytes() {
    let a = Fx::new();
    let b = Fx::new();
    assert_eq!(a.fingerprint().0, b.fingerprint().0);
    // Commands survive their wire encoding.
    for c in setup_commands() {
        assert_eq!(AuthCommand::decode(&c.encode().unwrap()).unwrap(), c);
    }
}

#[test]
fn bcrypt_cost_out_of_range_falls_back_to_default() {
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let store = AuthStore::open(
        be,
        AuthConfig {
            bcrypt_cost: 99,
            ..AuthConfig::default()
        },
    )
    .unwrap();
    assert_eq!(store.bcrypt_cost(), DEFAULT_BCRYPT_COST);
    assert!(hash_password("x", 3).is_err());
    let h = hash_password("pw", 4).unwrap();
    assert!(h.starts_with("$2"));
    assert!(verify_password("pw", &h));
    assert!(!verify_password("px", &h));
    assert!(!verify_password("pw", "not a hash"));
}

#[test]
fn nop_token_provider_issues_nothing() {
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let store = AuthStore::open(
        be,
        AuthConfig {
            bcrypt_cost: COST,
            token: TokenProvider::from_options("", Duration::ZERO).unwrap(),
            clock: Arc::new(SystemClock),
        },
    )
    .unwrap();
    apply_all(&store, &setup_commands());
    assert!(matches!(
        store.authenticate("root", "rootpw"),
        Err(AuthError::AuthFailed)
    ));
    assert!(matches!(
        store.user_from_token("x.1"),
        Err(AuthError::InvalidAuthToken)
    ));
}

#[test]
fn error_codes_match_etcd_rpctypes() {
    use AuthError::*;
    let table: [(AuthError, i32, &str); 17] = [
        (RootUserNotExist, 9, "etcdserver: root user does not exist"),
        (
            RootRoleNotExist,
            9,
            "etcdserver: root user does not have root role",
        ),
        (UserAlreadyExist, 9, "etcdserver: user name already exists"),
        (UserEmpty, 3, "etcdserver: user name is empty"),
        (UserNotFound, 9, "etcdserver: user name not found"),
        (RoleAlreadyExist, 9, "etcdserver: role name already exists"),
        (RoleNotFound, 9, "etcdserver: role name not found"),
        (RoleEmpty, 3, "etcdserver: role name is empty"),
        (
            AuthFailed,
            3,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
        (PermissionNotGiven, 3, "etcdserver: permission not given"),
        (PermissionDenied, 7, "etcdserver: permission denied"),
        (
            RoleNotGranted,
            9,
            "etcdserver: role is not granted to the user",
        ),
        (
            PermissionNotGranted,
            9,
            "etcdserver: permission is not granted to the role",
        ),
        (
            AuthNotEnabled,
            9,
            "etcdserver: authentication is not enabled",
        ),
        (InvalidAuthToken, 16, "etcdserver: invalid auth token"),
        (InvalidAuthMgmt, 3, "etcdserver: invalid auth management"),
        (
            AuthOldRevision,
            3,
            "etcdserver: revision of auth store is old",
        ),
    ];
    for (e, code, msg) in table {
        assert_eq!(e.grpc_code(), code, "{msg}");
        assert_eq!(e.to_string(), msg);
    }
}

#[test]
fn extra_rows_share_the_command_batch() {
    use storage_api::{Tree, WriteBatch};
    let inner = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let be = FaultyBackend::wrap(inner);
    let store = AuthStore::open(be.clone(), AuthConfig::default()).unwrap();
    let mut extra = WriteBatch::new();
    extra.put(Tree::Meta, b"applied".to_vec(), 7u64.to_be_bytes().to_vec());
    store
        .apply_with_batch(&role_add("a"), extra.clone())
        .unwrap();
    assert!(be.get(Tree::Meta, b"applied").unwrap().is_some());
    // A failed write loses both the command and the extra rows.
    let mut extra = WriteBatch::new();
    extra.put(
        Tree::Meta,
        b"applied2".to_vec(),
        8u64.to_be_bytes().to_vec(),
    );
    be.plan().fail_nth(FaultOp::Write, 1, FaultKind::Before);
    assert!(store.apply_with_batch(&role_add("b"), extra).is_err());
    assert!(be.get(Tree::Meta, b"applied2").unwrap().is_none());
    assert!(store.role_get("b").is_err());
}
