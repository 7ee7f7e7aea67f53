//! # mvcc-core
//!
//! etcd's MVCC storage semantics (v3.5/v3.6) over any [`storage_api::Backend`]: revisions, the
//! key index with generations, put/range/delete-range, transactions with compares and nesting,
//! compaction with crash-safe resume, leases, watch, and a background [`Compactor`].
//!
//! ```
//! use mvcc_core::{MvccStore, Compare, CompareOp, TxnOp};
//! use storage_api::MemoryBackend;
//!
//! let store = MvccStore::new(MemoryBackend::volatile()).unwrap();
//! let (rev, kv) = store.put(b"foo", b"bar", 0).unwrap();
//! assert_eq!((rev, kv.version), (2, 1));
//! let r = store.range(b"foo", b"", 0, 0, false).unwrap();
//! assert_eq!(r.kvs[0].value, b"bar");
//! let t = store
//!     .txn(
//!         &[Compare::version("foo", CompareOp::Equal, 1)],
//!         &[TxnOp::put("foo", "baz", 0)],
//!         &[],
//!     )
//!     .unwrap();
//! assert!(t.succeeded);
//! assert_eq!(t.revision, 3);
//! ```
//!
//! Module layout follows etcd's `mvcc` package: [`revision`], [`key_index`], [`tree_index`],
//! [`kv`], [`store`], [`txn`], [`compaction`], [`lease`], [`watch`], [`compactor`], and
//! [`engine`] (the only module that names concrete storage engines).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod compaction;
pub mod compactor;
pub mod engine;
pub mod error;
pub mod group_commit;
pub mod key_index;
pub mod kv;
pub mod lease;
pub mod revision;
pub mod store;
pub mod tree_index;
pub mod txn;
pub mod watch;

pub use compaction::CompactionStats;
pub use compactor::{CompactionMode, Compactor};
pub use engine::{compiled_backends, is_compiled, open_default, AnyBackend, DefaultBackend};
pub use error::{MvccError, MvccResult};
pub use group_commit::CommitMode;
pub use key_index::{Generation, KeyIndex};
pub use kv::KeyValue;
pub use lease::{Clock, LeaseInfo, ManualClock, SystemClock};
pub use revision::Revision;
pub use store::{MvccStore, RangeResult, StoreConfig};
pub use tree_index::{KeyRange, TreeIndex};
pub use txn::{
    Compare, CompareOp, CompareTarget, RangeRequest, TxnOp, TxnOpResponse, TxnRequest, TxnResult,
};
pub use watch::{Event, EventKind, WatchResponse, Watcher};

/// Compiles the Rust example of the workspace README as a doc test, so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// Compiles and runs the Rust examples of `docs/DESIGN.md` as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/DESIGN.md")]
pub struct DesignDoctests;

/// Compiles and runs the Rust examples of `docs/INTEGRATION.md` as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/INTEGRATION.md")]
pub struct IntegrationDoctests;
