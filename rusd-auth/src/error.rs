//! The one error type of the crate, with etcd's messages and gRPC codes.
//!
//! Every variant that etcd 3.4 maps in `etcdserver/api/v3rpc/rpctypes/error.go` carries the exact
//! `etcdserver: ...` text and the gRPC status code etcd sends. Errors etcd 3.4 never maps (the
//! token-configuration errors, `ErrNoPasswordUser`) keep etcd's internal `auth: ...` text and
//! the code etcd's `togRPCError` falls back to (`Unknown`).

use storage_api::StorageError;

/// gRPC status codes (numeric values as in `tonic::Code` / grpc-go `codes`), without
/// depending on tonic.
pub mod grpc_code {
    /// `OK`.
    pub const OK: i32 = 0;
    /// `Unknown`.
    pub const UNKNOWN: i32 = 2;
    /// `InvalidArgument`.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// `PermissionDenied`.
    pub const PERMISSION_DENIED: i32 = 7;
    /// `FailedPrecondition`.
    pub const FAILED_PRECONDITION: i32 = 9;
    /// `Internal`.
    pub const INTERNAL: i32 = 13;
    /// `Unauthenticated`.
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Result alias of the crate.
pub type AuthResult<T> = Result<T, AuthError>;

/// Every failure of authentication, authorisation, auth management and auth persistence.
///
/// `Display` is the message etcd's client sees; [`AuthError::grpc_code`] is the status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// `ErrGRPCRootUserNotExist` (FailedPrecondition).
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// `ErrGRPCRootRoleNotExist` (FailedPrecondition).
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// `ErrGRPCUserAlreadyExist` (FailedPrecondition).
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// `ErrGRPCUserEmpty` (InvalidArgument): empty user name, or a request without credentials
    /// while auth is enabled.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// `ErrGRPCUserNotFound` (FailedPrecondition).
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// `ErrGRPCRoleAlreadyExist` (FailedPrecondition).
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// `ErrGRPCRoleNotFound` (FailedPrecondition).
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// `ErrGRPCRoleEmpty` (InvalidArgument).
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// `ErrGRPCAuthFailed` (InvalidArgument).
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// `ErrGRPCPermissionNotGiven` (InvalidArgument).
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// `ErrGRPCPermissionDenied` (PermissionDenied).
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// `ErrGRPCRoleNotGranted` (FailedPrecondition).
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// `ErrGRPCPermissionNotGranted` (FailedPrecondition).
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// `ErrGRPCAuthNotEnabled` (FailedPrecondition).
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// `ErrGRPCInvalidAuthToken` (Unauthenticated).
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// `ErrGRPCInvalidAuthMgmt` (InvalidArgument): deleting root, revoking root from root while
    /// enabled, an invalid permission range.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// `ErrGRPCAuthOldRevision` (InvalidArgument): the request's auth revision is older than the
    /// store's.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd `ErrNoPasswordUser`; etcd 3.4 does not map it, so the client sees this text with
    /// `Unknown`.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// etcd `ErrInvalidAuthOpts`: a malformed `--auth-token` option string.
    #[error("auth: invalid auth options")]
    InvalidAuthOpts,
    /// etcd `ErrInvalidAuthMethod`: an unknown or unsupported JWT `sign-method`.
    #[error("auth: invalid auth signature method")]
    InvalidAuthMethod,
    /// etcd `ErrMissingKey`: no key for the JWT sign method.
    #[error("auth: missing key data")]
    MissingKey,
    /// etcd `ErrKeyMismatch`.
    #[error("auth: public and private keys don't match")]
    KeyMismatch,
    /// etcd `ErrVerifyOnly`: a JWT provider configured with only a public key cannot sign.
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    /// A JWT option that could not be used (unreadable key file, bad PEM, bad TTL).
    #[error("auth: invalid JWT option: {0}")]
    JwtConfig(String),
    /// A JWT could not be signed.
    #[error("auth: failed to sign a JWT token: {0}")]
    JwtSign(String),
    /// bcrypt failed to hash (cost out of range, password too long).
    #[error("auth: failed to hash password: {0}")]
    Hash(String),
    /// A record of the `auth` tree could not be decoded (corruption or a newer format).
    #[error("auth: corrupt auth record {key:?}: {reason}")]
    Corrupt {
        /// The key of the record, lossily decoded.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// An auth state given to restore ([`crate::persist::restore`]) breaks an invariant of the
    /// store (revision 0, an empty or repeated name, an invalid permission range).
    #[error("auth: invalid auth state: {0}")]
    InvalidDump(String),
    /// The storage engine failed.
    #[error("auth: storage: {0}")]
    Storage(#[from] StorageError),
}

impl AuthError {
    /// The gRPC status code etcd 3.4 sends for this error (`v3rpc/rpctypes/error.go`; errors
    /// etcd does not map get `Unknown`, storage and corruption errors `Internal`).
    pub fn grpc_code(&self) -> i32 {
        use grpc_code::*;
        match self {
            AuthError::RootUserNotExist
            | AuthError::RootRoleNotExist
            | AuthError::UserAlreadyExist
            | AuthError::UserNotFound
            | AuthError::RoleAlreadyExist
            | AuthError::RoleNotFound
            | AuthError::RoleNotGranted
            | AuthError::PermissionNotGranted
            | AuthError::AuthNotEnabled => FAILED_PRECONDITION,
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::PermissionNotGiven
            | AuthError::InvalidAuthMgmt
            | AuthError::AuthOldRevision => INVALID_ARGUMENT,
            AuthError::PermissionDenied => PERMISSION_DENIED,
            AuthError::InvalidAuthToken => UNAUTHENTICATED,
            AuthError::Corrupt { .. } | AuthError::InvalidDump(_) | AuthError::Storage(_) => {
                INTERNAL
            }
            AuthError::NoPasswordUser
            | AuthError::InvalidAuthOpts
            | AuthError::InvalidAuthMethod
            | AuthError::MissingKey
            | AuthError::KeyMismatch
            | AuthError::VerifyOnly
            | AuthError::JwtConfig(_)
            | AuthError::JwtSign(_)
            | AuthError::Hash(_) => UNKNOWN,
        }
    }
}
