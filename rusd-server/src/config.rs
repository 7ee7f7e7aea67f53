//! Server configuration and the parsers of etcd-style flag values (URLs, Go durations,
//! auto-compaction retention).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use mvcc_core::CompactionMode;
use storage_api::{BackendKind, Durability, DEFAULT_CACHE_SIZE_MB, DEFAULT_FLUSH_INTERVAL};

use crate::error::ServerError;

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--max-concurrent-streams`: no limit (`math.MaxUint32`).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = u32::MAX;
/// Default `--max-watchers-per-stream` (rusd's own limit; etcd has none).
pub const DEFAULT_MAX_WATCHERS_PER_STREAM: usize = 10_000;
/// etcd's default backend quota (2 GiB), used when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Extra bytes gRPC accepts on top of `max_request_bytes` (etcd's `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// etcd's default interval of progress notifications to watchers that asked for them.
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// The version this server reports (the etcd API version it implements).
pub const ETCD_VERSION: &str = "3.5.0";
/// etcd's minimum lease TTL with the default election timeout (a shorter TTL is raised to it).
pub const MIN_LEASE_TTL: i64 = 2;
/// etcd's maximum lease TTL.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Everything `rusd` needs to start. Build one with [`ServerConfig::new`] and the `with_*`
/// setters, or from the command line (see the `rusd` binary).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Member name (etcd `--name`).
    pub name: String,
    /// Data directory; the engine's files live in `<data_dir>/member`.
    pub data_dir: PathBuf,
    /// URLs to serve gRPC on (`http://host:port`; port 0 picks a free port).
    pub listen_client_urls: Vec<String>,
    /// URLs advertised to clients (MemberList); defaults to the listen URLs.
    pub advertise_client_urls: Vec<String>,
    /// URLs to serve `/metrics` and `/health` on (none = not served).
    pub listen_metrics_urls: Vec<String>,
    /// The storage engine.
    pub backend: BackendKind,
    /// The engine's cache budget in MiB.
    pub cache_size_mb: u64,
    /// Keep the key-ordered copy of the current rows in the engine (off by default; see
    /// `mvcc_core::StoreConfig::with_key_ordered_copy`).
    pub key_ordered_copy: bool,
    /// When acknowledged writes become durable.
    pub durability: Durability,
    /// Automatic compaction (`None` = disabled).
    pub auto_compaction: Option<CompactionMode>,
    /// How often the auto-compactor checks (`None` = etcd's: a tenth of the period, or
    /// 5 minutes in revision mode).
    pub auto_compaction_check_interval: Option<Duration>,
    /// Backend quota in bytes (`None` = no quota).
    pub quota_backend_bytes: Option<u64>,
    /// Maximum number of operations per transaction branch.
    pub max_txn_ops: usize,
    /// Maximum size of a client request in bytes.
    pub max_request_bytes: usize,
    /// Maximum concurrent gRPC streams per client connection (etcd
    /// `--max-concurrent-streams`, HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`): a client
    /// opening more has the excess refused with `REFUSED_STREAM` (or queued by its HTTP/2
    /// library until one ends).
    pub max_concurrent_streams: u32,
    /// Maximum watchers on one watch stream (rusd's own limit; etcd has none): a create
    /// beyond it is answered created and canceled at once, with a cancel reason.
    pub max_watchers_per_stream: usize,
    /// Interval of progress notifications to watchers created with `progress_notify`.
    pub progress_notify_interval: Duration,
    /// How often expired leases are revoked.
    pub lease_check_interval: Duration,
    /// How long a graceful shutdown waits for open streams before closing the store anyway.
    pub shutdown_grace: Duration,
    /// TLS of the client and metrics listeners (used by their `https` URLs).
    pub client_tls: crate::tls::TlsSettings,
    /// TLS of the peer transport (etcd's `--peer-*` flags; used when the peer URLs are
    /// `https`).
    pub peer_tls: crate::tls::TlsSettings,
    /// The cluster (etcd `--initial-cluster`): every initial member's name and peer URLs.
    /// Empty: a one-member cluster of this member.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// etcd `--initial-cluster-state`: a new cluster, or joining an existing one.
    pub initial_cluster_state: ClusterState,
    /// etcd `--initial-cluster-token`: member and cluster ids are derived from it.
    pub initial_cluster_token: String,
    /// URLs the peer service listens on (etcd `--listen-peer-urls`). Empty: a free loopback
    /// port (enough for a one-member cluster).
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs advertised to the other members (etcd `--initial-advertise-peer-urls`);
    /// default: the listen peer URLs. They, with the token, give the member id.
    pub initial_advertise_peer_urls: Vec<String>,
    /// Raft heartbeat interval (etcd `--heartbeat-interval`, 100 ms).
    pub heartbeat_interval: Duration,
    /// Raft election timeout (etcd `--election-timeout`, 1000 ms; a member waits between
    /// one and two of them before it campaigns).
    pub election_timeout: Duration,
    /// Applied entries between two snapshots of the store (etcd `--snapshot-count`).
    pub snapshot_count: u64,
    /// How often the leader checkpoints remaining lease TTLs through the log
    /// (`--experimental-lease-checkpoint-interval`; zero: never).
    pub lease_checkpoint_interval: Duration,
    /// Authentication: `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`.
    pub auth: crate::auth::AuthSettings,
    /// `--peer-url-rewrite FROM=TO` (rusd only): this member dials `TO` whenever it would
    /// dial the peer URL `FROM` (a local proxy, a NAT address). Empty: none.
    pub peer_url_rewrites: Vec<(String, String)>,
}

/// etcd's `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterState {
    /// Start a new cluster with the initial members.
    #[default]
    New,
    /// Join a running cluster that added this member (MemberAdd).
    Existing,
}

/// etcd's default peer URL (`--initial-advertise-peer-urls`).
pub const DEFAULT_PEER_URL: &str = "http://localhost:2380";
/// etcd's default `--initial-cluster-token`.
pub const DEFAULT_CLUSTER_TOKEN: &str = "etcd-cluster";

impl ServerConfig {
    /// etcd's defaults: name `default`, data dir `default.rusd`, client URL
    /// `http://127.0.0.1:2379`, the first compiled engine of sled, redb, memory, buffered
    /// durability, no auto-compaction, 2 GiB quota, 128 txn ops, 1.5 MiB requests.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            name: "default".into(),
            data_dir: data_dir.into(),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: Vec::new(),
            listen_metrics_urls: Vec::new(),
            backend: mvcc_core::engine::DEFAULT_KIND,
            cache_size_mb: DEFAULT_CACHE_SIZE_MB,
            key_ordered_copy: false,
            durability: Durability::Sync,
            auto_compaction: None,
            auto_compaction_check_interval: None,
            quota_backend_bytes: Some(DEFAULT_QUOTA_BYTES),
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_watchers_per_stream: DEFAULT_MAX_WATCHERS_PER_STREAM,
            progress_notify_interval: DEFAULT_PROGRESS_NOTIFY_INTERVAL,
            lease_check_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(5),
            client_tls: crate::tls::TlsSettings::default(),
            peer_tls: crate::tls::TlsSettings::default(),
            initial_cluster: Vec::new(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: DEFAULT_CLUSTER_TOKEN.into(),
            listen_peer_urls: Vec::new(),
            peer_url_rewrites: Vec::new(),
            initial_advertise_peer_urls: Vec::new(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 10_000,
            lease_checkpoint_interval: rusd_raft::DEFAULT_LEASE_CHECKPOINT_INTERVAL,
            auth: crate::auth::AuthSettings::default(),
        }
    }

    /// Sets the initial cluster (`name`, peer URLs) of etcd's `--initial-cluster`.
    pub fn with_initial_cluster(mut self, members: Vec<(String, Vec<String>)>) -> Self {
        self.initial_cluster = members;
        self
    }
    /// Sets `--initial-cluster-state`.
    pub fn with_initial_cluster_state(mut self, state: ClusterState) -> Self {
        self.initial_cluster_state = state;
        self
    }
    /// Sets `--initial-cluster-token`.
    pub fn with_initial_cluster_token(mut self, token: impl Into<String>) -> Self {
        self.initial_cluster_token = token.into();
        self
    }
    /// Sets `--listen-peer-urls`.
    pub fn with_listen_peer_urls(mut self, urls: Vec<String>) -> Self {
        self.listen_peer_urls = urls;
        self
    }
    /// Sets the peer URL rewrites (`--peer-url-rewrite`), `(from, to)` pairs.
    pub fn with_peer_url_rewrites(mut self, rewrites: Vec<(String, String)>) -> Self {
        self.peer_url_rewrites = rewrites;
        self
    }
    /// Sets `--initial-advertise-peer-urls`.
    pub fn with_initial_advertise_peer_urls(mut self, urls: Vec<String>) -> Self {
        self.initial_advertise_peer_urls = urls;
        self
    }
    /// Sets the raft heartbeat interval and election timeout.
    pub fn with_raft_timing(mut self, heartbeat: Duration, election: Duration) -> Self {
        self.heartbeat_interval = heartbeat;
        self.election_timeout = election;
        self
    }
    /// Sets the number of applied entries between snapshots.
    pub fn with_snapshot_count(mut self, n: u64) -> Self {
        self.snapshot_count = n;
        self
    }

    /// Sets the lease checkpoint interval (zero: no checkpoints).
    pub fn with_lease_checkpoint_interval(mut self, d: Duration) -> Self {
        self.lease_checkpoint_interval = d;
        self
    }

    /// Sets the member name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Sets the client listen URLs.
    pub fn with_listen_client_urls(mut self, urls: Vec<String>) -> Self {
        self.listen_client_urls = urls;
        self
    }
    /// Sets the advertised client URLs.
    pub fn with_advertise_client_urls(mut self, urls: Vec<String>) -> Self {
        self.advertise_client_urls = urls;
        self
    }
    /// Sets the metrics listen URLs.
    pub fn with_listen_metrics_urls(mut self, urls: Vec<String>) -> Self {
        self.listen_metrics_urls = urls;
        self
    }
    /// Sets the engine.
    pub fn with_backend(mut self, kind: BackendKind) -> Self {
        self.backend = kind;
        self
    }
    /// Sets the cache budget in MiB.
    pub fn with_cache_size_mb(mut self, mb: u64) -> Self {
        self.cache_size_mb = mb;
        self
    }
    /// Keeps the key-ordered copy of the current rows in the engine: ranges over rows not
    /// held in memory read them with one engine scan; every write stores its row twice
    /// (`mvcc_core::StoreConfig::with_key_ordered_copy`).
    pub fn with_key_ordered_copy(mut self, yes: bool) -> Self {
        self.key_ordered_copy = yes;
        self
    }
    /// Sets the durability.
    pub fn with_durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// Sets automatic compaction.
    pub fn with_auto_compaction(mut self, mode: Option<CompactionMode>) -> Self {
        self.auto_compaction = mode;
        self
    }
    /// Sets how often the auto-compactor checks.
    pub fn with_auto_compaction_check_interval(mut self, d: Option<Duration>) -> Self {
        self.auto_compaction_check_interval = d;
        self
    }
    /// Sets the quota (`None` = unlimited).
    pub fn with_quota_backend_bytes(mut self, quota: Option<u64>) -> Self {
        self.quota_backend_bytes = quota;
        self
    }
    /// Sets the maximum operations per transaction branch.
    pub fn with_max_txn_ops(mut self, n: usize) -> Self {
        self.max_txn_ops = n;
        self
    }
    /// Sets the maximum request size.
    pub fn with_max_request_bytes(mut self, n: usize) -> Self {
        self.max_request_bytes = n;
        self
    }
    /// Sets the maximum concurrent streams per client connection.
    pub fn with_max_concurrent_streams(mut self, n: u32) -> Self {
        self.max_concurrent_streams = n;
        self
    }
    /// Sets the maximum watchers per watch stream.
    pub fn with_max_watchers_per_stream(mut self, n: usize) -> Self {
        self.max_watchers_per_stream = n;
        self
    }
    /// Sets the TLS of the client and metrics listeners.
    pub fn with_client_tls(mut self, tls: crate::tls::TlsSettings) -> Self {
        self.client_tls = tls;
        self
    }
    /// Sets the TLS of the peer transport (etcd's `--peer-*` flags).
    pub fn with_peer_tls(mut self, tls: crate::tls::TlsSettings) -> Self {
        self.peer_tls = tls;
        self
    }
    /// Sets the authentication settings.
    pub fn with_auth(mut self, auth: crate::auth::AuthSettings) -> Self {
        self.auth = auth;
        self
    }
    /// Sets the progress-notify interval.
    pub fn with_progress_notify_interval(mut self, d: Duration) -> Self {
        self.progress_notify_interval = d;
        self
    }
}

/// Parses an etcd client URL (`http://host:port`, `https://host:port`, or a bare `host:port`)
/// into socket addresses. Unix sockets are rejected.
pub fn parse_url(url: &str) -> Result<Vec<SocketAddr>, ServerError> {
    let rest = if let Some(r) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    {
        r
    } else if url.starts_with("unix") {
        return Err(ServerError::Config(format!(
            "{url}: unix sockets are not supported"
        )));
    } else if url.contains("://") {
        return Err(ServerError::Config(format!(
            "{url}: unsupported URL scheme"
        )));
    } else {
        url
    };
    let hostport = rest.trim_end_matches('/');
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| ServerError::Config(format!("{url}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(ServerError::Config(format!(
            "{url}: resolves to no address"
        )));
    }
    Ok(addrs)
}

/// The host part of a URL (`https://node1.example:2379` → `node1.example`, IPv6 brackets
/// removed), for the names of an `--auto-tls` certificate.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Parses etcd's `--initial-cluster` (`name=http://host:port,name2=...`; a name may appear
/// more than once for several URLs), keeping the order of first appearance.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, ServerError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, url) = item.split_once('=').ok_or_else(|| {
            ServerError::Config(format!(
                "--initial-cluster {item:?}: expected name=http://host:port"
            ))
        })?;
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() || url.is_empty() {
            return Err(ServerError::Config(format!(
                "--initial-cluster {item:?}: expected name=http://host:port"
            )));
        }
        parse_peer_url(url)?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(out)
}

/// Parses a peer URL (`http://host:port` or, with peer TLS, `https://host:port`) like
/// [`parse_url`].
pub fn parse_peer_url(url: &str) -> Result<Vec<SocketAddr>, ServerError> {
    parse_url(url)
}

/// Parses one `--peer-url-rewrite FROM=TO`: two `http://host:port` (or both `https://`) peer
/// URLs (see [`parse_peer_url`]), different from each other.
pub fn parse_peer_url_rewrite(s: &str) -> Result<(String, String), ServerError> {
    let bad = |why: String| {
        ServerError::Config(format!(
            "--peer-url-rewrite {s:?}: {why} (expected FROM=TO, e.g. \
             http://10.0.0.2:2380=http://127.0.0.1:12380)"
        ))
    };
    let (from, to) = s
        .split_once('=')
        .ok_or_else(|| bad("no '=' between the two URLs".into()))?;
    let (from, to) = (from.trim(), to.trim());
    if from.is_empty() || to.is_empty() {
        return Err(bad("a URL is empty".into()));
    }
    let https = |u: &str| u.starts_with("https://");
    if https(from) != https(to) {
        return Err(bad(format!(
            "{from:?} and {to:?} differ in scheme (a rewrite keeps http or https)"
        )));
    }
    for url in [from, to] {
        if !url.starts_with("http://") && !https(url) {
            return Err(bad(format!("{url:?} is not an http:// or https:// URL")));
        }
        parse_peer_url(url).map_err(|e| match e {
            ServerError::Config(m) => bad(m),
            other => bad(other.to_string()),
        })?;
    }
    if from.trim_end_matches('/') == to.trim_end_matches('/') {
        return Err(bad("FROM and TO are the same URL".into()));
    }
    Ok((from.to_string(), to.to_string()))
}

/// Parses every `--peer-url-rewrite`; a FROM given twice is refused.
pub fn parse_peer_url_rewrites(items: &[String]) -> Result<Vec<(String, String)>, ServerError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(items.len());
    for item in items {
        let (from, to) = parse_peer_url_rewrite(item)?;
        let key = from.trim_end_matches('/');
        if out.iter().any(|(f, _)| f.trim_end_matches('/') == key) {
            return Err(ServerError::Config(format!(
                "--peer-url-rewrite: {from} is rewritten twice"
            )));
        }
        out.push((from, to));
    }
    Ok(out)
}

/// Whether the peer URLs (`--listen-peer-urls`, `--initial-advertise-peer-urls`,
/// `--initial-cluster`) are `https`: `Ok(true)` if they all are, `Ok(false)` if none is, an
/// error naming both kinds if they are mixed (a member either serves and dials its peers
/// over TLS or does not).
pub fn peer_urls_https<'a>(urls: impl IntoIterator<Item = &'a str>) -> Result<bool, ServerError> {
    let (mut https, mut plain) = (None, None);
    for u in urls {
        if u.starts_with("https://") {
            https.get_or_insert(u);
        } else {
            plain.get_or_insert(u);
        }
    }
    match (https, plain) {
        (Some(h), Some(p)) => Err(ServerError::Config(format!(
            "peer URLs mix https ({h}) and http ({p}): use https for every peer URL (with \
             --peer-cert-file/--peer-key-file or --peer-auto-tls) or http for all"
        ))),
        (h, _) => Ok(h.is_some()),
    }
}

/// Parses `--initial-cluster-state`.
pub fn parse_cluster_state(s: &str) -> Result<ClusterState, ServerError> {
    match s {
        "new" => Ok(ClusterState::New),
        "existing" => Ok(ClusterState::Existing),
        other => Err(ServerError::Config(format!(
            "--initial-cluster-state {other:?}: expected new or existing"
        ))),
    }
}

/// Parses a comma-separated URL list.
pub fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`, `10s`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s}: missing unit in duration"))?;
        if num_len == 0 {
            return Err(format!("{s}: invalid duration"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s}: invalid duration"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("{s}: unknown unit {u:?} in duration")),
        };
        total += n * secs;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{s}: {e}"))
}

/// Parses etcd's `--auto-compaction-mode` and `--auto-compaction-retention`: retention `0`
/// disables; `periodic` takes a Go duration or a number of hours; `revision` a revision count.
pub fn parse_auto_compaction(
    mode: &str,
    retention: &str,
) -> Result<Option<CompactionMode>, ServerError> {
    let retention = retention.trim();
    if retention.is_empty() || retention == "0" {
        return Ok(None);
    }
    match mode {
        "periodic" => {
            let d = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                Err(_) => parse_go_duration(retention).map_err(ServerError::Config)?,
            };
            if d.is_zero() {
                Ok(None)
            } else {
                Ok(Some(CompactionMode::Periodic(d)))
            }
        }
        "revision" => {
            let n: i64 = retention.parse().map_err(|_| {
                ServerError::Config(format!(
                    "--auto-compaction-retention {retention:?}: expected a revision count"
                ))
            })?;
            if n < 0 {
                return Err(ServerError::Config(
                    "--auto-compaction-retention must not be negative".into(),
                ));
            }
            Ok((n > 0).then_some(CompactionMode::Revision(n)))
        }
        other => Err(ServerError::Config(format!(
            "--auto-compaction-mode {other:?}: expected periodic or revision"
        ))),
    }
}

/// Parses `--durability`: `sync`, `buffered`, or `buffered:<go duration>`.
pub fn parse_durability(s: &str) -> Result<Durability, ServerError> {
    match s {
        "sync" => Ok(Durability::Sync),
        "buffered" => Ok(Durability::Buffered {
            interval: DEFAULT_FLUSH_INTERVAL,
        }),
        other => match other.strip_prefix("buffered:") {
            Some(d) => Ok(Durability::Buffered {
                interval: parse_go_duration(d).map_err(ServerError::Config)?,
            }),
            None => Err(ServerError::Config(format!(
                "--durability {other:?}: expected sync, buffered or buffered:<duration>"
            ))),
        },
    }
}

/// Parses `--backend`, rejecting engines not compiled into this build with a clear message.
pub fn parse_backend(s: &str) -> Result<BackendKind, ServerError> {
    let kind: BackendKind = s
        .parse()
        .map_err(|e: storage_api::StorageError| ServerError::Config(e.to_string()))?;
    if !mvcc_core::is_compiled(kind) {
        let compiled: Vec<&str> = mvcc_core::compiled_backends()
            .iter()
            .map(|k| k.name())
            .collect();
        return Err(ServerError::Config(format!(
            "--backend {kind}: the {kind} engine is not compiled into this rusd build \
             (rebuild with `--features {kind}`); compiled engines: {}",
            compiled.join(", ")
        )));
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(r: Result<impl std::fmt::Debug, ServerError>) -> String {
        match r {
            Err(ServerError::Config(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn peer_url_rewrites() {
        assert_eq!(
            parse_peer_url_rewrite("http://10.0.0.2:2380=http://127.0.0.1:12380").unwrap(),
            (
                "http://10.0.0.2:2380".to_string(),
                "http://127.0.0.1:12380".to_string()
            )
        );
        assert_eq!(
            parse_peer_url_rewrite(" http://127.0.0.1:1 = http://127.0.0.1:2 ").unwrap(),
            (
                "http://127.0.0.1:1".to_string(),
                "http://127.0.0.1:2".to_string()
            )
        );
        let hint = "(expected FROM=TO, e.g. http://10.0.0.2:2380=http://127.0.0.1:12380)";
        assert_eq!(
            config_error(parse_peer_url_rewrite("http://127.0.0.1:1")),
            format!(
                "--peer-url-rewrite \"http://127.0.0.1:1\": no '=' between the two URLs {hint}"
            )
        );
        assert_eq!(
            config_error(parse_peer_url_rewrite("=http://127.0.0.1:1")),
            format!("--peer-url-rewrite \"=http://127.0.0.1:1\": a URL is empty {hint}")
        );
        assert_eq!(
            config_error(parse_peer_url_rewrite(
                "http://127.0.0.1:1=https://127.0.0.1:2"
            )),
            format!(
                "--peer-url-rewrite \"http://127.0.0.1:1=https://127.0.0.1:2\": \
                 \"http://127.0.0.1:1\" and \"https://127.0.0.1:2\" differ in scheme (a rewrite \
                 keeps http or https) {hint}"
            )
        );
        assert_eq!(
            config_error(parse_peer_url_rewrite(
                "ftp://127.0.0.1:1=ftp://127.0.0.1:2"
            )),
            format!(
                "--peer-url-rewrite \"ftp://127.0.0.1:1=ftp://127.0.0.1:2\": \
                 \"ftp://127.0.0.1:1\" is not an http:// or https:// URL {hint}"
            )
        );
        assert_eq!(
            parse_peer_url_rewrite("https://127.0.0.1:1=https://127.0.0.1:2").unwrap(),
            (
                "https://127.0.0.1:1".to_string(),
                "https://127.0.0.1:2".to_string()
            )
        );
        assert_eq!(
            config_error(parse_peer_url_rewrite(
                "http://127.0.0.1:1=http://127.0.0.1:x"
            )),
            format!(
                "--peer-url-rewrite \"http://127.0.0.1:1=http://127.0.0.1:x\": \
                 http://127.0.0.1:x: invalid port value {hint}"
            )
        );
        assert_eq!(
            config_error(parse_peer_url_rewrite(
                "http://127.0.0.1:1/=http://127.0.0.1:1"
            )),
            format!(
                "--peer-url-rewrite \"http://127.0.0.1:1/=http://127.0.0.1:1\": \
                 FROM and TO are the same URL {hint}"
            )
        );
        let items = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_peer_url_rewrites(&items(&[
                "http://127.0.0.1:1=http://127.0.0.1:3",
                "http://127.0.0.1:2=http://127.0.0.1:4",
            ]))
            .unwrap()
            .len(),
            2
        );
        assert_eq!(
            config_error(parse_peer_url_rewrites(&items(&[
                "http://127.0.0.1:1=http://127.0.0.1:3",
                "http://127.0.0.1:1/=http://127.0.0.1:4",
            ]))),
            "--peer-url-rewrite: http://127.0.0.1:1/ is rewritten twice"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("300ms").unwrap(),
            Duration::from_millis(300)
        );
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("5x").is_err());
    }

    #[test]
    fn auto_compaction() {
        assert_eq!(parse_auto_compaction("periodic", "0").unwrap(), None);
        assert_eq!(
            parse_auto_compaction("periodic", "1").unwrap(),
            Some(CompactionMode::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "10m").unwrap(),
            Some(CompactionMode::Periodic(Duration::from_secs(600)))
        );
        assert_eq!(
            parse_auto_compaction("revision", "1000").unwrap(),
            Some(CompactionMode::Revision(1000))
        );
        assert!(parse_auto_compaction("revision", "1h").is_err());
        assert!(parse_auto_compaction("weekly", "1").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:2379").unwrap(),
            vec!["127.0.0.1:2379".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            parse_url("https://127.0.0.1:2379").unwrap(),
            vec!["127.0.0.1:2379".parse::<SocketAddr>().unwrap()]
        );
        assert!(parse_url("unix://x").is_err());
        assert_eq!(
            url_host("https://node1.example:2379").as_deref(),
            Some("node1.example")
        );
        assert_eq!(url_host("http://[::1]:2379").as_deref(), Some("::1"));
        assert_eq!(url_host("127.0.0.1:2379").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            split_urls("http://a:1, http://b:2"),
            vec!["http://a:1", "http://b:2"]
        );
    }

    #[test]
    fn initial_cluster() {
        assert_eq!(
            parse_initial_cluster(
                "a=http://127.0.0.1:1, b=http://127.0.0.1:2,a=http://127.0.0.1:3"
            )
            .unwrap(),
            vec![
                (
                    "a".to_string(),
                    vec![
                        "http://127.0.0.1:1".to_string(),
                        "http://127.0.0.1:3".to_string()
                    ]
                ),
                ("b".to_string(), vec!["http://127.0.0.1:2".to_string()]),
            ]
        );
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("=http://127.0.0.1:1").is_err());
        assert_eq!(
            parse_initial_cluster("a=https://127.0.0.1:1").unwrap(),
            vec![("a".to_string(), vec!["https://127.0.0.1:1".to_string()])]
        );
        assert!(parse_initial_cluster("a=ftp://127.0.0.1:1").is_err());
        assert!(!peer_urls_https(["http://127.0.0.1:1", "http://127.0.0.1:2"]).unwrap());
        assert!(peer_urls_https(["https://127.0.0.1:1", "https://127.0.0.1:2"]).unwrap());
        assert!(!peer_urls_https([]).unwrap());
        assert_eq!(
            peer_urls_https(["https://127.0.0.1:1", "http://127.0.0.1:2"])
                .unwrap_err()
                .to_string(),
            ServerError::Config(
                "peer URLs mix https (https://127.0.0.1:1) and http (http://127.0.0.1:2): use \
                 https for every peer URL (with --peer-cert-file/--peer-key-file or \
                 --peer-auto-tls) or http for all"
                    .into()
            )
            .to_string()
        );
        assert_eq!(
            parse_cluster_state("existing").unwrap(),
            ClusterState::Existing
        );
        assert!(parse_cluster_state("old").is_err());
    }

    #[test]
    fn backends() {
        assert_eq!(parse_backend("memory").unwrap(), BackendKind::Memory);
        let err = parse_backend("nosuch").unwrap_err().to_string();
        assert!(err.contains("unknown backend"), "{err}");
        if !mvcc_core::is_compiled(BackendKind::Rocksdb) {
            let err = parse_backend("rocksdb").unwrap_err().to_string();
            assert!(err.contains("not compiled into this rusd build"), "{err}");
        }
    }

    #[test]
    fn durability() {
        assert_eq!(parse_durability("sync").unwrap(), Durability::Sync);
        assert_eq!(
            parse_durability("buffered:50ms").unwrap(),
            Durability::Buffered {
                interval: Duration::from_millis(50)
            }
        );
        assert!(parse_durability("never").is_err());
    }
}
