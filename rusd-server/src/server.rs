//! Starting and stopping a server: [`start`] and [`RunningServer`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mvcc_core::engine::AnyBackend;
use mvcc_core::{CommitMode, Compactor, StoreConfig};
use storage_api::BackendConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::AuthService;
use crate::cluster::ClusterService;
use crate::config::{self, ServerConfig, GRPC_OVERHEAD_BYTES};
use crate::error::ServerError;
use crate::h2fix::AuthorityFix;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::maintenance::MaintenanceService;
use crate::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::sniff::{self, Protocol};
use crate::state::{State, Store};
use crate::tls::ClientIo;
use crate::watch::WatchService;

/// How often the cached backend size (quota checks, metrics) is refreshed.
const SIZE_REFRESH: Duration = Duration::from_secs(1);

/// Longest a new client connection may take to show whether it speaks HTTP/2 or HTTP/1.1.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// The share of `--cache-size-mb` given to mvcc-core's row cache: one part in this many.
const ROW_CACHE_SHARE: u64 = 4;

/// A started server. Stop it with [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct RunningServer {
    client_addrs: Vec<SocketAddr>,
    client_tls: Vec<bool>,
    metrics_addrs: Vec<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    main: JoinHandle<Result<(), ServerError>>,
    state: Arc<State>,
}

impl RunningServer {
    /// The bound client (gRPC) addresses, in the order of the listen URLs.
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    /// The first client URL (`http://ip:port`, or `https://ip:port` for a TLS listener).
    pub fn client_url(&self) -> String {
        self.client_addrs
            .first()
            .map(|a| {
                let scheme = if self.client_tls.first().copied().unwrap_or(false) {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{a}")
            })
            .unwrap_or_default()
    }

    /// The bound metrics addresses.
    pub fn metrics_addrs(&self) -> &[SocketAddr] {
        &self.metrics_addrs
    }

    /// The member id reported in headers.
    pub fn member_id(&self) -> u64 {
        self.state.member_id
    }

    /// The cluster id reported in headers.
    pub fn cluster_id(&self) -> u64 {
        self.state.cluster_id
    }

    /// The store (for embedding and tests).
    pub fn store(&self) -> &Arc<Store> {
        &self.state.store
    }

    /// The raft member (for embedding and tests).
    pub fn raft(&self) -> Option<&Arc<crate::state::Raft>> {
        self.state.raft.as_ref()
    }

    /// Stops accepting, ends open streams, waits for in-flight requests (at most the configured
    /// grace period), then flushes and closes the store.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown_tx.send(true);
        self.wait().await
    }

    /// Waits until the server stopped (after [`shutdown`](Self::shutdown) from elsewhere, or a
    /// fatal transport error).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.main
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?
    }

    /// A handle that asks the server to stop when signalled.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown_tx.clone())
    }
}

/// Asks a [`RunningServer`] to stop.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Requests a graceful shutdown.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

/// Binds every URL; each listener comes with whether it serves TLS (an `https` URL).
async fn bind_all(urls: &[String]) -> Result<Vec<(TcpListener, bool)>, ServerError> {
    let mut out = Vec::new();
    for url in urls {
        let tls = url.starts_with("https://");
        for addr in config::parse_url(url)? {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            out.push((l, tls));
        }
    }
    Ok(out)
}

/// Opens the store, binds the listeners and starts serving.
pub async fn start(cfg: ServerConfig) -> Result<RunningServer, ServerError> {
    if !mvcc_core::is_compiled(cfg.backend) {
        return Err(config::parse_backend(cfg.backend.name())
            .err()
            .unwrap_or_else(|| {
                ServerError::Config(format!("the {} engine is not compiled in", cfg.backend))
            }));
    }
    if cfg.listen_client_urls.is_empty() {
        return Err(ServerError::Config(
            "--listen-client-urls must name at least one URL".into(),
        ));
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        ServerError::Config(format!(
            "cannot create data dir {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    let listeners = bind_all(&cfg.listen_client_urls).await?;
    let metrics_listeners = bind_all(&cfg.listen_metrics_urls).await?;
    let client_addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|(l, _)| l.local_addr())
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::Config(format!("listener address: {e}")))?;
    let metrics_addrs: Vec<SocketAddr> = metrics_listeners
        .iter()
        .map(|(l, _)| l.local_addr())
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::Config(format!("listener address: {e}")))?;

    let client_tls: Vec<bool> = listeners.iter().map(|(_, t)| *t).collect();
    let any_tls = listeners.iter().chain(&metrics_listeners).any(|(_, t)| *t);
    let acceptor = if any_tls {
        let hosts: Vec<String> = cfg
            .advertise_client_urls
            .iter()
            .chain(&cfg.listen_client_urls)
            .filter_map(|u| config::url_host(u))
            .collect();
        Some(crate::tls::acceptor(
            &cfg.client_tls,
            &cfg.data_dir.join("fixtures").join("client"),
            &hosts,
        )?)
    } else {
        if cfg.client_tls.is_configured() {
            tracing::warn!(
                "scheme is HTTP while key and cert files are present; ignoring key and cert files"
            );
        }
        None
    };

    // The raft log is the write-ahead log: the engine always runs buffered and applies
    // committed entries without a flush of its own (`CommitMode::Backend`). `--durability
    // sync` (ack = durable) flushes the log once per append batch (group fsync: concurrent
    // clients share it); `buffered` leaves the log to its engine's flush interval.
    let engine_durability = match cfg.durability {
        storage_api::Durability::Sync => storage_api::Durability::Buffered {
            interval: std::time::Duration::from_secs(1),
        },
        buffered => buffered,
    };
    // The cache budget is shared: a quarter for mvcc-core's row cache (decoded rows of recent
    // reads, so repeated and range reads skip the engine), the rest for the engine's own.
    let row_cache_mb = cfg.cache_size_mb / ROW_CACHE_SHARE;
    let row_cache_bytes =
        usize::try_from(row_cache_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let backend_cfg = BackendConfig::new(cfg.data_dir.join("member"))
        .with_cache_size_mb(cfg.cache_size_mb - row_cache_mb)
        .with_durability(engine_durability);
    let kind = cfg.backend;
    let max_req = cfg.max_request_bytes;
    let max_txn_ops = cfg.max_txn_ops;
    let backend = tokio::task::spawn_blocking(move || AnyBackend::open(kind, backend_cfg))
        .await
        .map_err(|e| ServerError::Task(e.to_string()))??;
    let store_cfg = StoreConfig::default()
        .with_max_txn_ops(max_txn_ops)
        .with_max_key_size(max_req.max(1))
        .with_max_value_size(max_req.max(1))
        .with_commit_mode(CommitMode::Backend)
        .with_row_cache_bytes(row_cache_bytes)
        .with_key_ordered_copy(cfg.key_ordered_copy);
    // Authentication: the `auth` tree of the same engine, changed by the raft state machine.
    let auth = {
        let (backend, settings) = (backend.clone(), cfg.auth.clone());
        let cert_auth = cfg.client_tls.client_cert_auth;
        tokio::task::spawn_blocking(move || {
            crate::auth::ServerAuth::open(backend, &settings, cert_auth)
        })
        .await
        .map_err(|e| ServerError::Task(e.to_string()))??
    };
    let raft = crate::cluster::start_member(&cfg, backend, store_cfg, auth.shared(), &client_addrs)
        .await?;
    let store = raft.store();
    let advertise = if cfg.advertise_client_urls.is_empty() {
        listeners
            .iter()
            .zip(&client_addrs)
            .map(|((_, tls), a)| format!("{}://{a}", if *tls { "https" } else { "http" }))
            .collect()
    } else {
        cfg.advertise_client_urls.clone()
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut state = State::new(
        store.clone(),
        cfg.name.clone(),
        advertise,
        cfg.max_txn_ops,
        cfg.max_request_bytes,
        cfg.quota_backend_bytes,
        cfg.progress_notify_interval,
        shutdown_rx.clone(),
    );
    state.max_watchers_per_stream = cfg.max_watchers_per_stream;
    state.inline_writes = matches!(cfg.durability, storage_api::Durability::Buffered { .. });
    state.metrics.sync_durability.store(
        matches!(cfg.durability, storage_api::Durability::Sync),
        std::sync::atomic::Ordering::Relaxed,
    );
    state.member_id = raft.id();
    state.cluster_id = raft.cluster_id();
    state.raft = Some(raft.clone());
    state.data_dir = Some(cfg.data_dir.clone());
    let _ = state.auth.set(auth);
    let state = Arc::new(state);
    crate::cluster::publish_self(state.clone(), shutdown_rx.clone());
    tokio::spawn(crate::auth::token_sweeper(
        state.clone(),
        shutdown_rx.clone(),
    ));

    // Background tasks (lease expiry is the raft leader's: `rusd_raft::node`).
    {
        let st = state.clone();
        let mut sd = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SIZE_REFRESH) => {}
                    _ = sd.changed() => break,
                }
                let s = st.clone();
                let _ = tokio::task::spawn_blocking(move || s.refresh_db_size()).await;
            }
        });
    }
    if let Some(mode) = cfg.auto_compaction {
        // The leader proposes compactions through raft (mvcc-core's `Compactor` decides the
        // same way but compacts only its own store).
        let interval = cfg
            .auto_compaction_check_interval
            .unwrap_or_else(|| Compactor::new(store.clone(), mode).check_interval());
        tokio::spawn(crate::kv::auto_compact_loop(
            state.clone(),
            mode,
            interval,
            shutdown_rx.clone(),
        ));
    }
    for (l, tls) in metrics_listeners {
        let tls = if tls { acceptor.clone() } else { None };
        tokio::spawn(crate::http::serve(
            l,
            tls,
            state.clone(),
            shutdown_rx.clone(),
        ));
    }

    // gRPC.
    let (conn_tx, conn_rx) = mpsc::channel::<std::io::Result<AuthorityFix<ClientIo>>>(128);
    for (l, tls) in listeners {
        let tls = if tls { acceptor.clone() } else { None };
        let tx = conn_tx.clone();
        let st = state.clone();
        let mut sd = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = l.accept() => a,
                    _ = sd.changed() => break,
                };
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let tx = tx.clone();
                let st = st.clone();
                let sd = sd.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let detected = match &tls {
                        None => tokio::time::timeout(SNIFF_TIMEOUT, sniff::detect(&stream))
                            .await
                            .map(|r| r.map(|p| (p, ClientIo::Plain(stream)))),
                        Some(acceptor) => {
                            tokio::time::timeout(
                                SNIFF_TIMEOUT,
                                crate::tls::accept(acceptor, stream),
                            )
                            .await
                        }
                    };
                    match detected {
                        Ok(Ok((Protocol::Http2, io))) => {
                            let _ = tx.send(Ok(AuthorityFix::new(io))).await;
                        }
                        Ok(Ok((Protocol::Http1, io))) => {
                            crate::http::serve_connection(io, st, true, sd).await;
                        }
                        Ok(Ok((Protocol::Closed, _))) | Ok(Err(_)) | Err(_) => {}
                    }
                });
            }
        });
    }
    drop(conn_tx);
    let limit = cfg.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES);
    let router = tonic::transport::Server::builder()
        // etcd --max-concurrent-streams (default: no limit; a stream per watch or keep-alive).
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .add_service(KvServer::new(KvService::new(state.clone())).max_decoding_message_size(limit))
        .add_service(
            WatchServer::new(WatchService::new(state.clone())).max_decoding_message_size(limit),
        )
        .add_service(
            LeaseServer::new(LeaseService::new(state.clone())).max_decoding_message_size(limit),
        )
        .add_service(
            MaintenanceServer::new(MaintenanceService::new(state.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(ClusterServer::new(ClusterService::new(
            state.clone(),
            cfg.initial_cluster_token.clone(),
        )))
        .add_service(AuthServer::new(AuthService::new(state.clone())));
    let mut sd = shutdown_rx.clone();
    let serve = tokio::spawn(router.serve_with_incoming_shutdown(
        ReceiverStream::new(conn_rx),
        async move {
            let _ = sd.wait_for(|v| *v).await;
        },
    ));
    if let storage_api::Durability::Buffered { interval } = cfg.durability {
        tracing::warn!(
            ?interval,
            "--durability buffered: writes are acknowledged before they are durable; a process \
             crash (sled, redb, memory) or a power loss (every engine) can lose up to the last \
             interval of acknowledged writes. Use --durability sync for etcd's guarantee"
        );
    }
    tracing::info!(
        name = %cfg.name,
        engine = %kind,
        durability = ?cfg.durability,
        data_dir = %cfg.data_dir.display(),
        client_urls = %client_addrs
            .iter()
            .zip(&client_tls)
            .map(|(a, tls)| format!("{}://{a}", if *tls { "https" } else { "http" }))
            .collect::<Vec<_>>()
            .join(","),
        metrics = ?metrics_addrs,
        member_id = format!("{:x}", state.member_id),
        cluster_id = format!("{:x}", state.cluster_id),
        revision = store.current_revision(),
        "ready to serve client requests"
    );

    let grace = cfg.shutdown_grace;
    let mut sd = shutdown_rx;
    let main_store = store.clone();
    let main_raft = raft.clone();
    let main = tokio::spawn(async move {
        let mut serve = serve;
        let served = tokio::select! {
            r = &mut serve => Some(r),
            _ = sd.wait_for(|v| *v) => None,
        };
        let result = match served {
            Some(r) => r
                .map_err(|e| ServerError::Task(e.to_string()))?
                .map_err(ServerError::from),
            None => match tokio::time::timeout(grace, &mut serve).await {
                Ok(r) => r
                    .map_err(|e| ServerError::Task(e.to_string()))?
                    .map_err(ServerError::from),
                Err(_) => {
                    tracing::warn!(
                        ?grace,
                        "open requests did not finish in time; closing anyway"
                    );
                    serve.abort();
                    Ok(())
                }
            },
        };
        // Stops raft, then flushes and closes the store and the raft log.
        let closed = main_raft
            .shutdown()
            .await
            .map_err(|e| ServerError::Task(format!("raft: {}", rusd_raft::error_line(&e))));
        drop(main_store);
        tracing::info!("store flushed and closed");
        result.and(closed)
    });

    Ok(RunningServer {
        client_addrs,
        client_tls,
        metrics_addrs,
        shutdown_tx,
        main,
        state,
    })
}
