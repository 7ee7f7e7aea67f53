//! Backend configuration and engine selection names.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::StorageError;

/// Default cache budget in MiB.
pub const DEFAULT_CACHE_SIZE_MB: u64 = 256;
/// Default interval of [`Durability::Buffered`].
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// When an acknowledged write becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Ack = durable: every write call returns only after its data is on stable storage
    /// (fsync / fdatasync / WAL sync, per engine; see each backend's docs).
    Sync,
    /// Writes are acknowledged from memory and made durable by a background flusher at
    /// least every `interval`, and by every [`Backend::flush`](crate::Backend::flush).
    /// A crash can lose at most the writes of the last interval; a batch is never
    /// recovered partially.
    Buffered {
        /// Upper bound between a write and the flush that makes it durable.
        interval: Duration,
    },
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Buffered {
            interval: DEFAULT_FLUSH_INTERVAL,
        }
    }
}

/// Configuration honoured by every engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendConfig {
    /// Data directory. Created if missing. The memory backend treats an empty path as
    /// "purely volatile" and otherwise persists an image there on `flush`/`close`.
    pub path: PathBuf,
    /// Cache budget in MiB for the engine's block/page cache (and, on RocksDB, its memtables).
    pub cache_size_mb: u64,
    /// When acknowledged writes become durable.
    pub durability: Durability,
}

impl BackendConfig {
    /// A configuration for `path` with the default cache budget and durability.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BackendConfig {
            path: path.into(),
            cache_size_mb: DEFAULT_CACHE_SIZE_MB,
            durability: Durability::default(),
        }
    }

    /// Sets the cache budget in MiB.
    pub fn with_cache_size_mb(mut self, mb: u64) -> Self {
        self.cache_size_mb = mb;
        self
    }

    /// Sets the durability mode.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The cache budget in bytes (at least 1 MiB).
    pub fn cache_size_bytes(&self) -> u64 {
        self.cache_size_mb.max(1).saturating_mul(1024 * 1024)
    }
}

/// The engines rusd knows about, whether or not they are compiled into this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// The in-memory reference backend ([`MemoryBackend`](crate::MemoryBackend)).
    Memory,
    /// sled 0.34.7 (the default engine).
    Sled,
    /// redb 4.x.
    Redb,
    /// RocksDB via the `rocksdb` crate.
    Rocksdb,
}

impl BackendKind {
    /// Every engine, in a stable order.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Memory,
        BackendKind::Sled,
        BackendKind::Redb,
        BackendKind::Rocksdb,
    ];

    /// Lower-case name, also the cargo feature that enables the engine.
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Sled => "sled",
            BackendKind::Redb => "redb",
            BackendKind::Rocksdb => "rocksdb",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                StorageError::InvalidArgument(format!(
                    "unknown backend {s:?} (expected one of memory, sled, redb, rocksdb)"
                ))
            })
    }
}
