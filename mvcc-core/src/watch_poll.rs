//! Poll-style watch: the stored events from a revision, read on demand, beside the streaming
//! [`MvccStore::watch`] (see [`crate::watch`]).

use storage_api::{Backend, Tree};

use crate::error::{MvccError, MvccResult};
use crate::revision::Revision;
use crate::store::{successor, MvccStore, RESTORE_CHUNK};
use crate::watch::Event;

impl<B: Backend> MvccStore<B> {
    /// Every event (all keys) with `mod_revision` in `[start_revision, current]`, in revision
    /// order (`start_revision <= 0` means 1), like [`watch_events`](Self::watch_events), at most
    /// `max_events` of them (`None` = all).
    ///
    /// A revision is never split: the answer ends with a whole revision, and holds at least the
    /// first revision from `start_revision` even when that one alone has more than
    /// `max_events` events, so polling again from the last event's `mod_revision + 1` misses
    /// nothing and repeats nothing. Fails with [`MvccError::Compacted`] when `start_revision` is
    /// below the compaction revision.
    pub fn watch_events_limited(
        &self,
        start_revision: i64,
        max_events: Option<usize>,
    ) -> MvccResult<Vec<Event>> {
        self.check_open()?;
        let start = start_revision.max(1);
        let revs = self.rev_pair();
        if start < revs.compact {
            return Err(MvccError::Compacted);
        }
        let max = max_events.unwrap_or(usize::MAX);
        let chunk = RESTORE_CHUNK.min(max.saturating_add(1)).max(1);
        let mut events: Vec<Event> = Vec::new();
        if start <= revs.current {
            let mut from = Revision::new(start, 0).to_key(false);
            let to = Revision::new(revs.current.saturating_add(1), 0).to_key(false);
            let mut last_main = 0;
            'scan: loop {
                let rows = self.backend.scan(Tree::Kv, &from, &to, chunk)?;
                let Some((last, _)) = rows.last() else {
                    break;
                };
                let next = successor(last);
                let done = rows.len() < chunk;
                for (k, v) in &rows {
                    let (rev, event) = Event::from_row(k, v)?;
                    if !events.is_empty() && events.len() >= max && rev.main != last_main {
                        break 'scan;
                    }
                    last_main = rev.main;
                    events.push(event);
                }
                if done {
                    break;
                }
                from = next;
            }
        }
        if start < self.compact_revision() {
            return Err(MvccError::Compacted);
        }
        Ok(events)
    }
}
