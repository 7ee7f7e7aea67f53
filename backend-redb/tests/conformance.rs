//! The shared storage-api conformance suite, run against the redb backend.

storage_api::conformance_tests!(backend_redb::RedbBackend);
