//! Deterministic auth-management commands (what a raft log entry carries).
//!
//! Passwords are hashed *before* a command is built ([`crate::hash_password`]), so every member
//! applies the same bytes and the log never holds a plain-text password (etcd 3.5 does the same
//! with `hashed_password`; etcd 3.4 hashed inside apply).

use serde::{Deserialize, Serialize};

use crate::model::Permission;

/// One change of the auth state. [`crate::AuthStore::apply`] validates it exactly as etcd's
/// `authStore` does and writes it in one backend batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuthCommand {
    /// etcd `AuthEnable`: needs user `root` holding role `root`.
    AuthEnable,
    /// etcd `AuthDisable`.
    AuthDisable,
    /// etcd `UserAdd`.
    UserAdd {
        /// The user name (non-empty).
        name: String,
        /// bcrypt hash of the password ([`crate::hash_password`]); ignored when
        /// `no_password`. `None` without `no_password` stores no hash: the user then cannot
        /// authenticate with any password.
        password_hash: Option<String>,
        /// The user has no password (client-certificate authentication only).
        no_password: bool,
    },
    /// etcd `UserDelete`.
    UserDelete {
        /// The user name.
        name: String,
    },
    /// etcd `UserChangePassword`.
    UserChangePassword {
        /// The user name.
        name: String,
        /// bcrypt hash of the new password.
        hash: String,
    },
    /// etcd `UserGrantRole`.
    UserGrantRole {
        /// The user name.
        user: String,
        /// The role name (`root` need not exist as a role).
        role: String,
    },
    /// etcd `UserRevokeRole`.
    UserRevokeRole {
        /// The user name.
        name: String,
        /// The role name.
        role: String,
    },
    /// etcd `RoleAdd`.
    RoleAdd {
        /// The role name (non-empty).
        name: String,
    },
    /// etcd `RoleDelete`: also removes the role from every user.
    RoleDelete {
        /// The role name.
        role: String,
    },
    /// etcd `RoleGrantPermission`: replaces the type of an identical (key, range_end)
    /// permission, else adds one.
    RoleGrantPermission {
        /// The role name.
        name: String,
        /// The permission.
        perm: Permission,
    },
    /// etcd `RoleRevokePermission`: removes the permissions with exactly this key and range end.
    RoleRevokePermission {
        /// The role name.
        role: String,
        /// The key of the permission.
        key: Vec<u8>,
        /// The range end of the permission.
        range_end: Vec<u8>,
    },
}

impl AuthCommand {
    /// The command as JSON bytes (the proposal payload).
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// A command from [`AuthCommand::encode`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthResponse {
    /// The auth revision after the command.
    pub revision: u64,
    /// False when the command was a no-op etcd accepts silently (enable when enabled, disable
    /// when disabled, granting a role already granted); nothing was written then.
    pub changed: bool,
}
