//! Shared fixture of the integration tests: a store with etcd-like users and roles, auth
//! enabled, simple tokens on a manual clock, bcrypt cost 4.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use rusd_auth::*;
use storage_api::{Backend, BackendConfig, MemoryBackend, Tree};

/// bcrypt's minimum cost: tests stay fast.
pub const COST: u32 = 4;

pub fn hash(pw: &str) -> String {
    static CACHE: OnceLock<Mutex<std::collections::HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock();
    c.entry(pw.to_owned())
        .or_insert_with(|| hash_password(pw, COST).unwrap())
        .clone()
}

pub fn user_add(name: &str, pw: &str) -> AuthCommand {
    AuthCommand::UserAdd {
        name: name.into(),
        password_hash: Some(hash(pw)),
        no_password: false,
    }
}

pub fn grant(user: &str, role: &str) -> AuthCommand {
    AuthCommand::UserGrantRole {
        user: user.into(),
        role: role.into(),
    }
}

pub fn role_add(name: &str) -> AuthCommand {
    AuthCommand::RoleAdd { name: name.into() }
}

pub fn perm(role: &str, p: Permission) -> AuthCommand {
    AuthCommand::RoleGrantPermission {
        name: role.into(),
        perm: p,
    }
}

/// The commands that build the fixture's users and roles (before `AuthEnable`):
///
/// * `root` (password `rootpw`) with role `root`;
/// * `alice` (`alicepw`) with role `app`: READWRITE on prefix `app/`;
/// * `bob` (`bobpw`) with role `reader`: READ on key `cfg` and on range `[r/, r0)`;
/// * `dave` (`davepw`) with role `writer`: WRITE on prefix `w/`;
/// * `carol` (`carolpw`) with no role;
/// * `nopw`, a no-password user with role `app`.
pub fn setup_commands() -> Vec<AuthCommand> {
    vec![
        user_add("root", "rootpw"),
        grant("root", "root"),
        role_add("app"),
        perm("app", Permission::prefix(PermissionType::ReadWrite, "app/")),
        user_add("alice", "alicepw"),
        grant("alice", "app"),
        role_add("reader"),
        perm("reader", Permission::new(PermissionType::Read, "cfg", "")),
        perm("reader", Permission::new(PermissionType::Read, "r/", "r0")),
        user_add("bob", "bobpw"),
        grant("bob", "reader"),
        role_add("writer"),
        perm("writer", Permission::prefix(PermissionType::Write, "w/")),
        user_add("dave", "davepw"),
        grant("dave", "writer"),
        user_add("carol", "carolpw"),
        AuthCommand::UserAdd {
            name: "nopw".into(),
            password_hash: None,
            no_password: true,
        },
        grant("nopw", "app"),
        AuthCommand::AuthEnable,
    ]
}

pub fn apply_all<B: Backend>(store: &AuthStore<B>, cmds: &[AuthCommand]) {
    for c in cmds {
        store.apply(c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

/// Every record of the auth tree.
pub type TreeDump = Vec<(Vec<u8>, Vec<u8>)>;
/// The auth tree, the status and the number of live simple tokens.
pub type Fingerprint = (TreeDump, AuthStatus, usize);

pub struct Fx {
    pub store: AuthStore<MemoryBackend>,
    pub clock: Arc<ManualClock>,
    /// Anything a case's setup wants to hand to its attempt.
    pub saved: Mutex<Option<AuthInfo>>,
    pub saved_token: Mutex<Option<String>>,
}

impl Fx {
    pub fn new() -> Fx {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_700_000_000)));
        let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
        let store = AuthStore::open(
            be,
            AuthConfig {
                bcrypt_cost: COST,
                token: TokenProvider::Simple {
                    ttl: Duration::from_secs(300),
                },
                clock: clock.clone(),
            },
        )
        .unwrap();
        apply_all(&store, &setup_commands());
        Fx {
            store,
            clock,
            saved: Mutex::new(None),
            saved_token: Mutex::new(None),
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.store
            .authenticate(user, &format!("{user}pw"))
            .unwrap_or_else(|e| panic!("authenticate {user}: {e}"))
    }

    /// The credentials of `user` through a real token.
    pub fn info(&self, user: &str) -> AuthInfo {
        let t = self.token(user);
        self.store.user_from_token(&t).unwrap().unwrap()
    }

    /// Credentials of an arbitrary name at the current revision (as a TLS common name).
    pub fn raw(&self, user: &str) -> AuthInfo {
        AuthInfo {
            user: user.into(),
            revision: self.store.revision(),
        }
    }

    /// Everything persistent plus status and the live token count.
    pub fn fingerprint(&self) -> Fingerprint {
        let tree = self
            .store
            .backend()
            .scan(Tree::Auth, &[], &[], usize::MAX)
            .unwrap();
        (tree, self.store.status(), self.store.simple_token_count())
    }
}

pub fn dump<B: Backend>(be: &B) -> TreeDump {
    be.scan(Tree::Auth, &[], &[], usize::MAX).unwrap()
}
