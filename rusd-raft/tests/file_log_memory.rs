//! The raft log file's memory is bounded by its entry cache and its index, not by the bytes of
//! the log (issue #10): 4,000 entries of 16 KiB (62.5 MiB) appended through openraft's
//! storage API leave at most the cache budget, 32 bytes per entry (the 12-byte index entry and
//! the deque's spare capacity) and 1 MiB live on the heap. The same appends with an unbounded
//! cache (every entry in memory: what the log was before) pass that bound several times over,
//! so the measure sees the difference. Measured with a counting global allocator (every
//! thread's allocations); one test in this binary, so nothing else allocates meanwhile.

use std::sync::atomic::Ordering;

use mvcc_core::Put;
use rusd_raft::file_log::{FileLog, FileLogOptions, DEFAULT_CACHE_BYTES};
use rusd_raft::openraft::storage::RaftLogStorageExt;
use rusd_raft::openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
use rusd_raft::{Command, TypeConfig};

mod counting;
use counting::{LIVE, PEAK};

const N: u64 = 4000;
const SIZE: usize = 16 * 1024;
const BATCH: u64 = 50;

fn entry(index: u64) -> Entry<TypeConfig> {
    let value: Vec<u8> = (0..SIZE).map(|i| (i as u64 ^ index) as u8).collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put(Put::new(format!("k{index}"), value, 0))),
    }
}

/// Appends the entries to a fresh log with `cache_bytes`; returns the heap growth with the
/// log open afterwards and the peak growth during the appends.
async fn grown(cache_bytes: usize) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = FileLog::open_with(
        dir.path(),
        FileLogOptions {
            sync: true,
            cache_bytes,
        },
    )
    .unwrap();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    for first in (1..=N).step_by(BATCH as usize) {
        let entries: Vec<_> = (first..first + BATCH).map(entry).collect();
        log.blocking_append(entries).await.unwrap();
    }
    let grown = LIVE.load(Ordering::Relaxed).saturating_sub(base);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    // The newest entry (cached) and the oldest (read from the file) read back exactly.
    assert_eq!(
        log.try_get_log_entries(N..=N).await.unwrap(),
        vec![entry(N)]
    );
    assert_eq!(log.try_get_log_entries(1..2).await.unwrap(), vec![entry(1)]);
    drop(log);
    (grown, peak)
}

#[tokio::test(flavor = "current_thread")]
async fn memory_stays_bounded_by_the_cache_and_the_index() {
    let bound = DEFAULT_CACHE_BYTES + 32 * N as usize + (1 << 20);
    // What one append holds while it runs: the entries and their encoded records.
    let batch = 2 * BATCH as usize * (SIZE + 256);
    let (bounded, peak) = grown(DEFAULT_CACHE_BYTES).await;
    eprintln!("default cache: grew {bounded} bytes, peak {peak}, bound {bound}");
    assert!(bounded <= bound, "grew {bounded} bytes, bound {bound}");
    assert!(
        peak <= bound + batch,
        "peak {peak} bytes, bound {}",
        bound + batch
    );
    let (unbounded, _) = grown(usize::MAX).await;
    eprintln!("unbounded cache: grew {unbounded} bytes");
    assert!(
        unbounded > 4 * bound,
        "all in memory grew {unbounded} bytes, bound {bound}"
    );
}
