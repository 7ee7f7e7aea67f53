//! The unified error type of every backend.

use std::path::PathBuf;

/// Result alias used throughout the storage layer.
pub type StorageResult<T> = Result<T, StorageError>;

/// Boxed error of an underlying engine, kept as the `source` of [`StorageError::Engine`].
pub type EngineError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every failure a [`Backend`](crate::Backend) can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend was closed with [`Backend::close`](crate::Backend::close); no further call succeeds.
    #[error("backend is closed")]
    Closed,
    /// An operating-system I/O error, with what was being done.
    #[error("I/O error while {context}")]
    Io {
        /// What the backend was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The storage engine itself reported an error.
    #[error("{engine} engine error while {context}")]
    Engine {
        /// Engine name (`"sled"`, `"redb"`, `"rocksdb"`, `"memory"`).
        engine: &'static str,
        /// What the backend was doing.
        context: String,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// A snapshot could not be restored; existing data was left untouched.
    #[error("invalid snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Stored data failed a consistency check.
    #[error("data corruption: {0}")]
    Corruption(String),
    /// A caller passed an argument the backend cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The data directory belongs to another engine (or another program).
    #[error("{path} holds a {found} store, not a {expected} store")]
    WrongEngine {
        /// The directory.
        path: PathBuf,
        /// The engine that was asked to open it.
        expected: &'static str,
        /// What the directory's marker names.
        found: String,
    },
    /// The configured path cannot hold a store (it is a file, or cannot be created).
    #[error("cannot use {path} as a data directory: {reason}")]
    InvalidPath {
        /// The path from the configuration.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// The engine was asked for by name but its cargo feature is not compiled into this build.
    #[error("the {0} backend is not enabled in this build (enable the `{0}` cargo feature)")]
    NotEnabled(&'static str),
}

/// True when `err` or one of its sources is an I/O error of a full device (`ENOSPC`, or
/// `EDQUOT`: a quota is a full device to the writer).
pub fn is_out_of_space(err: &(dyn std::error::Error + 'static)) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
            {
                return true;
            }
        }
        // Engines that keep only the message of the OS error: sled's error has no source,
        // RocksDB's status carries strerror's text.
        let text = e.to_string();
        if [
            "(os error 28)",
            "(os error 122)",
            "No space left on device",
            "Disk quota exceeded",
        ]
        .iter()
        .any(|m| text.contains(m))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

impl StorageError {
    /// True when the device holding the data is full (see [`is_out_of_space`]).
    pub fn is_out_of_space(&self) -> bool {
        is_out_of_space(self)
    }

    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an engine error with context.
    pub fn engine(
        engine: &'static str,
        context: impl Into<String>,
        source: impl Into<EngineError>,
    ) -> Self {
        StorageError::Engine {
            engine,
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Why a snapshot image was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The input does not start with the rusd snapshot magic bytes.
    #[error("not a rusd snapshot (bad magic bytes)")]
    BadMagic,
    /// The snapshot was written in a format version this build cannot read.
    #[error("unsupported snapshot format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version found in the header.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The input ended before the trailer.
    #[error("snapshot is truncated")]
    Truncated,
    /// The trailer checksum does not match the content.
    #[error("snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch {
        /// Checksum stored in the trailer.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// The structure is invalid (unknown tree, bad record tag, keys out of order, trailing bytes...).
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}

#[cfg(test)]
mod out_of_space_tests {
    use super::*;

    #[test]
    fn out_of_space_is_found_through_the_source_chain_and_in_messages() {
        let full = StorageError::io("writing", std::io::Error::from_raw_os_error(28));
        assert!(full.is_out_of_space());
        let quota = StorageError::io("writing", std::io::Error::from_raw_os_error(122));
        assert!(quota.is_out_of_space());
        let other = StorageError::io("writing", std::io::Error::from_raw_os_error(5));
        assert!(!other.is_out_of_space());
        assert!(!StorageError::Closed.is_out_of_space());
        let nested = std::io::Error::other(StorageError::io(
            "flushing",
            std::io::Error::new(std::io::ErrorKind::StorageFull, "full"),
        ));
        assert!(is_out_of_space(&nested));
        let text_only = std::io::Error::other("sled: No space left on device (os error 28)");
        assert!(is_out_of_space(&text_only));
        let rocksdb = StorageError::engine(
            "rocksdb",
            "writing to kv",
            "IO error: No space left on device: While appending to file: 000004.log",
        );
        assert!(rocksdb.is_out_of_space());
        let unrelated = StorageError::engine("rocksdb", "writing", "IO error: bad file");
        assert!(!unrelated.is_out_of_space());
    }
}
