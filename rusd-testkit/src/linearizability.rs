//! A linearizability checker: Wing & Gong's search with Lowe's memoisation, as in
//! porcupine (Athalye) and Lowe's "Testing for linearizability" (CCPE 2017).
//!
//! # What is checked
//!
//! A history is a set of [`Operation`]s, each with a client, an input, an invocation time
//! (`call`) and an [`Outcome`]: either [`Outcome::Ok`] with the observed output and a response
//! time (`ret`), or [`Outcome::Info`] when the client does not know whether the operation took
//! effect (a timeout, a lost connection, a killed client). The history is linearizable with
//! respect to a sequential [`Model`] if there is a total order of the operations such that
//!
//! * the order respects real time: if `a.ret < b.call` then `a` comes before `b`;
//! * every `Ok` operation is in it, and the model, run in that order from its initial
//!   state, produces exactly the observed outputs;
//! * every `Info` operation either is left out (it never took effect) or is in it at some
//!   point after its invocation, with whatever output the model gives (its response time is
//!   +infinity).
//!
//! Operations that definitely failed (the server said so before applying them) must simply
//! not be in the history; [`crate::history::History::operations`] leaves them out.
//!
//! Timestamps are compared as integers. Two timestamps that are equal (`a.ret == b.call`)
//! make the operations concurrent, which can only accept more histories, never reject a
//! correct one. [`crate::history::History`] gives every event a distinct timestamp anyway.
//!
//! # The algorithm
//!
//! The call and return events are put in one list sorted by time (calls before returns at
//! equal times). The search walks the list from its head: at a call event it tries to
//! *linearize* that operation now, i.e. step the model with it; if the model accepts, the
//! operation's call and return events are lifted out of the list, the previous state is
//! pushed on a stack, and the walk restarts from the head (the remaining minimal operations).
//! Reaching a return event means that operation has to be linearized before anything
//! later, and nothing that could precede it worked: the search backtracks, popping the last
//! linearized operation, restoring its events and state, and trying the next call after it.
//! The history is linearizable when every `Ok` operation has been linearized, and it is not
//! when the stack is empty at a return event.
//!
//! Info operations have no return event; they are kept out of the list, are candidates
//! from their call on for ever, and are tried only when no completed candidate can be
//! linearized at that point. The search succeeds without them: an info operation never
//! linearized is one that never took effect.
//!
//! Lowe's memoisation keeps the pairs (set of linearized operations as a bitset, model
//! state) already reached: a linearization step that would reach a pair already in the
//! cache is skipped, because the search from that configuration has already been done (or
//! is being done further down the stack) and did not succeed. This makes the search
//! polynomial in practice for register-like models, where many interleavings of concurrent
//! operations reach the same state. For info operations the cache also skips
//! configurations *dominated* by one already reached (same completed operations and state,
//! a superset of info operations linearized): see `Cache` in the source. Without it, every
//! pending info operation would double the search space.
//!
//! Models are deterministic: [`Model::step`] returns the one next state, or `None` when the
//! observed output is impossible in the given state.
//!
//! # P-compositionality
//!
//! Linearizability is local (Herlihy & Wing): a history over independent objects is
//! linearizable iff its restriction to each object is. [`check_partitioned`] splits a
//! history by a key function and checks each part independently (as porcupine's
//! `Partition`); [`check_kv`] does so for [`KvInput`] histories, key by key. This turns one
//! search over all operations into many small ones.
//!
//! # Bounds
//!
//! The problem is NP-complete, so the search is bounded by a [`Budget`]: a number of search
//! steps (one step is one candidate examined or one backtrack), counted over all
//! partitions, and a wall-clock limit, checked every 1024 steps. When either runs out the
//! result is [`CheckResult::Unknown`], never a hang and never a false verdict. The memo
//! cache grows with the number of steps (at most one entry per step), so the step budget
//! also bounds memory.
//!
//! Figures for the default budget (10 million steps, 60 s), measured on generated register
//! histories of 1000 operations from 10 clients with up to 10 operations in flight (the
//! `generated` helper of this crate's tests), release build, one core of a shared 2-core
//! machine: all operations completed, under 100 000 steps (a few milliseconds); with one
//! operation in ten an info operation (half of them without effect), 2–5 million steps
//! (0.1–0.2 s). A debug build is about 15 times slower. Info operations are what costs:
//! record `fail` rather than `info` whenever the client knows the request was not applied,
//! and check per key. A history that needs more than the budget is reported as `Unknown`;
//! make it shorter or raise the budget.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A sequential specification of an object.
pub trait Model {
    /// The object's state; hashed into the memoisation cache, so keep it small.
    type State: Clone + Eq + Hash + Debug;
    /// What a client asks.
    type Input: Clone + Debug;
    /// What a client observes.
    type Output: Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. `output` is the observed output, or `None` when it is
    /// unknown (an [`Outcome::Info`] operation): then any output is accepted and only the
    /// effect matters. Returns the next state, or `None` if the observed output is not what
    /// the object would have produced in `state` (the operation cannot be linearized here).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether `input` never changes the state (a read). An [`Outcome::Info`] operation
    /// with such an input constrains nothing and is dropped before the search, which keeps
    /// it from doubling the search space. The default, `false`, is always correct.
    fn is_read_only(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }
}

/// How an operation ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<O> {
    /// The operation completed at time `ret` with `output`.
    Ok {
        /// The observed output.
        output: O,
        /// The response time (same clock as `call`).
        ret: u64,
    },
    /// Unknown: the operation may or may not have taken effect, at any time after its call;
    /// its response time is +infinity.
    Info,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// The client (process, thread) that issued it; informative only.
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// The invocation time.
    pub call: u64,
    /// How it ended.
    pub outcome: Outcome<O>,
}

impl<I, O> Operation<I, O> {
    /// A completed operation.
    pub fn ok(client: u64, input: I, call: u64, ret: u64, output: O) -> Self {
        Operation {
            client,
            input,
            call,
            outcome: Outcome::Ok { output, ret },
        }
    }

    /// An operation with an unknown outcome.
    pub fn info(client: u64, input: I, call: u64) -> Self {
        Operation {
            client,
            input,
            call,
            outcome: Outcome::Info,
        }
    }

    /// The observed output, `None` for an [`Outcome::Info`] operation.
    pub fn output(&self) -> Option<&O> {
        match &self.outcome {
            Outcome::Ok { output, .. } => Some(output),
            Outcome::Info => None,
        }
    }

    /// The response time, `None` (+infinity) for an [`Outcome::Info`] operation.
    pub fn ret(&self) -> Option<u64> {
        match &self.outcome {
            Outcome::Ok { ret, .. } => Some(*ret),
            Outcome::Info => None,
        }
    }
}

/// Bounds on a check; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Maximum search steps over all partitions.
    pub max_steps: u64,
    /// Maximum wall-clock time, `None` for no limit.
    pub max_time: Option<Duration>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_steps: 10_000_000,
            max_time: Some(Duration::from_secs(60)),
        }
    }
}

/// Why a history is not linearizable, for debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The partition (key) that failed, formatted with `Debug`; `None` for an unpartitioned
    /// check.
    pub partition: Option<String>,
    /// Indices (into the checked history) of the longest sequence of operations the search
    /// could linearize, in linearization order.
    pub longest_prefix: Vec<usize>,
    /// Index of the operation whose response was reached with that prefix without it being
    /// linearizable: the first operation that cannot be explained.
    pub stuck_at: Option<usize>,
}

/// The verdict of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists.
    NotLinearizable(Violation),
    /// The budget ran out before a verdict.
    Unknown {
        /// Steps done.
        steps: u64,
        /// Time spent.
        elapsed: Duration,
    },
}

impl CheckResult {
    /// Whether the verdict is [`CheckResult::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }

    /// Whether the verdict is [`CheckResult::NotLinearizable`].
    pub fn is_violation(&self) -> bool {
        matches!(self, CheckResult::NotLinearizable(_))
    }
}

/// Checks a whole history against `model` as one object.
///
/// Fails with [`Error::InvalidHistory`] if an operation responds before it is invoked.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: Budget,
) -> Result<CheckResult> {
    validate(history)?;
    let mut meter = Meter::new(budget);
    let all: Vec<usize> = (0..history.len()).collect();
    Ok(match search(model, history, &all, &mut meter) {
        Part::Linearizable => CheckResult::Linearizable,
        Part::Violation {
            longest_prefix,
            stuck_at,
        } => CheckResult::NotLinearizable(Violation {
            partition: None,
            longest_prefix,
            stuck_at,
        }),
        Part::OutOfBudget => meter.unknown(),
    })
}

/// Checks a history of independent objects: splits it by `key`, and checks each part
/// against `model` as one object (smallest parts first, then by key). The verdict is
/// [`CheckResult::NotLinearizable`] as soon as one part is, otherwise
/// [`CheckResult::Unknown`] if any part ran out of budget, otherwise linearizable.
///
/// Fails with [`Error::InvalidHistory`] if an operation responds before it is invoked.
pub fn check_partitioned<M, K, F>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    key: F,
    budget: Budget,
) -> Result<CheckResult>
where
    M: Model,
    K: Eq + Hash + Debug,
    F: Fn(&M::Input) -> K,
{
    validate(history)?;
    let mut parts: HashMap<K, Vec<usize>> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        parts.entry(key(&op.input)).or_default().push(i);
    }
    let mut parts: Vec<(K, Vec<usize>)> = parts.into_iter().collect();
    // Smallest first (a violation is found sooner), ties by key for a deterministic report.
    parts.sort_by_cached_key(|(k, ops)| (ops.len(), format!("{k:?}")));
    let mut meter = Meter::new(budget);
    let mut unknown = false;
    for (k, ops) in &parts {
        match search(model, history, ops, &mut meter) {
            Part::Linearizable => {}
            Part::Violation {
                longest_prefix,
                stuck_at,
            } => {
                return Ok(CheckResult::NotLinearizable(Violation {
                    partition: Some(format!("{k:?}")),
                    longest_prefix,
                    stuck_at,
                }))
            }
            Part::OutOfBudget => {
                unknown = true;
                if meter.exhausted() {
                    break;
                }
            }
        }
    }
    Ok(if unknown {
        meter.unknown()
    } else {
        CheckResult::Linearizable
    })
}

fn validate<I, O>(history: &[Operation<I, O>]) -> Result<()> {
    for (i, op) in history.iter().enumerate() {
        if let Some(ret) = op.ret() {
            if ret < op.call {
                return Err(Error::InvalidHistory(format!(
                    "operation {i} responds at {ret} before its call at {}",
                    op.call
                )));
            }
        }
    }
    Ok(())
}

struct Meter {
    budget: Budget,
    start: Instant,
    steps: u64,
    out_of_time: bool,
}

impl Meter {
    fn new(budget: Budget) -> Self {
        Meter {
            budget,
            start: Instant::now(),
            steps: 0,
            out_of_time: false,
        }
    }

    /// Counts one step; false when the budget is exhausted.
    fn tick(&mut self) -> bool {
        if self.exhausted() {
            return false;
        }
        self.steps += 1;
        if self.steps.is_multiple_of(1024) {
            if let Some(max) = self.budget.max_time {
                if self.start.elapsed() >= max {
                    self.out_of_time = true;
                }
            }
        }
        true
    }

    fn exhausted(&self) -> bool {
        self.out_of_time || self.steps >= self.budget.max_steps
    }

    fn unknown(&self) -> CheckResult {
        CheckResult::Unknown {
            steps: self.steps,
            elapsed: self.start.elapsed(),
        }
    }
}

enum Part {
    Linearizable,
    Violation {
        longest_prefix: Vec<usize>,
        stuck_at: Option<usize>,
    },
    OutOfBudget,
}

const NONE: usize = usize::MAX;

struct Entry {
    /// Index into the partition's operation list.
    op: usize,
    /// Call event (true) or return event.
    is_call: bool,
    /// For a call: its return entry.
    matching: usize,
    /// The event's time.
    time: u64,
}

/// A doubly linked list of entries over index arrays; `head` is a sentinel. Lifting and
/// unlifting in LIFO order is Knuth's dancing links.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl List {
    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NONE {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NONE {
            self.prev[n] = e;
        }
    }
}

/// Lowe's memo, extended for info operations: configurations reached, keyed by (completed
/// operations linearized, state), each with the sets of info operations linearized.
///
/// Info operations are optional (they may never have taken effect), so a configuration
/// (S, I', s) with I' ⊇ I is *dominated* by (S, I, s): every way to finish from the former
/// (linearizing the remaining operations but not I' \ I) is a way to finish from the
/// latter, which simply leaves those info operations out. A configuration dominated by
/// one already reached is skipped. Plain WGL memoisation (skip only equal sets) would
/// explore again every configuration with an unobserved info write placed just before an
/// overwriting write, doubling the search space for each pending info operation.
type Cache<S> = HashMap<(BitSet, S), Vec<BitSet>>;

/// Records the configuration; false if it is dominated by one already reached.
fn remember<S: Clone + Eq + Hash>(
    cache: &mut Cache<S>,
    done_ok: &BitSet,
    done_info: &BitSet,
    state: &S,
) -> bool {
    let seen = cache.entry((done_ok.clone(), state.clone())).or_default();
    if seen.iter().any(|earlier| earlier.is_subset(done_info)) {
        return false;
    }
    // Keep the sets an antichain: those the new one dominates are redundant.
    seen.retain(|earlier| !done_info.is_subset(earlier));
    seen.push(done_info.clone());
    true
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BitSet(Box<[u64]>);

impl BitSet {
    fn new(n: usize) -> Self {
        BitSet(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn is_subset(&self, of: &BitSet) -> bool {
        self.0.iter().zip(of.0.iter()).all(|(a, b)| a & !b == 0)
    }
}

/// Where the search looks for the next operation to linearize.
#[derive(Clone, Copy)]
enum Cursor {
    /// At this entry of the list of completed operations' events.
    Completed(usize),
    /// Among the info operations invoked before the first pending return event `stop`
    /// (`NONE`: the end of the list): the candidates are `infos[..upto]`, tried in order;
    /// `infos[i]` is the next one.
    Info { i: usize, upto: usize, stop: usize },
}

/// The WGL search over the operations `ids` (indices into `history`) of one partition.
///
/// Completed operations are in the doubly linked event list of Lowe's algorithm. Info
/// operations are not: their response is at +infinity, so they never end a scan, and
/// keeping them in the list would make every scan walk past all of them. They are kept
/// apart, sorted by call time, and are candidates only when no completed candidate works
/// (see [`Cursor`]): the info operations invoked before the first pending response, oldest
/// first (measured faster than newest first on generated histories). The order changes
/// only the speed, never the verdict.
fn search<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    ids: &[usize],
    meter: &mut Meter,
) -> Part {
    // Info operations that cannot change the state constrain nothing: leave them out.
    let ids: Vec<usize> = ids
        .iter()
        .copied()
        .filter(|&i| history[i].ret().is_some() || !model.is_read_only(&history[i].input))
        .collect();
    let ops: Vec<&Operation<M::Input, M::Output>> = ids.iter().map(|&i| &history[i]).collect();
    let n = ops.len();

    // Completed operations: events sorted by time, calls before returns at equal times.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    // Info operations: (call, local index), sorted by call.
    let mut infos: Vec<(u64, usize)> = Vec::new();
    for (k, op) in ops.iter().enumerate() {
        match op.ret() {
            Some(ret) => {
                events.push((op.call, true, k));
                events.push((ret, false, k));
            }
            None => infos.push((op.call, k)),
        }
    }
    events.sort_by_key(|&(t, is_call, k)| (t, !is_call, k));
    infos.sort_unstable();
    let mut return_entry = vec![NONE; n];
    for (idx, &(_, is_call, k)) in events.iter().enumerate() {
        if !is_call {
            return_entry[k] = idx;
        }
    }
    let entries: Vec<Entry> = events
        .iter()
        .map(|&(time, is_call, k)| Entry {
            op: k,
            is_call,
            matching: if is_call { return_entry[k] } else { NONE },
            time,
        })
        .collect();
    let m = entries.len();
    let head = m;
    let mut list = List {
        next: (1..=m).map(|i| if i == m { NONE } else { i }).collect(),
        prev: (0..m).map(|i| if i == 0 { head } else { i - 1 }).collect(),
        head,
    };
    list.next.push(if m == 0 { NONE } else { 0 });
    list.prev.push(NONE);

    let mut remaining = m / 2;
    let mut state = model.init();
    let mut done_ok = BitSet::new(n);
    let mut done_info = BitSet::new(infos.len());
    let mut cache: Cache<M::State> = HashMap::new();
    // Stack frames: (choice made, state before it, cursor to resume from after undoing it).
    let mut stack: Vec<(Cursor, M::State)> = Vec::new();
    let mut best: (Vec<usize>, Option<usize>) = (Vec::new(), None);
    let mut cursor = Cursor::Completed(list.next[list.head]);

    loop {
        if remaining == 0 {
            return Part::Linearizable;
        }
        if !meter.tick() {
            return Part::OutOfBudget;
        }
        match cursor {
            Cursor::Completed(entry) if entry != NONE && entries[entry].is_call => {
                let e = &entries[entry];
                let op = ops[e.op];
                if let Some(next_state) = model.step(&state, &op.input, op.output()) {
                    done_ok.set(e.op);
                    if remember(&mut cache, &done_ok, &done_info, &next_state) {
                        stack.push((cursor, std::mem::replace(&mut state, next_state)));
                        remaining -= 1;
                        list.unlink(entry);
                        list.unlink(e.matching);
                        cursor = Cursor::Completed(list.next[list.head]);
                        continue;
                    }
                    done_ok.clear(e.op);
                }
                cursor = Cursor::Completed(list.next[entry]);
            }
            Cursor::Completed(stop) => {
                // The first pending response (or the end): no completed candidate is left,
                // try the info operations invoked before it.
                let limit = if stop == NONE {
                    u64::MAX
                } else {
                    entries[stop].time
                };
                let upto = infos.partition_point(|&(call, _)| call <= limit);
                cursor = Cursor::Info { i: 0, upto, stop };
            }
            Cursor::Info { i, upto, stop } if i < upto => {
                let pos = i;
                cursor = Cursor::Info {
                    i: i + 1,
                    upto,
                    stop,
                };
                let k = infos[pos].1;
                if done_info.get(pos) {
                    continue;
                }
                if let Some(next_state) = model.step(&state, &ops[k].input, None) {
                    done_info.set(pos);
                    if remember(&mut cache, &done_ok, &done_info, &next_state) {
                        stack.push((
                            Cursor::Info { i, upto, stop },
                            std::mem::replace(&mut state, next_state),
                        ));
                        cursor = Cursor::Completed(list.next[list.head]);
                        continue;
                    }
                    done_info.clear(pos);
                }
            }
            Cursor::Info { stop, .. } => {
                // Nothing that may precede the pending response `stop` can be linearized
                // next: undo the last choice.
                if stack.len() > best.0.len() || best.1.is_none() {
                    let prefix = stack
                        .iter()
                        .map(|(choice, _)| match *choice {
                            Cursor::Completed(entry) => ids[entries[entry].op],
                            Cursor::Info { i, .. } => ids[infos[i].1],
                        })
                        .collect();
                    best = (prefix, (stop != NONE).then(|| ids[entries[stop].op]));
                }
                let Some((choice, old)) = stack.pop() else {
                    return Part::Violation {
                        longest_prefix: best.0,
                        stuck_at: best.1,
                    };
                };
                state = old;
                match choice {
                    Cursor::Completed(entry) => {
                        let e = &entries[entry];
                        done_ok.clear(e.op);
                        remaining += 1;
                        list.relink(e.matching);
                        list.relink(entry);
                        cursor = Cursor::Completed(list.next[entry]);
                    }
                    Cursor::Info { i, upto, stop } => {
                        done_info.clear(i);
                        cursor = Cursor::Info {
                            i: i + 1,
                            upto,
                            stop,
                        };
                    }
                }
            }
        }
    }
}

/// An input to a [`Register`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RegisterInput<V> {
    /// Read the value (`None` when absent).
    Read,
    /// Set the value.
    Write(V),
    /// Remove the value (etcd's delete); answered with [`RegisterOutput::Written`].
    Delete,
    /// Set the value to `new` if it is `expected` (`None`: if absent, as etcd's
    /// `create_revision == 0` guard); answered with [`RegisterOutput::Cas`].
    Cas {
        /// The value required for the swap.
        expected: Option<V>,
        /// The value written on success.
        new: V,
    },
}

/// An output of a [`Register`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RegisterOutput<V> {
    /// The value read.
    Read(Option<V>),
    /// A write or delete completed.
    Written,
    /// Whether a compare-and-set swapped (a failed CAS is a completed operation that
    /// observed a different value).
    Cas(bool),
}

/// A single register with read, write, delete and compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Register<V> {
    /// The value before any operation (`None`: absent).
    pub initial: Option<V>,
}

impl<V: Clone + Eq + Hash + Debug> Model for Register<V> {
    type State = Option<V>;
    type Input = RegisterInput<V>;
    type Output = RegisterOutput<V>;

    fn init(&self) -> Option<V> {
        self.initial.clone()
    }

    fn step(
        &self,
        state: &Option<V>,
        input: &RegisterInput<V>,
        output: Option<&RegisterOutput<V>>,
    ) -> Option<Option<V>> {
        register_step(state, input, output)
    }

    fn is_read_only(&self, input: &RegisterInput<V>) -> bool {
        matches!(input, RegisterInput::Read)
    }
}

fn register_step<V: Clone + Eq>(
    state: &Option<V>,
    input: &RegisterInput<V>,
    output: Option<&RegisterOutput<V>>,
) -> Option<Option<V>> {
    use RegisterInput as I;
    use RegisterOutput as O;
    match (input, output) {
        (I::Read, None) => Some(state.clone()),
        (I::Read, Some(O::Read(v))) => (v == state).then(|| state.clone()),
        (I::Write(v), None | Some(O::Written)) => Some(Some(v.clone())),
        (I::Delete, None | Some(O::Written)) => Some(None),
        (I::Cas { expected, new }, None) => Some(if state == expected {
            Some(new.clone())
        } else {
            state.clone()
        }),
        (I::Cas { expected, new }, Some(O::Cas(true))) => {
            (state == expected).then(|| Some(new.clone()))
        }
        (I::Cas { expected, .. }, Some(O::Cas(false))) => {
            (state != expected).then(|| state.clone())
        }
        _ => None,
    }
}

/// An input to a multi-key store: a register operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KvInput<K, V> {
    /// The key.
    pub key: K,
    /// The operation on that key's register.
    pub op: RegisterInput<V>,
}

/// A multi-key store of independent registers, all initially absent. Its state is one
/// key's value: check it only with [`check_kv`] (or [`check_partitioned`] by key), which
/// gives it the operations of one key at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv<K, V> {
    _marker: std::marker::PhantomData<(K, V)>,
}

impl<K, V> Default for Kv<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> Kv<K, V> {
    /// The model.
    pub fn new() -> Self {
        Kv {
            _marker: std::marker::PhantomData,
        }
    }
}

impl<K: Clone + Debug, V: Clone + Eq + Hash + Debug> Model for Kv<K, V> {
    type State = Option<V>;
    type Input = KvInput<K, V>;
    type Output = RegisterOutput<V>;

    fn init(&self) -> Option<V> {
        None
    }

    fn step(
        &self,
        state: &Option<V>,
        input: &KvInput<K, V>,
        output: Option<&RegisterOutput<V>>,
    ) -> Option<Option<V>> {
        register_step(state, &input.op, output)
    }

    fn is_read_only(&self, input: &KvInput<K, V>) -> bool {
        matches!(input.op, RegisterInput::Read)
    }
}

/// Checks a multi-key history key by key (every key initially absent).
///
/// Fails with [`Error::InvalidHistory`] if an operation responds before it is invoked.
pub fn check_kv<K, V>(
    history: &[Operation<KvInput<K, V>, RegisterOutput<V>>],
    budget: Budget,
) -> Result<CheckResult>
where
    K: Clone + Eq + Hash + Debug,
    V: Clone + Eq + Hash + Debug,
{
    check_partitioned(&Kv::new(), history, |input| input.key.clone(), budget)
}
