//! [`AuthStore`]: the auth state over a `storage_api::Backend` (etcd `auth/store.go`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use storage_api::{Backend, Tree, WriteBatch};

use crate::clock::{Clock, SystemClock};
use crate::command::{AuthCommand, AuthResponse};
use crate::error::{AuthError, AuthResult};
use crate::model::{AuthInfo, AuthStatus, Role, User, UserOptions, ROOT_ROLE, ROOT_USER};
use crate::perm_cache::{is_valid_permission_range, UnifiedPerms};
use crate::persist;
use crate::token::{gen_simple_token_prefix, TokenProvider, TokenState};

/// bcrypt's minimum cost (Go `bcrypt.MinCost`).
pub const MIN_BCRYPT_COST: u32 = 4;
/// bcrypt's maximum cost (Go `bcrypt.MaxCost`).
pub const MAX_BCRYPT_COST: u32 = 31;
/// etcd's `--bcrypt-cost` default (Go `bcrypt.DefaultCost`).
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// Hashes a password with bcrypt at `cost` (what the API layer does before proposing
/// [`AuthCommand::UserAdd`] / [`AuthCommand::UserChangePassword`]).
pub fn hash_password(password: &str, cost: u32) -> AuthResult<String> {
    bcrypt::hash(password, cost).map_err(|e| AuthError::Hash(e.to_string()))
}

/// True when `password` matches the bcrypt `hash` (a malformed hash never matches).
pub fn verify_password(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// Configuration of an [`AuthStore`].
#[derive(Debug)]
pub struct AuthConfig {
    /// `--bcrypt-cost`; outside 4..=31 the default 10 is used, as etcd does.
    pub bcrypt_cost: u32,
    /// The token provider (`--auth-token`, `--auth-token-ttl`).
    pub token: TokenProvider,
    /// The clock of token expiry.
    pub clock: Arc<dyn Clock>,
}

impl Default for AuthConfig {
    /// etcd's defaults: bcrypt cost 10, simple tokens with a 300 s TTL, the system clock.
    fn default() -> Self {
        AuthConfig {
            bcrypt_cost: DEFAULT_BCRYPT_COST,
            token: TokenProvider::Simple {
                ttl: crate::token::DEFAULT_SIMPLE_TOKEN_TTL,
            },
            clock: Arc::new(SystemClock),
        }
    }
}

/// The in-memory image of the `auth` tree plus the per-user permission cache.
#[derive(Debug, Clone, Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    perms: HashMap<String, UnifiedPerms>,
}

impl State {
    /// etcd `refreshRangePermCache`.
    fn refresh_perms(&mut self) {
        let roles = &self.roles;
        self.perms = self
            .users
            .values()
            .map(|u| (u.name.clone(), UnifiedPerms::build(u, |r| roles.get(r))))
            .collect();
    }
}

/// Users, roles, permissions, the enabled flag, the auth revision and tokens, persisted in
/// `Tree::Auth` of a backend `B`.
///
/// Generic over the backend (not `Arc<dyn Backend>`: `Backend` has an associated constant and
/// a constructor, so it is not object-safe); a server that picks its engine at run time uses
/// `mvcc_core::AnyBackend`, which is itself a `Backend`.
///
/// Concurrency: one `RwLock` guards the state; [`AuthStore::apply`] holds the write lock
/// while it writes its batch, so applies are serialised and a check never sees half a
/// command. Token state has its own mutex. bcrypt runs outside both locks.
#[derive(Debug)]
pub struct AuthStore<B: Backend> {
    backend: Arc<B>,
    state: RwLock<State>,
    tokens: Mutex<TokenState>,
    clock: Arc<dyn Clock>,
    bcrypt_cost: u32,
    next_token_index: AtomicU64,
}

impl<B: Backend> AuthStore<B> {
    /// Opens the auth state of `backend` (etcd `NewAuthStore`): loads every user and role, the
    /// enabled flag and the revision; a fresh tree is initialised at revision 1.
    pub fn open(backend: Arc<B>, config: AuthConfig) -> AuthResult<Self> {
        let bcrypt_cost = if (MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&config.bcrypt_cost) {
            config.bcrypt_cost
        } else {
            tracing::warn!(
                given = config.bcrypt_cost,
                default = DEFAULT_BCRYPT_COST,
                "invalid bcrypt cost; using the default"
            );
            DEFAULT_BCRYPT_COST
        };
        let state = Self::load(&backend)?;
        let mut tokens = TokenState::new(config.token);
        if state.enabled {
            tokens.enable();
        }
        Ok(AuthStore {
            backend,
            state: RwLock::new(state),
            tokens: Mutex::new(tokens),
            clock: config.clock,
            bcrypt_cost,
            next_token_index: AtomicU64::new(1),
        })
    }

    fn load(backend: &B) -> AuthResult<State> {
        if backend.get(Tree::Auth, persist::KEY_FORMAT)?.is_none() {
            let mut batch = WriteBatch::new();
            persist::put_format(&mut batch);
            if backend.get(Tree::Auth, persist::KEY_REVISION)?.is_none() {
                persist::put_revision(&mut batch, 1);
            }
            backend.write(&batch)?;
        }
        let dump = persist::read_dump(backend)?;
        let mut state = State {
            enabled: dump.enabled,
            revision: dump.revision,
            users: dump
                .users
                .into_iter()
                .map(|u| (u.name.clone(), u))
                .collect(),
            roles: dump
                .roles
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
            perms: HashMap::new(),
        };
        state.refresh_perms();
        Ok(state)
    }

    /// The whole auth state as it is in memory (what [`persist::read_dump`] reads from the
    /// backend).
    pub fn dump(&self) -> persist::AuthDump {
        let s = self.state.read();
        persist::AuthDump {
            enabled: s.enabled,
            revision: s.revision,
            users: s.users.values().cloned().collect(),
            roles: s.roles.values().cloned().collect(),
        }
    }

    /// Re-reads the state from the backend (etcd `Recover`, after a snapshot restore). Simple
    /// tokens survive only if auth stays enabled.
    pub fn recover(&self) -> AuthResult<()> {
        let fresh = Self::load(&self.backend)?;
        let mut state = self.state.write();
        let mut tokens = self.tokens.lock();
        if fresh.enabled {
            tokens.enable();
        } else {
            tokens.disable();
        }
        *state = fresh;
        Ok(())
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// The bcrypt cost in use.
    pub fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }

    /// Hashes a password at the store's cost.
    pub fn hash_password(&self, password: &str) -> AuthResult<String> {
        hash_password(password, self.bcrypt_cost)
    }

    /// etcd `IsAuthEnabled`.
    pub fn is_enabled(&self) -> bool {
        self.state.read().enabled
    }

    /// The current auth revision.
    pub fn revision(&self) -> u64 {
        self.state.read().revision
    }

    /// etcd `AuthStatus`.
    pub fn status(&self) -> AuthStatus {
        let s = self.state.read();
        AuthStatus {
            enabled: s.enabled,
            revision: s.revision,
        }
    }

    /// etcd `UserGet`.
    pub fn user_get(&self, name: &str) -> AuthResult<User> {
        self.state
            .read()
            .users
            .get(name)
            .cloned()
            .ok_or(AuthError::UserNotFound)
    }

    /// etcd `UserList`: every user name, sorted.
    pub fn user_list(&self) -> Vec<String> {
        self.state.read().users.keys().cloned().collect()
    }

    /// etcd `RoleGet`.
    pub fn role_get(&self, name: &str) -> AuthResult<Role> {
        self.state
            .read()
            .roles
            .get(name)
            .cloned()
            .ok_or(AuthError::RoleNotFound)
    }

    /// etcd `RoleList`: every role name, sorted.
    pub fn role_list(&self) -> Vec<String> {
        self.state.read().roles.keys().cloned().collect()
    }

    /// etcd `HasRole`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.state
            .read()
            .users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// Applies one command (etcd's `authStore` mutators): validates it against the current
    /// state with etcd's errors and order of checks, writes every changed record and the new
    /// revision in **one** `WriteBatch`, and only then updates memory and the permission cache.
    /// A failed command changes nothing. Every successful change bumps the revision, except
    /// `AuthEnable`, which etcd does not count as a revision, and accepted no-ops.
    pub fn apply(&self, cmd: &AuthCommand) -> AuthResult<AuthResponse> {
        self.apply_with_batch(cmd, WriteBatch::new())
    }

    /// [`AuthStore::apply`] that also writes `extra` (for instance the raft applied index in
    /// `Tree::Meta`, etcd's `saveConsistentIndex`) in the same atomic batch, ahead of the
    /// command's rows. `extra` is written only when the command changes something; after an
    /// error or an accepted no-op (`changed == false`) nothing was written and the caller
    /// persists `extra` itself if it needs to.
    pub fn apply_with_batch(
        &self,
        cmd: &AuthCommand,
        extra: WriteBatch,
    ) -> AuthResult<AuthResponse> {
        let mut state = self.state.write();
        let mut next = (*state).clone();
        let mut batch = extra;
        let mut bump = true;
        let mut invalidate_user: Option<&str> = None;
        let mut token_switch: Option<bool> = None;
        let unchanged = |s: &State| {
            Ok(AuthResponse {
                revision: s.revision,
                changed: false,
            })
        };
        match cmd {
            AuthCommand::AuthEnable => {
                if next.enabled {
                    tracing::info!(
                        "authentication is already enabled; ignored auth enable request"
                    );
                    return unchanged(&state);
                }
                let root = next
                    .users
                    .get(ROOT_USER)
                    .ok_or(AuthError::RootUserNotExist)?;
                if !root.has_root_role() {
                    return Err(AuthError::RootRoleNotExist);
                }
                next.enabled = true;
                persist::put_enabled(&mut batch, true);
                bump = false;
                token_switch = Some(true);
            }
            AuthCommand::AuthDisable => {
                if !next.enabled {
                    return unchanged(&state);
                }
                next.enabled = false;
                persist::put_enabled(&mut batch, false);
                token_switch = Some(false);
            }
            AuthCommand::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if next.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let user = User {
                    name: name.clone(),
                    password_hash: if *no_password {
                        None
                    } else {
                        password_hash.clone()
                    },
                    roles: Vec::new(),
                    options: UserOptions {
                        no_password: *no_password,
                    },
                };
                persist::put_user(&mut batch, &user)?;
                next.users.insert(name.clone(), user);
            }
            AuthCommand::UserDelete { name } => {
                if next.enabled && name == ROOT_USER {
                    tracing::warn!("cannot delete 'root' user");
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if next.users.remove(name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                batch.delete(Tree::Auth, persist::user_key(name));
                invalidate_user = Some(name);
            }
            AuthCommand::UserChangePassword { name, hash } => {
                let user = next.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.password_hash = Some(hash.clone());
                persist::put_user(&mut batch, user)?;
                invalidate_user = Some(name);
            }
            AuthCommand::UserGrantRole { user, role } => {
                let u = next.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if role != ROOT_ROLE && !next.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                match u.roles.binary_search(role) {
                    Ok(_) => return unchanged(&state),
                    Err(pos) => u.roles.insert(pos, role.clone()),
                }
                persist::put_user(&mut batch, u)?;
            }
            AuthCommand::UserRevokeRole { name, role } => {
                if next.enabled && name == ROOT_USER && role == ROOT_ROLE {
                    tracing::warn!("'root' user cannot revoke 'root' role");
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = next.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                let before = u.roles.len();
                u.roles.retain(|r| r != role);
                if u.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
                persist::put_user(&mut batch, u)?;
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if next.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                let role = Role {
                    name: name.clone(),
                    permissions: Vec::new(),
                };
                persist::put_role(&mut batch, &role)?;
                next.roles.insert(name.clone(), role);
            }
            AuthCommand::RoleDelete { role } => {
                if next.enabled && role == ROOT_ROLE {
                    tracing::warn!("cannot delete 'root' role");
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if next.roles.remove(role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                batch.delete(Tree::Auth, persist::role_key(role));
                for u in next.users.values_mut() {
                    let before = u.roles.len();
                    u.roles.retain(|r| r != role);
                    if u.roles.len() != before {
                        persist::put_user(&mut batch, u)?;
                    }
                }
            }
            AuthCommand::RoleGrantPermission { name, perm } => {
                if !is_valid_permission_range(&perm.key, &perm.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let role = next.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                // etcd: binary search on key; same key and range end = update the type, else
                // append and sort by key (a stable sort: equal keys keep grant order).
                let idx = role
                    .permissions
                    .partition_point(|p| p.key.as_slice() < perm.key.as_slice());
                match role.permissions.get_mut(idx) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type;
                    }
                    _ => {
                        role.permissions.push(perm.clone());
                        role.permissions.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                persist::put_role(&mut batch, role)?;
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = next.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.permissions.len();
                r.permissions
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if r.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                persist::put_role(&mut batch, r)?;
            }
        }
        if bump {
            next.revision += 1;
            persist::put_revision(&mut batch, next.revision);
        }
        self.backend.write(&batch)?;
        next.refresh_perms();
        {
            let mut tokens = self.tokens.lock();
            match token_switch {
                Some(true) => tokens.enable(),
                Some(false) => tokens.disable(),
                None => {}
            }
            if let Some(name) = invalidate_user {
                tokens.invalidate_user(name);
            }
        }
        *state = next;
        Ok(AuthResponse {
            revision: state.revision,
            changed: true,
        })
    }

    /// etcd `CheckPassword`: the auth revision the password was checked at. Auth disabled:
    /// [`AuthError::AuthNotEnabled`]; unknown user or wrong password:
    /// [`AuthError::AuthFailed`]; a no-password user: [`AuthError::NoPasswordUser`].
    pub fn check_password(&self, name: &str, password: &str) -> AuthResult<u64> {
        let (hash, revision) = {
            let s = self.state.read();
            if !s.enabled {
                return Err(AuthError::AuthNotEnabled);
            }
            let user = s.users.get(name).ok_or(AuthError::AuthFailed)?;
            if user.options.no_password {
                return Err(AuthError::NoPasswordUser);
            }
            (user.password_hash.clone(), s.revision)
        };
        match hash {
            Some(h) if verify_password(password, &h) => Ok(revision),
            _ => {
                tracing::info!(user = name, "invalid password");
                Err(AuthError::AuthFailed)
            }
        }
    }

    /// etcd `GenTokenPrefix`: a fresh simple-token prefix (empty for JWT and no tokens). The
    /// API layer generates it *before* proposing an authenticate command, so every member
    /// registers the same token.
    pub fn gen_token_prefix(&self) -> String {
        if self.tokens.lock().is_simple() {
            gen_simple_token_prefix()
        } else {
            String::new()
        }
    }

    /// The apply side of etcd's `InternalAuthenticateRequest` (`authStore.Authenticate`):
    /// issues a token for `name` (simple: `<prefix>.<index>`; JWT: signed with the current
    /// revision). The password must have been checked with [`AuthStore::check_password`].
    pub fn assign_token(&self, name: &str, prefix: &str, index: u64) -> AuthResult<String> {
        let state = self.state.read();
        if !state.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        let user = state.users.get(name).ok_or(AuthError::AuthFailed)?;
        if user.options.no_password {
            return Err(AuthError::AuthFailed);
        }
        let now = self.clock.now();
        self.tokens
            .lock()
            .assign(name, state.revision, prefix, index, now)
    }

    /// Single-node authentication (etcd `EtcdServer.Authenticate` without raft): checks the
    /// password, then issues a token; retried if the auth revision moved during the check, as
    /// etcd does. Simple-token indexes come from a local counter.
    pub fn authenticate(&self, name: &str, password: &str) -> AuthResult<String> {
        loop {
            let checked = self.check_password(name, password)?;
            let prefix = self.gen_token_prefix();
            let index = self.next_token_index.fetch_add(1, Ordering::Relaxed);
            let token = self.assign_token(name, &prefix, index)?;
            if checked == self.revision() {
                return Ok(token);
            }
        }
    }

    /// etcd `AuthInfoFromCtx` for a token: `Ok(None)` while auth is disabled (requests then
    /// run unchecked); [`AuthError::InvalidAuthToken`] for an unknown, expired, invalidated,
    /// badly signed or malformed token. A simple-token lookup refreshes its TTL.
    pub fn user_from_token(&self, token: &str) -> AuthResult<Option<AuthInfo>> {
        let revision = {
            let s = self.state.read();
            if !s.enabled {
                return Ok(None);
            }
            s.revision
        };
        let now = self.clock.now();
        self.tokens
            .lock()
            .info(token, revision, now)
            .map(Some)
            .ok_or(AuthError::InvalidAuthToken)
    }

    /// etcd `AuthInfoFromTLS`: the verified client certificate's common name is the user, at
    /// the current revision. `None` while auth is disabled.
    pub fn user_from_common_name(&self, common_name: &str) -> Option<AuthInfo> {
        let s = self.state.read();
        s.enabled.then(|| AuthInfo {
            user: common_name.to_owned(),
            revision: s.revision,
        })
    }

    /// Drops expired simple tokens; returns how many (call about once a second, as etcd's
    /// sweeper; lookups expire tokens lazily anyway).
    pub fn purge_expired_tokens(&self) -> usize {
        let now = self.clock.now();
        self.tokens.lock().purge_expired(now)
    }

    /// Number of live simple tokens (diagnostics).
    pub fn simple_token_count(&self) -> usize {
        self.tokens.lock().simple_token_count()
    }

    /// Runs `f` on the state under the read lock (permission checks).
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&StateView<'_>) -> T) -> T {
        let s = self.state.read();
        f(&StateView { state: &s })
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The simple-token TTL, if simple tokens are in use.
    pub fn simple_token_ttl(&self) -> Option<Duration> {
        match &*self.tokens.lock() {
            TokenState::Simple { ttl, .. } => Some(*ttl),
            _ => None,
        }
    }
}

/// Read-only view of the state for the permission checks.
pub(crate) struct StateView<'a> {
    state: &'a State,
}

impl StateView<'_> {
    pub(crate) fn enabled(&self) -> bool {
        self.state.enabled
    }

    pub(crate) fn revision(&self) -> u64 {
        self.state.revision
    }

    pub(crate) fn user(&self, name: &str) -> Option<&User> {
        self.state.users.get(name)
    }

    pub(crate) fn perms(&self, name: &str) -> Option<&UnifiedPerms> {
        self.state.perms.get(name)
    }
}
