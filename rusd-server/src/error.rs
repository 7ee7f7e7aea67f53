//! Errors: start-up failures ([`ServerError`]) and the gRPC statuses etcd sends ([`rpc`]).

use mvcc_core::MvccError;
use storage_api::StorageError;
use tonic::{Code, Status};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration value is invalid (bad URL, unknown engine, engine not compiled in...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The storage engine failed to open, flush or close.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The MVCC store failed to open or recover.
    #[error("mvcc: {0}")]
    Mvcc(#[from] MvccError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS configuration is unusable (unreadable or mismatched certificate and key, missing
    /// files for an `https` URL...).
    #[error("tls: {0}")]
    Tls(String),
    /// A background task failed.
    #[error("background task: {0}")]
    Task(String),
    /// A file of the data directory could not be written, synced or removed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The gRPC errors of etcd (`api/v3rpc/rpctypes`), with etcd's exact codes and messages.
pub mod rpc {
    use super::*;

    /// `etcdserver: key is not provided` (InvalidArgument).
    pub fn empty_key() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: key is not provided")
    }
    /// `etcdserver: key not found` (InvalidArgument): ignore_value / ignore_lease on a missing key,
    /// or an empty request op.
    pub fn key_not_found() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: key not found")
    }
    /// `etcdserver: value is provided` (InvalidArgument).
    pub fn value_provided() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: value is provided")
    }
    /// `etcdserver: lease is provided` (InvalidArgument).
    pub fn lease_provided() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: lease is provided")
    }
    /// `etcdserver: too many operations in txn request` (InvalidArgument).
    pub fn too_many_ops() -> Status {
        Status::new(
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        )
    }
    /// `etcdserver: duplicate key given in txn request` (InvalidArgument).
    pub fn duplicate_key() -> Status {
        Status::new(
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        )
    }
    /// `etcdserver: invalid sort option` (InvalidArgument).
    pub fn invalid_sort_option() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: invalid sort option")
    }
    /// `etcdserver: request is too large` (InvalidArgument).
    pub fn request_too_large() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: request is too large")
    }
    /// `etcdserver: mvcc: required revision has been compacted` (OutOfRange).
    pub fn compacted() -> Status {
        Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        )
    }
    /// `etcdserver: mvcc: required revision is a future revision` (OutOfRange).
    pub fn future_rev() -> Status {
        Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        )
    }
    /// `etcdserver: requested lease not found` (NotFound).
    pub fn lease_not_found() -> Status {
        Status::new(Code::NotFound, "etcdserver: requested lease not found")
    }
    /// `etcdserver: lease already exists` (FailedPrecondition).
    pub fn lease_exists() -> Status {
        Status::new(Code::FailedPrecondition, "etcdserver: lease already exists")
    }
    /// `etcdserver: too large lease TTL` (OutOfRange).
    pub fn lease_ttl_too_large() -> Status {
        Status::new(Code::OutOfRange, "etcdserver: too large lease TTL")
    }
    /// `etcdserver: mvcc: database space exceeded` (ResourceExhausted).
    pub fn no_space() -> Status {
        Status::new(
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        )
    }
    /// `etcdserver: authentication is not enabled` (FailedPrecondition).
    pub fn auth_not_enabled() -> Status {
        Status::new(
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        )
    }
    /// `etcdserver: server stopped` (Unavailable).
    pub fn stopped() -> Status {
        Status::new(Code::Unavailable, "etcdserver: server stopped")
    }
    /// A feature of etcd that a single-member rusd does not provide (Unimplemented).
    pub fn unsupported(what: &str) -> Status {
        Status::new(
            Code::Unimplemented,
            format!("rusd: {what} is not supported by this server"),
        )
    }
}

/// Maps an MVCC error to the gRPC status etcd sends for it.
pub fn mvcc_status(e: MvccError) -> Status {
    match e {
        MvccError::Compacted => rpc::compacted(),
        MvccError::FutureRevision => rpc::future_rev(),
        MvccError::LeaseNotFound(_) => rpc::lease_not_found(),
        MvccError::LeaseExists(_) => rpc::lease_exists(),
        MvccError::DuplicateKey => rpc::duplicate_key(),
        MvccError::TooManyOps { .. } => rpc::too_many_ops(),
        MvccError::EmptyKey => rpc::empty_key(),
        MvccError::KeyNotFound => rpc::key_not_found(),
        MvccError::ValueProvided => rpc::value_provided(),
        MvccError::LeaseProvided => rpc::lease_provided(),
        MvccError::KeyTooLarge { .. } | MvccError::ValueTooLarge { .. } => rpc::request_too_large(),
        MvccError::InvalidArgument(m) => Status::new(Code::InvalidArgument, m),
        MvccError::Storage(StorageError::Closed) => rpc::stopped(),
        ref e if e.is_out_of_space() => rpc::no_space(),
        other => Status::new(Code::Internal, error_chain(&other)),
    }
}

/// Renders an error and its sources as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mvcc_errors_map_to_etcd_statuses() {
        let cases = [
            (
                MvccError::TooManyOps { max: 128 },
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                MvccError::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                MvccError::ValueProvided,
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                MvccError::LeaseProvided,
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                MvccError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                MvccError::LeaseNotFound(7),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
        ];
        for (e, code, msg) in cases {
            let s = mvcc_status(e);
            assert_eq!((s.code(), s.message()), (code, msg));
        }
    }
}
