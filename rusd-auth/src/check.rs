//! Permission checks of requests (etcd `authStore.isOpPermitted`, `IsAdminPermitted` and
//! `etcdserver/apply_auth.go`).
//!
//! Every check passes while auth is disabled. Otherwise, for key operations (etcd
//! `isOpPermitted`), in this order:
//!
//! 1. `info.revision == 0` (no credentials): "etcdserver: user name is empty";
//! 2. `info.revision` older than the store's: "etcdserver: revision of auth store is old" —
//!    for reads and writes alike (etcd 3.4 has one `isOpPermitted` for both);
//! 3. unknown user: "etcdserver: permission denied";
//! 4. a user with the `root` role may do everything;
//! 5. the user's merged read or write intervals must cover the key or range.
//!
//! Admin checks (etcd `IsAdminPermitted`) do not look at the revision: empty user name →
//! "user name is empty", unknown user → "user name not found", no root role → "permission
//! denied".

use mvcc_core::request::{Compaction, DeleteRange, Put, Range, RequestOp, Txn};
use mvcc_core::txn::{TxnOp, TxnRequest};
use storage_api::Backend;

use crate::error::{AuthError, AuthResult};
use crate::model::AuthInfo;
use crate::perm_cache::Access;
use crate::store::{AuthStore, StateView};

/// The keys attached to a lease, for etcd's `checkLeasePuts` (a put that attaches a lease, and
/// a lease revoke, need write permission on every key already attached to the lease unless the
/// user is root). Implemented for closures `Fn(i64) -> Vec<Vec<u8>>`.
pub trait LeaseKeys {
    /// The keys attached to `lease` (empty for an unknown lease or lease 0).
    fn keys(&self, lease: i64) -> Vec<Vec<u8>>;
}

impl<F: Fn(i64) -> Vec<Vec<u8>>> LeaseKeys for F {
    fn keys(&self, lease: i64) -> Vec<Vec<u8>> {
        self(lease)
    }
}

/// A [`LeaseKeys`] without leases (every lease has no key).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLeases;

impl LeaseKeys for NoLeases {
    fn keys(&self, _lease: i64) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

fn op_permitted(
    v: &StateView<'_>,
    info: &AuthInfo,
    key: &[u8],
    range_end: &[u8],
    access: Access,
) -> AuthResult<()> {
    if !v.enabled() {
        return Ok(());
    }
    if info.revision == 0 {
        return Err(AuthError::UserEmpty);
    }
    if info.revision < v.revision() {
        return Err(AuthError::AuthOldRevision);
    }
    let Some(user) = v.user(&info.user) else {
        return Err(AuthError::PermissionDenied);
    };
    if user.has_root_role() {
        return Ok(());
    }
    match v.perms(&info.user) {
        Some(p) if p.permits(key, range_end, access) => Ok(()),
        _ => Err(AuthError::PermissionDenied),
    }
}

fn admin_permitted(v: &StateView<'_>, info: &AuthInfo) -> AuthResult<()> {
    if !v.enabled() {
        return Ok(());
    }
    if info.user.is_empty() {
        return Err(AuthError::UserEmpty);
    }
    let user = v.user(&info.user).ok_or(AuthError::UserNotFound)?;
    if !user.has_root_role() {
        return Err(AuthError::PermissionDenied);
    }
    Ok(())
}

/// etcd `checkLeasePuts`/`checkLeasePutsKeys`: root may; else write permission on each key.
fn lease_puts(
    v: &StateView<'_>,
    info: &AuthInfo,
    lease: i64,
    leases: &dyn LeaseKeys,
) -> AuthResult<()> {
    if lease == 0 {
        return Ok(());
    }
    let keys = leases.keys(lease);
    lease_keys_writable(v, info, &keys)
}

fn lease_keys_writable(v: &StateView<'_>, info: &AuthInfo, keys: &[Vec<u8>]) -> AuthResult<()> {
    if admin_permitted(v, info).is_ok() {
        return Ok(());
    }
    for k in keys {
        op_permitted(v, info, k, &[], Access::Write)?;
    }
    Ok(())
}

/// etcd `checkPutAuth`: write on the key, the lease's attached keys, read on the key for
/// `prev_kv`.
fn put_auth(
    v: &StateView<'_>,
    info: &AuthInfo,
    key: &[u8],
    lease: i64,
    prev_kv: bool,
    leases: &dyn LeaseKeys,
) -> AuthResult<()> {
    op_permitted(v, info, key, &[], Access::Write)?;
    lease_puts(v, info, lease, leases)?;
    if prev_kv {
        op_permitted(v, info, key, &[], Access::Read)?;
    }
    Ok(())
}

/// etcd `checkTxnAuth` over `mvcc_core::request::Txn`.
fn txn_auth(v: &StateView<'_>, info: &AuthInfo, t: &Txn, leases: &dyn LeaseKeys) -> AuthResult<()> {
    for c in &t.compare {
        op_permitted(v, info, &c.key, &c.range_end, Access::Read)?;
    }
    txn_reqs(v, info, &t.success, leases)?;
    txn_reqs(v, info, &t.failure, leases)
}

/// etcd `checkTxnReqsPermission`.
fn txn_reqs(
    v: &StateView<'_>,
    info: &AuthInfo,
    ops: &[RequestOp],
    leases: &dyn LeaseKeys,
) -> AuthResult<()> {
    for op in ops {
        match op {
            RequestOp::Range(r) => op_permitted(v, info, &r.key, &r.range_end, Access::Read)?,
            RequestOp::Put(p) => put_auth(v, info, &p.key, p.lease, p.prev_kv, leases)?,
            RequestOp::DeleteRange(d) => {
                if d.prev_kv {
                    op_permitted(v, info, &d.key, &d.range_end, Access::Read)?;
                }
                op_permitted(v, info, &d.key, &d.range_end, Access::Write)?;
            }
            RequestOp::Txn(t) => txn_auth(v, info, t, leases)?,
        }
    }
    Ok(())
}

/// etcd `checkTxnAuth` over `mvcc_core::txn::TxnRequest`.
fn txn_request_auth(
    v: &StateView<'_>,
    info: &AuthInfo,
    t: &TxnRequest,
    leases: &dyn LeaseKeys,
) -> AuthResult<()> {
    for c in &t.compare {
        op_permitted(v, info, &c.key, &c.range_end, Access::Read)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            TxnOp::Range(r) => op_permitted(v, info, &r.key, &r.range_end, Access::Read)?,
            TxnOp::Put { key, lease, .. } => put_auth(v, info, key, *lease, false, leases)?,
            TxnOp::DeleteRange { key, range_end } => {
                op_permitted(v, info, key, range_end, Access::Write)?
            }
            TxnOp::Txn(t) => txn_request_auth(v, info, t, leases)?,
        }
    }
    Ok(())
}

impl<B: Backend> AuthStore<B> {
    /// etcd `IsRangePermitted`: read on `[key, range_end)` (etcd range conventions).
    pub fn check_read(&self, info: &AuthInfo, key: &[u8], range_end: &[u8]) -> AuthResult<()> {
        self.with_state(|v| op_permitted(v, info, key, range_end, Access::Read))
    }

    /// etcd `IsDeleteRangePermitted` / `IsPutPermitted` (empty `range_end` = one key).
    pub fn check_write(&self, info: &AuthInfo, key: &[u8], range_end: &[u8]) -> AuthResult<()> {
        self.with_state(|v| op_permitted(v, info, key, range_end, Access::Write))
    }

    /// A range: read on its key range.
    pub fn check_range(&self, info: &AuthInfo, r: &Range) -> AuthResult<()> {
        self.check_read(info, &r.key, &r.range_end)
    }

    /// A watch at creation: read on its key range (etcd `watchStream` `isWatchPermitted`).
    pub fn check_watch(&self, info: &AuthInfo, key: &[u8], range_end: &[u8]) -> AuthResult<()> {
        self.check_read(info, key, range_end)
    }

    /// A put (etcd `checkPutAuth` without leases): write on the key; read for `prev_kv`.
    pub fn check_put(&self, info: &AuthInfo, p: &Put) -> AuthResult<()> {
        self.check_put_with_leases(info, p, &NoLeases)
    }

    /// etcd `checkPutAuth`: also write on every key already attached to the put's lease.
    pub fn check_put_with_leases(
        &self,
        info: &AuthInfo,
        p: &Put,
        leases: &dyn LeaseKeys,
    ) -> AuthResult<()> {
        self.with_state(|v| put_auth(v, info, &p.key, p.lease, p.prev_kv, leases))
    }

    /// etcd `authApplierV3.DeleteRange`: write on the range, then read for `prev_kv`.
    pub fn check_delete_range(&self, info: &AuthInfo, d: &DeleteRange) -> AuthResult<()> {
        self.with_state(|v| {
            op_permitted(v, info, &d.key, &d.range_end, Access::Write)?;
            if d.prev_kv {
                op_permitted(v, info, &d.key, &d.range_end, Access::Read)?;
            }
            Ok(())
        })
    }

    /// etcd `checkTxnAuth`: read on every compare, then every op of `success` and of
    /// `failure`, nested transactions included, whichever branch would run.
    pub fn check_txn(&self, info: &AuthInfo, t: &Txn) -> AuthResult<()> {
        self.check_txn_with_leases(info, t, &NoLeases)
    }

    /// [`AuthStore::check_txn`] with lease-attached keys for the puts.
    pub fn check_txn_with_leases(
        &self,
        info: &AuthInfo,
        t: &Txn,
        leases: &dyn LeaseKeys,
    ) -> AuthResult<()> {
        self.with_state(|v| txn_auth(v, info, t, leases))
    }

    /// [`AuthStore::check_txn`] for the `mvcc_core::txn::TxnRequest` form.
    pub fn check_txn_request(
        &self,
        info: &AuthInfo,
        t: &TxnRequest,
        leases: &dyn LeaseKeys,
    ) -> AuthResult<()> {
        self.with_state(|v| txn_request_auth(v, info, t, leases))
    }

    /// etcd `LeaseRevoke` (`checkLeasePutsKeys`): root may; otherwise write permission on every
    /// key attached to the lease (a revoke deletes them).
    pub fn check_lease_revoke(&self, info: &AuthInfo, keys_attached: &[Vec<u8>]) -> AuthResult<()> {
        self.with_state(|v| lease_keys_writable(v, info, keys_attached))
    }

    /// etcd `checkLeaseTimeToLive` with keys: no credentials is "user name is empty"; root
    /// may; otherwise read permission on every attached key.
    pub fn check_lease_time_to_live(
        &self,
        info: &AuthInfo,
        keys_attached: &[Vec<u8>],
    ) -> AuthResult<()> {
        self.with_state(|v| {
            if !v.enabled() {
                return Ok(());
            }
            if info.user.is_empty() {
                return Err(AuthError::UserEmpty);
            }
            if admin_permitted(v, info).is_ok() {
                return Ok(());
            }
            for k in keys_attached {
                op_permitted(v, info, k, &[], Access::Read)?;
            }
            Ok(())
        })
    }

    /// etcd `IsAdminPermitted`: snapshot, defragment, hash, status, move-leader, member and
    /// alarm changes, and every auth-management request need the `root` role.
    pub fn check_admin(&self, info: &AuthInfo) -> AuthResult<()> {
        self.with_state(|v| admin_permitted(v, info))
    }

    /// Compaction needs the `root` role here (etcd 3.4 lets any authenticated user compact;
    /// rusd is stricter on purpose: compaction destroys history of keys outside the grant).
    pub fn check_compaction(&self, info: &AuthInfo, _c: &Compaction) -> AuthResult<()> {
        self.check_admin(info)
    }

    /// etcd `requireAuthInfo` (alarm list and similar): any authenticated user.
    pub fn check_authenticated(&self, info: &AuthInfo) -> AuthResult<()> {
        self.with_state(|v| {
            if v.enabled() && info.user.is_empty() {
                return Err(AuthError::UserEmpty);
            }
            Ok(())
        })
    }

    /// etcd `authApplierV3.UserGet`: root, or the user asking about itself.
    pub fn check_user_get(&self, info: &AuthInfo, name: &str) -> AuthResult<()> {
        match self.check_admin(info) {
            Err(e) if name != info.user => Err(e),
            _ => Ok(()),
        }
    }

    /// etcd `authApplierV3.RoleGet`: root, or a user holding the role.
    pub fn check_role_get(&self, info: &AuthInfo, role: &str) -> AuthResult<()> {
        match self.check_admin(info) {
            Err(e) if !self.has_role(&info.user, role) => Err(e),
            _ => Ok(()),
        }
    }
}
