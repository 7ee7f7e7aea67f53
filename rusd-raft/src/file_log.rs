//! [`FileLog`]: the raft log as one append-only file with the unpurged entries in memory —
//! etcd's design (its WAL file plus raft's in-memory `MemoryStorage`).
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
//! body a [`postcard`]-encoded `Record`: appended entries, a truncation, a purge, the vote,
//! the committed log id. Opening replays the records in order; a torn or corrupt tail (a crash
//! in the middle of a write) ends the replay and is cut off. When the file holds much more
//! than the live entries it is rewritten (a new file with the current state, `fdatasync`ed,
//! renamed over the old one, the directory `fsync`ed).
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

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// File name of the log inside its directory.
pub const WAL_FILE: &str = "raft.wal";
/// The file is rewritten when it exceeds this size and twice the size of the live state.
const REWRITE_MIN_BYTES: u64 = 64 * 1024 * 1024;
/// The file is extended by this many zero bytes whenever a write would pass its end (see the
/// [module docs](self#preallocation)).
pub const PREALLOC_BYTES: u64 = 4 * 1024 * 1024;
/// Largest record accepted when reading (a corrupt length beyond it ends the replay).
const MAX_RECORD: usize = 1 << 30;

/// One record of the file.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Entries(Vec<Entry>),
    /// Every entry at or after this index is gone.
    Truncate(u64),
    /// Every entry at or before this log id is gone.
    Purge(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
}

fn io_write(e: std::io::Error) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn encode_err(e: postcard::Error) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// The replayed content of the file.
#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    /// The committed log id reported since the last write, written with the next append.
    pending_committed: Option<Option<LogId>>,
}

impl State {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Entries(entries) => {
                for e in entries {
                    self.entries.insert(e.log_id.index, e);
                }
            }
            Record::Truncate(since) => {
                let _ = self.entries.split_off(&since);
            }
            Record::Purge(upto) => {
                self.entries = self.entries.split_off(&upto.index.saturating_add(1));
                if self.purged.is_none_or(|p| p < upto) {
                    self.purged = Some(upto);
                }
            }
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = c,
        }
    }

    /// Records that rebuild this state.
    fn snapshot_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        if let Some(v) = &self.vote {
            out.push(Record::Vote(*v));
        }
        out.push(Record::Committed(self.committed));
        if let Some(p) = self.purged {
            out.push(Record::Purge(p));
        }
        let entries: Vec<Entry> = self.entries.values().cloned().collect();
        for chunk in entries.chunks(1024) {
            out.push(Record::Entries(chunk.to_vec()));
        }
        out
    }
}

fn frame(record: &Record) -> Result<Vec<u8>, StorageError> {
    let body = postcard::to_stdvec(record).map_err(encode_err)?;
    let len = u32::try_from(body.len())
        .map_err(|_| io_write(std::io::Error::other("raft log record larger than 4 GiB")))?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Replays `path`; returns the state and the length of its valid prefix.
fn replay(path: &Path) -> std::io::Result<(State, u64)> {
    let mut state = State::default();
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((state, 0)),
        Err(e) => return Err(e),
    }
    let mut pos = 0usize;
    while let Some(head) = data.get(pos..pos + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        // A zero length is the preallocated tail (a record body is never empty).
        if len == 0 || len > MAX_RECORD {
            break;
        }
        let Some(body) = data.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok(record) = postcard::from_bytes::<Record>(body) else {
            break;
        };
        state.apply(record);
        pos += 8 + len;
    }
    if data
        .get(pos..)
        .is_some_and(|tail| tail.iter().any(|&b| b != 0))
    {
        tracing::warn!(
            valid = pos,
            len = data.len(),
            "raft log: cutting off a torn or corrupt tail"
        );
    }
    Ok((state, pos as u64))
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

impl FileLog {
    /// Opens (or creates) the log in `dir`. With `sync`, appends and votes are `fdatasync`ed
    /// before they are reported durable.
    pub fn open(dir: impl AsRef<Path>, sync: bool) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io_write)?;
        let path = dir.join(WAL_FILE);
        let existed = path.exists();
        let (state, valid) = replay(&path)
            .map_err(|e| StorageError::from(StorageIOError::read_logs(AnyError::new(&e))))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_write)?;
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
        Ok(FileLog {
            inner: Arc::new(Inner {
                dir,
                state: Mutex::new(state),
                file: Mutex::new(Tail {
                    file: Arc::new(file),
                    len: valid,
                    allocated: valid,
                }),
                sync,
            }),
        })
    }

    /// Writes `records` after the last record (no sync), first extending the file by a
    /// zero-filled chunk when they would pass its end.
    fn write(&self, records: &[Record]) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        for r in records {
            buf.extend_from_slice(&frame(r)?);
        }
        let mut tail = self.inner.file.lock();
        let end = tail.len + buf.len() as u64;
        if end > tail.allocated {
            let target = end.max(tail.allocated + PREALLOC_BYTES);
            let mut f: &File = &tail.file;
            f.seek(SeekFrom::Start(tail.allocated)).map_err(io_write)?;
            let zeros = [0u8; 64 * 1024];
            let mut at = tail.allocated;
            while at < target {
                let n = (target - at).min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n]).map_err(io_write)?;
                at += n as u64;
            }
            tail.allocated = target;
        }
        let mut f: &File = &tail.file;
        f.seek(SeekFrom::Start(tail.len)).map_err(io_write)?;
        f.write_all(&buf).map_err(io_write)?;
        tail.len = end;
        Ok(())
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

    /// Rewrites the file with the live state when it grew much larger than that.
    fn maybe_rewrite(&self) -> Result<(), StorageError> {
        let size = self.inner.file.lock().len;
        if size < REWRITE_MIN_BYTES {
            return Ok(());
        }
        let records = {
            let state = self.inner.state.lock();
            state.snapshot_records()
        };
        let mut buf = Vec::new();
        for r in &records {
            buf.extend_from_slice(&frame(r)?);
        }
        if (buf.len() as u64).saturating_mul(2) > size {
            return Ok(());
        }
        let tmp = self.inner.dir.join(format!("{WAL_FILE}.tmp"));
        let path = self.inner.dir.join(WAL_FILE);
        let mut file = self.inner.file.lock();
        let mut f = File::create(&tmp).map_err(io_write)?;
        f.write_all(&buf).map_err(io_write)?;
        f.sync_all().map_err(io_write)?;
        std::fs::rename(&tmp, &path).map_err(io_write)?;
        sync_dir(&self.inner.dir).map_err(io_write)?;
        let reopened = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_write)?;
        *file = Tail {
            file: Arc::new(reopened),
            len: buf.len() as u64,
            allocated: buf.len() as u64,
        };
        tracing::info!(from = size, to = buf.len(), "raft log rewritten");
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for FileLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) =
            (start, end)
        {
            if s > e {
                return Ok(Vec::new());
            }
        }
        let state = self.inner.state.lock();
        Ok(state
            .entries
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for FileLog {
    type LogReader = FileLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = self.inner.state.lock();
        let last = state
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(state.purged);
        Ok(LogState {
            last_purged_log_id: state.purged,
            last_log_id: last,
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
        let committed = self.inner.state.lock().pending_committed.take();
        let mut records = Vec::with_capacity(2);
        if let Some(c) = committed {
            records.push(Record::Committed(c));
        }
        records.push(Record::Entries(entries.clone()));
        if let Err(e) = self.write(&records) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(e);
        }
        {
            let mut state = self.inner.state.lock();
            for e in entries {
                state.entries.insert(e.log_id.index, e);
            }
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
        self.write(&[Record::Truncate(log_id.index)])?;
        let _ = self.inner.state.lock().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(&[Record::Purge(log_id)])?;
        self.inner.state.lock().apply(Record::Purge(log_id));
        self.maybe_rewrite()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn write_entries(log: &FileLog, range: std::ops::Range<u64>) {
        log.write(&[Record::Entries(range.clone().map(entry).collect())])
            .unwrap();
        let mut state = log.inner.state.lock();
        for i in range {
            state.entries.insert(i, entry(i));
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_records_before_it_survive() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), true).unwrap();
        write_entries(&log, 1..4);
        log.write(&[Record::Truncate(3), Record::Purge(entry(1).log_id)])
            .unwrap();
        log.close().unwrap();
        let valid = log.inner.file.lock().len;
        drop(log);
        // A crash in the middle of the next record: a length, a checksum, half a body, where
        // the record goes (over the preallocated zeros).
        let mut f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(WAL_FILE))
            .unwrap();
        f.seek(SeekFrom::Start(valid)).unwrap();
        f.write_all(&[0, 0, 0, 40, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);

        let log = FileLog::open(dir.path(), true).unwrap();
        let len = std::fs::metadata(dir.path().join(WAL_FILE)).unwrap().len();
        assert_eq!(len, valid);
        let state = log.inner.state.lock();
        assert_eq!(state.entries.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(state.purged, Some(entry(1).log_id));
        drop(state);
        // And it appends after the cut.
        write_entries(&log, 3..5);
        log.close().unwrap();
        drop(log);
        let log = FileLog::open(dir.path(), true).unwrap();
        let keys: Vec<u64> = log.inner.state.lock().entries.keys().copied().collect();
        assert_eq!(keys, vec![2, 3, 4]);
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
        let keys: Vec<u64> = log.inner.state.lock().entries.keys().copied().collect();
        assert_eq!(keys, vec![1, 2, 3, 4, 5]);
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
        let keys: Vec<u64> = log.inner.state.lock().entries.keys().copied().collect();
        assert_eq!(keys, vec![1, 2, 3, 4, 5, 6]);
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
        // Flip a byte of the second record's body: its checksum no longer matches.
        let path = dir.path().join(WAL_FILE);
        let mut data = std::fs::read(&path).unwrap();
        let at = usize::try_from(first).unwrap() + 10;
        data[at] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let log = FileLog::open(dir.path(), true).unwrap();
        let keys: Vec<u64> = log.inner.state.lock().entries.keys().copied().collect();
        assert_eq!(keys, vec![1, 2]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), first);
    }
}
