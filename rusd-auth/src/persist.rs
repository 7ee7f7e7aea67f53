//! The on-disk encoding of the auth state in `storage_api::Tree::Auth` (format version 1).
//!
//! | key | value |
//! |---|---|
//! | `meta/format` | format version, u32 big-endian (`1`) |
//! | `meta/enabled` | one byte: `1` enabled, `0` disabled (absent = disabled) |
//! | `meta/revision` | auth revision, u64 big-endian (etcd `authRevision`) |
//! | `user/<name>` | JSON `{"v":1,"name":..,"password_hash":..|null,"roles":[..],"options":{"no_password":..}}` |
//! | `role/<name>` | JSON `{"v":1,"name":..,"permissions":[{"perm_type":"Read"\|"Write"\|"ReadWrite","key":[bytes],"range_end":[bytes]}]}` |
//!
//! Every record carries its own version `v`; a reader refuses a format or record version it
//! does not know (rather than misreading it). A fresh tree gets `meta/format = 1` and
//! `meta/revision = 1` when the store is first opened (etcd commits revision 1 in
//! `NewAuthStore`), so revision 0 never names a real state.
//!
//! The whole state moves in and out of a store as an [`AuthDump`] (what `rusd import` and
//! `rusd export` carry between etcd and rusd): [`read_dump`] reads it without writing,
//! [`restore`] replaces the tree's content with one in a single backend write, and
//! [`restore_rows`] adds the rows of one to a caller's batch (a store being built).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use storage_api::{Backend, Tree, WriteBatch};

use crate::error::{AuthError, AuthResult};
use crate::model::{Role, User};
use crate::perm_cache::is_valid_permission_range;

/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const KEY_FORMAT: &[u8] = b"meta/format";
pub(crate) const KEY_ENABLED: &[u8] = b"meta/enabled";
pub(crate) const KEY_REVISION: &[u8] = b"meta/revision";
pub(crate) const USER_PREFIX: &[u8] = b"user/";
pub(crate) const ROLE_PREFIX: &[u8] = b"role/";

const RECORD_VERSION: u32 = 1;

#[derive(Serialize)]
struct RecordOut<'a, T> {
    v: u32,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Deserialize)]
struct RecordIn<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

pub(crate) fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

pub(crate) fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

fn encode<T: Serialize>(body: &T) -> AuthResult<Vec<u8>> {
    serde_json::to_vec(&RecordOut {
        v: RECORD_VERSION,
        body,
    })
    .map_err(|e| AuthError::Corrupt {
        key: String::new(),
        reason: format!("encode: {e}"),
    })
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> AuthResult<T> {
    let corrupt = |reason: String| AuthError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let rec: RecordIn<T> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if rec.v != RECORD_VERSION {
        return Err(corrupt(format!("unsupported record version {}", rec.v)));
    }
    Ok(rec.body)
}

pub(crate) fn put_user(batch: &mut WriteBatch, user: &User) -> AuthResult<()> {
    batch.put(Tree::Auth, user_key(&user.name), encode(user)?);
    Ok(())
}

pub(crate) fn put_role(batch: &mut WriteBatch, role: &Role) -> AuthResult<()> {
    batch.put(Tree::Auth, role_key(&role.name), encode(role)?);
    Ok(())
}

pub(crate) fn put_revision(batch: &mut WriteBatch, revision: u64) {
    batch.put(Tree::Auth, KEY_REVISION, revision.to_be_bytes().to_vec());
}

pub(crate) fn put_enabled(batch: &mut WriteBatch, enabled: bool) {
    batch.put(Tree::Auth, KEY_ENABLED, vec![u8::from(enabled)]);
}

pub(crate) fn put_format(batch: &mut WriteBatch) {
    batch.put(
        Tree::Auth,
        KEY_FORMAT,
        FORMAT_VERSION.to_be_bytes().to_vec(),
    );
}

pub(crate) fn decode_u64(key: &[u8], bytes: &[u8]) -> AuthResult<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| AuthError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

pub(crate) fn decode_format(bytes: &[u8]) -> AuthResult<u32> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| AuthError::Corrupt {
        key: "meta/format".into(),
        reason: format!("expected 4 bytes, found {}", bytes.len()),
    })?;
    Ok(u32::from_be_bytes(arr))
}

/// The whole auth state of a store: the enabled flag, the auth revision, every user and every
/// role (etcd's `auth`, `authUsers` and `authRoles` buckets).
///
/// Password hashes are carried as they are (bcrypt strings), never re-hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthDump {
    /// Whether authentication is enabled.
    pub enabled: bool,
    /// The auth revision (at least 1).
    pub revision: u64,
    /// The users, sorted by name.
    pub users: Vec<User>,
    /// The roles, sorted by name.
    pub roles: Vec<Role>,
}

impl Default for AuthDump {
    /// The state of a fresh store: disabled, revision 1, no users, no roles.
    fn default() -> Self {
        AuthDump {
            enabled: false,
            revision: 1,
            users: Vec::new(),
            roles: Vec::new(),
        }
    }
}

impl AuthDump {
    /// True when this is the state of a fresh store ([`AuthDump::default`]), which a store
    /// without any auth row opens to anyway.
    pub fn is_fresh(&self) -> bool {
        *self == AuthDump::default()
    }
}

/// Reads the auth state of `backend` without writing anything (unlike
/// [`crate::AuthStore::open`], which initialises a fresh tree): a tree without rows reads as
/// [`AuthDump::default`]. [`AuthError::Corrupt`] for an unknown format version or a record that
/// does not decode.
pub fn read_dump<B: Backend>(backend: &B) -> AuthResult<AuthDump> {
    if let Some(f) = backend.get(Tree::Auth, KEY_FORMAT)? {
        let v = decode_format(&f)?;
        if v != FORMAT_VERSION {
            return Err(AuthError::Corrupt {
                key: "meta/format".into(),
                reason: format!("unsupported auth format version {v}"),
            });
        }
    }
    let revision = match backend.get(Tree::Auth, KEY_REVISION)? {
        Some(r) => decode_u64(KEY_REVISION, &r)?,
        None => 1,
    };
    let enabled = backend
        .get(Tree::Auth, KEY_ENABLED)?
        .is_some_and(|v| v == [1]);
    let mut users = Vec::new();
    for (k, v) in backend.scan_prefix(Tree::Auth, USER_PREFIX, usize::MAX)? {
        let user: User = decode(&k, &v)?;
        users.push(user);
    }
    let mut roles = Vec::new();
    for (k, v) in backend.scan_prefix(Tree::Auth, ROLE_PREFIX, usize::MAX)? {
        let role: Role = decode(&k, &v)?;
        roles.push(role);
    }
    users.sort_by(|a, b| a.name.cmp(&b.name));
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(AuthDump {
        enabled,
        revision,
        users,
        roles,
    })
}

/// Checks `dump` and returns it in the form the store keeps: users and roles sorted by name,
/// each user's roles sorted without duplicates, each role's permissions stably sorted by key
/// (etcd keeps both sorted, so a dump read from etcd is unchanged).
/// [`AuthError::InvalidDump`] for revision 0, an empty or repeated user or role name, an empty
/// granted role name or an invalid permission range (empty key, or a range end not above
/// the key).
pub fn normalize_dump(dump: &AuthDump) -> AuthResult<AuthDump> {
    let invalid = |reason: String| Err(AuthError::InvalidDump(reason));
    if dump.revision == 0 {
        return invalid("auth revision 0".into());
    }
    let mut out = dump.clone();
    out.users.sort_by(|a, b| a.name.cmp(&b.name));
    out.roles.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen = BTreeSet::new();
    for u in &mut out.users {
        if u.name.is_empty() {
            return invalid("a user with an empty name".into());
        }
        if !seen.insert(u.name.clone()) {
            return invalid(format!("user {:?} appears twice", u.name));
        }
        if u.roles.iter().any(String::is_empty) {
            return invalid(format!("user {:?} holds a role with an empty name", u.name));
        }
        u.roles.sort();
        u.roles.dedup();
    }
    let mut seen = BTreeSet::new();
    for r in &mut out.roles {
        if r.name.is_empty() {
            return invalid("a role with an empty name".into());
        }
        if !seen.insert(r.name.clone()) {
            return invalid(format!("role {:?} appears twice", r.name));
        }
        if let Some(p) = r
            .permissions
            .iter()
            .find(|p| !is_valid_permission_range(&p.key, &p.range_end))
        {
            return invalid(format!(
                "role {:?}: invalid permission range {:?}..{:?}",
                r.name,
                String::from_utf8_lossy(&p.key),
                String::from_utf8_lossy(&p.range_end)
            ));
        }
        r.permissions.sort_by(|a, b| a.key.cmp(&b.key));
    }
    Ok(out)
}

/// Adds to `batch` the rows that hold `dump` (checked and normalised by [`normalize_dump`],
/// which is returned): the format version, the enabled flag, the revision, every user and every
/// role. For a tree without rows (a store being built); [`restore`] replaces existing content.
pub fn restore_rows(dump: &AuthDump, batch: &mut WriteBatch) -> AuthResult<AuthDump> {
    let dump = normalize_dump(dump)?;
    put_format(batch);
    put_enabled(batch, dump.enabled);
    put_revision(batch, dump.revision);
    for u in &dump.users {
        put_user(batch, u)?;
    }
    for r in &dump.roles {
        put_role(batch, r)?;
    }
    Ok(dump)
}

/// Replaces the auth state of `backend` with `dump` in **one** backend write: the rows of
/// [`restore_rows`], and deletions of the users and roles the tree holds that `dump` does not.
/// Nothing is written when `dump` is invalid. An [`crate::AuthStore`] open on `backend` sees
/// the new state after [`crate::AuthStore::recover`]. Returns the normalised dump.
pub fn restore<B: Backend>(backend: &B, dump: &AuthDump) -> AuthResult<AuthDump> {
    let mut batch = WriteBatch::new();
    let dump = restore_rows(dump, &mut batch)?;
    let users: BTreeSet<Vec<u8>> = dump.users.iter().map(|u| user_key(&u.name)).collect();
    let roles: BTreeSet<Vec<u8>> = dump.roles.iter().map(|r| role_key(&r.name)).collect();
    for (k, _) in backend.scan_prefix(Tree::Auth, USER_PREFIX, usize::MAX)? {
        if !users.contains(&k) {
            batch.delete(Tree::Auth, k);
        }
    }
    for (k, _) in backend.scan_prefix(Tree::Auth, ROLE_PREFIX, usize::MAX)? {
        if !roles.contains(&k) {
            batch.delete(Tree::Auth, k);
        }
    }
    backend.write(&batch)?;
    Ok(dump)
}
