//! Authentication and role-based access control of the server (etcd v3 auth), over
//! [`rusd_auth::AuthStore`] kept in the `auth` tree of the MVCC store's engine.
//!
//! * [`AuthSettings`]: `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`.
//! * [`ServerAuth`]: the auth store plus whether a client certificate's common name may stand
//!   for the user (`--client-cert-auth`), set once into [`State::auth`].
//! * [`Credentials`]: what a request brings: the `token` (or `authorization`) metadata value,
//!   else the verified client certificate's common name (etcd `AuthInfoFromCtx` then
//!   `AuthInfoFromTLS`).
//! * `State::authorize_*`: one check per request type, with etcd's rules, codes and messages
//!   (every check passes while auth is disabled).
//! * [`State::change_auth`]: the one entry of every auth-management change (an
//!   [`AuthCommand`], passwords already hashed): checked here first (a fast error), then
//!   proposed through the raft log as `rusd_raft::Command::Auth` with the requester's name
//!   and auth revision; every member applies it to its own auth store and checks the
//!   requester's admin permission again at apply time (etcd's `authApplierV3`), so members
//!   never diverge and a change racing with a role revocation is refused on all of them.
//! * `Authenticate`: the password is checked (bcrypt) on the member that received the
//!   request; with simple tokens a `rusd_raft::Command::Authenticate` then registers the token
//!   on every member (etcd's `InternalAuthenticateRequest`), so a token issued by one member
//!   is accepted by all. JWTs need no shared state and are signed locally.
//! * [`AuthService`]: the gRPC `Auth` service.

use std::sync::Arc;
use std::time::Duration;

use mvcc_core::engine::AnyBackend;
use mvcc_core::{Compaction, Compare, CompareOp, CompareTarget, DeleteRange, Put, Range, Txn};
use rusd_auth::{
    AuthCommand, AuthConfig, AuthError, AuthInfo, AuthResponse, AuthStore, Permission,
    PermissionType, TokenProvider,
};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use crate::error::{rpc, ServerError};
use crate::pb::authpb;
use crate::pb::etcdserverpb::{
    alarm_request::AlarmAction, auth_server, request_op, AlarmRequest, AuthDisableRequest,
    AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGetRequest,
    AuthRoleGetResponse, AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse,
    AuthRoleListRequest, AuthRoleListResponse, AuthRoleRevokePermissionRequest,
    AuthRoleRevokePermissionResponse, AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest,
    AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse,
    AuthUserGrantRoleRequest, AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest,
    AuthenticateResponse, CompactionRequest, DeleteRangeRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchResponse,
};
use crate::state::{blocking, State};
use crate::tls::ClientConnInfo;
use rusd_raft::{Command, CommandResponse};

/// etcd's gRPC metadata key of the token (`rpctypes.TokenFieldNameGRPC`).
pub const TOKEN_METADATA_KEY: &str = "token";
/// The key the grpc-gateway (and some clients) use (`rpctypes.TokenFieldNameSwagger`).
pub const AUTHORIZATION_METADATA_KEY: &str = "authorization";
/// etcd's default `--auth-token-ttl` in seconds.
pub const DEFAULT_AUTH_TOKEN_TTL_SECS: u64 = 300;
/// How long the auth paths retry a read barrier that fails as unavailable.
const AUTH_BARRIER_RETRY: Duration = Duration::from_secs(5);
/// How often expired simple tokens are dropped (etcd's simple-token sweeper).
const TOKEN_SWEEP: Duration = Duration::from_secs(1);

/// The auth flags: `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// `--auth-token`: `simple` (default) or `jwt,pub-key=..,priv-key=..,sign-method=..,ttl=..`.
    pub token: String,
    /// `--auth-token-ttl`: lifetime of a simple token (refreshed on every use).
    pub token_ttl: Duration,
    /// `--bcrypt-cost` (4..=31; else etcd's default 10).
    pub bcrypt_cost: u32,
}

impl Default for AuthSettings {
    /// etcd's defaults: `simple`, 300 s, cost 10.
    fn default() -> Self {
        AuthSettings {
            token: "simple".into(),
            token_ttl: Duration::from_secs(DEFAULT_AUTH_TOKEN_TTL_SECS),
            bcrypt_cost: rusd_auth::DEFAULT_BCRYPT_COST,
        }
    }
}

/// The auth state of a server.
#[derive(Debug)]
pub struct ServerAuth {
    store: Arc<AuthStore<AnyBackend>>,
    client_cert_auth: bool,
}

impl ServerAuth {
    /// Opens the auth state kept in `backend`'s `auth` tree (blocking: reads every user and
    /// role). `client_cert_auth`: a verified client certificate's common name is the user of a
    /// request without a token (etcd `--client-cert-auth`).
    pub fn open(
        backend: Arc<AnyBackend>,
        settings: &AuthSettings,
        client_cert_auth: bool,
    ) -> Result<ServerAuth, ServerError> {
        let token = TokenProvider::from_options(&settings.token, settings.token_ttl)
            .map_err(|e| ServerError::Config(format!("--auth-token {:?}: {e}", settings.token)))?;
        let config = AuthConfig {
            bcrypt_cost: settings.bcrypt_cost,
            token,
            ..AuthConfig::default()
        };
        let store = AuthStore::open(backend, config)
            .map_err(|e| ServerError::Config(format!("cannot open the auth store: {e}")))?;
        Ok(ServerAuth {
            store: Arc::new(store),
            client_cert_auth,
        })
    }

    /// The auth store.
    pub fn store(&self) -> &AuthStore<AnyBackend> {
        &self.store
    }

    /// The auth store, shared (with the raft state machine, which applies the replicated
    /// auth commands to it).
    pub fn shared(&self) -> Arc<AuthStore<AnyBackend>> {
        self.store.clone()
    }

    /// True when a client certificate's common name stands for the user.
    pub fn client_cert_auth(&self) -> bool {
        self.client_cert_auth
    }
}

/// etcd's gRPC status of an auth error (code from [`AuthError::grpc_code`], etcd's message).
pub fn auth_status(e: AuthError) -> Status {
    Status::new(Code::from_i32(e.grpc_code()), e.to_string())
}

/// An auth error as etcd's `auth` package words it (`auth: ...`), with code `Unknown`: what
/// etcd 3.4 sends where it returns the error untranslated.
pub fn etcd_internal(e: &AuthError) -> Status {
    let text = match e {
        AuthError::UserEmpty => "auth: user name is empty".to_string(),
        AuthError::UserNotFound => "auth: user not found".to_string(),
        AuthError::PermissionDenied => "auth: permission denied".to_string(),
        AuthError::InvalidAuthToken => "auth: invalid auth token".to_string(),
        other => other.to_string(),
    };
    Status::new(Code::Unknown, text)
}

/// What a request brings to identify its user.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The `token` metadata value (else `authorization`); a value that is not visible ASCII
    /// is kept as an empty string, an invalid token.
    pub token: Option<String>,
    /// The connection (its verified client certificate, if any). Its common name is parsed
    /// only when it is needed: no token and `--client-cert-auth`.
    pub peer: Option<ClientConnInfo>,
}

impl Credentials {
    /// The credentials of gRPC metadata and the connection's [`ClientConnInfo`].
    pub fn from_parts(md: &MetadataMap, conn: Option<&ClientConnInfo>) -> Credentials {
        let token = md
            .get(TOKEN_METADATA_KEY)
            .or_else(|| md.get(AUTHORIZATION_METADATA_KEY))
            .map(|v| v.to_str().map(str::to_owned).unwrap_or_default());
        Credentials {
            token,
            peer: conn.cloned(),
        }
    }

    /// The credentials of a gRPC request.
    pub fn of<T>(req: &Request<T>) -> Credentials {
        Credentials::from_parts(req.metadata(), req.extensions().get::<ClientConnInfo>())
    }

    /// The common name of the verified client certificate, if any.
    pub fn common_name(&self) -> Option<String> {
        self.peer.as_ref().and_then(ClientConnInfo::common_name)
    }
}

/// The credentials of an HTTP request to the JSON gateway: its `Authorization` header holds
/// the token (as etcd's gateway forwards it).
pub fn http_credentials(headers: &hyper::HeaderMap) -> Credentials {
    Credentials {
        token: headers
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.to_str().map(str::to_owned).unwrap_or_default()),
        peer: None,
    }
}

/// A gRPC request carrying `creds` (the token in the `authorization` metadata, the common
/// name as a [`ClientConnInfo`]-free credential): what the JSON gateway hands to the services.
pub fn grpc_request<T>(message: T, creds: &Credentials) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(token) = &creds.token {
        // A value gRPC metadata cannot carry is an invalid token, not a missing one.
        let value = token
            .parse()
            .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("-"));
        req.metadata_mut().insert(AUTHORIZATION_METADATA_KEY, value);
    }
    req
}

/// Keys attached to a lease (empty for an unknown lease). Looked up before the auth store's
/// state is locked for a check (the lookup may wait for a group commit).
fn lease_keys(state: &State, lease: i64) -> Vec<Vec<u8>> {
    if lease == 0 {
        return Vec::new();
    }
    state
        .store
        .lease_time_to_live(lease)
        .map(|i| i.keys)
        .unwrap_or_default()
}

/// Calls `f` with every non-zero lease of the transaction's puts (nested included).
fn txn_leases(t: &Txn, f: &mut impl FnMut(i64)) {
    for op in t.success.iter().chain(&t.failure) {
        match op {
            mvcc_core::RequestOp::Put(p) if p.lease != 0 => f(p.lease),
            mvcc_core::RequestOp::Txn(n) => txn_leases(n, f),
            _ => {}
        }
    }
}

/// The keys of a protobuf transaction (values left out), for the permission check.
fn txn_keys(t: &TxnRequest) -> Txn {
    Txn {
        compare: t
            .compare
            .iter()
            .map(|c| Compare {
                key: c.key.clone(),
                range_end: c.range_end.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(0),
            })
            .collect(),
        success: ops_keys(&t.success),
        failure: ops_keys(&t.failure),
    }
}

fn ops_keys(ops: &[RequestOp]) -> Vec<mvcc_core::RequestOp> {
    ops.iter()
        .filter_map(|op| {
            Some(match op.request.as_ref()? {
                request_op::Request::RequestRange(r) => mvcc_core::RequestOp::Range(Range {
                    key: r.key.clone(),
                    range_end: r.range_end.clone(),
                    ..Range::default()
                }),
                request_op::Request::RequestPut(p) => mvcc_core::RequestOp::Put(Put {
                    key: p.key.clone(),
                    lease: p.lease,
                    prev_kv: p.prev_kv,
                    ..Put::default()
                }),
                request_op::Request::RequestDeleteRange(d) => {
                    mvcc_core::RequestOp::DeleteRange(DeleteRange {
                        key: d.key.clone(),
                        range_end: d.range_end.clone(),
                        prev_kv: d.prev_kv,
                    })
                }
                request_op::Request::RequestTxn(n) => mvcc_core::RequestOp::Txn(txn_keys(n)),
            })
        })
        .collect()
}

impl State {
    /// The auth state, when the server has one (always, when started with [`crate::start`]).
    pub fn auth_store(&self) -> Option<&AuthStore<AnyBackend>> {
        self.auth.get().map(ServerAuth::store)
    }

    /// The enabled auth store, or `None` while auth is disabled (every check passes then).
    fn enabled_auth(&self) -> Option<&ServerAuth> {
        self.auth.get().filter(|a| a.store.is_enabled())
    }

    /// etcd `AuthInfoFromCtx`: the user of `creds`. A token must be valid ("invalid auth
    /// token" otherwise); without a token, the client certificate's common name under
    /// `--client-cert-auth`; otherwise no credentials (`AuthInfo::default()`). Auth disabled:
    /// no credentials.
    pub fn auth_info(&self, creds: &Credentials) -> Result<AuthInfo, Status> {
        let Some(auth) = self.enabled_auth() else {
            return Ok(AuthInfo::default());
        };
        if let Some(token) = &creds.token {
            return auth
                .store
                .user_from_token(token)
                .map(Option::unwrap_or_default)
                .map_err(auth_status);
        }
        if auth.client_cert_auth {
            if let Some(cn) = creds.common_name() {
                return Ok(auth.store.user_from_common_name(&cn).unwrap_or_default());
            }
        }
        Ok(AuthInfo::default())
    }

    /// Runs `check` with the request's user, unless auth is disabled.
    fn authorize_with(
        &self,
        creds: impl FnOnce() -> Credentials,
        check: impl FnOnce(&AuthStore<AnyBackend>, &AuthInfo) -> Result<(), AuthError>,
    ) -> Result<(), Status> {
        let Some(auth) = self.enabled_auth() else {
            return Ok(());
        };
        let info = self.auth_info(&creds())?;
        check(&auth.store, &info).map_err(auth_status)
    }

    /// Range: read permission on the range.
    pub fn authorize_range(&self, req: &Request<RangeRequest>) -> Result<(), Status> {
        let r = req.get_ref();
        self.authorize_with(
            || Credentials::of(req),
            |a, i| a.check_read(i, &r.key, &r.range_end),
        )
    }

    /// Put: write on the key and on every key already attached to its lease; read for
    /// `prev_kv` (etcd `checkPutAuth`).
    pub fn authorize_put(&self, req: &Request<PutRequest>) -> Result<(), Status> {
        let p = req.get_ref();
        self.authorize_with(
            || Credentials::of(req),
            |a, i| {
                let put = Put {
                    key: p.key.clone(),
                    lease: p.lease,
                    prev_kv: p.prev_kv,
                    ..Put::default()
                };
                let attached = lease_keys(self, p.lease);
                a.check_put_with_leases(i, &put, &|_| attached.clone())
            },
        )
    }

    /// DeleteRange: write on the range; read for `prev_kv`.
    pub fn authorize_delete_range(&self, req: &Request<DeleteRangeRequest>) -> Result<(), Status> {
        let d = req.get_ref();
        self.authorize_with(
            || Credentials::of(req),
            |a, i| {
                a.check_delete_range(
                    i,
                    &DeleteRange {
                        key: d.key.clone(),
                        range_end: d.range_end.clone(),
                        prev_kv: d.prev_kv,
                    },
                )
            },
        )
    }

    /// Txn: read on every compare, then every op of both branches, nested transactions
    /// included, whichever branch would run (etcd `checkTxnAuth`).
    pub fn authorize_txn(&self, req: &Request<TxnRequest>) -> Result<(), Status> {
        self.authorize_with(
            || Credentials::of(req),
            |a, i| {
                let txn = txn_keys(req.get_ref());
                let mut leases = std::collections::HashMap::new();
                txn_leases(&txn, &mut |l| {
                    leases.entry(l).or_insert_with(|| lease_keys(self, l));
                });
                a.check_txn_with_leases(i, &txn, &|l| leases.get(&l).cloned().unwrap_or_default())
            },
        )
    }

    /// Compaction: the root role (rusd is stricter than etcd 3.4, see `rusd-auth`).
    pub fn authorize_compaction(&self, req: &Request<CompactionRequest>) -> Result<(), Status> {
        let c = req.get_ref();
        self.authorize_with(
            || Credentials::of(req),
            |a, i| {
                a.check_compaction(
                    i,
                    &Compaction {
                        revision: c.revision,
                        physical: c.physical,
                    },
                )
            },
        )
    }

    /// LeaseRevoke: root, or write permission on every key attached to the lease.
    pub fn authorize_lease_revoke(&self, req: &Request<LeaseRevokeRequest>) -> Result<(), Status> {
        self.authorize_with(
            || Credentials::of(req),
            |a, i| a.check_lease_revoke(i, &lease_keys(self, req.get_ref().id)),
        )
    }

    /// LeaseTimeToLive: credentials; root, or read permission on every attached key.
    pub fn authorize_lease_time_to_live(
        &self,
        req: &Request<LeaseTimeToLiveRequest>,
    ) -> Result<(), Status> {
        self.authorize_with(
            || Credentials::of(req),
            |a, i| a.check_lease_time_to_live(i, &lease_keys(self, req.get_ref().id)),
        )
    }

    /// Snapshot, Defragment, Hash, HashKV, MoveLeader, member and alarm changes: the root
    /// role (etcd `IsAdminPermitted`).
    pub fn authorize_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.authorize_with(|| Credentials::of(req), |a, i| a.check_admin(i))
    }

    /// Defragment, Snapshot, Hash and HashKV (etcd `authMaintenanceServer.isAuthenticated`):
    /// the root role, refused as etcd 3.4 refuses them: its internal `auth:` error text with
    /// code `Unknown` (these errors are not translated to gRPC errors there).
    pub fn authorize_maintenance<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(auth) = self.enabled_auth() else {
            return Ok(());
        };
        let creds = Credentials::of(req);
        let info = match &creds.token {
            Some(token) => match auth.store.user_from_token(token) {
                Ok(info) => info.unwrap_or_default(),
                Err(e) => return Err(etcd_internal(&e)),
            },
            None => self.auth_info(&creds)?,
        };
        auth.store.check_admin(&info).map_err(|e| etcd_internal(&e))
    }

    /// Requests that need only a valid token, if one is given (LeaseGrant, LeaseKeepAlive,
    /// LeaseLeases, Status, MemberList as etcd): an invalid or expired token is refused.
    pub fn authorize_token<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.authorize_with(|| Credentials::of(req), |_, _| Ok(()))
    }

    /// Alarm list: any authenticated user (etcd `requireAuthInfo`).
    pub fn authorize_authenticated<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.authorize_with(|| Credentials::of(req), |a, i| a.check_authenticated(i))
    }

    /// Alarm: listing needs any authenticated user; activating or deactivating an alarm needs
    /// the root role.
    pub fn authorize_alarm(&self, req: &Request<AlarmRequest>) -> Result<(), Status> {
        if req.get_ref().action == AlarmAction::Get as i32 {
            self.authorize_authenticated(req)
        } else {
            self.authorize_admin(req)
        }
    }

    /// Watch creation (etcd `isWatchPermitted`): read permission on the range, with the
    /// credentials the stream was opened with (an invalid token is refused too).
    pub fn authorize_watch(
        &self,
        creds: &Credentials,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), Status> {
        self.authorize_with(|| creds.clone(), |a, i| a.check_watch(i, key, range_end))
    }

    /// Counts a request refused by an `authorize_*` check in `grpc_server_handled_total`
    /// (as etcd counts it), for `map_err` on the check.
    pub fn refused(
        &self,
        service: &'static str,
        method: &'static str,
    ) -> impl FnOnce(Status) -> Status + '_ {
        move |status| {
            self.metrics
                .observe(service, method, &Err::<(), _>(status.clone()));
            status
        }
    }

    /// The one entry of every auth-management change: `by` must hold the root role while auth
    /// is enabled (etcd `authApplierV3` `needAdminPermission`), checked here first (a fast
    /// error) and again when the change is applied. With a raft member the change is proposed
    /// as `Command::Auth` (with `by`'s name and auth revision) and applied by every member's
    /// state machine; this returns once this member applied it too, so the member that answered
    /// shows the change at once. Without one it is applied to the auth store in one backend
    /// batch and flushed. Passwords in `cmd` are already hashed.
    pub async fn change_auth(
        self: &Arc<Self>,
        by: AuthInfo,
        cmd: AuthCommand,
    ) -> Result<AuthResponse, Status> {
        let auth = self
            .auth
            .get()
            .ok_or_else(|| rpc::unsupported("authentication"))?;
        auth.store.check_admin(&by).map_err(auth_status)?;
        let Some(raft) = &self.raft else {
            let st = self.clone();
            return blocking(move || st.apply_auth(&by, cmd)).await;
        };
        let proposed = Command::Auth {
            cmd,
            user: by.user,
            auth_revision: by.revision,
        };
        let res = raft
            .write(proposed)
            .await
            .map_err(|e| self.raft_status(e))?;
        let CommandResponse::Auth { revision, changed } = res else {
            return Err(Status::internal(format!(
                "rusd: unexpected response to an auth change: {res:?}"
            )));
        };
        // A follower's proposal was applied by the leader first: wait for this member.
        self.auth_barrier().await?;
        Ok(AuthResponse { revision, changed })
    }

    /// `cmd` as proposed through raft: while auth is enabled, a put, delete, txn or lease
    /// revoke (whose permissions the `authorize_*` checks just passed on this member's auth
    /// state) is wrapped in `Command::AuthChecked` with this member's auth revision, so a
    /// member that checked it on an auth state older than the one it is applied at (a
    /// revocation committed but not yet applied here) gets etcd's "revision of auth store is
    /// old" from every member instead of writing (etcd `authApplierV3`). Other commands, and
    /// every command while auth is disabled, are proposed as they are.
    pub fn auth_guard(&self, cmd: Command) -> Command {
        let Some(auth) = self.enabled_auth() else {
            return cmd;
        };
        match cmd {
            Command::Put(_)
            | Command::DeleteRange(_)
            | Command::Txn(_)
            | Command::LeaseRevoke { .. } => Command::AuthChecked {
                auth_revision: auth.store.revision(),
                cmd: Box::new(cmd),
            },
            other => other,
        }
    }

    /// [`State::read_barrier`], retried while it fails as unavailable (a leader that cannot
    /// confirm its quorum right after an election) for up to [`AUTH_BARRIER_RETRY`]: the
    /// barriers of the auth paths follow a committed write (or precede a login), and giving up
    /// at the first transient failure would report a committed change as failed.
    async fn auth_barrier(&self) -> Result<(), Status> {
        let deadline = std::time::Instant::now() + AUTH_BARRIER_RETRY;
        loop {
            match self.read_barrier().await {
                Err(e) if e.code() == Code::Unavailable && std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e.message(), "auth barrier failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// [`State::change_auth`] without replication (blocking): `by` must hold the root role
    /// while auth is enabled, then `cmd` is applied in one backend batch and flushed.
    pub fn apply_auth(&self, by: &AuthInfo, cmd: AuthCommand) -> Result<AuthResponse, Status> {
        let auth = self
            .auth
            .get()
            .ok_or_else(|| rpc::unsupported("authentication"))?;
        auth.store.check_admin(by).map_err(auth_status)?;
        let res = auth.store.apply(&cmd).map_err(auth_status)?;
        if res.changed {
            self.store.flush().map_err(crate::error::mvcc_status)?;
        }
        Ok(res)
    }

    /// etcd `EtcdServer.Authenticate`: the password is checked here (bcrypt, on the blocking
    /// pool) after a read barrier (so on every auth change committed before the call); with simple tokens and a raft member the token is then registered on every
    /// member through `Command::Authenticate`, and the whole is retried if the auth revision
    /// moved while the password was checked, as etcd does. JWTs (and servers without raft)
    /// get their token from the local store.
    pub async fn authenticate(&self, name: String, password: String) -> Result<String, Status> {
        let store = self
            .auth
            .get()
            .map(ServerAuth::shared)
            .ok_or_else(|| rpc::unsupported("authentication"))?;
        // The password is checked on every auth change committed so far (a user or an enable
        // made via another member a moment ago), not only on those applied here.
        self.auth_barrier().await?;
        let prefix = store.gen_token_prefix();
        let raft = match &self.raft {
            Some(raft) if !prefix.is_empty() => raft,
            _ => {
                return blocking(move || store.authenticate(&name, &password).map_err(auth_status))
                    .await
            }
        };
        let mut prefix = prefix;
        loop {
            let checked = {
                let (store, name, password) = (store.clone(), name.clone(), password.clone());
                blocking(move || store.check_password(&name, &password).map_err(auth_status))
                    .await?
            };
            let res = raft
                .write(Command::Authenticate {
                    name: name.clone(),
                    simple_token_prefix: prefix,
                })
                .await
                .map_err(|e| self.raft_status(e))?;
            let CommandResponse::Authenticate { token } = res else {
                return Err(Status::internal(format!(
                    "rusd: unexpected response to authenticate: {res:?}"
                )));
            };
            // The token must be known here before the client uses it here.
            self.auth_barrier().await?;
            if checked == store.revision() {
                return Ok(token);
            }
            tracing::info!(user = %name, "auth revision moved while the password was checked; retrying");
            prefix = store.gen_token_prefix();
        }
    }
}

/// etcd's answer to a watch creation refused by [`State::authorize_watch`]: created and
/// canceled at once, watch id -1 (`clientv3.InvalidWatchID`), and as cancel reason gRPC's text
/// of the refusal: "invalid auth token", "revision of auth store is old" and "user name is
/// empty" as such, anything else as "permission denied" (etcd `serverWatchStream.recvLoop`).
pub fn watch_denied(state: &State, refusal: &Status) -> WatchResponse {
    let kept = [
        AuthError::InvalidAuthToken,
        AuthError::AuthOldRevision,
        AuthError::UserEmpty,
    ]
    .into_iter()
    .map(auth_status)
    .find(|s| s.code() == refusal.code() && s.message() == refusal.message());
    let reason = kept.unwrap_or_else(|| auth_status(AuthError::PermissionDenied));
    WatchResponse {
        header: state.header_now(),
        watch_id: -1,
        created: true,
        canceled: true,
        cancel_reason: format!(
            "rpc error: code = {} desc = {}",
            crate::metrics::code_name(reason.code()),
            reason.message()
        ),
        ..WatchResponse::default()
    }
}

/// Drops expired simple tokens every second until `shutdown` turns true.
pub async fn token_sweeper(state: Arc<State>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TOKEN_SWEEP) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        if let Some(a) = state.auth_store() {
            a.purge_expired_tokens();
        }
    }
}

/// The gRPC `Auth` service (etcd `AuthServer`).
#[derive(Debug, Clone)]
pub struct AuthService {
    state: Arc<State>,
}

impl AuthService {
    /// A service over `state`.
    pub fn new(state: Arc<State>) -> Self {
        AuthService { state }
    }

    fn store(&self) -> Result<&AuthStore<AnyBackend>, Status> {
        self.state
            .auth_store()
            .ok_or_else(|| rpc::unsupported("authentication"))
    }

    /// The user of a request; admin requests are checked again inside `apply_auth`.
    fn info<T>(&self, req: &Request<T>) -> Result<AuthInfo, Status> {
        self.state.auth_info(&Credentials::of(req))
    }

    /// Checks admin rights before expensive work (bcrypt), then applies `cmd`.
    async fn manage(&self, info: AuthInfo, cmd: AuthCommand) -> Result<AuthResponse, Status> {
        self.state.change_auth(info, cmd).await
    }

    /// A bcrypt hash of `password` (blocking pool), after the admin check of `info`.
    async fn hash(&self, info: &AuthInfo, password: String) -> Result<String, Status> {
        let store = self.store()?;
        store.check_admin(info).map_err(auth_status)?;
        let cost = store.bcrypt_cost();
        blocking(move || {
            rusd_auth::hash_password(&password, cost).map_err(|e| Status::internal(e.to_string()))
        })
        .await
    }

    fn observe<T>(&self, method: &'static str, res: &Result<T, Status>) {
        self.state.metrics.observe("etcdserverpb.Auth", method, res);
    }
}

fn perm_to_pb(p: Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: p.perm_type.as_i32(),
        key: p.key,
        range_end: p.range_end,
    }
}

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let res = (|| {
            self.info(&request)?;
            let s = self.store()?.status();
            Ok(AuthStatusResponse {
                header: self.state.header_now(),
                enabled: s.enabled,
                auth_revision: s.revision,
            })
        })();
        self.observe("AuthStatus", &res);
        res.map(Response::new)
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = request.into_inner();
        let res = async {
            let token = self.state.authenticate(r.name, r.password).await?;
            Ok(AuthenticateResponse {
                header: self.state.header_now(),
                token,
            })
        }
        .await;
        self.observe("Authenticate", &res);
        res.map(Response::new)
    }

    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            self.manage(info, AuthCommand::AuthEnable).await?;
            Ok(AuthEnableResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("AuthEnable", &res);
        res.map(Response::new)
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            self.manage(info, AuthCommand::AuthDisable).await?;
            Ok(AuthDisableResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("AuthDisable", &res);
        res.map(Response::new)
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            let r = request.into_inner();
            let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
            let password_hash = if no_password {
                None
            } else if !r.hashed_password.is_empty() {
                Some(r.hashed_password)
            } else {
                Some(self.hash(&info, r.password).await?)
            };
            self.manage(
                info,
                AuthCommand::UserAdd {
                    name: r.name,
                    password_hash,
                    no_password,
                },
            )
            .await?;
            Ok(AuthUserAddResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("UserAdd", &res);
        res.map(Response::new)
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let res = (|| {
            let info = self.info(&request)?;
            let store = self.store()?;
            let name = &request.get_ref().name;
            store.check_user_get(&info, name).map_err(auth_status)?;
            let user = store.user_get(name).map_err(auth_status)?;
            Ok(AuthUserGetResponse {
                header: self.state.header_now(),
                roles: user.roles,
            })
        })();
        self.observe("UserGet", &res);
        res.map(Response::new)
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let res = (|| {
            let info = self.info(&request)?;
            let store = self.store()?;
            store.check_admin(&info).map_err(auth_status)?;
            Ok(AuthUserListResponse {
                header: self.state.header_now(),
                users: store.user_list(),
            })
        })();
        self.observe("UserList", &res);
        res.map(Response::new)
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            let name = request.into_inner().name;
            self.manage(info, AuthCommand::UserDelete { name }).await?;
            Ok(AuthUserDeleteResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("UserDelete", &res);
        res.map(Response::new)
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            let r = request.into_inner();
            let hash = if r.hashed_password.is_empty() {
                self.hash(&info, r.password).await?
            } else {
                r.hashed_password
            };
            self.manage(info, AuthCommand::UserChangePassword { name: r.name, hash })
                .await?;
            Ok(AuthUserChangePasswordResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("UserChangePassword", &res);
        res.map(Response::new)
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            let r = request.into_inner();
            self.manage(
                info,
                AuthCommand::UserGrantRole {
                    user: r.user,
                    role: r.role,
                },
            )
            .await?;
            Ok(AuthUserGrantRoleResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("UserGrantRole", &res);
        res.map(Response::new)
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            let r = request.into_inner();
            self.manage(
                info,
                AuthCommand::UserRevokeRole {
                    name: r.name,
                    role: r.role,
                },
            )
            .await?;
            Ok(AuthUserRevokeRoleResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("UserRevokeRole", &res);
        res.map(Response::new)
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            let name = request.into_inner().name;
            self.manage(info, AuthCommand::RoleAdd { name }).await?;
            Ok(AuthRoleAddResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("RoleAdd", &res);
        res.map(Response::new)
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let res = (|| {
            let info = self.info(&request)?;
            let store = self.store()?;
            let name = &request.get_ref().role;
            store.check_role_get(&info, name).map_err(auth_status)?;
            let role = store.role_get(name).map_err(auth_status)?;
            Ok(AuthRoleGetResponse {
                header: self.state.header_now(),
                perm: role.permissions.into_iter().map(perm_to_pb).collect(),
            })
        })();
        self.observe("RoleGet", &res);
        res.map(Response::new)
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let res = (|| {
            let info = self.info(&request)?;
            let store = self.store()?;
            store.check_admin(&info).map_err(auth_status)?;
            Ok(AuthRoleListResponse {
                header: self.state.header_now(),
                roles: store.role_list(),
            })
        })();
        self.observe("RoleList", &res);
        res.map(Response::new)
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            let role = request.into_inner().role;
            self.manage(info, AuthCommand::RoleDelete { role }).await?;
            Ok(AuthRoleDeleteResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("RoleDelete", &res);
        res.map(Response::new)
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            let r = request.into_inner();
            // etcd: a request without a permission is "permission not given".
            let perm = r
                .perm
                .ok_or_else(|| auth_status(AuthError::PermissionNotGiven))?;
            let perm_type = PermissionType::from_i32(perm.perm_type)
                .ok_or_else(|| auth_status(AuthError::InvalidAuthMgmt))?;
            self.manage(
                info,
                AuthCommand::RoleGrantPermission {
                    name: r.name,
                    perm: Permission::new(perm_type, perm.key, perm.range_end),
                },
            )
            .await?;
            Ok(AuthRoleGrantPermissionResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("RoleGrantPermission", &res);
        res.map(Response::new)
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let res = async {
            let info = self.info(&request)?;
            let r = request.into_inner();
            self.manage(
                info,
                AuthCommand::RoleRevokePermission {
                    role: r.role,
                    key: r.key,
                    range_end: r.range_end,
                },
            )
            .await?;
            Ok(AuthRoleRevokePermissionResponse {
                header: self.state.header_now(),
            })
        }
        .await;
        self.observe("RoleRevokePermission", &res);
        res.map(Response::new)
    }
}
