//! Group commit: making acknowledged writes durable with shared backend flushes.
//!
//! With [`CommitMode::GroupSync`] every mutating call returns only after a
//! [`Backend::flush`] that started after its write completed. Concurrent writers share
//! flushes: while one flush runs, the writes that complete meanwhile wait for the next one, and
//! that single next flush covers all of them.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};
use storage_api::Backend;

use crate::error::MvccResult;

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
    /// group of concurrent writes.
    GroupSync,
}

#[derive(Debug, Default)]
struct State {
    /// Every write with a ticket `<= durable` is durable.
    durable: u64,
    flushing: bool,
    flushes: u64,
}

/// Coordinates shared flushes. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// Number of backend writes issued (a write's ticket is the value after its increment).
    written: AtomicU64,
    state: Mutex<State>,
    cv: Condvar,
}

impl GroupCommit {
    /// Records a completed backend write; returns its ticket. Called under the write lock.
    pub(crate) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The ticket of the last completed write.
    pub(crate) fn last_ticket(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until the write with `ticket` is durable, flushing if no flush covering it runs.
    pub(crate) fn wait_durable<B: Backend>(&self, backend: &B, ticket: u64) -> MvccResult<()> {
        let mut s = self.state.lock();
        loop {
            if s.durable >= ticket {
                return Ok(());
            }
            if s.flushing {
                self.cv.wait(&mut s);
                continue;
            }
            s.flushing = true;
            let target = self.written.load(Ordering::SeqCst);
            drop(s);
            let result = backend.flush();
            s = self.state.lock();
            s.flushing = false;
            if result.is_ok() {
                s.durable = s.durable.max(target);
                s.flushes += 1;
            }
            self.cv.notify_all();
            result?;
        }
    }

    /// `(writes, flushes)` issued so far.
    pub(crate) fn stats(&self) -> (u64, u64) {
        let flushes = self.state.lock().flushes;
        (self.written.load(Ordering::SeqCst), flushes)
    }
}
