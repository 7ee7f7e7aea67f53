//! # rusd-server
//!
//! `rusd`: an etcd v3 server (the v3.5 gRPC protocol: `etcdserverpb`, `mvccpb`) over
//! [`mvcc_core`], one member or a raft cluster, with the storage engine (memory, sled, redb, RocksDB) chosen
//! at start-up. Unmodified etcd clients and `etcdctl` work against it.
//!
//! * [`start`] opens the store, binds the listeners and serves; [`RunningServer::shutdown`]
//!   stops accepting, ends open streams, flushes and closes the store.
//! * Services: [`kv::KvService`], [`watch::WatchService`], [`lease::LeaseService`],
//!   [`maintenance::MaintenanceService`], [`cluster::ClusterService`],
//!   [`auth::AuthService`] (etcd's users, roles and permissions, checked on every request).
//! * [`http`]: `/health`, `/readyz`, `/livez`, `/version`, Prometheus `/metrics`
//!   ([`metrics`], etcd's names) and etcd's v3 JSON gateway ([`gateway`]) over HTTP/1.1, on the
//!   client URLs next to gRPC ([`sniff`]) and on the metrics URLs (without the gateway).
//! * Errors carry etcd's gRPC codes and exact messages ([`error::rpc`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), rusd_server::ServerError> {
//! let config = rusd_server::ServerConfig::new("/tmp/rusd-data")
//!     .with_listen_client_urls(vec!["http://127.0.0.1:0".into()]);
//! let server = rusd_server::start(config).await?;
//! println!("serving on {}", server.client_url());
//! server.shutdown().await
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod error;
pub mod gateway;
pub mod h2fix;
pub mod http;
mod huffman;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod metrics;
pub mod pb;
pub mod server;
pub mod sniff;
pub mod state;
pub mod tls;
pub mod watch;

pub use config::ServerConfig;
pub use error::ServerError;
pub use server::{start, RunningServer, ShutdownHandle};
