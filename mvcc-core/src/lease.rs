//! Leases: grant, revoke, keep-alive and expiry driven by an injectable [`Clock`].
//!
//! A lease is persisted in the `lease` tree as `id (8-byte big-endian) → [1u8, ttl i64 BE]`.
//! Attachments (which keys a lease holds) are not stored separately: they are part of each
//! key's latest row in the `kv` tree (its `lease` field), written in the same atomic commit as
//! the key, and rebuilt from those rows on recovery, as etcd does. On recovery every lease gets a
//! fresh TTL (etcd refreshes leases when a leader is elected).
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

/// Version byte of a persisted lease record.
const LEASE_FORMAT_VERSION: u8 = 1;

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

#[derive(Debug, Clone)]
struct LeaseEntry {
    ttl: i64,
    expiry: Duration,
    keys: BTreeSet<Vec<u8>>,
}

/// The in-memory lease table (leases and key attachments).
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    leases: BTreeMap<i64, LeaseEntry>,
    key_lease: HashMap<Vec<u8>, i64>,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

fn encode_lease(ttl: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(9);
    v.push(LEASE_FORMAT_VERSION);
    v.extend_from_slice(&ttl.to_be_bytes());
    v
}

impl LeaseTable {
    /// Loads every lease record of the backend, each expiring `ttl` after `now`.
    pub(crate) fn load<B: Backend>(&mut self, backend: &B, now: Duration) -> MvccResult<()> {
        for (k, v) in backend.scan(Tree::Lease, &[], &[], 0)? {
            let id = crate::store::decode_i64(&k, "lease id")?;
            if v.len() != 9 || v[0] != LEASE_FORMAT_VERSION {
                return Err(MvccError::Corruption(format!("bad lease record for {id}")));
            }
            let ttl = crate::store::decode_i64(&v[1..], "lease ttl")?;
            self.leases.insert(
                id,
                LeaseEntry {
                    ttl,
                    expiry: now.saturating_add(ttl_duration(ttl)),
                    keys: BTreeSet::new(),
                },
            );
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
        self.leases.get(&id).map(|e| {
            let left = e.expiry.saturating_sub(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            LeaseInfo {
                id,
                ttl: e.ttl,
                remaining_ttl: i64::try_from(secs).unwrap_or(i64::MAX),
                keys: e.keys.iter().cloned().collect(),
            }
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
        let row = encode_lease(ttl);
        let lost_ack = match self.backend_put(Tree::Lease, &id.to_be_bytes(), &row) {
            Ok(()) => None,
            // Applied when the lease row reads as written (see `MvccStore::settle`).
            Err(e) => Some(self.settle(e.into(), Tree::Lease, &id.to_be_bytes(), Some(&row))?),
        };
        let ticket = self.group.written();
        let now = self.config.clock.now();
        self.leases.lock().leases.insert(
            id,
            LeaseEntry {
                ttl,
                expiry: now.saturating_add(ttl_duration(ttl)),
                keys: BTreeSet::new(),
            },
        );
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
        let rev = self.commit_then(ctx, extra, || {
            self.leases.lock().leases.remove(&id);
        })?;
        let ticket = self.ticket();
        drop(_w);
        self.wait_durable(ticket)?;
        Ok(rev)
    }

    /// Renews lease `id` for its full TTL; returns the TTL. An unknown or already expired lease
    /// fails with [`MvccError::LeaseNotFound`] (an expired lease is revoked by
    /// [`expire_leases`](Self::expire_leases)).
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

    /// Renews every lease, expired ones included, to its full TTL from now (etcd's lessor
    /// `Promote`): a member that becomes leader calls it, since the keep-alives went to the
    /// previous leader. Changes nothing persistent.
    pub fn lease_refresh_all(&self) {
        let now = self.config.clock.now();
        for entry in self.leases.lock().leases.values_mut() {
            entry.expiry = now.saturating_add(ttl_duration(entry.ttl));
        }
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
