//! Leases: grant, revoke, keep-alive and expiry driven by an injectable [`Clock`].
//!
//! # Lease record
//! A lease is persisted in the `lease` tree under its id (8 bytes big-endian), in one of two
//! formats (see [`encode_lease_record`] / [`decode_lease_record`]):
//! * version 1, 9 bytes: `[1u8, ttl i64 BE]` — a lease without a checkpoint;
//! * version 2, 17 bytes: `[2u8, ttl i64 BE, remaining_ttl i64 BE]` — a lease with a
//!   checkpointed remaining TTL (etcd's `leasepb.Lease` field 3 `RemainingTTL`), `> 0`.
//!
//! A lease without a checkpoint is always written in version 1, so a store that never
//! checkpointed is byte-for-byte what older versions wrote and read. Stores imported by older
//! versions of `etcd-import` kept etcd's remaining TTL in a `meta` row instead
//! ([`META_LEGACY_IMPORTED_REMAINING_TTL`]); it is honoured for a version 1 record on open and
//! removed by the lease's next checkpoint or revoke.
//!
//! Attachments (which keys a lease holds) are not stored separately: they are part of each
//! key's latest row in the `kv` tree (its `lease` field), written in the same atomic commit as
//! the key, and rebuilt from those rows on recovery, as etcd does.
//!
//! # Checkpoints (etcd's lease checkpointing)
//! [`MvccStore::lease_checkpoint`] records a lease's remaining TTL (the replicated leader
//! proposes it periodically, see [`MvccStore::lease_remaining_ttls`]). It does not move the
//! lease's expiry: on recovery, and in [`MvccStore::lease_refresh_all`] (a new leader's
//! `Promote`), a lease with a checkpoint expires its checkpointed remaining TTL from now, one
//! without expires its full TTL from now. A checkpoint of 0 clears it (etcd's `Renew` proposes
//! that when it renews a checkpointed lease).
//!
//! Revoking a lease deletes every key still attached to it in one revision (keys in sorted
//! order) and removes the lease record in the same commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use storage_api::{Backend, Tree, WriteBatch};

use crate::error::{MvccError, MvccResult};
use crate::store::MvccStore;
use crate::tree_index::KeyRange;

/// Version byte of a lease record without a checkpoint (see the [module docs](self)).
pub const LEASE_RECORD_V1: u8 = 1;
/// Version byte of a lease record with a checkpointed remaining TTL.
pub const LEASE_RECORD_V2: u8 = 2;
/// Prefix of the `meta` rows in which older versions of `etcd-import` kept etcd's
/// checkpointed remaining TTL: the prefix, the lease id (8 bytes big-endian) → the remaining
/// TTL in seconds (8 bytes big-endian). Read on open for leases whose record has no
/// checkpoint; new imports write the lease record's own field instead.
pub const META_LEGACY_IMPORTED_REMAINING_TTL: &[u8] = b"etcdImport/remainingTTL/";

/// The `meta` key of lease `id`'s legacy imported remaining TTL
/// ([`META_LEGACY_IMPORTED_REMAINING_TTL`]).
pub fn legacy_remaining_ttl_key(id: i64) -> Vec<u8> {
    let mut k = META_LEGACY_IMPORTED_REMAINING_TTL.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Encodes a lease record: version 1 when `remaining_ttl <= 0` (no checkpoint), else
/// version 2 with the remaining TTL.
pub fn encode_lease_record(ttl: i64, remaining_ttl: i64) -> Vec<u8> {
    if remaining_ttl <= 0 {
        let mut v = Vec::with_capacity(9);
        v.push(LEASE_RECORD_V1);
        v.extend_from_slice(&ttl.to_be_bytes());
        v
    } else {
        let mut v = Vec::with_capacity(17);
        v.push(LEASE_RECORD_V2);
        v.extend_from_slice(&ttl.to_be_bytes());
        v.extend_from_slice(&remaining_ttl.to_be_bytes());
        v
    }
}

/// Decodes a lease record into `(ttl, checkpointed remaining TTL)` (0: no checkpoint);
/// `None` for bytes in neither format.
pub fn decode_lease_record(v: &[u8]) -> Option<(i64, i64)> {
    let i64_at = |at: usize| -> Option<i64> {
        let bytes: [u8; 8] = v.get(at..at + 8)?.try_into().ok()?;
        Some(i64::from_be_bytes(bytes))
    };
    match (v.first(), v.len()) {
        (Some(&LEASE_RECORD_V1), 9) => Some((i64_at(1)?, 0)),
        (Some(&LEASE_RECORD_V2), 17) => Some((i64_at(1)?, i64_at(9)?.max(0))),
        _ => None,
    }
}

/// A monotonic time source for lease expiry.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Time elapsed since an arbitrary fixed origin; never decreases.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock moved by hand, for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<Duration>,
}

impl ManualClock {
    /// A manual clock at time zero, ready to share with a store.
    pub fn new() -> Arc<Self> {
        Arc::new(ManualClock::default())
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock();
        *now = now.saturating_add(d);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.lock()
    }
}

/// What a lease looks like from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LeaseInfo {
    /// The lease id.
    pub id: i64,
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// Whole seconds left before expiry (0 once expired), rounded up as etcd reports it.
    pub remaining_ttl: i64,
    /// The attached keys, sorted.
    pub keys: Vec<Vec<u8>>,
}

/// A lease's remaining TTL next to its last checkpoint, for a checkpoint scheduler
/// ([`MvccStore::lease_remaining_ttls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRemaining {
    /// The lease id.
    pub id: i64,
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// Whole seconds left before expiry by this store's clock (rounded up; 0 once expired).
    pub remaining_ttl: i64,
    /// The checkpointed remaining TTL in seconds; 0 when the lease has none.
    pub checkpointed_ttl: i64,
}

impl LeaseRemaining {
    /// The TTL the lease would restart with now (on recovery or under a new leader): the
    /// checkpoint, or the full TTL without one.
    pub fn resume_ttl(&self) -> i64 {
        if self.checkpointed_ttl > 0 {
            self.checkpointed_ttl
        } else {
            self.ttl
        }
    }
}

#[derive(Debug, Clone)]
struct LeaseEntry {
    ttl: i64,
    /// The checkpointed remaining TTL in seconds, 0 for none.
    checkpoint: i64,
    expiry: Duration,
    keys: BTreeSet<Vec<u8>>,
}

impl LeaseEntry {
    /// The TTL the lease restarts with: its checkpoint, or its full TTL.
    fn resume_ttl(&self) -> i64 {
        if self.checkpoint > 0 {
            self.checkpoint
        } else {
            self.ttl
        }
    }
}

/// The in-memory lease table (leases and key attachments).
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    leases: BTreeMap<i64, LeaseEntry>,
    key_lease: HashMap<Vec<u8>, i64>,
    /// Leases with a legacy imported remaining-TTL `meta` row still in the backend.
    legacy: BTreeSet<i64>,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// Whole seconds from `now` to `expiry`, rounded up (0 once expired).
fn secs_left(expiry: Duration, now: Duration) -> i64 {
    let left = expiry.saturating_sub(now);
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl LeaseTable {
    /// Loads every lease record of the backend, each expiring its checkpointed remaining TTL
    /// (or, without one, its full TTL) after `now`.
    pub(crate) fn load<B: Backend>(&mut self, backend: &B, now: Duration) -> MvccResult<()> {
        let mut legacy = BTreeMap::new();
        for (k, v) in backend.scan_prefix(Tree::Meta, META_LEGACY_IMPORTED_REMAINING_TTL, 0)? {
            let id = crate::store::decode_i64(
                &k[META_LEGACY_IMPORTED_REMAINING_TTL.len()..],
                "imported remaining-TTL lease id",
            )?;
            let remaining = crate::store::decode_i64(&v, "imported remaining TTL")?;
            legacy.insert(id, remaining);
        }
        // A row without a lease (revoked by an older version) is deleted by a grant of its id.
        self.legacy.extend(legacy.keys().copied());
        for (k, v) in backend.scan(Tree::Lease, &[], &[], 0)? {
            let id = crate::store::decode_i64(&k, "lease id")?;
            let (ttl, mut checkpoint) = decode_lease_record(&v)
                .ok_or_else(|| MvccError::Corruption(format!("bad lease record for {id}")))?;
            if let Some(remaining) = legacy.get(&id) {
                if checkpoint == 0 {
                    checkpoint = (*remaining).max(0);
                }
            }
            let entry = LeaseEntry {
                ttl,
                checkpoint,
                expiry: Duration::ZERO,
                keys: BTreeSet::new(),
            };
            let expiry = now.saturating_add(ttl_duration(entry.resume_ttl()));
            self.leases.insert(id, LeaseEntry { expiry, ..entry });
        }
        Ok(())
    }

    pub(crate) fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Attaches `key` to `lease` (detaching it from any previous lease). Unknown leases are
    /// ignored (they were validated before the write).
    pub(crate) fn attach(&mut self, key: &[u8], lease: i64) {
        self.detach(key);
        if let Some(entry) = self.leases.get_mut(&lease) {
            entry.keys.insert(key.to_vec());
            self.key_lease.insert(key.to_vec(), lease);
        }
    }

    /// Detaches `key` from its lease, if any.
    pub(crate) fn detach(&mut self, key: &[u8]) {
        if self.key_lease.is_empty() {
            return;
        }
        if let Some(old) = self.key_lease.remove(key) {
            if let Some(entry) = self.leases.get_mut(&old) {
                entry.keys.remove(key);
            }
        }
    }

    fn info(&self, id: i64, now: Duration) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|e| LeaseInfo {
            id,
            ttl: e.ttl,
            remaining_ttl: secs_left(e.expiry, now),
            keys: e.keys.iter().cloned().collect(),
        })
    }
}

impl<B: Backend> MvccStore<B> {
    /// Grants a lease of `ttl` seconds. `id == 0` picks the next free id (greater than every
    /// existing one). Fails with [`MvccError::LeaseExists`] for a taken id and
    /// [`MvccError::InvalidArgument`] for a negative id or a TTL `<= 0`. Does not change the
    /// revision.
    pub fn lease_grant(&self, id: i64, ttl: i64) -> MvccResult<LeaseInfo> {
        self.check_writable()?;
        if id < 0 {
            return Err(MvccError::InvalidArgument(format!(
                "negative lease id {id}"
            )));
        }
        if ttl <= 0 {
            return Err(MvccError::InvalidArgument(format!(
                "lease ttl {ttl} must be > 0"
            )));
        }
        let _w = self.lock_write();
        self.check_writable()?;
        let id = if id == 0 {
            let table = self.leases.lock();
            table
                .leases
                .keys()
                .next_back()
                .map_or(1, |m| m.saturating_add(1))
        } else {
            id
        };
        if self.leases.lock().contains(id) {
            return Err(MvccError::LeaseExists(id));
        }
        let row = encode_lease_record(ttl, 0);
        let legacy = self.leases.lock().legacy.contains(&id);
        let lost_ack = if legacy {
            // A stale legacy remaining-TTL row of this id goes in the same write.
            let mut extra = WriteBatch::with_capacity(2);
            extra.put(Tree::Lease, id.to_be_bytes().to_vec(), row);
            extra.delete(Tree::Meta, legacy_remaining_ttl_key(id));
            let mut applied = false;
            match self.commit_then(self.begin_write(), extra, || applied = true) {
                Ok(_) => None,
                Err(e) if applied => Some(e),
                Err(e) => return Err(e),
            }
        } else {
            match self.backend_put(Tree::Lease, &id.to_be_bytes(), &row) {
                Ok(()) => None,
                // Applied when the lease row reads as written (see `MvccStore::settle`).
                Err(e) => {
                    Some(self.settle(e.into(), Tree::Lease, &id.to_be_bytes(), Some(&row))?)
                }
            }
        };
        let ticket = self.group.written();
        let now = self.config.clock.now();
        let mut table = self.leases.lock();
        table.legacy.remove(&id);
        table.leases.insert(
            id,
            LeaseEntry {
                ttl,
                checkpoint: 0,
                expiry: now.saturating_add(ttl_duration(ttl)),
                keys: BTreeSet::new(),
            },
        );
        drop(table);
        drop(_w);
        if let Some(e) = lost_ack {
            return Err(e);
        }
        self.wait_durable(ticket)?;
        Ok(LeaseInfo {
            id,
            ttl,
            remaining_ttl: ttl,
            keys: Vec::new(),
        })
    }

    /// Revokes lease `id`: deletes every key still attached to it in one revision (none if no
    /// key exists any more) and removes the lease, in one commit. Returns the revision after the
    /// revoke. Fails with [`MvccError::LeaseNotFound`].
    pub fn lease_revoke(&self, id: i64) -> MvccResult<i64> {
        self.check_writable()?;
        let _w = self.lock_write();
        let keys: Vec<Vec<u8>> = {
            let table = self.leases.lock();
            let entry = table.leases.get(&id).ok_or(MvccError::LeaseNotFound(id))?;
            entry.keys.iter().cloned().collect()
        };
        let mut ctx = self.begin_write();
        for key in &keys {
            ctx.delete_range(&KeyRange::Single(key.clone()), false)?;
        }
        let mut extra = WriteBatch::new();
        extra.delete(Tree::Lease, id.to_be_bytes().to_vec());
        if self.leases.lock().legacy.contains(&id) {
            extra.delete(Tree::Meta, legacy_remaining_ttl_key(id));
        }
        let rev = self.commit_then(ctx, extra, || {
            let mut table = self.leases.lock();
            table.leases.remove(&id);
            table.legacy.remove(&id);
        })?;
        let ticket = self.ticket();
        drop(_w);
        self.wait_durable(ticket)?;
        Ok(rev)
    }

    /// Renews lease `id` for its full TTL; returns the TTL. An unknown or already expired lease
    /// fails with [`MvccError::LeaseNotFound`] (an expired lease is revoked by
    /// [`expire_leases`](Self::expire_leases)).
    ///
    /// Changes nothing persistent, a checkpoint included: as etcd's `Renew`, the caller clears
    /// a checkpoint ([`lease_checkpointed_ttl`](Self::lease_checkpointed_ttl) `> 0`) with
    /// [`lease_checkpoint`](Self::lease_checkpoint)`(id, 0)` — through the log when the store
    /// is replicated — so that a restart does not resume the lease from a stale checkpoint.
    pub fn lease_keep_alive(&self, id: i64) -> MvccResult<i64> {
        self.check_open()?;
        let now = self.config.clock.now();
        let mut table = self.leases.lock();
        let entry = table
            .leases
            .get_mut(&id)
            .ok_or(MvccError::LeaseNotFound(id))?;
        if entry.expiry <= now {
            return Err(MvccError::LeaseNotFound(id));
        }
        entry.expiry = now.saturating_add(ttl_duration(entry.ttl));
        Ok(entry.ttl)
    }

    /// Renews every lease, expired ones included, from now (etcd's lessor `Promote`): a lease
    /// with a checkpoint for its checkpointed remaining TTL, any other for its full TTL. A
    /// member that becomes leader calls it, since the keep-alives went to the previous leader.
    /// Changes nothing persistent.
    pub fn lease_refresh_all(&self) {
        let now = self.config.clock.now();
        for entry in self.leases.lock().leases.values_mut() {
            entry.expiry = now.saturating_add(ttl_duration(entry.resume_ttl()));
        }
    }

    /// Records lease `id`'s remaining TTL (etcd's `LeaseCheckpoint`), persisted in its lease
    /// record; `remaining_ttl == 0` clears the checkpoint. Does not move the lease's current
    /// expiry (see the [module docs](self#checkpoints-etcds-lease-checkpointing)) and does not
    /// change the revision. Fails with [`MvccError::LeaseNotFound`] for an unknown lease (etcd
    /// ignores it: nothing changes either way) and [`MvccError::InvalidArgument`] for a
    /// negative TTL.
    pub fn lease_checkpoint(&self, id: i64, remaining_ttl: i64) -> MvccResult<()> {
        self.check_writable()?;
        if remaining_ttl < 0 {
            return Err(MvccError::InvalidArgument(format!(
                "lease remaining ttl {remaining_ttl} must be >= 0"
            )));
        }
        let _w = self.lock_write();
        self.check_writable()?;
        let (ttl, unchanged, legacy) = {
            let table = self.leases.lock();
            let entry = table.leases.get(&id).ok_or(MvccError::LeaseNotFound(id))?;
            let legacy = table.legacy.contains(&id);
            (entry.ttl, entry.checkpoint == remaining_ttl, legacy)
        };
        if unchanged && !legacy {
            return Ok(());
        }
        let mut extra = WriteBatch::with_capacity(2);
        extra.put(
            Tree::Lease,
            id.to_be_bytes().to_vec(),
            encode_lease_record(ttl, remaining_ttl),
        );
        if legacy {
            extra.delete(Tree::Meta, legacy_remaining_ttl_key(id));
        }
        self.commit_then(self.begin_write(), extra, || {
            let mut table = self.leases.lock();
            if let Some(entry) = table.leases.get_mut(&id) {
                entry.checkpoint = remaining_ttl;
            }
            table.legacy.remove(&id);
        })?;
        let ticket = self.ticket();
        drop(_w);
        self.wait_durable(ticket)
    }

    /// Lease `id`'s checkpointed remaining TTL in seconds (0: none);
    /// [`MvccError::LeaseNotFound`] if unknown.
    pub fn lease_checkpointed_ttl(&self, id: i64) -> MvccResult<i64> {
        self.leases
            .lock()
            .leases
            .get(&id)
            .map(|e| e.checkpoint)
            .ok_or(MvccError::LeaseNotFound(id))
    }

    /// Every lease's remaining TTL by this store's clock next to its checkpoint, ascending id:
    /// what a checkpoint scheduler compares to decide which leases to checkpoint.
    pub fn lease_remaining_ttls(&self) -> Vec<LeaseRemaining> {
        let now = self.config.clock.now();
        self.leases
            .lock()
            .leases
            .iter()
            .map(|(id, e)| LeaseRemaining {
                id: *id,
                ttl: e.ttl,
                remaining_ttl: secs_left(e.expiry, now),
                checkpointed_ttl: e.checkpoint,
            })
            .collect()
    }

    /// The state of lease `id`; [`MvccError::LeaseNotFound`] if unknown.
    pub fn lease_time_to_live(&self, id: i64) -> MvccResult<LeaseInfo> {
        self.check_open()?;
        // The lease table holds committed changes at once; in GroupSync answer only once they
        // are durable (after a failed flush: `MvccError::Failed`).
        self.wait_durable(self.ticket())?;
        let now = self.config.clock.now();
        self.leases
            .lock()
            .info(id, now)
            .ok_or(MvccError::LeaseNotFound(id))
    }

    /// Every lease id, ascending.
    pub fn leases(&self) -> Vec<i64> {
        self.leases.lock().leases.keys().copied().collect()
    }

    /// The ids of the leases whose TTL ran out, ascending.
    pub fn expired_leases(&self) -> Vec<i64> {
        let now = self.config.clock.now();
        self.leases
            .lock()
            .leases
            .iter()
            .filter(|(_, e)| e.expiry <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Revokes every expired lease (each in its own revision, ascending id); returns their ids.
    pub fn expire_leases(&self) -> MvccResult<Vec<i64>> {
        self.check_writable()?;
        let expired = self.expired_leases();
        let mut revoked = Vec::with_capacity(expired.len());
        for id in expired {
            match self.lease_revoke(id) {
                Ok(_) => revoked.push(id),
                // Revoked concurrently.
                Err(MvccError::LeaseNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_records_in_both_versions() {
        assert_eq!(encode_lease_record(600, 0), [1, 0, 0, 0, 0, 0, 0, 2, 0x58]);
        assert_eq!(
            encode_lease_record(600, 42),
            [2, 0, 0, 0, 0, 0, 0, 2, 0x58, 0, 0, 0, 0, 0, 0, 0, 42]
        );
        assert_eq!(
            decode_lease_record(&encode_lease_record(600, 0)),
            Some((600, 0))
        );
        assert_eq!(
            decode_lease_record(&encode_lease_record(600, 42)),
            Some((600, 42))
        );
        assert_eq!(decode_lease_record(&[1, 0, 0]), None);
        assert_eq!(decode_lease_record(&[3, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(decode_lease_record(&[]), None);
        assert_eq!(
            legacy_remaining_ttl_key(7),
            b"etcdImport/remainingTTL/\0\0\0\0\0\0\0\x07".to_vec()
        );
    }
}
