//! A bounded in-memory cache of decoded `kv` rows, keyed by revision.
//!
//! A row of the `kv` tree never changes once written: only compaction deletes rows, and only a
//! snapshot restore ([`MvccStore::reload`](crate::MvccStore::reload)) replaces them (and may
//! reuse revision numbers). So a row read once can be answered from memory until one of these
//! happens, without any other invalidation:
//!
//! * a restore calls [`RowCache::clear`], which also bumps a generation so that a reader that
//!   fetched a row before the restore cannot insert it afterwards;
//! * a compaction calls [`RowCache::retain_compacted`], dropping the rows it deletes. A row
//!   inserted by a reader racing the compaction may outlive its deletion, but nothing reaches it
//!   again: the index no longer returns its revision and reads below the compaction revision are
//!   refused before any row is read. It is evicted in turn like any other entry.
//!
//! Only rows read from the engine are inserted (never rows being written), so a revision whose
//! write failed and is reused by the next write is never in the cache.
//!
//! The cache is split in shards by revision, each bounded by bytes (key + value + a fixed
//! per-entry overhead) and evicting in insertion order (FIFO). An entry is the row as the engine
//! stored it (one contiguous allocation, moved in from the engine's answer without a copy): a hit
//! costs one shard lock, one hash lookup and the decode of the row (a copy of its key and value).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::error::MvccResult;
use crate::kv::{KeyValue, HEADER_LEN};
use crate::revision::Revision;

/// Bytes charged per entry beyond its key and value: the row header, the map slot (revision
/// and boxed row, at the map's load factor), the eviction queue slot and the allocation header,
/// rounded up.
pub(crate) const ENTRY_OVERHEAD: usize = 160;

/// Number of shards (a power of two).
const SHARDS: usize = 16;

/// A multiplicative hasher for [`Revision`]s (two `i64`s); revisions are not attacker-chosen
/// hash keys in a way that matters here, and SipHash would cost a good share of a hit.
#[derive(Default)]
struct RevHasher(u64);

impl Hasher for RevHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i64(&mut self, v: i64) {
        self.0 = (self.0.rotate_left(5) ^ v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type RevMap = HashMap<Revision, Box<[u8]>, BuildHasherDefault<RevHasher>>;

#[derive(Default)]
struct Shard {
    map: RevMap,
    /// Insertion order, for eviction; may name entries already removed by compaction.
    order: VecDeque<Revision>,
    bytes: usize,
}

/// The row cache of one store. See the [module docs](self).
pub(crate) struct RowCache {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    generation: AtomicU64,
    bytes: AtomicUsize,
}

/// The charge of an encoded row (its header is part of [`ENTRY_OVERHEAD`]).
fn cost(row: &[u8]) -> usize {
    row.len().saturating_sub(HEADER_LEN) + ENTRY_OVERHEAD
}

impl RowCache {
    /// A cache holding at most `capacity` bytes (as charged by [`ENTRY_OVERHEAD`]); `None` when
    /// `capacity` is 0.
    pub(crate) fn new(capacity: usize) -> Option<RowCache> {
        if capacity == 0 {
            return None;
        }
        Some(RowCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: (capacity / SHARDS).max(1),
            generation: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
        })
    }

    fn shard(&self, rev: Revision) -> &Mutex<Shard> {
        let h = (rev.main as u64 ^ (rev.sub as u64).rotate_left(32))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> 60) as usize & (SHARDS - 1)]
    }

    /// The generation to pass to [`insert`](Self::insert); take it before reading the row.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Decodes the row of `rev` into `kv` if cached; true on a hit (`kv` unchanged on a miss).
    pub(crate) fn get_into(&self, rev: Revision, kv: &mut KeyValue) -> MvccResult<bool> {
        match self.shard(rev).lock().map.get(&rev) {
            Some(row) => KeyValue::decode_into(row, kv).map(|()| true),
            None => Ok(false),
        }
    }

    /// The decoded row of `rev`, if cached.
    #[cfg(test)]
    pub(crate) fn get(&self, rev: Revision) -> MvccResult<Option<KeyValue>> {
        let mut kv = KeyValue::default();
        Ok(self.get_into(rev, &mut kv)?.then_some(kv))
    }

    /// Caches `row`, the encoded row of `rev` (already decoded once, so known to be well
    /// formed), read from the engine after [`generation`](Self::generation) returned
    /// `generation`; ignored when a [`clear`](Self::clear) came in between or the row alone
    /// exceeds a shard.
    pub(crate) fn insert(&self, generation: u64, rev: Revision, row: Vec<u8>) {
        let c = cost(&row);
        if c > self.shard_capacity {
            return;
        }
        let mut shard = self.shard(rev).lock();
        // Checked under the shard lock: `clear` bumps the generation before it locks the
        // shards, so an insert either sees the new generation or is cleared afterwards.
        if self.generation.load(Ordering::Acquire) != generation || shard.map.contains_key(&rev) {
            return;
        }
        let mut freed = 0;
        while shard.bytes + c > self.shard_capacity {
            let Some(old) = shard.order.pop_front() else {
                break;
            };
            if let Some(gone) = shard.map.remove(&old) {
                let g = cost(&gone);
                shard.bytes -= g;
                freed += g;
            }
        }
        shard.map.insert(rev, row.into_boxed_slice());
        shard.order.push_back(rev);
        shard.bytes += c;
        drop(shard);
        self.bytes.fetch_add(c, Ordering::Relaxed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Empties the cache and makes inserts of rows read before this call no-ops.
    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            self.bytes.fetch_sub(s.bytes, Ordering::Relaxed);
            *s = Shard::default();
        }
    }

    /// Drops the rows a compaction at `revision` deletes: main revision `<= revision` and not in
    /// `available`.
    pub(crate) fn retain_compacted(&self, revision: i64, available: &HashSet<Revision>) {
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            let mut freed = 0;
            s.map.retain(|rev, row| {
                let keep = rev.main > revision || available.contains(rev);
                if !keep {
                    freed += cost(row);
                }
                keep
            });
            s.bytes -= freed;
            let Shard { map, order, .. } = &mut *s;
            order.retain(|rev| map.contains_key(rev));
            drop(s);
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
        }
    }

    /// Bytes currently charged.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of cached rows.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(i: i64, value_len: usize) -> KeyValue {
        KeyValue {
            key: format!("k{i:03}").into_bytes(),
            value: vec![i as u8; value_len],
            create_revision: i,
            mod_revision: i,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn zero_capacity_is_no_cache() {
        assert!(RowCache::new(0).is_none());
    }

    #[test]
    fn hit_miss_and_byte_accounting() {
        let c = RowCache::new(1 << 20).unwrap();
        let g = c.generation();
        assert_eq!(c.get(Revision::new(2, 0)).unwrap(), None);
        c.insert(g, Revision::new(2, 0), kv(2, 10).encode());
        c.insert(g, Revision::new(3, 1), kv(3, 20).encode());
        // A second insert of a cached revision changes nothing.
        c.insert(g, Revision::new(3, 1), kv(3, 20).encode());
        assert_eq!(c.get(Revision::new(2, 0)).unwrap(), Some(kv(2, 10)));
        assert_eq!(c.get(Revision::new(3, 1)).unwrap(), Some(kv(3, 20)));
        assert_eq!(c.get(Revision::new(3, 0)).unwrap(), None);
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), (4 + 10) + (4 + 20) + 2 * ENTRY_OVERHEAD);
    }

    #[test]
    fn bounded_by_capacity_evicting_oldest_first() {
        // 16 shards of 1 000 bytes; each entry costs 4 + 100 + 160 = 264, so 3 fit per shard.
        let c = RowCache::new(16 * 1000).unwrap();
        let g = c.generation();
        for i in 1..=900 {
            c.insert(g, Revision::new(i, 0), kv(i, 100).encode());
        }
        assert!(c.bytes() <= 16 * 1000, "{} bytes", c.bytes());
        assert_eq!(c.bytes(), c.len() * 264);
        // The newest row is always kept, the first one long evicted.
        assert_eq!(c.get(Revision::new(900, 0)).unwrap(), Some(kv(900, 100)));
        assert_eq!(c.len(), 16 * 3);
        assert_eq!(c.get(Revision::new(1, 0)).unwrap(), None);
        // A row larger than a shard is not cached.
        c.insert(g, Revision::new(950, 0), kv(950, 2000).encode());
        assert_eq!(c.get(Revision::new(950, 0)).unwrap(), None);
    }

    #[test]
    fn clear_empties_and_refuses_stale_inserts() {
        let c = RowCache::new(1 << 20).unwrap();
        let before = c.generation();
        c.insert(before, Revision::new(2, 0), kv(2, 10).encode());
        c.clear();
        assert_eq!(c.get(Revision::new(2, 0)).unwrap(), None);
        assert_eq!(c.bytes(), 0);
        // A row read before the clear (a restore) is not inserted after it.
        c.insert(before, Revision::new(5, 0), kv(5, 10).encode());
        assert_eq!(c.get(Revision::new(5, 0)).unwrap(), None);
        let after = c.generation();
        assert_ne!(after, before);
        c.insert(after, Revision::new(5, 0), kv(5, 10).encode());
        assert_eq!(c.get(Revision::new(5, 0)).unwrap(), Some(kv(5, 10)));
    }

    #[test]
    fn compaction_drops_deleted_rows_only() {
        let c = RowCache::new(1 << 20).unwrap();
        let g = c.generation();
        for i in 1..=6 {
            c.insert(g, Revision::new(i, 0), kv(i, 10).encode());
        }
        let available: HashSet<Revision> = [Revision::new(3, 0)].into_iter().collect();
        c.retain_compacted(4, &available);
        let left: Vec<i64> = (1..=6)
            .filter(|&i| c.get(Revision::new(i, 0)).unwrap().is_some())
            .collect();
        assert_eq!(left, vec![3, 5, 6]);
        assert_eq!(c.bytes(), 3 * (4 + 10 + ENTRY_OVERHEAD));
    }
}
