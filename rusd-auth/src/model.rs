//! Users, roles and key permissions (etcd `authpb.User`, `authpb.Role`, `authpb.Permission`).

use serde::{Deserialize, Serialize};

/// The name of the superuser etcd requires before `AuthEnable`.
pub const ROOT_USER: &str = "root";
/// The role that may do everything; granted to [`ROOT_USER`] before `AuthEnable`.
pub const ROOT_ROLE: &str = "root";

/// What a key permission allows (etcd `authpb.Permission_Type`, same numeric values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PermissionType {
    /// Range, watch, compare and `prev_kv` reads (`READ = 0`).
    Read,
    /// Put and delete-range (`WRITE = 1`).
    Write,
    /// Both (`READWRITE = 2`).
    ReadWrite,
}

impl PermissionType {
    /// etcd's numeric value (`authpb.Permission_Type`).
    pub fn as_i32(self) -> i32 {
        match self {
            PermissionType::Read => 0,
            PermissionType::Write => 1,
            PermissionType::ReadWrite => 2,
        }
    }

    /// From etcd's numeric value.
    pub fn from_i32(v: i32) -> Option<Self> {
        match v {
            0 => Some(PermissionType::Read),
            1 => Some(PermissionType::Write),
            2 => Some(PermissionType::ReadWrite),
            _ => None,
        }
    }

    /// True when the permission grants reads.
    pub fn reads(self) -> bool {
        matches!(self, PermissionType::Read | PermissionType::ReadWrite)
    }

    /// True when the permission grants writes.
    pub fn writes(self) -> bool {
        matches!(self, PermissionType::Write | PermissionType::ReadWrite)
    }
}

/// One key permission of a role, with etcd's range conventions:
///
/// * `range_end` empty: the single key `key`;
/// * `range_end == [0]`: every key `>= key` (with `key == [0]`: every key);
/// * otherwise the half-open range `[key, range_end)` (a prefix `p` is `[p, p+1)`, see
///   [`prefix_range_end`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Permission {
    /// Read, write or both.
    pub perm_type: PermissionType,
    /// First key.
    pub key: Vec<u8>,
    /// Range end (etcd convention, see the type docs).
    pub range_end: Vec<u8>,
}

impl Permission {
    /// A permission.
    pub fn new(
        perm_type: PermissionType,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
    ) -> Self {
        Permission {
            perm_type,
            key: key.into(),
            range_end: range_end.into(),
        }
    }

    /// A permission on every key starting with `prefix` (what `etcdctl role grant-permission
    /// --prefix` sends).
    pub fn prefix(perm_type: PermissionType, prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_range_end(&key);
        Permission {
            perm_type,
            key,
            range_end,
        }
    }
}

/// etcd `clientv3.GetPrefixRangeEnd`: the smallest key greater than every key with this prefix;
/// `[0]` ("to the end") when the prefix is empty or all `0xff`.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// Options of a user (etcd `authpb.UserAddOptions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserOptions {
    /// The user cannot authenticate with a password (only through a client certificate).
    pub no_password: bool,
}

/// A user (etcd `authpb.User`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct User {
    /// The name.
    pub name: String,
    /// The bcrypt hash of the password; `None` for a no-password user.
    pub password_hash: Option<String>,
    /// Granted roles, sorted and without duplicates (etcd keeps them sorted).
    pub roles: Vec<String>,
    /// Options.
    pub options: UserOptions,
}

impl User {
    /// True when the user holds the root role (etcd `hasRootRole`).
    pub fn has_root_role(&self) -> bool {
        self.roles.iter().any(|r| r == ROOT_ROLE)
    }
}

/// A role (etcd `authpb.Role`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Role {
    /// The name.
    pub name: String,
    /// Key permissions, sorted by `key` (etcd keeps them sorted; equal keys keep grant order).
    pub permissions: Vec<Permission>,
}

/// Who a request runs as (etcd `auth.AuthInfo`). The default value is "no credentials": every
/// check on it fails with [`crate::AuthError::UserEmpty`] while auth is enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AuthInfo {
    /// The user name.
    pub user: String,
    /// The auth revision the credentials were checked at (0 = none).
    pub revision: u64,
}

/// etcd `AuthStatusResponse`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AuthStatus {
    /// Whether authentication is enabled.
    pub enabled: bool,
    /// The current auth revision.
    pub revision: u64,
}
