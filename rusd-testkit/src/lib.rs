//! Dev-only test kit for rusd clusters (issue #11, item 7).
//!
//! * [`linearizability`]: a Wing–Gong–Lowe checker with memoisation (as in Lowe's
//!   "Testing for linearizability" and porcupine), with a register model (read, write,
//!   compare-and-set) and a multi-key KV model checked per key.
//! * [`history`]: a recorder that concurrent clients share to record their operations with
//!   monotonic timestamps, export them to the checker and dump them to JSON.
//! * [`proxy`]: a loopback TCP proxy for one peer link that a test can cut, heal and delay.
//! * [`cluster`]: members of a `rusd` cluster as processes on loopback (etcd's cluster
//!   flags, extra flags such as TLS ones), on top of [`process`].
//! * [`process`]: a harness for a server process: spawn in a directory, capture its output,
//!   SIGKILL, SIGSTOP/SIGCONT, restart, wait for a port.
//!
//! This crate is a dev-dependency only; it is not published.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
pub mod error;
pub mod history;
pub mod linearizability;
pub mod process;
pub mod proxy;

pub use error::{Error, Result};
