//! [`KeyIndex`]: the revision history of one key, split into generations (etcd `keyIndex`).
//!
//! A generation is one life of the key: it starts with the put that creates the key and ends
//! with the tombstone that deletes it. The last generation is the open one (empty when the key
//! is currently deleted).
//!
//! ```text
//! key "foo", puts at 2, 4, delete at 6, put at 8:
//!   generations: {2, 4, 6(t)} {8}
//! ```

use std::collections::HashSet;

use crate::error::{MvccError, MvccResult};
use crate::revision::Revision;

/// One life of a key: from the creating put to the tombstone (inclusive), if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    /// Number of changes in this generation, including compacted ones and the tombstone.
    pub ver: i64,
    /// Revision of the creating put (`{0, 0}` for a generation restored from a lone tombstone).
    pub created: Revision,
    /// The retained revisions, ascending. When the generation is closed the last one is the
    /// tombstone.
    pub revs: Vec<Revision>,
}

impl Generation {
    /// True when the generation holds no revision.
    pub fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the newest revision with `main <= at_rev`, if any.
    pub(crate) fn newest_at_or_below(&self, at_rev: i64) -> Option<usize> {
        self.revs.iter().rposition(|r| r.main <= at_rev)
    }
}

/// The revision history of one key. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    key: Vec<u8>,
    history: History,
}

impl KeyIndex {
    /// An empty index for `key` (one empty generation).
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        KeyIndex {
            key: key.into(),
            history: History::new(),
        }
    }

    /// An index for `key` with the given history.
    pub(crate) fn from_history(key: &[u8], history: History) -> Self {
        KeyIndex {
            key: key.to_vec(),
            history,
        }
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The newest revision recorded (put or tombstone).
    pub fn modified(&self) -> Revision {
        self.history.modified
    }

    /// The generations, oldest first.
    pub fn generations(&self) -> &[Generation] {
        &self.history.generations
    }

    /// True when the index holds no revision at all.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// True when the key currently exists (its open generation holds a revision).
    pub fn is_live(&self) -> bool {
        self.history.is_live()
    }

    /// Number of revisions retained for the key (tombstones included).
    pub fn revision_count(&self) -> usize {
        self.history.revision_count()
    }

    /// Records a put at `rev`, which must be greater than every recorded revision.
    pub fn put(&mut self, rev: Revision) -> MvccResult<()> {
        self.history.put(&self.key, rev)
    }

    /// Restores a generation whose oldest retained revision is `modified` (recovery): the
    /// version and creation revision come from the stored key-value.
    pub fn restore(&mut self, created: Revision, modified: Revision, ver: i64) {
        self.history.restore(created, modified, ver);
    }

    /// Restores a key whose oldest retained row is a tombstone (recovery after compaction): a
    /// closed generation holding only the tombstone, then an empty open generation.
    pub fn restore_tombstone(&mut self, rev: Revision) {
        self.history.restore_tombstone(rev);
    }

    /// Records a deletion at `rev`: appends the tombstone to the open generation and opens a
    /// new empty one. Fails with [`MvccError::RevisionNotFound`] when the key is not live.
    pub fn tombstone(&mut self, rev: Revision) -> MvccResult<()> {
        self.history.tombstone(&self.key, rev)
    }

    /// The state of the key at `at_rev`: `(modified, created, version)` of the visible revision.
    /// Fails with [`MvccError::RevisionNotFound`] when the key does not exist at `at_rev`.
    pub fn get(&self, at_rev: i64) -> MvccResult<(Revision, Revision, i64)> {
        self.history.get(at_rev)
    }

    /// The revisions with `main >= rev`, ascending, keeping only the highest sub revision of
    /// each main revision (what an observer of whole transactions sees).
    pub fn since(&self, rev: i64) -> Vec<Revision> {
        self.history.since(rev)
    }

    /// Compacts the history at `at_rev`: for every generation alive at `at_rev` or ending at or
    /// after it, keeps the newest revision with `main <= at_rev` (adding it to `available`) and
    /// drops the older ones; drops every generation whose tombstone is below `at_rev`.
    ///
    /// A tombstone at exactly `at_rev` is kept, and so is a generation re-created inside
    /// `at_rev` after such a tombstone (etcd issue #22376).
    pub fn compact(&mut self, at_rev: i64, available: &mut HashSet<Revision>) {
        self.history.compact(at_rev, available);
    }

    /// Adds to `available` the revisions a compaction at `at_rev` would keep, except tombstones
    /// (etcd `keep`, used for hashing); does not change the index.
    pub fn keep(&self, at_rev: i64, available: &mut HashSet<Revision>) {
        self.history.keep(at_rev, available);
    }
}

/// The history of a key without the key itself: what [`KeyIndex`] and the tree index store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct History {
    modified: Revision,
    generations: Vec<Generation>,
}

impl History {
    /// An empty history (one empty generation).
    pub(crate) fn new() -> Self {
        History {
            modified: Revision::default(),
            generations: vec![Generation::default()],
        }
    }

    /// The history of a key put once, at `rev`, in its only generation (room for one more
    /// revision, as the history is usually created when a second one arrives).
    pub(crate) fn single(rev: Revision) -> Self {
        let mut revs = Vec::with_capacity(2);
        revs.push(rev);
        History {
            modified: rev,
            generations: vec![Generation {
                ver: 1,
                created: rev,
                revs,
            }],
        }
    }

    /// A history of the single live generation `g`, whose last revision is the newest
    /// modification.
    pub(crate) fn from_live(g: Generation) -> Self {
        History {
            modified: g.revs.last().copied().unwrap_or_default(),
            generations: vec![g],
        }
    }

    /// The only generation when the history is one live generation whose last revision is the
    /// newest modification (the shape of [`History::from_live`]).
    pub(crate) fn into_live(self) -> Result<Generation, History> {
        match self.generations.as_slice() {
            [g] if g.revs.last() == Some(&self.modified) => {
                let mut gens = self.generations;
                gens.pop().ok_or_else(History::new)
            }
            _ => Err(self),
        }
    }

    /// The single revision when the history is one live generation created by its only
    /// revision (the shape of [`History::single`]).
    pub(crate) fn as_single(&self) -> Option<Revision> {
        match self.generations.as_slice() {
            [g] if g.ver == 1 && g.revs.len() == 1 && g.created == g.revs[0] => Some(g.created),
            _ => None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// The newest revision recorded (put or tombstone).
    pub(crate) fn modified(&self) -> Revision {
        self.modified
    }

    pub(crate) fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.is_empty())
    }

    pub(crate) fn revision_count(&self) -> usize {
        self.generations.iter().map(|g| g.revs.len()).sum()
    }

    pub(crate) fn put(&mut self, key: &[u8], rev: Revision) -> MvccResult<()> {
        if !rev.greater_than(&self.modified) {
            return Err(MvccError::Corruption(format!(
                "put of {:?} at revision {rev} not greater than the last modification {}",
                String::from_utf8_lossy(key),
                self.modified
            )));
        }
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let last = self.generations.len() - 1;
        let g = &mut self.generations[last];
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
        Ok(())
    }

    pub(crate) fn restore(&mut self, created: Revision, modified: Revision, ver: i64) {
        if self.is_empty() {
            self.generations.clear();
        }
        self.modified = modified;
        self.generations.push(Generation {
            ver,
            created,
            revs: vec![modified],
        });
    }

    pub(crate) fn restore_tombstone(&mut self, rev: Revision) {
        self.restore(Revision::default(), rev, 1);
        self.generations.push(Generation::default());
    }

    pub(crate) fn tombstone(&mut self, key: &[u8], rev: Revision) -> MvccResult<()> {
        if !self.is_live() {
            return Err(MvccError::RevisionNotFound);
        }
        self.put(key, rev)?;
        self.generations.push(Generation::default());
        Ok(())
    }

    /// The generation alive at `at_rev`, if any.
    fn find_generation(&self, at_rev: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(newest)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if i != last && newest.main <= at_rev {
                // Closed by a tombstone at or before at_rev.
                return None;
            }
            if first.main <= at_rev {
                return Some(g);
            }
        }
        None
    }

    pub(crate) fn get(&self, at_rev: i64) -> MvccResult<(Revision, Revision, i64)> {
        let g = self
            .find_generation(at_rev)
            .ok_or(MvccError::RevisionNotFound)?;
        let n = g
            .newest_at_or_below(at_rev)
            .ok_or(MvccError::RevisionNotFound)?;
        let after = (g.revs.len() - n - 1) as i64;
        Ok((g.revs[n], g.created, g.ver - after))
    }

    pub(crate) fn since(&self, rev: i64) -> Vec<Revision> {
        let since = Revision::new(rev, 0);
        let mut gi = self.generations.len().saturating_sub(1);
        while gi > 0 {
            let g = &self.generations[gi];
            if !g.is_empty() && since.greater_than(&g.created) {
                break;
            }
            gi -= 1;
        }
        let mut revs: Vec<Revision> = Vec::new();
        let mut last = 0;
        for g in &self.generations[gi..] {
            for r in &g.revs {
                if since.greater_than(r) {
                    continue;
                }
                match revs.last_mut() {
                    Some(prev) if r.main == last => *prev = *r,
                    _ => revs.push(*r),
                }
                last = r.main;
            }
        }
        revs
    }

    /// The index of the first generation that is alive at `at_rev` or ends at or after it.
    fn first_kept_generation(&self, at_rev: i64) -> usize {
        let mut gi = 0;
        while gi + 1 < self.generations.len() {
            match self.generations[gi].revs.last() {
                Some(tomb) if tomb.main >= at_rev => break,
                _ => gi += 1,
            }
        }
        gi
    }

    pub(crate) fn compact(&mut self, at_rev: i64, available: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let gi = self.first_kept_generation(at_rev);
        self.generations.drain(..gi);
        for g in &mut self.generations {
            if let Some(n) = g.newest_at_or_below(at_rev) {
                available.insert(g.revs[n]);
                g.revs.drain(..n);
            }
        }
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
    }

    pub(crate) fn keep(&self, at_rev: i64, available: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let gi = self.first_kept_generation(at_rev);
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().skip(gi) {
            if let Some(n) = g.newest_at_or_below(at_rev) {
                let is_tombstone = n == g.revs.len() - 1 && i != last;
                if !is_tombstone {
                    available.insert(g.revs[n]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// etcd `newTestKeyIndex`:
    /// {2, 4, 6(t)} {8, 10, 12(t)} {14_0, 14_1, 16(t)} {}
    fn test_key_index() -> KeyIndex {
        let mut ki = KeyIndex::new("foo");
        ki.put(r(2)).unwrap();
        ki.put(r(4)).unwrap();
        ki.tombstone(r(6)).unwrap();
        ki.put(r(8)).unwrap();
        ki.put(r(10)).unwrap();
        ki.tombstone(r(12)).unwrap();
        ki.put(r(14)).unwrap();
        ki.put(Revision::new(14, 1)).unwrap();
        ki.tombstone(r(16)).unwrap();
        ki
    }

    fn gen(created: Revision, ver: i64, revs: &[Revision]) -> Generation {
        Generation {
            ver,
            created,
            revs: revs.to_vec(),
        }
    }

    #[test]
    fn get_matches_etcd_table() {
        // etcd key_index_test.go TestKeyIndexGet (after compact(4)).
        let mut ki = test_key_index();
        ki.compact(4, &mut HashSet::new());
        type Want = Option<(Revision, Revision, i64)>;
        let cases: Vec<(i64, Want)> = vec![
            (17, None),
            (16, None),
            (15, Some((Revision::new(14, 1), r(14), 2))),
            (14, Some((Revision::new(14, 1), r(14), 2))),
            (13, None),
            (12, None),
            (11, Some((r(10), r(8), 2))),
            (10, Some((r(10), r(8), 2))),
            (9, Some((r(8), r(8), 1))),
            (8, Some((r(8), r(8), 1))),
            (7, None),
            (6, None),
            (5, Some((r(4), r(2), 2))),
            (4, Some((r(4), r(2), 2))),
            (3, None),
            (2, None),
            (1, None),
            (0, None),
        ];
        for (rev, want) in cases {
            match (ki.get(rev), want) {
                (Ok(got), Some(w)) => assert_eq!(got, w, "rev {rev}"),
                (Err(MvccError::RevisionNotFound), None) => {}
                (got, w) => panic!("rev {rev}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn since_matches_etcd_table() {
        // etcd TestKeyIndexSince.
        let mut ki = test_key_index();
        ki.compact(4, &mut HashSet::new());
        let all = [r(4), r(6), r(8), r(10), r(12), Revision::new(14, 1), r(16)];
        let cases: [(i64, &[Revision]); 18] = [
            (17, &[]),
            (16, &all[6..]),
            (15, &all[6..]),
            (14, &all[5..]),
            (13, &all[5..]),
            (12, &all[4..]),
            (11, &all[4..]),
            (10, &all[3..]),
            (9, &all[3..]),
            (8, &all[2..]),
            (7, &all[2..]),
            (6, &all[1..]),
            (5, &all[1..]),
            (4, &all[..]),
            (3, &all[..]),
            (2, &all[..]),
            (1, &all[..]),
            (0, &all[..]),
        ];
        for (rev, want) in cases {
            assert_eq!(ki.since(rev), want.to_vec(), "since {rev}");
        }
    }

    #[test]
    fn put_and_tombstone_build_generations() {
        // etcd TestKeyIndexPut / TestKeyIndexTombstone.
        let mut ki = KeyIndex::new("foo");
        ki.put(r(5)).unwrap();
        assert_eq!(ki.generations(), &[gen(r(5), 1, &[r(5)])]);
        assert_eq!(ki.modified(), r(5));
        ki.put(r(7)).unwrap();
        assert_eq!(ki.generations(), &[gen(r(5), 2, &[r(5), r(7)])]);
        assert!(ki.put(r(7)).is_err());
        ki.tombstone(r(9)).unwrap();
        assert_eq!(
            ki.generations(),
            &[gen(r(5), 3, &[r(5), r(7), r(9)]), Generation::default()]
        );
        assert!(matches!(
            ki.tombstone(r(11)),
            Err(MvccError::RevisionNotFound)
        ));
        ki.put(r(11)).unwrap();
        ki.put(r(13)).unwrap();
        ki.tombstone(r(15)).unwrap();
        assert_eq!(
            ki.generations(),
            &[
                gen(r(5), 3, &[r(5), r(7), r(9)]),
                gen(r(11), 3, &[r(11), r(13), r(15)]),
                Generation::default()
            ]
        );
        assert_eq!(ki.modified(), r(15));
        assert_eq!(ki.revision_count(), 6);
        assert!(!ki.is_live());
    }

    #[test]
    fn restore_uses_stored_version_and_creation() {
        let mut ki = KeyIndex::new("foo");
        ki.restore(r(2), r(5), 3);
        ki.put(r(8)).unwrap();
        assert_eq!(ki.get(8).unwrap(), (r(8), r(2), 4));
        assert_eq!(ki.get(5).unwrap(), (r(5), r(2), 3));
        let mut t = KeyIndex::new("bar");
        t.restore_tombstone(r(7));
        assert!(!t.is_live());
        assert!(matches!(t.get(7), Err(MvccError::RevisionNotFound)));
        t.put(r(9)).unwrap();
        assert_eq!(t.get(9).unwrap(), (r(9), r(9), 1));
        let mut avail = HashSet::new();
        t.compact(7, &mut avail);
        assert_eq!(avail, HashSet::from([r(7)]));
        let mut avail = HashSet::new();
        t.compact(8, &mut avail);
        assert_eq!(avail, HashSet::new());
        let mut avail = HashSet::new();
        t.compact(9, &mut avail);
        assert_eq!(avail, HashSet::from([r(9)]));
        assert_eq!(t.generations(), &[gen(r(9), 1, &[r(9)])]);
    }

    #[test]
    fn compact_and_keep_match_etcd_table() {
        // etcd TestKeyIndexCompactAndKeep.
        let g1 = |revs: &[Revision]| gen(r(2), 3, revs);
        let g2 = |revs: &[Revision]| gen(r(8), 3, revs);
        let g3 = |revs: &[Revision]| gen(r(14), 3, revs);
        let e = Generation::default();
        let full1 = [r(2), r(4), r(6)];
        let full2 = [r(8), r(10), r(12)];
        let full3 = [r(14), Revision::new(14, 1), r(16)];
        let cases: Vec<(i64, Vec<Generation>, Vec<Revision>)> = vec![
            (
                1,
                vec![g1(&full1), g2(&full2), g3(&full3), e.clone()],
                vec![],
            ),
            (
                2,
                vec![g1(&full1), g2(&full2), g3(&full3), e.clone()],
                vec![r(2)],
            ),
            (
                3,
                vec![g1(&full1), g2(&full2), g3(&full3), e.clone()],
                vec![r(2)],
            ),
            (
                4,
                vec![g1(&[r(4), r(6)]), g2(&full2), g3(&full3), e.clone()],
                vec![r(4)],
            ),
            (
                5,
                vec![g1(&[r(4), r(6)]), g2(&full2), g3(&full3), e.clone()],
                vec![r(4)],
            ),
            (
                6,
                vec![g1(&[r(6)]), g2(&full2), g3(&full3), e.clone()],
                vec![r(6)],
            ),
            (7, vec![g2(&full2), g3(&full3), e.clone()], vec![]),
            (8, vec![g2(&full2), g3(&full3), e.clone()], vec![r(8)]),
            (9, vec![g2(&full2), g3(&full3), e.clone()], vec![r(8)]),
            (
                10,
                vec![g2(&[r(10), r(12)]), g3(&full3), e.clone()],
                vec![r(10)],
            ),
            (
                11,
                vec![g2(&[r(10), r(12)]), g3(&full3), e.clone()],
                vec![r(10)],
            ),
            (12, vec![g2(&[r(12)]), g3(&full3), e.clone()], vec![r(12)]),
            (13, vec![g3(&full3), e.clone()], vec![]),
            (
                14,
                vec![g3(&[Revision::new(14, 1), r(16)]), e.clone()],
                vec![Revision::new(14, 1)],
            ),
            (
                15,
                vec![g3(&[Revision::new(14, 1), r(16)]), e.clone()],
                vec![Revision::new(14, 1)],
            ),
            (16, vec![g3(&[r(16)]), e.clone()], vec![r(16)]),
            (17, vec![e.clone()], vec![]),
        ];
        // Compacting a fresh copy at each revision.
        for (c, want_gens, want_avail) in &cases {
            let mut ki = test_key_index();
            let mut avail = HashSet::new();
            ki.compact(*c, &mut avail);
            assert_eq!(ki.generations(), &want_gens[..], "compact {c}");
            assert_eq!(avail, want_avail.iter().copied().collect(), "compact {c}");
            // keep() excludes tombstones at exactly c.
            let mut kept = HashSet::new();
            test_key_index().keep(*c, &mut kept);
            let want_keep: HashSet<Revision> = want_avail
                .iter()
                .copied()
                .filter(|rv| ![6, 12, 16].contains(&rv.main))
                .collect();
            assert_eq!(kept, want_keep, "keep {c}");
        }
        // Compacting one index incrementally gives the same results.
        let mut ki = test_key_index();
        for (c, want_gens, want_avail) in &cases {
            let mut avail = HashSet::new();
            ki.compact(*c, &mut avail);
            assert_eq!(ki.generations(), &want_gens[..], "incremental compact {c}");
            assert_eq!(
                avail,
                want_avail.iter().copied().collect(),
                "incremental {c}"
            );
        }
        assert!(ki.is_empty());
    }

    #[test]
    fn compact_keeps_recreation_inside_the_compaction_revision() {
        // etcd issue #22376: delete and re-create in revision 3, compact(3).
        let mut ki = KeyIndex::new("foo");
        ki.put(r(2)).unwrap();
        ki.tombstone(Revision::new(3, 0)).unwrap();
        ki.put(Revision::new(3, 1)).unwrap();
        let mut avail = HashSet::new();
        ki.compact(3, &mut avail);
        assert_eq!(avail, HashSet::from([r(3), Revision::new(3, 1)]));
        assert_eq!(
            ki.get(3).unwrap(),
            (Revision::new(3, 1), Revision::new(3, 1), 1)
        );
        let mut avail = HashSet::new();
        ki.compact(4, &mut avail);
        assert_eq!(avail, HashSet::from([Revision::new(3, 1)]));
        assert_eq!(
            ki.generations(),
            &[gen(Revision::new(3, 1), 1, &[Revision::new(3, 1)])]
        );
    }
}
