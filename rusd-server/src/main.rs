//! `rusd`: an etcd v3 compatible server over mvcc-core. See `rusd --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rusd_server::config::{
    parse_auto_compaction, parse_backend, parse_durability, split_urls, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TXN_OPS, DEFAULT_QUOTA_BYTES,
};
use rusd_server::{ServerConfig, ServerError};

/// rusd: an etcd v3 API server (a cluster member, replicated with raft) over a pluggable
/// storage engine.
#[derive(Debug, Parser)]
#[command(
    name = "rusd",
    version,
    about,
    after_help = "Offline tools on a stopped member's data directory (as etcdutl):\n  \
    rusd import --etcd-db <etcd data dir, member/snap/db or snapshot> --data-dir <dir> [--backend <engine>]\n  \
    rusd export --data-dir <dir> --etcd-db <new bbolt file> [--snapshot-format]\n  \
    rusd snapshot save <data dir> <file> | restore <file> --data-dir <dir> | status <file> [-w table|simple|json]"
)]
struct Cli {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory (default: `<name>.rusd`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// Comma-separated client URLs to advertise (default: the listen URLs).
    #[arg(long, default_value = "")]
    advertise_client_urls: String,
    /// Comma-separated URLs to serve /metrics and /health on.
    #[arg(long, default_value = "")]
    listen_metrics_urls: String,
    /// Interpret --auto-compaction-retention as a duration (`periodic`) or a revision count
    /// (`revision`).
    #[arg(long, default_value = "periodic")]
    auto_compaction_mode: String,
    /// Auto compaction retention: a Go duration or hours (periodic), or revisions (revision).
    /// 0 disables auto compaction.
    #[arg(long, default_value = "0")]
    auto_compaction_retention: String,
    /// Raise the NOSPACE alarm when the backend exceeds this many bytes (0 = 2 GiB default,
    /// negative = no quota).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    quota_backend_bytes: i64,
    /// Maximum number of operations per branch of a transaction.
    #[arg(long, default_value_t = DEFAULT_MAX_TXN_OPS)]
    max_txn_ops: usize,
    /// Maximum client request size in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Maximum concurrent streams that each client connection can open at a time (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS; default: no limit, as etcd).
    #[arg(long, default_value_t = rusd_server::config::DEFAULT_MAX_CONCURRENT_STREAMS)]
    max_concurrent_streams: u32,
    /// Maximum watchers on one watch stream; a create beyond it is canceled at once.
    #[arg(long, default_value_t = rusd_server::config::DEFAULT_MAX_WATCHERS_PER_STREAM, help_heading = "rusd (not in etcd)")]
    max_watchers_per_stream: usize,
    /// Storage engine: memory, sled, redb or rocksdb (only engines compiled into this build).
    #[arg(long, default_value = mvcc_core::engine::DEFAULT_KIND.name(), help_heading = "rusd (not in etcd)")]
    backend: String,
    /// Cache budget of the storage engine in MiB.
    #[arg(long, default_value_t = storage_api::DEFAULT_CACHE_SIZE_MB, help_heading = "rusd (not in etcd)")]
    cache_size_mb: u64,
    /// Keep a key-ordered copy of every key's current row in the engine: ranges over rows
    /// that are not held in memory read them with one engine scan (1.5-4x faster at 1M keys),
    /// while every write stores its row twice (puts 2-8x slower in the embedded benchmark,
    /// a second copy of the live rows on disk). Switching it off drops the copy on restart.
    #[arg(long, help_heading = "rusd (not in etcd)")]
    key_ordered_copy: bool,
    /// When writes become durable. `sync` (the default, etcd's guarantee): a write is
    /// acknowledged, and visible to reads and watches, only once it is on stable storage
    /// (concurrent writes share one flush); nothing acknowledged is lost on a process crash or a
    /// power loss. `buffered` (`buffered:<duration>` sets the interval, default 100 ms): writes
    /// are acknowledged from memory and flushed within the interval; a process crash (sled,
    /// redb, memory) or a power loss (every engine) can lose up to the last interval of
    /// acknowledged writes, never part of one.
    #[arg(long, default_value = "sync", help_heading = "rusd (not in etcd)")]
    durability: String,
    /// Interval of progress notifications to watchers that ask for them (Go duration).
    #[arg(long, default_value = "10m")]
    experimental_watch_progress_notify_interval: String,
    /// Path to the client server TLS certificate chain (PEM). Serves the `https` client and
    /// metrics URLs.
    #[arg(long, help_heading = "Security")]
    cert_file: Option<PathBuf>,
    /// Path to the client server TLS private key (PEM).
    #[arg(long, help_heading = "Security")]
    key_file: Option<PathBuf>,
    /// Path to the CA certificates (PEM) that client certificates must be signed by.
    #[arg(long, help_heading = "Security")]
    trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file on the `https` client URLs.
    #[arg(long, help_heading = "Security")]
    client_cert_auth: bool,
    /// Serve the `https` client URLs with a generated self-signed certificate when no
    /// --cert-file/--key-file are given.
    #[arg(long, help_heading = "Security")]
    auto_tls: bool,
    /// Path to the peer server TLS certificate chain (PEM), also presented as client
    /// certificate to the other members. Serves the `https` peer URLs.
    #[arg(long, help_heading = "Security")]
    peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS private key (PEM).
    #[arg(long, help_heading = "Security")]
    peer_key_file: Option<PathBuf>,
    /// Path to the CA certificates (PEM) the other members' certificates must be signed by.
    #[arg(long, help_heading = "Security")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require a peer client certificate signed by --peer-trusted-ca-file on the `https` peer
    /// URL (mutual TLS between members).
    #[arg(long, help_heading = "Security")]
    peer_client_cert_auth: bool,
    /// Serve and dial the `https` peer URLs with a generated self-signed certificate (in
    /// `<data-dir>/fixtures/peer`) when no --peer-cert-file/--peer-key-file are given; the
    /// other members' certificates are then not verified.
    #[arg(long, help_heading = "Security")]
    peer_auto_tls: bool,
    /// The initial members: `name=http://host:peerport,...` (`https://` with peer TLS; empty:
    /// a one-member cluster).
    #[arg(long, default_value = "", help_heading = "Clustering")]
    initial_cluster: String,
    /// `new` to start a new cluster with --initial-cluster, `existing` to join a running one
    /// that added this member with MemberAdd.
    #[arg(long, default_value = "new", help_heading = "Clustering")]
    initial_cluster_state: String,
    /// Token from which member and cluster ids are derived (keep it distinct per cluster).
    #[arg(long, default_value = rusd_server::config::DEFAULT_CLUSTER_TOKEN, help_heading = "Clustering")]
    initial_cluster_token: String,
    /// URLs to listen on for peer (raft) traffic; only the first is served. Empty: a free
    /// loopback port (enough for a one-member cluster).
    #[arg(long, default_value = "", help_heading = "Clustering")]
    listen_peer_urls: String,
    /// Peer URLs advertised to the other members (default: --listen-peer-urls).
    #[arg(long, default_value = "", help_heading = "Clustering")]
    initial_advertise_peer_urls: String,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100, help_heading = "Clustering")]
    heartbeat_interval: u64,
    /// Raft election timeout in milliseconds.
    #[arg(long, default_value_t = 1000, help_heading = "Clustering")]
    election_timeout: u64,
    /// Applied entries between two snapshots of the store (the raft log is purged behind
    /// them).
    #[arg(long, default_value_t = 10_000, help_heading = "Clustering")]
    snapshot_count: u64,
    /// Lease checkpointing: the leader persists every lease's remaining TTL through the log at
    /// this interval, so that a restart or a new leader resumes it from there (Go duration;
    /// rusd checkpoints by default; `0s` turns it off, etcd 3.4's default).
    #[arg(long, default_value = "5m", help_heading = "Clustering")]
    experimental_lease_checkpoint_interval: String,
    /// Token type: `simple` or `jwt,pub-key=<path>,priv-key=<path>,sign-method=<alg>,ttl=<dur>`.
    #[arg(long, default_value = "simple", help_heading = "Auth")]
    auth_token: String,
    /// Lifetime of a simple token in seconds (refreshed on every use).
    #[arg(long, default_value_t = rusd_server::auth::DEFAULT_AUTH_TOKEN_TTL_SECS, help_heading = "Auth")]
    auth_token_ttl: u64,
    /// bcrypt cost of hashed passwords (4..=31).
    #[arg(long, default_value_t = 10, help_heading = "Auth")]
    bcrypt_cost: u32,
    /// `FROM=TO`: dial the peer URL TO whenever this member would dial the peer URL FROM
    /// (repeatable). For a local proxy or a NAT address; the membership, and so the
    /// member ids, keep FROM.
    #[arg(long, value_name = "FROM=TO", help_heading = "rusd (not in etcd)")]
    peer_url_rewrite: Vec<String>,
    /// Log filter (RUST_LOG syntax), e.g. `info` or `rusd_server=debug`.
    #[arg(long, default_value = "info", help_heading = "rusd (not in etcd)")]
    log_level: String,
}

fn config_from(cli: Cli) -> Result<ServerConfig, ServerError> {
    let backend = parse_backend(&cli.backend)?;
    let durability = parse_durability(&cli.durability)?;
    let auto = parse_auto_compaction(&cli.auto_compaction_mode, &cli.auto_compaction_retention)?;
    let quota = match cli.quota_backend_bytes {
        q if q < 0 => None,
        0 => Some(DEFAULT_QUOTA_BYTES),
        q => Some(q as u64),
    };
    let checkpoint =
        rusd_server::config::parse_go_duration(&cli.experimental_lease_checkpoint_interval)
            .map_err(ServerError::Config)?;
    let progress =
        rusd_server::config::parse_go_duration(&cli.experimental_watch_progress_notify_interval)
            .map_err(ServerError::Config)?;
    if progress.is_zero() {
        return Err(ServerError::Config(
            "--experimental-watch-progress-notify-interval must be > 0".into(),
        ));
    }
    let listen = split_urls(&cli.listen_client_urls);
    for u in listen
        .iter()
        .chain(split_urls(&cli.listen_metrics_urls).iter())
    {
        rusd_server::config::parse_url(u)?;
    }
    let mut tls = rusd_server::tls::TlsSettings::default()
        .with_client_cert_auth(cli.client_cert_auth)
        .with_auto_tls(cli.auto_tls);
    match (cli.cert_file, cli.key_file) {
        (Some(c), Some(k)) => tls = tls.with_cert(c, k),
        (None, None) => {}
        _ => {
            return Err(ServerError::Config(
                "--cert-file and --key-file must be given together".into(),
            ))
        }
    }
    if let Some(ca) = cli.trusted_ca_file {
        tls = tls.with_trusted_ca(ca);
    }
    let any_https = listen
        .iter()
        .chain(split_urls(&cli.listen_metrics_urls).iter())
        .any(|u| u.starts_with("https://"));
    if any_https && !tls.is_configured() {
        return Err(ServerError::Config(
            "TLS key/cert (--cert-file, --key-file) must be provided for https client URLs (or use --auto-tls)".into(),
        ));
    }
    let initial_cluster = rusd_server::config::parse_initial_cluster(&cli.initial_cluster)?;
    let cluster_state = rusd_server::config::parse_cluster_state(&cli.initial_cluster_state)?;
    let peer_listen = split_urls(&cli.listen_peer_urls);
    let peer_rewrites = rusd_server::config::parse_peer_url_rewrites(&cli.peer_url_rewrite)?;
    let peer_advertise = split_urls(&cli.initial_advertise_peer_urls);
    for u in peer_listen.iter().chain(peer_advertise.iter()) {
        rusd_server::config::parse_peer_url(u)?;
    }
    let mut peer_tls = rusd_server::tls::TlsSettings::default()
        .with_client_cert_auth(cli.peer_client_cert_auth)
        .with_auto_tls(cli.peer_auto_tls);
    match (cli.peer_cert_file, cli.peer_key_file) {
        (Some(c), Some(k)) => peer_tls = peer_tls.with_cert(c, k),
        (None, None) => {}
        _ => {
            return Err(ServerError::Config(
                "--peer-cert-file and --peer-key-file must be given together".into(),
            ))
        }
    }
    if let Some(ca) = cli.peer_trusted_ca_file {
        peer_tls = peer_tls.with_trusted_ca(ca);
    }
    let peer_https = rusd_server::config::peer_urls_https(
        peer_listen
            .iter()
            .chain(peer_advertise.iter())
            .chain(initial_cluster.iter().flat_map(|(_, urls)| urls.iter()))
            .map(String::as_str),
    )?;
    if peer_https && !peer_tls.is_configured() {
        // etcd's wording, with the flags that fix it.
        let url = peer_listen
            .iter()
            .chain(peer_advertise.iter())
            .chain(initial_cluster.iter().flat_map(|(_, urls)| urls.iter()))
            .next()
            .map(|u| u.trim_start_matches("https://").trim_end_matches('/'))
            .unwrap_or_default();
        return Err(ServerError::Config(format!(
            "cannot listen on TLS for {url}: KeyFile and CertFile are not presented \
             (--peer-cert-file and --peer-key-file, or --peer-auto-tls)"
        )));
    }
    if cli.heartbeat_interval == 0 || cli.election_timeout <= cli.heartbeat_interval {
        return Err(ServerError::Config(
            "--election-timeout must be greater than --heartbeat-interval (> 0)".into(),
        ));
    }
    let data_dir = cli
        .data_dir
        .unwrap_or_else(|| PathBuf::from(format!("{}.rusd", cli.name)));
    Ok(ServerConfig::new(data_dir)
        .with_name(cli.name)
        .with_listen_client_urls(listen)
        .with_advertise_client_urls(split_urls(&cli.advertise_client_urls))
        .with_listen_metrics_urls(split_urls(&cli.listen_metrics_urls))
        .with_backend(backend)
        .with_cache_size_mb(cli.cache_size_mb)
        .with_key_ordered_copy(cli.key_ordered_copy)
        .with_durability(durability)
        .with_auto_compaction(auto)
        .with_quota_backend_bytes(quota)
        .with_max_txn_ops(cli.max_txn_ops)
        .with_max_request_bytes(cli.max_request_bytes)
        .with_max_concurrent_streams(cli.max_concurrent_streams)
        .with_max_watchers_per_stream(cli.max_watchers_per_stream)
        .with_progress_notify_interval(progress)
        .with_client_tls(tls)
        .with_peer_tls(peer_tls)
        .with_initial_cluster(initial_cluster)
        .with_initial_cluster_state(cluster_state)
        .with_initial_cluster_token(cli.initial_cluster_token)
        .with_listen_peer_urls(peer_listen)
        .with_peer_url_rewrites(peer_rewrites)
        .with_initial_advertise_peer_urls(peer_advertise)
        .with_raft_timing(
            std::time::Duration::from_millis(cli.heartbeat_interval),
            std::time::Duration::from_millis(cli.election_timeout),
        )
        .with_snapshot_count(cli.snapshot_count)
        .with_lease_checkpoint_interval(checkpoint)
        .with_auth(rusd_server::auth::AuthSettings {
            token: cli.auth_token,
            token_ttl: std::time::Duration::from_secs(cli.auth_token_ttl),
            bcrypt_cost: cli.bcrypt_cost,
        }))
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("interrupt")
    }
}

async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let server = rusd_server::start(config).await?;
    let handle = server.shutdown_handle();
    tokio::spawn(async move {
        match wait_for_signal().await {
            Ok(sig) => tracing::info!(signal = sig, "received signal; shutting down"),
            Err(e) => tracing::error!(error = %e, "cannot wait for signals; shutting down"),
        }
        handle.shutdown();
    });
    server.wait().await
}

/// Caps glibc's malloc arenas at one per core (unless the operator set `MALLOC_ARENA_MAX`).
///
/// glibc gives a thread that finds the arenas' locks taken an arena of its own, up to 8 per
/// core, and memory freed in one arena is reused by that arena only. Measured with one redb
/// member under `rusd-bench load --clients 64 --ops 10000` (README "Server memory"): peak RSS
/// 37.0-37.6 MiB with glibc's default, 34.4 MiB with 2 arenas, 33.4 MiB with 1, at the same
/// put and range rates.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` sets one glibc allocator parameter and takes no pointer; it runs first
    // thing in `main`, before this process has started any other thread. Its result (0 when
    // glibc refuses the value) needs no handling: the default arenas then stay.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, cap);
    }
}

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    cap_malloc_arenas();
    // Offline tools on a stopped member's data directory (like `etcdutl`): `rusd import`,
    // `rusd export`, `rusd snapshot save|restore|status`.
    let first = std::env::args_os().nth(1);
    if first
        .as_deref()
        .is_some_and(|a| a == "import" || a == "export" || a == "snapshot")
    {
        return etcd_import::cli::run(
            "rusd",
            std::env::args_os(),
            etcd_import::cli::Layout::RusdDataDir,
        );
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match config_from(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rusd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rusd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rusd: {}", rusd_server::error::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
