//! The shared conformance suite run against the in-memory reference backend.
storage_api::conformance_tests!(storage_api::MemoryBackend);
