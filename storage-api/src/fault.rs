//! [`FaultyBackend`]: a [`Backend`] decorator that makes chosen calls fail, for testing
//! that the layers above (MVCC store, server) never expose a half-applied operation.
//!
//! A [`FaultPlan`] arms one or more faults; each fault names an operation class
//! ([`FaultOp`]), which call of that class fails (the n-th from now, counting from 1), and
//! how ([`FaultKind`]):
//! * [`FaultKind::Before`]: the call returns an error and has no effect;
//! * [`FaultKind::After`]: the call takes effect, then returns an error (a lost
//!   acknowledgement, e.g. an fsync error after the write reached the engine);
//! * [`FaultKind::Short`]: a short write or read of a snapshot stream: `snapshot_to` writes
//!   only the first `n` bytes and then fails (a disk filling up mid-backup), `restore_from`
//!   reads only the first `n` bytes of its input (a cut-off upload). On other operations it
//!   behaves as `Before` (engine batches are atomic by contract, so they are never torn).
//!
//! ```
//! use storage_api::{Backend, MemoryBackend, Tree};
//! use storage_api::fault::{FaultyBackend, FaultKind, FaultOp};
//!
//! let db = FaultyBackend::wrap(MemoryBackend::volatile());
//! db.plan().fail_nth(FaultOp::Write, 2, FaultKind::Before);
//! db.put(Tree::Kv, b"a", b"1").unwrap();
//! assert!(db.put(Tree::Kv, b"b", b"2").is_err());
//! assert_eq!(db.get(Tree::Kv, b"b").unwrap(), None);
//! db.put(Tree::Kv, b"b", b"2").unwrap();
//! ```

use std::io::{Read, Write};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::backend::{Backend, KvPair};
use crate::batch::WriteBatch;
use crate::config::{BackendConfig, BackendKind};
use crate::error::{StorageError, StorageResult};
use crate::snapshot::ValidatedSnapshot;
use crate::tree::Tree;

/// Operation classes a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// `put`, `delete`, `batch_put`, `batch_delete`, `write`.
    Write,
    /// `get`, `get_many`, `scan`, `scan_prefix`.
    Read,
    /// `flush`.
    Flush,
    /// `snapshot_to` / `snapshot`.
    Snapshot,
    /// `restore_validated` (after validation of the input).
    Restore,
    /// `compact` and `defragment`.
    Maintenance,
}

/// How an armed fault fails its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Fail without effect.
    Before,
    /// Apply, then report failure.
    After,
    /// Transfer only this many bytes of a snapshot stream (see the [module docs](self)).
    Short(u64),
}

#[derive(Debug, Clone)]
struct Armed {
    op: FaultOp,
    remaining: u64,
    kind: FaultKind,
}

/// The faults armed on a [`FaultyBackend`]; shared, so tests can arm faults at any time.
#[derive(Debug, Default)]
pub struct FaultPlan {
    armed: Mutex<Vec<Armed>>,
    injected: Mutex<u64>,
    holds: Mutex<Vec<(FaultOp, u64, Hold)>>,
}

#[derive(Debug, Default)]
struct HoldState {
    reached: bool,
    released: bool,
}

/// A call held by [`FaultPlan::hold_nth`]: it blocks, before doing anything, until
/// [`release`](Hold::release). Clones share the same hold.
#[derive(Debug, Clone, Default)]
pub struct Hold {
    inner: Arc<(Mutex<HoldState>, Condvar)>,
}

impl Hold {
    /// Waits until the held call has arrived (and is blocked).
    pub fn wait_reached(&self) {
        let (state, cv) = &*self.inner;
        let mut s = state.lock();
        while !s.reached {
            cv.wait(&mut s);
        }
    }

    /// True once the held call has arrived.
    pub fn reached(&self) -> bool {
        self.inner.0.lock().reached
    }

    /// Lets the held call (and any later arrival at this hold) proceed.
    pub fn release(&self) {
        let (state, cv) = &*self.inner;
        state.lock().released = true;
        cv.notify_all();
    }

    fn block(&self) {
        let (state, cv) = &*self.inner;
        let mut s = state.lock();
        s.reached = true;
        cv.notify_all();
        while !s.released {
            cv.wait(&mut s);
        }
    }
}

impl FaultPlan {
    /// Arms a fault: the `n`-th call (from now, 1-based) of class `op` fails as `kind`.
    /// `n == 0` is treated as 1.
    pub fn fail_nth(&self, op: FaultOp, n: u64, kind: FaultKind) -> &Self {
        self.armed.lock().push(Armed {
            op,
            remaining: n.max(1),
            kind,
        });
        self
    }

    /// Holds the `n`-th call (from now, 1-based; `0` is treated as 1) of class `op` before it
    /// runs, until the returned [`Hold`] is released. Armed faults still apply once it runs.
    pub fn hold_nth(&self, op: FaultOp, n: u64) -> Hold {
        let hold = Hold::default();
        self.holds.lock().push((op, n.max(1), hold.clone()));
        hold
    }

    /// Disarms every fault that has not fired yet (holds stay armed; release them).
    pub fn clear(&self) {
        self.armed.lock().clear();
    }

    /// Counts one call of `op` against the holds; blocks if one fires.
    fn hold_point(&self, op: FaultOp) {
        let fired = {
            let mut holds = self.holds.lock();
            let mut fired = None;
            holds.retain_mut(|(o, remaining, hold)| {
                if *o != op {
                    return true;
                }
                *remaining -= 1;
                if *remaining == 0 && fired.is_none() {
                    fired = Some(hold.clone());
                    false
                } else {
                    *remaining > 0
                }
            });
            fired
        };
        if let Some(hold) = fired {
            hold.block();
        }
    }

    /// Number of faults that have fired.
    pub fn injected(&self) -> u64 {
        *self.injected.lock()
    }

    /// Number of faults armed and not yet fired.
    pub fn pending(&self) -> usize {
        self.armed.lock().len()
    }

    /// Counts one call of `op`; returns the kind of fault to inject, if one fires.
    fn tick(&self, op: FaultOp) -> Option<FaultKind> {
        let mut armed = self.armed.lock();
        let mut fired = None;
        armed.retain_mut(|a| {
            if a.op != op {
                return true;
            }
            a.remaining -= 1;
            if a.remaining == 0 && fired.is_none() {
                fired = Some(a.kind);
                false
            } else {
                a.remaining > 0
            }
        });
        if fired.is_some() {
            *self.injected.lock() += 1;
        }
        fired
    }
}

/// The error every injected fault returns.
pub fn injected_error(op: FaultOp) -> StorageError {
    StorageError::io(
        format!("injected fault in {op:?}"),
        std::io::Error::other("injected fault"),
    )
}

/// A backend that forwards every call to `B` except the ones its [`FaultPlan`] fails.
#[derive(Debug)]
pub struct FaultyBackend<B: Backend> {
    inner: Arc<B>,
    plan: FaultPlan,
}

impl<B: Backend> FaultyBackend<B> {
    /// Wraps an open backend with an empty plan.
    pub fn wrap(inner: Arc<B>) -> Arc<Self> {
        Arc::new(FaultyBackend {
            inner,
            plan: FaultPlan::default(),
        })
    }

    /// The fault plan.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }

    fn run<T>(&self, op: FaultOp, f: impl FnOnce() -> StorageResult<T>) -> StorageResult<T> {
        self.plan.hold_point(op);
        Self::apply(self.plan.tick(op), op, f)
    }

    fn apply<T>(
        fault: Option<FaultKind>,
        op: FaultOp,
        f: impl FnOnce() -> StorageResult<T>,
    ) -> StorageResult<T> {
        match fault {
            None => f(),
            Some(FaultKind::Before | FaultKind::Short(_)) => Err(injected_error(op)),
            Some(FaultKind::After) => {
                f()?;
                Err(injected_error(op))
            }
        }
    }
}

impl<B: Backend> Backend for FaultyBackend<B> {
    const KIND: BackendKind = B::KIND;

    fn new(config: BackendConfig) -> StorageResult<Arc<Self>> {
        Ok(Self::wrap(B::new(config)?))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.run(FaultOp::Write, || self.inner.put(tree, key, value))
    }

    fn get(&self, tree: Tree, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.run(FaultOp::Read, || self.inner.get(tree, key))
    }

    fn get_many(&self, tree: Tree, keys: &[&[u8]]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        self.run(FaultOp::Read, || self.inner.get_many(tree, keys))
    }

    fn delete(&self, tree: Tree, key: &[u8]) -> StorageResult<()> {
        self.run(FaultOp::Write, || self.inner.delete(tree, key))
    }

    fn batch_put(&self, tree: Tree, pairs: &[KvPair]) -> StorageResult<()> {
        self.run(FaultOp::Write, || self.inner.batch_put(tree, pairs))
    }

    fn batch_delete(&self, tree: Tree, keys: &[Vec<u8>]) -> StorageResult<()> {
        self.run(FaultOp::Write, || self.inner.batch_delete(tree, keys))
    }

    fn write(&self, batch: &WriteBatch) -> StorageResult<()> {
        self.run(FaultOp::Write, || self.inner.write(batch))
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> StorageResult<Vec<KvPair>> {
        self.run(FaultOp::Read, || self.inner.scan(tree, start, end, limit))
    }

    fn scan_prefix(&self, tree: Tree, prefix: &[u8], limit: usize) -> StorageResult<Vec<KvPair>> {
        self.run(FaultOp::Read, || {
            self.inner.scan_prefix(tree, prefix, limit)
        })
    }

    fn snapshot_to(&self, writer: &mut dyn Write) -> StorageResult<u64> {
        match self.plan.tick(FaultOp::Snapshot) {
            Some(FaultKind::Short(limit)) => {
                let mut short = ShortWriter {
                    inner: writer,
                    left: limit,
                };
                self.inner.snapshot_to(&mut short)
            }
            fault => Self::apply(fault, FaultOp::Snapshot, || self.inner.snapshot_to(writer)),
        }
    }

    fn restore_from(&self, reader: &mut dyn Read) -> StorageResult<()> {
        match self.plan.tick(FaultOp::Restore) {
            Some(FaultKind::Short(limit)) => {
                let mut short = reader.take(limit);
                let snapshot = ValidatedSnapshot::read_from(&mut short)?;
                self.inner.restore_validated(snapshot)
            }
            fault => {
                let snapshot = ValidatedSnapshot::read_from(reader)?;
                Self::apply(fault, FaultOp::Restore, || {
                    self.inner.restore_validated(snapshot)
                })
            }
        }
    }

    fn restore_validated(&self, snapshot: ValidatedSnapshot) -> StorageResult<()> {
        self.run(FaultOp::Restore, || self.inner.restore_validated(snapshot))
    }

    fn compact(&self, revision: i64) -> StorageResult<()> {
        self.run(FaultOp::Maintenance, || self.inner.compact(revision))
    }

    fn size(&self) -> StorageResult<u64> {
        self.inner.size()
    }

    fn defragment(&self) -> StorageResult<()> {
        self.run(FaultOp::Maintenance, || self.inner.defragment())
    }

    fn flush(&self) -> StorageResult<()> {
        self.run(FaultOp::Flush, || self.inner.flush())
    }

    fn close(&self) -> StorageResult<()> {
        self.inner.close()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn durability(&self) -> crate::config::Durability {
        self.inner.durability()
    }
}

/// Passes through the first `left` bytes, then fails every write (a full disk).
struct ShortWriter<'a> {
    inner: &'a mut dyn Write,
    left: u64,
}

impl Write for ShortWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected short write",
            ));
        }
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let written = self.inner.write(&buf[..n])?;
        self.left -= written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn before_fails_without_effect_and_after_applies() {
        let db = FaultyBackend::wrap(MemoryBackend::volatile());
        db.plan()
            .fail_nth(FaultOp::Write, 1, FaultKind::Before)
            .fail_nth(FaultOp::Write, 2, FaultKind::After);
        assert!(db.put(Tree::Kv, b"a", b"1").is_err());
        assert_eq!(db.get(Tree::Kv, b"a").unwrap(), None);
        assert!(db.put(Tree::Kv, b"b", b"2").is_err());
        assert_eq!(db.get(Tree::Kv, b"b").unwrap(), Some(b"2".to_vec()));
        db.put(Tree::Kv, b"c", b"3").unwrap();
        assert_eq!(db.plan().injected(), 2);
        assert_eq!(db.plan().pending(), 0);
    }

    #[test]
    fn short_snapshot_writes_a_prefix_and_fails() {
        let db = FaultyBackend::wrap(MemoryBackend::volatile());
        db.put(Tree::Kv, b"k", &[7u8; 100]).unwrap();
        let full = db.snapshot().unwrap();
        db.plan()
            .fail_nth(FaultOp::Snapshot, 1, FaultKind::Short(40));
        let mut out = Vec::new();
        assert!(matches!(
            db.snapshot_to(&mut out),
            Err(StorageError::Io { .. })
        ));
        assert_eq!(out, full[..40].to_vec());
        // The prefix is rejected as truncated by any restore, leaving data as it was.
        let other = MemoryBackend::volatile();
        other.put(Tree::Meta, b"keep", b"1").unwrap();
        assert!(matches!(
            other.restore(&out),
            Err(StorageError::Snapshot(crate::SnapshotError::Truncated))
        ));
        assert_eq!(other.get(Tree::Meta, b"keep").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn short_restore_input_is_rejected_without_effect() {
        let src = MemoryBackend::volatile();
        src.put(Tree::Kv, b"new", b"v").unwrap();
        let image = src.snapshot().unwrap();
        let db = FaultyBackend::wrap(MemoryBackend::volatile());
        db.put(Tree::Kv, b"old", b"v").unwrap();
        db.plan().fail_nth(
            FaultOp::Restore,
            1,
            FaultKind::Short(image.len() as u64 - 1),
        );
        assert!(matches!(
            db.restore(&image),
            Err(StorageError::Snapshot(crate::SnapshotError::Truncated))
        ));
        assert_eq!(db.get(Tree::Kv, b"old").unwrap(), Some(b"v".to_vec()));
        assert_eq!(db.get(Tree::Kv, b"new").unwrap(), None);
        // Disarmed: the same input now restores.
        db.restore(&image).unwrap();
        assert_eq!(db.get(Tree::Kv, b"new").unwrap(), Some(b"v".to_vec()));
        assert_eq!(db.plan().injected(), 1);
    }

    #[test]
    fn counts_only_the_targeted_class() {
        let db = FaultyBackend::wrap(MemoryBackend::volatile());
        db.plan().fail_nth(FaultOp::Flush, 2, FaultKind::Before);
        db.put(Tree::Kv, b"a", b"1").unwrap();
        db.flush().unwrap();
        db.get(Tree::Kv, b"a").unwrap();
        assert!(db.flush().is_err());
        db.flush().unwrap();
    }
}
