//! Offline `snapshot save / restore / status` of rusd's own portable snapshot format
//! ([`storage_api::snapshot`]), like `etcdutl snapshot`.
//!
//! * [`save`]: the snapshot of a stopped rusd store, written to a new file (temporary file,
//!   fsync, link into place, directory fsync).
//! * [`restore`]: validates a snapshot (bare, or framed as the client API's Snapshot streams
//!   it, see [`crate::frame`]) completely, then restores it into a new store of any
//!   compiled engine in a missing or empty directory and checks the store opens at the
//!   snapshot's revision; on failure the directory is emptied again. The source's raft apply
//!   record is dropped, so `rusd` adopts the store as a new one-member cluster (add members
//!   with MemberAdd; they catch up by snapshot).
//! * [`status`]: the revision, live key count, size and CRC-32 of a snapshot, computed by
//!   restoring it into a volatile in-memory store.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use mvcc_core::{AnyBackend, MvccStore};
use storage_api::snapshot::ValidatedSnapshot;
use storage_api::{Backend, BackendConfig, BackendKind, MemoryBackend, StorageError, Tree};

use crate::error::ImportError;
use crate::export::{open_existing, write_new_file};
use crate::frame::Framing;
use crate::import::check_target;
use crate::status::EtcdStatus;

/// What a snapshot holds, as `status` and `restore` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The engine read (save) or written (restore); memory for status.
    pub backend: BackendKind,
    /// Records in the snapshot (every tree).
    pub records: u64,
    /// The current revision of the store the snapshot restores to.
    pub revision: i64,
    /// Its compaction revision (`-1` = never compacted).
    pub compact_revision: i64,
    /// Keys alive at `revision`.
    pub live_keys: u64,
    /// Leases.
    pub leases: usize,
    /// The snapshot's size in bytes.
    pub size: u64,
    /// The snapshot's CRC-32 (IEEE) trailer: a checksum of every byte before it.
    pub crc32: u32,
}

impl SnapshotSummary {
    /// The figures `snapshot status` prints (hash = the CRC-32 trailer, total keys = live
    /// keys, total size = the file size).
    pub fn status(&self) -> EtcdStatus {
        EtcdStatus {
            hash: self.crc32,
            revision: self.revision,
            total_key: self.live_keys,
            total_size: self.size,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and validates the snapshot file at `path`, bare or framed as the client API's
/// Snapshot streams it (what `etcdctl snapshot save` writes; see [`crate::frame`]); returns it
/// with its CRC-32 trailer.
pub fn read_snapshot(path: &Path) -> Result<(ValidatedSnapshot, u32), ImportError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    if len == 0 {
        return Err(ImportError::Empty);
    }
    let read = |snap_len: u64| -> Result<(ValidatedSnapshot, u32), ImportError> {
        let f = File::open(path).map_err(io_err(path))?;
        let snap = ValidatedSnapshot::read_from(&mut BufReader::new(f).take(snap_len))?;
        // The trailer's last four bytes are the CRC-32 the validation just checked.
        let mut f = File::open(path).map_err(io_err(path))?;
        let mut crc = [0u8; 4];
        f.seek(SeekFrom::Start(snap_len.saturating_sub(4)))
            .and_then(|_| f.read_exact(&mut crc))
            .map_err(io_err(path))?;
        Ok((snap, u32::from_be_bytes(crc)))
    };
    match crate::frame::framed_len(&mut f, len).map_err(io_err(path))? {
        Framing::Bare => read(len),
        Framing::Framed { len: snap_len } => read(snap_len),
        // A framed file whose hash does not match, unless it is a bare snapshot that happens
        // to end like a frame.
        Framing::BadHash { .. } => read(len).map_err(|_| ImportError::SnapshotChecksum),
    }
}

fn summarize<B: Backend>(
    store: &MvccStore<B>,
    backend: BackendKind,
    records: u64,
    size: u64,
    crc32: u32,
) -> Result<SnapshotSummary, ImportError> {
    let live = store.range(b"\0", b"\0", 0, 0, true)?.count;
    Ok(SnapshotSummary {
        backend,
        records,
        revision: store.current_revision(),
        compact_revision: store.compact_revision(),
        live_keys: u64::try_from(live).unwrap_or(0),
        leases: store.leases().len(),
        size,
        crc32,
    })
}

/// The status of the snapshot file at `path` (nothing is written anywhere).
pub fn status(path: &Path) -> Result<SnapshotSummary, ImportError> {
    let (snap, crc32) = read_snapshot(path)?;
    let (records, size) = (snap.entry_count(), snap.byte_len());
    let mem = MemoryBackend::volatile();
    mem.restore_validated(snap)?;
    let store = MvccStore::new(mem)?;
    let s = summarize(&store, BackendKind::Memory, records, size, crc32);
    store.close()?;
    s
}

/// Saves the stopped rusd store in `data_dir` (engine `kind`, or the one its marker names) as a
/// new snapshot file `out` (which must not exist).
pub fn save(
    data_dir: &Path,
    out: &Path,
    kind: Option<BackendKind>,
) -> Result<SnapshotSummary, ImportError> {
    if out.exists() || out.is_symlink() {
        return Err(ImportError::OutputExists(out.to_path_buf()));
    }
    let backend = open_existing(data_dir, kind)?;
    let engine = backend.kind();
    let written = write_new_file(out, |f, tmp| {
        let mut w = BufWriter::new(f);
        let n = backend.snapshot_to(&mut w)?;
        w.flush().map_err(io_err(tmp))?;
        Ok(n)
    });
    let closed = backend.close();
    written?;
    closed?;
    let mut s = status(out)?;
    s.backend = engine;
    Ok(s)
}

/// Restores the snapshot file `file` into a new `kind` store in `data_dir` (missing or empty).
/// The snapshot is validated completely before anything is written; the new store is then
/// opened and must recover the snapshot's revision. On failure `data_dir` is left as it was
/// found (removed, or emptied again).
pub fn restore(
    file: &Path,
    data_dir: &Path,
    kind: BackendKind,
) -> Result<SnapshotSummary, ImportError> {
    if !mvcc_core::is_compiled(kind) {
        return Err(StorageError::NotEnabled(kind.name()).into());
    }
    check_target(data_dir)?;
    let (snap, crc32) = read_snapshot(file)?;
    let (records, size) = (snap.entry_count(), snap.byte_len());
    let existed = data_dir.exists();
    let result = (|| -> Result<SnapshotSummary, ImportError> {
        let backend = AnyBackend::open(kind, BackendConfig::new(data_dir))?;
        backend.restore_validated(snap)?;
        // The source member's raft position (its last applied entry and membership) means
        // nothing to the cluster this store starts: without it `rusd` adopts the store as
        // written before replication (as `etcdutl snapshot restore` writes a new membership
        // and consistent index). With it, the member waited forever as a learner of the old
        // cluster.
        backend.delete(Tree::Meta, mvcc_core::store::META_APPLY)?;
        backend.flush()?;
        let store = MvccStore::new(backend)?;
        let s = summarize(&store, kind, records, size, crc32);
        store.close()?;
        s
    })();
    if result.is_err() {
        crate::import::cleanup(data_dir, existed);
    }
    result
}
