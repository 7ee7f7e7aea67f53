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

/// `url` as a tonic endpoint.
fn endpoint_of(url: &str) -> Result<Endpoint, RaftError> {
    Endpoint::from_shared(url.to_string())
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
}

/// A peer URL as compared by the rewrites: without trailing slashes.
fn normalized(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl PeerClients {
    /// Clients that dial `to` instead of every peer URL `from` of `rewrites` (compared
    /// without trailing slashes).
    pub fn with_rewrites(rewrites: impl IntoIterator<Item = (String, String)>) -> Self {
        PeerClients {
            channels: Mutex::default(),
            rewrites: rewrites
                .into_iter()
                .map(|(from, to)| (normalized(&from).to_string(), to))
                .collect(),
        }
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
                let ch = endpoint_of(dial)
                    .map_err(|e| match e {
                        RaftError::InvalidArgument(m) if dial != url => RaftError::InvalidArgument(
                            format!("{m} (the rewrite of peer URL {url:?})"),
                        ),
                        other => other,
                    })?
                    .connect_lazy();
                channels.insert(url.clone(), ch.clone());
                ch
            }
        };
        Ok(RaftPeerClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
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
}
