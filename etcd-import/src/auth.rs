//! etcd's auth state: the `auth`, `authUsers` and `authRoles` buckets, decoded into (import)
//! and encoded from (export) `rusd-auth`'s [`AuthDump`].
//!
//! What etcd 3.4 stores (checked against files written by etcd 3.4.23):
//! * bucket `auth`: `authEnabled` = one byte (`1` enabled, `0` disabled; absent = disabled),
//!   `authRevision` = the auth revision, u64 big-endian.
//! * bucket `authUsers`: key = the user name; value = protobuf `authpb.User` (1 name, 2 password
//!   = the bcrypt hash, empty for a no-password user, 3 roles (repeated, sorted), 4 options =
//!   `authpb.UserAddOptions {1 no_password}`, since 3.4).
//! * bucket `authRoles`: key = the role name; value = protobuf `authpb.Role` (1 name,
//!   2 keyPermission (repeated) = `authpb.Permission {1 permType (READ 0, WRITE 1,
//!   READWRITE 2), 2 key, 3 range_end}`).
//!
//! Unknown fields are skipped (as protobuf readers do); a wrong wire type, a truncated field, an
//! unknown permission type, a name that is not UTF-8 or differs from its bucket key, or a
//! bcrypt hash that is not UTF-8 is an [`ImportError::BadRow`]. Password hashes are carried as
//! they are, never re-hashed.

use rusd_auth::{AuthDump, Permission, PermissionType, Role, User, UserOptions};

use crate::bbolt::{BoltFile, Entry};
use crate::error::ImportError;
use crate::etcd::{bad, fields, Field};
use crate::export::{put_bytes, put_int};

/// etcd's `auth` bucket key of the enabled flag.
pub const AUTH_ENABLED_KEY: &[u8] = b"authEnabled";
/// etcd's `auth` bucket key of the auth revision.
pub const AUTH_REVISION_KEY: &[u8] = b"authRevision";

/// The auth state an import or export carried, in figures (for summaries and the command
/// line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFigures {
    /// Whether authentication is enabled.
    pub enabled: bool,
    /// The auth revision.
    pub revision: u64,
    /// Number of users.
    pub users: usize,
    /// Number of roles.
    pub roles: usize,
}

impl AuthFigures {
    /// The figures of `dump`; `None` for the state of a fresh store ([`AuthDump::is_fresh`]),
    /// which there is nothing to carry of.
    pub fn of(dump: &AuthDump) -> Option<Self> {
        (!dump.is_fresh()).then_some(AuthFigures {
            enabled: dump.enabled,
            revision: dump.revision,
            users: dump.users.len(),
            roles: dump.roles.len(),
        })
    }

    /// How the command line reports them: `auth enabled, revision 9, 2 users, 2 roles`.
    pub fn describe(&self) -> String {
        format!(
            "auth {}, revision {}, {} users, {} roles",
            if self.enabled { "enabled" } else { "disabled" },
            self.revision,
            self.users,
            self.roles
        )
    }
}

fn utf8(what: &str, b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

/// Decodes `authpb.User`.
pub fn decode_user(data: &[u8]) -> Result<User, String> {
    let mut user = User {
        name: String::new(),
        password_hash: None,
        roles: Vec::new(),
        options: UserOptions::default(),
    };
    for (number, field) in fields(data)? {
        match (number, field) {
            (1, Field::Bytes(b)) => user.name = utf8("user name", b)?,
            (2, Field::Bytes(b)) => {
                user.password_hash = if b.is_empty() {
                    None
                } else {
                    Some(utf8("password hash", b)?)
                };
            }
            (3, Field::Bytes(b)) => user.roles.push(utf8("role name", b)?),
            (4, Field::Bytes(b)) => {
                for (n, f) in fields(b).map_err(|e| format!("options: {e}"))? {
                    match (n, f) {
                        (1, Field::Varint(v)) => user.options.no_password = v != 0,
                        (1, _) => return Err("options field 1 has the wrong wire type".into()),
                        _ => {}
                    }
                }
            }
            (1..=4, _) => return Err(format!("field {number} has the wrong wire type")),
            _ => {}
        }
    }
    Ok(user)
}

fn decode_permission(data: &[u8]) -> Result<Permission, String> {
    let mut p = Permission::new(PermissionType::Read, Vec::new(), Vec::new());
    for (number, field) in fields(data).map_err(|e| format!("permission: {e}"))? {
        match (number, field) {
            (1, Field::Varint(v)) => {
                p.perm_type = i32::try_from(v)
                    .ok()
                    .and_then(PermissionType::from_i32)
                    .ok_or_else(|| format!("unknown permission type {v}"))?;
            }
            (2, Field::Bytes(b)) => p.key = b.to_vec(),
            (3, Field::Bytes(b)) => p.range_end = b.to_vec(),
            (1..=3, _) => return Err(format!("permission field {number} has the wrong wire type")),
            _ => {}
        }
    }
    Ok(p)
}

/// Decodes `authpb.Role`.
pub fn decode_role(data: &[u8]) -> Result<Role, String> {
    let mut role = Role {
        name: String::new(),
        permissions: Vec::new(),
    };
    for (number, field) in fields(data)? {
        match (number, field) {
            (1, Field::Bytes(b)) => role.name = utf8("role name", b)?,
            (2, Field::Bytes(b)) => role.permissions.push(decode_permission(b)?),
            (1..=2, _) => return Err(format!("field {number} has the wrong wire type")),
            _ => {}
        }
    }
    Ok(role)
}

/// etcd's `authpb.User` encoding, as Go writes it for a user `etcdctl user add` created:
/// fields in number order, empty ones omitted, the options message always present.
pub fn encode_user(user: &User) -> Vec<u8> {
    let mut out = Vec::with_capacity(user.name.len() + 80);
    put_bytes(&mut out, 1, user.name.as_bytes());
    if let Some(h) = &user.password_hash {
        put_bytes(&mut out, 2, h.as_bytes());
    }
    for r in &user.roles {
        // An empty role name never reaches here (rusd-auth refuses it); keep the field anyway.
        out.push((3 << 3) | 2);
        crate::export::put_varint(&mut out, r.len() as u64);
        out.extend_from_slice(r.as_bytes());
    }
    let mut options = Vec::new();
    put_int(&mut options, 1, i64::from(user.options.no_password));
    out.push((4 << 3) | 2);
    crate::export::put_varint(&mut out, options.len() as u64);
    out.extend_from_slice(&options);
    out
}

/// etcd's `authpb.Role` encoding, as Go writes it (permission type READ = 0 omitted).
pub fn encode_role(role: &Role) -> Vec<u8> {
    let mut out = Vec::with_capacity(role.name.len() + 32 * role.permissions.len() + 8);
    put_bytes(&mut out, 1, role.name.as_bytes());
    for p in &role.permissions {
        let mut perm = Vec::with_capacity(p.key.len() + p.range_end.len() + 8);
        put_int(&mut perm, 1, i64::from(p.perm_type.as_i32()));
        put_bytes(&mut perm, 2, &p.key);
        put_bytes(&mut perm, 3, &p.range_end);
        out.push((2 << 3) | 2);
        crate::export::put_varint(&mut out, perm.len() as u64);
        out.extend_from_slice(&perm);
    }
    out
}

fn plain<'a>(bucket: &'static str, entries: &'a [Entry<'a>]) -> Result<(), ImportError> {
    match entries.iter().find(|e| e.is_bucket) {
        Some(e) => Err(bad(bucket, e.key, "nested bucket")),
        None => Ok(()),
    }
}

/// Decodes and checks etcd's auth buckets. `None` when the file has none of `auth`,
/// `authUsers` and `authRoles` (nothing to import); a missing one of them reads as empty.
/// The dump is checked and normalised by [`rusd_auth::persist::normalize_dump`] (etcd's order
/// is kept); a state it refuses (an invalid permission range, a user holding an empty role
/// name) is an [`ImportError::Auth`] with [`rusd_auth::AuthError::InvalidDump`].
pub fn parse_auth(file: &BoltFile<'_>) -> Result<Option<AuthDump>, ImportError> {
    let auth = file.bucket(b"auth")?;
    let users = file.bucket(b"authUsers")?;
    let roles = file.bucket(b"authRoles")?;
    if auth.is_none() && users.is_none() && roles.is_none() {
        return Ok(None);
    }
    let mut dump = AuthDump::default();
    let auth = auth.unwrap_or_default();
    plain("auth", &auth)?;
    for e in &auth {
        match e.key {
            AUTH_ENABLED_KEY => {
                dump.enabled = match e.value {
                    [1] => true,
                    [0] => false,
                    v => return Err(bad("auth", e.key, format!("flag of {} bytes", v.len()))),
                }
            }
            AUTH_REVISION_KEY => {
                let v: [u8; 8] = e
                    .value
                    .try_into()
                    .map_err(|_| bad("auth", e.key, "not 8 bytes"))?;
                // etcd opens a store whose revision is 0 at revision 1 (`NewAuthStore`).
                dump.revision = u64::from_be_bytes(v).max(1);
            }
            _ => {}
        }
    }
    let users = users.unwrap_or_default();
    plain("authUsers", &users)?;
    for e in &users {
        let user = decode_user(e.value).map_err(|r| bad("authUsers", e.key, r))?;
        if user.name.as_bytes() != e.key {
            return Err(bad(
                "authUsers",
                e.key,
                format!("record of user {:?} under this key", user.name),
            ));
        }
        dump.users.push(user);
    }
    let roles = roles.unwrap_or_default();
    plain("authRoles", &roles)?;
    for e in &roles {
        let role = decode_role(e.value).map_err(|r| bad("authRoles", e.key, r))?;
        if role.name.as_bytes() != e.key {
            return Err(bad(
                "authRoles",
                e.key,
                format!("record of role {:?} under this key", role.name),
            ));
        }
        dump.roles.push(role);
    }
    Ok(Some(rusd_auth::persist::normalize_dump(&dump)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn user_round_trip() {
        let user = User {
            name: "alice".into(),
            password_hash: Some("$2a$10$abc".into()),
            roles: vec!["app".into(), "ops".into()],
            options: UserOptions::default(),
        };
        let b = encode_user(&user);
        assert_eq!(
            b,
            [
                &hex("0a05")[..],
                b"alice",
                &hex("120a")[..],
                b"$2a$10$abc",
                &hex("1a03")[..],
                b"app",
                &hex("1a03")[..],
                b"ops",
                &hex("2200")[..],
            ]
            .concat()
        );
        assert_eq!(decode_user(&b).unwrap(), user);
        let nopw = User {
            name: "n".into(),
            password_hash: None,
            roles: vec![],
            options: UserOptions { no_password: true },
        };
        assert_eq!(encode_user(&nopw), hex("0a016e22020801"));
        assert_eq!(decode_user(&encode_user(&nopw)).unwrap(), nopw);
        // Without the options message (etcd before 3.4): a password user.
        let old = decode_user(&hex("0a0162")).unwrap();
        assert_eq!((old.name.as_str(), old.options.no_password), ("b", false));
    }

    #[test]
    fn role_round_trip() {
        let role = Role {
            name: "app".into(),
            permissions: vec![
                Permission::prefix(PermissionType::ReadWrite, "app/"),
                Permission::new(PermissionType::Read, "cfg", ""),
            ],
        };
        let b = encode_role(&role);
        assert_eq!(
            b,
            hex("0a03617070120e080212046170702f1a046170703012051203636667")
        );
        assert_eq!(decode_role(&b).unwrap(), role);
    }

    #[test]
    fn malformed_records_are_refused() {
        assert_eq!(
            decode_user(&hex("0a05616c")).unwrap_err(),
            "length-delimited field runs past the value"
        );
        assert_eq!(
            decode_user(&hex("0801")).unwrap_err(),
            "field 1 has the wrong wire type"
        );
        assert_eq!(
            decode_user(&hex("0a02ff00")).unwrap_err(),
            "user name is not UTF-8"
        );
        assert_eq!(
            decode_user(&hex("220308")).unwrap_err(),
            "length-delimited field runs past the value"
        );
        assert_eq!(
            decode_user(&hex("22020a00")).unwrap_err(),
            "options field 1 has the wrong wire type"
        );
        assert_eq!(
            decode_role(&hex("12020803")).unwrap_err(),
            "unknown permission type 3"
        );
        assert_eq!(
            decode_role(&hex("12021000")).unwrap_err(),
            "permission field 2 has the wrong wire type"
        );
        assert_eq!(
            decode_role(&hex("1203")).unwrap_err(),
            "length-delimited field runs past the value"
        );
    }
}
