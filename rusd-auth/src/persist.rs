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

use serde::{Deserialize, Serialize};
use storage_api::{Tree, WriteBatch};

use crate::error::{AuthError, AuthResult};
use crate::model::{Role, User};

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
