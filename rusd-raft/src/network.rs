//! The peer transport: a tonic gRPC service (`proto/raftpb.proto`) carrying openraft's
//! AppendEntries, Vote and InstallSnapshot (chunked) RPCs, and the forwarding of client
//! requests to the leader.
//!
//! Bodies are [`postcard`]-encoded openraft and rusd-raft types (compact, and keys and values
//! travel as raw bytes); openraft's error types travel as JSON (self-describing, they carry
//! free-form error chains). Every decode failure is a typed error: a malformed request is
//! answered with `InvalidArgument`, a malformed reply becomes an openraft network error, never
//! a panic. A request carries the sender's cluster id, and a member refuses requests of another
//! cluster (`FailedPrecondition`).
//!
//! With a [`PeerTls`] (`RaftNodeConfig::peer_tls`) the peer listener serves TLS (rustls; a
//! refused handshake is logged as `peer TLS handshake refused` and the connection closed) and
//! `https` peer URLs are dialled over TLS; `http` peer URLs stay plain text.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError as OpenraftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::RaftError;
use crate::pb::peer_reply::Result as ReplyResult;
use crate::pb::raft_peer_client::RaftPeerClient;
use crate::pb::raft_peer_server::RaftPeer;
use crate::pb::{PeerReply, PeerRequest};
use crate::types::{Member, NodeId, Raft, TypeConfig};

/// Largest peer message accepted or sent (an AppendEntries batch, a snapshot chunk).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Time allowed to establish a connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Encodes a body with postcard.
pub(crate) fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, RaftError> {
    postcard::to_stdvec(v).map_err(|source| RaftError::Encode { what, source })
}

/// Decodes a postcard body.
pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, b: &[u8]) -> Result<T, RaftError> {
    postcard::from_bytes(b).map_err(|source| RaftError::Decode { what, source })
}

/// Decodes a JSON body.
pub(crate) fn decode_json<T: DeserializeOwned>(
    what: &'static str,
    b: &[u8],
) -> Result<T, RaftError> {
    serde_json::from_slice(b).map_err(|source| RaftError::DecodeJson { what, source })
}

/// `url` (a peer URL or its rewrite) as a tonic endpoint. An `https` URL is given to tonic
/// as `http`: the TLS is done by this crate's connector ([`tls_connector`]), and tonic, when
/// built with its own TLS, refuses `https` endpoints it has no TLS configuration for.
fn endpoint_of(url: &str) -> Result<Endpoint, RaftError> {
    let plain = match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_string(),
    };
    Endpoint::from_shared(plain)
        .map(|e| {
            e.connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
        })
        .map_err(|e| RaftError::InvalidArgument(format!("bad peer URL {url:?}: {e}")))
}

/// Lazily connected gRPC channels to the peers, one per peer URL, shared by replication and
/// forwarding.
///
/// Rewrites (`from` → `to`, see [`PeerClients::with_rewrites`]) make this member dial
/// another address than the peer URL the membership lists: a local proxy, a NAT address.
/// They apply to this member only; the membership, and so the member ids, are unchanged.
#[derive(Debug, Default)]
pub struct PeerClients {
    channels: Mutex<HashMap<String, Channel>>,
    rewrites: BTreeMap<String, String>,
    /// The TLS of `https` peer URLs (see [`PeerTls`]).
    tls: Option<PeerTls>,
}

/// A peer URL as compared by the rewrites: without trailing slashes.
fn normalized(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl PeerClients {
    /// Clients that dial `to` instead of every peer URL `from` of `rewrites` (compared
    /// without trailing slashes), connecting to `https` URLs with `tls` (and to `http` ones in
    /// plain text).
    pub fn new(rewrites: impl IntoIterator<Item = (String, String)>, tls: Option<PeerTls>) -> Self {
        PeerClients {
            channels: Mutex::default(),
            rewrites: rewrites
                .into_iter()
                .map(|(from, to)| (normalized(&from).to_string(), to))
                .collect(),
            tls,
        }
    }

    /// [`PeerClients::new`] without TLS.
    pub fn with_rewrites(rewrites: impl IntoIterator<Item = (String, String)>) -> Self {
        PeerClients::new(rewrites, None)
    }

    /// [`PeerClients::new`] without rewrites.
    pub fn with_tls(tls: Option<PeerTls>) -> Self {
        PeerClients::new([], tls)
    }

    /// The URL dialed for the peer URL `url`: its rewrite, or `url` itself.
    pub fn dial_url<'a>(&'a self, url: &'a str) -> &'a str {
        self.rewrites
            .get(normalized(url))
            .map_or(url, String::as_str)
    }

    /// The client for `member` (a channel to its first peer URL, or that URL's rewrite,
    /// connected on first use, reconnecting as needed).
    pub fn client(&self, member: &Member) -> Result<RaftPeerClient<Channel>, RaftError> {
        let url = member.peer_urls.first().ok_or_else(|| {
            RaftError::InvalidArgument(format!("member {member} has no peer URL"))
        })?;
        let mut channels = self.channels.lock();
        let ch = match channels.get(url) {
            Some(ch) => ch.clone(),
            None => {
                let dial = self.dial_url(url);
                let endpoint = endpoint_of(dial).map_err(|e| match e {
                    RaftError::InvalidArgument(m) if dial != url => {
                        RaftError::InvalidArgument(format!("{m} (the rewrite of peer URL {url:?})"))
                    }
                    other => other,
                })?;
                let ch = if dial.starts_with("https://") {
                    let tls = self.tls.as_ref().ok_or_else(|| {
                        RaftError::InvalidArgument(format!(
                            "peer URL {dial} is https but this member has no peer TLS configured"
                        ))
                    })?;
                    endpoint.connect_with_connector_lazy(tls_connector(tls.client.clone()))
                } else {
                    endpoint.connect_lazy()
                };
                channels.insert(url.clone(), ch.clone());
                ch
            }
        };
        Ok(RaftPeerClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// TLS of the peer transport (`https` peer URLs), as rustls configurations built by the
/// embedder: the peer listener serves `server`, the channels to the other members connect
/// with `client` (which verifies the members' certificates and presents this member's).
#[derive(Clone)]
pub struct PeerTls {
    /// The peer listener's TLS: its certificate, and the CA peer client certificates must be
    /// signed by (mutual TLS).
    pub server: Arc<rustls::ServerConfig>,
    /// The channels' TLS: the CA the members' certificates must be signed by, and this
    /// member's client certificate. Its ALPN protocols are replaced by `h2`.
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

/// A tonic connector to `https` peer URLs: TCP, then the TLS handshake (the server name is
/// the URL's host, a DNS name or an IP address), offering `h2`.
fn tls_connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
       + 'static {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tower::service_fn(move |uri: tonic::codegen::http::Uri| {
        let connector = connector.clone();
        async move {
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("peer URL {uri} has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            // The endpoint URI is the peer URL with `http` for `https` (see [`endpoint_of`]).
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| invalid(format!("peer URL {uri}: {e}")))?;
            let tls = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        }
    })
}

/// A peer connection accepted over TLS (see [`tls_incoming`]).
#[derive(Debug)]
pub(crate) struct PeerTlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for PeerTlsIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(self.0.get_ref().0)
    }
}

impl tokio::io::AsyncRead for PeerTlsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PeerTlsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts plain-text peer connections on `listener`, with `TCP_NODELAY` set on each.
///
/// tonic's `serve_with_incoming` ignores its own `tcp_nodelay` setting, so without this the
/// peer service's sockets kept Nagle's algorithm: a reply written in two parts (h2 writes a
/// forwarded write's response headers and body separately when the handler finishes later)
/// waited for the ACK of the first, which the requester delays by up to 40 ms. Every write
/// forwarded by a lone client took 44 ms.
pub(crate) fn plain_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "peer listener: cannot set TCP_NODELAY");
            }
        })
    })
}

/// Time allowed for a peer's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts peer connections on `listener` and completes their TLS handshakes concurrently;
/// the established connections come out of the returned stream. A refused handshake (a
/// plain-text client, a certificate not signed by the peer CA) is logged and the connection
/// closed. The accept task ends when the stream is dropped and a connection arrives, or when
/// the returned handle is aborted.
pub(crate) fn tls_incoming(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> (
    tokio_stream::wrappers::UnboundedReceiverStream<std::io::Result<PeerTlsIo>>,
    tokio::task::JoinHandle<()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "peer listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(PeerTlsIo(tls)));
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%remote, error = %e, "peer TLS handshake refused")
                    }
                    Err(_) => tracing::warn!(%remote, "peer TLS handshake timed out"),
                }
            });
        }
    });
    (
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        task,
    )
}

/// Creates the [`PeerConnection`]s openraft replicates through.
#[derive(Debug, Clone)]
pub struct Network {
    cluster_id: u64,
    clients: Arc<PeerClients>,
}

impl Network {
    /// A factory for cluster `cluster_id` over `clients`.
    pub fn new(cluster_id: u64, clients: Arc<PeerClients>) -> Self {
        Network {
            cluster_id,
            clients,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection {
            cluster_id: self.cluster_id,
            target,
            client: self.clients.client(node),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    cluster_id: u64,
    target: NodeId,
    client: Result<RaftPeerClient<Channel>, RaftError>,
}

/// Sends `payload` through `call` and decodes the reply into openraft's result types.
async fn rpc<Resp, E, F, Fut>(
    conn: &mut PeerConnection,
    what: &'static str,
    payload: Vec<u8>,
    option: &RPCOption,
    call: F,
) -> Result<Resp, RPCError<NodeId, Member, OpenraftError<NodeId, E>>>
where
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
    F: FnOnce(RaftPeerClient<Channel>, Request<PeerRequest>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<PeerReply>, Status>>,
{
    let client = match &conn.client {
        Ok(c) => c.clone(),
        Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e))),
    };
    let mut req = Request::new(PeerRequest {
        cluster_id: conn.cluster_id,
        payload,
    });
    req.set_timeout(option.hard_ttl());
    let reply = match call(client, req).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let err = RaftError::Transport {
                peer: conn.target,
                source: status,
            };
            return Err(match &err {
                RaftError::Transport { source, .. }
                    if source.code() == tonic::Code::Unavailable =>
                {
                    RPCError::Unreachable(Unreachable::new(&err))
                }
                _ => RPCError::Network(NetworkError::new(&err)),
            });
        }
    };
    match reply.result {
        Some(ReplyResult::Ok(bytes)) => {
            decode::<Resp>(what, &bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))
        }
        Some(ReplyResult::Err(bytes)) => {
            match decode_json::<OpenraftError<NodeId, E>>(what, &bytes) {
                Ok(remote) => Err(RPCError::RemoteError(RemoteError::new(conn.target, remote))),
                Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
            }
        }
        None => {
            let e = RaftError::InvalidArgument(format!("empty {what} reply"));
            Err(RPCError::Network(NetworkError::new(&e)))
        }
    }
}

fn encode_rpc<T: Serialize, E: std::error::Error>(
    what: &'static str,
    v: &T,
) -> Result<Vec<u8>, RPCError<NodeId, Member, OpenraftError<NodeId, E>>> {
    encode(what, v).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc_req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, OpenraftError<NodeId>>>
    {
        let payload = encode_rpc("append entries request", &rpc_req)?;
        rpc(
            self,
            "append entries reply",
            payload,
            &option,
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc_req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, OpenraftError<NodeId, InstallSnapshotError>>,
    > {
        let payload = encode_rpc("install snapshot request", &rpc_req)?;
        rpc(
            self,
            "install snapshot reply",
            payload,
            &option,
            |mut c, r| async move { c.install_snapshot(r).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc_req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, OpenraftError<NodeId>>> {
        let payload = encode_rpc("vote request", &rpc_req)?;
        rpc(
            self,
            "vote reply",
            payload,
            &option,
            |mut c, r| async move { c.vote(r).await },
        )
        .await
    }
}

/// What a member does with a forwarded request (implemented by the node).
pub(crate) trait ForwardHandler: Send + Sync + 'static {
    /// Handles a forwarded request (postcard body) and returns the postcard reply body, or
    /// the error to return.
    fn forward(
        &self,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, Vec<u8>>> + Send;
}

/// The server side of the peer service.
pub(crate) struct PeerService<H> {
    pub(crate) cluster_id: u64,
    pub(crate) raft: Raft,
    pub(crate) handler: Arc<H>,
}

fn reply_of<T: Serialize, E: Serialize>(
    result: Result<T, E>,
) -> Result<Response<PeerReply>, Status> {
    let result = match result {
        Ok(v) => ReplyResult::Ok(
            postcard::to_stdvec(&v).map_err(|e| Status::internal(format!("encode: {e}")))?,
        ),
        Err(e) => ReplyResult::Err(
            serde_json::to_vec(&e).map_err(|e| Status::internal(format!("encode: {e}")))?,
        ),
    };
    Ok(Response::new(PeerReply {
        result: Some(result),
    }))
}

impl<H> PeerService<H> {
    fn check(&self, req: &PeerRequest) -> Result<(), Status> {
        if req.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "request from cluster {:x}, this member is in cluster {:x}",
                req.cluster_id, self.cluster_id
            )));
        }
        Ok(())
    }
}

fn bad_request(e: RaftError) -> Status {
    Status::invalid_argument(crate::error_line(&e))
}

#[tonic::async_trait]
impl<H: ForwardHandler> RaftPeer for PeerService<H> {
    async fn append_entries(
        &self,
        request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let req = request.into_inner();
        self.check(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode("append entries request", &req.payload).map_err(bad_request)?;
        reply_of(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let req = request.into_inner();
        self.check(&req)?;
        let rpc: VoteRequest<NodeId> = decode("vote request", &req.payload).map_err(bad_request)?;
        reply_of(self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<PeerRequest>,
    ) -> Result<Response<PeerReply>, Status> {
        let req = request.into_inner();
        self.check(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode("install snapshot request", &req.payload).map_err(bad_request)?;
        reply_of(self.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let req = request.into_inner();
        self.check(&req)?;
        let result = match self.handler.forward(req.payload).await {
            Ok(b) => ReplyResult::Ok(b),
            Err(b) => ReplyResult::Err(b),
        };
        Ok(Response::new(PeerReply {
            result: Some(result),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_peer_connections_have_nodelay() {
        use tokio_stream::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(plain_incoming(listener));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn rewrites_change_the_dialed_url_only_for_their_peer() {
        let clients = PeerClients::with_rewrites([(
            "http://127.0.0.1:2380/".to_string(),
            "http://127.0.0.1:12380".to_string(),
        )]);
        assert_eq!(
            clients.dial_url("http://127.0.0.1:2380"),
            "http://127.0.0.1:12380"
        );
        assert_eq!(
            clients.dial_url("http://127.0.0.1:2380/"),
            "http://127.0.0.1:12380"
        );
        assert_eq!(
            clients.dial_url("http://127.0.0.1:2381"),
            "http://127.0.0.1:2381"
        );
        assert_eq!(
            PeerClients::default().dial_url("http://127.0.0.1:2380"),
            "http://127.0.0.1:2380"
        );
    }

    #[tokio::test]
    async fn an_https_peer_without_peer_tls_is_a_clear_error() {
        let clients = PeerClients::default();
        let member = Member {
            name: "b".into(),
            peer_urls: vec!["https://127.0.0.1:1".into()],
            client_urls: Vec::new(),
        };
        let err = clients.client(&member).map(|_| ()).unwrap_err();
        assert_eq!(
            err.to_string(),
            RaftError::InvalidArgument(
                "peer URL https://127.0.0.1:1 is https but this member has no peer TLS configured"
                    .into()
            )
            .to_string()
        );
        // A plain peer URL gets a (lazily connected) channel.
        let plain = Member {
            peer_urls: vec!["http://127.0.0.1:1".into()],
            ..member
        };
        assert!(clients.client(&plain).is_ok());
    }
}
