//! Group commit: making acknowledged writes durable with shared backend flushes.
//!
//! With [`CommitMode::GroupSync`] every mutating call returns only after a
//! [`Backend::flush`] that started after its write completed. Concurrent writers share
//! flushes: while one flush runs, the writes that complete meanwhile wait for the next one, and
//! that single next flush covers all of them.
//!
//! The flusher *publishes* what a flush made durable (the store's visible revision and the watch
//! events, see [`MvccStore`](crate::MvccStore)) before it releases the waiters, so a write is
//! visible exactly when it is acknowledged, never before it is durable. A failed flush is
//! sticky: the group stops flushing and every writer still waiting, and every later one, fails
//! with [`MvccError::Failed`] (the store marks itself failed); nothing the failed flush covered
//! is ever published.
//!
//! Writers announce themselves (`GroupCommit::enter`) before they queue for the store's write
//! lock; a flush waits until those in-flight writes have committed (at most
//! [`MAX_GATHER`]), so one flush covers every writer that was already on its way. This matters
//! most for engines whose flush blocks writers (redb's durable commit holds its only write
//! transaction): without it, each flush would cover one or two writes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use storage_api::Backend;

use crate::error::{MvccError, MvccResult};

/// The longest a flush waits for in-flight writes to commit before it starts anyway.
pub const MAX_GATHER: Duration = Duration::from_millis(2);

/// When a mutation is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CommitMode {
    /// Acknowledge as soon as the backend accepted the write. Durability is the backend's own
    /// ([`storage_api::Durability`]): with `Sync` every write is durable when acknowledged, with
    /// `Buffered` it becomes durable within the interval ("durable within an interval").
    #[default]
    Backend,
    /// Acknowledge only once durable ("ack = durable"), using shared flushes (group commit).
    /// Meant for a `Buffered` backend, where it replaces one sync per write by one flush per
    /// group of concurrent writes. A write becomes visible (reads, txn compares, watch events,
    /// the current revision) only after the flush that made it durable.
    GroupSync,
}

#[derive(Debug, Default)]
struct State {
    /// Every write with a ticket `<= durable` is durable.
    durable: u64,
    flushing: bool,
    flushes: u64,
    /// Set by the first failed flush; no flush runs afterwards.
    failed: Option<String>,
}

/// Coordinates shared flushes. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// Number of backend writes issued (a write's ticket is the value after its increment).
    written: AtomicU64,
    /// Writers between [`enter`](Self::enter) and the end of their commit.
    inflight: AtomicUsize,
    state: Mutex<State>,
    cv: Condvar,
}

impl GroupCommit {
    /// Announces a writer about to queue for the write lock; the returned guard is dropped once
    /// its commit is done (before it waits for durability).
    pub(crate) fn enter(&self) -> Inflight<'_> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        Inflight(self)
    }

    /// Records a completed backend write; returns its ticket. Called under the write lock.
    pub(crate) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The ticket of the last completed write.
    pub(crate) fn last_ticket(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until the write with `ticket` is durable, flushing if no flush covering it runs.
    ///
    /// The caller that runs a flush calls `publish(target)` after it succeeded and before any
    /// waiter is released, with the highest ticket the flush covers; `publish` calls arrive one
    /// at a time, in increasing order. A flush error is returned to the flusher and makes the
    /// group failed: waiters not covered by an earlier flush get [`MvccError::Failed`].
    pub(crate) fn wait_durable<B: Backend>(
        &self,
        backend: &B,
        ticket: u64,
        publish: impl Fn(u64),
    ) -> MvccResult<()> {
        let gather_until = Instant::now() + MAX_GATHER;
        let mut s = self.state.lock();
        loop {
            if s.durable >= ticket {
                return Ok(());
            }
            if let Some(reason) = &s.failed {
                return Err(MvccError::Failed(reason.clone()));
            }
            if s.flushing {
                self.cv.wait(&mut s);
                continue;
            }
            if self.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < gather_until {
                // Let the writers already on their way commit first: one flush for all.
                let _ = self.cv.wait_until(&mut s, gather_until);
                continue;
            }
            s.flushing = true;
            let target = self.written.load(Ordering::SeqCst);
            drop(s);
            let result = backend.flush();
            if result.is_ok() {
                publish(target);
            }
            s = self.state.lock();
            s.flushing = false;
            match &result {
                Ok(()) => {
                    s.durable = s.durable.max(target);
                    s.flushes += 1;
                }
                Err(e) => {
                    s.failed = Some(format!("flush failed: {}", crate::store::error_line(e)));
                }
            }
            self.cv.notify_all();
            result?;
        }
    }

    /// The failure reason once a flush failed.
    pub(crate) fn failure(&self) -> Option<String> {
        self.state.lock().failed.clone()
    }

    /// `(writes, flushes)` issued so far.
    pub(crate) fn stats(&self) -> (u64, u64) {
        let flushes = self.state.lock().flushes;
        (self.written.load(Ordering::SeqCst), flushes)
    }
}

/// A writer in flight (see [`GroupCommit::enter`]); dropping it ends the announcement.
#[derive(Debug)]
pub(crate) struct Inflight<'a>(&'a GroupCommit);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The last in-flight writer is done: a gathering flusher may start now.
            let _s = self.0.state.lock();
            self.0.cv.notify_all();
        }
    }
}
