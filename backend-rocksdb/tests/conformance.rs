//! The shared storage-api conformance suite, run on RocksDB.

storage_api::conformance_tests!(backend_rocksdb::RocksdbBackend);
