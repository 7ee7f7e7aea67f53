//! # storage-api
//!
//! The contract between rusd's MVCC layer and the storage engines it runs on.
//!
//! * [`Backend`]: the trait every engine implements (sled, redb, RocksDB and the in-memory
//!   [`MemoryBackend`]).
//! * [`Tree`]: the five logical keyspaces (kv, index, meta, lease, auth).
//! * [`WriteBatch`]: atomic multi-tree writes.
//! * [`BackendConfig`] / [`Durability`] / [`BackendKind`]: configuration and engine names.
//! * [`StorageError`]: the one error type of the storage layer.
//! * [`snapshot`]: the portable, versioned, checksummed snapshot format.
//! * `conformance` (feature `conformance`): the shared test suite and the
//!   [`conformance_tests!`] macro that stamps it into each backend crate.
//!
//! This crate depends on no storage engine.
#![deny(missing_docs)]

mod backend;
mod batch;
mod config;
pub mod dir;
mod error;
pub mod fault;
pub mod flusher;
pub mod keys;
mod memory;
pub mod snapshot;
mod tree;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use backend::{Backend, KvPair};
pub use batch::{WriteBatch, WriteOp};
pub use config::{
    BackendConfig, BackendKind, Durability, DEFAULT_CACHE_SIZE_MB, DEFAULT_FLUSH_INTERVAL,
};
pub use error::{is_out_of_space, EngineError, SnapshotError, StorageError, StorageResult};
pub use memory::{MemoryBackend, MEMORY_IMAGE_FILE, MEMORY_LOG_FILE, MEMORY_LOG_REWRITE_MIN};
pub use tree::Tree;
