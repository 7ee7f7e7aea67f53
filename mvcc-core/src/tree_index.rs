//! [`TreeIndex`]: the in-memory index over every key (etcd `treeIndex`), and [`KeyRange`], the
//! decoded form of etcd's `(key, range_end)` wire convention.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use parking_lot::RwLock;

use crate::error::{MvccError, MvccResult};
use crate::key_index::KeyIndex;
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

/// The index over every key: key → [`KeyIndex`], ordered by key bytes. Behind a `RwLock` that
/// every operation holds only for its own duration.
#[derive(Debug, Default)]
pub struct TreeIndex {
    tree: RwLock<BTreeMap<Vec<u8>, KeyIndex>>,
}

impl TreeIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// `(modified, created, version)` of `key` at `at_rev`; [`MvccError::RevisionNotFound`] when
    /// the key does not exist at `at_rev`.
    pub fn get(&self, key: &[u8], at_rev: i64) -> MvccResult<(Revision, Revision, i64)> {
        let tree = self.tree.read();
        tree.get(key)
            .ok_or(MvccError::RevisionNotFound)?
            .get(at_rev)
    }

    /// Records a put of `key` at `rev`.
    pub fn put(&self, key: &[u8], rev: Revision) -> MvccResult<()> {
        let mut tree = self.tree.write();
        Self::put_locked(&mut tree, key, rev)
    }

    fn put_locked(
        tree: &mut BTreeMap<Vec<u8>, KeyIndex>,
        key: &[u8],
        rev: Revision,
    ) -> MvccResult<()> {
        match tree.get_mut(key) {
            Some(ki) => ki.put(rev),
            None => {
                let mut ki = KeyIndex::new(key);
                ki.put(rev)?;
                tree.insert(key.to_vec(), ki);
                Ok(())
            }
        }
    }

    /// Records a deletion of `key` at `rev`; [`MvccError::RevisionNotFound`] when it is not live.
    pub fn tombstone(&self, key: &[u8], rev: Revision) -> MvccResult<()> {
        let mut tree = self.tree.write();
        tree.get_mut(key)
            .ok_or(MvccError::RevisionNotFound)?
            .tombstone(rev)
    }

    /// Applies a list of changes (`(key, revision, is_tombstone)`) under one lock acquisition.
    pub fn apply(&self, changes: &[(Vec<u8>, Revision, bool)]) -> MvccResult<()> {
        self.apply_changes(changes.iter().map(|(k, r, t)| (k.as_slice(), *r, *t)))
    }

    /// [`apply`](Self::apply) over borrowed keys.
    pub(crate) fn apply_changes<'k>(
        &self,
        changes: impl IntoIterator<Item = (&'k [u8], Revision, bool)>,
    ) -> MvccResult<()> {
        let mut tree = self.tree.write();
        for (key, rev, tombstone) in changes {
            if tombstone {
                tree.get_mut(key)
                    .ok_or(MvccError::RevisionNotFound)?
                    .tombstone(rev)?;
            } else {
                Self::put_locked(&mut tree, key, rev)?;
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
        let mut tree = self.tree.write();
        match tree.get_mut(key) {
            Some(ki) if tombstone => ki.tombstone(rev),
            Some(ki) => ki.put(rev),
            None => {
                let mut ki = KeyIndex::new(key);
                if tombstone {
                    ki.restore_tombstone(rev);
                } else {
                    ki.restore(Revision::new(created, 0), rev, version);
                }
                tree.insert(key.to_vec(), ki);
                Ok(())
            }
        }
    }

    /// The keys of `range` that exist at `at_rev` with their visible revision, in key order, at
    /// most `limit` of them (`0` = unlimited), and the total number of such keys.
    pub fn range(
        &self,
        range: &KeyRange,
        at_rev: i64,
        limit: usize,
    ) -> (Vec<(Vec<u8>, Revision)>, usize) {
        let Some(bounds) = range.bounds() else {
            return (Vec::new(), 0);
        };
        let tree = self.tree.read();
        let mut out = Vec::new();
        let mut count = 0;
        for (key, ki) in tree.range::<[u8], _>(bounds) {
            if let Ok((rev, _, _)) = ki.get(at_rev) {
                if limit == 0 || out.len() < limit {
                    out.push((key.clone(), rev));
                }
                count += 1;
            }
        }
        (out, count)
    }

    /// `(key, modified, created, version)` of every key of `range` existing at `at_rev`.
    pub fn range_full(
        &self,
        range: &KeyRange,
        at_rev: i64,
    ) -> Vec<(Vec<u8>, Revision, Revision, i64)> {
        let Some(bounds) = range.bounds() else {
            return Vec::new();
        };
        let tree = self.tree.read();
        tree.range::<[u8], _>(bounds)
            .filter_map(|(key, ki)| ki.get(at_rev).ok().map(|(m, c, v)| (key.clone(), m, c, v)))
            .collect()
    }

    /// Compacts every key at `rev` (see [`KeyIndex::compact`]), removes keys left empty, and
    /// returns the revisions to keep.
    ///
    /// Keys are processed in chunks of [`COMPACT_CHUNK`] under the write lock, so readers and
    /// writers interleave with a long compaction. This is safe concurrently with writes: they
    /// only add revisions above the current revision, which compaction at `rev` never touches,
    /// and each key is compacted (and removed when empty) atomically.
    pub fn compact(&self, rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        let keys: Vec<Vec<u8>> = self.tree.read().keys().cloned().collect();
        for chunk in keys.chunks(COMPACT_CHUNK) {
            let mut tree = self.tree.write();
            for key in chunk {
                let empty = match tree.get_mut(key.as_slice()) {
                    Some(ki) => {
                        ki.compact(rev, &mut available);
                        ki.is_empty()
                    }
                    None => false,
                };
                if empty {
                    tree.remove(key.as_slice());
                }
            }
        }
        available
    }

    /// The revisions a compaction at `rev` would keep, tombstones excluded (etcd `Keep`).
    pub fn keep(&self, rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        let tree = self.tree.read();
        for ki in tree.values() {
            ki.keep(rev, &mut available);
        }
        available
    }

    /// Number of revisions retained for `key` (0 if unknown).
    pub fn count_revisions(&self, key: &[u8]) -> usize {
        self.tree
            .read()
            .get(key)
            .map_or(0, KeyIndex::revision_count)
    }

    /// Number of keys in the index (live or with retained history).
    pub fn len(&self) -> usize {
        self.tree.read().len()
    }

    /// True when the index holds no key.
    pub fn is_empty(&self) -> bool {
        self.tree.read().is_empty()
    }

    /// A copy of the index entry of `key`.
    pub fn key_index(&self, key: &[u8]) -> Option<KeyIndex> {
        self.tree.read().get(key).cloned()
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
}
