//! The in-memory file tree: [`Image`] and its nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

/// Inode number of the root directory.
pub(crate) const ROOT: u64 = 1;

/// What a node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A directory: name -> inode.
    Dir(BTreeMap<OsString, u64>),
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) atime: SystemTime,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
}

impl Node {
    pub(crate) fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Node {
            kind,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    pub(crate) fn empty_dir() -> Self {
        Node::new(Kind::Dir(BTreeMap::new()), 0o755, 0, 0)
    }

    /// The same kind of node with no content (a durable copy of a node never synced).
    pub(crate) fn emptied(&self) -> Self {
        let kind = match &self.kind {
            Kind::File(_) => Kind::File(Vec::new()),
            Kind::Dir(_) => Kind::Dir(BTreeMap::new()),
        };
        Node {
            kind,
            ..self.clone()
        }
    }

    pub(crate) fn entries(&self) -> Option<&BTreeMap<OsString, u64>> {
        match &self.kind {
            Kind::Dir(e) => Some(e),
            Kind::File(_) => None,
        }
    }
}

/// The inodes reachable from the root through directory entries.
pub(crate) fn reachable(all: &BTreeMap<u64, Node>) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![ROOT];
    while let Some(ino) = todo.pop() {
        let Some(node) = all.get(&ino) else { continue };
        if !seen.insert(ino) {
            continue;
        }
        if let Some(entries) = node.entries() {
            todo.extend(entries.values().copied());
        }
    }
    seen
}

/// One entry of [`Image::tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file and its content.
    File(Vec<u8>),
    /// A directory.
    Dir,
}

/// A whole file tree: what a cut leaves on the "disk", or what a clean unmount leaves.
///
/// [`Image::default`] is an empty root directory. Mounting an image reproduces it exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub(crate) nodes: BTreeMap<u64, Node>,
}

impl Default for Image {
    fn default() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, Node::empty_dir());
        Image { nodes }
    }
}

impl Image {
    /// The image made of the nodes reachable from the root (the others are garbage).
    pub(crate) fn from_reachable(all: &BTreeMap<u64, Node>) -> Image {
        let live = reachable(all);
        let mut nodes: BTreeMap<u64, Node> = live
            .iter()
            .filter_map(|ino| all.get(ino).map(|n| (*ino, n.clone())))
            .collect();
        nodes.entry(ROOT).or_insert_with(Node::empty_dir);
        // An entry naming a missing node cannot be mounted: drop it.
        for node in nodes.values_mut() {
            if let Kind::Dir(entries) = &mut node.kind {
                entries.retain(|_, ino| live.contains(ino));
            }
        }
        Image { nodes }
    }

    fn lookup(&self, path: &Path) -> Option<&Node> {
        let mut ino = ROOT;
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    ino = *self.nodes.get(&ino)?.entries()?.get(name)?;
                }
                Component::ParentDir | Component::Prefix(_) => return None,
            }
        }
        self.nodes.get(&ino)
    }

    /// The content of the file at `path` (relative to the root), if it is a file.
    pub fn read(&self, path: impl AsRef<Path>) -> Option<&[u8]> {
        match &self.lookup(path.as_ref())?.kind {
            Kind::File(data) => Some(data),
            Kind::Dir(_) => None,
        }
    }

    /// Whether anything exists at `path` (relative to the root).
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.lookup(path.as_ref()).is_some()
    }

    /// Every path (relative to the root, the root itself excluded) and what it is, sorted.
    /// Two images with the same tree have the same names, kinds and contents.
    pub fn tree(&self) -> BTreeMap<PathBuf, Entry> {
        let mut out = BTreeMap::new();
        let mut todo: Vec<(PathBuf, u64)> = vec![(PathBuf::new(), ROOT)];
        while let Some((path, ino)) = todo.pop() {
            let Some(Kind::Dir(entries)) = self.nodes.get(&ino).map(|n| &n.kind) else {
                continue;
            };
            for (name, child) in entries {
                let p = path.join(name);
                match self.nodes.get(child).map(|n| &n.kind) {
                    Some(Kind::File(data)) => {
                        out.insert(p, Entry::File(data.clone()));
                    }
                    Some(Kind::Dir(_)) => {
                        out.insert(p.clone(), Entry::Dir);
                        // A directory reached twice (two durable names) is listed under both.
                        if p.components().count() < 64 {
                            todo.push((p, *child));
                        }
                    }
                    None => {}
                }
            }
        }
        out
    }

    /// Total bytes of file data in the image.
    pub fn data_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.kind {
                Kind::File(d) => d.len() as u64,
                Kind::Dir(_) => 0,
            })
            .sum()
    }

    /// The names in the directory at `path`, sorted, or `None` if it is not a directory.
    pub fn list(&self, path: impl AsRef<Path>) -> Option<Vec<OsString>> {
        Some(
            self.lookup(path.as_ref())?
                .entries()?
                .keys()
                .cloned()
                .collect(),
        )
    }
}
