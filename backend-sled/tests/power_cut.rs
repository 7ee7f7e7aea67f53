//! sled's large values across a power cut, on `powerloss-fs` (a FUSE file system that keeps
//! only what was synced when the power is cut). Needs `/dev/fuse` and root: skipped without
//! them, unless `CI` is set, then it fails.
//!
//! sled keeps a value too large for its log in a file `blobs/<lsn>` of its own and puts a
//! pointer to it in the log. Upstream sled 0.34.7 never syncs those files, and its recovery
//! skips a log message whose blob file is missing (it takes it for a garbage-collected one).
//! The workspace builds sled from `vendor/sled`, which syncs each blob before the message that
//! points at it is written (`vendor/sled/RUSD-PATCH.md`). Against upstream sled this test
//! fails: the log is durable after sled's periodic `fsync`, the blob is not.

use std::time::{Duration, Instant};

use backend_sled::SledBackend;
use powerloss_fs::harness::fuse_ready;
use powerloss_fs::{Image, Mount, Options};
use storage_api::{Backend, BackendConfig, Durability, Tree};

/// A value above sled's blob threshold (about 128 KiB with its default segment size).
const BIG: usize = 300_000;

/// In `Buffered` mode nothing but sled's own flusher makes data durable: after it has synced
/// the log once past the writes, a big value written before a small one is there after a cut,
/// byte for byte, and so is the small one.
#[test]
fn a_big_value_is_durable_once_its_log_message_is() {
    if !fuse_ready("a_big_value_is_durable_once_its_log_message_is") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mountpoint = tmp.path().join("mnt");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let mount = Mount::mount(&mountpoint, Image::default(), Options::new()).unwrap();
    let dir = mount.mountpoint().join("store");
    let config = BackendConfig::new(&dir).with_durability(Durability::Buffered {
        interval: Duration::from_millis(5),
    });
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    let backend = SledBackend::new(config.clone()).unwrap();
    backend.put(Tree::Kv, b"big", &big).unwrap();
    backend
        .put(Tree::Kv, b"small", b"after the big one")
        .unwrap();
    // Wait for two of sled's periodic log fsyncs after the writes (the first may have begun
    // before them).
    let synced = mount.stats().fsyncs;
    let deadline = Instant::now() + Duration::from_secs(20);
    while mount.stats().fsyncs < synced + 2 {
        assert!(
            Instant::now() < deadline,
            "sled's flusher never synced its log"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let image = mount.cut_power().unwrap();
    // The cut file system refuses everything from here; closing only logs that.
    drop(backend);

    let mount = Mount::mount(&mountpoint, image, Options::new()).unwrap();
    let backend = SledBackend::new(config).unwrap();
    assert_eq!(
        backend.get(Tree::Kv, b"small").unwrap().as_deref(),
        Some(&b"after the big one"[..])
    );
    let got = backend.get(Tree::Kv, b"big").unwrap();
    assert_eq!(
        got.as_ref().map(Vec::len),
        Some(BIG),
        "the big value is lost"
    );
    assert!(
        got.as_deref() == Some(&big[..]),
        "the big value came back different"
    );
    backend.close().unwrap();
    mount.unmount().unwrap();
}
