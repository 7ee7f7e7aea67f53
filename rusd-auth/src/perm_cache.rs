//! Per-user merged permissions (etcd `range_perm_cache.go`).
//!
//! For each user, every key permission of every granted role is turned into an interval in
//! etcd's "bytes affine" order, where the empty byte string is the largest element (+inf):
//!
//! * a single key `k` is the point `[k, k\0)`;
//! * `range_end == [0]` becomes the open end `[key, +inf)`;
//! * otherwise `[key, range_end)`.
//!
//! A point check (`range_end` empty) passes when some interval contains the key (etcd
//! `IntervalTree.Intersects` of the point); a range check passes when the intervals overlapping
//! the requested range cover it contiguously (etcd `IntervalTree.Contains`, reproduced step by
//! step over the intervals sorted by start, so adjacent grants combine exactly as in etcd).

use std::cmp::Ordering;

use crate::model::{Permission, Role, User};

/// etcd `BytesAffineComparable.Compare`: bytewise, except that the empty slice is +inf.
fn affine_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

/// A half-open interval in affine order (`end` empty = +inf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn point(key: &[u8]) -> Self {
        let mut end = key.to_vec();
        end.push(0);
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    fn of_permission(p: &Permission) -> Self {
        if p.range_end.is_empty() {
            Interval::point(&p.key)
        } else if p.range_end == [0] {
            Interval {
                begin: p.key.clone(),
                end: Vec::new(),
            }
        } else {
            Interval {
                begin: p.key.clone(),
                end: p.range_end.clone(),
            }
        }
    }

    /// etcd `Interval.Compare(..) == 0`: neither strictly left nor right of `other`.
    fn overlaps(&self, other: &Interval) -> bool {
        let left = affine_cmp(&self.begin, &other.begin) == Ordering::Less
            && affine_cmp(&self.end, &other.begin) != Ordering::Greater;
        let right = affine_cmp(&self.begin, &other.end) != Ordering::Less;
        !left && !right
    }
}

/// Intervals sorted by start (the in-order walk of etcd's interval tree).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IntervalSet {
    ivls: Vec<Interval>,
}

impl IntervalSet {
    fn insert(&mut self, ivl: Interval) {
        let pos = self
            .ivls
            .partition_point(|x| affine_cmp(&x.begin, &ivl.begin) != Ordering::Greater);
        self.ivls.insert(pos, ivl);
    }

    /// etcd `IntervalTree.Intersects(point)`.
    fn contains_point(&self, key: &[u8]) -> bool {
        let pt = Interval::point(key);
        self.ivls.iter().any(|x| pt.overlaps(x))
    }

    /// etcd `IntervalTree.Contains(ivl)`.
    fn covers(&self, q: &Interval) -> bool {
        let mut min_begin: Option<&[u8]> = None;
        let mut max_end: &[u8] = &[];
        for n in self.ivls.iter().filter(|n| q.overlaps(n)) {
            match min_begin {
                None => {
                    min_begin = Some(&n.begin);
                    max_end = &n.end;
                }
                Some(_) => {
                    if affine_cmp(max_end, &n.begin) == Ordering::Less {
                        return false;
                    }
                    if affine_cmp(&n.end, max_end) == Ordering::Greater {
                        max_end = &n.end;
                    }
                }
            }
        }
        match min_begin {
            None => false,
            Some(b) => {
                affine_cmp(max_end, &q.end) != Ordering::Less
                    && affine_cmp(b, &q.begin) != Ordering::Greater
            }
        }
    }
}

/// The merged read and write permissions of one user (etcd `unifiedRangePermissions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UnifiedPerms {
    read: IntervalSet,
    write: IntervalSet,
}

/// Which kind of access a check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

impl UnifiedPerms {
    /// etcd `getMergedPerms`: roles that no longer exist are skipped.
    pub(crate) fn build<'a>(user: &User, role: impl Fn(&str) -> Option<&'a Role>) -> Self {
        let mut out = UnifiedPerms::default();
        for name in &user.roles {
            let Some(r) = role(name) else { continue };
            for p in &r.permissions {
                let ivl = Interval::of_permission(p);
                if p.perm_type.reads() {
                    out.read.insert(ivl.clone());
                }
                if p.perm_type.writes() {
                    out.write.insert(ivl);
                }
            }
        }
        out
    }

    /// etcd `isRangeOpPermitted` after the cache lookup: `checkKeyPoint` when `range_end` is
    /// empty, `checkKeyInterval` otherwise (`[0]` = open end).
    pub(crate) fn permits(&self, key: &[u8], range_end: &[u8], access: Access) -> bool {
        let set = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        if range_end.is_empty() {
            return set.contains_point(key);
        }
        let end = if range_end == [0] {
            Vec::new()
        } else {
            range_end.to_vec()
        };
        set.covers(&Interval {
            begin: key.to_vec(),
            end,
        })
    }
}

/// etcd `isValidPermissionRange`: a non-empty key, and a range end that is empty (single key),
/// `[0]` (open end) or greater than the key.
pub(crate) fn is_valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    if range_end.is_empty() {
        return true;
    }
    affine_cmp(key, range_end) == Ordering::Less || range_end == [0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PermissionType::*;

    fn perms(ps: Vec<Permission>) -> UnifiedPerms {
        let role = Role {
            name: "r".into(),
            permissions: ps,
        };
        let user = User {
            name: "u".into(),
            password_hash: None,
            roles: vec!["r".into()],
            options: Default::default(),
        };
        UnifiedPerms::build(&user, |n| (n == "r").then_some(&role))
    }

    type Ivls<'a> = Vec<(&'a [u8], &'a [u8])>;

    fn set(ivls: &[(&[u8], &[u8])]) -> IntervalSet {
        let mut s = IntervalSet::default();
        for (b, e) in ivls {
            s.insert(Interval {
                begin: b.to_vec(),
                end: e.to_vec(),
            });
        }
        s
    }

    fn ivl(b: &[u8], e: &[u8]) -> Interval {
        Interval {
            begin: b.to_vec(),
            end: e.to_vec(),
        }
    }

    #[test]
    fn etcd_test_range_permission_table() {
        // etcd 3.4 auth/range_perm_cache_test.go TestRangePermission, case by case.
        let cases: Vec<(Ivls, Interval, bool)> = vec![
            (vec![(b"a", b"c"), (b"x", b"z")], ivl(b"a", b"z"), false),
            (
                vec![(b"a", b"f"), (b"c", b"d"), (b"f", b"z")],
                ivl(b"a", b"z"),
                true,
            ),
            (
                vec![(b"a", b"d"), (b"a", b"b"), (b"c", b"f")],
                ivl(b"a", b"f"),
                true,
            ),
            (
                vec![(b"a", b"d"), (b"a", b"b"), (b"c", b"f")],
                ivl(b"a", b""),
                false,
            ),
            (vec![(b"a", b"")], ivl(b"a", b""), true),
            (vec![(&[0], b"")], ivl(b"a", b""), true),
            (vec![(&[0], b"")], ivl(&[0], b""), true),
        ];
        for (i, (perms, q, want)) in cases.into_iter().enumerate() {
            assert_eq!(set(&perms).covers(&q), want, "case {i}");
        }
    }

    #[test]
    fn etcd_test_key_permission_table() {
        // etcd 3.4 auth/range_perm_cache_test.go TestKeyPermission, case by case.
        let cases: Vec<(Ivls, &[u8], bool)> = vec![
            (vec![(b"a", b"c"), (b"x", b"z")], b"f", false),
            (vec![(b"a", b"f"), (b"c", b"d"), (b"f", b"z")], b"b", true),
            (vec![(b"a", b"d"), (b"a", b"b"), (b"c", b"f")], b"d", true),
            (vec![(b"a", b"d"), (b"a", b"b"), (b"c", b"f")], b"f", false),
            (vec![(b"a", b"d"), (b"a", b"b"), (b"c", b"")], b"f", true),
            (vec![(b"a", b"d"), (b"a", b"b"), (&[0], b"")], b"f", true),
        ];
        for (i, (perms, key, want)) in cases.into_iter().enumerate() {
            assert_eq!(set(&perms).contains_point(key), want, "case {i}");
        }
    }

    #[test]
    fn permissions_with_etcd_range_end_conventions() {
        let p = perms(vec![Permission::new(Read, "a", vec![0])]);
        assert!(p.permits(b"a", &[0], Access::Read));
        assert!(p.permits(b"zzz", b"", Access::Read));
        assert!(!p.permits(&[0], &[0], Access::Read));
        let p = perms(vec![Permission::new(Read, vec![0], vec![0])]);
        assert!(p.permits(&[0], &[0], Access::Read));
        assert!(!p.permits(b"a", b"", Access::Write));
    }

    #[test]
    fn points_and_adjacent_ranges() {
        let p = perms(vec![
            Permission::new(ReadWrite, "foo", ""),
            Permission::prefix(Write, "bar/"),
        ]);
        assert!(p.permits(b"foo", b"", Access::Read));
        assert!(p.permits(b"foo", b"foo\0", Access::Read));
        assert!(!p.permits(b"foo", b"fop", Access::Read));
        assert!(!p.permits(b"fo", b"", Access::Read));
        assert!(p.permits(b"bar/x", b"", Access::Write));
        assert!(p.permits(b"bar/", b"bar0", Access::Write));
        assert!(!p.permits(b"bar/", b"bar1", Access::Write));
        assert!(!p.permits(b"bar/x", b"", Access::Read));
    }

    #[test]
    fn valid_permission_ranges() {
        assert!(is_valid_permission_range(b"a", b""));
        assert!(is_valid_permission_range(b"a", b"b"));
        assert!(is_valid_permission_range(b"a", &[0]));
        assert!(is_valid_permission_range(&[0], &[0]));
        assert!(!is_valid_permission_range(b"", b"b"));
        assert!(!is_valid_permission_range(b"b", b"a"));
        assert!(!is_valid_permission_range(b"a", b"a"));
    }

    #[test]
    fn prefix_range_end_matches_clientv3() {
        assert_eq!(crate::model::prefix_range_end(b"abc"), b"abd");
        assert_eq!(crate::model::prefix_range_end(b"a\xff"), b"b");
        assert_eq!(crate::model::prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(crate::model::prefix_range_end(b""), vec![0]);
    }
}
