//! The five logical trees every backend stores.

use std::fmt;
use std::str::FromStr;

use crate::error::StorageError;

/// One of the five logical keyspaces of a rusd store.
///
/// Each tree is isolated from the others: the same key may hold different values in
/// different trees, and a scan of one tree never returns keys of another. The names and
/// numeric ids are stable: they appear in on-disk table names and in the portable
/// snapshot format, so they must never be renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// MVCC key-value revisions (etcd's `key` bucket).
    Kv,
    /// Secondary index data owned by the layer above (e.g. key index checkpoints).
    Index,
    /// Store metadata: consistent index, compaction markers, format versions.
    Meta,
    /// Leases and their attachments.
    Lease,
    /// Users, roles and permissions.
    Auth,
}

impl Tree {
    /// All trees in id order.
    pub const ALL: [Tree; 5] = [Tree::Kv, Tree::Index, Tree::Meta, Tree::Lease, Tree::Auth];

    /// The stable, lower-case name of the tree (`"kv"`, `"index"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Tree::Kv => "kv",
            Tree::Index => "index",
            Tree::Meta => "meta",
            Tree::Lease => "lease",
            Tree::Auth => "auth",
        }
    }

    /// The stable numeric id of the tree (0..=4), used by the snapshot format.
    pub const fn id(self) -> u8 {
        match self {
            Tree::Kv => 0,
            Tree::Index => 1,
            Tree::Meta => 2,
            Tree::Lease => 3,
            Tree::Auth => 4,
        }
    }

    /// The tree with numeric id `id`, if any.
    pub const fn from_id(id: u8) -> Option<Tree> {
        match id {
            0 => Some(Tree::Kv),
            1 => Some(Tree::Index),
            2 => Some(Tree::Meta),
            3 => Some(Tree::Lease),
            4 => Some(Tree::Auth),
            _ => None,
        }
    }
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tree {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tree::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| StorageError::InvalidArgument(format!("unknown tree name {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_stable_and_round_trip() {
        let names: Vec<_> = Tree::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, ["kv", "index", "meta", "lease", "auth"]);
        for (i, t) in Tree::ALL.into_iter().enumerate() {
            assert_eq!(t.id() as usize, i);
            assert_eq!(Tree::from_id(t.id()), Some(t));
            assert_eq!(t.name().parse::<Tree>().ok(), Some(t));
        }
        assert_eq!(Tree::from_id(5), None);
        assert!("KV".parse::<Tree>().is_err());
    }
}
