//! Bad input at the storage layer, over the in-memory reference backend (volatile for the
//! argument and snapshot rows, persisted for the path and close rows). The table is shared with
//! `mvcc-core/tests/bad_input.rs`, which runs it on every compiled engine.

#[path = "../../mvcc-core/tests/common/backend_bad_input.rs"]
mod table;

use std::path::Path;

use storage_api::dir::prepare_data_dir;
use storage_api::{Backend, BackendConfig, MemoryBackend, StorageError, MEMORY_IMAGE_FILE};

fn open(config: BackendConfig) -> storage_api::StorageResult<std::sync::Arc<MemoryBackend>> {
    MemoryBackend::new(config)
}

#[test]
fn memory_bad_arguments_and_snapshots() {
    table::bad_argument_rows("memory", &open, None, &[]);
}

#[test]
fn memory_bad_paths() {
    table::bad_path_rows("memory", &open, &|p: &Path| {
        prepare_data_dir(p, "sled").unwrap();
        "sled"
    });
}

#[test]
fn memory_every_call_after_close() {
    table::closed_rows("memory", &open);
}

/// Memory-specific: a damaged persisted image is `Corruption` on open and is left in place.
#[test]
fn memory_damaged_image() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("db");
    let b = open(table::config(&path)).unwrap();
    table::populate(b.as_ref());
    b.close().unwrap();
    let image = path.join(MEMORY_IMAGE_FILE);
    let mut bytes = std::fs::read(&image).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&image, &bytes).unwrap();
    match open(table::config(&path)) {
        Err(StorageError::Corruption(msg)) => assert!(msg.contains("damaged"), "{msg}"),
        other => panic!("expected Corruption, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&image).unwrap(),
        bytes,
        "image left untouched"
    );
}

/// A volatile store (empty path) is not a bad path.
#[test]
fn memory_empty_path_is_volatile() {
    let b = open(BackendConfig::new("")).unwrap();
    assert_eq!(b.size().unwrap(), 0);
    b.close().unwrap();
}
