//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in the test kit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Sending a signal to a process failed.
    #[error("sending {signal} to pid {pid}: {source}")]
    Signal {
        /// The signal's name (`SIGKILL`, `SIGSTOP`, `SIGCONT`).
        signal: &'static str,
        /// The target process.
        pid: u32,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },
    /// Something did not happen within its time bound.
    #[error("timed out after {after:?}: {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long was waited.
        after: Duration,
    },
    /// An operation is not allowed in the current state (e.g. pausing an exited process).
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// A history handed to the checker is malformed (e.g. a response before its call).
    #[error("invalid history: {0}")]
    InvalidHistory(String),
    /// Encoding or decoding a history as JSON failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
