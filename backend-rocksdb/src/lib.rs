//! placeholder
pub use rocksdb;
