//! Snapshot memory is bounded by buffers, not by the store size: building a snapshot of a
//! 24 MiB store, sending it and validating a received one allocate a few MiB at most;
//! installing it allocates what the engine itself keeps (the in-memory engine: the data)
//! plus a few MiB. Measured with a counting global allocator (every thread's allocations).
//!
//! One test in this binary, so nothing else allocates meanwhile.

use std::sync::atomic::Ordering;

use mvcc_core::{Put, StoreConfig};
use rusd_raft::openraft::storage::RaftStateMachine;
use rusd_raft::openraft::{Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use rusd_raft::state_machine::StateMachine;
use rusd_raft::{Command, TypeConfig};
use storage_api::MemoryBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod counting;
use counting::{LIVE, PEAK};

const MIB: usize = 1024 * 1024;
/// Store size.
const VALUES: usize = 384;
const VALUE_LEN: usize = 64 * 1024;
/// What building, sending or validating may allocate beyond what was live before.
const BUFFER_BUDGET: usize = 8 * MIB;

/// Runs `f` and returns its result and the peak heap growth above the bytes live before.
async fn peak_growth<T>(f: impl std::future::Future<Output = T>) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f.await;
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_memory_is_a_few_buffers_whatever_the_store_size() {
    let tmp = tempfile::tempdir().unwrap();
    let mut leader = StateMachine::open_with_snapshot_dir(
        MemoryBackend::volatile(),
        StoreConfig::default(),
        None,
        tmp.path().join("leader"),
    )
    .unwrap();
    let entries: Vec<Entry<TypeConfig>> = (0..VALUES)
        .map(|i| {
            let mut value = vec![b'a' + (i % 26) as u8; VALUE_LEN];
            value[0] = (i % 251) as u8;
            Entry {
                log_id: LogId::new(
                    rusd_raft::openraft::CommittedLeaderId::new(1, 1),
                    i as u64 + 1,
                ),
                payload: EntryPayload::Normal(Command::Put(Put::new(
                    format!("k/{i:04}"),
                    value,
                    0,
                ))),
            }
        })
        .collect();
    leader.apply(entries).await.unwrap();
    let data = VALUES * VALUE_LEN;

    // Build: streamed to a file.
    let mut builder = leader.get_snapshot_builder().await;
    let (snap, build) = peak_growth(builder.build_snapshot()).await;
    let snap = snap.unwrap();
    let meta = snap.meta.clone();
    drop(snap);

    // Send: the leader's file read in chunks into the follower's receive file.
    let tmp_follower = tmp.path().join("follower");
    let follower_backend = MemoryBackend::volatile();
    let mut follower = StateMachine::open_with_snapshot_dir(
        follower_backend.clone(),
        StoreConfig::default(),
        None,
        &tmp_follower,
    )
    .unwrap();
    let mut chunk = vec![0u8; 3 * MIB];
    let ((received, sent), send) = peak_growth(async {
        let mut src = leader
            .get_current_snapshot()
            .await
            .unwrap()
            .unwrap()
            .snapshot;
        let mut dst = follower.begin_receiving_snapshot().await.unwrap();
        let mut sent = 0usize;
        loop {
            let n = src.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            dst.write_all(&chunk[..n]).await.unwrap();
            sent += n;
        }
        dst.shutdown().await.unwrap();
        (dst, sent)
    })
    .await;
    assert!(sent > data, "the image ({sent} bytes) holds the data");

    // The first pass of an install alone: validating the received file.
    let leader_file = tmp.path().join("leader");
    let snap_path = std::fs::read_dir(&leader_file)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "snap"))
        .unwrap();
    let (validated, validate) = peak_growth(async {
        storage_api::snapshot::ValidatedSnapshot::from_file(
            std::fs::File::open(&snap_path).unwrap(),
        )
    })
    .await;
    // One row per revision, and the meta tree's four (apply record and store bookkeeping).
    assert_eq!(validated.unwrap().entry_count() as usize, VALUES + 4);

    // Install: validated in a first pass, restored in a second.
    let (installed, install) = peak_growth(follower.install_snapshot(&meta, received)).await;
    installed.unwrap();
    assert_eq!(follower.store().current_revision(), VALUES as i64 + 1);
    assert_eq!(
        storage_api::Backend::snapshot(follower_backend.as_ref())
            .unwrap()
            .len(),
        sent
    );

    eprintln!(
        "store {} MiB, image {sent} bytes: build +{build}, send +{send}, validate +{validate}, \
         install +{install} bytes",
        data / MIB
    );
    assert!(build < BUFFER_BUDGET, "build allocated {build} bytes");
    assert!(send < BUFFER_BUDGET, "send allocated {send} bytes");
    assert!(
        validate < BUFFER_BUDGET,
        "validation allocated {validate} bytes"
    );
    // Beyond the snapshot's buffers, an install holds what the in-memory engine keeps (the
    // data) and, while the store reloads, one chunk of mvcc-core's recovery scan (about
    // 8 MiB of rows; it was 10,000 rows, here the whole data once more).
    assert!(
        install < sent + BUFFER_BUDGET + 8 * MIB,
        "install allocated {install} bytes for a {sent}-byte image"
    );
}
