//! [`RaftError`]: the one error type of this crate, and [`WireError`], its form on the wire.

use serde::{Deserialize, Serialize};

use crate::types::{CommandError, NodeId};

/// Result alias of this crate.
pub type RaftResult<T> = Result<T, RaftError>;

/// Every failure of a member's replication layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    /// The command was applied and failed deterministically (etcd's error for the request).
    #[error("command failed: {0}")]
    Command(#[from] CommandError),
    /// A learner cannot be promoted before it caught up with the leader.
    #[error("learner {0:x} is not in sync with the leader")]
    LearnerNotReady(NodeId),
    /// Another membership change is still being committed; [`crate::node::RaftNode`]
    /// retries the change until its deadline, so callers see this only in logs.
    #[error("a membership change is in progress")]
    MembershipInProgress,
    /// No leader is known (an election is running, or this member lost its quorum).
    #[error("no leader")]
    NoLeader,
    /// The request did not complete in time; a write may or may not have been applied.
    #[error("request timed out")]
    Timeout,
    /// This member is not the leader, and the request must be made on the leader (etcd's
    /// `ErrNotLeader`, e.g. for `MoveLeader`); the leader it knows of.
    #[error("not leader")]
    NotLeader(Option<NodeId>),
    /// The transferee of a leader transfer is no voter of the cluster (etcd's
    /// `ErrBadLeaderTransferee`).
    #[error("bad leader transferee {0:x}")]
    BadLeaderTransferee(NodeId),
    /// The transferee did not become leader in time (etcd's `ErrTimeoutLeaderTransfer`).
    #[error("leader transfer took too long")]
    LeaderTransferTimeout,
    /// The member is shutting down or stopped.
    #[error("raft member stopped")]
    Stopped,
    /// openraft refused or failed the request (membership change in progress, lost
    /// leadership, a fatal storage error...).
    #[error("raft: {0}")]
    Raft(String),
    /// A peer could not be reached or answered with a transport error.
    #[error("peer {peer} unreachable")]
    Transport {
        /// The peer.
        peer: NodeId,
        /// The transport failure.
        #[source]
        source: tonic::Status,
    },
    /// Bytes from a peer (or from the log) could not be decoded.
    #[error("cannot decode {what}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: postcard::Error,
    },
    /// A JSON body from a peer could not be decoded.
    #[error("cannot decode {what}")]
    DecodeJson {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be encoded.
    #[error("cannot encode {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: postcard::Error,
    },
    /// Invalid configuration or arguments (unknown member, bad URL...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The raft log or the state machine failed.
    #[error("raft storage failed")]
    Storage(#[from] openraft::StorageError<NodeId>),
    /// The storage engine failed (opening the raft log...).
    #[error("storage engine failed")]
    Engine(#[from] storage_api::StorageError),
    /// The MVCC store failed.
    #[error("mvcc store failed")]
    Mvcc(#[from] mvcc_core::MvccError),
    /// An I/O error (binding the peer listener...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl RaftError {
    /// The wire form of this error (the answer of a forwarded request).
    pub fn to_wire(&self) -> WireError {
        match self {
            RaftError::Command(c) => WireError::Command(c.clone()),
            RaftError::NoLeader => WireError::NoLeader,
            RaftError::Timeout => WireError::Timeout,
            RaftError::Stopped => WireError::Stopped,
            RaftError::LearnerNotReady(id) => WireError::LearnerNotReady(*id),
            other => WireError::Other(crate::error_line(other)),
        }
    }
}

/// A [`RaftError`] as a forwarding member returns it to the member that forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WireError {
    /// [`RaftError::Command`].
    Command(CommandError),
    /// [`RaftError::NoLeader`], or the receiver is not the leader.
    NoLeader,
    /// The receiver is not the leader; it names the one it knows.
    NotLeader(Option<NodeId>),
    /// [`RaftError::Timeout`].
    Timeout,
    /// [`RaftError::Stopped`].
    Stopped,
    /// [`RaftError::LearnerNotReady`].
    LearnerNotReady(NodeId),
    /// Anything else, as text.
    Other(String),
}

impl From<WireError> for RaftError {
    fn from(w: WireError) -> Self {
        match w {
            WireError::Command(c) => RaftError::Command(c),
            WireError::NoLeader | WireError::NotLeader(_) => RaftError::NoLeader,
            WireError::Timeout => RaftError::Timeout,
            WireError::Stopped => RaftError::Stopped,
            WireError::LearnerNotReady(id) => RaftError::LearnerNotReady(id),
            WireError::Other(m) => RaftError::Raft(m),
        }
    }
}
