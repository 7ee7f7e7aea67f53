//! A history recorder shared by concurrent clients.
//!
//! ```
//! use rusd_testkit::history::History;
//! use rusd_testkit::linearizability::{check, Budget, Register, RegisterInput, RegisterOutput};
//!
//! let history: History<RegisterInput<u64>, RegisterOutput<u64>> = History::new();
//! let h = history.clone(); // one clone per client thread or task
//! let op = h.invoke(1, RegisterInput::Write(7));
//! // ... send the request, await the answer ...
//! op.ok(RegisterOutput::Written);
//! let op = h.invoke(2, RegisterInput::Read);
//! op.ok(RegisterOutput::Read(Some(7)));
//! let verdict = check(&Register { initial: None }, &history.operations(), Budget::default()).unwrap();
//! assert!(verdict.is_linearizable());
//! ```
//!
//! Every event (invocation, completion) gets a timestamp from one logical clock that is
//! advanced under the recorder's lock, so timestamps are unique, strictly increasing, and
//! consistent with real time: an operation completed (its `ok` returned) before another
//! was invoked has the smaller timestamp. Each event also carries the nanoseconds since the
//! recorder was created (monotonic clock) for reading the JSON dump.
//!
//! Record the invocation *before* sending the request and the completion *after* the answer
//! arrives. A client that does not know whether its request took effect (timeout, lost
//! connection) calls [`OpHandle::info`]; one that knows it did not (the request was refused
//! before being applied) calls [`OpHandle::fail`]. A handle dropped without either is
//! recorded as `info`, and so is an operation still pending when the history is exported.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::linearizability::{CheckResult, Operation};

/// How a recorded operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status<O> {
    /// Not completed yet.
    Pending,
    /// Completed with an output.
    Ok {
        /// The observed output.
        output: O,
        /// Logical completion time.
        ret: u64,
        /// Nanoseconds since the recorder was created.
        ret_nanos: u64,
    },
    /// Definitely did not take effect; left out of [`History::operations`].
    Fail {
        /// Logical completion time.
        ret: u64,
        /// Nanoseconds since the recorder was created.
        ret_nanos: u64,
    },
    /// Unknown whether it took effect.
    Info {
        /// Logical time the client gave up.
        ret: u64,
        /// Nanoseconds since the recorder was created.
        ret_nanos: u64,
    },
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<I, O> {
    /// Position in the recorder, in invocation order.
    pub id: usize,
    /// The client that issued it.
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// Logical invocation time.
    pub call: u64,
    /// Nanoseconds since the recorder was created.
    pub call_nanos: u64,
    /// How it ended.
    pub status: Status<O>,
}

struct State<I, O> {
    clock: u64,
    records: Vec<Record<I, O>>,
}

struct Inner<I, O> {
    start: Instant,
    state: Mutex<State<I, O>>,
}

/// A shared, thread-safe history recorder; clones share the same history.
pub struct History<I, O> {
    inner: Arc<Inner<I, O>>,
}

impl<I, O> Clone for History<I, O> {
    fn clone(&self) -> Self {
        History {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> History<I, O> {
    /// An empty history; its clock starts now.
    pub fn new() -> Self {
        History {
            inner: Arc::new(Inner {
                start: Instant::now(),
                state: Mutex::new(State {
                    clock: 0,
                    records: Vec::new(),
                }),
            }),
        }
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records the invocation of `input` by `client`; complete it through the handle.
    pub fn invoke(&self, client: u64, input: I) -> OpHandle<I, O> {
        let mut state = self.inner.state.lock();
        state.clock += 1;
        let call = state.clock;
        let id = state.records.len();
        let call_nanos = self.nanos();
        state.records.push(Record {
            id,
            client,
            input,
            call,
            call_nanos,
            status: Status::Pending,
        });
        OpHandle {
            history: self.clone(),
            id,
            done: false,
        }
    }

    fn complete(&self, id: usize, make: impl FnOnce(u64, u64) -> Status<O>) {
        let mut state = self.inner.state.lock();
        state.clock += 1;
        let ret = state.clock;
        let nanos = self.nanos();
        if let Some(record) = state.records.get_mut(id) {
            record.status = make(ret, nanos);
        }
    }

    /// The number of recorded operations (all statuses).
    pub fn len(&self) -> usize {
        self.inner.state.lock().records.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<I: Clone, O: Clone> History<I, O> {
    /// A copy of every record, in invocation order.
    pub fn records(&self) -> Vec<Record<I, O>> {
        self.inner.state.lock().records.clone()
    }

    /// The history for the checker: completed operations as [`Operation::ok`], unknown and
    /// still pending ones as [`Operation::info`], failed ones left out.
    pub fn operations(&self) -> Vec<Operation<I, O>> {
        to_operations(&self.inner.state.lock().records)
    }
}

/// The checker's view of records, as [`History::operations`] gives it.
pub fn to_operations<I: Clone, O: Clone>(records: &[Record<I, O>]) -> Vec<Operation<I, O>> {
    records
        .iter()
        .filter_map(|r| match &r.status {
            Status::Ok { output, ret, .. } => Some(Operation::ok(
                r.client,
                r.input.clone(),
                r.call,
                *ret,
                output.clone(),
            )),
            Status::Pending | Status::Info { .. } => {
                Some(Operation::info(r.client, r.input.clone(), r.call))
            }
            Status::Fail { .. } => None,
        })
        .collect()
}

#[derive(Deserialize)]
struct Loaded<I, O> {
    records: Vec<Record<I, O>>,
}

/// Reads the records of a dump written by [`History::dump_json`] or
/// [`History::dump_json_on_failure`], e.g. to check it again with a larger budget:
/// `check(&model, &to_operations(&load_json(path)?), budget)`.
pub fn load_json<I: DeserializeOwned, O: DeserializeOwned>(
    path: &Path,
) -> Result<Vec<Record<I, O>>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading history from {}", path.display()), e))?;
    let loaded: Loaded<I, O> = serde_json::from_str(&text)?;
    Ok(loaded.records)
}

#[derive(Serialize)]
struct Dump<'a, I, O> {
    verdict: Option<String>,
    records: &'a [Record<I, O>],
}

impl<I: Serialize, O: Serialize> History<I, O> {
    /// The records as pretty-printed JSON (`{"verdict": null, "records": [...]}`).
    pub fn to_json(&self) -> Result<String> {
        self.json_with(None)
    }

    fn json_with(&self, verdict: Option<String>) -> Result<String> {
        let state = self.inner.state.lock();
        Ok(serde_json::to_string_pretty(&Dump {
            verdict,
            records: &state.records,
        })?)
    }

    /// Writes the records as JSON to `path`.
    pub fn dump_json(&self, path: &Path) -> Result<()> {
        let json = self.to_json()?;
        std::fs::write(path, json)
            .map_err(|e| Error::io(format!("writing history to {}", path.display()), e))
    }

    /// Writes the records and the verdict (its `Debug` form) as JSON to `path` unless
    /// `result` is [`CheckResult::Linearizable`]; returns whether it wrote.
    pub fn dump_json_on_failure(&self, result: &CheckResult, path: &Path) -> Result<bool> {
        if result.is_linearizable() {
            return Ok(false);
        }
        let json = self.json_with(Some(format!("{result:?}")))?;
        std::fs::write(path, json)
            .map_err(|e| Error::io(format!("writing history to {}", path.display()), e))?;
        Ok(true)
    }
}

/// An invoked operation; complete it exactly once. Dropping it uncompleted records `info`.
#[must_use = "complete the operation with ok, fail or info"]
pub struct OpHandle<I, O> {
    history: History<I, O>,
    id: usize,
    done: bool,
}

impl<I, O> OpHandle<I, O> {
    /// The record's id in the history.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The operation completed with `output`.
    pub fn ok(mut self, output: O) {
        self.done = true;
        self.history.complete(self.id, |ret, ret_nanos| Status::Ok {
            output,
            ret,
            ret_nanos,
        });
    }

    /// The operation definitely did not take effect.
    pub fn fail(mut self) {
        self.done = true;
        self.history
            .complete(self.id, |ret, ret_nanos| Status::Fail { ret, ret_nanos });
    }

    /// It is unknown whether the operation took effect.
    pub fn info(mut self) {
        self.done = true;
        self.history
            .complete(self.id, |ret, ret_nanos| Status::Info { ret, ret_nanos });
    }
}

impl<I, O> Drop for OpHandle<I, O> {
    fn drop(&mut self) {
        if !self.done {
            self.history
                .complete(self.id, |ret, ret_nanos| Status::Info { ret, ret_nanos });
        }
    }
}
