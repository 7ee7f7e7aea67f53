//! Differential property test: the same random operation sequence gives identical results on
//! every compiled engine, with and without reopening the store in between, and matches a
//! straightforward reference model of etcd's semantics (Appendix B of the specification:
//! a full copy of the key space per revision).

use std::collections::{BTreeMap, BTreeSet};

use mvcc_core::engine::{compiled_backends, AnyBackend};
use mvcc_core::{
    Compare, CompareOp, KeyRange, KeyValue, MvccError, MvccStore, RangeResult, StoreConfig, TxnOp,
    TxnOpResponse, TxnResult,
};
use proptest::prelude::*;
use storage_api::{Backend, BackendConfig, BackendKind};

const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8, i64),
    Delete(usize, End),
    Range(usize, End, i64, i64),
    Txn(usize, i64, Vec<(u8, usize, u8)>, Vec<(u8, usize, u8)>),
    Compact(i64),
    Grant(i64),
    Revoke(i64),
    Reopen,
}

#[derive(Debug, Clone, Copy)]
enum End {
    Single,
    FromKey,
    To(usize),
}

fn end_bytes(end: End) -> Vec<u8> {
    match end {
        End::Single => Vec::new(),
        End::FromKey => vec![0],
        End::To(i) => KEYS[i].as_bytes().to_vec(),
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let end = prop_oneof![
        Just(End::Single),
        Just(End::FromKey),
        (0..KEYS.len()).prop_map(End::To)
    ];
    // (0 = put, 1 = single-key delete, 2 = from-key delete, key, value)
    let write = (
        prop_oneof![3 => Just(0u8), 1 => Just(1u8), 2 => Just(2u8)],
        0..KEYS.len(),
        0u8..4,
    );
    prop_oneof![
        6 => (key.clone(), 0u8..4, prop_oneof![4 => Just(0i64), 1 => 1i64..3]).prop_map(|(k, v, l)| Op::Put(k, v, l)),
        2 => (key.clone(), end.clone()).prop_map(|(k, e)| Op::Delete(k, e)),
        3 => (key.clone(), end, -1i64..4, -1i64..3).prop_map(|(k, e, back, lim)| Op::Range(k, e, back, lim)),
        2 => (key, 0i64..3, proptest::collection::vec(write.clone(), 0..3), proptest::collection::vec(write, 0..3))
            .prop_map(|(k, v, s, f)| Op::Txn(k, v, s, f)),
        1 => prop_oneof![2 => Just(0i64), 1 => 1i64..4].prop_map(Op::Compact),
        1 => (1i64..3).prop_map(Op::Grant),
        1 => (1i64..3).prop_map(Op::Revoke),
        1 => Just(Op::Reopen),
    ]
}

fn value(v: u8) -> Vec<u8> {
    if v == 0 {
        Vec::new()
    } else {
        format!("v{v}").into_bytes()
    }
}

fn txn_ops(ws: &[(u8, usize, u8)]) -> Vec<TxnOp> {
    ws.iter()
        .map(|&(kind, k, v)| match kind {
            0 => TxnOp::put(KEYS[k], value(v), 0),
            1 => TxnOp::delete(KEYS[k], ""),
            _ => TxnOp::delete(KEYS[k], "\0"),
        })
        .collect()
}

fn err(e: MvccError) -> String {
    e.to_string()
}

/// What one operation returned, comparable across engines and the model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Put(i64, KeyValue),
    Delete(i64, Vec<KeyValue>),
    Range(RangeResult),
    Txn(TxnResult),
    Compact,
    Grant,
    Revoke(i64),
    Reopen(i64, i64),
    Err(String),
}

fn to_outcome<T>(r: Result<T, MvccError>, f: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(v) => f(v),
        Err(e) => Outcome::Err(err(e)),
    }
}

/// The reference model: the full key space at every revision.
struct Model {
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compact: i64,
    leases: BTreeSet<i64>,
}

impl Model {
    fn new() -> Self {
        // states[r] = the key space at revision r; revision 1 is the empty store.
        Model {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            compact: -1,
            leases: BTreeSet::new(),
        }
    }
    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }
    fn cur(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        &self.states[self.states.len() - 1]
    }
    fn put_into(
        state: &mut BTreeMap<Vec<u8>, KeyValue>,
        rev: i64,
        k: &[u8],
        v: &[u8],
        l: i64,
    ) -> KeyValue {
        let kv = match state.get(k) {
            Some(old) => KeyValue {
                key: k.to_vec(),
                value: v.to_vec(),
                create_revision: old.create_revision,
                mod_revision: rev,
                version: old.version + 1,
                lease: l,
            },
            None => KeyValue {
                key: k.to_vec(),
                value: v.to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: l,
            },
        };
        state.insert(k.to_vec(), kv.clone());
        kv
    }
    fn delete_from(state: &mut BTreeMap<Vec<u8>, KeyValue>, range: &KeyRange) -> Vec<KeyValue> {
        let keys: Vec<Vec<u8>> = state
            .keys()
            .filter(|k| range.contains(k))
            .cloned()
            .collect();
        keys.iter().filter_map(|k| state.remove(k)).collect()
    }
    fn apply(&mut self, op: &Op) -> Outcome {
        let next = self.rev() + 1;
        match op {
            Op::Put(k, v, l) => {
                if *l != 0 && !self.leases.contains(l) {
                    return Outcome::Err(err(MvccError::LeaseNotFound(*l)));
                }
                let mut s = self.cur().clone();
                let kv = Self::put_into(&mut s, next, KEYS[*k].as_bytes(), &value(*v), *l);
                self.states.push(s);
                Outcome::Put(next, kv)
            }
            Op::Delete(k, e) => {
                let range = KeyRange::new(KEYS[*k].as_bytes(), &end_bytes(*e));
                let mut s = self.cur().clone();
                let deleted = Self::delete_from(&mut s, &range);
                if deleted.is_empty() {
                    return Outcome::Delete(self.rev(), deleted);
                }
                self.states.push(s);
                Outcome::Delete(next, deleted)
            }
            Op::Range(k, e, back, limit) => {
                let cur = self.rev();
                let rev = if *back < 0 { cur + 1 } else { cur - back };
                Outcome::Range(
                    match self.range(KEYS[*k].as_bytes(), &end_bytes(*e), rev, *limit) {
                        Ok(r) => r,
                        Err(e) => return Outcome::Err(e),
                    },
                )
            }
            Op::Txn(k, ver, succ, fail) => {
                let holds = self
                    .cur()
                    .get(KEYS[*k].as_bytes())
                    .map_or(0, |kv| kv.version)
                    == *ver;
                let ws = if holds { succ } else { fail };
                // Duplicate-key check (single-key deletes and puts).
                for side in [succ, fail] {
                    let mut p = BTreeSet::new();
                    // A from-key delete is the raw interval [k, "\0"): it conflicts with nothing.
                    let d: BTreeSet<usize> =
                        side.iter().filter(|w| w.0 == 1).map(|w| w.1).collect();
                    for w in side.iter().filter(|w| w.0 == 0) {
                        if !p.insert(w.1) || d.contains(&w.1) {
                            return Outcome::Err(err(MvccError::DuplicateKey));
                        }
                    }
                }
                let mut s = self.cur().clone();
                let mut changed = false;
                let mut responses = Vec::new();
                for &(kind, k, v) in ws {
                    if kind == 0 {
                        let kv = Self::put_into(&mut s, next, KEYS[k].as_bytes(), &value(v), 0);
                        changed = true;
                        responses.push(TxnOpResponse::Put(kv));
                    } else {
                        let key = KEYS[k].as_bytes().to_vec();
                        let range = if kind == 1 {
                            KeyRange::Single(key)
                        } else {
                            KeyRange::From(key)
                        };
                        let d = Self::delete_from(&mut s, &range);
                        changed |= !d.is_empty();
                        responses.push(TxnOpResponse::DeleteRange(d));
                    }
                }
                let revision = if changed {
                    self.states.push(s);
                    next
                } else {
                    self.rev()
                };
                Outcome::Txn(TxnResult {
                    succeeded: holds,
                    revision,
                    responses,
                })
            }
            Op::Compact(back) => {
                let c = self.rev() - back;
                if c <= self.compact {
                    return Outcome::Err(err(MvccError::Compacted));
                }
                self.compact = c;
                Outcome::Compact
            }
            Op::Grant(id) => {
                if !self.leases.insert(*id) {
                    return Outcome::Err(err(MvccError::LeaseExists(*id)));
                }
                Outcome::Grant
            }
            Op::Revoke(id) => {
                if !self.leases.remove(id) {
                    return Outcome::Err(err(MvccError::LeaseNotFound(*id)));
                }
                let mut s = self.cur().clone();
                let keys: Vec<Vec<u8>> = s
                    .values()
                    .filter(|kv| kv.lease == *id)
                    .map(|kv| kv.key.clone())
                    .collect();
                if keys.is_empty() {
                    return Outcome::Revoke(self.rev());
                }
                for k in keys {
                    s.remove(&k);
                }
                self.states.push(s);
                Outcome::Revoke(next)
            }
            Op::Reopen => Outcome::Reopen(self.rev(), self.compact),
        }
    }
    fn range(&self, key: &[u8], end: &[u8], rev: i64, limit: i64) -> Result<RangeResult, String> {
        let cur = self.rev();
        if rev > cur {
            return Err(err(MvccError::FutureRevision));
        }
        let at = if rev <= 0 { cur } else { rev };
        if at < self.compact {
            return Err(err(MvccError::Compacted));
        }
        let range = KeyRange::new(key, end);
        let all: Vec<KeyValue> = self.states[at as usize]
            .values()
            .filter(|kv| range.contains(&kv.key))
            .cloned()
            .collect();
        let count = all.len() as i64;
        let kvs = if limit > 0 {
            all.into_iter().take(limit as usize).collect()
        } else {
            all
        };
        Ok(RangeResult {
            kvs,
            more: limit > 0 && count > limit,
            count,
            revision: cur,
        })
    }
}

struct Engine {
    kind: BackendKind,
    _dir: tempfile::TempDir,
    config: BackendConfig,
    store: Option<MvccStore<AnyBackend>>,
    reopen: bool,
    /// The store's row budget (`StoreConfig::with_row_cache_bytes`).
    rows: usize,
    /// Whether the store keeps the key-ordered copy of the current rows
    /// (`StoreConfig::with_key_ordered_copy`).
    copy: bool,
}

impl Engine {
    fn new(kind: BackendKind, reopen: bool, rows: usize, copy: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = BackendConfig::new(dir.path().join("db"));
        let store = Self::open(kind, &config, rows, copy);
        Engine {
            kind,
            _dir: dir,
            config,
            store: Some(store),
            reopen,
            rows,
            copy,
        }
    }
    fn open(
        kind: BackendKind,
        config: &BackendConfig,
        rows: usize,
        copy: bool,
    ) -> MvccStore<AnyBackend> {
        let backend = AnyBackend::open(kind, config.clone()).unwrap();
        let store = StoreConfig::default()
            .with_row_cache_bytes(rows)
            .with_key_ordered_copy(copy);
        MvccStore::with_config(backend, store).unwrap()
    }
    fn store(&self) -> &MvccStore<AnyBackend> {
        self.store.as_ref().unwrap()
    }
    fn apply(&mut self, op: &Op) -> Outcome {
        let s = self.store();
        match op {
            Op::Put(k, v, l) => {
                to_outcome(s.put(KEYS[*k].as_bytes(), &value(*v), *l), |(r, kv)| {
                    Outcome::Put(r, kv)
                })
            }
            Op::Delete(k, e) => to_outcome(
                s.delete_range(KEYS[*k].as_bytes(), &end_bytes(*e)),
                |(r, d)| Outcome::Delete(r, d),
            ),
            Op::Range(k, e, back, limit) => {
                let cur = s.current_revision();
                let rev = if *back < 0 { cur + 1 } else { cur - back };
                to_outcome(
                    s.range(KEYS[*k].as_bytes(), &end_bytes(*e), rev, *limit, false),
                    Outcome::Range,
                )
            }
            Op::Txn(k, ver, succ, fail) => to_outcome(
                s.txn(
                    &[Compare::version(KEYS[*k], CompareOp::Equal, *ver)],
                    &txn_ops(succ),
                    &txn_ops(fail),
                ),
                Outcome::Txn,
            ),
            Op::Compact(back) => {
                to_outcome(s.compact(s.current_revision() - back), |_| Outcome::Compact)
            }
            Op::Grant(id) => to_outcome(s.lease_grant(*id, 600), |_| Outcome::Grant),
            Op::Revoke(id) => to_outcome(s.lease_revoke(*id), Outcome::Revoke),
            Op::Reopen => {
                if self.reopen {
                    let store = self.store.take().unwrap();
                    store.backend().close().unwrap();
                    drop(store);
                    self.store = Some(Self::open(self.kind, &self.config, self.rows, self.copy));
                }
                let s = self.store();
                Outcome::Reopen(s.current_revision(), s.compact_revision())
            }
        }
    }
    /// The rows of the copy of the current rows (`index` tree).
    fn copy(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.store()
            .backend()
            .scan(storage_api::Tree::Index, &[], &[], 0)
            .unwrap()
    }
    /// Every readable revision of the whole key space.
    fn history(&self) -> Vec<Result<Vec<KeyValue>, String>> {
        let s = self.store();
        (1..=s.current_revision())
            .map(|r| {
                s.range(b"\0", b"\0", r, 0, false)
                    .map(|r| r.kvs)
                    .map_err(err)
            })
            .collect()
    }
}

/// The copy of the current rows a store holding `live` must have.
fn copy_of(live: &BTreeMap<Vec<u8>, KeyValue>) -> Vec<(Vec<u8>, Vec<u8>)> {
    live.values()
        .map(|kv| (mvcc_core::store::copy_key(&kv.key), kv.encode()))
        .collect()
}

/// Runs `ops` on the model and on every compiled engine (with and without reopening, and with
/// a row budget whose index share holds two of the five keys' current rows, so writes evict
/// them) and checks
/// that every result, the full history, the events and the lease attachments agree.
fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    let mut engines: Vec<Engine> = compiled_backends()
        .into_iter()
        .flat_map(|k| {
            [
                Engine::new(k, false, 0, false),
                Engine::new(k, true, 0, true),
                Engine::new(k, true, 400, true),
            ]
        })
        .collect();
    for (i, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        for e in &mut engines {
            let got = e.apply(op);
            prop_assert_eq!(
                &got,
                &want,
                "op #{} {:?} on {} (reopen={}, rows={})",
                i,
                op,
                e.kind,
                e.reopen,
                e.rows
            );
            // The copy of the current rows in the engine: exactly the model's live keys (none
            // without the copy).
            let want_copy = if e.copy {
                copy_of(model.cur())
            } else {
                Vec::new()
            };
            prop_assert_eq!(
                e.copy(),
                want_copy,
                "copy of the current rows after op #{} {:?} on {} (reopen={}, rows={})",
                i,
                op,
                e.kind,
                e.reopen,
                e.rows
            );
        }
    }
    let want: Vec<Result<Vec<KeyValue>, String>> = (1..=model.rev())
        .map(|r| model.range(b"\0", b"\0", r, 0).map(|r| r.kvs))
        .collect();
    let start = model.compact.max(1);
    let events = engines[0].store().watch_events(start).unwrap();
    let leases: Vec<_> = model
        .leases
        .iter()
        .map(|id| engines[0].store().lease_time_to_live(*id).unwrap().keys)
        .collect();
    for e in &engines {
        prop_assert_eq!(
            e.history(),
            want.clone(),
            "history on {} (reopen={}, rows={})",
            e.kind,
            e.reopen,
            e.rows
        );
        prop_assert_eq!(
            e.store().watch_events(start).unwrap(),
            events.clone(),
            "events on {}",
            e.kind
        );
        let got: Vec<_> = model
            .leases
            .iter()
            .map(|id| e.store().lease_time_to_live(*id).unwrap().keys)
            .collect();
        prop_assert_eq!(got, leases.clone(), "lease attachments on {}", e.kind);
        e.store().backend().close().unwrap();
    }
    Ok(())
}

#[test]
fn delete_and_recreate_inside_the_compaction_revision() {
    // etcd issue #22376 through the API: a from-key delete and a put of an existing key in one
    // txn, then compact at exactly that revision.
    let ops = [
        Op::Put(3, 1, 0),
        Op::Txn(0, 9, vec![], vec![(2, 3, 0), (0, 3, 2)]),
        Op::Compact(0),
        Op::Range(3, End::Single, 0, 0),
        Op::Reopen,
        Op::Range(0, End::FromKey, 0, 0),
    ];
    check(&ops).unwrap();
}

proptest! {
    // PROPTEST_CASES overrides the default of 64 cases (each runs every engine twice).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engines_agree_with_each_other_and_the_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        check(&ops)?;
    }
}
