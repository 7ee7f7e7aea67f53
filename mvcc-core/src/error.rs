//! [`MvccError`]: the one error type of the MVCC layer.

use storage_api::StorageError;

/// Result alias of the MVCC layer.
pub type MvccResult<T> = Result<T, MvccError>;

/// Every failure the MVCC layer reports.
///
/// The messages of the etcd-visible conditions are etcd's own (`mvcc: required revision has been
/// compacted`, ...), so a server layer can map them to the gRPC errors of etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MvccError {
    /// The requested revision is below the compaction revision (or a compaction at or below the
    /// current compaction revision was requested).
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is above the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// Internal: the key index has no revision for the key at the requested revision.
    #[error("mvcc: revision not found")]
    RevisionNotFound,
    /// A put referenced a lease that does not exist (or a lease operation named an unknown lease).
    #[error("lease not found: {0}")]
    LeaseNotFound(i64),
    /// A lease with this id already exists.
    #[error("lease already exists: {0}")]
    LeaseExists(i64),
    /// A transaction puts the same key twice, or puts a key that one of its deletes covers.
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A transaction (or one of its nested transactions) has more operations than allowed.
    #[error("too many operations in txn request (max {max})")]
    TooManyOps {
        /// The configured maximum.
        max: usize,
    },
    /// A put with `ignore_value` or `ignore_lease` names a key that does not exist (etcd
    /// `ErrKeyNotFound`).
    #[error("key not found")]
    KeyNotFound,
    /// A put with `ignore_value` carries a value (etcd `ErrGRPCValueProvided`).
    #[error("value is provided")]
    ValueProvided,
    /// A put with `ignore_lease` carries a lease (etcd `ErrGRPCLeaseProvided`).
    #[error("lease is provided")]
    LeaseProvided,
    /// A key is empty where a key is required.
    #[error("key is not provided")]
    EmptyKey,
    /// A key exceeds the configured maximum size.
    #[error("key is too large ({size} bytes, max {max})")]
    KeyTooLarge {
        /// Size of the key.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A value exceeds the configured maximum size.
    #[error("value is too large ({size} bytes, max {max})")]
    ValueTooLarge {
        /// Size of the value.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A watch range is empty (`key >= end`).
    #[error("mvcc: watcher range is empty")]
    EmptyWatcherRange,
    /// A caller passed an argument the store cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Stored data failed a consistency check (undecodable row, index/backend mismatch...).
    #[error("mvcc data corruption: {0}")]
    Corruption(String),
    /// A background task failed (panicked or was cancelled).
    #[error("background task failed: {0}")]
    Background(String),
    /// The storage backend failed.
    #[error("storage error")]
    Storage(#[from] StorageError),
    /// The store refuses mutations: a backend write reported an error and reading its outcome
    /// back failed too, or (in `CommitMode::GroupSync`) a flush failed, so the store cannot tell
    /// whether the backend holds the write durably. Its memory may differ from the backend; open
    /// a new store over the backend (which recovers from it) to resume writing. Reads keep being
    /// served at the last visible revision.
    #[error("mvcc store failed, reopen the store: {0}")]
    Failed(String),
}

impl MvccError {
    /// True when the error comes from a full device (`ENOSPC`), directly or as the reason the
    /// store failed: etcd answers such writes with its NOSPACE alarm.
    pub fn is_out_of_space(&self) -> bool {
        storage_api::is_out_of_space(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_is_recognised_directly_and_as_a_failure_reason() {
        let io = std::io::Error::from_raw_os_error(28);
        let reason = format!("flush failed: I/O error while syncing: {io}");
        assert!(MvccError::Storage(StorageError::io("syncing", io)).is_out_of_space());
        assert!(MvccError::Failed(reason).is_out_of_space());
        assert!(!MvccError::Failed("flush failed: injected fault".into()).is_out_of_space());
        assert!(!MvccError::Compacted.is_out_of_space());
    }
}
