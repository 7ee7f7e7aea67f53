//! Shared harness of the store-level tests: every test is a generic function over
//! `B: Backend`, stamped for every compiled engine by `engine_tests!`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use mvcc_core::{KeyValue, MvccStore, StoreConfig};
use storage_api::{Backend, BackendConfig, Durability, Tree};
use tempfile::TempDir;

/// A data directory for one engine, able to open and reopen the store.
pub struct Env<B: Backend> {
    _dir: TempDir,
    path: PathBuf,
    pub config: StoreConfig,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> Env<B> {
    pub fn new() -> Self {
        Self::with_config(StoreConfig::default())
    }

    pub fn with_config(config: StoreConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Env {
            _dir: dir,
            path,
            config,
            _b: std::marker::PhantomData,
        }
    }

    pub fn backend_config(&self) -> BackendConfig {
        BackendConfig::new(&self.path).with_durability(Durability::Buffered {
            interval: std::time::Duration::from_secs(3600),
        })
    }

    pub fn open_backend(&self) -> Arc<B> {
        B::new(self.backend_config()).unwrap()
    }

    pub fn open(&self) -> MvccStore<B> {
        MvccStore::with_config(self.open_backend(), self.config.clone()).unwrap()
    }

    /// Closes the store's backend and opens everything again from disk.
    pub fn reopen(&self, store: MvccStore<B>) -> MvccStore<B> {
        store.backend().close().unwrap();
        drop(store);
        self.open()
    }
}

pub fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64, lease: i64) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease,
    }
}

/// Every row of a tree.
pub fn rows<B: Backend>(b: &B, tree: Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
    b.scan(tree, &[], &[], 0).unwrap()
}

/// The rows of the copy of the current rows (`index` tree) a store holding exactly `live`
/// (its current key-values) must have: `copy_key(key) -> encoded row`, in key order.
pub fn copy_of<'a>(live: impl IntoIterator<Item = &'a KeyValue>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = live
        .into_iter()
        .map(|kv| (mvcc_core::store::copy_key(&kv.key), kv.encode()))
        .collect();
    want.sort();
    want
}

/// Asserts that the copy of the current rows in `b` holds exactly the key-values of `live`.
pub fn assert_copy_is<'a, B: Backend>(
    b: &B,
    live: impl IntoIterator<Item = &'a KeyValue>,
    what: &str,
) {
    assert_eq!(
        rows(b, Tree::Index),
        copy_of(live),
        "copy of the current rows: {what}"
    );
}

/// Stamps `fn name<B: Backend>()` tests for every compiled engine.
#[macro_export]
macro_rules! engine_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name::<storage_api::MemoryBackend>(); } )*
        }
        #[cfg(feature = "sled")]
        mod sled {
            $( #[test] fn $name() { super::$name::<backend_sled::SledBackend>(); } )*
        }
        #[cfg(feature = "redb")]
        mod redb {
            $( #[test] fn $name() { super::$name::<backend_redb::RedbBackend>(); } )*
        }
        #[cfg(feature = "rocksdb")]
        mod rocksdb {
            $( #[test] fn $name() { super::$name::<backend_rocksdb::RocksdbBackend>(); } )*
        }
    };
}
