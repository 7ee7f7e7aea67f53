//! [`TreeIndex`]: the in-memory index over every key (etcd `treeIndex`), and [`KeyRange`], the
//! decoded form of etcd's `(key, range_end)` wire convention.

use std::borrow::Borrow;
use std::collections::{btree_map, BTreeMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{MvccError, MvccResult};
use crate::key_index::{Generation, History, KeyIndex};
use crate::kv::KeyValue;
use crate::revision::Revision;

/// A set of keys in etcd's wire convention.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRange {
    /// Exactly one key (`range_end` empty).
    Single(Vec<u8>),
    /// Every key `>= start` (`range_end == [0x00]`).
    From(Vec<u8>),
    /// Keys in `[start, end)` (empty when `start >= end`).
    Between(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    /// Decodes etcd's convention: empty `end` = the single key `start`; `end == [0]` = every key
    /// `>= start`; otherwise `[start, end)`.
    pub fn new(start: &[u8], end: &[u8]) -> Self {
        match end {
            [] => KeyRange::Single(start.to_vec()),
            [0] => KeyRange::From(start.to_vec()),
            _ => KeyRange::Between(start.to_vec(), end.to_vec()),
        }
    }

    /// The first key of the range.
    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Single(k) | KeyRange::From(k) | KeyRange::Between(k, _) => k,
        }
    }

    /// True when `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => key == k.as_slice(),
            KeyRange::From(k) => key >= k.as_slice(),
            KeyRange::Between(s, e) => key >= s.as_slice() && key < e.as_slice(),
        }
    }

    /// True when the range certainly holds no key.
    pub fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Between(s, e) if s >= e)
    }

    /// The range as `BTreeMap` bounds (`None` when empty).
    fn bounds(&self) -> Option<KeyBounds<'_>> {
        match self {
            KeyRange::Single(k) => Some((Bound::Included(k), Bound::Included(k))),
            KeyRange::From(k) => Some((Bound::Included(k), Bound::Unbounded)),
            KeyRange::Between(s, e) if s < e => Some((Bound::Included(s), Bound::Excluded(e))),
            KeyRange::Between(..) => None,
        }
    }
}

/// Keys compacted per acquisition of the index write lock.
pub const COMPACT_CHUNK: usize = 10_000;

/// A pair of `BTreeMap` range bounds over byte keys.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Longest key stored inline in the index (no heap allocation, no pointer to follow while
/// searching).
const INLINE_KEY: usize = 22;

/// A key of the index: short keys inline, longer ones in an exact-size heap slice.
///
/// An inline key is its bytes, zero-padded to [`INLINE_KEY`], followed by its length: two
/// overlapping big-endian words (bytes 0..16 and 15..23) order two inline keys by their padded
/// bytes, then by length, which is their byte order.
#[derive(Clone)]
enum IndexKey {
    Inline([u8; INLINE_KEY + 1]),
    Heap(Box<[u8]>),
}

impl IndexKey {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY + 1];
            bytes[..key.len()].copy_from_slice(key);
            bytes[INLINE_KEY] = key.len() as u8;
            IndexKey::Inline(bytes)
        } else {
            IndexKey::Heap(key.into())
        }
    }

    /// The inline key equal to `key`, for a lookup that compares inline keys word by word;
    /// `None` when `key` is too long to be inline.
    fn probe(key: &[u8]) -> Option<IndexKey> {
        (key.len() <= INLINE_KEY).then(|| IndexKey::new(key))
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            IndexKey::Inline(bytes) => &bytes[..usize::from(bytes[INLINE_KEY])],
            IndexKey::Heap(b) => b,
        }
    }
}

impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Byte-wise order of two inline keys (see [`IndexKey`]): bytes 0..16 as one big-endian word,
/// then bytes 15..23 (the last padded key bytes and the length) as another. Same order as
/// comparing the slices.
#[inline]
fn inline_order(a: &[u8; INLINE_KEY + 1], b: &[u8; INLINE_KEY + 1]) -> std::cmp::Ordering {
    const _: () = assert!(INLINE_KEY + 1 == 16 + 8 - 1);
    let hi = |x: &[u8; INLINE_KEY + 1]| {
        let mut w = [0u8; 16];
        w.copy_from_slice(&x[..16]);
        u128::from_be_bytes(w)
    };
    let lo = |x: &[u8; INLINE_KEY + 1]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&x[15..]);
        u64::from_be_bytes(w)
    };
    hi(a).cmp(&hi(b)).then_with(|| lo(a).cmp(&lo(b)))
}

impl Ord for IndexKey {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (IndexKey::Inline(a), IndexKey::Inline(b)) => inline_order(a, b),
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

/// The history of one key in the index. Most keys are written once and never deleted; they
/// take the inline form, with no allocation. Keys with one live generation take the
/// [`Entry::Live`] form. Any form may be wrapped in [`Entry::Held`] with its current row.
///
/// Invariant (kept under the index write lock): an entry is [`Entry::Held`] only while the row
/// it holds is the row of its newest revision and that revision is a put. Every change of the
/// newest revision (put, tombstone, recovery row) first unwraps it; compaction never removes
/// the newest revision of a live key, so it leaves it.
#[derive(Debug, Clone)]
enum Entry {
    /// One live generation created by its only revision `(main, sub)` (version 1).
    Single { main: i64, sub: u32 },
    /// One live generation (non-empty; its last revision is the newest modification).
    Live(Box<Generation>),
    /// Any other history.
    Full(Box<History>),
    /// One of the other forms with the encoded row of its newest revision, a put (behind one
    /// pointer, so an entry stays two words).
    Held(Box<Held>),
}

/// An entry with its current row (see [`Entry::Held`]).
#[derive(Debug, Clone)]
struct Held {
    /// Never [`Entry::Held`] itself.
    entry: Entry,
    row: Arc<[u8]>,
}

/// Appends `rev`, growing the vector by half its size (not doubling) when full.
fn push_rev(revs: &mut Vec<Revision>, rev: Revision) {
    if revs.len() == revs.capacity() {
        revs.reserve_exact((revs.len() / 2).max(2));
    }
    revs.push(rev);
}

impl Entry {
    /// The inline form of a history holding only `rev`, if `rev.sub` fits.
    fn single(rev: Revision) -> Option<Entry> {
        u32::try_from(rev.sub).ok().map(|sub| Entry::Single {
            main: rev.main,
            sub,
        })
    }

    /// The entry of a key first put at `rev`.
    fn put_new(rev: Revision) -> Entry {
        Entry::single(rev).unwrap_or_else(|| Entry::Full(Box::new(History::single(rev))))
    }

    /// The entry holding `history`, in its most compact form.
    fn from_history(history: History) -> Entry {
        if let Some(e) = history.as_single().and_then(Entry::single) {
            return e;
        }
        match history.into_live() {
            Ok(g) => Entry::Live(Box::new(g)),
            Err(h) => Entry::Full(Box::new(h)),
        }
    }

    /// The current row, if held.
    #[cfg(test)]
    fn row(&self) -> Option<&Arc<[u8]>> {
        match self {
            Entry::Held(h) => Some(&h.row),
            _ => None,
        }
    }

    /// The current row when a read at `at_rev` sees it (its revision is `<= at_rev`).
    #[inline]
    fn current_row(&self, at_rev: i64) -> Option<&Arc<[u8]>> {
        match self {
            Entry::Held(h) if h.entry.latest_main() <= at_rev => Some(&h.row),
            _ => None,
        }
    }

    /// Unwraps a held entry, returning its row.
    fn take_row(&mut self) -> Option<Arc<[u8]>> {
        if !matches!(self, Entry::Held(_)) {
            return None;
        }
        match std::mem::replace(self, Entry::Single { main: 0, sub: 0 }) {
            Entry::Held(h) => {
                let Held { entry, row } = *h;
                *self = entry;
                Some(row)
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// Holds `row` as the current row (replacing one held already).
    fn hold(&mut self, row: Arc<[u8]>) {
        self.take_row();
        let entry = std::mem::replace(self, Entry::Single { main: 0, sub: 0 });
        *self = Entry::Held(Box::new(Held { entry, row }));
    }

    /// Runs `f` on the full form of the history (converting a compact entry).
    fn with_full<T>(&mut self, f: impl FnOnce(&mut History) -> T) -> T {
        self.take_row();
        if let Entry::Full(h) = self {
            return f(h);
        }
        let mut h = Box::new(self.to_history());
        let out = f(&mut h);
        *self = Entry::Full(h);
        out
    }

    fn to_history(&self) -> History {
        match self {
            Entry::Single { main, sub } => History::single(Revision::new(*main, i64::from(*sub))),
            Entry::Live(g) => History::from_live((**g).clone()),
            Entry::Full(h) => (**h).clone(),
            Entry::Held(h) => h.entry.to_history(),
        }
    }

    fn get(&self, at_rev: i64) -> MvccResult<(Revision, Revision, i64)> {
        match self {
            Entry::Single { main, sub } if *main <= at_rev => {
                let r = Revision::new(*main, i64::from(*sub));
                Ok((r, r, 1))
            }
            Entry::Single { .. } => Err(MvccError::RevisionNotFound),
            Entry::Live(g) => {
                // The only generation, alive from its first revision on.
                let n = g
                    .newest_at_or_below(at_rev)
                    .ok_or(MvccError::RevisionNotFound)?;
                let after = (g.revs.len() - n - 1) as i64;
                Ok((g.revs[n], g.created, g.ver - after))
            }
            Entry::Full(h) => h.get(at_rev),
            Entry::Held(h) => h.entry.get(at_rev),
        }
    }

    fn put(&mut self, key: &[u8], rev: Revision) -> MvccResult<()> {
        // The index unwraps a held entry first (and accounts for its row); never keep it.
        self.take_row();
        match self {
            Entry::Single { main, sub } => {
                let first = Revision::new(*main, i64::from(*sub));
                if !rev.greater_than(&first) {
                    // Let the full form report the error.
                    return History::single(first).put(key, rev);
                }
                *self = Entry::Live(Box::new(Generation {
                    ver: 2,
                    created: first,
                    revs: vec![first, rev],
                }));
                Ok(())
            }
            Entry::Live(g) => {
                if !g.revs.last().is_some_and(|last| rev.greater_than(last)) {
                    return History::from_live((**g).clone()).put(key, rev);
                }
                push_rev(&mut g.revs, rev);
                g.ver += 1;
                Ok(())
            }
            Entry::Full(h) => h.put(key, rev),
            Entry::Held(_) => Err(MvccError::Corruption(
                "a held entry inside a held entry".into(),
            )),
        }
    }

    fn tombstone(&mut self, key: &[u8], rev: Revision) -> MvccResult<()> {
        self.with_full(|h| h.tombstone(key, rev))
    }

    fn compact(&mut self, at_rev: i64, available: &mut HashSet<Revision>) {
        match self {
            Entry::Single { main, sub } => {
                if *main <= at_rev {
                    available.insert(Revision::new(*main, i64::from(*sub)));
                }
            }
            Entry::Live(g) => {
                if let Some(n) = g.newest_at_or_below(at_rev) {
                    available.insert(g.revs[n]);
                    if n > 0 {
                        g.revs.drain(..n);
                        g.revs.shrink_to_fit();
                        let single = g.revs.len() == 1 && g.ver == 1 && g.created == g.revs[0];
                        if let (true, Some(e)) = (single, Entry::single(g.revs[0])) {
                            *self = e;
                        }
                    }
                }
            }
            Entry::Full(h) => {
                h.compact(at_rev, available);
                let h = std::mem::replace(&mut **h, History::new());
                *self = Entry::from_history(h);
            }
            // The newest revision stays, and so does its row.
            Entry::Held(h) => h.entry.compact(at_rev, available),
        }
    }

    fn keep(&self, at_rev: i64, available: &mut HashSet<Revision>) {
        match self {
            Entry::Single { main, sub } => {
                if *main <= at_rev {
                    available.insert(Revision::new(*main, i64::from(*sub)));
                }
            }
            // The live generation is the last one: its newest revision is never a tombstone.
            Entry::Live(g) => {
                if let Some(n) = g.newest_at_or_below(at_rev) {
                    available.insert(g.revs[n]);
                }
            }
            Entry::Full(h) => h.keep(at_rev, available),
            Entry::Held(h) => h.entry.keep(at_rev, available),
        }
    }

    /// The main revision of the newest revision recorded (put or tombstone).
    #[inline]
    fn latest_main(&self) -> i64 {
        match self {
            Entry::Single { main, .. } => *main,
            Entry::Live(g) => g.revs.last().map_or(i64::MAX, |r| r.main),
            Entry::Full(h) => h.modified().main,
            Entry::Held(h) => h.entry.latest_main(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Entry::Single { .. } | Entry::Live(_) => false,
            Entry::Full(h) => h.is_empty(),
            Entry::Held(h) => h.entry.is_empty(),
        }
    }

    fn revision_count(&self) -> usize {
        match self {
            Entry::Single { .. } => 1,
            Entry::Live(g) => g.revs.len(),
            Entry::Full(h) => h.revision_count(),
            Entry::Held(h) => h.entry.revision_count(),
        }
    }
}

/// Bytes charged for a current row held by the index beyond the encoded row itself: the
/// shared row's reference counts, the boxed entry that holds it (two words of entry, two of
/// row handle) and both allocations' headers, rounded up.
pub(crate) const CURRENT_ROW_OVERHEAD: usize = 96;

/// Rows decoded while the index read lock is held, per range read; the rows after these are
/// decoded once the lock is released (their shared handles are cloned under it), so a huge
/// range does not hold writers back for the copy of every row.
const DECODE_UNDER_LOCK: usize = 256;

/// A sweep that makes room for a current row frees `1 / EVICT_SLACK` of the row budget more
/// than the row needs.
const EVICT_SLACK: usize = 64;

/// The charge of a current row (see [`CURRENT_ROW_OVERHEAD`]).
fn row_cost(row: &[u8]) -> usize {
    row.len() + CURRENT_ROW_OVERHEAD
}

/// The index over every key: key → history (a [`KeyIndex`] without a copy of the key),
/// ordered by key bytes. Behind a `RwLock` that every operation holds only for its own
/// duration.
///
/// With a row budget ([`with_row_budget`](Self::with_row_budget)) the entry of a key whose
/// newest revision is a put may also hold that revision's encoded row, set by the write that
/// creates it (and by recovery), so a read at or above that revision takes the row from the
/// entry during its index walk: one search per key instead of index + row cache or engine.
/// The rows held are bounded by the budget: a write that would exceed it first drops other
/// entries' rows, sweeping the index in key order from where the last sweep stopped (under the
/// write lock the writer holds, so a reader sees either a row that is current or none, and
/// then reads the row by revision as without a budget).
#[derive(Debug, Default)]
pub struct TreeIndex {
    tree: RwLock<Inner>,
    /// Bytes of current rows held (changed under the write lock only).
    row_bytes: AtomicUsize,
    /// The most `row_bytes` may reach (0 = the index holds no row).
    row_capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    map: Tree,
    /// Where the last eviction sweep stopped.
    cursor: Option<IndexKey>,
}

type Tree = BTreeMap<IndexKey, Entry>;

/// A read of one key through the index (see [`TreeIndex::get_row`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowRead {
    /// The key does not exist at the read revision.
    Missing,
    /// The current row answered it (decoded into the caller's `KeyValue`).
    Row,
    /// The key exists at the read revision in the row of this revision, not held by the index.
    Load(Revision),
}

/// The answer of [`TreeIndex::range_rows`].
#[derive(Debug, Default)]
pub(crate) struct RangeRows {
    /// One slot per key in the answer, in key order; filled from current rows where the index
    /// held them (decoded under the lock), default elsewhere.
    pub(crate) kvs: Vec<KeyValue>,
    /// Slots to fill by decoding these rows (rows beyond [`DECODE_UNDER_LOCK`]).
    pub(crate) later: Vec<(usize, Arc<[u8]>)>,
    /// Slots to fill with the row of a revision (not held by the index): the slot, the
    /// revision, and where the slot's key ends in [`load_keys`](Self::load_keys) (it starts
    /// where the previous one ends).
    pub(crate) loads: Vec<(usize, Revision, usize)>,
    /// The keys of [`loads`](Self::loads), one after the other (one buffer, not one allocation
    /// per key).
    pub(crate) load_keys: Vec<u8>,
    /// Number of keys in the range at the read revision, regardless of the limit.
    pub(crate) count: usize,
}

/// The entry of `key`.
fn lookup<'t>(tree: &'t Tree, key: &[u8]) -> Option<&'t Entry> {
    match IndexKey::probe(key) {
        Some(probe) => tree.get(&probe),
        None => tree.get(key),
    }
}

/// The entry of `key`, mutable.
fn lookup_mut<'t>(tree: &'t mut Tree, key: &[u8]) -> Option<&'t mut Entry> {
    match IndexKey::probe(key) {
        Some(probe) => tree.get_mut(&probe),
        None => tree.get_mut(key),
    }
}

/// The entries of `range`, in key order; `None` when the range is empty. Bounds that fit inline
/// are searched as inline keys (compared word by word), the others as byte slices.
fn entries<'t>(tree: &'t Tree, range: &KeyRange) -> Option<btree_map::Range<'t, IndexKey, Entry>> {
    let (lo, hi) = range.bounds()?;
    let probe = |b: Bound<&[u8]>| match b {
        Bound::Included(k) => IndexKey::probe(k).map(Bound::Included),
        Bound::Excluded(k) => IndexKey::probe(k).map(Bound::Excluded),
        Bound::Unbounded => Some(Bound::Unbounded),
    };
    Some(match (probe(lo), probe(hi)) {
        (Some(lo), Some(hi)) => tree.range((lo, hi)),
        _ => tree.range::<[u8], _>((lo, hi)),
    })
}

impl TreeIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index that keeps the current rows handed to it by writes (see the type docs),
    /// up to `bytes` of them (each charged its length plus `CURRENT_ROW_OVERHEAD`; 0 = none).
    pub fn with_row_budget(bytes: usize) -> Self {
        TreeIndex {
            row_capacity: bytes,
            ..Self::default()
        }
    }

    /// True when the index keeps current rows (a non-zero row budget).
    pub(crate) fn keeps_rows(&self) -> bool {
        self.row_capacity > 0
    }

    /// Bytes of current rows held, as charged against the row budget.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes.load(Ordering::Relaxed)
    }

    /// `(modified, created, version)` of `key` at `at_rev`; [`MvccError::RevisionNotFound`] when
    /// the key does not exist at `at_rev`.
    pub fn get(&self, key: &[u8], at_rev: i64) -> MvccResult<(Revision, Revision, i64)> {
        let tree = self.tree.read();
        lookup(&tree.map, key)
            .ok_or(MvccError::RevisionNotFound)?
            .get(at_rev)
    }

    /// The row of `key` at `at_rev`: decoded into `kv` when the index holds it
    /// ([`RowRead::Row`]), else the revision to read it from ([`RowRead::Load`]), or
    /// [`RowRead::Missing`] when the key does not exist at `at_rev`.
    pub(crate) fn get_row(
        &self,
        key: &[u8],
        at_rev: i64,
        kv: &mut KeyValue,
    ) -> MvccResult<RowRead> {
        let tree = self.tree.read();
        let Some(slot) = lookup(&tree.map, key) else {
            return Ok(RowRead::Missing);
        };
        if let Some(row) = slot.current_row(at_rev) {
            KeyValue::decode_into(row, kv)?;
            return Ok(RowRead::Row);
        }
        match slot.get(at_rev) {
            Ok((rev, _, _)) => Ok(RowRead::Load(rev)),
            Err(MvccError::RevisionNotFound) => Ok(RowRead::Missing),
            Err(e) => Err(e),
        }
    }

    /// Records a put of `key` at `rev`.
    pub fn put(&self, key: &[u8], rev: Revision) -> MvccResult<()> {
        let mut tree = self.tree.write();
        self.put_locked(&mut tree, key, rev, None)
    }

    /// Records a put of `key` at `rev` whose encoded row is `row` (kept as the key's current
    /// row when the budget allows).
    fn put_locked(
        &self,
        inner: &mut Inner,
        key: &[u8],
        rev: Revision,
        row: Option<Arc<[u8]>>,
    ) -> MvccResult<()> {
        let row = row.filter(|r| self.row_capacity > 0 && row_cost(r) <= self.row_capacity);
        if let Some(r) = &row {
            self.make_room(inner, row_cost(r));
        }
        let tree = &mut inner.map;
        let slot = match IndexKey::probe(key) {
            // One search for both cases.
            Some(probe) => match tree.entry(probe) {
                btree_map::Entry::Occupied(o) => o.into_mut(),
                btree_map::Entry::Vacant(v) => {
                    let slot = v.insert(Entry::put_new(rev));
                    self.set_row(slot, row);
                    return Ok(());
                }
            },
            None => match tree.get_mut(key) {
                Some(slot) => slot,
                None => {
                    let slot = tree
                        .entry(IndexKey::new(key))
                        .or_insert(Entry::put_new(rev));
                    self.set_row(slot, row);
                    return Ok(());
                }
            },
        };
        // The row (if any) leaves before the history changes: no entry ever holds a row that is
        // not its newest revision's.
        self.set_row(slot, None);
        slot.put(key, rev)?;
        self.set_row(slot, row);
        Ok(())
    }

    /// Replaces the current row of `slot` with `row`, keeping the byte count.
    fn set_row(&self, slot: &mut Entry, row: Option<Arc<[u8]>>) {
        let added = row.as_deref().map_or(0, row_cost);
        let removed = slot.take_row().as_deref().map_or(0, row_cost);
        if let Some(row) = row {
            slot.hold(row);
        }
        if added != removed {
            let bytes = self.row_bytes.load(Ordering::Relaxed);
            self.row_bytes
                .store(bytes + added - removed, Ordering::Relaxed);
        }
    }

    /// Drops current rows until `need` more bytes fit the budget: sweeps the entries in key
    /// order from the last sweep's stop, wrapping around once. Called under the write lock.
    ///
    /// A sweep frees [`EVICT_SLACK`] of the budget beyond `need`, so the search for the
    /// sweep's start (and the walk over entries holding no row) is paid once per many writes
    /// rather than by every write of a full budget.
    fn make_room(&self, inner: &mut Inner, need: usize) {
        let mut bytes = self.row_bytes.load(Ordering::Relaxed);
        if bytes + need <= self.row_capacity {
            return;
        }
        let target = self
            .row_capacity
            .saturating_sub(need)
            .saturating_sub(self.row_capacity / EVICT_SLACK);
        let Inner { map, cursor } = inner;
        let mut stop: Option<IndexKey> = None;
        let mut sweep = |key: &IndexKey, slot: &mut Entry| {
            if let Some(row) = slot.take_row() {
                bytes -= row_cost(&row);
                if bytes <= target {
                    stop = Some(key.clone());
                    return true;
                }
            }
            false
        };
        let mut done = false;
        if let Some(c) = cursor.as_ref() {
            for (k, s) in map.range_mut::<IndexKey, _>((Bound::Excluded(c), Bound::Unbounded)) {
                if sweep(k, s) {
                    done = true;
                    break;
                }
            }
        }
        if !done {
            for (k, s) in map.iter_mut() {
                if sweep(k, s) {
                    break;
                }
            }
        }
        *cursor = stop;
        self.row_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Records a deletion of `key` at `rev`; [`MvccError::RevisionNotFound`] when it is not live.
    pub fn tombstone(&self, key: &[u8], rev: Revision) -> MvccResult<()> {
        let mut tree = self.tree.write();
        self.tombstone_locked(&mut tree, key, rev)
    }

    fn tombstone_locked(&self, inner: &mut Inner, key: &[u8], rev: Revision) -> MvccResult<()> {
        let slot = lookup_mut(&mut inner.map, key).ok_or(MvccError::RevisionNotFound)?;
        self.set_row(slot, None);
        slot.tombstone(key, rev)
    }

    /// Applies a list of changes (`(key, revision, is_tombstone)`) under one lock acquisition.
    pub fn apply(&self, changes: &[(Vec<u8>, Revision, bool)]) -> MvccResult<()> {
        self.apply_changes(changes.iter().map(|(k, r, t)| (k.as_slice(), *r, *t, None)))
    }

    /// [`apply`](Self::apply) over borrowed keys, with the encoded row of each put (kept as the
    /// key's current row when the budget allows; `None` keeps none).
    pub(crate) fn apply_changes<'k>(
        &self,
        changes: impl IntoIterator<Item = (&'k [u8], Revision, bool, Option<Arc<[u8]>>)>,
    ) -> MvccResult<()> {
        let mut tree = self.tree.write();
        for (key, rev, tombstone, row) in changes {
            if tombstone {
                self.tombstone_locked(&mut tree, key, rev)?;
            } else {
                self.put_locked(&mut tree, key, rev, row)?;
            }
        }
        Ok(())
    }

    /// Recovery: records the row `rev` of `key` read from the backend, with the creation
    /// revision and version stored in it. The first row of a key starts its index (a tombstone
    /// first row becomes a closed generation); later rows are puts or tombstones.
    pub fn restore_row(
        &self,
        key: &[u8],
        rev: Revision,
        tombstone: bool,
        created: i64,
        version: i64,
    ) -> MvccResult<()> {
        self.restore_row_with(key, rev, tombstone, created, version, None)
    }

    /// [`restore_row`](Self::restore_row), with the encoded row of a put (kept as the key's
    /// current row when the budget allows).
    pub(crate) fn restore_row_with(
        &self,
        key: &[u8],
        rev: Revision,
        tombstone: bool,
        created: i64,
        version: i64,
        row: Option<Arc<[u8]>>,
    ) -> MvccResult<()> {
        let mut tree = self.tree.write();
        if lookup(&tree.map, key).is_some() {
            return if tombstone {
                self.tombstone_locked(&mut tree, key, rev)
            } else {
                self.put_locked(&mut tree, key, rev, row)
            };
        }
        let mut h = History::new();
        if tombstone {
            h.restore_tombstone(rev);
        } else {
            h.restore(Revision::new(created, 0), rev, version);
        }
        let row =
            row.filter(|r| !tombstone && self.row_capacity > 0 && row_cost(r) <= self.row_capacity);
        if let Some(r) = &row {
            self.make_room(&mut tree, row_cost(r));
        }
        let slot = tree
            .map
            .entry(IndexKey::new(key))
            .or_insert(Entry::from_history(h));
        self.set_row(slot, row);
        Ok(())
    }

    /// The keys of `range` that exist at `at_rev` with their visible revision, in key order, at
    /// most `limit` of them (`0` = unlimited), and the total number of such keys.
    pub fn range(
        &self,
        range: &KeyRange,
        at_rev: i64,
        limit: usize,
    ) -> (Vec<(Vec<u8>, Revision)>, usize) {
        let tree = self.tree.read();
        let Some(entries) = entries(&tree.map, range) else {
            return (Vec::new(), 0);
        };
        let mut out = Vec::new();
        let mut count = 0;
        for (key, s) in entries {
            if let Ok((rev, _, _)) = s.get(at_rev) {
                if limit == 0 || out.len() < limit {
                    out.push((key.as_slice().to_vec(), rev));
                }
                count += 1;
            }
        }
        (out, count)
    }

    /// Like [`range`](Self::range), without the keys.
    pub(crate) fn range_revisions(
        &self,
        range: &KeyRange,
        at_rev: i64,
        limit: usize,
    ) -> (Vec<Revision>, usize) {
        let tree = self.tree.read();
        let Some(entries) = entries(&tree.map, range) else {
            return (Vec::new(), 0);
        };
        let mut out = Vec::new();
        let mut count = 0;
        for (_, s) in entries {
            if let Ok((rev, _, _)) = s.get(at_rev) {
                if limit == 0 || out.len() < limit {
                    out.push(rev);
                }
                count += 1;
            }
        }
        (out, count)
    }

    /// The rows of the keys of `range` existing at `at_rev`, in key order, at most `limit` of
    /// them (`0` = unlimited), from one index walk: current rows held by the index are decoded
    /// (the first [`DECODE_UNDER_LOCK`] under the read lock, the others handed back shared),
    /// the others are named by revision for the caller to read. See [`RangeRows`].
    ///
    /// The walk only collects where each row is; every row's cache lines are then touched in a
    /// tight loop before any is decoded, so their loads from memory overlap instead of
    /// following one another (decoding a row allocates, which keeps the processor from
    /// looking ahead to the next row's).
    pub(crate) fn range_rows(
        &self,
        range: &KeyRange,
        at_rev: i64,
        limit: usize,
    ) -> MvccResult<RangeRows> {
        enum Src<'t> {
            Row(&'t Arc<[u8]>),
            Rev(Revision, &'t IndexKey),
        }
        let mut out = RangeRows::default();
        let tree = self.tree.read();
        let Some(entries) = entries(&tree.map, range) else {
            return Ok(out);
        };
        let mut srcs: Vec<Src<'_>> = Vec::new();
        for (key, s) in entries {
            if let Some(row) = s.current_row(at_rev) {
                if limit == 0 || srcs.len() < limit {
                    srcs.push(Src::Row(row));
                }
                out.count += 1;
            } else if let Ok((rev, _, _)) = s.get(at_rev) {
                if limit == 0 || srcs.len() < limit {
                    srcs.push(Src::Rev(rev, key));
                }
                out.count += 1;
            }
        }
        let mut touched = 0u8;
        for src in srcs.iter().take(DECODE_UNDER_LOCK) {
            if let Src::Row(row) = src {
                for line in row.iter().step_by(64) {
                    touched ^= *line;
                }
            }
        }
        std::hint::black_box(touched);
        out.kvs.resize_with(srcs.len(), KeyValue::default);
        for (i, (src, kv)) in srcs.into_iter().zip(out.kvs.iter_mut()).enumerate() {
            match src {
                Src::Row(row) if i < DECODE_UNDER_LOCK => KeyValue::decode_into(row, kv)?,
                Src::Row(row) => out.later.push((i, Arc::clone(row))),
                Src::Rev(rev, key) => {
                    out.load_keys.extend_from_slice(key.as_slice());
                    out.loads.push((i, rev, out.load_keys.len()));
                }
            }
        }
        Ok(out)
    }

    /// `(key, modified, created, version)` of every key of `range` existing at `at_rev`.
    pub fn range_full(
        &self,
        range: &KeyRange,
        at_rev: i64,
    ) -> Vec<(Vec<u8>, Revision, Revision, i64)> {
        let tree = self.tree.read();
        let Some(entries) = entries(&tree.map, range) else {
            return Vec::new();
        };
        entries
            .filter_map(|(key, s)| {
                s.get(at_rev)
                    .ok()
                    .map(|(m, c, v)| (key.as_slice().to_vec(), m, c, v))
            })
            .collect()
    }

    /// Compacts every key at `rev` (see [`KeyIndex::compact`]), removes keys left empty, and
    /// returns the revisions to keep.
    ///
    /// Keys are processed in chunks of [`COMPACT_CHUNK`] under the write lock, so readers and
    /// writers interleave with a long compaction. This is safe concurrently with writes: they
    /// only add revisions above the current revision, which compaction at `rev` never touches,
    /// and each key is compacted (and removed when empty) atomically. Compaction keeps the
    /// newest revision of every live key, so current rows stay.
    pub fn compact(&self, rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        let keys: Vec<IndexKey> = self.tree.read().map.keys().cloned().collect();
        for chunk in keys.chunks(COMPACT_CHUNK) {
            let mut tree = self.tree.write();
            for key in chunk {
                let empty = match tree.map.get_mut(key) {
                    Some(s) => {
                        s.compact(rev, &mut available);
                        s.is_empty()
                    }
                    None => false,
                };
                if empty {
                    if let Some(mut s) = tree.map.remove(key) {
                        self.set_row(&mut s, None);
                    }
                }
            }
        }
        available
    }

    /// The revisions a compaction at `rev` would keep, tombstones excluded (etcd `Keep`).
    pub fn keep(&self, rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        let tree = self.tree.read();
        for s in tree.map.values() {
            s.keep(rev, &mut available);
        }
        available
    }

    /// Number of revisions retained for `key` (0 if unknown).
    pub fn count_revisions(&self, key: &[u8]) -> usize {
        lookup(&self.tree.read().map, key).map_or(0, Entry::revision_count)
    }

    /// Forgets every key (before a rebuild from a replaced backend), and their current rows.
    pub(crate) fn clear(&self) {
        let mut tree = self.tree.write();
        tree.map.clear();
        tree.cursor = None;
        self.row_bytes.store(0, Ordering::Relaxed);
    }

    /// Number of keys in the index (live or with retained history).
    pub fn len(&self) -> usize {
        self.tree.read().map.len()
    }

    /// True when the index holds no key.
    pub fn is_empty(&self) -> bool {
        self.tree.read().map.is_empty()
    }

    /// A copy of the index entry of `key`.
    pub fn key_index(&self, key: &[u8]) -> Option<KeyIndex> {
        lookup(&self.tree.read().map, key).map(|s| KeyIndex::from_history(key, s.to_history()))
    }

    /// Number of keys holding a current row, and their charged bytes recounted (tests).
    #[cfg(test)]
    pub(crate) fn recount_rows(&self) -> (usize, usize) {
        let tree = self.tree.read();
        tree.map
            .values()
            .filter_map(|s| s.row().map(|r| &r[..]))
            .fold((0, 0), |(n, b), r| (n + 1, b + row_cost(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn key_range_convention() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a".to_vec()));
        assert_eq!(KeyRange::new(b"a", b"\0"), KeyRange::From(b"a".to_vec()));
        let b = KeyRange::new(b"a", b"c");
        assert!(b.contains(b"a") && b.contains(b"b") && !b.contains(b"c"));
        assert!(KeyRange::new(b"d", b"b").is_empty());
        assert!(KeyRange::new(b"foo", b"foo").is_empty());
        assert!(KeyRange::new(b"a", b"\0").contains(b"\xff\xff"));
        assert!(!KeyRange::new(b"b", b"\0").contains(b"a"));
    }

    #[test]
    fn get_put_tombstone_and_range() {
        // etcd index_test.go TestIndexGet / TestIndexRange shapes.
        let ti = TreeIndex::new();
        ti.put(b"foo", r(2)).unwrap();
        ti.put(b"foo", r(4)).unwrap();
        ti.tombstone(b"foo", r(6)).unwrap();
        ti.put(b"foo1", r(3)).unwrap();
        ti.put(b"foo2", r(5)).unwrap();
        assert!(matches!(
            ti.get(b"foo", 1),
            Err(MvccError::RevisionNotFound)
        ));
        assert_eq!(ti.get(b"foo", 2).unwrap(), (r(2), r(2), 1));
        assert_eq!(ti.get(b"foo", 5).unwrap(), (r(4), r(2), 2));
        assert!(matches!(
            ti.get(b"foo", 6),
            Err(MvccError::RevisionNotFound)
        ));
        assert!(matches!(
            ti.get(b"nope", 6),
            Err(MvccError::RevisionNotFound)
        ));
        assert!(matches!(
            ti.tombstone(b"foo", r(7)),
            Err(MvccError::RevisionNotFound)
        ));

        let all = KeyRange::new(b"foo", b"fop");
        assert_eq!(
            ti.range(&all, 5, 0),
            (
                vec![
                    (b"foo".to_vec(), r(4)),
                    (b"foo1".to_vec(), r(3)),
                    (b"foo2".to_vec(), r(5))
                ],
                3
            )
        );
        assert_eq!(
            ti.range(&all, 6, 0),
            (vec![(b"foo1".to_vec(), r(3)), (b"foo2".to_vec(), r(5))], 2)
        );
        assert_eq!(ti.range(&all, 6, 1), (vec![(b"foo1".to_vec(), r(3))], 2));
        assert_eq!(ti.range(&KeyRange::new(b"foo1", b""), 3, 0).1, 1);
        assert_eq!(ti.range(&KeyRange::new(b"foo1", b"\0"), 5, 0).1, 2);
        assert_eq!(ti.range(&KeyRange::new(b"z", b"a"), 5, 0), (vec![], 0));
        assert_eq!(ti.len(), 3);
        assert_eq!(ti.count_revisions(b"foo"), 3);
        assert_eq!(ti.count_revisions(b"nope"), 0);
    }

    #[test]
    fn compact_removes_dead_keys_and_returns_kept_revisions() {
        // etcd TestIndexCompactAndKeep-like: foo {1_0, 2_0 ... }.
        let ti = TreeIndex::new();
        ti.put(b"foo", r(1)).unwrap();
        ti.put(b"foo1", r(2)).unwrap();
        ti.put(b"foo2", r(3)).unwrap();
        ti.put(b"foo2", r(4)).unwrap();
        ti.tombstone(b"foo", r(5)).unwrap();
        ti.tombstone(b"foo1", r(6)).unwrap();
        ti.put(b"foo", r(7)).unwrap();

        assert_eq!(ti.compact(1), HashSet::from([r(1)]));
        assert_eq!(ti.keep(5), HashSet::from([r(2), r(4)]));
        assert_eq!(ti.compact(5), HashSet::from([r(5), r(2), r(4)]));
        assert_eq!(ti.len(), 3);
        assert_eq!(ti.compact(6), HashSet::from([r(6), r(4)]));
        assert_eq!(ti.len(), 3);
        assert_eq!(ti.compact(7), HashSet::from([r(7), r(4)]));
        assert_eq!(ti.len(), 2);
        assert_eq!(ti.get(b"foo", 7).unwrap(), (r(7), r(7), 1));
        assert_eq!(ti.get(b"foo2", 7).unwrap(), (r(4), r(3), 2));
    }

    #[test]
    fn compact_entries_match_key_index() {
        // Every shape change of an index entry (inline single revision <-> full history)
        // behaves like a plain KeyIndex.
        let long = vec![b'k'; 40];
        for key in [b"k".to_vec(), long] {
            let ti = TreeIndex::new();
            let mut ki = KeyIndex::new(key.clone());
            let check = |ti: &TreeIndex, ki: &KeyIndex, max: i64| {
                for at in 0..=max {
                    assert_eq!(ti.get(&key, at).ok(), ki.get(at).ok(), "at {at}");
                }
                assert_eq!(ti.count_revisions(&key), ki.revision_count());
                if !ki.is_empty() {
                    assert_eq!(ti.key_index(&key).as_ref(), Some(ki));
                }
            };
            ti.put(&key, r(2)).unwrap();
            ki.put(r(2)).unwrap();
            check(&ti, &ki, 3);
            assert!(ti.put(&key, r(2)).is_err());
            assert!(ki.put(r(2)).is_err());
            check(&ti, &ki, 3);
            ti.put(&key, Revision::new(3, 1)).unwrap();
            ki.put(Revision::new(3, 1)).unwrap();
            ti.tombstone(&key, r(4)).unwrap();
            ki.tombstone(r(4)).unwrap();
            ti.put(&key, r(5)).unwrap();
            ki.put(r(5)).unwrap();
            check(&ti, &ki, 6);
            assert_eq!(ti.keep(5), {
                let mut a = HashSet::new();
                ki.keep(5, &mut a);
                a
            });
            // Compacting at 5 leaves a single live revision: back to the inline form.
            let mut avail = HashSet::new();
            ki.compact(5, &mut avail);
            assert_eq!(ti.compact(5), avail);
            check(&ti, &ki, 6);
            assert_eq!(ki.generations().len(), 1);
            ti.put(&key, r(7)).unwrap();
            ki.put(r(7)).unwrap();
            check(&ti, &ki, 8);
            // One live generation with several revisions, compacted in steps.
            for rev in [8, 9, 10] {
                ti.put(&key, r(rev)).unwrap();
                ki.put(r(rev)).unwrap();
            }
            assert!(ti.put(&key, r(10)).is_err());
            check(&ti, &ki, 11);
            for c in [7, 9, 10] {
                let mut kept = HashSet::new();
                ki.keep(c, &mut kept);
                assert_eq!(ti.keep(c), kept, "keep {c}");
                let mut avail = HashSet::new();
                ki.compact(c, &mut avail);
                assert_eq!(ti.compact(c), avail, "compact {c}");
                check(&ti, &ki, 11);
            }
            ti.tombstone(&key, r(11)).unwrap();
            ki.tombstone(r(11)).unwrap();
            check(&ti, &ki, 12);
            // A huge sub revision never fits the inline form.
            let big = Revision::new(9, i64::from(u32::MAX) + 1);
            ti.put(b"big", big).unwrap();
            assert_eq!(ti.get(b"big", 9).unwrap(), (big, big, 1));
        }
    }

    #[test]
    fn index_key_order_is_byte_order() {
        let mut keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\0".to_vec(),
            b"ab".to_vec(),
            vec![0xff],
            vec![0xff; 16],
            vec![0xff; 17],
            vec![0xff; 22],
            vec![0xff; 23],
        ];
        for len in [15, 16, 17, 21, 22, 23, 30] {
            for last in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut k = vec![b'k'; len];
                k[len - 1] = last;
                keys.push(k.clone());
                k.push(0);
                keys.push(k);
            }
        }
        for a in &keys {
            for b in &keys {
                let (ka, kb) = (IndexKey::new(a), IndexKey::new(b));
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ka == kb, a == b);
            }
        }
    }

    #[test]
    fn restore_rows() {
        let ti = TreeIndex::new();
        ti.restore_row(b"a", r(5), true, 0, 0).unwrap();
        ti.restore_row(b"a", r(6), false, 6, 1).unwrap();
        ti.restore_row(b"b", r(4), false, 2, 3).unwrap();
        ti.restore_row(b"b", r(7), true, 0, 0).unwrap();
        assert_eq!(ti.get(b"a", 6).unwrap(), (r(6), r(6), 1));
        assert!(ti.get(b"a", 5).is_err());
        assert_eq!(ti.get(b"b", 6).unwrap(), (r(4), r(2), 3));
        assert!(ti.get(b"b", 7).is_err());
    }

    fn row(key: &[u8], value: &[u8], rev: i64) -> Arc<[u8]> {
        KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
        .encode()
        .into()
    }

    fn read(ti: &TreeIndex, key: &[u8], at: i64) -> (RowRead, Vec<u8>) {
        let mut kv = KeyValue::default();
        let got = ti.get_row(key, at, &mut kv).unwrap();
        (got, kv.value)
    }

    #[test]
    fn current_rows_follow_the_newest_revision() {
        let ti = TreeIndex::with_row_budget(1 << 20);
        let apply = |key: &[u8], rev: i64, value: Option<&[u8]>| {
            let row = value.map(|v| row(key, v, rev));
            ti.apply_changes([(key, r(rev), value.is_none(), row)])
                .unwrap();
        };
        apply(b"a", 2, Some(b"a2"));
        assert_eq!(read(&ti, b"a", 2), (RowRead::Row, b"a2".to_vec()));
        // Below the row's revision the key does not exist.
        assert_eq!(read(&ti, b"a", 1), (RowRead::Missing, vec![]));
        apply(b"a", 3, Some(b"a3"));
        assert_eq!(read(&ti, b"a", 3), (RowRead::Row, b"a3".to_vec()));
        // An older revision is read by revision, never from the current row.
        assert_eq!(read(&ti, b"a", 2), (RowRead::Load(r(2)), vec![]));
        let one = row(b"a", b"a3", 3).len() + CURRENT_ROW_OVERHEAD;
        assert_eq!(ti.row_bytes(), one);
        // A put without a row (no budget share for it) drops the old one.
        ti.put(b"a", r(4)).unwrap();
        assert_eq!(read(&ti, b"a", 4), (RowRead::Load(r(4)), vec![]));
        assert_eq!(ti.row_bytes(), 0);
        apply(b"a", 5, Some(b"a5"));
        apply(b"a", 6, None);
        assert_eq!(read(&ti, b"a", 6), (RowRead::Missing, vec![]));
        assert_eq!(read(&ti, b"a", 5), (RowRead::Load(r(5)), vec![]));
        assert_eq!(ti.row_bytes(), 0);
        // Re-created after the deletion (a `Full` history).
        apply(b"a", 7, Some(b"a7"));
        assert_eq!(read(&ti, b"a", 7), (RowRead::Row, b"a7".to_vec()));
        assert_eq!(read(&ti, b"a", 6), (RowRead::Missing, vec![]));
        // A refused put (revision not above the newest) leaves no row behind.
        assert!(ti
            .apply_changes([(&b"a"[..], r(7), false, Some(row(b"a", b"bad", 7)))])
            .is_err());
        assert_eq!(read(&ti, b"a", 7), (RowRead::Load(r(7)), vec![]));
        apply(b"a", 8, Some(b"a8"));
        // Compaction keeps the newest revision, so the row stays.
        ti.compact(8);
        assert_eq!(read(&ti, b"a", 8), (RowRead::Row, b"a8".to_vec()));
        // A recovery row replaces it; a recovered tombstone drops it.
        ti.restore_row_with(b"a", r(9), false, 9, 1, Some(row(b"a", b"a9", 9)))
            .unwrap();
        assert_eq!(read(&ti, b"a", 9), (RowRead::Row, b"a9".to_vec()));
        ti.restore_row(b"a", r(10), true, 0, 0).unwrap();
        assert_eq!(read(&ti, b"a", 10), (RowRead::Missing, vec![]));
        ti.restore_row_with(b"b", r(11), false, 11, 1, Some(row(b"b", b"b11", 11)))
            .unwrap();
        assert_eq!(read(&ti, b"b", 11), (RowRead::Row, b"b11".to_vec()));
        assert_eq!(ti.recount_rows(), (1, ti.row_bytes()));
        ti.clear();
        assert_eq!(ti.row_bytes(), 0);
        assert_eq!(read(&ti, b"b", 11), (RowRead::Missing, vec![]));
        // Without a budget no row is kept.
        let none = TreeIndex::new();
        none.apply_changes([(&b"a"[..], r(2), false, Some(row(b"a", b"x", 2)))])
            .unwrap();
        assert_eq!(read(&none, b"a", 2), (RowRead::Load(r(2)), vec![]));
        assert_eq!(none.recount_rows(), (0, 0));
    }

    #[test]
    fn current_rows_stay_within_the_budget() {
        // Rows of 37 + 4 + 100 bytes cost 237 each: 8 fit in 2 000 bytes.
        let one = row(b"k000", &[1; 100], 1).len() + CURRENT_ROW_OVERHEAD;
        assert_eq!(one, 237);
        let ti = TreeIndex::with_row_budget(2000);
        for rev in 1..=300i64 {
            let key = format!("k{:03}", (rev * 7) % 50).into_bytes();
            ti.apply_changes([(
                key.as_slice(),
                r(rev),
                false,
                Some(row(&key, &[1; 100], rev)),
            )])
            .unwrap();
            let (n, bytes) = ti.recount_rows();
            assert_eq!(bytes, ti.row_bytes(), "after revision {rev}");
            assert!(bytes <= 2000, "{bytes} bytes after revision {rev}");
            assert_eq!(n, (rev as usize).min(8), "after revision {rev}");
            // The row just written is always kept.
            assert_eq!(read(&ti, &key, rev).0, RowRead::Row);
        }
        // A row larger than the whole budget is not kept (and the others stay).
        ti.apply_changes([(
            &b"big"[..],
            r(301),
            false,
            Some(row(b"big", &[0; 2000], 301)),
        )])
        .unwrap();
        assert_eq!(read(&ti, b"big", 301).0, RowRead::Load(r(301)));
        assert_eq!(ti.recount_rows().0, 8);
    }

    #[test]
    fn range_rows_mix_held_rows_and_revisions() {
        let ti = TreeIndex::with_row_budget(1 << 30);
        let n = DECODE_UNDER_LOCK + 40;
        let key = |i: usize| format!("k{i:04}").into_bytes();
        for i in 0..n {
            let rev = i as i64 + 2;
            // Every third key without a row, every fifth overwritten later.
            let row = (i % 3 != 0).then(|| row(&key(i), format!("v{i}").as_bytes(), rev));
            ti.apply_changes([(key(i).as_slice(), r(rev), false, row)])
                .unwrap();
        }
        let late = n as i64 + 2;
        for (j, i) in (0..n).step_by(5).enumerate() {
            let rev = late + j as i64;
            ti.apply_changes([(
                key(i).as_slice(),
                r(rev),
                false,
                Some(row(&key(i), b"new", rev)),
            )])
            .unwrap();
        }
        let all = KeyRange::new(b"k", b"l");
        for (at, limit) in [(late - 1, 0), (late - 1, 7), (i64::MAX, 0), (i64::MAX, 300)] {
            let got = ti.range_rows(&all, at, limit).unwrap();
            let want = if limit == 0 { n } else { limit.min(n) };
            assert_eq!(
                (got.kvs.len(), got.count),
                (want, n),
                "at {at} limit {limit}"
            );
            let mut loads = got.loads.iter();
            let mut later = got.later.iter();
            for (i, kv) in got.kvs.iter().enumerate() {
                let overwritten = i % 5 == 0 && at >= late;
                if i % 3 == 0 && !overwritten {
                    // Named by its visible revision, left for the caller.
                    let &(slot, rev, end) = loads.next().unwrap();
                    assert_eq!((slot, rev), (i, r(i as i64 + 2)));
                    assert_eq!(got.load_keys[end - key(i).len()..end], key(i));
                    assert_eq!(kv, &KeyValue::default());
                    continue;
                }
                let value = if overwritten {
                    b"new".to_vec()
                } else if i % 5 == 0 {
                    // Overwritten after `at`: the held row is too new.
                    let &(slot, rev, end) = loads.next().unwrap();
                    assert_eq!((slot, rev), (i, r(i as i64 + 2)));
                    assert_eq!(got.load_keys[end - key(i).len()..end], key(i));
                    continue;
                } else {
                    format!("v{i}").into_bytes()
                };
                if i < DECODE_UNDER_LOCK {
                    assert_eq!((kv.key.clone(), kv.value.clone()), (key(i), value));
                } else {
                    let (j, shared) = later.next().unwrap();
                    assert_eq!(*j, i);
                    assert_eq!(KeyValue::decode(shared).unwrap().value, value);
                }
            }
            assert_eq!((loads.next(), later.next()), (None, None));
        }
    }
}
