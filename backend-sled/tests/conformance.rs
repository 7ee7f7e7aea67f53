//! The shared storage-api conformance suite, run against the sled backend.

storage_api::conformance_tests!(backend_sled::SledBackend);
