//! Watch: change events, history replay and live subscriptions, in bounded memory.
//!
//! [`MvccStore::watch`] subscribes one watcher ([`Watcher`]); [`MvccStore::watch_stream`]
//! opens a [`WatchStream`], many watchers sharing one bounded queue (a gRPC watch stream). A
//! subscriber receives the stored history (every event with `mod_revision >= start`), then live
//! events, each exactly once and in revision order, one [`WatchResponse`] per revision. When the
//! start revision is already compacted, the only response has `canceled = true` and
//! `compact_revision` = the compaction revision (etcd `TestWatchCompacted`).
//!
//! # Synced and unsynced watchers (etcd's `watchable_store`)
//!
//! A *synced* watcher gets each new revision's events pushed into its queue by the writer that
//! publishes the revision. The queue is bounded ([`WatchStream::capacity`]): when it is full
//! the writer never waits and never buffers; the watcher becomes *unsynced* at that revision
//! instead. An unsynced watcher — also every watcher created with a start revision in the past —
//! is brought up to date by [`catch-up`](WatchStream::catch_up): the stored history is read
//! from the watcher's next revision in chunks of at most a bounded number of rows and pushed
//! while the queue has room; once it reaches the newest published revision the watcher is synced
//! again. Catch-up is driven by the consumer ([`Watcher::recv`] does it itself; a server calls
//! [`WatchStream::catch_up`] on a blocking thread), so a consumer that stops reading stops its
//! watchers' reads too, and the memory a watch holds is bounded by the queue, whatever the
//! history length or the write rate. A watcher whose next revision is compacted away before it
//! caught up is cancelled with the compaction revision, as etcd does.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use flume::TrySendError;
use parking_lot::Mutex;
use storage_api::{Backend, Tree};

use crate::error::{MvccError, MvccResult};
use crate::kv::KeyValue;
use crate::revision::Revision;
use crate::store::{Change, MvccStore, RevCell};
use crate::tree_index::KeyRange;

/// Responses a [`Watcher`] of [`MvccStore::watch`] queues before it falls back to catch-up.
pub const DEFAULT_WATCHER_CAPACITY: usize = 1024;

/// Rows (events) one catch-up read takes from storage at most (a revision is never split, so
/// one revision with more events is read whole).
pub const CATCH_UP_ROWS: usize = 1000;

/// Rows one catch-up read takes at least (a watcher of a narrow range skips most rows).
/// Between this and [`CATCH_UP_ROWS`], a read takes one row more than the queue has free
/// slots, so that what it reads fits; a catch-up stops once the queue is full: a read larger than the room would be thrown away and read
/// again, once per response the consumer takes (a 1000-fold read amplification for a client
/// that reads its history response by response).
pub const MIN_CATCH_UP_ROWS: usize = 64;

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
///
/// Three kinds: events (`events` not empty), a cancellation (`canceled`, with
/// `compact_revision` > 0 when the watcher fell behind compaction), and a progress
/// notification (`events` empty, not cancelled: every event of the watcher at or below
/// `revision` came before it; `watch_id` is -1 for a stream-wide one, see
/// [`WatchStream::request_progress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResponse {
    /// The watcher's id.
    pub watch_id: i64,
    /// The revision of the events (or the compaction revision of a cancellation, or the
    /// revision a progress notification vouches for).
    pub revision: i64,
    /// The events of one revision for the watched range, in sub-revision order.
    pub events: Vec<Event>,
    /// The compaction revision when the watcher was cancelled because its start revision was
    /// compacted; 0 otherwise.
    pub compact_revision: i64,
    /// True when this is the last response of the watcher.
    pub canceled: bool,
}

impl WatchResponse {
    /// True for a progress notification (no events, not a cancellation).
    pub fn is_progress(&self) -> bool {
        self.events.is_empty() && !self.canceled
    }
}

/// The queue and catch-up state one stream's watchers share.
#[derive(Debug)]
pub(crate) struct Sink {
    tx: flume::Sender<WatchResponse>,
    /// Ids of this stream's unsynced watchers. Changed under the hub lock.
    unsynced: Mutex<BTreeSet<i64>>,
    /// A stream-wide progress notification waits for every watcher to be synced.
    progress_pending: Mutex<bool>,
    /// One catch-up at a time per stream.
    catching_up: Mutex<()>,
    /// Events read from storage by this stream's catch-ups ([`WatchStream::history_events_read`]).
    events_read: std::sync::atomic::AtomicU64,
}

impl Sink {
    /// Free slots of the queue.
    fn room(&self) -> usize {
        self.tx
            .capacity()
            .unwrap_or(usize::MAX)
            .saturating_sub(self.tx.len())
    }
}

#[derive(Debug)]
struct WatcherEntry {
    range: KeyRange,
    /// The first revision whose events this watcher has not received (nor skipped as
    /// irrelevant).
    next_rev: i64,
    synced: bool,
    sink: Arc<Sink>,
}

/// The registry of live watchers of a store.
#[derive(Debug, Default)]
pub(crate) struct WatchHub {
    inner: Mutex<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    next_id: i64,
    /// The newest revision whose events were delivered to the synced watchers.
    notified: i64,
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
    /// Delivers the events of revision `rev` to every interested synced watcher. Called by the
    /// writer (or the group-commit flusher) after the revision became visible, so calls arrive
    /// in revision order. The events are built only when a watcher is registered. Never
    /// blocks: a watcher whose queue is full becomes unsynced.
    pub(crate) fn notify_with(&self, rev: i64, events: impl FnOnce() -> Vec<Event>) {
        let mut inner = self.inner.lock();
        inner.notified = inner.notified.max(rev);
        if inner.watchers.is_empty() {
            return;
        }
        let events = events();
        let mut gone = Vec::new();
        for (id, w) in inner.watchers.iter_mut() {
            if !w.synced || rev < w.next_rev {
                continue;
            }
            let mine = filter(&w.range, &events);
            if mine.is_empty() {
                continue;
            }
            let resp = WatchResponse {
                watch_id: *id,
                revision: rev,
                events: mine,
                compact_revision: 0,
                canceled: false,
            };
            match w.sink.tx.try_send(resp) {
                Ok(()) => w.next_rev = rev + 1,
                Err(TrySendError::Full(_)) => {
                    w.synced = false;
                    w.next_rev = rev;
                    w.sink.unsynced.lock().insert(*id);
                }
                Err(TrySendError::Disconnected(_)) => gone.push(*id),
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

    fn remove(&self, id: i64) -> bool {
        let mut inner = self.inner.lock();
        match inner.watchers.remove(&id) {
            Some(w) => {
                w.sink.unsynced.lock().remove(&id);
                true
            }
            None => false,
        }
    }

    fn contains(&self, id: i64) -> bool {
        self.inner.lock().watchers.contains_key(&id)
    }

    /// Number of registered watchers.
    fn len(&self) -> usize {
        self.inner.lock().watchers.len()
    }
}

/// Events grouped by revision, and the first revision not covered.
pub(crate) type HistoryChunk = (Vec<(i64, Vec<Event>)>, i64);

/// Reads a store's history for catch-up without holding the store: the backend is held weakly
/// (a lagging watcher never keeps a closed store's files open).
pub(crate) trait HistorySource: Send + Sync {
    /// The visible compaction revision.
    fn compact(&self) -> i64;
    /// The visible current revision.
    fn current(&self) -> i64;
    /// The events of `range` with main revision in `[from, to]`, grouped by revision, reading
    /// at most about `max_rows` rows (never splitting a revision); with the first revision not
    /// covered (`to + 1` when everything was read).
    fn chunk(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        max_rows: usize,
    ) -> MvccResult<HistoryChunk>;
}

struct StoreHistory<B: Backend> {
    backend: Weak<B>,
    revs: Arc<RevCell>,
}

impl<B: Backend> HistorySource for StoreHistory<B> {
    fn compact(&self) -> i64 {
        self.revs.compact()
    }

    fn current(&self) -> i64 {
        self.revs.current()
    }

    fn chunk(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        max_rows: usize,
    ) -> MvccResult<HistoryChunk> {
        let backend = self
            .backend
            .upgrade()
            .ok_or(MvccError::Storage(storage_api::StorageError::Closed))?;
        history_chunk(&*backend, range, from, to, max_rows)
    }
}

/// See [`HistorySource::chunk`].
pub(crate) fn history_chunk<B: Backend + ?Sized>(
    backend: &B,
    range: &KeyRange,
    from: i64,
    to: i64,
    max_rows: usize,
) -> MvccResult<HistoryChunk> {
    let mut out: Vec<(i64, Vec<Event>)> = Vec::new();
    if from > to {
        return Ok((out, from));
    }
    let max_rows = max_rows.max(1);
    let start = Revision::new(from, 0).to_key(false);
    let end = Revision::new(to.saturating_add(1), 0).to_key(false);
    let rows = backend.scan(Tree::Kv, &start, &end, max_rows)?;
    let full = rows.len() >= max_rows;
    let mut parsed = Vec::with_capacity(rows.len());
    for (k, v) in &rows {
        parsed.push(Event::from_row(k, v)?);
    }
    let next = if !full {
        to.saturating_add(1)
    } else {
        // The last revision may continue past the chunk: leave it for the next read, unless
        // it is the only one, which is then read whole.
        let last_main = parsed.last().map_or(from, |(r, _)| r.main);
        if parsed.first().is_some_and(|(r, _)| r.main == last_main) {
            let whole_start = Revision::new(last_main, 0).to_key(false);
            let whole_end = Revision::new(last_main.saturating_add(1), 0).to_key(false);
            parsed.clear();
            for (k, v) in backend.scan(Tree::Kv, &whole_start, &whole_end, usize::MAX)? {
                parsed.push(Event::from_row(&k, &v)?);
            }
            last_main.saturating_add(1)
        } else {
            parsed.retain(|(r, _)| r.main != last_main);
            last_main
        }
    };
    for (rev, event) in parsed {
        if !range.contains(&event.kv.key) {
            continue;
        }
        match out.last_mut() {
            Some((r, evs)) if *r == rev.main => evs.push(event),
            _ => out.push((rev.main, vec![event])),
        }
    }
    Ok((out, next))
}

/// Brings the unsynced watchers of `sink` up to date while its queue has room (see the
/// [module docs](self)).
fn catch_up(hub: &WatchHub, src: &dyn HistorySource, sink: &Sink) -> MvccResult<()> {
    let _one = sink.catching_up.lock();
    let ids: Vec<i64> = sink.unsynced.lock().iter().copied().collect();
    for id in ids {
        if sink.tx.is_full() {
            return Ok(());
        }
        catch_up_one(hub, src, sink, id)?;
    }
    // A stream-wide progress request waits for every watcher to be synced.
    let inner = hub.inner.lock();
    let mut pending = sink.progress_pending.lock();
    if *pending && sink.unsynced.lock().is_empty() {
        let resp = WatchResponse {
            watch_id: -1,
            revision: inner.notified,
            events: Vec::new(),
            compact_revision: 0,
            canceled: false,
        };
        if sink.tx.try_send(resp).is_ok() {
            *pending = false;
        }
    }
    Ok(())
}

fn catch_up_one(hub: &WatchHub, src: &dyn HistorySource, sink: &Sink, id: i64) -> MvccResult<()> {
    loop {
        let (range, next, target) = {
            let inner = hub.inner.lock();
            let Some(w) = inner.watchers.get(&id) else {
                sink.unsynced.lock().remove(&id);
                return Ok(());
            };
            if w.synced {
                sink.unsynced.lock().remove(&id);
                return Ok(());
            }
            (w.range.clone(), w.next_rev, inner.notified)
        };
        let compact = src.compact();
        if next < compact {
            let resp = WatchResponse {
                watch_id: id,
                revision: compact,
                events: Vec::new(),
                compact_revision: compact,
                canceled: true,
            };
            match sink.tx.try_send(resp) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {
                    hub.remove(id);
                }
                Err(TrySendError::Full(_)) => {}
            }
            return Ok(());
        }
        if next > target {
            let mut inner = hub.inner.lock();
            if inner.notified == target {
                if let Some(w) = inner.watchers.get_mut(&id) {
                    w.synced = true;
                    w.next_rev = target + 1;
                }
                sink.unsynced.lock().remove(&id);
                return Ok(());
            }
            continue;
        }
        let room = sink.room();
        if room == 0 {
            return Ok(());
        }
        // One row more than the room: the last revision read is left for the next read when
        // the read is full (it may continue), so `room` single-event revisions fill the queue
        // exactly and nothing read is thrown away.
        let rows = room
            .saturating_add(1)
            .clamp(MIN_CATCH_UP_ROWS, CATCH_UP_ROWS);
        let (chunk, after) = match src.chunk(&range, next, target, rows) {
            Ok(c) => c,
            // Compacted under the read: the check above cancels the watcher.
            Err(MvccError::Compacted) => continue,
            Err(e) => return Err(e),
        };
        if next < src.compact() {
            continue;
        }
        let read: usize = chunk.iter().map(|(_, evs)| evs.len()).sum();
        sink.events_read
            .fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
        let mut reached = after;
        let mut stop = false;
        for (rev, events) in chunk {
            let resp = WatchResponse {
                watch_id: id,
                revision: rev,
                events,
                compact_revision: 0,
                canceled: false,
            };
            match sink.tx.try_send(resp) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    reached = rev;
                    stop = true;
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    hub.remove(id);
                    return Ok(());
                }
            }
        }
        if let Some(w) = hub.inner.lock().watchers.get_mut(&id) {
            w.next_rev = w.next_rev.max(reached);
        }
        if stop {
            return Ok(());
        }
    }
}

/// Several watchers sharing one bounded queue, with consumer-driven catch-up: what a gRPC watch
/// stream needs (see the [module docs](self)). Created by [`MvccStore::watch_stream`]. Dropping
/// it cancels its watchers.
pub struct WatchStream {
    sink: Arc<Sink>,
    rx: flume::Receiver<WatchResponse>,
    hub: Arc<WatchHub>,
    src: Arc<dyn HistorySource>,
    ids: Mutex<BTreeSet<i64>>,
    capacity: usize,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("capacity", &self.capacity)
            .field("watchers", &self.ids.lock().len())
            .finish()
    }
}

impl WatchStream {
    /// Adds a watcher of `[key, end)` (etcd watch convention: empty `key` means `[0]`, empty
    /// `end` = the single key, `end == [0]` = every key `>= key`) from `start_revision` (`0` =
    /// from the next revision). Returns its id (unique per store). A compacted start revision
    /// yields one cancellation response carrying the compaction revision.
    ///
    /// Errors: [`MvccError::EmptyWatcherRange`] when `key >= end`;
    /// [`MvccError::InvalidArgument`] for a negative start revision.
    pub fn watch(&self, key: &[u8], end: &[u8], start_revision: i64) -> MvccResult<i64> {
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
        let mut inner = self.hub.inner.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        // Visible revisions are in storage: a revision whose notification is still on its way
        // is covered by catch-up (and then skipped by the notification).
        inner.notified = inner.notified.max(self.src.current());
        let current = inner.notified;
        let synced = start_revision == 0 || start_revision > current;
        let next_rev = if synced {
            start_revision.max(current + 1)
        } else {
            start_revision
        };
        inner.watchers.insert(
            id,
            WatcherEntry {
                range,
                next_rev,
                synced,
                sink: self.sink.clone(),
            },
        );
        if !synced {
            // Catch-up answers with the history, or the cancellation of a compacted start.
            self.sink.unsynced.lock().insert(id);
        }
        self.ids.lock().insert(id);
        Ok(id)
    }

    /// Stops watcher `id`; false if it is not (or no longer) a watcher of this stream.
    /// Responses already queued stay readable.
    pub fn cancel(&self, id: i64) -> bool {
        if !self.ids.lock().remove(&id) {
            return false;
        }
        self.hub.remove(id);
        true
    }

    /// The ids of this stream's watchers.
    pub fn watcher_ids(&self) -> Vec<i64> {
        self.ids.lock().iter().copied().collect()
    }

    /// Forgets watcher `id` after its final (cancellation) response was received.
    pub fn forget(&self, id: i64) {
        self.ids.lock().remove(&id);
    }

    /// The queue's capacity in responses.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Responses queued now (at most [`capacity`](Self::capacity)).
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// True when an unsynced watcher waits for [`catch_up`](Self::catch_up) and at least half
    /// the queue is free (so that each catch-up moves a batch of responses, not one), or when a
    /// progress notification waits and the queue has room for it.
    pub fn needs_catch_up(&self) -> bool {
        let room = self.sink.room();
        let low_water = (self.capacity / 2).max(1);
        (room >= low_water && !self.sink.unsynced.lock().is_empty())
            || (room > 0 && *self.sink.progress_pending.lock())
    }

    /// Events this stream's catch-ups have read from storage so far, counting those read but
    /// not yet queued (they are read again): with a consumer that takes one response at a
    /// time, about one read per event delivered.
    pub fn history_events_read(&self) -> u64 {
        self.sink
            .events_read
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads stored history for the unsynced watchers into the queue while it has room
    /// (blocking storage reads: call it off async workers).
    pub fn catch_up(&self) -> MvccResult<()> {
        catch_up(&self.hub, &*self.src, &self.sink)
    }

    /// The next queued response, if any.
    pub fn try_recv(&self) -> Option<WatchResponse> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next queued response (`None` once the store closed). Does not catch up:
    /// check [`needs_catch_up`](Self::needs_catch_up) first.
    pub async fn recv_async(&self) -> Option<WatchResponse> {
        self.rx.recv_async().await.ok()
    }

    /// Queues a progress notification for watcher `id` at the newest published revision, after
    /// every event of it queued so far; skipped (false) while the watcher is unsynced (it will
    /// send events instead) or the queue is full, as etcd does.
    pub fn progress(&self, id: i64) -> bool {
        let inner = self.hub.inner.lock();
        match inner.watchers.get(&id) {
            Some(w) if w.synced => self
                .sink
                .tx
                .try_send(WatchResponse {
                    watch_id: id,
                    revision: inner.notified,
                    events: Vec::new(),
                    compact_revision: 0,
                    canceled: false,
                })
                .is_ok(),
            _ => false,
        }
    }

    /// Queues a stream-wide progress notification (watch id -1) at the newest published
    /// revision, once every watcher of the stream is synced: every event at or below that
    /// revision is queued before it.
    pub fn request_progress(&self) {
        let inner = self.hub.inner.lock();
        let all_synced = self.sink.unsynced.lock().is_empty();
        if all_synced {
            let resp = WatchResponse {
                watch_id: -1,
                revision: inner.notified,
                events: Vec::new(),
                compact_revision: 0,
                canceled: false,
            };
            if self.sink.tx.try_send(resp).is_ok() {
                return;
            }
        }
        *self.sink.progress_pending.lock() = true;
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let ids: Vec<i64> = self.ids.lock().iter().copied().collect();
        for id in ids {
            self.hub.remove(id);
        }
    }
}

/// A live subscription created by [`MvccStore::watch`]. Dropping it cancels it.
#[derive(Debug)]
pub struct Watcher {
    id: i64,
    stream: WatchStream,
}

impl Watcher {
    /// The watcher id (unique per store).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Catches up if needed and returns a queued response, without waiting for new ones.
    fn poll(&self) -> MvccResult<Option<WatchResponse>> {
        if let Some(r) = self.stream.try_recv() {
            return Ok(Some(r));
        }
        if self.stream.needs_catch_up() {
            self.stream.catch_up()?;
        }
        Ok(self.stream.try_recv())
    }

    /// Blocks for the next response; `None` once the watcher is cancelled and drained (or its
    /// store closed).
    pub fn recv(&self) -> Option<WatchResponse> {
        self.recv_until(None)
    }

    /// The next response if one is ready (after catching up from storage if needed).
    pub fn try_recv(&self) -> Option<WatchResponse> {
        self.poll().ok().flatten()
    }

    /// Waits at most `timeout` for the next response.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<WatchResponse> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// Waits for the next response until `deadline` (`None`: no deadline), catching up from
    /// storage whenever the watcher is unsynced and the queue is empty.
    fn recv_until(&self, deadline: Option<Instant>) -> Option<WatchResponse> {
        loop {
            match self.poll() {
                Ok(Some(r)) => return Some(r),
                Ok(None) => {}
                Err(_) => return None,
            }
            if self.stream.needs_catch_up() {
                continue;
            }
            if !self.stream.hub.contains(self.id) {
                // Cancelled, or the store closed: what is queued, then the end.
                return self.stream.try_recv();
            }
            let wait = match deadline {
                None => Duration::from_millis(50),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    left.min(Duration::from_millis(50))
                }
            };
            match self.stream.rx.recv_timeout(wait) {
                Ok(r) => return Some(r),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Stops the subscription; responses already queued stay readable.
    pub fn cancel(&self) {
        self.stream.cancel(self.id);
    }

    /// False once the watcher was cancelled (by [`cancel`](Self::cancel), by compaction, or by
    /// the store closing): what is queued is then all that remains.
    pub fn is_active(&self) -> bool {
        self.stream.hub.contains(self.id)
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
        let mut from = start;
        while from <= end {
            let (chunk, next) = history_chunk(
                &*self.backend,
                range,
                from,
                end,
                crate::store::RESTORE_CHUNK,
            )?;
            out.extend(chunk);
            from = next;
        }
        Ok(out)
    }

    /// Opens a [`WatchStream`]: watchers sharing one queue of `capacity` responses (etcd uses
    /// 128 per gRPC stream). A watcher whose events do not fit waits in storage, not in memory.
    pub fn watch_stream(&self, capacity: usize) -> WatchStream {
        let (tx, rx) = flume::bounded(capacity.max(1));
        // Make sure the hub knows the visible revision even before the first write.
        {
            let mut inner = self.hub.inner.lock();
            inner.notified = inner.notified.max(self.revs.current());
        }
        WatchStream {
            sink: Arc::new(Sink {
                tx,
                unsynced: Mutex::new(BTreeSet::new()),
                progress_pending: Mutex::new(false),
                catching_up: Mutex::new(()),
                events_read: std::sync::atomic::AtomicU64::new(0),
            }),
            rx,
            hub: self.hub.clone(),
            src: Arc::new(StoreHistory {
                backend: Arc::downgrade(&self.backend),
                revs: self.revs.clone(),
            }),
            ids: Mutex::new(BTreeSet::new()),
            capacity: capacity.max(1),
        }
    }

    /// Subscribes to the changes of `[key, end)` (etcd watch convention: empty `key` means
    /// `[0]`, empty `end` = the single key, `end == [0]` = every key `>= key`) from
    /// `start_revision` (`0` = from the next revision). Delivers history first, then live
    /// events, each once and in order, holding at most [`DEFAULT_WATCHER_CAPACITY`] responses
    /// in memory (history and events that do not fit are read from storage as the watcher is
    /// read). A compacted start revision yields one cancellation response carrying the
    /// compaction revision.
    ///
    /// Errors: [`MvccError::EmptyWatcherRange`] when `key >= end`; [`MvccError::InvalidArgument`]
    /// for a negative start revision.
    pub fn watch(&self, key: &[u8], end: &[u8], start_revision: i64) -> MvccResult<Watcher> {
        self.check_open()?;
        let stream = self.watch_stream(DEFAULT_WATCHER_CAPACITY);
        let id = stream.watch(key, end, start_revision)?;
        Ok(Watcher { id, stream })
    }

    /// Number of live watchers.
    pub fn watcher_count(&self) -> usize {
        self.hub.len()
    }
}
