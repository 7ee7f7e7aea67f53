//! # mvcc-core
//!
//! etcd's MVCC storage semantics (v3.5/v3.6) over any [`storage_api::Backend`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod key_index;
pub mod kv;
pub mod revision;
pub mod tree_index;

pub use error::{MvccError, MvccResult};
pub use key_index::{Generation, KeyIndex};
pub use kv::KeyValue;
pub use revision::Revision;
pub use tree_index::{KeyRange, TreeIndex};
