//! The openraft type configuration: member ids, member descriptions, the replicated
//! [`Command`]s and their [`CommandResponse`]s.
//!
//! # Why mvcc-core's own request types
//! The log carries mvcc-core's request types ([`Put`], [`DeleteRange`], [`Txn`],
//! [`Compaction`]) serialised through mvcc-core's optional `serde` feature rather than mirror
//! types defined here: the request types are the data plane's single definition of every etcd
//! field (and of its validation), so a mirror would be a second copy to keep in step with
//! every new field, and a field forgotten in the mirror would be silently dropped on the way
//! through the log. The price is that the log format follows those types: a field added to
//! them must be added with `#[serde(default)]`-compatible care, which a reviewer sees in the
//! one crate that defines them.
//!
//! Auth changes travel the same way: [`Command::Auth`] carries rusd-auth's own
//! [`AuthCommand`] (passwords already bcrypt-hashed by the proposer) plus the requester's
//! identity, and [`Command::Authenticate`] carries a simple-token prefix (etcd's
//! `InternalAuthenticateRequest`, without the password).
//!
//! # Log format compatibility
//! Entries are encoded with postcard, which names enum variants by their position: new
//! variants are only ever appended at the end of [`Command`], [`CommandResponse`] and
//! [`CommandError`] (the auth variants came last), so entries written by an older member
//! decode unchanged.

use std::fmt;

use mvcc_core::{
    Compaction, CompactionResponse, DeleteRange, DeleteRangeResponse, LeaseInfo, MvccError, Put,
    PutResponse, Txn, TxnResponse,
};
use rusd_auth::{AuthCommand, AuthError};
use serde::{Deserialize, Serialize};

/// A member id: etcd's 64-bit member id.
pub type NodeId = u64;

/// A member as the cluster knows it (etcd's `Member`): its name and URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's name (`--name`); empty for a member added but not started yet.
    pub name: String,
    /// URLs the other members reach its peer service on.
    pub peer_urls: Vec<String>,
    /// URLs clients reach it on (may be empty until it started).
    pub client_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_urls.join(","))
    }
}

/// A command replicated through the raft log and applied to every member's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// etcd `Put`.
    Put(Put),
    /// etcd `DeleteRange`.
    DeleteRange(DeleteRange),
    /// etcd `Txn` (a read-only txn may be proposed too; it then writes nothing).
    Txn(Txn),
    /// etcd `Compact`.
    Compaction(Compaction),
    /// etcd `LeaseGrant`: `id` 0 lets the store pick the next free id (deterministically:
    /// greater than every existing one).
    LeaseGrant {
        /// The lease id, or 0.
        id: i64,
        /// The TTL in seconds.
        ttl: i64,
    },
    /// etcd `LeaseRevoke`; also what the leader proposes for an expired lease.
    LeaseRevoke {
        /// The lease id.
        id: i64,
    },
    /// etcd's lease checkpoint: the remaining TTL of a lease, persisted in its lease record
    /// (`MvccStore::lease_checkpoint`), so that a new leader and a restarted member resume it
    /// from there instead of its full TTL; 0 clears it (a keep-alive does that). Proposed by
    /// the leader (see [`crate::node`]'s "Leases"); an unknown lease answers
    /// [`CommandError::LeaseNotFound`] and changes nothing.
    LeaseCheckpoint {
        /// The lease id.
        id: i64,
        /// The remaining TTL in seconds.
        remaining_ttl: i64,
    },
    /// Nothing (used by tests and to probe the write path).
    Noop,
    /// Several client commands proposed as one log entry (group commit: openraft 0.9 appends
    /// and flushes each proposal on its own, so the leader batches concurrent writes). Applied
    /// in order, each as it would be alone; never nested.
    Batch(Vec<Command>),
    /// An auth-management change (etcd's auth requests through `authApplierV3`), applied on
    /// every member to the auth store of its backend, in the same atomic backend write as the
    /// apply record. While auth is enabled, `user` must hold the `root` role *at apply time*
    /// (etcd `IsAdminPermitted` with the request header's user name), so a change racing with
    /// the revocation of its requester's role is refused on every member alike.
    Auth {
        /// The change (passwords already hashed).
        cmd: AuthCommand,
        /// The requester's user name (etcd `RequestHeader.username`; empty: none).
        user: String,
        /// The auth revision the proposer checked the requester at (etcd
        /// `RequestHeader.auth_revision`). Recorded for diagnostics: like etcd 3.4, the admin
        /// check at apply looks at the user's current roles, not at this revision.
        auth_revision: u64,
    },
    /// etcd's `InternalAuthenticateRequest`: the password was checked by the member that
    /// received `Authenticate`; applying this registers the simple token
    /// `<simple_token_prefix>.<log index>` for `name` on every member (only proposed for
    /// simple tokens: JWTs need no shared state).
    Authenticate {
        /// The user name.
        name: String,
        /// The token prefix chosen by the proposer (`AuthStore::gen_token_prefix`).
        simple_token_prefix: String,
    },
    /// A client request whose permissions the proposer checked at auth revision
    /// `auth_revision` (etcd's `RequestHeader.auth_revision`): applied as `cmd` unless auth is
    /// enabled and the auth state moved on since (a revocation committed while the request was
    /// checked on a member that had not applied it yet), then refused with etcd's
    /// `ErrAuthOldRevision` ("etcdserver: revision of auth store is old") on every member, as
    /// etcd's `authApplierV3` does. `cmd` is never a batch nor another guarded command.
    AuthChecked {
        /// The auth revision the permissions were checked at.
        auth_revision: u64,
        /// The request.
        cmd: Box<Command>,
    },
}

impl Command {
    /// A short name of the command kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Put(_) => "put",
            Command::DeleteRange(_) => "delete_range",
            Command::Txn(_) => "txn",
            Command::Compaction(_) => "compaction",
            Command::LeaseGrant { .. } => "lease_grant",
            Command::LeaseRevoke { .. } => "lease_revoke",
            Command::LeaseCheckpoint { .. } => "lease_checkpoint",
            Command::Noop => "noop",
            Command::Batch(_) => "batch",
            Command::Auth { .. } => "auth",
            Command::Authenticate { .. } => "authenticate",
            Command::AuthChecked { cmd, .. } => cmd.kind(),
        }
    }
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CommandResponse {
    /// Of [`Command::Put`].
    Put(PutResponse),
    /// Of [`Command::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// Of [`Command::Txn`].
    Txn(TxnResponse),
    /// Of [`Command::Compaction`].
    Compaction(CompactionResponse),
    /// Of [`Command::LeaseGrant`].
    LeaseGrant(LeaseInfo),
    /// Of [`Command::LeaseRevoke`]: the store revision after the revoke.
    LeaseRevoke {
        /// The revision after the revoke.
        revision: i64,
    },
    /// Of [`Command::LeaseCheckpoint`], [`Command::Noop`], and of raft's own entries (blank
    /// and membership entries).
    Done,
    /// Of [`Command::Batch`]: one result per command, in order.
    Batch(Vec<ApplyResult>),
    /// Of [`Command::Auth`] (rusd-auth's `AuthResponse`).
    Auth {
        /// The auth revision after the command.
        revision: u64,
        /// False for a no-op etcd accepts silently (nothing was written).
        changed: bool,
    },
    /// Of [`Command::Authenticate`]: the token registered on every member.
    Authenticate {
        /// The simple token.
        token: String,
    },
}

/// A deterministic failure of a command (the same on every member), carried back to the
/// proposer: etcd's errors for the request, e.g. a compacted revision or an unknown lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// [`MvccError::Compacted`].
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// [`MvccError::FutureRevision`].
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// [`MvccError::LeaseNotFound`].
    #[error("lease not found: {0}")]
    LeaseNotFound(i64),
    /// [`MvccError::LeaseExists`].
    #[error("lease already exists: {0}")]
    LeaseExists(i64),
    /// [`MvccError::DuplicateKey`].
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// [`MvccError::TooManyOps`].
    #[error("too many operations in txn request (max {0})")]
    TooManyOps(usize),
    /// [`MvccError::KeyNotFound`].
    #[error("key not found")]
    KeyNotFound,
    /// [`MvccError::ValueProvided`].
    #[error("value is provided")]
    ValueProvided,
    /// [`MvccError::LeaseProvided`].
    #[error("lease is provided")]
    LeaseProvided,
    /// [`MvccError::EmptyKey`].
    #[error("key is not provided")]
    EmptyKey,
    /// [`MvccError::KeyTooLarge`].
    #[error("key is too large ({size} bytes, max {max})")]
    KeyTooLarge {
        /// Size of the key.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// [`MvccError::ValueTooLarge`].
    #[error("value is too large ({size} bytes, max {max})")]
    ValueTooLarge {
        /// Size of the value.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// [`MvccError::InvalidArgument`].
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// [`MvccError::RevisionNotFound`] and any other request-level failure, as text.
    #[error("{0}")]
    Other(String),
    /// A request-level [`AuthError`] of [`Command::Auth`] / [`Command::Authenticate`]: etcd's
    /// gRPC code ([`AuthError::grpc_code`]) and message, sent to the client as they are.
    #[error("{message}")]
    Auth {
        /// The gRPC status code.
        code: i32,
        /// etcd's message.
        message: String,
    },
}

impl CommandError {
    /// The request-level failures of [`MvccError`] (deterministic: every member computes the
    /// same one for the same entry). `None` for failures of the store itself (storage,
    /// corruption, a failed store), which must stop the member instead of being answered.
    pub fn from_mvcc(err: &MvccError) -> Option<CommandError> {
        Some(match err {
            MvccError::Compacted => CommandError::Compacted,
            MvccError::FutureRevision => CommandError::FutureRevision,
            MvccError::LeaseNotFound(id) => CommandError::LeaseNotFound(*id),
            MvccError::LeaseExists(id) => CommandError::LeaseExists(*id),
            MvccError::DuplicateKey => CommandError::DuplicateKey,
            MvccError::TooManyOps { max } => CommandError::TooManyOps(*max),
            MvccError::KeyNotFound => CommandError::KeyNotFound,
            MvccError::ValueProvided => CommandError::ValueProvided,
            MvccError::LeaseProvided => CommandError::LeaseProvided,
            MvccError::EmptyKey => CommandError::EmptyKey,
            MvccError::KeyTooLarge { size, max } => CommandError::KeyTooLarge {
                size: *size,
                max: *max,
            },
            MvccError::ValueTooLarge { size, max } => CommandError::ValueTooLarge {
                size: *size,
                max: *max,
            },
            MvccError::InvalidArgument(m) => CommandError::InvalidArgument(m.clone()),
            MvccError::RevisionNotFound | MvccError::EmptyWatcherRange => {
                CommandError::Other(err.to_string())
            }
            _ => return None,
        })
    }

    /// The [`MvccError`] this stands for, so a server maps it to etcd's gRPC error as it maps
    /// a local store's.
    pub fn to_mvcc(&self) -> MvccError {
        match self {
            CommandError::Compacted => MvccError::Compacted,
            CommandError::FutureRevision => MvccError::FutureRevision,
            CommandError::LeaseNotFound(id) => MvccError::LeaseNotFound(*id),
            CommandError::LeaseExists(id) => MvccError::LeaseExists(*id),
            CommandError::DuplicateKey => MvccError::DuplicateKey,
            CommandError::TooManyOps(max) => MvccError::TooManyOps { max: *max },
            CommandError::KeyNotFound => MvccError::KeyNotFound,
            CommandError::ValueProvided => MvccError::ValueProvided,
            CommandError::LeaseProvided => MvccError::LeaseProvided,
            CommandError::EmptyKey => MvccError::EmptyKey,
            CommandError::KeyTooLarge { size, max } => MvccError::KeyTooLarge {
                size: *size,
                max: *max,
            },
            CommandError::ValueTooLarge { size, max } => MvccError::ValueTooLarge {
                size: *size,
                max: *max,
            },
            CommandError::InvalidArgument(m) => MvccError::InvalidArgument(m.clone()),
            CommandError::Other(m) => MvccError::InvalidArgument(m.clone()),
            CommandError::Auth { message, .. } => MvccError::InvalidArgument(message.clone()),
        }
    }

    /// The request-level failures of [`AuthError`] (every error of validation and
    /// permission: deterministic). `None` for storage failures and corrupt records, which
    /// must stop the member instead of being answered.
    pub fn from_auth(err: &AuthError) -> Option<CommandError> {
        match err {
            AuthError::Storage(_) | AuthError::Corrupt { .. } => None,
            other => Some(CommandError::Auth {
                code: other.grpc_code(),
                message: other.to_string(),
            }),
        }
    }
}

/// The result of applying one log entry: the command's response or its deterministic error.
pub type ApplyResult = Result<CommandResponse, CommandError>;

/// The response type of the raft state machine, one per applied entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub ApplyResult);

openraft::declare_raft_types!(
    /// rusd's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// An openraft log id of this configuration.
pub type LogId = openraft::LogId<NodeId>;
/// An openraft entry of this configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// An openraft vote of this configuration.
pub type Vote = openraft::Vote<NodeId>;
/// openraft's stored membership of this configuration.
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
/// openraft's snapshot metadata of this configuration.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
/// openraft's storage error of this configuration.
pub type StorageError = openraft::StorageError<NodeId>;
/// The openraft handle of this configuration.
pub type Raft = openraft::Raft<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    /// postcard names a variant by its position: the variants of older logs keep theirs, the
    /// auth variants come after them, and every command round-trips.
    #[test]
    fn variant_positions_are_stable_and_auth_commands_round_trip() {
        let tag = |c: &Command| postcard::to_stdvec(c).unwrap()[0];
        assert_eq!(tag(&Command::Noop), 7);
        assert_eq!(tag(&Command::Batch(Vec::new())), 8);
        let auth = Command::Auth {
            cmd: AuthCommand::RoleAdd { name: "r".into() },
            user: "root".into(),
            auth_revision: 5,
        };
        let login = Command::Authenticate {
            name: "alice".into(),
            simple_token_prefix: "abc".into(),
        };
        let checked = Command::AuthChecked {
            auth_revision: 9,
            cmd: Box::new(Command::Put(Put::new("k", "v", 0))),
        };
        assert_eq!((tag(&auth), tag(&login), tag(&checked)), (9, 10, 11));
        for c in [auth, login, checked, Command::Batch(vec![Command::Noop])] {
            let bytes = postcard::to_stdvec(&c).unwrap();
            assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), c);
        }
        let refused = CommandError::from_auth(&AuthError::AuthOldRevision).unwrap();
        assert_eq!(
            refused,
            CommandError::Auth {
                code: 3,
                message: "etcdserver: revision of auth store is old".into()
            }
        );
        let bytes = postcard::to_stdvec(&refused).unwrap();
        assert_eq!(bytes[0], 14);
        assert_eq!(
            postcard::from_bytes::<CommandError>(&bytes).unwrap(),
            refused
        );
        assert_eq!(
            CommandError::from_auth(&AuthError::Corrupt {
                key: "k".into(),
                reason: "r".into()
            }),
            None
        );
    }
}
