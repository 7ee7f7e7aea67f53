//! The snapshot files of a state machine: where snapshots live on disk (see the
//! [state machine's docs](crate::state_machine#snapshots)).
//!
//! A directory holds at most one complete snapshot: `<seq>-<id>.snap` (the portable image)
//! and `<seq>-<id>.meta` (its openraft metadata, JSON), plus `*.tmp` files of snapshots being
//! built or received. `seq` is a counter of this directory, so two snapshots with the same
//! id never share a name. A snapshot is made current by renaming its image into place after
//! its metadata (both fsynced, then the directory); the previous one is deleted at once.
//! Opening the directory removes every temporary file and every file that is not part of
//! the newest complete snapshot, which it keeps as the current one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::types::SnapshotMeta;

const SNAP_EXT: &str = "snap";
const META_EXT: &str = "meta";
const TMP_EXT: &str = "tmp";
/// Prefix of the temporary files of received snapshots.
const RECV_PREFIX: &str = "recv-";
/// Longest part of a snapshot id kept in a file name.
const MAX_ID_IN_NAME: usize = 64;

/// The snapshot directory of one state machine.
#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Keeps a private temporary directory alive (state machines opened without a directory).
    _temp: Option<tempfile::TempDir>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The current snapshot: its metadata and the stem of its files.
    current: Option<(SnapshotMeta, String)>,
    /// The next sequence number.
    next_seq: u64,
    /// The temporary file handed out by the last [`SnapshotFiles::begin_receiving`].
    receiving: Option<PathBuf>,
}

/// Deletes a temporary file when dropped, unless [`disarm`](TempFile::disarm)ed.
#[derive(Debug)]
pub(crate) struct TempFile(Option<PathBuf>);

impl TempFile {
    /// The path of the file.
    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn disarm(&mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            remove_quietly(&p);
        }
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a snapshot file");
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The sequence number of a file stem `<seq>-<id>`.
fn seq_of(stem: &str) -> Option<u64> {
    stem.split('-').next()?.parse().ok()
}

fn sanitized(id: &str) -> String {
    id.chars()
        .take(MAX_ID_IN_NAME)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl SnapshotFiles {
    /// Opens (creating it if needed) the snapshot directory `dir`, cleaning it up (see the
    /// [module docs](self)).
    pub(crate) fn open(dir: PathBuf) -> io::Result<Self> {
        Self::open_inner(dir, None)
    }

    /// Snapshot files in a private temporary directory, deleted with this value.
    pub(crate) fn temporary() -> io::Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("rusd-raft-snap")
            .tempdir()?;
        Self::open_inner(temp.path().to_path_buf(), Some(temp))
    }

    fn open_inner(dir: PathBuf, temp: Option<tempfile::TempDir>) -> io::Result<Self> {
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            // The directory's name must be durable before any snapshot in it counts: the log
            // is purged behind snapshots.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut snaps = Vec::new();
        let mut others = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if !path.is_file() {
                continue;
            }
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            match (ext, seq_of(stem)) {
                (SNAP_EXT, Some(seq)) => snaps.push((seq, stem.to_string())),
                _ => others.push(path),
            }
        }
        let mut next_seq = snaps.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
        // The newest complete snapshot: a readable metadata file next to its image.
        let mut best: Option<(SnapshotMeta, u64, String)> = None;
        for (seq, stem) in &snaps {
            let meta = fs::read(dir.join(format!("{stem}.{META_EXT}")))
                .ok()
                .and_then(|b| serde_json::from_slice::<SnapshotMeta>(&b).ok());
            let Some(meta) = meta else { continue };
            let newer = match &best {
                None => true,
                Some((m, s, _)) => (&meta.last_log_id, seq) > (&m.last_log_id, s),
            };
            if newer {
                best = Some((meta, *seq, stem.clone()));
            }
        }
        let keep = best.as_ref().map(|(_, _, stem)| stem.clone());
        for (_, stem) in &snaps {
            if Some(stem) != keep.as_ref() {
                remove_quietly(&dir.join(format!("{stem}.{SNAP_EXT}")));
            }
        }
        for path in others {
            let is_kept_meta = path.extension().and_then(|e| e.to_str()) == Some(META_EXT)
                && path.file_stem().and_then(|s| s.to_str()) == keep.as_deref();
            if !is_kept_meta {
                // Temporary files of an interrupted build or receive, orphaned metadata.
                remove_quietly(&path);
            }
            // Never reuse the number of a temporary file that could not be removed.
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if let Some(seq) = stem.rsplit('-').next().and_then(|s| s.parse::<u64>().ok()) {
                next_seq = next_seq.max(seq + 1);
            }
        }
        sync_dir(&dir)?;
        if let Some((meta, _, _)) = &best {
            tracing::info!(dir = %dir.display(), last_log_id = ?meta.last_log_id, "found a snapshot");
        }
        Ok(SnapshotFiles {
            dir,
            inner: Mutex::new(Inner {
                current: best.map(|(meta, _, stem)| (meta, stem)),
                next_seq,
                receiving: None,
            }),
            _temp: temp,
        })
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, stem: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{stem}.{ext}"))
    }

    /// A new temporary file `<kind>-<seq>.tmp`, created empty (read and write).
    pub(crate) fn create_temp(&self, kind: &str) -> io::Result<(TempFile, File)> {
        let seq = {
            let mut inner = self.inner.lock();
            inner.next_seq += 1;
            inner.next_seq - 1
        };
        let path = self.dir.join(format!("{kind}-{seq}.{TMP_EXT}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((TempFile(Some(path)), file))
    }

    /// A fresh temporary file for a snapshot received from the leader; the file of an earlier
    /// receive that never completed is deleted (openraft receives one snapshot at a time).
    pub(crate) fn begin_receiving(&self) -> io::Result<File> {
        let (mut temp, file) = self.create_temp(RECV_PREFIX.trim_end_matches('-'))?;
        let path = temp.disarm();
        let old = std::mem::replace(&mut self.inner.lock().receiving, path);
        if let Some(old) = old {
            remove_quietly(&old);
        }
        Ok(file)
    }

    /// Takes the file of the current receive if `file` is that file (same device and inode).
    pub(crate) fn take_receiving(&self, file: &File) -> Option<TempFile> {
        let mut inner = self.inner.lock();
        let path = inner.receiving.as_ref()?;
        if same_file(file, path) {
            inner.receiving.take().map(|p| TempFile(Some(p)))
        } else {
            None
        }
    }

    /// Makes the complete, fsynced image in `temp` the current snapshot with `meta`, deleting
    /// the previous one, and returns the image opened for reading. If a newer snapshot became
    /// current meanwhile, that one stays and the image is deleted (the returned handle still
    /// reads it).
    pub(crate) fn commit(&self, mut temp: TempFile, meta: &SnapshotMeta) -> io::Result<File> {
        let seq = {
            let mut inner = self.inner.lock();
            inner.next_seq += 1;
            inner.next_seq - 1
        };
        let stem = format!("{seq:020}-{}", sanitized(&meta.snapshot_id));
        let meta_path = self.path(&stem, META_EXT);
        let snap_path = self.path(&stem, SNAP_EXT);
        let meta_bytes = serde_json::to_vec(meta).map_err(io::Error::other)?;
        {
            let (meta_temp, mut f) = self.create_temp("meta")?;
            f.write_all(&meta_bytes)?;
            f.sync_all()?;
            fs::rename(meta_temp.path(), &meta_path)?;
            let mut meta_temp = meta_temp;
            meta_temp.disarm();
        }
        let snap_temp = temp.disarm().unwrap_or_default();
        if let Err(e) = fs::rename(&snap_temp, &snap_path) {
            remove_quietly(&snap_temp);
            remove_quietly(&meta_path);
            return Err(e);
        }
        sync_dir(&self.dir)?;
        let file = File::open(&snap_path)?;
        let mut inner = self.inner.lock();
        let newer = match &inner.current {
            None => true,
            Some((m, _)) => meta.last_log_id >= m.last_log_id,
        };
        let stale = if newer {
            inner.current.replace((meta.clone(), stem)).map(|(_, s)| s)
        } else {
            Some(stem)
        };
        drop(inner);
        if let Some(stale) = stale {
            remove_quietly(&self.path(&stale, SNAP_EXT));
            remove_quietly(&self.path(&stale, META_EXT));
        }
        Ok(file)
    }

    /// The current snapshot's metadata and its image opened for reading.
    pub(crate) fn current(&self) -> io::Result<Option<(SnapshotMeta, File)>> {
        let inner = self.inner.lock();
        match &inner.current {
            None => Ok(None),
            Some((meta, stem)) => {
                let file = File::open(self.path(stem, SNAP_EXT))?;
                Ok(Some((meta.clone(), file)))
            }
        }
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, _path: &Path) -> bool {
    false
}
