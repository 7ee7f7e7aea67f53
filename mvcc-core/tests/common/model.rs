//! A small reference model of the MVCC store for the reliability harnesses (crash recovery,
//! fault injection): the full key space at every retained revision, the events of every
//! retained revision, the compaction revision and the lease set.
//!
//! It covers the operation shapes those harnesses issue (puts with or without a lease,
//! delete-range, flat write transactions, compaction, lease grant and revoke); the proptest in
//! `differential.rs` carries the complete model of nested transactions and reads.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mvcc_core::{Event, EventKind, KeyRange, KeyValue};

/// Key → key-value at one revision.
pub type State = BTreeMap<Vec<u8>, KeyValue>;

/// The model. Revisions below the compaction revision are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub current: i64,
    pub compact: i64,
    /// The key space at every revision in `[max(compact, 1), current]`.
    pub states: BTreeMap<i64, Arc<State>>,
    /// The events of every revision in `(compact, current]`.
    pub events: BTreeMap<i64, Vec<Event>>,
    pub leases: BTreeSet<i64>,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

/// One write operation of a flat transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Vec<u8>, Vec<u8>, i64),
    Delete(Vec<u8>, Vec<u8>),
}

/// The changes of one revision being built.
pub struct Tx {
    pub state: State,
    pub events: Vec<Event>,
    pub rev: i64,
}

impl Tx {
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> KeyValue {
        let (create, version) = match self.state.get(key) {
            Some(kv) => (kv.create_revision, kv.version),
            None => (self.rev, 0),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: self.rev,
            version: version + 1,
            lease,
        };
        self.state.insert(key.to_vec(), kv.clone());
        self.events.push(Event {
            kind: EventKind::Put,
            kv: kv.clone(),
        });
        kv
    }

    /// Deletes the keys of the etcd range `[key, end)`; returns the deleted key-values.
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        let range = KeyRange::new(key, end);
        let keys: Vec<Vec<u8>> = self
            .state
            .keys()
            .filter(|k| range.contains(k))
            .cloned()
            .collect();
        let mut deleted = Vec::with_capacity(keys.len());
        for k in keys {
            deleted.push(self.state.remove(&k).expect("key listed above"));
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue::tombstone(k, self.rev),
            });
        }
        deleted
    }

    pub fn apply(&mut self, w: &Write) {
        match w {
            Write::Put(k, v, l) => {
                self.put(k, v, *l);
            }
            Write::Delete(k, e) => {
                self.delete_range(k, e);
            }
        }
    }
}

impl Model {
    pub fn new() -> Self {
        let mut states = BTreeMap::new();
        states.insert(1, Arc::new(State::new()));
        Model {
            current: 1,
            compact: -1,
            states,
            events: BTreeMap::new(),
            leases: BTreeSet::new(),
        }
    }

    /// The key space at the current revision.
    pub fn state(&self) -> &State {
        &self.states[&self.current]
    }

    /// The key space at `rev` (must be retained).
    pub fn state_at(&self, rev: i64) -> &State {
        self.states
            .get(&rev)
            .unwrap_or_else(|| panic!("model does not retain revision {rev}"))
    }

    /// The key-values at the current revision in key order.
    pub fn kvs(&self) -> Vec<KeyValue> {
        self.state().values().cloned().collect()
    }

    /// `version` of `key` at the current revision (0 if absent).
    pub fn version(&self, key: &[u8]) -> i64 {
        self.state().get(key).map_or(0, |kv| kv.version)
    }

    /// The sorted live keys attached to `lease` at the current revision.
    pub fn lease_keys(&self, lease: i64) -> Vec<Vec<u8>> {
        self.state()
            .values()
            .filter(|kv| kv.lease == lease)
            .map(|kv| kv.key.clone())
            .collect()
    }

    pub fn begin(&self) -> Tx {
        Tx {
            state: self.state().clone(),
            events: Vec::new(),
            rev: self.current + 1,
        }
    }

    /// Commits `tx`: a new revision when it changed something. Returns the revision after it.
    pub fn commit(&mut self, tx: Tx) -> i64 {
        if tx.events.is_empty() {
            return self.current;
        }
        self.current = tx.rev;
        self.states.insert(tx.rev, Arc::new(tx.state));
        self.events.insert(tx.rev, tx.events);
        self.current
    }

    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> i64 {
        let mut tx = self.begin();
        tx.put(key, value, lease);
        self.commit(tx)
    }

    /// Returns `(revision, number of deleted keys)`.
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> (i64, usize) {
        let mut tx = self.begin();
        let n = tx.delete_range(key, end).len();
        (self.commit(tx), n)
    }

    /// A flat transaction whose single compare is `version(key) == version`.
    /// Returns `(succeeded, revision)`.
    pub fn txn_version(
        &mut self,
        key: &[u8],
        version: i64,
        success: &[Write],
        failure: &[Write],
    ) -> (bool, i64) {
        let succeeded = self.version(key) == version;
        let mut tx = self.begin();
        for w in if succeeded { success } else { failure } {
            tx.apply(w);
        }
        (succeeded, self.commit(tx))
    }

    pub fn compact(&mut self, rev: i64) {
        assert!(
            rev > self.compact && rev <= self.current,
            "bad model compaction {rev}"
        );
        self.compact = rev;
        self.states = self.states.split_off(&rev);
        self.events = self.events.split_off(&(rev + 1));
    }

    pub fn grant(&mut self, id: i64) {
        assert!(self.leases.insert(id), "lease {id} granted twice");
    }

    /// Revokes `id`: deletes its keys in one revision (none when it has no key).
    pub fn revoke(&mut self, id: i64) -> i64 {
        assert!(self.leases.remove(&id), "revoking unknown lease {id}");
        let mut tx = self.begin();
        for k in self.lease_keys(id) {
            tx.delete_range(&k, &[]);
        }
        self.commit(tx)
    }

    /// The events of every revision in `[from, current]`, in order.
    pub fn events_from(&self, from: i64) -> Vec<Event> {
        self.events
            .range(from..)
            .flat_map(|(_, evs)| evs.iter().cloned())
            .collect()
    }
}
