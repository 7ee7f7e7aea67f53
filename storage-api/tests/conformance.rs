//! The shared conformance suite run against the in-memory reference backend, and against
//! the fault-injection decorator with no fault armed (it must be transparent).
storage_api::conformance_tests!(storage_api::MemoryBackend);
storage_api::conformance_tests!(
    faulty_passthrough: storage_api::fault::FaultyBackend<storage_api::MemoryBackend>
);
