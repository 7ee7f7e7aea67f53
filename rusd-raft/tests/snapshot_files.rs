//! Raft snapshots are files in the state machine's snapshot directory: one complete snapshot
//! at a time, no temporary files left behind, the current one found again after a restart,
//! and a corrupt received snapshot refused before the backend is touched.

use std::path::{Path, PathBuf};

use mvcc_core::{Put, StoreConfig};
use rusd_raft::openraft::storage::RaftStateMachine;
use rusd_raft::openraft::{Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use rusd_raft::state_machine::StateMachine;
use rusd_raft::{Command, TypeConfig};
use storage_api::{Backend, MemoryBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn entry(index: u64, key: &str, value: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(rusd_raft::openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put(Put::new(key, value, 0))),
    }
}

/// The file names in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn with_ext(names: &[String], ext: &str) -> Vec<String> {
    names.iter().filter(|n| n.ends_with(ext)).cloned().collect()
}

fn open(backend: std::sync::Arc<MemoryBackend>, dir: &Path) -> StateMachine<MemoryBackend> {
    StateMachine::open_with_snapshot_dir(backend, StoreConfig::default(), None, dir).unwrap()
}

async fn read_all(mut file: Box<tokio::fs::File>) -> Vec<u8> {
    let mut out = Vec::new();
    file.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_leaves_one_snapshot_file_and_replaces_the_older_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("raft-snap");
    let backend = MemoryBackend::volatile();
    let mut sm = open(backend.clone(), &dir);
    assert_eq!(sm.snapshot_dir(), dir);
    sm.apply(vec![entry(1, "a", "1"), entry(2, "b", "2")])
        .await
        .unwrap();

    let first = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(first.meta.snapshot_id, "1-1-2");
    assert_eq!(first.meta.last_log_id.map(|l| l.index), Some(2));
    let names = files(&dir);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(with_ext(&names, ".snap").len(), 1, "{names:?}");
    assert_eq!(with_ext(&names, ".meta").len(), 1, "{names:?}");
    let first_name = with_ext(&names, ".snap").remove(0);
    assert!(first_name.ends_with("-1-1-2.snap"), "{first_name}");
    // The file holds the backend's image, byte for byte.
    let image = backend.snapshot().unwrap();
    assert_eq!(read_all(first.snapshot).await, image);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, first.meta);
    assert_eq!(read_all(current.snapshot).await, image);

    // A newer snapshot replaces the older file.
    sm.apply(vec![entry(3, "c", "3")]).await.unwrap();
    let second = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(second.meta.snapshot_id, "1-1-3");
    let names = files(&dir);
    assert_eq!(names.len(), 2, "{names:?}");
    let snaps = with_ext(&names, ".snap");
    assert_eq!(snaps.len(), 1, "{names:?}");
    assert!(snaps[0].ends_with("-1-1-3.snap"), "{names:?}");
    assert_ne!(snaps[0], first_name);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, second.meta);
    assert_eq!(
        read_all(current.snapshot).await,
        backend.snapshot().unwrap()
    );
    // Building again at the same log id keeps exactly one snapshot too.
    let third = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(third.meta, second.meta);
    assert_eq!(with_ext(&files(&dir), ".snap").len(), 1);
    drop(sm);

    // Restarted: leftovers of a crashed build or receive and an image without metadata are
    // removed; the complete snapshot is the current one again.
    for leftover in [
        "build-7.tmp",
        "recv-8.tmp",
        "meta-9.tmp",
        "00000000000000000099-x.snap",
    ] {
        std::fs::write(dir.join(leftover), b"partial").unwrap();
    }
    let mut sm = open(backend.clone(), &dir);
    let names = files(&dir);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        with_ext(&names, ".snap")[0].ends_with("-1-1-3.snap"),
        "{names:?}"
    );
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, second.meta);
    assert_eq!(
        read_all(current.snapshot).await,
        backend.snapshot().unwrap()
    );
    // The next build gets a fresh name and still leaves one snapshot.
    sm.apply(vec![entry(4, "d", "4")]).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let names = files(&dir);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        with_ext(&names, ".snap")[0].ends_with("-1-1-4.snap"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_received_snapshot_is_refused_and_the_backend_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    // The sender: three keys, snapshotted.
    let mut leader = open(MemoryBackend::volatile(), &tmp.path().join("leader"));
    leader
        .apply(vec![
            entry(1, "a", "1"),
            entry(2, "b", "2"),
            entry(3, "c", "3"),
        ])
        .await
        .unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let meta = snap.meta.clone();
    let image = read_all(snap.snapshot).await;

    // The receiver holds other data.
    let dir = tmp.path().join("follower");
    let backend = MemoryBackend::volatile();
    let mut follower = open(backend.clone(), &dir);
    follower.apply(vec![entry(1, "z", "9")]).await.unwrap();
    let before = backend.snapshot().unwrap();

    // One flipped byte in the middle of the received file (a value byte).
    let mut corrupt = image.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0x40;
    let mut file = follower.begin_receiving_snapshot().await.unwrap();
    assert_eq!(files(&dir).len(), 1, "the receive file exists");
    file.write_all(&corrupt).await.unwrap();
    file.shutdown().await.unwrap();
    let err = follower.install_snapshot(&meta, file).await.unwrap_err();
    let text = format!("{err}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert_eq!(
        backend.snapshot().unwrap(),
        before,
        "the backend is unchanged"
    );
    assert_eq!(
        files(&dir),
        Vec::<String>::new(),
        "the corrupt file is deleted"
    );
    assert!(follower.get_current_snapshot().await.unwrap().is_none());
    let (applied, _) = follower.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(1));

    // The intact snapshot, received in two chunks written at their offsets, installs.
    let mut file = follower.begin_receiving_snapshot().await.unwrap();
    let half = image.len() / 2;
    use tokio::io::AsyncSeekExt;
    file.seek(std::io::SeekFrom::Start(half as u64))
        .await
        .unwrap();
    file.write_all(&image[half..]).await.unwrap();
    file.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    file.write_all(&image[..half]).await.unwrap();
    file.shutdown().await.unwrap();
    follower.install_snapshot(&meta, file).await.unwrap();
    assert_eq!(backend.snapshot().unwrap(), image);
    let (applied, _) = follower.applied_state().await.unwrap();
    assert_eq!(applied, meta.last_log_id);
    assert_eq!(follower.store().current_revision(), 4);
    let names = files(&dir);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        with_ext(&names, ".snap")[0].ends_with("-1-1-3.snap"),
        "{names:?}"
    );
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    assert_eq!(read_all(current.snapshot).await, image);
}
