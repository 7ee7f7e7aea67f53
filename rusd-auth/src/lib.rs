//! # rusd-auth
//!
//! etcd v3 authentication and role-based access control for rusd, at the engine level (no
//! transport): users, roles, key-range permissions, the enabled flag and the auth revision,
//! persisted in `storage_api::Tree::Auth`; simple and JWT tokens; bcrypt password hashing; and
//! the permission checks of every request type of `mvcc-core`. The reference is etcd 3.4's
//! `auth/store.go`, `auth/range_perm_cache.go`, `auth/simple_token.go`, `auth/jwt.go` and
//! `etcdserver/apply_auth.go`; behaviour and error texts follow them.
//!
//! * State changes are deterministic [`AuthCommand`]s (serde), applied with
//!   [`AuthStore::apply`] in one backend batch each, so every raft member applies the same
//!   bytes. Passwords are hashed ([`hash_password`]) before a command is built.
//! * Tokens: [`AuthStore::authenticate`] (or [`AuthStore::check_password`] +
//!   [`AuthStore::gen_token_prefix`] + [`AuthStore::assign_token`] for the raft path) and
//!   [`AuthStore::user_from_token`]; providers from `--auth-token` via
//!   [`TokenProvider::from_options`]. Expiry uses an injectable [`Clock`].
//! * Checks: [`AuthStore::check_range`], [`AuthStore::check_put`],
//!   [`AuthStore::check_delete_range`], [`AuthStore::check_txn`],
//!   [`AuthStore::check_lease_revoke`], [`AuthStore::check_watch`], [`AuthStore::check_admin`].
//! * Moving the whole state (`rusd import` / `rusd export`): [`AuthDump`], read without writing
//!   by [`persist::read_dump`] (or [`AuthStore::dump`]), written by [`persist::restore`] (one
//!   backend write, replacing the tree) or [`persist::restore_rows`] (into a caller's batch);
//!   bcrypt hashes are carried as they are.
//! * Errors: [`AuthError`], whose `Display` is etcd's message and
//!   [`AuthError::grpc_code`] etcd's gRPC code.
//!
//! ```
//! use std::sync::Arc;
//! use rusd_auth::*;
//! use storage_api::{Backend, BackendConfig, MemoryBackend};
//!
//! let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
//! let auth = AuthStore::open(be, AuthConfig::default()).unwrap();
//! let hash = hash_password("secret", 4).unwrap();
//! for cmd in [
//!     AuthCommand::UserAdd { name: "root".into(), password_hash: Some(hash), no_password: false },
//!     AuthCommand::UserGrantRole { user: "root".into(), role: "root".into() },
//!     AuthCommand::AuthEnable,
//! ] {
//!     auth.apply(&cmd).unwrap();
//! }
//! let token = auth.authenticate("root", "secret").unwrap();
//! let info = auth.user_from_token(&token).unwrap().unwrap();
//! auth.check_admin(&info).unwrap();
//! let err = auth.check_admin(&AuthInfo::default()).unwrap_err();
//! assert_eq!(err.to_string(), "etcdserver: user name is empty");
//! assert_eq!(err.grpc_code(), 3);
//! ```
#![deny(missing_docs)]

mod check;
mod clock;
mod command;
mod error;
mod model;
mod perm_cache;
pub mod persist;
mod store;
pub mod token;

pub use check::{LeaseKeys, NoLeases};
pub use clock::{Clock, ManualClock, SystemClock};
pub use command::{AuthCommand, AuthResponse};
pub use error::{grpc_code, AuthError, AuthResult};
pub use model::{
    prefix_range_end, AuthInfo, AuthStatus, Permission, PermissionType, Role, User, UserOptions,
    ROOT_ROLE, ROOT_USER,
};
pub use persist::AuthDump;
pub use store::{
    hash_password, verify_password, AuthConfig, AuthStore, DEFAULT_BCRYPT_COST, MAX_BCRYPT_COST,
    MIN_BCRYPT_COST,
};
pub use token::{JwtKeys, JwtOptions, TokenOptions, TokenProvider};
