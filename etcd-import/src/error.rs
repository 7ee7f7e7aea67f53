//! The crate's error type.

use std::path::PathBuf;

use mvcc_core::error::MvccError;
use storage_api::StorageError;

/// Everything that can go wrong reading an etcd file or writing the rusd store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Reading the source or preparing the target failed.
    #[error("I/O error on {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The source file is empty.
    #[error("the file is empty")]
    Empty,
    /// Neither meta page carries bbolt's magic number: not a bbolt file.
    #[error("not a bbolt file (no meta page carries the bbolt magic)")]
    NotBbolt,
    /// Both meta pages are damaged (bad checksum, version or page size).
    #[error("no valid bbolt meta page (both fail their checksum or header checks)")]
    NoValidMeta,
    /// The file is shorter than the pages its meta page says are in use, or ends in a partial
    /// page.
    #[error("truncated file: {len} bytes, {needed} needed")]
    Truncated {
        /// The file length (without a snapshot trailer).
        len: u64,
        /// The length the file must have.
        needed: u64,
    },
    /// An `etcdctl snapshot save` file (of etcd, or of rusd: see [`crate::frame`]) whose
    /// SHA-256 trailer does not match its content.
    #[error("snapshot SHA-256 trailer does not match the file content")]
    SnapshotChecksum,
    /// A bbolt page is malformed.
    #[error("corrupt bbolt page {page}: {reason}")]
    Corrupt {
        /// The page id (0 for an inline bucket).
        page: u64,
        /// What is wrong.
        reason: String,
    },
    /// A bucket etcd always creates is missing: a bbolt file, but not an etcd one.
    #[error("not an etcd database: bucket {0:?} is missing")]
    MissingBucket(&'static str),
    /// A row of an etcd bucket does not decode or contradicts the rows before it.
    #[error("bad row in etcd bucket {bucket:?} at key {key}: {reason}")]
    BadRow {
        /// The bucket.
        bucket: &'static str,
        /// The row key, hex.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The target directory exists and is not empty.
    #[error("target directory {0} is not empty")]
    TargetNotEmpty(PathBuf),
    /// The storage engine failed.
    #[error("storage engine error")]
    Storage(#[from] StorageError),
    /// Opening the imported store failed.
    #[error("mvcc store error")]
    Mvcc(#[from] MvccError),
    /// The imported store does not recover the state that was imported.
    #[error("imported store does not match the source: {0}")]
    Verify(String),
    /// The directory holds no rusd store (no `RUSD_ENGINE` marker): nothing to export or save.
    #[error("{0} is not a rusd data directory (no RUSD_ENGINE marker)")]
    NotRusdStore(PathBuf),
    /// The output file already exists; it is never overwritten.
    #[error("output file {0} already exists")]
    OutputExists(PathBuf),
    /// The rusd store holds something an etcd 3.4 bbolt file cannot represent.
    #[error("cannot export: {0}")]
    Unexportable(String),
    /// The auth state could not be read from the store, or `rusd-auth` refused it.
    #[error("auth state")]
    Auth(#[from] rusd_auth::AuthError),
    /// The bbolt writer was given input bbolt cannot store (bad page size, unsorted or
    /// oversized keys).
    #[error("bbolt writer: {0}")]
    BoltWrite(String),
}
