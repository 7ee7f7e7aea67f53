//! The state of a mounted file system (current and durable trees) and its FUSE operations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::image::{reachable, Image, Kind, Node, ROOT};
use crate::{Options, Stats};

/// Size of the pages whose dirtiness is tracked.
pub(crate) const PAGE: u64 = 4096;
/// How long the kernel may cache attributes and entries.
const TTL: Duration = Duration::from_secs(1);
/// `statfs` figures when no capacity is set.
const UNLIMITED_BLOCKS: u64 = 1 << 30;

/// A node of the current tree with its bookkeeping.
#[derive(Debug)]
struct Live {
    node: Node,
    /// Names in current directories.
    nlink: u32,
    /// Open file handles.
    open: u32,
    /// Pages written since the last sync.
    dirty: BTreeSet<u64>,
}

/// Everything behind the file system's one lock.
#[derive(Debug)]
pub(crate) struct State {
    live: HashMap<u64, Live>,
    durable: BTreeMap<u64, Node>,
    next_ino: u64,
    next_fh: u64,
    frozen: bool,
    capacity: Option<u64>,
    /// Sum of the current sizes of the live files.
    used: u64,
    pub(crate) stats: Stats,
    options: Options,
}

fn file_len(node: &Node) -> u64 {
    match &node.kind {
        Kind::File(d) => d.len() as u64,
        Kind::Dir(_) => 0,
    }
}

fn mark_dirty(dirty: &mut BTreeSet<u64>, from: u64, to: u64) {
    if to > from {
        dirty.extend(from / PAGE..=(to - 1) / PAGE);
    }
}

/// Copies the pages `pages` of `cur` into `dst`, whose length becomes `len`.
fn copy_pages(dst: &mut Vec<u8>, cur: &[u8], pages: impl Iterator<Item = u64>, len: usize) {
    dst.resize(len, 0);
    for p in pages {
        let a = ((p * PAGE) as usize).min(len);
        let b = (((p + 1) * PAGE) as usize).min(len);
        dst[a..b].copy_from_slice(&cur[a..b]);
    }
}

/// splitmix64, for the torn-cache model.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl State {
    pub(crate) fn new(image: Image, options: Options) -> State {
        let mut nlinks: HashMap<u64, u32> = HashMap::new();
        for node in image.nodes.values() {
            if let Some(entries) = node.entries() {
                for ino in entries.values() {
                    *nlinks.entry(*ino).or_default() += 1;
                }
            }
        }
        let mut used = 0;
        let live = image
            .nodes
            .iter()
            .map(|(ino, node)| {
                used += file_len(node);
                let nlink = if *ino == ROOT {
                    1
                } else {
                    nlinks.get(ino).copied().unwrap_or(0)
                };
                (
                    *ino,
                    Live {
                        node: node.clone(),
                        nlink,
                        open: 0,
                        dirty: BTreeSet::new(),
                    },
                )
            })
            .collect();
        State {
            live,
            next_ino: image.nodes.keys().max().copied().unwrap_or(ROOT) + 1,
            durable: image.nodes,
            next_fh: 1,
            frozen: false,
            capacity: options.capacity,
            used,
            stats: Stats::default(),
            options,
        }
    }

    pub(crate) fn set_capacity(&mut self, capacity: Option<u64>) {
        self.capacity = capacity;
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// Freezes the file system and returns what survives a power cut.
    pub(crate) fn cut(&mut self) -> Image {
        self.frozen = true;
        let mut durable = self.durable.clone();
        if let Some(seed) = self.options.torn_seed {
            for (ino, live) in &self.live {
                let (
                    Kind::File(cur),
                    Some(Node {
                        kind: Kind::File(dst),
                        ..
                    }),
                ) = (&live.node.kind, durable.get_mut(ino))
                else {
                    continue;
                };
                let survivors: Vec<u64> = live
                    .dirty
                    .iter()
                    .copied()
                    .filter(|p| mix(seed ^ mix(*ino) ^ p.wrapping_mul(0x100_0000_01b3)) & 1 == 1)
                    .filter(|p| p * PAGE < cur.len() as u64)
                    .collect();
                for p in survivors {
                    let a = (p * PAGE) as usize;
                    let b = (((p + 1) * PAGE) as usize).min(cur.len());
                    if dst.len() < b {
                        dst.resize(b, 0);
                    }
                    dst[a..b].copy_from_slice(&cur[a..b]);
                }
            }
        }
        Image::from_reachable(&durable)
    }

    /// Freezes the file system and returns its current tree, all of it treated as synced.
    pub(crate) fn current(&mut self) -> Image {
        self.frozen = true;
        let all: BTreeMap<u64, Node> = self
            .live
            .iter()
            .map(|(ino, l)| (*ino, l.node.clone()))
            .collect();
        Image::from_reachable(&all)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let live = self.live.get(&ino).ok_or(Errno::ENOENT)?;
        let n = &live.node;
        let (kind, size) = match &n.kind {
            Kind::File(d) => (FileType::RegularFile, d.len() as u64),
            Kind::Dir(e) => (FileType::Directory, e.len() as u64),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.ctime,
            kind,
            perm: n.perm,
            nlink: if matches!(n.kind, Kind::Dir(_)) {
                2
            } else {
                live.nlink
            },
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn dir(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.live.get(&ino).ok_or(Errno::ENOENT)?.node.kind {
            Kind::Dir(e) => Ok(e),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        let live = self.live.get_mut(&ino).ok_or(Errno::ENOENT)?;
        live.node.mtime = SystemTime::now();
        live.node.ctime = live.node.mtime;
        match &mut live.node.kind {
            Kind::Dir(e) => Ok(e),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn check(&mut self) -> Result<(), Errno> {
        if self.frozen {
            self.stats.after_cut += 1;
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    /// Refuses growing the live data by `more` bytes past the capacity.
    fn reserve(&mut self, more: u64) -> Result<(), Errno> {
        match self.capacity {
            Some(cap) if more > 0 && self.used + more > cap => {
                self.stats.enospc += 1;
                Err(Errno::ENOSPC)
            }
            _ => Ok(()),
        }
    }

    /// Drops a node no name and no handle refers to.
    fn collect(&mut self, ino: u64) {
        let gone = self
            .live
            .get(&ino)
            .is_some_and(|l| l.nlink == 0 && l.open == 0 && ino != ROOT);
        if gone {
            if let Some(l) = self.live.remove(&ino) {
                self.used -= file_len(&l.node);
            }
        }
    }

    fn unlink_name(&mut self, ino: u64) {
        if let Some(l) = self.live.get_mut(&ino) {
            l.nlink = l.nlink.saturating_sub(1);
            l.node.ctime = SystemTime::now();
        }
        self.collect(ino);
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        self.check()?;
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    fn new_node(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<u64, Errno> {
        self.check()?;
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.dir_mut(parent)?.insert(name.to_owned(), ino);
        self.live.insert(
            ino,
            Live {
                node,
                nlink: 1,
                open: 0,
                dirty: BTreeSet::new(),
            },
        );
        Ok(ino)
    }

    fn open_handle(&mut self, ino: u64) -> Result<u64, Errno> {
        let live = self.live.get_mut(&ino).ok_or(Errno::ENOENT)?;
        live.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        Ok(fh)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        self.check()?;
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        match (
            &self.live.get(&ino).ok_or(Errno::ENOENT)?.node.kind,
            want_dir,
        ) {
            (Kind::Dir(e), true) if !e.is_empty() => return Err(Errno::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.remove(name);
        self.unlink_name(ino);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        self.check()?;
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        let is_dir = matches!(
            self.live.get(&ino).ok_or(Errno::ENOENT)?.node.kind,
            Kind::Dir(_)
        );
        let old = self.dir(newparent)?.get(newname).copied();
        if let Some(old) = old {
            if old == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (&self.live.get(&old).ok_or(Errno::ENOENT)?.node.kind, is_dir) {
                (Kind::Dir(e), true) if !e.is_empty() => return Err(Errno::ENOTEMPTY),
                (Kind::Dir(_), false) => return Err(Errno::EISDIR),
                (Kind::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        self.dir_mut(parent)?.remove(name);
        self.dir_mut(newparent)?.insert(newname.to_owned(), ino);
        if let Some(old) = old {
            self.unlink_name(old);
        }
        if let Some(l) = self.live.get_mut(&ino) {
            l.node.ctime = SystemTime::now();
        }
        Ok(())
    }

    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.check()?;
        match &self.live.get(&ino).ok_or(Errno::ENOENT)?.node.kind {
            Kind::File(d) => {
                let a = (offset as usize).min(d.len());
                let b = (offset as usize).saturating_add(size as usize).min(d.len());
                Ok(d[a..b].to_vec())
            }
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        self.check()?;
        let len = file_len(&self.live.get(&ino).ok_or(Errno::ENOENT)?.node);
        let end = offset + data.len() as u64;
        self.reserve(end.saturating_sub(len))?;
        let live = self.live.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let Kind::File(d) = &mut live.node.kind else {
            return Err(Errno::EISDIR);
        };
        if (d.len() as u64) < end {
            // Bytes between the old end and `offset` become zeros: dirty too.
            mark_dirty(&mut live.dirty, d.len() as u64, offset);
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(data);
        mark_dirty(&mut live.dirty, offset, end);
        live.node.mtime = SystemTime::now();
        live.node.ctime = live.node.mtime;
        self.used += end.saturating_sub(len);
        self.stats.bytes_written += data.len() as u64;
        Ok(data.len() as u32)
    }

    fn set_len(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let len = file_len(&self.live.get(&ino).ok_or(Errno::ENOENT)?.node);
        self.reserve(size.saturating_sub(len))?;
        let live = self.live.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let Kind::File(d) = &mut live.node.kind else {
            return Err(Errno::EISDIR);
        };
        d.resize(size as usize, 0);
        mark_dirty(&mut live.dirty, len.min(size), len.max(size));
        live.node.mtime = SystemTime::now();
        live.node.ctime = live.node.mtime;
        self.used = self.used + size - len;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        self.check()?;
        if let Some(size) = size {
            self.set_len(ino, size)?;
        }
        let live = self.live.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let n = &mut live.node;
        let time = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        if let Some(mode) = mode {
            n.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = uid {
            n.uid = uid;
        }
        if let Some(gid) = gid {
            n.gid = gid;
        }
        if let Some(t) = atime {
            n.atime = time(t);
        }
        if let Some(t) = mtime {
            n.mtime = time(t);
        }
        n.ctime = SystemTime::now();
        self.attr(ino)
    }

    fn fallocate(&mut self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        self.check()?;
        let len = file_len(&self.live.get(&ino).ok_or(Errno::ENOENT)?.node);
        let end = offset.saturating_add(length);
        match mode {
            0 if end > len => self.set_len(ino, end),
            0 => Ok(()),
            libc::FALLOC_FL_KEEP_SIZE => self.reserve(end.saturating_sub(len)),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// `fsync`/`fdatasync` of a file: its data and size become durable (and, ext4-like, its
    /// names).
    fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        self.check()?;
        let live = self.live.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if matches!(live.node.kind, Kind::Dir(_)) {
            // fsync(2) of a directory reaches FUSE as fsyncdir; be safe anyway.
            return self.fsyncdir_inner(ino);
        }
        let dirty = std::mem::take(&mut live.dirty);
        match self.durable.get_mut(&ino) {
            Some(d) => {
                if let (Kind::File(dst), Kind::File(cur)) = (&mut d.kind, &live.node.kind) {
                    copy_pages(dst, cur, dirty.into_iter(), cur.len());
                }
                let n = &live.node;
                (d.perm, d.uid, d.gid) = (n.perm, n.uid, n.gid);
                (d.atime, d.mtime, d.ctime) = (n.atime, n.mtime, n.ctime);
            }
            None => {
                self.durable.insert(ino, live.node.clone());
            }
        }
        if self.options.ext4_like {
            self.persist_names(ino, 0);
        }
        self.stats.fsyncs += 1;
        Ok(())
    }

    /// Makes the current names of `ino` durable and drops its durable names that are gone
    /// (ext4's journal commit), recursively for parents not yet durable.
    fn persist_names(&mut self, ino: u64, depth: u32) {
        let names: Vec<(u64, OsString)> = self
            .live
            .iter()
            .filter_map(|(p, l)| l.node.entries().map(|e| (p, e)))
            .flat_map(|(p, e)| {
                e.iter()
                    .filter(|(_, i)| **i == ino)
                    .map(|(n, _)| (*p, n.clone()))
            })
            .collect();
        for node in self.durable.values_mut() {
            if let Kind::Dir(entries) = &mut node.kind {
                entries.retain(|_, i| *i != ino);
            }
        }
        // Durable names removed above that are still current are restored below.
        for (parent, name) in names {
            let fresh = !self.durable.contains_key(&parent);
            if fresh {
                if let Some(l) = self.live.get(&parent) {
                    self.durable.insert(parent, l.node.emptied());
                }
            }
            if let Some(Node {
                kind: Kind::Dir(entries),
                ..
            }) = self.durable.get_mut(&parent)
            {
                entries.insert(name, ino);
            }
            if fresh && depth < 64 {
                self.persist_names(parent, depth + 1);
            }
        }
    }

    fn fsyncdir_inner(&mut self, ino: u64) -> Result<(), Errno> {
        let live = self.live.get(&ino).ok_or(Errno::ENOENT)?;
        let Kind::Dir(entries) = &live.node.kind else {
            return Err(Errno::ENOTDIR);
        };
        for child in entries.values() {
            if !self.durable.contains_key(child) {
                if let Some(c) = self.live.get(child) {
                    self.durable.insert(*child, c.node.emptied());
                }
            }
        }
        self.durable.insert(ino, live.node.clone());
        // Durable nodes that no durable name reaches and that are gone from the current tree
        // can never come back.
        let reachable = reachable(&self.durable);
        let live = &self.live;
        self.durable
            .retain(|i, _| reachable.contains(i) || live.contains_key(i));
        self.stats.fsyncdirs += 1;
        Ok(())
    }

    fn fsyncdir(&mut self, ino: u64) -> Result<(), Errno> {
        self.check()?;
        self.fsyncdir_inner(ino)
    }

    fn statfs(&mut self) -> Result<(u64, u64, u64), Errno> {
        self.check()?;
        let blocks = self.capacity.map_or(UNLIMITED_BLOCKS, |c| c / PAGE);
        let used = self.used.div_ceil(PAGE);
        Ok((blocks, blocks.saturating_sub(used), self.live.len() as u64))
    }
}

/// The FUSE side: every operation takes the one lock.
pub(crate) struct PowerLossFs {
    pub(crate) state: Arc<Mutex<State>>,
}

fn reply_entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowerLossFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.state.lock().lookup(parent.0, name);
        reply_entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut st = self.state.lock();
        match st.check().and_then(|()| st.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self
            .state
            .lock()
            .setattr(ino.0, mode, uid, gid, size, atime, mtime);
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(Errno::EPERM);
            return;
        }
        let mut st = self.state.lock();
        let node = Node::new(
            Kind::File(Vec::new()),
            (mode & !umask & 0o7777) as u16,
            req.uid(),
            req.gid(),
        );
        let r = st
            .new_node(parent.0, name, node)
            .and_then(|ino| st.attr(ino));
        reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.state.lock();
        let node = Node::new(
            Kind::Dir(BTreeMap::new()),
            (mode & !umask & 0o7777) as u16,
            req.uid(),
            req.gid(),
        );
        let r = st
            .new_node(parent.0, name, node)
            .and_then(|ino| st.attr(ino));
        reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.state.lock().remove(parent.0, name, false);
        reply_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.state.lock().remove(parent.0, name, true);
        reply_empty(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self
            .state
            .lock()
            .rename(parent.0, name, newparent.0, newname, flags);
        reply_empty(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.state.lock();
        match st.check().and_then(|()| st.open_handle(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.state.lock();
        let node = Node::new(
            Kind::File(Vec::new()),
            (mode & !umask & 0o7777) as u16,
            req.uid(),
            req.gid(),
        );
        let r = st.new_node(parent.0, name, node).and_then(|ino| {
            let fh = st.open_handle(ino)?;
            Ok((st.attr(ino)?, fh))
        });
        match r {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.state.lock().read(ino.0, offset, size);
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.state.lock().write(ino.0, offset, data);
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): makes nothing durable.
        let r = self.state.lock().check();
        reply_empty(reply, r);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state.lock();
        if let Some(l) = st.live.get_mut(&ino.0) {
            l.open = l.open.saturating_sub(1);
        }
        st.collect(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.state.lock().fsync(ino.0);
        reply_empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.state.lock();
        match st.check().and_then(|()| st.dir(ino.0).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = self.state.lock();
        if let Err(e) = st.check() {
            reply.error(e);
            return;
        }
        let entries: Vec<(u64, FileType, OsString)> = match st.dir(ino.0) {
            Ok(e) => e
                .iter()
                .map(|(name, child)| {
                    let kind = match st.live.get(child).map(|l| &l.node.kind) {
                        Some(Kind::Dir(_)) => FileType::Directory,
                        _ => FileType::RegularFile,
                    };
                    (*child, kind, name.clone())
                })
                .collect(),
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let dots = [
            (ino.0, FileType::Directory, OsString::from(".")),
            (ino.0, FileType::Directory, OsString::from("..")),
        ];
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.state.lock().fsyncdir(ino.0);
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = self.state.lock().statfs();
        match r {
            Ok((blocks, free, files)) => reply.statfs(
                blocks,
                free,
                free,
                files,
                u64::from(u32::MAX),
                PAGE as u32,
                255,
                PAGE as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let r = self.state.lock().check();
        reply_empty(reply, r);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.state.lock().fallocate(ino.0, offset, length, mode);
        reply_empty(reply, r);
    }
}
