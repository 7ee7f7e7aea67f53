//! Writes validated etcd data into a fresh rusd store and proves the store recovers it.

use std::path::{Path, PathBuf};

use mvcc_core::revision::Revision;
use mvcc_core::store::{
    FORMAT_VERSION_WITHOUT_COPY, META_CURRENT_REV, META_FINISHED_COMPACT_REV, META_FORMAT,
    META_SCHEDULED_COMPACT_REV,
};
use mvcc_core::{AnyBackend, MvccStore};
use storage_api::{Backend, BackendConfig, BackendKind, StorageError, Tree, WriteBatch};

use crate::auth::AuthFigures;
use crate::error::ImportError;
use crate::etcd::{parse_etcd_db, EtcdData};

/// Rows per backend write.
pub const BATCH_ROWS: usize = 1024;
/// Payload bytes per backend write (a batch holds at least one row).
pub const BATCH_BYTES: usize = 4 << 20;
/// Version byte of rusd's lease record without a checkpoint
/// ([`mvcc_core::lease::LEASE_RECORD_V1`]).
pub const LEASE_FORMAT_VERSION: u8 = mvcc_core::lease::LEASE_RECORD_V1;

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The file read (`member/snap/db` when a data directory was given).
    pub source: PathBuf,
    /// True when the source was an `etcdctl snapshot save` file (checked SHA-256 trailer).
    pub snapshot: bool,
    /// The engine written.
    pub backend: BackendKind,
    /// `key` rows imported (puts and deletions).
    pub rows: usize,
    /// Keys alive at the current revision.
    pub live_keys: usize,
    /// Leases imported.
    pub leases: usize,
    /// The current revision of the new store.
    pub current_revision: i64,
    /// The compaction revision of the new store (`-1` = never compacted).
    pub compact_revision: i64,
    /// Backend writes issued.
    pub batches: usize,
    /// The auth state imported (users, roles, enabled flag, auth revision); `None` when the
    /// source has no auth buckets or only the state of a fresh etcd (disabled, revision 1, no
    /// users or roles), which a rusd store opens to without any row.
    pub auth: Option<AuthFigures>,
}

/// Prefix of the `meta` rows in which imports by earlier versions kept etcd's checkpointed
/// remaining TTL of a lease (`leasepb.Lease` field 3, written by etcd only with lease
/// checkpointing): the prefix, then the lease id (8 bytes big-endian) → the remaining TTL in
/// seconds (8 bytes big-endian).
///
/// An import now writes the remaining TTL into rusd's lease record itself (its version 2,
/// see [`mvcc_core::lease`]), where `mvcc-core` resumes the lease from it. `mvcc-core` still
/// honours these rows in stores imported before (and removes a lease's row at its next
/// checkpoint, revoke or re-grant).
pub const META_IMPORTED_REMAINING_TTL: &[u8] = mvcc_core::lease::META_LEGACY_IMPORTED_REMAINING_TTL;

/// The `meta` key of lease `id`'s imported remaining TTL in a store imported by an earlier
/// version (see [`META_IMPORTED_REMAINING_TTL`]).
pub fn remaining_ttl_key(id: i64) -> Vec<u8> {
    mvcc_core::lease::legacy_remaining_ttl_key(id)
}

/// The remaining TTLs that an import by an earlier version kept in `meta` rows,
/// `(lease id, seconds)` by id (see [`META_IMPORTED_REMAINING_TTL`]); empty for a store
/// imported now (see `MvccStore::lease_checkpointed_ttl`).
pub fn imported_remaining_ttls<B: Backend>(backend: &B) -> Result<Vec<(i64, i64)>, ImportError> {
    let mut out = Vec::new();
    for (k, v) in backend.scan_prefix(Tree::Meta, META_IMPORTED_REMAINING_TTL, 0)? {
        let id: [u8; 8] = k[META_IMPORTED_REMAINING_TTL.len()..]
            .try_into()
            .map_err(|_| ImportError::Verify(format!("bad remaining-TTL row key {k:?}")))?;
        let ttl: [u8; 8] = v
            .as_slice()
            .try_into()
            .map_err(|_| ImportError::Verify(format!("bad remaining-TTL row value {v:?}")))?;
        out.push((i64::from_be_bytes(id), i64::from_be_bytes(ttl)));
    }
    Ok(out)
}

/// rusd's lease record without a checkpoint: the version byte, then the TTL (8 bytes
/// big-endian) ([`mvcc_core::lease::encode_lease_record`] with no remaining TTL).
pub fn encode_lease(ttl: i64) -> Vec<u8> {
    mvcc_core::lease::encode_lease_record(ttl, 0)
}

/// The file to read for `path`: `path/member/snap/db` for an etcd data directory, else `path`.
pub fn source_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("member").join("snap").join("db")
    } else {
        path.to_path_buf()
    }
}

/// Reads and validates the etcd file at `path` (data directory or file), read-only.
pub fn read_etcd(path: &Path) -> Result<EtcdData, ImportError> {
    let file = source_file(path);
    let bytes = std::fs::read(&file).map_err(|source| ImportError::Io {
        path: file.clone(),
        source,
    })?;
    parse_etcd_db(&bytes)
}

/// Fails unless `dir` is missing or an empty directory.
pub fn check_target(dir: &Path) -> Result<(), ImportError> {
    let io = |source| ImportError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(ImportError::TargetNotEmpty(dir.to_path_buf())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() && !dir.is_dir() => {
            Err(ImportError::TargetNotEmpty(dir.to_path_buf()))
        }
        Err(e) => Err(io(e)),
    }
}

/// Imports the etcd database at `source` (an etcd data directory, its `member/snap/db`, or an
/// `etcdctl snapshot save` file) into a new `kind` store in `target`.
///
/// The source is read and fully validated first, and the target checked to be missing or
/// empty; only then is anything written. If writing fails, what was written is removed.
pub fn import(
    source: &Path,
    target: &Path,
    kind: BackendKind,
) -> Result<ImportSummary, ImportError> {
    if !mvcc_core::is_compiled(kind) {
        return Err(StorageError::NotEnabled(kind.name()).into());
    }
    check_target(target)?;
    let data = read_etcd(source)?;
    let existed = target.exists();
    let result = write_store(&data, target, kind);
    if result.is_err() {
        cleanup(target, existed);
    }
    let mut summary = result?;
    summary.source = source_file(source);
    Ok(summary)
}

/// Removes what a failed write put in `target` (the directory itself when it did not exist).
pub(crate) fn cleanup(target: &Path, existed: bool) {
    if existed {
        if let Ok(entries) = std::fs::read_dir(target) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    } else {
        let _ = std::fs::remove_dir_all(target);
    }
}

/// Writes `data` as a `kind` store in `target` (which must be missing or empty), then opens it
/// with [`MvccStore`] and checks it recovers the current and compaction revisions, the live key
/// count, the lease ids and the auth state.
///
/// The auth state (unless absent or that of a fresh etcd) goes into the `auth` tree through
/// `rusd-auth`'s own encoding ([`rusd_auth::persist::restore_rows`]), in the last batch, with
/// the `meta` rows; bcrypt hashes are kept as they are.
pub fn write_store(
    data: &EtcdData,
    target: &Path,
    kind: BackendKind,
) -> Result<ImportSummary, ImportError> {
    check_target(target)?;
    std::fs::create_dir_all(target).map_err(|source| ImportError::Io {
        path: target.to_path_buf(),
        source,
    })?;
    let backend = AnyBackend::open(kind, BackendConfig::new(target))?;
    let mut batches = 0usize;
    let mut batch = WriteBatch::with_capacity(BATCH_ROWS);
    let mut flush = |batch: &mut WriteBatch, force: bool| -> Result<(), ImportError> {
        if !batch.is_empty()
            && (force || batch.len() >= BATCH_ROWS || batch.payload_bytes() >= BATCH_BYTES)
        {
            backend.write(batch)?;
            batches += 1;
            *batch = WriteBatch::with_capacity(BATCH_ROWS);
        }
        Ok(())
    };
    for row in &data.rows {
        batch.put(
            Tree::Kv,
            Revision::new(row.main, row.sub).to_key(row.tombstone),
            row.kv.encode(),
        );
        flush(&mut batch, false)?;
    }
    for l in &data.leases {
        // etcd's checkpointed remaining TTL, if any, goes into the record: rusd resumes the
        // lease from it, as etcd does.
        batch.put(
            Tree::Lease,
            l.id.to_be_bytes().to_vec(),
            mvcc_core::lease::encode_lease_record(l.ttl, l.remaining_ttl),
        );
        flush(&mut batch, false)?;
    }
    if let Some(f) = data.finished_compact {
        batch.put(
            Tree::Meta,
            META_FINISHED_COMPACT_REV.to_vec(),
            f.to_be_bytes().to_vec(),
        );
    }
    if let Some(s) = data.scheduled_compact {
        batch.put(
            Tree::Meta,
            META_SCHEDULED_COMPACT_REV.to_vec(),
            s.to_be_bytes().to_vec(),
        );
    }
    batch.put(
        Tree::Meta,
        META_CURRENT_REV.to_vec(),
        data.current_revision.to_be_bytes().to_vec(),
    );
    // Format 1: no copy of the current rows; a store opened with the copy on builds it.
    batch.put(
        Tree::Meta,
        META_FORMAT.to_vec(),
        vec![FORMAT_VERSION_WITHOUT_COPY],
    );
    let auth = match &data.auth {
        Some(d) if !d.is_fresh() => Some(rusd_auth::persist::restore_rows(d, &mut batch)?),
        _ => None,
    };
    flush(&mut batch, true)?;
    backend.flush()?;

    let store = MvccStore::new(backend)?;
    let verified = verify(&store, data).and_then(|()| {
        let got = rusd_auth::persist::read_dump(&**store.backend())?;
        let want = auth.clone().unwrap_or_default();
        if got != want {
            return Err(ImportError::Verify(format!(
                "auth state: {got:?}, {want:?} expected"
            )));
        }
        Ok(())
    });
    let closed = store.close();
    verified?;
    closed?;
    Ok(ImportSummary {
        source: PathBuf::new(),
        snapshot: data.snapshot_trailer,
        backend: kind,
        rows: data.rows.len(),
        live_keys: data.live_keys,
        leases: data.leases.len(),
        current_revision: data.current_revision,
        compact_revision: data.compact_revision(),
        batches,
        auth: auth.as_ref().and_then(AuthFigures::of),
    })
}

fn verify(store: &MvccStore<AnyBackend>, data: &EtcdData) -> Result<(), ImportError> {
    let mismatch = |what: &str, got: String, want: String| {
        Err(ImportError::Verify(format!(
            "{what}: {got}, {want} expected"
        )))
    };
    if store.current_revision() != data.current_revision {
        return mismatch(
            "current revision",
            store.current_revision().to_string(),
            data.current_revision.to_string(),
        );
    }
    if store.compact_revision() != data.compact_revision() {
        return mismatch(
            "compaction revision",
            store.compact_revision().to_string(),
            data.compact_revision().to_string(),
        );
    }
    let count = store.range(b"\0", b"\0", 0, 0, true)?.count;
    if usize::try_from(count).ok() != Some(data.live_keys) {
        return mismatch("live keys", count.to_string(), data.live_keys.to_string());
    }
    let mut want: Vec<i64> = data.leases.iter().map(|l| l.id).collect();
    want.sort_unstable();
    let mut got = store.leases();
    got.sort_unstable();
    if got != want {
        return mismatch("lease ids", format!("{got:?}"), format!("{want:?}"));
    }
    for l in &data.leases {
        let got = store.lease_checkpointed_ttl(l.id)?;
        if got != l.remaining_ttl.max(0) {
            return mismatch(
                &format!("lease {:x} remaining TTL", l.id),
                got.to_string(),
                l.remaining_ttl.to_string(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_record_is_rusds() {
        assert_eq!(encode_lease(600), [1, 0, 0, 0, 0, 0, 0, 2, 0x58]);
        assert_eq!(
            remaining_ttl_key(7),
            b"etcdImport/remainingTTL/\0\0\0\0\0\0\0\x07"
        );
    }

    #[test]
    fn target_must_be_missing_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_target(&dir.path().join("missing")).is_ok());
        assert!(check_target(dir.path()).is_ok());
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        assert!(matches!(
            check_target(dir.path()),
            Err(ImportError::TargetNotEmpty(_))
        ));
        assert!(matches!(
            check_target(&dir.path().join("f")),
            Err(ImportError::TargetNotEmpty(_))
        ));
    }

    #[test]
    fn rocksdb_is_refused_before_reading_or_writing() {
        if mvcc_core::is_compiled(BackendKind::Rocksdb) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        let err = import(&dir.path().join("none"), &target, BackendKind::Rocksdb).unwrap_err();
        assert!(matches!(
            err,
            ImportError::Storage(StorageError::NotEnabled("rocksdb"))
        ));
        assert!(!target.exists());
    }
}
