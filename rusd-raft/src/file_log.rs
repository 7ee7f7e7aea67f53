//! [`FileLog`]: the raft log as one append-only file of CRC'd records, read back from the file;
//! in memory only an index of where each entry lies and a byte-bounded cache of the newest
//! entries.
//!
//! # Why a file of its own
//! The engine-based [`LogStore`](crate::log_store::LogStore) pays an engine transaction and
//! the engine's flush for every append: measured with `rusd-bench load` against one sled
//! member, five `sync_file_range` calls besides the `fdatasync` per append, which halved the
//! single-client durable put rate of the server. A raft log needs none of an engine's
//! machinery: it is appended at the end, cut at the end (truncate) and dropped at the front
//! (purge). Here an append is one `write` and one `fdatasync`.
//!
//! # Format
//! `<dir>/raft.wal` is a sequence of records `len: u32 BE | crc32(body): u32 BE | body`, the
//! body a [`postcard`]-encoded `Record`: one entry, a truncation, a purge, the vote, the
//! committed log id. Each entry has a record of its own, so that one entry can be read alone.
//! Files written before that hold batches of entries in one record (`Record::Entries`, the
//! first variant); they still open and read: an entry of such a batch is found by decoding its
//! batch. Opening replays the records in order, streaming (never the whole file in memory); a
//! torn or corrupt tail (a crash in the middle of a write) ends the replay and is cut off.
//!
//! # Memory
//! Entries are not kept in memory (etcd keeps them in raft's `MemoryStorage`, so its memory
//! grows with the bytes of the unpurged log: 15,000 requests of 1.5 MiB would take 22 GiB).
//! What is kept:
//! * the index: per entry its record's offset and length, 12 bytes, in a `VecDeque` (indexes
//!   are contiguous, so the position in the deque is the log index minus the first one);
//! * the leader id of each run of entries written by the same leader (a handful: one per
//!   election), from which the log id of any entry follows;
//! * a cache of the newest entries, those the state machine applies next and the leader
//!   replicates next, bounded to [`FileLogOptions::cache_bytes`] (default
//!   [`DEFAULT_CACHE_BYTES`]) counting each entry as its encoded size plus the size of an
//!   [`Entry`].
//!
//! Reads that miss the cache ([`RaftLogReader::try_get_log_entries`] of older entries, for a
//! follower that lags or a restart that re-applies) read the records with positional reads
//! (`pread`, no seek on the shared handle), several neighbouring records with one read of at
//! most [`READ_SPAN`] bytes, and verify each record's checksum: a mismatch, or a record that is
//! not the entry the index promised, is a [`StorageError`] naming the log index, never a panic
//! or a wrong entry.
//!
//! # Rewrite
//! When the file exceeds 64 MiB and is more than twice the size of the live records (after
//! purges), it is rewritten: the vote, the committed log id, the purge point, then the live
//! entries copied from the old file in chunks of at most [`READ_SPAN`] bytes (each checked
//! against its checksum on the way) into a new file that is `fdatasync`ed, renamed over the old
//! one, and the directory `fsync`ed. A crash before the rename leaves the old file; after it,
//! the new one. The index then points into the new file; a reader that took its positions just
//! before still reads the old file through its open handle.
//!
//! # Preallocation
//! The file is extended in zero-filled chunks of [`PREALLOC_BYTES`] ahead of the records
//! (etcd preallocates its WAL segments for the same reason): an append then overwrites
//! allocated blocks, so its `fdatasync` writes the data alone, while an append that grows the
//! file also has to commit the file system's journal (the new size and blocks). The replay
//! stops at the zero tail (a record is never empty), and opening cuts the tail off again.
//!
//! # Durability
//! Appends and the vote are `fdatasync`ed before they are reported durable (with `sync`, the
//! default); truncations, purges and the committed log id ride in the file without a sync of
//! their own and become durable with the next one (losing them in a crash is harmless, see
//! [`crate::log_store`]). A failed write or sync is reported to openraft, which stops the
//! member.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, CommittedLeaderId, LogState, OptionalSend, RaftLogReader, StorageIOError,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// File name of the log inside its directory.
pub const WAL_FILE: &str = "raft.wal";
/// The file is rewritten when it exceeds this size and twice the size of the live state.
const REWRITE_MIN_BYTES: u64 = 64 * 1024 * 1024;
/// The file is extended by this many zero bytes whenever a write would pass its end (see the
/// [module docs](self#preallocation)).
pub const PREALLOC_BYTES: u64 = 4 * 1024 * 1024;
/// Default byte budget of the cache of the newest entries (see the [module docs](self#memory)).
///
/// The cache serves the entries the state machine applies next and the leader replicates
/// next, which trail the last append by a few entries (an entry carries up to 256 commands of
/// a group commit); an older entry is read from the file. 1 MiB holds dozens of such entries;
/// 8 MiB (before) kept every entry of a short run in memory twice, with the state machine's
/// copy: about 2 MiB of peak RSS for one member under `rusd-bench load --clients 64 --ops
/// 10000`.
pub const DEFAULT_CACHE_BYTES: usize = 1024 * 1024;
/// Largest span of the file read with one positional read when several records are read
/// (a single larger record is read alone); also the chunk of a rewrite.
pub const READ_SPAN: u64 = 4 * 1024 * 1024;
/// Largest record accepted when reading (a corrupt length beyond it ends the replay).
const MAX_RECORD: usize = 1 << 30;
/// Length of a record's header: the body length and its CRC.
const HEADER: u64 = 8;

/// One record of the file. postcard names variants by position: new ones go at the end.
/// `E` is [`Entry`] when reading and `&Entry` when writing (no copy of the entry).
#[derive(Debug, Serialize, Deserialize)]
enum Record<E> {
    /// Entries written together: the format before [`Record::Entry`], still replayed and read.
    Entries(Vec<Entry>),
    /// Every entry at or after this index is gone.
    Truncate(u64),
    /// Every entry at or before this log id is gone.
    Purge(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
    /// One entry.
    Entry(E),
}

/// A record as read from the file.
type Stored = Record<Entry>;

/// Options of [`FileLog::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLogOptions {
    /// `fdatasync` appends and votes before reporting them durable.
    pub sync: bool,
    /// Byte budget of the cache of the newest entries: each cached entry counts its encoded
    /// size plus `size_of::<Entry>()`. 0 disables the cache (every read goes to the file).
    pub cache_bytes: usize,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        FileLogOptions {
            sync: true,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Why an entry could not be read back from the file.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("raft log record of entry {index} at offset {offset}: {what}")]
    Corrupt {
        index: u64,
        offset: u64,
        what: &'static str,
    },
    #[error("raft log record of entry {index} at offset {offset} does not decode: {source}")]
    Decode {
        index: u64,
        offset: u64,
        source: postcard::Error,
    },
}

fn io_write(e: std::io::Error) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn io_read(e: std::io::Error) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn encode_err(e: postcard::Error) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// Where an entry's record lies: 12 bytes per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
struct Loc {
    /// Offset of the record (its header) in the file.
    offset: u64,
    /// Length of the record's body.
    len: u32,
}

impl Loc {
    fn end(self) -> u64 {
        self.offset + HEADER + u64::from(self.len)
    }
}

/// Bytes a cached entry counts against the cache budget.
fn cost(encoded_len: usize) -> usize {
    encoded_len + std::mem::size_of::<Entry>()
}

/// The entries: where each lies, the leader runs, the cache of the newest ones.
#[derive(Debug, Default)]
struct Index {
    /// Log index of `locs[0]` (meaningless while `locs` is empty).
    first: u64,
    /// One per entry, `first..first + locs.len()`.
    locs: VecDeque<Loc>,
    /// `(first index, leader)` of each run of entries of the same leader, ascending, covering
    /// `locs` (empty when it is).
    leaders: VecDeque<(u64, CommittedLeaderId<NodeId>)>,
    /// The newest entries (a suffix of the log) with their cost.
    cache: VecDeque<(Entry, usize)>,
    cache_bytes: usize,
    cache_cap: usize,
}

impl Index {
    fn new(cache_cap: usize) -> Self {
        Index {
            cache_cap,
            ..Index::default()
        }
    }

    /// One past the last index.
    fn next(&self) -> u64 {
        self.first + self.locs.len() as u64
    }

    /// Log index of `cache[0]`.
    fn cache_first(&self) -> u64 {
        self.next() - self.cache.len() as u64
    }

    fn log_id(&self, index: u64) -> Option<LogId> {
        if index < self.first || index >= self.next() {
            return None;
        }
        let run = self.leaders.partition_point(|(start, _)| *start <= index);
        let (_, leader) = self.leaders.get(run.checked_sub(1)?)?;
        Some(LogId::new(*leader, index))
    }

    fn last(&self) -> Option<LogId> {
        self.log_id(self.next().checked_sub(1)?)
    }

    /// Adds `entry` at `loc`: after the last one, or replacing those from its index on.
    fn push(&mut self, entry: Entry, loc: Loc, cost: usize) {
        let log_id = entry.log_id;
        if !self.locs.is_empty() && log_id.index < self.next() {
            self.truncate(log_id.index);
        }
        if !self.locs.is_empty() && log_id.index > self.next() {
            tracing::warn!(
                index = log_id.index,
                expected = self.next(),
                "raft log: an entry after a gap; the entries before it are dropped"
            );
            self.clear();
        }
        if self.locs.is_empty() {
            self.clear();
            self.first = log_id.index;
        }
        self.locs.push_back(loc);
        if self.leaders.back().map(|(_, l)| *l) != Some(log_id.leader_id) {
            self.leaders.push_back((log_id.index, log_id.leader_id));
        }
        self.cache.push_back((entry, cost));
        self.cache_bytes += cost;
        while self.cache_bytes > self.cache_cap {
            let Some((_, c)) = self.cache.pop_front() else {
                break;
            };
            self.cache_bytes -= c;
        }
    }

    fn clear(&mut self) {
        self.locs.clear();
        self.leaders.clear();
        self.cache.clear();
        self.cache_bytes = 0;
    }

    /// Drops the entries at and after `since`.
    fn truncate(&mut self, since: u64) {
        if since >= self.next() {
            return;
        }
        if since <= self.first {
            self.clear();
            return;
        }
        let drop_cached = self.next() - since.max(self.cache_first());
        for _ in 0..drop_cached {
            if let Some((_, c)) = self.cache.pop_back() {
                self.cache_bytes -= c;
            }
        }
        self.locs.truncate((since - self.first) as usize);
        while self
            .leaders
            .back()
            .is_some_and(|(start, _)| *start >= since)
        {
            self.leaders.pop_back();
        }
    }

    /// Drops the entries up to and including `upto`.
    fn purge(&mut self, upto: u64) {
        let end = upto.saturating_add(1);
        if self.locs.is_empty() || end <= self.first {
            return;
        }
        if end >= self.next() {
            self.clear();
            self.first = end;
            return;
        }
        let drop_cached = end.saturating_sub(self.cache_first());
        for _ in 0..drop_cached {
            if let Some((_, c)) = self.cache.pop_front() {
                self.cache_bytes -= c;
            }
        }
        self.locs.drain(..(end - self.first) as usize);
        self.first = end;
        while self.leaders.get(1).is_some_and(|(start, _)| *start <= end) {
            self.leaders.pop_front();
        }
        if let Some(run) = self.leaders.front_mut() {
            run.0 = end;
        }
    }

    /// Bytes of the live records (a batch of the old format counted once).
    fn live_bytes(&self) -> u64 {
        let mut total = 0;
        let mut prev = None;
        for loc in &self.locs {
            if prev != Some(*loc) {
                total += HEADER + u64::from(loc.len);
            }
            prev = Some(*loc);
        }
        total
    }
}

/// The state shared by the log and its readers.
#[derive(Debug)]
struct State {
    index: Index,
    /// The file the index points into (replaced together with the index by a rewrite).
    file: Arc<File>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    /// The committed log id reported since the last write, written with the next append.
    pending_committed: Option<Option<LogId>>,
}

/// What the replay of the file found.
#[derive(Debug)]
struct Replayed {
    index: Index,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    /// Length of the valid prefix of the file.
    valid: u64,
}

impl Replayed {
    fn apply(&mut self, record: Stored, loc: Loc) {
        match record {
            Record::Entries(entries) => {
                let each = loc.len as usize / entries.len().max(1);
                for e in entries {
                    self.index.push(e, loc, cost(each));
                }
            }
            Record::Entry(e) => self.index.push(e, loc, cost(loc.len as usize)),
            Record::Truncate(since) => self.index.truncate(since),
            Record::Purge(upto) => {
                self.index.purge(upto.index);
                if self.purged.is_none_or(|p| p < upto) {
                    self.purged = Some(upto);
                }
            }
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = c,
        }
    }
}

/// Appends the framed `record` to `buf`; returns the length of its body.
fn frame_into(buf: &mut Vec<u8>, record: &Record<&Entry>) -> Result<u32, StorageError> {
    let at = buf.len();
    buf.extend_from_slice(&[0; HEADER as usize]);
    let mut buf2 = std::mem::take(buf);
    buf2 = postcard::to_extend(record, buf2).map_err(encode_err)?;
    *buf = buf2;
    let body = &buf[at + HEADER as usize..];
    let len = u32::try_from(body.len())
        .map_err(|_| io_write(std::io::Error::other("raft log record larger than 4 GiB")))?;
    let crc = crc32fast::hash(body);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    buf[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(len)
}

/// Reads until `buf` is full; `false` if the file ended first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => return Ok(false),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Replays `path` record by record (memory: one record at a time, the index, the cache).
fn replay(path: &Path, cache_cap: usize) -> std::io::Result<Replayed> {
    let mut out = Replayed {
        index: Index::new(cache_cap),
        vote: None,
        committed: None,
        purged: None,
        valid: 0,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut body = Vec::new();
    let mut pos = 0u64;
    loop {
        let mut head = [0u8; HEADER as usize];
        if !read_full(&mut reader, &mut head)? {
            break;
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        // A zero length is the preallocated tail (a record body is never empty).
        if len == 0 || len as usize > MAX_RECORD {
            break;
        }
        body.resize(len as usize, 0);
        if !read_full(&mut reader, &mut body)? || crc32fast::hash(&body) != crc {
            break;
        }
        let Ok(record) = postcard::from_bytes::<Stored>(&body) else {
            break;
        };
        out.apply(record, Loc { offset: pos, len });
        pos += HEADER + u64::from(len);
        if body.capacity() > 1 << 20 {
            body = Vec::new();
        }
    }
    out.valid = pos;
    // Anything but zeros after the valid records is a torn or corrupt tail.
    let mut chunk = vec![0u8; 64 * 1024];
    let mut at = pos;
    while at < size {
        let n = (size - at).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..n], at)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            tracing::warn!(
                valid = pos,
                len = size,
                "raft log: cutting off a torn or corrupt tail"
            );
            break;
        }
        at += n as u64;
    }
    Ok(out)
}

/// Reads the entries `first..first + locs.len()` whose records lie at `locs`, checking each
/// record; neighbouring records are read together, at most [`READ_SPAN`] bytes at a time.
fn read_entries(file: &File, first: u64, locs: &[Loc]) -> Result<Vec<Entry>, StorageError> {
    let mut out = Vec::with_capacity(locs.len());
    // The last batch of the old format decoded, for its other entries.
    let mut batch: Option<(Loc, Vec<Entry>)> = None;
    let mut i = 0;
    while i < locs.len() {
        let start = locs[i].offset;
        let mut end = locs[i].end();
        let mut j = i + 1;
        while let Some(next) = locs.get(j) {
            if next.offset < locs[j - 1].offset || next.end().saturating_sub(start) > READ_SPAN {
                break;
            }
            end = end.max(next.end());
            j += 1;
        }
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start).map_err(|e| {
            StorageError::from(StorageIOError::read_log_at_index(
                first + i as u64,
                AnyError::new(&e),
            ))
        })?;
        for (k, loc) in locs.iter().enumerate().take(j).skip(i) {
            let index = first + k as u64;
            let at = (loc.offset - start) as usize;
            let frame = &buf[at..at + (HEADER + u64::from(loc.len)) as usize];
            out.push(decode_entry(frame, index, *loc, &mut batch)?);
        }
        i = j;
    }
    Ok(out)
}

/// The entry `index` from its record `frame` (header included) read at `loc`.
fn decode_entry(
    frame: &[u8],
    index: u64,
    loc: Loc,
    batch: &mut Option<(Loc, Vec<Entry>)>,
) -> Result<Entry, StorageError> {
    let offset = loc.offset;
    let corrupt = |what| {
        StorageError::from(StorageIOError::read_log_at_index(
            index,
            AnyError::new(&ReadError::Corrupt {
                index,
                offset,
                what,
            }),
        ))
    };
    if let Some((at, entries)) = batch {
        if *at == loc {
            return pick(entries, index).ok_or_else(|| corrupt("the batch lacks the entry"));
        }
    }
    let (head, body) = frame.split_at(HEADER as usize);
    if u32::from_be_bytes([head[0], head[1], head[2], head[3]]) != loc.len {
        return Err(corrupt("length differs from the index"));
    }
    if u32::from_be_bytes([head[4], head[5], head[6], head[7]]) != crc32fast::hash(body) {
        return Err(corrupt("checksum mismatch"));
    }
    let record = postcard::from_bytes::<Stored>(body).map_err(|source| {
        StorageError::from(StorageIOError::read_log_at_index(
            index,
            AnyError::new(&ReadError::Decode {
                index,
                offset,
                source,
            }),
        ))
    })?;
    match record {
        Record::Entry(e) if e.log_id.index == index => Ok(e),
        Record::Entries(entries) => {
            let e = pick(&entries, index).ok_or_else(|| corrupt("the batch lacks the entry"))?;
            *batch = Some((loc, entries));
            Ok(e)
        }
        _ => Err(corrupt("not the entry of this index")),
    }
}

/// The entry `index` of an old-format batch (contiguous, ascending).
fn pick(entries: &[Entry], index: u64) -> Option<Entry> {
    let first = entries.first()?.log_id.index;
    let e = entries.get(usize::try_from(index.checked_sub(first)?).ok()?)?;
    (e.log_id.index == index).then(|| e.clone())
}

/// A read of a range: entries `first..` at `locs` in `file`, then the `cached` ones.
#[derive(Debug)]
struct ReadPlan {
    file: Arc<File>,
    first: u64,
    locs: Vec<Loc>,
    cached: Vec<Entry>,
}

impl ReadPlan {
    fn run(self) -> Result<Vec<Entry>, StorageError> {
        if self.locs.is_empty() {
            return Ok(self.cached);
        }
        let mut out = read_entries(&self.file, self.first, &self.locs)?;
        out.extend(self.cached);
        Ok(out)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs `f`, which blocks (a sync, an apply), without stalling the async runtime: in place on
/// a multi-threaded runtime (the worker hands its other tasks to another thread), which
/// spares two thread hand-offs per call on the write path; on a blocking thread otherwise.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => Ok(tokio::task::block_in_place(f)),
        _ => tokio::task::spawn_blocking(f).await,
    }
}

/// The open file: where the records end, and how far the file is allocated (zero-filled).
/// Its lock serialises every change of the log (lock order: `Tail`, then `State`).
#[derive(Debug)]
struct Tail {
    file: Arc<File>,
    /// End of the records: the next record is written here.
    len: u64,
    /// Size of the file; the bytes from `len` on are zeros.
    allocated: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    file: Mutex<Tail>,
    sync: bool,
}

/// The raft log file (and its reader: clones share it). See the [module docs](self).
#[derive(Debug, Clone)]
pub struct FileLog {
    inner: Arc<Inner>,
}

fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .create(create)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

impl FileLog {
    /// Opens (or creates) the log in `dir` with the default cache. With `sync`, appends and
    /// votes are `fdatasync`ed before they are reported durable.
    pub fn open(dir: impl AsRef<Path>, sync: bool) -> Result<Self, StorageError> {
        Self::open_with(
            dir,
            FileLogOptions {
                sync,
                ..FileLogOptions::default()
            },
        )
    }

    /// Opens (or creates) the log in `dir` with `options`.
    pub fn open_with(dir: impl AsRef<Path>, options: FileLogOptions) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io_write)?;
        let path = dir.join(WAL_FILE);
        let existed = path.exists();
        let replayed = replay(&path, options.cache_bytes).map_err(io_read)?;
        let valid = replayed.valid;
        let file = open_rw(&path, true).map_err(io_write)?;
        // Cut off a torn tail and the zeros preallocated after the records (they are
        // preallocated again by the next write).
        if file.metadata().map_err(io_write)?.len() != valid {
            file.set_len(valid).map_err(io_write)?;
            file.sync_all().map_err(io_write)?;
        }
        if !existed {
            sync_dir(&dir).map_err(io_write)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(io_write)?;
            }
        }
        let file = Arc::new(file);
        Ok(FileLog {
            inner: Arc::new(Inner {
                dir,
                state: Mutex::new(State {
                    index: replayed.index,
                    file: file.clone(),
                    vote: replayed.vote,
                    committed: replayed.committed,
                    purged: replayed.purged,
                    pending_committed: None,
                }),
                file: Mutex::new(Tail {
                    file,
                    len: valid,
                    allocated: valid,
                }),
                sync: options.sync,
            }),
        })
    }

    /// Writes the framed records `buf` after the last record (no sync), first extending the
    /// file by a zero-filled chunk when they would pass its end; returns where they start.
    fn write_locked(tail: &mut Tail, buf: &[u8]) -> Result<u64, StorageError> {
        let start = tail.len;
        let end = start + buf.len() as u64;
        if end > tail.allocated {
            let target = end.max(tail.allocated + PREALLOC_BYTES);
            let zeros = vec![0u8; 64 * 1024];
            let mut at = tail.allocated;
            while at < target {
                let n = (target - at).min(zeros.len() as u64) as usize;
                tail.file.write_all_at(&zeros[..n], at).map_err(io_write)?;
                at += n as u64;
            }
            tail.allocated = target;
        }
        tail.file.write_all_at(buf, start).map_err(io_write)?;
        tail.len = end;
        Ok(start)
    }

    /// Writes `records` (no sync).
    fn write(&self, records: &[Record<&Entry>]) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        for r in records {
            frame_into(&mut buf, r)?;
        }
        Self::write_locked(&mut self.inner.file.lock(), &buf)?;
        Ok(())
    }

    /// Writes `entries` (and the pending committed log id) and indexes them, without a sync.
    fn append_entries(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let mut tail = self.inner.file.lock();
        let committed = self.inner.state.lock().pending_committed.take();
        let mut buf = Vec::new();
        if let Some(c) = committed {
            frame_into(&mut buf, &Record::Committed(c))?;
        }
        let mut placed = Vec::with_capacity(entries.len());
        for e in &entries {
            let at = buf.len() as u64;
            let len = frame_into(&mut buf, &Record::Entry(e))?;
            placed.push((at, len));
        }
        let start = match Self::write_locked(&mut tail, &buf) {
            Ok(start) => start,
            Err(e) => {
                // Written again with the next append.
                if let Some(c) = committed {
                    let mut state = self.inner.state.lock();
                    state.pending_committed.get_or_insert(c);
                }
                return Err(e);
            }
        };
        drop(buf);
        let mut state = self.inner.state.lock();
        for (e, (at, len)) in entries.into_iter().zip(placed) {
            let loc = Loc {
                offset: start + at,
                len,
            };
            state.index.push(e, loc, cost(len as usize));
        }
        Ok(())
    }

    /// Drops the entries at and after `since`.
    fn truncate_from(&self, since: u64) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        frame_into(&mut buf, &Record::Truncate(since))?;
        let mut tail = self.inner.file.lock();
        Self::write_locked(&mut tail, &buf)?;
        self.inner.state.lock().index.truncate(since);
        Ok(())
    }

    /// Drops the entries up to and including `upto`, then rewrites the file if it is mostly
    /// dead records.
    fn purge_upto(&self, upto: LogId) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        frame_into(&mut buf, &Record::Purge(upto))?;
        let mut tail = self.inner.file.lock();
        Self::write_locked(&mut tail, &buf)?;
        {
            let mut state = self.inner.state.lock();
            state.index.purge(upto.index);
            if state.purged.is_none_or(|p| p < upto) {
                state.purged = Some(upto);
            }
        }
        self.maybe_rewrite(&mut tail)
    }

    /// What reading `start..end` (clamped to the log) takes: the entries from the cache, and
    /// the positions of those before them in the file, taken together under the lock.
    fn plan_read(&self, start: u64, end: u64) -> ReadPlan {
        let state = self.inner.state.lock();
        let index = &state.index;
        let mut plan = ReadPlan {
            file: state.file.clone(),
            first: start,
            locs: Vec::new(),
            cached: Vec::new(),
        };
        if index.locs.is_empty() {
            return plan;
        }
        let start = start.max(index.first);
        let end = end.min(index.next());
        if start >= end {
            return plan;
        }
        plan.first = start;
        let cache_first = index.cache_first();
        let disk_end = end.min(cache_first);
        if start < disk_end {
            plan.locs = index
                .locs
                .range((start - index.first) as usize..(disk_end - index.first) as usize)
                .copied()
                .collect();
        }
        let from = start.max(cache_first);
        if from < end {
            plan.cached = index
                .cache
                .range((from - cache_first) as usize..(end - cache_first) as usize)
                .map(|(e, _)| e.clone())
                .collect();
        }
        plan
    }

    /// The entries in `start..end` (clamped to the log), reading in the calling thread.
    #[cfg(test)]
    fn read_range(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.plan_read(start, end).run()
    }

    /// `fdatasync`s the file (see [`blocking`]).
    async fn sync(&self) -> Result<(), std::io::Error> {
        let file = self.inner.file.lock().file.clone();
        blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)?
    }

    /// Flushes and syncs everything written (at shutdown).
    pub fn close(&self) -> Result<(), StorageError> {
        let pending = self.inner.state.lock().pending_committed.take();
        if let Some(c) = pending {
            self.write(&[Record::Committed(c)])?;
        }
        self.inner.file.lock().file.sync_data().map_err(io_write)
    }

    /// Rewrites the file with the live state when it grew much larger than that (see the
    /// [module docs](self#rewrite)).
    fn maybe_rewrite(&self, tail: &mut Tail) -> Result<(), StorageError> {
        if tail.len < REWRITE_MIN_BYTES
            || self.inner.state.lock().index.live_bytes().saturating_mul(2) > tail.len
        {
            return Ok(());
        }
        self.rewrite(tail)
    }

    /// Rewrites the file with the live state, the entries copied from the old file. `tail` is
    /// held throughout, so nothing else changes the log meanwhile; readers keep reading the
    /// old file until the new index is in place.
    fn rewrite(&self, tail: &mut Tail) -> Result<(), StorageError> {
        let size = tail.len;
        let (old, first, locs, mut head) = {
            let state = self.inner.state.lock();
            let mut head = Vec::new();
            if let Some(v) = &state.vote {
                frame_into(&mut head, &Record::Vote(*v))?;
            }
            frame_into(&mut head, &Record::Committed(state.committed))?;
            if let Some(p) = state.purged {
                frame_into(&mut head, &Record::Purge(p))?;
            }
            let locs: Vec<Loc> = state.index.locs.iter().copied().collect();
            (state.file.clone(), state.index.first, locs, head)
        };
        let tmp = self.inner.dir.join(format!("{WAL_FILE}.tmp"));
        let path = self.inner.dir.join(WAL_FILE);
        let f = File::create(&tmp).map_err(io_write)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&head).map_err(io_write)?;
        let mut pos = head.len() as u64;
        head.clear();
        let mut new_locs = VecDeque::with_capacity(locs.len());
        let mut i = 0;
        while i < locs.len() {
            // A chunk of at most READ_SPAN record bytes (at least one record).
            let mut j = i + 1;
            let mut bytes = u64::from(locs[i].len);
            while let Some(next) = locs.get(j) {
                // An old-format batch shared by several entries counts once.
                if *next != locs[j - 1] {
                    bytes += u64::from(next.len);
                }
                if bytes > READ_SPAN {
                    break;
                }
                j += 1;
            }
            let entries = read_entries(&old, first + i as u64, &locs[i..j])?;
            let mut buf = Vec::new();
            for e in &entries {
                let at = buf.len() as u64;
                let len = frame_into(&mut buf, &Record::Entry(e))?;
                new_locs.push_back(Loc {
                    offset: pos + at,
                    len,
                });
            }
            w.write_all(&buf).map_err(io_write)?;
            pos += buf.len() as u64;
            i = j;
        }
        let f = w.into_inner().map_err(|e| io_write(e.into_error()))?;
        f.sync_all().map_err(io_write)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_write)?;
        sync_dir(&self.inner.dir).map_err(io_write)?;
        let reopened = Arc::new(open_rw(&path, false).map_err(io_write)?);
        {
            let mut state = self.inner.state.lock();
            state.index.locs = new_locs;
            state.file = reopened.clone();
        }
        *tail = Tail {
            file: reopened,
            len: pos,
            allocated: pos,
        };
        tracing::info!(from = size, to = pos, "raft log rewritten");
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for FileLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let plan = self.plan_read(start, end);
        if plan.locs.is_empty() {
            return Ok(plan.cached);
        }
        blocking(move || plan.run())
            .await
            .map_err(|e| io_read(std::io::Error::other(e)))?
    }
}

impl RaftLogStorage<TypeConfig> for FileLog {
    type LogReader = FileLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = self.inner.state.lock();
        Ok(LogState {
            last_purged_log_id: state.purged,
            last_log_id: state.index.last().or(state.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write(&[Record::Vote(*vote)])?;
        self.sync()
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        self.inner.state.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.state.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut state = self.inner.state.lock();
        state.committed = committed;
        state.pending_committed = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.state.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        if let Err(e) = self.append_entries(entries) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(e);
        }
        if !self.inner.sync {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // One write and one fdatasync per append: group fsync of everything openraft hands
        // over at once.
        match self.sync().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "raft log sync failed; the member stops");
                let err = io_write(std::io::Error::new(e.kind(), e.to_string()));
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_from(log_id.index)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_upto(log_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvcc_core::Put;
    use openraft::EntryPayload;
    use std::collections::BTreeMap;

    use crate::types::Command;

    fn leader(term: u64) -> CommittedLeaderId<NodeId> {
        CommittedLeaderId::new(term, 1)
    }

    /// Entry `index` of `term` with a value of `size` bytes that depends on both.
    fn entry_of(index: u64, term: u64, size: usize) -> Entry {
        let value: Vec<u8> = (0..size)
            .map(|i| (i as u64 ^ index ^ (term << 5)) as u8)
            .collect();
        Entry {
            log_id: LogId::new(leader(term), index),
            payload: EntryPayload::Normal(Command::Put(Put::new(format!("k{index}"), value, 0))),
        }
    }

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(leader(1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn options(cache_bytes: usize) -> FileLogOptions {
        FileLogOptions {
            sync: true,
            cache_bytes,
        }
    }

    fn write_entries(log: &FileLog, range: std::ops::Range<u64>) {
        log.append_entries(range.map(entry).collect()).unwrap();
    }

    fn purge_record_len(upto: LogId) -> u64 {
        let mut b = Vec::new();
        frame_into(&mut b, &Record::Purge(upto)).unwrap();
        b.len() as u64
    }

    fn keys(log: &FileLog) -> Vec<u64> {
        log.read_range(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    /// Checks every range of `log` (and the log state) against `model`.
    fn check(log: &FileLog, model: &BTreeMap<u64, Entry>) {
        let lo = model.keys().next().copied().unwrap_or(0).saturating_sub(2);
        let hi = model.keys().next_back().copied().unwrap_or(0) + 3;
        for start in lo..hi {
            for end in start..hi {
                let got = log.read_range(start, end).unwrap();
                let want: Vec<Entry> = model.range(start..end).map(|(_, e)| e.clone()).collect();
                assert_eq!(got, want, "range {start}..{end}");
            }
        }
        let state = log.inner.state.lock();
        assert_eq!(
            state.index.last(),
            model.values().next_back().map(|e| e.log_id)
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_records_before_it_survive() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), true).unwrap();
        write_entries(&log, 1..4);
        log.truncate_from(3).unwrap();
        log.purge_upto(entry(1).log_id).unwrap();
        log.close().unwrap();
        let valid = log.inner.file.lock().len;
        drop(log);
        // A crash in the middle of the next record: a length, a checksum, half a body, where
        // the record goes (over the preallocated zeros).
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(WAL_FILE))
            .unwrap();
        f.write_all_at(&[0, 0, 0, 40, 1, 2, 3, 4, 9, 9], valid)
            .unwrap();
        drop(f);

        let log = FileLog::open(dir.path(), true).unwrap();
        let len = std::fs::metadata(dir.path().join(WAL_FILE)).unwrap().len();
        assert_eq!(len, valid);
        assert_eq!(keys(&log), vec![2]);
        assert_eq!(log.inner.state.lock().purged, Some(entry(1).log_id));
        // And it appends after the cut.
        write_entries(&log, 3..5);
        log.close().unwrap();
        drop(log);
        let log = FileLog::open(dir.path(), true).unwrap();
        assert_eq!(keys(&log), vec![2, 3, 4]);
    }

    #[test]
    fn the_file_grows_by_zero_filled_chunks_that_replay_as_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WAL_FILE);
        let log = FileLog::open(dir.path(), true).unwrap();
        write_entries(&log, 1..4);
        let end = log.inner.file.lock().len;
        assert!(end > 0 && end < PREALLOC_BYTES);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOC_BYTES);
        write_entries(&log, 4..6);
        let end = log.inner.file.lock().len;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOC_BYTES);
        // A crash without close: the records, then zeros. The zeros end the replay (no
        // record is lost, nothing is reported torn) and are cut off.
        drop(log);
        let log = FileLog::open(dir.path(), true).unwrap();
        assert_eq!(keys(&log), vec![1, 2, 3, 4, 5]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
        assert_eq!(log.inner.file.lock().len, end);
        // The next write preallocates a chunk again, from the end of the records.
        write_entries(&log, 6..7);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            end + PREALLOC_BYTES
        );
        log.close().unwrap();
        drop(log);
        let log = FileLog::open(dir.path(), true).unwrap();
        assert_eq!(keys(&log), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_corrupt_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), true).unwrap();
        write_entries(&log, 1..3);
        let first = log.inner.file.lock().len;
        write_entries(&log, 3..5);
        log.close().unwrap();
        drop(log);
        // Flip a byte of the third entry's record body: its checksum no longer matches.
        let path = dir.path().join(WAL_FILE);
        let mut data = std::fs::read(&path).unwrap();
        let at = usize::try_from(first).unwrap() + 10;
        data[at] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let log = FileLog::open(dir.path(), true).unwrap();
        assert_eq!(keys(&log), vec![1, 2]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), first);
    }

    #[test]
    fn the_index_takes_twelve_bytes_per_entry() {
        assert_eq!(std::mem::size_of::<Loc>(), 12);
    }

    /// Appends, truncations (also across a term change), purges and reopens, with a cache of
    /// about three entries, so that reads cross from the file into the cache; every range
    /// compared with a model.
    #[test]
    fn entries_read_back_exactly_from_cache_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = 3 * cost(600);
        let mut log = FileLog::open_with(dir.path(), options(cache)).unwrap();
        let mut model = BTreeMap::new();
        let add = |log: &FileLog, model: &mut BTreeMap<u64, Entry>, range, term, size| {
            let entries: Vec<Entry> = std::ops::Range::<u64>::clone(&range)
                .map(|i| entry_of(i, term, size))
                .collect();
            for e in &entries {
                model.insert(e.log_id.index, e.clone());
            }
            log.append_entries(entries).unwrap();
        };
        add(&log, &mut model, 1..8, 1, 500);
        add(&log, &mut model, 8..12, 2, 700);
        check(&log, &model);
        assert!(log.inner.state.lock().index.cache.len() < 4);
        // Truncate into the first term; the run of term 2 goes.
        log.truncate_from(6).unwrap();
        model.retain(|i, _| *i < 6);
        check(&log, &model);
        assert_eq!(
            log.inner.state.lock().index.last(),
            Some(LogId::new(leader(1), 5))
        );
        add(&log, &mut model, 6..10, 3, 300);
        check(&log, &model);
        log.purge_upto(LogId::new(leader(1), 3)).unwrap();
        model.retain(|i, _| *i > 3);
        check(&log, &model);
        // An append that overwrites without a truncation record (replaces from its index).
        add(&log, &mut model, 8..9, 4, 100);
        model.retain(|i, _| *i <= 8);
        check(&log, &model);
        log.close().unwrap();
        drop(log);
        log = FileLog::open_with(dir.path(), options(cache)).unwrap();
        check(&log, &model);
        // Purge past the end, then the log goes on after it.
        log.purge_upto(LogId::new(leader(4), 20)).unwrap();
        model.clear();
        check(&log, &model);
        add(&log, &mut model, 21..25, 4, 200);
        check(&log, &model);
        log.close().unwrap();
        drop(log);
        let log = FileLog::open_with(dir.path(), options(0)).unwrap();
        check(&log, &model);
        let state = log.inner.state.lock();
        assert_eq!(state.purged, Some(LogId::new(leader(4), 20)));
        assert_eq!(state.index.cache.len(), 0);
    }

    #[tokio::test]
    async fn the_openraft_reader_takes_every_kind_of_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileLog::open_with(dir.path(), options(0)).unwrap();
        write_entries(&log, 3..8);
        let idx = |v: Vec<Entry>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(
            idx(log.try_get_log_entries(..).await.unwrap()),
            vec![3, 4, 5, 6, 7]
        );
        assert_eq!(
            idx(log.try_get_log_entries(4..6).await.unwrap()),
            vec![4, 5]
        );
        assert_eq!(
            idx(log.try_get_log_entries(4..=6).await.unwrap()),
            vec![4, 5, 6]
        );
        assert_eq!(idx(log.try_get_log_entries(6..).await.unwrap()), vec![6, 7]);
        assert_eq!(idx(log.try_get_log_entries(..4).await.unwrap()), vec![3]);
        assert_eq!(
            idx(log
                .try_get_log_entries((Bound::Excluded(3), Bound::Included(5)))
                .await
                .unwrap()),
            vec![4, 5]
        );
        assert_eq!(
            idx(log
                .try_get_log_entries((Bound::Included(6), Bound::Excluded(4)))
                .await
                .unwrap()),
            Vec::<u64>::new()
        );
        assert_eq!(
            idx(log.try_get_log_entries(8..).await.unwrap()),
            Vec::<u64>::new()
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(LogId::new(leader(1), 7)));
        assert_eq!(state.last_purged_log_id, None);
    }

    /// A byte flipped in the record of an old entry (no longer cached) while the log is open:
    /// reading it is an error naming its index; the entries around it still read.
    #[test]
    fn a_corrupt_entry_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open_with(dir.path(), options(0)).unwrap();
        log.append_entries((1..6).map(|i| entry_of(i, 1, 100)).collect())
            .unwrap();
        let loc = log.inner.state.lock().index.locs[2];
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(WAL_FILE))
            .unwrap();
        let at = loc.offset + HEADER + 50;
        let mut byte = [0u8; 1];
        log.inner
            .file
            .lock()
            .file
            .read_exact_at(&mut byte, at)
            .unwrap();
        f.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
        drop(f);
        let err = log.read_range(1, 6).unwrap_err();
        let offset = loc.offset;
        assert_eq!(
            err.to_string(),
            format!(
                "when Read LogIndex(3): rusd_raft::file_log::ReadError: raft log record of entry 3 at offset {offset}: \
                 checksum mismatch"
            )
        );
        assert_eq!(
            log.read_range(3, 4).unwrap_err().to_string(),
            err.to_string()
        );
        let around: Vec<u64> = [1, 2, 4, 5]
            .iter()
            .map(|&i| log.read_range(i, i + 1).unwrap()[0].log_id.index)
            .collect();
        assert_eq!(around, vec![1, 2, 4, 5]);
        // A length that no longer matches the index is an error too, not a wrong entry.
        let loc4 = log.inner.state.lock().index.locs[3];
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(WAL_FILE))
            .unwrap();
        f.write_all_at(&[0, 0, 0, 7], loc4.offset).unwrap();
        let offset = loc4.offset;
        assert_eq!(
            log.read_range(4, 5).unwrap_err().to_string(),
            format!(
                "when Read LogIndex(4): rusd_raft::file_log::ReadError: raft log record of entry 4 at offset {offset}: \
                 length differs from the index"
            )
        );
    }

    /// The rewrite copies the live entries from the old file: they read back exactly, from
    /// the new file, before and after a reopen, and the log goes on after it.
    #[test]
    fn the_rewrite_copies_the_live_entries_from_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WAL_FILE);
        let log = FileLog::open_with(dir.path(), options(2 * cost(4096))).unwrap();
        let mut model = BTreeMap::new();
        // 3 × 1100 entries of 4 KiB (≈ 13.5 MiB), with truncations and term changes.
        let mut next = 1;
        for term in 1..=3 {
            let entries: Vec<Entry> = (next..next + 1100)
                .map(|i| entry_of(i, term, 4096))
                .collect();
            for e in &entries {
                model.insert(e.log_id.index, e.clone());
            }
            for chunk in entries.chunks(100) {
                log.append_entries(chunk.to_vec()).unwrap();
            }
            next += 1000;
            log.truncate_from(next).unwrap();
            model.retain(|i, _| *i < next);
        }
        let before = log.inner.file.lock().len;
        assert!(before > 12 * 1024 * 1024);
        // Purge but 500 entries: the file is large and mostly dead, above the threshold
        // (lowered for the test).
        log.inner.state.lock().vote = Some(Vote::new(3, 1));
        let upto = LogId::new(leader(3), next - 501);
        log.purge_upto(upto).unwrap();
        // Below the 64 MiB threshold, so not rewritten yet.
        assert_eq!(log.inner.file.lock().len, before + purge_record_len(upto));
        log.rewrite(&mut log.inner.file.lock()).unwrap();
        model.retain(|i, _| *i > upto.index);
        assert_eq!(model.len(), 500);
        let after = log.inner.file.lock().len;
        let live = log.inner.state.lock().index.live_bytes();
        assert!(after < live + 1024 && after >= live, "{after} {live}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), after);
        assert!(!dir.path().join(format!("{WAL_FILE}.tmp")).exists());
        let all: Vec<Entry> = model.values().cloned().collect();
        assert_eq!(log.read_range(0, u64::MAX).unwrap(), all);
        // The offsets are those of the new file: entries read from it alone (no cache).
        let cold = FileLog::open_with(dir.path(), options(0)).unwrap();
        assert_eq!(cold.read_range(0, u64::MAX).unwrap(), all);
        drop(cold);
        let more: Vec<Entry> = (next..next + 10).map(|i| entry_of(i, 4, 64)).collect();
        for e in &more {
            model.insert(e.log_id.index, e.clone());
        }
        log.append_entries(more).unwrap();
        log.close().unwrap();
        let all: Vec<Entry> = model.values().cloned().collect();
        assert_eq!(log.read_range(0, u64::MAX).unwrap(), all);
        drop(log);
        let log = FileLog::open_with(dir.path(), options(0)).unwrap();
        assert_eq!(log.read_range(0, u64::MAX).unwrap(), all);
        let state = log.inner.state.lock();
        assert_eq!(state.purged, Some(upto));
        assert_eq!(state.vote, Some(Vote::new(3, 1)));
        assert_eq!(state.index.last(), Some(LogId::new(leader(4), next + 9)));
    }

    /// The record enum of the format before one record per entry (as it was).
    #[derive(Serialize)]
    enum OldRecord {
        Entries(Vec<Entry>),
        Truncate(u64),
        Purge(LogId),
        Vote(Vote),
        Committed(Option<LogId>),
    }

    fn old_frame(record: &OldRecord) -> Vec<u8> {
        let body = postcard::to_stdvec(record).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// A file written by the code before one record per entry (batches of entries in one
    /// record) opens, reads back exactly, takes new appends, and is converted by a rewrite.
    #[test]
    fn a_file_of_the_old_format_opens_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WAL_FILE);
        let batch = |r: std::ops::Range<u64>, term| r.map(|i| entry_of(i, term, 300)).collect();
        let mut data = Vec::new();
        data.extend(old_frame(&OldRecord::Vote(Vote::new(2, 1))));
        data.extend(old_frame(&OldRecord::Entries(batch(1..11, 1))));
        data.extend(old_frame(&OldRecord::Committed(Some(LogId::new(
            leader(1),
            4,
        )))));
        data.extend(old_frame(&OldRecord::Entries(batch(11..21, 1))));
        data.extend(old_frame(&OldRecord::Truncate(16)));
        data.extend(old_frame(&OldRecord::Entries(batch(16..26, 2))));
        data.extend(old_frame(&OldRecord::Purge(LogId::new(leader(1), 3))));
        std::fs::write(&path, &data).unwrap();
        let mut model: BTreeMap<u64, Entry> = BTreeMap::new();
        for e in batch(4..16, 1).into_iter().chain(batch(16..26, 2)) {
            model.insert(e.log_id.index, e);
        }

        let log = FileLog::open_with(dir.path(), options(0)).unwrap();
        check(&log, &model);
        {
            let state = log.inner.state.lock();
            assert_eq!(state.vote, Some(Vote::new(2, 1)));
            assert_eq!(state.committed, Some(LogId::new(leader(1), 4)));
            assert_eq!(state.purged, Some(LogId::new(leader(1), 3)));
        }
        // Truncate inside an old batch, append new records after it.
        log.truncate_from(20).unwrap();
        model.retain(|i, _| *i < 20);
        let more: Vec<Entry> = (20..23).map(|i| entry_of(i, 3, 50)).collect();
        for e in &more {
            model.insert(e.log_id.index, e.clone());
        }
        log.append_entries(more).unwrap();
        check(&log, &model);
        log.close().unwrap();
        drop(log);
        let log = FileLog::open_with(dir.path(), options(1000)).unwrap();
        check(&log, &model);
        // A rewrite turns the old batches into one record per entry.
        log.rewrite(&mut log.inner.file.lock()).unwrap();
        check(&log, &model);
        drop(log);
        let log = FileLog::open_with(dir.path(), options(0)).unwrap();
        check(&log, &model);
        let state = log.inner.state.lock();
        let locs: Vec<Loc> = state.index.locs.iter().copied().collect();
        assert!(locs.windows(2).all(|w| w[0].offset < w[1].offset));
        assert_eq!(state.vote, Some(Vote::new(2, 1)));
    }
}
