//! The denial table: every attempt is refused with etcd's exact message and gRPC code, and
//! leaves the auth state (every record of `Tree::Auth`, enabled flag, revision) exactly as it
//! was, without dropping a live token. The table is reproduced in the crate README.

mod common;

use std::time::Duration;

use common::*;
use mvcc_core::request::{Compaction, DeleteRange, Put, Range, RequestOp, Txn};
use mvcc_core::txn::{Compare, CompareOp, TxnOp, TxnRequest};
use rusd_auth::*;

type Setup = fn(&Fx);
type Attempt = fn(&Fx) -> Result<(), AuthError>;

struct Case {
    name: &'static str,
    setup: Setup,
    attempt: Attempt,
    message: &'static str,
    code: i32,
}

const EMPTY: &str = "etcdserver: user name is empty";
const DENIED: &str = "etcdserver: permission denied";
const FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
const MGMT: &str = "etcdserver: invalid auth management";
const OLD: &str = "etcdserver: revision of auth store is old";
const USER_NOT_FOUND: &str = "etcdserver: user name not found";
const ROLE_NOT_FOUND: &str = "etcdserver: role name not found";

const INVALID_ARGUMENT: i32 = 3;
const PERMISSION_DENIED: i32 = 7;
const FAILED_PRECONDITION: i32 = 9;
const UNAUTHENTICATED: i32 = 16;
const UNKNOWN: i32 = 2;

fn none(_: &Fx) {}

fn put(k: &str) -> Put {
    Put::new(k, "v", 0)
}

fn put_prev(k: &str) -> Put {
    let mut p = Put::new(k, "v", 0);
    p.prev_kv = true;
    p
}

fn del_prev(k: &str, end: &str) -> DeleteRange {
    let mut d = DeleteRange::new(k, end);
    d.prev_kv = true;
    d
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Txn {
    Txn {
        compare,
        success,
        failure,
    }
}

fn save_info(fx: &Fx, user: &str) {
    *fx.saved.lock() = Some(fx.info(user));
}

fn saved(fx: &Fx) -> AuthInfo {
    fx.saved.lock().clone().unwrap_or_default()
}

fn save_token(fx: &Fx, user: &str) {
    *fx.saved_token.lock() = Some(fx.token(user));
}

fn token_lookup(fx: &Fx) -> Result<(), AuthError> {
    let t = fx.saved_token.lock().clone().unwrap_or_default();
    fx.store.user_from_token(&t).map(|_| ())
}

fn cases() -> Vec<Case> {
    vec![
        // --- credentials and tokens ---
        Case {
            name: "range without credentials",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_range(&AuthInfo::default(), &Range::new("app/a", ""))
            },
            message: EMPTY,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "put without credentials",
            setup: none,
            attempt: |fx| fx.store.check_put(&AuthInfo::default(), &put("app/a")),
            message: EMPTY,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "txn without credentials",
            setup: none,
            attempt: |fx| fx.store.check_txn(&AuthInfo::default(), &Txn::default()),
            message: "ok",
            code: 0,
        },
        Case {
            name: "admin request without credentials",
            setup: none,
            attempt: |fx| fx.store.check_admin(&AuthInfo::default()),
            message: EMPTY,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "wrong password",
            setup: none,
            attempt: |fx| fx.store.authenticate("alice", "nope").map(|_| ()),
            message: FAILED,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "unknown user authenticates",
            setup: none,
            attempt: |fx| fx.store.authenticate("mallory", "x").map(|_| ()),
            message: FAILED,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "empty password for a password user",
            setup: none,
            attempt: |fx| fx.store.authenticate("alice", "").map(|_| ()),
            message: FAILED,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "password given for a no-password user",
            setup: none,
            attempt: |fx| fx.store.authenticate("nopw", "x").map(|_| ()),
            message: "auth: authentication failed, password was given for no password user",
            code: UNKNOWN,
        },
        Case {
            name: "authenticate while auth is disabled",
            setup: |fx| {
                fx.store.apply(&AuthCommand::AuthDisable).unwrap();
            },
            attempt: |fx| fx.store.authenticate("root", "rootpw").map(|_| ()),
            message: "etcdserver: authentication is not enabled",
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "garbage token",
            setup: none,
            attempt: |fx| fx.store.user_from_token("not-a-token").map(|_| ()),
            message: INVALID_TOKEN,
            code: UNAUTHENTICATED,
        },
        Case {
            name: "well-formed but unknown simple token",
            setup: none,
            attempt: |fx| fx.store.user_from_token("abcdefghijklmnop.7").map(|_| ()),
            message: INVALID_TOKEN,
            code: UNAUTHENTICATED,
        },
        Case {
            name: "expired simple token",
            setup: |fx| {
                save_token(fx, "alice");
                fx.clock.advance(Duration::from_secs(301));
                fx.store.purge_expired_tokens();
            },
            attempt: token_lookup,
            message: INVALID_TOKEN,
            code: UNAUTHENTICATED,
        },
        Case {
            name: "token of a deleted user",
            setup: |fx| {
                save_token(fx, "alice");
                fx.store
                    .apply(&AuthCommand::UserDelete {
                        name: "alice".into(),
                    })
                    .unwrap();
            },
            attempt: token_lookup,
            message: INVALID_TOKEN,
            code: UNAUTHENTICATED,
        },
        Case {
            name: "token issued before a password change",
            setup: |fx| {
                save_token(fx, "alice");
                fx.store
                    .apply(&AuthCommand::UserChangePassword {
                        name: "alice".into(),
                        hash: hash("new"),
                    })
                    .unwrap();
            },
            attempt: token_lookup,
            message: INVALID_TOKEN,
            code: UNAUTHENTICATED,
        },
        Case {
            name: "token issued before auth disable and re-enable",
            setup: |fx| {
                save_token(fx, "alice");
                fx.store.apply(&AuthCommand::AuthDisable).unwrap();
                fx.store.apply(&AuthCommand::AuthEnable).unwrap();
            },
            attempt: token_lookup,
            message: INVALID_TOKEN,
            code: UNAUTHENTICATED,
        },
        Case {
            name: "credentials older than an auth change (put)",
            setup: |fx| {
                save_info(fx, "alice");
                fx.store.apply(&role_add("unrelated")).unwrap();
            },
            attempt: |fx| fx.store.check_put(&saved(fx), &put("app/a")),
            message: OLD,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "credentials older than an auth change (range)",
            setup: |fx| {
                save_info(fx, "alice");
                fx.store.apply(&role_add("unrelated")).unwrap();
            },
            attempt: |fx| fx.store.check_range(&saved(fx), &Range::new("app/a", "")),
            message: OLD,
            code: INVALID_ARGUMENT,
        },
        // --- key permissions ---
        Case {
            name: "range outside the prefix grant",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_range(&fx.info("alice"), &Range::new("other", ""))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "range starting inside and ending outside the grant",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_range(&fx.info("alice"), &Range::new("app/", "b"))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "open-ended range from inside the grant",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_range(&fx.info("alice"), &Range::new("app/", vec![0]))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "range over every key",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_range(&fx.info("alice"), &Range::new(vec![0], vec![0]))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "put outside the grant",
            setup: none,
            attempt: |fx| fx.store.check_put(&fx.info("alice"), &put("zzz")),
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "put on the prefix without its slash",
            setup: none,
            attempt: |fx| fx.store.check_put(&fx.info("alice"), &put("app")),
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "delete-range outside the grant",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_delete_range(&fx.info("alice"), &DeleteRange::new("x", "y"))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "delete-range spanning past the grant",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_delete_range(&fx.info("alice"), &DeleteRange::new("app/", "app1"))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "read-only user puts",
            setup: none,
            attempt: |fx| fx.store.check_put(&fx.info("bob"), &put("cfg")),
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "single-key read grant does not cover a range",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_range(&fx.info("bob"), &Range::new("cfg", "cfh"))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "write-only user puts with prev_kv",
            setup: none,
            attempt: |fx| fx.store.check_put(&fx.info("dave"), &put_prev("w/x")),
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "write-only user deletes with prev_kv",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_delete_range(&fx.info("dave"), &del_prev("w/", "w0"))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "write-only user reads",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_range(&fx.info("dave"), &Range::new("w/x", ""))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "user without roles reads",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_range(&fx.info("carol"), &Range::new("app/a", ""))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "unknown user at the current revision (certificate CN)",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_range(&fx.raw("ghost"), &Range::new("app/a", ""))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "watch on a forbidden range",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_watch(&fx.info("alice"), b"secret/", b"secret0")
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        // --- transactions ---
        Case {
            name: "txn compare on a key outside the grant",
            setup: none,
            attempt: |fx| {
                let t = txn(
                    vec![Compare::version("secret", CompareOp::Equal, 0)],
                    vec![RequestOp::Put(put("app/a"))],
                    vec![],
                );
                fx.store.check_txn(&fx.info("alice"), &t)
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "txn success branch writes outside the grant",
            setup: none,
            attempt: |fx| {
                let t = txn(vec![], vec![RequestOp::Put(put("zzz"))], vec![]);
                fx.store.check_txn(&fx.info("alice"), &t)
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "txn failure branch writes outside the grant (compare would pick success)",
            setup: none,
            attempt: |fx| {
                let t = txn(
                    vec![Compare::version("app/a", CompareOp::Equal, 0)],
                    vec![RequestOp::Put(put("app/a"))],
                    vec![RequestOp::Put(put("outside"))],
                );
                fx.store.check_txn(&fx.info("alice"), &t)
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "txn success branch reads outside the grant",
            setup: none,
            attempt: |fx| {
                let t = txn(
                    vec![],
                    vec![RequestOp::Range(Range::new("secret", ""))],
                    vec![],
                );
                fx.store.check_txn(&fx.info("alice"), &t)
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "nested txn failure branch deletes outside the grant",
            setup: none,
            attempt: |fx| {
                let inner = txn(
                    vec![],
                    vec![RequestOp::Put(put("app/b"))],
                    vec![RequestOp::DeleteRange(DeleteRange::new("a", "z"))],
                );
                let t = txn(vec![], vec![RequestOp::Txn(inner)], vec![]);
                fx.store.check_txn(&fx.info("alice"), &t)
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "nested txn compare outside the grant",
            setup: none,
            attempt: |fx| {
                let inner = txn(
                    vec![Compare::value("secret", CompareOp::Equal, "x")],
                    vec![],
                    vec![],
                );
                let t = txn(vec![], vec![], vec![RequestOp::Txn(inner)]);
                fx.store.check_txn(&fx.info("alice"), &t)
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "txn delete with prev_kv by a write-only user",
            setup: none,
            attempt: |fx| {
                let t = txn(
                    vec![],
                    vec![RequestOp::DeleteRange(del_prev("w/a", ""))],
                    vec![],
                );
                fx.store.check_txn(&fx.info("dave"), &t)
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "TxnRequest form: nested failure put outside the grant",
            setup: none,
            attempt: |fx| {
                let t = TxnRequest {
                    compare: vec![],
                    success: vec![TxnOp::txn(
                        vec![],
                        vec![],
                        vec![TxnOp::put("outside", "v", 0)],
                    )],
                    failure: vec![],
                };
                fx.store.check_txn_request(&fx.info("alice"), &t, &NoLeases)
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        // --- leases ---
        Case {
            name: "lease revoke that would delete a key outside the grant",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_lease_revoke(&fx.info("alice"), &[b"app/a".to_vec(), b"other".to_vec()])
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "put attaching a lease that holds a foreign key",
            setup: none,
            attempt: |fx| {
                let leases = |id: i64| {
                    if id == 7 {
                        vec![b"secret".to_vec()]
                    } else {
                        vec![]
                    }
                };
                fx.store.check_put_with_leases(
                    &fx.info("alice"),
                    &Put::new("app/a", "v", 7),
                    &leases,
                )
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "lease time-to-live with keys the user cannot read",
            setup: none,
            attempt: |fx| {
                fx.store
                    .check_lease_time_to_live(&fx.info("bob"), &[b"app/a".to_vec()])
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        // --- admin ---
        Case {
            name: "non-root user asks for an admin operation",
            setup: none,
            attempt: |fx| fx.store.check_admin(&fx.info("alice")),
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "unknown user asks for an admin operation",
            setup: none,
            attempt: |fx| fx.store.check_admin(&fx.raw("ghost")),
            message: USER_NOT_FOUND,
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "non-root user compacts",
            setup: none,
            attempt: |fx| {
                fx.store.check_compaction(
                    &fx.info("alice"),
                    &Compaction {
                        revision: 1,
                        physical: false,
                    },
                )
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "non-root user reads another user",
            setup: none,
            attempt: |fx| fx.store.check_user_get(&fx.info("alice"), "bob"),
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "non-root user reads a role it does not hold",
            setup: none,
            attempt: |fx| fx.store.check_role_get(&fx.info("alice"), "reader"),
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        // --- mid-session changes ---
        Case {
            name: "permission revoked mid-session",
            setup: |fx| {
                save_token(fx, "alice");
                fx.store
                    .apply(&AuthCommand::RoleRevokePermission {
                        role: "app".into(),
                        key: b"app/".to_vec(),
                        range_end: b"app0".to_vec(),
                    })
                    .unwrap();
            },
            attempt: |fx| {
                let t = fx.saved_token.lock().clone().unwrap_or_default();
                let info = fx.store.user_from_token(&t)?.unwrap_or_default();
                fx.store.check_put(&info, &put("app/a"))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "role revoked from the user mid-session",
            setup: |fx| {
                save_token(fx, "alice");
                fx.store
                    .apply(&AuthCommand::UserRevokeRole {
                        name: "alice".into(),
                        role: "app".into(),
                    })
                    .unwrap();
            },
            attempt: |fx| {
                let t = fx.saved_token.lock().clone().unwrap_or_default();
                let info = fx.store.user_from_token(&t)?.unwrap_or_default();
                fx.store.check_range(&info, &Range::new("app/a", ""))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        Case {
            name: "role deleted mid-session",
            setup: |fx| {
                save_token(fx, "alice");
                fx.store
                    .apply(&AuthCommand::RoleDelete { role: "app".into() })
                    .unwrap();
            },
            attempt: |fx| {
                let t = fx.saved_token.lock().clone().unwrap_or_default();
                let info = fx.store.user_from_token(&t)?.unwrap_or_default();
                fx.store.check_range(&info, &Range::new("app/a", ""))
            },
            message: DENIED,
            code: PERMISSION_DENIED,
        },
        // --- auth management ---
        Case {
            name: "add an existing user",
            setup: none,
            attempt: |fx| fx.store.apply(&user_add("alice", "x")).map(|_| ()),
            message: "etcdserver: user name already exists",
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "add a user with an empty name",
            setup: none,
            attempt: |fx| fx.store.apply(&user_add("", "x")).map(|_| ()),
            message: EMPTY,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "add an existing role",
            setup: none,
            attempt: |fx| fx.store.apply(&role_add("app")).map(|_| ()),
            message: "etcdserver: role name already exists",
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "add a role with an empty name",
            setup: none,
            attempt: |fx| fx.store.apply(&role_add("")).map(|_| ()),
            message: "etcdserver: role name is empty",
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "grant a role that does not exist",
            setup: none,
            attempt: |fx| fx.store.apply(&grant("alice", "nope")).map(|_| ()),
            message: ROLE_NOT_FOUND,
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "grant a role to a user that does not exist",
            setup: none,
            attempt: |fx| fx.store.apply(&grant("ghost", "app")).map(|_| ()),
            message: USER_NOT_FOUND,
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "revoke a role that is not granted",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&AuthCommand::UserRevokeRole {
                        name: "alice".into(),
                        role: "reader".into(),
                    })
                    .map(|_| ())
            },
            message: "etcdserver: role is not granted to the user",
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "revoke a permission that is not granted",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&AuthCommand::RoleRevokePermission {
                        role: "app".into(),
                        key: b"app/".to_vec(),
                        range_end: Vec::new(),
                    })
                    .map(|_| ())
            },
            message: "etcdserver: permission is not granted to the role",
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "revoke a permission of a role that does not exist",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&AuthCommand::RoleRevokePermission {
                        role: "nope".into(),
                        key: b"a".to_vec(),
                        range_end: Vec::new(),
                    })
                    .map(|_| ())
            },
            message: ROLE_NOT_FOUND,
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "grant a permission with range end before key",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&perm(
                        "app",
                        Permission::new(PermissionType::Read, "b", "a"),
                    ))
                    .map(|_| ())
            },
            message: MGMT,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "grant a permission with an empty key",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&perm("app", Permission::new(PermissionType::Read, "", "z")))
                    .map(|_| ())
            },
            message: MGMT,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "grant a permission to a role that does not exist",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&perm(
                        "nope",
                        Permission::new(PermissionType::Read, "a", ""),
                    ))
                    .map(|_| ())
            },
            message: ROLE_NOT_FOUND,
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "delete the root user while auth is enabled",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&AuthCommand::UserDelete {
                        name: "root".into(),
                    })
                    .map(|_| ())
            },
            message: MGMT,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "delete the root role while auth is enabled",
            setup: |fx| {
                fx.store.apply(&role_add("root")).unwrap();
            },
            attempt: |fx| {
                fx.store
                    .apply(&AuthCommand::RoleDelete {
                        role: "root".into(),
                    })
                    .map(|_| ())
            },
            message: MGMT,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "revoke the root role from root while auth is enabled",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&AuthCommand::UserRevokeRole {
                        name: "root".into(),
                        role: "root".into(),
                    })
                    .map(|_| ())
            },
            message: MGMT,
            code: INVALID_ARGUMENT,
        },
        Case {
            name: "delete a user that does not exist",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&AuthCommand::UserDelete {
                        name: "ghost".into(),
                    })
                    .map(|_| ())
            },
            message: USER_NOT_FOUND,
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "change the password of a user that does not exist",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&AuthCommand::UserChangePassword {
                        name: "ghost".into(),
                        hash: hash("x"),
                    })
                    .map(|_| ())
            },
            message: USER_NOT_FOUND,
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "delete a role that does not exist",
            setup: none,
            attempt: |fx| {
                fx.store
                    .apply(&AuthCommand::RoleDelete {
                        role: "nope".into(),
                    })
                    .map(|_| ())
            },
            message: ROLE_NOT_FOUND,
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "enable auth without a root user",
            setup: |fx| {
                fx.store.apply(&AuthCommand::AuthDisable).unwrap();
                fx.store
                    .apply(&AuthCommand::UserDelete {
                        name: "root".into(),
                    })
                    .unwrap();
            },
            attempt: |fx| fx.store.apply(&AuthCommand::AuthEnable).map(|_| ()),
            message: "etcdserver: root user does not exist",
            code: FAILED_PRECONDITION,
        },
        Case {
            name: "enable auth while root lacks the root role",
            setup: |fx| {
                fx.store.apply(&AuthCommand::AuthDisable).unwrap();
                fx.store
                    .apply(&AuthCommand::UserRevokeRole {
                        name: "root".into(),
                        role: "root".into(),
                    })
                    .unwrap();
            },
            attempt: |fx| fx.store.apply(&AuthCommand::AuthEnable).map(|_| ()),
            message: "etcdserver: root user does not have root role",
            code: FAILED_PRECONDITION,
        },
    ]
}

#[test]
fn denial_table() {
    let cases: Vec<Case> = cases().into_iter().filter(|c| c.code != 0).collect();
    assert!(cases.len() >= 40, "only {} denial cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let fx = Fx::new();
        (case.setup)(&fx);
        let before = fx.fingerprint();
        let result = (case.attempt)(&fx);
        let after = fx.fingerprint();
        match result {
            Ok(()) => failures.push(format!("{}: was allowed", case.name)),
            Err(e) => {
                if e.to_string() != case.message || e.grpc_code() != case.code {
                    failures.push(format!(
                        "{}: got {:?} ({}), want {:?} ({})",
                        case.name,
                        e.to_string(),
                        e.grpc_code(),
                        case.message,
                        case.code
                    ));
                }
            }
        }
        // Checks issue tokens for their credentials; those tokens are the only thing an
        // attempt may add. Compare the persistent state and status exactly, and the token
        // count up to the tokens the attempt itself issued.
        if before.0 != after.0 || before.1 != after.1 {
            failures.push(format!("{}: the auth state changed", case.name));
        }
        if after.2 < before.2 {
            failures.push(format!("{}: live tokens were dropped", case.name));
        }
    }
    println!("{} denial cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn empty_txn_needs_no_permission() {
    // etcd checks nothing for a txn with no compare and no op.
    let fx = Fx::new();
    let c = cases().into_iter().find(|c| c.code == 0).unwrap();
    assert!((c.attempt)(&fx).is_ok());
}
