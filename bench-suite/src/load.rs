//! The load generator against any etcd v3 endpoint (cargo feature `etcd`): `clients`
//! concurrent clients, each on its own connection, put `ops` 8-byte keys with
//! `value_size`-byte values, then read every key back with a single-key range.

use std::ops::Range;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rand::{RngCore, SeedableRng};

use crate::measure::Latencies;
use crate::versus::{cpu_seconds_of, LoadPhase, LoadRun};

/// Keys are the 8 decimal digits of their index, so at most this many operations per phase.
pub const MAX_OPS: usize = 100_000_000;

/// Shape of one load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadConfig {
    /// Concurrent clients, each on its own connection.
    pub clients: usize,
    /// Operations per phase (puts, then as many ranges), split over the clients.
    pub ops: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Deadline of one request (a stuck server fails the run instead of hanging it).
    pub request_timeout: Duration,
}

impl LoadConfig {
    /// Checks the limits: at least one client and one operation, at most [`MAX_OPS`].
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if self.ops == 0 || self.ops > MAX_OPS {
            return Err(format!(
                "--ops must be within 1..={MAX_OPS} (keys are 8 digits)"
            ));
        }
        Ok(())
    }
}

/// The 8-byte key of index `i` (`00000042`).
pub fn key(i: usize) -> String {
    format!("{:08}", i % MAX_OPS)
}

/// The key indexes client `client` of `clients` works on: a contiguous share of `0..ops`, the
/// first `ops % clients` clients taking one more.
pub fn client_keys(client: usize, clients: usize, ops: usize) -> Range<usize> {
    let clients = clients.max(1);
    let (per, extra) = (ops / clients, ops % clients);
    let start = client * per + client.min(extra);
    let len = per + usize::from(client < extra);
    start..start + len
}

fn url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

async fn connect(
    endpoints: &[String],
    request_timeout: Duration,
    security: Option<&Security>,
) -> Result<Client, String> {
    let urls: Vec<String> = endpoints.iter().map(|e| url(e)).collect();
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(request_timeout);
    if let Some(s) = security {
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(s.ca_pem.clone()))
                .identity(Identity::from_pem(
                    s.client_cert_pem.clone(),
                    s.client_key_pem.clone(),
                ))
                .domain_name("localhost"),
        );
        if let Some((user, password)) = &s.user {
            options = options.with_user(user.clone(), password.clone());
        }
    }
    Client::connect(&urls, Some(options))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", urls.join(",")))
}

/// TLS and authentication of `versus-etcd --tls-auth`: a CA, a server certificate and a client
/// certificate generated in a directory (the same files for every server), and the user the
/// load runs as.
#[derive(Debug, Clone)]
pub struct Security {
    /// CA certificate file.
    pub ca: std::path::PathBuf,
    /// Server certificate and key files.
    pub server_cert: std::path::PathBuf,
    /// Server key file.
    pub server_key: std::path::PathBuf,
    /// CA certificate (PEM).
    pub ca_pem: String,
    /// Client certificate (PEM).
    pub client_cert_pem: String,
    /// Client key (PEM).
    pub client_key_pem: String,
    /// The user and password requests run as (`None`: the certificate's CN, during setup).
    pub user: Option<(String, String)>,
}

/// The user of the load under `--tls-auth` and its password; its role grants READWRITE on the
/// prefix [`BENCH_PREFIX`] (every key below 10,000,000 operations).
pub const BENCH_USER: (&str, &str) = ("bench", "bench-password");
/// The prefix granted to [`BENCH_USER`].
pub const BENCH_PREFIX: &str = "0";

impl Security {
    /// Generates the CA, the server certificate (localhost, 127.0.0.1) and a client certificate
    /// into `dir`.
    pub fn generate(dir: &std::path::Path) -> Result<Security, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        };
        let e = |e: rcgen::Error| e.to_string();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "bench-ca");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().map_err(e)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |cn: &str| -> Result<(String, String), String> {
            let mut p =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .map_err(e)?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            p.distinguished_name = dn;
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().map_err(e)?;
            let cert = p.signed_by(&key, &issuer).map_err(e)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) = leaf("server")?;
        let (client_cert_pem, client_key_pem) = leaf("root")?;
        let write = |name: &str, pem: &str| -> Result<std::path::PathBuf, String> {
            let path = dir.join(name);
            std::fs::write(&path, pem).map_err(|err| format!("{}: {err}", path.display()))?;
            Ok(path)
        };
        Ok(Security {
            ca: write("ca.pem", &ca_cert.pem())?,
            server_cert: write("server.pem", &server_pem)?,
            server_key: write("server-key.pem", &server_key_pem)?,
            ca_pem: ca_cert.pem(),
            client_cert_pem,
            client_key_pem,
            user: None,
        })
    }

    /// The server flags (the same for etcd and rusd).
    pub fn server_flags(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.server_cert.display()),
            format!("--key-file={}", self.server_key.display()),
            format!("--trusted-ca-file={}", self.ca.display()),
            "--client-cert-auth".to_string(),
            "--bcrypt-cost=10".to_string(),
        ]
    }

    /// The same, running as [`BENCH_USER`].
    pub fn as_bench_user(&self) -> Security {
        Security {
            user: Some((BENCH_USER.0.to_string(), BENCH_USER.1.to_string())),
            ..self.clone()
        }
    }
}

/// Creates `root`, the role `bench` (READWRITE on the prefix [`BENCH_PREFIX`]) and the user
/// [`BENCH_USER`] with it, then enables auth.
pub async fn setup_auth(endpoints: &[String], security: &Security) -> Result<(), String> {
    let mut c = connect(endpoints, Duration::from_secs(10), Some(security)).await?;
    let e = |e: etcd_client::Error| e.to_string();
    c.user_add("root", "root-password", None).await.map_err(e)?;
    c.user_grant_role("root", "root").await.map_err(e)?;
    c.role_add("bench").await.map_err(e)?;
    c.role_grant_permission(
        "bench",
        etcd_client::Permission::read_write(BENCH_PREFIX).with_prefix(),
    )
    .await
    .map_err(e)?;
    c.user_add(BENCH_USER.0, BENCH_USER.1, None)
        .await
        .map_err(e)?;
    c.user_grant_role(BENCH_USER.0, "bench").await.map_err(e)?;
    c.auth_enable().await.map_err(e)?;
    Ok(())
}

/// Waits until the endpoint answers a range request (etcd listens before it has elected
/// itself leader), for at most `timeout`.
pub async fn wait_ready(endpoints: &[String], timeout: Duration) -> Result<(), String> {
    wait_ready_with(endpoints, timeout, None).await
}

/// [`wait_ready`] over TLS.
pub async fn wait_ready_with(
    endpoints: &[String],
    timeout: Duration,
    security: Option<&Security>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match connect(endpoints, Duration::from_secs(2), security).await {
            Ok(mut c) => match c.get("bench-probe", None).await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            },
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!("not ready after {timeout:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Range,
}

async fn phase(clients: &[Client], config: LoadConfig, op: Op) -> Result<LoadPhase, String> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients.len());
    for (n, c) in clients.iter().enumerate() {
        let mut c = c.clone();
        let keys = client_keys(n, clients.len(), config.ops);
        let value_size = config.value_size;
        tasks.push(tokio::spawn(async move {
            // Incompressible values, the same for every server (fixed seed per client).
            let mut pool = vec![0u8; value_size + 256];
            rand::rngs::StdRng::seed_from_u64(n as u64).fill_bytes(&mut pool);
            let mut lat = Latencies::with_capacity(keys.len());
            for i in keys {
                let t = Instant::now();
                match op {
                    Op::Put => {
                        let value = pool[i % 256..i % 256 + value_size].to_vec();
                        c.put(key(i), value, None)
                            .await
                            .map_err(|e| format!("put {}: {e}", key(i)))?;
                    }
                    Op::Range => {
                        let r = c
                            .get(key(i), None)
                            .await
                            .map_err(|e| format!("range {}: {e}", key(i)))?;
                        let found = r.kvs().first().map(|kv| kv.value().len());
                        if r.kvs().len() != 1 || found != Some(value_size) {
                            return Err(format!(
                                "range {}: expected one {value_size}-byte value, got {} kvs",
                                key(i),
                                r.kvs().len()
                            ));
                        }
                    }
                }
                lat.record(t.elapsed());
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut all = Latencies::with_capacity(config.ops);
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => all.merge(l),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok(LoadPhase::from_latencies(elapsed, &mut all)),
    }
}

/// CPU seconds used by the server (when its pid is known) and by this process.
/// CPU seconds of the server processes (summed; `None` without pids or when one is
/// unreadable) and of this process.
fn cpu_now(server_pids: &[u32]) -> (Option<f64>, Option<f64>) {
    let server = if server_pids.is_empty() {
        None
    } else {
        server_pids
            .iter()
            .map(|&p| cpu_seconds_of(p))
            .sum::<Option<f64>>()
    };
    (server, cpu_seconds_of(std::process::id()))
}

fn cpu_delta(
    before: (Option<f64>, Option<f64>),
    after: (Option<f64>, Option<f64>),
) -> (Option<f64>, Option<f64>) {
    let d = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    (d(before.0, after.0), d(before.1, after.1))
}

async fn measured_phase(
    clients: &[Client],
    config: LoadConfig,
    op: Op,
    server_pids: &[u32],
) -> Result<LoadPhase, String> {
    let before = cpu_now(server_pids);
    let phase = phase(clients, config, op).await?;
    let (server, client) = cpu_delta(before, cpu_now(server_pids));
    Ok(phase.with_cpu(server, client))
}

/// Runs the puts then the ranges against `endpoints` and returns the run labelled `server`.
/// With the server's pid, the phases carry its CPU time per operation and the run its peak
/// RSS.
pub async fn run(
    endpoints: &[String],
    server: &str,
    engine: Option<&str>,
    server_pid: Option<u32>,
    config: LoadConfig,
) -> Result<LoadRun, String> {
    let pids: Vec<u32> = server_pid.into_iter().collect();
    run_with(endpoints, server, engine, &pids, config, None).await
}

/// [`run`] against the processes `server_pids` (one server, or every member of a cluster:
/// their CPU times and peak RSSes are summed), over TLS as the user of `security` when given
/// (`versus-etcd --tls-auth`).
pub async fn run_with(
    endpoints: &[String],
    server: &str,
    engine: Option<&str>,
    server_pids: &[u32],
    config: LoadConfig,
    security: Option<&Security>,
) -> Result<LoadRun, String> {
    config.validate()?;
    let mut clients = Vec::with_capacity(config.clients);
    for _ in 0..config.clients {
        clients.push(connect(endpoints, config.request_timeout, security).await?);
    }
    let put = measured_phase(&clients, config, Op::Put, server_pids).await?;
    let range = measured_phase(&clients, config, Op::Range, server_pids).await?;
    Ok(LoadRun {
        server: server.to_string(),
        engine: engine.map(str::to_string),
        clients: config.clients,
        value_size: config.value_size,
        put,
        range,
        peak_rss: if server_pids.is_empty() {
            None
        } else {
            server_pids
                .iter()
                .map(|&p| crate::versus::peak_rss_of(p))
                .sum::<Option<u64>>()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_eight_bytes() {
        assert_eq!(key(42), "00000042");
        assert_eq!(key(MAX_OPS - 1).len(), 8);
        assert_eq!(key(MAX_OPS), "00000000");
    }

    #[test]
    fn clients_share_the_keys_exactly() {
        for (clients, ops) in [(16, 10_000), (64, 10_000), (3, 10), (7, 3), (1, 5)] {
            let mut next = 0;
            for c in 0..clients {
                let r = client_keys(c, clients, ops);
                assert_eq!(r.start, next, "contiguous");
                assert!(r.len() == ops / clients || r.len() == ops / clients + 1);
                next = r.end;
            }
            assert_eq!(next, ops, "{clients} clients cover {ops} ops");
        }
    }

    #[test]
    fn config_limits() {
        let ok = LoadConfig {
            clients: 16,
            ops: 1000,
            value_size: 256,
            request_timeout: Duration::from_secs(1),
        };
        assert!(ok.validate().is_ok());
        assert!(LoadConfig { clients: 0, ..ok }.validate().is_err());
        assert!(LoadConfig { ops: 0, ..ok }.validate().is_err());
        assert!(LoadConfig {
            ops: MAX_OPS + 1,
            ..ok
        }
        .validate()
        .is_err());
        assert_eq!(url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(url("https://h:1"), "https://h:1");
    }

    #[test]
    fn unreachable_endpoint_is_an_error_not_a_hang() {
        let port = crate::versus::free_loopback_ports(1).expect("port")[0];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let endpoints = [format!("127.0.0.1:{port}")];
        let r = rt.block_on(wait_ready(&endpoints, Duration::from_millis(300)));
        assert!(r.is_err());
    }
}
