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
//! The whole etcd `KV` data plane is in the library: [`request`] has one request type per etcd
//! call ([`Range`], [`Put`], [`DeleteRange`], [`Txn`], [`Compaction`]) with every etcd field,
//! validated as etcd does, and [`MvccStore::kv_range`], [`MvccStore::kv_put`],
//! [`MvccStore::kv_delete_range`], [`MvccStore::kv_txn`] and [`MvccStore::kv_compact`] serve
//! them ([`data_plane`]); `put`/`range`/`delete_range`/`txn` are shorter forms.
//!
//! ```
//! use mvcc_core::{MvccStore, Put, Range, SortOrder, SortTarget};
//! use storage_api::MemoryBackend;
//!
//! let store = MvccStore::new(MemoryBackend::volatile()).unwrap();
//! store.put(b"a", b"2", 0).unwrap();
//! store.put(b"b", b"1", 0).unwrap();
//! let prev = store
//!     .kv_put(&Put { key: b"a".to_vec(), ignore_value: true, prev_kv: true, ..Put::default() })
//!     .unwrap();
//! assert_eq!(prev.prev_kv.unwrap().version, 1);
//! let r = store
//!     .kv_range(&Range {
//!         sort_target: SortTarget::Value,
//!         sort_order: SortOrder::Descend,
//!         keys_only: true,
//!         ..Range::new("a", "\0")
//!     })
//!     .unwrap();
//! assert_eq!((r.kvs[0].key.as_slice(), r.kvs[0].value.len(), r.count), (&b"a"[..], 0, 2));
//! ```
//!
//! Module layout follows etcd's `mvcc` package: [`revision`], [`key_index`], [`tree_index`],
//! [`kv`], [`store`], [`txn`], [`compaction`], [`lease`], [`watch`], [`compactor`], and
//! [`engine`] (the only module that names concrete storage engines); [`request`] and
//! [`data_plane`] are etcd's `KV` service (`etcdserver/apply.go`, `v3rpc/key.go`).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod compaction;
pub mod compactor;
pub mod data_plane;
pub mod engine;
pub mod error;
pub mod group_commit;
pub mod key_index;
pub mod kv;
pub mod lease;
pub mod request;
pub mod revision;
mod row_cache;
pub mod store;
pub mod tree_index;
pub mod txn;
pub mod watch;
pub mod watch_poll;

pub use compaction::{CompactionStats, ScheduledCompaction};
pub use compactor::{CompactionMode, Compactor};
pub use engine::{compiled_backends, is_compiled, open_default, AnyBackend, DefaultBackend};
pub use error::{MvccError, MvccResult};
pub use group_commit::CommitMode;
pub use key_index::{Generation, KeyIndex};
pub use kv::KeyValue;
pub use lease::{Clock, LeaseInfo, LeaseRemaining, ManualClock, SystemClock};
pub use request::{
    Compaction, CompactionResponse, DeleteRange, DeleteRangeResponse, Put, PutResponse, Range,
    RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, Txn, TxnResponse,
};
pub use revision::Revision;
pub use store::{
    MvccStore, RangeResult, StoreConfig, CURRENT_ROW_OVERHEAD, ROW_CACHE_ENTRY_OVERHEAD,
};
pub use tree_index::{KeyRange, TreeIndex};
pub use txn::{
    Compare, CompareOp, CompareTarget, RangeRequest, TxnOp, TxnOpResponse, TxnRequest, TxnResult,
};
pub use watch::{
    Event, EventKind, WatchResponse, WatchStream, Watcher, CATCH_UP_ROWS, DEFAULT_WATCHER_CAPACITY,
};

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
