//! Engine selection: the only module that names concrete storage engines.
//!
//! Cargo features of `mvcc-core`: `sled` (default), `redb`, `rocksdb`, `memory` (the in-memory
//! [`MemoryBackend`] is always compiled). [`DefaultBackend`] is the first compiled engine of
//! sled, redb, rocksdb, memory; [`AnyBackend`] picks an engine at run time.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use storage_api::snapshot::ValidatedSnapshot;
use storage_api::{
    Backend, BackendConfig, BackendKind, KvPair, MemoryBackend, StorageError, StorageResult, Tree,
    WriteBatch,
};

use crate::error::MvccResult;
use crate::store::MvccStore;

/// The default engine of this build: sled if compiled in, else redb, else RocksDB, else memory.
#[cfg(feature = "sled")]
pub type DefaultBackend = backend_sled::SledBackend;
/// The default engine of this build: sled if compiled in, else redb, else RocksDB, else memory.
#[cfg(all(not(feature = "sled"), feature = "redb"))]
pub type DefaultBackend = backend_redb::RedbBackend;
/// The default engine of this build: sled if compiled in, else redb, else RocksDB, else memory.
#[cfg(all(not(feature = "sled"), not(feature = "redb"), feature = "rocksdb"))]
pub type DefaultBackend = backend_rocksdb::RocksdbBackend;
/// The default engine of this build: sled if compiled in, else redb, else RocksDB, else memory.
#[cfg(all(not(feature = "sled"), not(feature = "redb"), not(feature = "rocksdb")))]
pub type DefaultBackend = MemoryBackend;

/// The kind of [`DefaultBackend`].
pub const DEFAULT_KIND: BackendKind = <DefaultBackend as Backend>::KIND;

/// The engines compiled into this build (memory first, then sled, redb, rocksdb).
pub fn compiled_backends() -> Vec<BackendKind> {
    BackendKind::ALL
        .into_iter()
        .filter(|k| is_compiled(*k))
        .collect()
}

/// True when engine `kind` is compiled into this build.
pub fn is_compiled(kind: BackendKind) -> bool {
    match kind {
        BackendKind::Memory => true,
        BackendKind::Sled => cfg!(feature = "sled"),
        BackendKind::Redb => cfg!(feature = "redb"),
        BackendKind::Rocksdb => cfg!(feature = "rocksdb"),
    }
}

/// Opens an [`MvccStore`] on the default engine in `dir` (created if missing).
pub fn open_default(dir: impl AsRef<Path>) -> MvccResult<MvccStore<DefaultBackend>> {
    let backend = DefaultBackend::new(BackendConfig::new(dir.as_ref()))?;
    MvccStore::new(backend)
}

/// Opens an [`MvccStore`] on engine `kind` with `config`.
pub fn open_store(kind: BackendKind, config: BackendConfig) -> MvccResult<MvccStore<AnyBackend>> {
    MvccStore::new(AnyBackend::open(kind, config)?)
}

/// Any compiled engine, chosen at run time. Implements [`Backend`] by delegation.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyBackend {
    /// The in-memory engine.
    Memory(Arc<MemoryBackend>),
    /// The sled engine.
    #[cfg(feature = "sled")]
    Sled(Arc<backend_sled::SledBackend>),
    /// The redb engine.
    #[cfg(feature = "redb")]
    Redb(Arc<backend_redb::RedbBackend>),
    /// The RocksDB engine.
    #[cfg(feature = "rocksdb")]
    Rocksdb(Arc<backend_rocksdb::RocksdbBackend>),
}

macro_rules! dispatch {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Memory($b) => $e,
            #[cfg(feature = "sled")]
            AnyBackend::Sled($b) => $e,
            #[cfg(feature = "redb")]
            AnyBackend::Redb($b) => $e,
            #[cfg(feature = "rocksdb")]
            AnyBackend::Rocksdb($b) => $e,
        }
    };
}

impl AnyBackend {
    /// Opens engine `kind` with `config`; [`StorageError::NotEnabled`] when its cargo feature is
    /// not compiled in.
    pub fn open(kind: BackendKind, config: BackendConfig) -> StorageResult<Arc<AnyBackend>> {
        let backend = match kind {
            BackendKind::Memory => AnyBackend::Memory(MemoryBackend::new(config)?),
            #[cfg(feature = "sled")]
            BackendKind::Sled => AnyBackend::Sled(backend_sled::SledBackend::new(config)?),
            #[cfg(feature = "redb")]
            BackendKind::Redb => AnyBackend::Redb(backend_redb::RedbBackend::new(config)?),
            #[cfg(feature = "rocksdb")]
            BackendKind::Rocksdb => {
                AnyBackend::Rocksdb(backend_rocksdb::RocksdbBackend::new(config)?)
            }
            #[allow(unreachable_patterns)]
            other => return Err(StorageError::NotEnabled(other.name())),
        };
        Ok(Arc::new(backend))
    }

    /// The engine behind this value.
    pub fn kind(&self) -> BackendKind {
        match self {
            AnyBackend::Memory(_) => BackendKind::Memory,
            #[cfg(feature = "sled")]
            AnyBackend::Sled(_) => BackendKind::Sled,
            #[cfg(feature = "redb")]
            AnyBackend::Redb(_) => BackendKind::Redb,
            #[cfg(feature = "rocksdb")]
            AnyBackend::Rocksdb(_) => BackendKind::Rocksdb,
        }
    }
}

impl Backend for AnyBackend {
    /// The default engine's kind (use [`AnyBackend::kind`] for the actual one).
    const KIND: BackendKind = DEFAULT_KIND;

    /// Opens the default engine.
    fn new(config: BackendConfig) -> StorageResult<Arc<Self>> {
        AnyBackend::open(DEFAULT_KIND, config)
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> StorageResult<()> {
        dispatch!(self, b => b.put(tree, key, value))
    }

    fn get(&self, tree: Tree, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        dispatch!(self, b => b.get(tree, key))
    }

    fn get_many(&self, tree: Tree, keys: &[&[u8]]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        dispatch!(self, b => b.get_many(tree, keys))
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> StorageResult<()> {
        dispatch!(self, b => b.delete(tree, key))
    }

    fn batch_put(&self, tree: Tree, pairs: &[KvPair]) -> StorageResult<()> {
        dispatch!(self, b => b.batch_put(tree, pairs))
    }

    fn batch_delete(&self, tree: Tree, keys: &[Vec<u8>]) -> StorageResult<()> {
        dispatch!(self, b => b.batch_delete(tree, keys))
    }

    fn write(&self, batch: &WriteBatch) -> StorageResult<()> {
        dispatch!(self, b => b.write(batch))
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> StorageResult<Vec<KvPair>> {
        dispatch!(self, b => b.scan(tree, start, end, limit))
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8], limit: usize) -> StorageResult<Vec<KvPair>> {
        dispatch!(self, b => b.scan_prefix(tree, prefix, limit))
    }

    fn snapshot_to(&self, writer: &mut dyn Write) -> StorageResult<u64> {
        dispatch!(self, b => b.snapshot_to(writer))
    }

    fn snapshot(&self) -> StorageResult<Vec<u8>> {
        dispatch!(self, b => b.snapshot())
    }

    fn restore_from(&self, reader: &mut dyn Read) -> StorageResult<()> {
        dispatch!(self, b => b.restore_from(reader))
    }

    fn restore(&self, data: &[u8]) -> StorageResult<()> {
        dispatch!(self, b => b.restore(data))
    }

    fn restore_validated(&self, snapshot: ValidatedSnapshot) -> StorageResult<()> {
        dispatch!(self, b => b.restore_validated(snapshot))
    }

    fn compact(&self, revision: i64) -> StorageResult<()> {
        dispatch!(self, b => b.compact(revision))
    }

    fn size(&self) -> StorageResult<u64> {
        dispatch!(self, b => b.size())
    }

    fn defragment(&self) -> StorageResult<()> {
        dispatch!(self, b => b.defragment())
    }

    fn flush(&self) -> StorageResult<()> {
        dispatch!(self, b => b.flush())
    }

    fn close(&self) -> StorageResult<()> {
        dispatch!(self, b => b.close())
    }

    fn is_closed(&self) -> bool {
        dispatch!(self, b => b.is_closed())
    }

    fn durability(&self) -> storage_api::Durability {
        dispatch!(self, b => b.durability())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_always_compiled_and_first() {
        let kinds = compiled_backends();
        assert_eq!(kinds.first(), Some(&BackendKind::Memory));
        assert!(is_compiled(BackendKind::Memory));
        assert_eq!(is_compiled(BackendKind::Sled), cfg!(feature = "sled"));
        assert_eq!(is_compiled(BackendKind::Redb), cfg!(feature = "redb"));
        assert_eq!(is_compiled(BackendKind::Rocksdb), cfg!(feature = "rocksdb"));
        for k in BackendKind::ALL {
            assert_eq!(kinds.contains(&k), is_compiled(k));
        }
    }

    #[test]
    fn not_compiled_engines_are_not_enabled_errors() {
        let dir = tempfile::tempdir().unwrap();
        for kind in BackendKind::ALL {
            let res = AnyBackend::open(kind, BackendConfig::new(dir.path().join(kind.name())));
            if is_compiled(kind) {
                let b = res.unwrap();
                assert_eq!(b.kind(), kind);
                b.close().unwrap();
            } else {
                match res {
                    Err(StorageError::NotEnabled(name)) => assert_eq!(name, kind.name()),
                    other => panic!("{kind}: expected NotEnabled, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn open_default_works() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_default(dir.path().join("db")).unwrap();
        assert_eq!(store.put(b"a", b"1", 0).unwrap().0, 2);
        assert_eq!(<DefaultBackend as Backend>::KIND, DEFAULT_KIND);
        store.backend().close().unwrap();
    }
}
