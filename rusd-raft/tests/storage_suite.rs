//! openraft's own storage conformance suite (`openraft::testing::Suite`) over the raft log
//! store and the MvccStore state machine.

use std::time::Duration;

use mvcc_core::{AnyBackend, StoreConfig};
use rusd_raft::file_log::FileLog;
use rusd_raft::log_store::LogStore;
use rusd_raft::openraft::testing::{StoreBuilder, Suite};
use rusd_raft::openraft::StorageError;
use rusd_raft::state_machine::StateMachine;
use rusd_raft::TypeConfig;
use storage_api::{BackendConfig, BackendKind, Durability, MemoryBackend};

struct Builder(BackendKind);

impl StoreBuilder<TypeConfig, LogStore, StateMachine<MemoryBackend>, tempfile::TempDir>
    for Builder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine<MemoryBackend>), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AnyBackend::open(
            self.0,
            BackendConfig::new(dir.path().join("raft-log")).with_durability(Durability::Buffered {
                interval: Duration::from_secs(1),
            }),
        )
        .expect("log engine");
        let log = LogStore::open(log, true)?;
        let sm = StateMachine::open(MemoryBackend::volatile(), StoreConfig::default())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_on_sled() {
    Suite::test_all(Builder(BackendKind::Sled)).unwrap();
}

#[test]
fn openraft_storage_suite_on_redb() {
    Suite::test_all(Builder(BackendKind::Redb)).unwrap();
}

#[test]
fn openraft_storage_suite_on_memory() {
    Suite::test_all(Builder(BackendKind::Memory)).unwrap();
}

struct FileBuilder;

impl StoreBuilder<TypeConfig, FileLog, StateMachine<MemoryBackend>, tempfile::TempDir>
    for FileBuilder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, FileLog, StateMachine<MemoryBackend>), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = FileLog::open(dir.path().join("raft-wal"), true)?;
        let sm = StateMachine::open(MemoryBackend::volatile(), StoreConfig::default())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_on_the_log_file() {
    Suite::test_all(FileBuilder).unwrap();
}
