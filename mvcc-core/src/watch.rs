//! Watch: change events, history replay and live subscriptions.
//!
//! [`MvccStore::watch`] subscribes to a key or range from a start revision. The subscriber
//! first receives the stored history (every event with `mod_revision >= start`), then live
//! events, each exactly once and in revision order, one [`WatchResponse`] per revision. When the
//! start revision is already compacted, the only response has `canceled = true` and
//! `compact_revision` = the compaction revision (etcd `TestWatchCompacted`).
//!
//! Registration never holds the write lock while replaying: live events that arrive during the
//! replay are buffered and delivered after it, skipping those the replay already covered.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};
use parking_lot::Mutex;
use storage_api::{Backend, Tree};

use crate::error::{MvccError, MvccResult};
use crate::kv::KeyValue;
use crate::revision::Revision;
use crate::store::{Change, MvccStore};
use crate::tree_index::KeyRange;

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A put.
    Put,
    /// A deletion.
    Delete,
}

/// One change of one key. A PUT carries the full new key-value; a DELETE carries only the key
/// and `mod_revision` = the deletion revision (other fields zero).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value after the change.
    pub kv: KeyValue,
}

impl Event {
    pub(crate) fn from_change(c: Change) -> Event {
        Event {
            kind: if c.tombstone {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            kv: c.kv,
        }
    }

    /// The event of one `kv` row and its revision.
    pub(crate) fn from_row(key: &[u8], value: &[u8]) -> MvccResult<(Revision, Event)> {
        let (rev, tombstone) = Revision::from_key(key)?;
        let kv = KeyValue::decode(value)?;
        let event = if tombstone {
            Event {
                kind: EventKind::Delete,
                kv: KeyValue::tombstone(kv.key, rev.main),
            }
        } else {
            Event {
                kind: EventKind::Put,
                kv,
            }
        };
        Ok((rev, event))
    }
}

/// One message to a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResponse {
    /// The watcher's id.
    pub watch_id: i64,
    /// The revision of the events (or the compaction revision of a cancellation).
    pub revision: i64,
    /// The events of one revision for the watched range, in sub-revision order.
    pub events: Vec<Event>,
    /// The compaction revision when the watcher was cancelled because its start revision was
    /// compacted; 0 otherwise.
    pub compact_revision: i64,
    /// True when this is the last response of the watcher.
    pub canceled: bool,
}

#[derive(Debug)]
enum WatcherState {
    /// Replaying history up to `replayed_to`; live events are buffered meanwhile.
    Replaying {
        replayed_to: i64,
        buffer: Vec<(i64, Vec<Event>)>,
    },
    Synced,
}

#[derive(Debug)]
struct WatcherEntry {
    range: KeyRange,
    min_rev: i64,
    tx: Sender<WatchResponse>,
    state: WatcherState,
}

/// The registry of live watchers of a store.
#[derive(Debug, Default)]
pub(crate) struct WatchHub {
    inner: Mutex<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    next_id: i64,
    watchers: HashMap<i64, WatcherEntry>,
}

fn filter(range: &KeyRange, events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| range.contains(&e.kv.key))
        .cloned()
        .collect()
}

impl WatchHub {
    /// Delivers the events of revision `rev` to every interested watcher. Called by the single
    /// writer after the revision became current, so calls arrive in revision order. The events
    /// are built only when a watcher is registered.
    pub(crate) fn notify_with(&self, rev: i64, events: impl FnOnce() -> Vec<Event>) {
        let mut inner = self.inner.lock();
        if inner.watchers.is_empty() {
            return;
        }
        let events = events();
        Self::notify_locked(&mut inner, rev, &events);
    }

    fn notify_locked(inner: &mut HubInner, rev: i64, events: &[Event]) {
        let mut gone = Vec::new();
        for (id, w) in inner.watchers.iter_mut() {
            if rev < w.min_rev {
                continue;
            }
            let mine = filter(&w.range, events);
            if mine.is_empty() {
                continue;
            }
            match &mut w.state {
                WatcherState::Replaying { buffer, .. } => buffer.push((rev, mine)),
                WatcherState::Synced => {
                    let resp = WatchResponse {
                        watch_id: *id,
                        revision: rev,
                        events: mine,
                        compact_revision: 0,
                        canceled: false,
                    };
                    if w.tx.send(resp).is_err() {
                        gone.push(*id);
                    }
                }
            }
        }
        for id in gone {
            inner.watchers.remove(&id);
        }
    }

    /// True when at least one watcher is registered.
    pub(crate) fn has_watchers(&self) -> bool {
        !self.inner.lock().watchers.is_empty()
    }

    /// Ends every watcher: their senders are dropped, so receivers disconnect once drained.
    pub(crate) fn close_all(&self) {
        self.inner.lock().watchers.clear();
    }

    fn remove(&self, id: i64) {
        self.inner.lock().watchers.remove(&id);
    }

    /// Number of registered watchers.
    fn len(&self) -> usize {
        self.inner.lock().watchers.len()
    }
}

/// A live subscription created by [`MvccStore::watch`]. Dropping it cancels it.
#[derive(Debug)]
pub struct Watcher {
    id: i64,
    rx: Receiver<WatchResponse>,
    hub: Weak<WatchHub>,
}

impl Watcher {
    /// The watcher id (unique per store).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Blocks for the next response; `None` once the watcher is cancelled and drained.
    pub fn recv(&self) -> Option<WatchResponse> {
        self.rx.recv().ok()
    }

    /// The next response if one is ready.
    pub fn try_recv(&self) -> Option<WatchResponse> {
        self.rx.try_recv().ok()
    }

    /// Waits at most `timeout` for the next response.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<WatchResponse> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The underlying channel (for `select!`).
    pub fn receiver(&self) -> &Receiver<WatchResponse> {
        &self.rx
    }

    /// Stops the subscription; responses already queued stay readable.
    pub fn cancel(&self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.remove(self.id);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl<B: Backend> MvccStore<B> {
    /// Every event (all keys) with `mod_revision` in `[start_revision, current]`, in revision
    /// order (`start_revision <= 0` means 1). Fails with [`MvccError::Compacted`] when
    /// `start_revision` is below the compaction revision.
    pub fn watch_events(&self, start_revision: i64) -> MvccResult<Vec<Event>> {
        self.check_open()?;
        let start = start_revision.max(1);
        let revs = self.rev_pair();
        if start < revs.compact {
            return Err(MvccError::Compacted);
        }
        let events = self
            .history(&KeyRange::From(Vec::new()), start, revs.current)?
            .into_iter()
            .flat_map(|(_, evs)| evs)
            .collect();
        if start < self.compact_revision() {
            return Err(MvccError::Compacted);
        }
        Ok(events)
    }

    /// Every stored event of revision `rev` (all keys), in sub-revision order.
    pub(crate) fn events_of(&self, rev: i64) -> MvccResult<Vec<Event>> {
        Ok(self
            .history(&KeyRange::From(Vec::new()), rev, rev)?
            .into_iter()
            .flat_map(|(_, evs)| evs)
            .collect())
    }

    /// The stored events of `range` with main revision in `[start, end]`, grouped by revision.
    fn history(
        &self,
        range: &KeyRange,
        start: i64,
        end: i64,
    ) -> MvccResult<Vec<(i64, Vec<Event>)>> {
        let mut out: Vec<(i64, Vec<Event>)> = Vec::new();
        if start > end {
            return Ok(out);
        }
        let mut from = Revision::new(start, 0).to_key(false);
        let to = Revision::new(end.saturating_add(1), 0).to_key(false);
        loop {
            let chunk = self
                .backend
                .scan(Tree::Kv, &from, &to, crate::store::RESTORE_CHUNK)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            let next = crate::store::successor(last);
            let done = chunk.len() < crate::store::RESTORE_CHUNK;
            for (k, v) in &chunk {
                let (rev, event) = Event::from_row(k, v)?;
                if !range.contains(&event.kv.key) {
                    continue;
                }
                match out.last_mut() {
                    Some((r, evs)) if *r == rev.main => evs.push(event),
                    _ => out.push((rev.main, vec![event])),
                }
            }
            if done {
                break;
            }
            from = next;
        }
        Ok(out)
    }

    /// Subscribes to the changes of `[key, end)` (etcd watch convention: empty `key` means
    /// `[0]`, empty `end` = the single key, `end == [0]` = every key `>= key`) from
    /// `start_revision` (`0` = from the next revision). Delivers history first, then live
    /// events, each once and in order. A compacted start revision yields one cancellation
    /// response carrying the compaction revision.
    ///
    /// Errors: [`MvccError::EmptyWatcherRange`] when `key >= end`; [`MvccError::InvalidArgument`]
    /// for a negative start revision.
    pub fn watch(&self, key: &[u8], end: &[u8], start_revision: i64) -> MvccResult<Watcher> {
        self.check_open()?;
        if start_revision < 0 {
            return Err(MvccError::InvalidArgument(format!(
                "negative watch start revision {start_revision}"
            )));
        }
        let key: &[u8] = if key.is_empty() { &[0] } else { key };
        let range = KeyRange::new(key, end);
        if range.is_empty() {
            return Err(MvccError::EmptyWatcherRange);
        }
        let (tx, rx) = channel::unbounded();
        let (id, replay) = {
            let mut inner = self.hub.inner.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            let revs = self.rev_pair();
            if start_revision != 0 && start_revision < revs.compact {
                // The channel is closed after this response.
                let _ = tx.send(WatchResponse {
                    watch_id: id,
                    revision: revs.compact,
                    events: Vec::new(),
                    compact_revision: revs.compact,
                    canceled: true,
                });
                return Ok(Watcher {
                    id,
                    rx,
                    hub: Weak::new(),
                });
            }
            let synced = start_revision == 0 || start_revision > revs.current;
            let min_rev = if synced {
                start_revision.max(revs.current + 1)
            } else {
                start_revision
            };
            let state = if synced {
                WatcherState::Synced
            } else {
                WatcherState::Replaying {
                    replayed_to: revs.current,
                    buffer: Vec::new(),
                }
            };
            inner.watchers.insert(
                id,
                WatcherEntry {
                    range: range.clone(),
                    min_rev,
                    tx: tx.clone(),
                    state,
                },
            );
            (id, (!synced).then_some((start_revision, revs.current)))
        };
        let watcher = Watcher {
            id,
            rx,
            hub: Arc::downgrade(&self.hub),
        };
        if let Some((start, upto)) = replay {
            self.replay(id, &range, start, upto, &tx)?;
        }
        Ok(watcher)
    }

    /// Sends the history `[start, upto]`, then the buffered live events, and marks the watcher
    /// synced.
    fn replay(
        &self,
        id: i64,
        range: &KeyRange,
        start: i64,
        upto: i64,
        tx: &Sender<WatchResponse>,
    ) -> MvccResult<()> {
        let history = match self.history(range, start, upto) {
            Ok(h) if start >= self.compact_revision() => h,
            Ok(_) | Err(MvccError::Compacted) => {
                // Compacted while replaying.
                self.hub.remove(id);
                let compact = self.compact_revision();
                let _ = tx.send(WatchResponse {
                    watch_id: id,
                    revision: compact,
                    events: Vec::new(),
                    compact_revision: compact,
                    canceled: true,
                });
                return Ok(());
            }
            Err(e) => {
                self.hub.remove(id);
                return Err(e);
            }
        };
        for (rev, events) in history {
            let _ = tx.send(WatchResponse {
                watch_id: id,
                revision: rev,
                events,
                compact_revision: 0,
                canceled: false,
            });
        }
        let mut inner = self.hub.inner.lock();
        if let Some(w) = inner.watchers.get_mut(&id) {
            if let WatcherState::Replaying {
                replayed_to,
                buffer,
            } = std::mem::replace(&mut w.state, WatcherState::Synced)
            {
                // A writer may notify a revision the replay already covered after this point
                // (it became current before registration but its notification is late).
                w.min_rev = w.min_rev.max(replayed_to + 1);
                for (rev, events) in buffer {
                    if rev > replayed_to {
                        let _ = w.tx.send(WatchResponse {
                            watch_id: id,
                            revision: rev,
                            events,
                            compact_revision: 0,
                            canceled: false,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Number of live watchers.
    pub fn watcher_count(&self) -> usize {
        self.hub.len()
    }
}
