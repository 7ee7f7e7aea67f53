//! [`Compactor`]: etcd's automatic compaction as a tokio background task.
//!
//! * [`CompactionMode::Periodic`]`(period)`: keep the revisions of the last `period`. Every
//!   `period / 10` (at most 6 minutes) the compactor samples the current revision; it compacts
//!   to the newest sample taken at least `period` ago (etcd `periodic.go`).
//! * [`CompactionMode::Revision`]`(n)`: keep the last `n` revisions. Every check interval
//!   (default 5 minutes, etcd `revision.go`) it compacts to `current - n` when that moved.
//!
//! Compactions run on tokio's blocking pool; progress is logged with `tracing`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use storage_api::{Backend, StorageError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::compaction::CompactionStats;
use crate::error::{MvccError, MvccResult};
use crate::store::MvccStore;

/// etcd's check interval of the revision compactor.
pub const DEFAULT_REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// What the compactor retains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionMode {
    /// Keep the revisions written during the last period.
    Periodic(Duration),
    /// Keep the last `n` revisions.
    Revision(i64),
}

/// Automatic compaction of one store. See the [module docs](self).
#[derive(Debug)]
pub struct Compactor<B: Backend> {
    store: Arc<MvccStore<B>>,
    mode: CompactionMode,
    check_interval: Duration,
    stop_tx: watch::Sender<bool>,
}

impl<B: Backend> Compactor<B> {
    /// A compactor for `store` in `mode` (not running until [`run`](Self::run)).
    pub fn new(store: Arc<MvccStore<B>>, mode: CompactionMode) -> Self {
        let check_interval = match mode {
            CompactionMode::Periodic(period) => {
                (period.min(Duration::from_secs(3600)) / 10).max(Duration::from_millis(1))
            }
            CompactionMode::Revision(_) => DEFAULT_REVISION_CHECK_INTERVAL,
        };
        let (stop_tx, _) = watch::channel(false);
        Compactor {
            store,
            mode,
            check_interval,
            stop_tx,
        }
    }

    /// Overrides how often the compactor checks (at least 1 ms).
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The mode.
    pub fn mode(&self) -> CompactionMode {
        self.mode
    }

    /// The check interval.
    pub fn check_interval(&self) -> Duration {
        self.check_interval
    }

    /// Compacts the store at `revision` now (on the blocking pool).
    pub async fn compact_to(&self, revision: i64) -> MvccResult<CompactionStats> {
        compact_blocking(self.store.clone(), revision).await
    }

    /// Starts the background task on the current tokio runtime; it runs until
    /// [`stop`](Self::stop) or until the compactor is dropped.
    pub fn run(&self) -> JoinHandle<()> {
        let store = self.store.clone();
        let mode = self.mode;
        let interval = self.check_interval;
        let mut stop = self.stop_tx.subscribe();
        tokio::spawn(async move {
            let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
            let mut last_target = 0i64;
            tracing::info!(?mode, ?interval, "compactor started");
            loop {
                if *stop.borrow() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            break;
                        }
                    }
                }
                let target = match mode {
                    CompactionMode::Revision(n) => store.current_revision() - n,
                    CompactionMode::Periodic(period) => {
                        let now = Instant::now();
                        samples.push_back((now, store.current_revision()));
                        let mut target = 0;
                        while let Some(&(t, rev)) = samples.front() {
                            if now.duration_since(t) >= period {
                                target = rev;
                                samples.pop_front();
                            } else {
                                break;
                            }
                        }
                        if target > 0 {
                            // Keep the chosen sample as the oldest reference point.
                            samples.push_front((now - period, target));
                        }
                        target
                    }
                };
                if target <= 0 || target <= last_target || target <= store.compact_revision() {
                    continue;
                }
                last_target = target;
                match compact_blocking(store.clone(), target).await {
                    Ok(stats) => tracing::info!(
                        revision = target,
                        deleted = stats.rows_deleted,
                        "compactor: compacted"
                    ),
                    Err(MvccError::Compacted) => {
                        tracing::debug!(revision = target, "compactor: already compacted")
                    }
                    Err(MvccError::Storage(StorageError::Closed)) => {
                        tracing::info!("compactor: the store is closed");
                        break;
                    }
                    Err(e) => tracing::warn!(revision = target, error = %e, "compactor: failed"),
                }
            }
            tracing::info!("compactor stopped");
        })
    }

    /// Asks the background task to stop (it finishes a running compaction first).
    pub fn stop(&self) {
        let _ = self.stop_tx.send(true);
    }
}

impl<B: Backend> Drop for Compactor<B> {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn compact_blocking<B: Backend>(
    store: Arc<MvccStore<B>>,
    revision: i64,
) -> MvccResult<CompactionStats> {
    tokio::task::spawn_blocking(move || store.compact(revision))
        .await
        .map_err(|e| MvccError::Background(e.to_string()))?
}
