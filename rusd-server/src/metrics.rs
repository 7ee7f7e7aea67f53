//! Prometheus metrics under etcd's names and types, kept with the `prometheus-client` crate.
//!
//! Counters are incremented where requests are served ([`Metrics::observe`], which every gRPC
//! handler and the JSON gateway call); gauges are read from the store and the process when
//! `/metrics` is scraped ([`Metrics::render`]). The exposition is the Prometheus text format
//! 0.0.4 that etcd serves (counter families named with their `_total` suffix, no `# EOF`), so
//! etcd's dashboards, `etcdctl check datascale` and Prometheus parse it unchanged.
//!
//! What the etcd-named metrics measure in rusd:
//!
//! * `etcd_server_has_leader` and `etcd_server_is_leader`: this member's raft view (1 when it
//!   knows a leader / is the leader); `etcd_server_leader_changes_seen_total` counts from 1 (the
//!   leader seen at start-up).
//! * `etcd_server_proposals_committed_total` and `..._applied_total` (gauges, as etcd's): the
//!   raft log's last index and the last applied index (without raft, for an embedding: the
//!   current revision).
//! * `etcd_mvcc_put_total`, `etcd_mvcc_range_total`, `etcd_mvcc_delete_total`,
//!   `etcd_mvcc_txn_total`: successful `Put`, `Range`, `DeleteRange` and `Txn` requests (gRPC and
//!   gateway); operations inside a txn count in `etcd_mvcc_txn_total` only.
//! * `etcd_disk_backend_commit_duration_seconds`: the time a write request (put, delete, txn)
//!   spends in the store until it is committed to the engine (and, under `--durability sync`,
//!   made durable by group commit).
//! * `etcd_disk_wal_fsync_duration_seconds`: under `--durability sync`, the same time (the ack
//!   waits for the shared fsync, rusd's WAL equivalent); empty under buffered durability.
//! * `process_*`: from `/proc/self` (Linux), CPU time at 100 ticks per second.
//! * rusd's own: `rusd_backend_info{engine}`, `rusd_mvcc_compaction_lag_revisions` (current
//!   minus compacted revision: what compaction has still to reclaim).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::{Code, Status};

use crate::config::ETCD_VERSION;
use crate::state::State;

/// Labels of `grpc_server_handled_total`, in etcd's order.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    /// The gRPC code as etcd spells it (`OK`, `NotFound`, ...).
    pub grpc_code: &'static str,
    /// The method (`Range`).
    pub grpc_method: &'static str,
    /// The service (`etcdserverpb.KV`).
    pub grpc_service: &'static str,
    /// `unary`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
}

type Labeled = Family<Vec<(String, String)>, Gauge>;

/// The metrics of one server: counters and histograms updated as requests are served, gauges
/// set at scrape time.
#[derive(Debug)]
pub struct Metrics {
    /// Open watch streams.
    pub watch_streams: AtomicU64,
    /// Live watchers.
    pub watchers: AtomicU64,
    /// Lease keep-alive streams.
    pub keepalive_streams: AtomicU64,
    /// Leases revoked by expiry.
    pub leases_expired: AtomicU64,
    /// True under `--durability sync` (write durations also feed the fsync histogram).
    pub sync_durability: std::sync::atomic::AtomicBool,
    registry: Mutex<Registry>,
    handled: Family<HandledLabels, Counter>,
    put: Counter,
    range: Counter,
    delete: Counter,
    txn: Counter,
    leader_changes: Counter,
    lease_expired: Counter,
    cpu: Counter<f64, AtomicU64>,
    commit: Histogram,
    fsync: Histogram,
    gauges: Gauges,
}

#[derive(Debug, Default)]
struct Gauges {
    has_leader: Gauge,
    is_leader: Gauge,
    proposals_committed: Gauge,
    proposals_applied: Gauge,
    version: Labeled,
    server_id: Labeled,
    engine: Labeled,
    quota: Gauge,
    db_size: Gauge,
    db_in_use: Gauge,
    current_rev: Gauge,
    compact_rev: Gauge,
    compaction_lag: Gauge,
    keys: Gauge,
    watchers: Gauge,
    slow_watchers: Gauge,
    watch_streams: Gauge,
    leases: Gauge,
    alarms: Gauge,
    rss: Gauge,
    vsize: Gauge,
    open_fds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// etcd's bucket layout for disk latencies: 1 ms to about 8 s.
fn disk_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let m = Metrics {
            watch_streams: AtomicU64::new(0),
            watchers: AtomicU64::new(0),
            keepalive_streams: AtomicU64::new(0),
            leases_expired: AtomicU64::new(0),
            sync_durability: std::sync::atomic::AtomicBool::new(false),
            registry: Mutex::new(Registry::default()),
            handled: Family::default(),
            put: Counter::default(),
            range: Counter::default(),
            delete: Counter::default(),
            txn: Counter::default(),
            leader_changes: Counter::default(),
            lease_expired: Counter::default(),
            cpu: Counter::default(),
            commit: disk_buckets(),
            fsync: disk_buckets(),
            gauges: Gauges::default(),
        };
        m.leader_changes.inc();
        {
            let g = &m.gauges;
            let mut r = m.registry.lock();
            r.register(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
                g.has_leader.clone(),
            );
            r.register(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                g.is_leader.clone(),
            );
            r.register(
                "etcd_server_leader_changes_seen",
                "The number of leader changes seen.",
                m.leader_changes.clone(),
            );
            r.register(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
                g.proposals_committed.clone(),
            );
            r.register(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
                g.proposals_applied.clone(),
            );
            r.register(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
                g.version.clone(),
            );
            r.register(
                "etcd_server_id",
                "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                g.server_id.clone(),
            );
            r.register(
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
                g.quota.clone(),
            );
            r.register(
                "etcd_server_has_alarm",
                "Number of active alarms.",
                g.alarms.clone(),
            );
            r.register(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                g.db_size.clone(),
            );
            r.register(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
                g.db_in_use.clone(),
            );
            r.register(
                "etcd_mvcc_put",
                "Total number of puts seen by this member.",
                m.put.clone(),
            );
            r.register(
                "etcd_mvcc_range",
                "Total number of ranges seen by this member.",
                m.range.clone(),
            );
            r.register(
                "etcd_mvcc_delete",
                "Total number of deletes seen by this member.",
                m.delete.clone(),
            );
            r.register(
                "etcd_mvcc_txn",
                "Total number of txns seen by this member.",
                m.txn.clone(),
            );
            r.register(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
                g.current_rev.clone(),
            );
            r.register(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
                g.compact_rev.clone(),
            );
            r.register(
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
                g.keys.clone(),
            );
            r.register(
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
                g.watchers.clone(),
            );
            r.register(
                "etcd_debugging_mvcc_slow_watcher_total",
                "Total number of unsynced slow watchers.",
                g.slow_watchers.clone(),
            );
            r.register(
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
                g.watch_streams.clone(),
            );
            r.register(
                "etcd_debugging_lease_total",
                "The number of leases.",
                g.leases.clone(),
            );
            r.register(
                "etcd_debugging_server_lease_expired",
                "The total number of expired leases.",
                m.lease_expired.clone(),
            );
            r.register(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                m.commit.clone(),
            );
            r.register(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                m.fsync.clone(),
            );
            r.register(
                "grpc_server_handled",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                m.handled.clone(),
            );
            r.register(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                m.cpu.clone(),
            );
            r.register(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                g.rss.clone(),
            );
            r.register(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                g.vsize.clone(),
            );
            r.register(
                "process_open_fds",
                "Number of open file descriptors.",
                g.open_fds.clone(),
            );
            r.register(
                "rusd_backend_info",
                "The storage engine. 1 for 'engine' label with its name.",
                g.engine.clone(),
            );
            r.register(
                "rusd_mvcc_compaction_lag_revisions",
                "Revisions not yet compacted: the current minus the compacted revision.",
                g.compaction_lag.clone(),
            );
        }
        m
    }

    /// Counts one finished RPC (gRPC or gateway) under etcd's labels, and the mvcc counters
    /// for successful `Range`, `Put`, `DeleteRange` and `Txn`.
    pub fn observe<T>(&self, service: &'static str, method: &'static str, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        if code == Code::Ok && service == "etcdserverpb.KV" {
            match method {
                "Range" => self.range.inc(),
                "Put" => self.put.inc(),
                "DeleteRange" => self.delete.inc(),
                "Txn" => self.txn.inc(),
                _ => 0,
            };
        }
        let grpc_type = match method {
            "Watch" | "LeaseKeepAlive" => "bidi_stream",
            "Snapshot" => "server_stream",
            _ => "unary",
        };
        self.handled
            .get_or_create(&HandledLabels {
                grpc_code: code_name(code),
                grpc_method: method,
                grpc_service: service,
                grpc_type,
            })
            .inc();
    }

    /// Records how long a write request took to commit.
    pub fn observe_commit(&self, took: Duration) {
        let secs = took.as_secs_f64();
        self.commit.observe(secs);
        if self.sync_durability.load(Ordering::Relaxed) {
            self.fsync.observe(secs);
        }
    }

    /// Renders every metric in the Prometheus text format 0.0.4, reading the gauges now.
    pub fn render(&self, state: &State) -> String {
        let store = &state.store;
        let g = &self.gauges;
        let rev = store.current_revision();
        let compacted = store.compact_revision().max(0);
        match &state.raft {
            Some(raft) => {
                let (last_log, applied) = raft.indexes();
                g.has_leader.set(i64::from(raft.leader().is_some()));
                g.is_leader.set(i64::from(raft.is_leader()));
                g.proposals_committed
                    .set(i64::try_from(last_log.max(applied)).unwrap_or(i64::MAX));
                g.proposals_applied
                    .set(i64::try_from(applied).unwrap_or(i64::MAX));
            }
            None => {
                g.has_leader.set(1);
                g.is_leader.set(1);
                g.proposals_committed.set(rev);
                g.proposals_applied.set(rev);
            }
        }
        g.version
            .get_or_create(&vec![("server_version".into(), ETCD_VERSION.into())])
            .set(1);
        g.server_id
            .get_or_create(&vec![(
                "server_id".into(),
                format!("{:x}", state.member_id),
            )])
            .set(1);
        g.engine
            .get_or_create(&vec![("engine".into(), store.backend().kind().to_string())])
            .set(1);
        g.quota.set(to_i64(state.quota.unwrap_or(0)));
        let size = to_i64(state.db_size.load(Ordering::Relaxed));
        g.db_size.set(size);
        g.db_in_use.set(size);
        g.current_rev.set(rev);
        g.compact_rev.set(compacted);
        g.compaction_lag.set(rev.saturating_sub(compacted).max(0));
        g.keys.set(to_i64(store.index_len() as u64));
        g.watchers
            .set(to_i64(self.watchers.load(Ordering::Relaxed)));
        g.slow_watchers.set(0);
        g.watch_streams
            .set(to_i64(self.watch_streams.load(Ordering::Relaxed)));
        g.leases.set(to_i64(store.leases().len() as u64));
        g.alarms.set(to_i64(state.alarm_list().len() as u64));
        let expired = self.leases_expired.load(Ordering::Relaxed);
        let seen = self.lease_expired.get();
        if expired > seen {
            self.lease_expired.inc_by(expired - seen);
        }
        let p = process_stats();
        g.rss.set(to_i64(p.rss));
        g.vsize.set(to_i64(p.vsize));
        g.open_fds.set(to_i64(p.open_fds));
        let registry = self.registry.lock();
        // Under the registry lock: concurrent scrapes never add the same CPU time twice.
        let cpu_seen = self.cpu.get();
        if p.cpu_seconds > cpu_seen {
            self.cpu.inc_by(p.cpu_seconds - cpu_seen);
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut text, &registry).is_err() {
            return String::new();
        }
        to_text_004(&text)
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// etcd's (grpc-go's) spelling of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Rewrites the OpenMetrics text of `prometheus-client` into the 0.0.4 text format: counter
/// families take their samples' `_total` name in `# HELP`/`# TYPE`, `# UNIT` and `# EOF` go.
fn to_text_004(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Debug, Default)]
struct ProcessStats {
    rss: u64,
    vsize: u64,
    cpu_seconds: f64,
    open_fds: u64,
}

/// Reads `/proc/self` (zeros where unavailable).
fn process_stats() -> ProcessStats {
    let mut p = ProcessStats::default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let kb = |rest: &str| {
                rest.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|v| v * 1024)
            };
            if let Some(rest) = line.strip_prefix("VmRSS:") {
                p.rss = kb(rest).unwrap_or(0);
            } else if let Some(rest) = line.strip_prefix("VmSize:") {
                p.vsize = kb(rest).unwrap_or(0);
            }
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) start at state (field 3).
        if let Some((_, rest)) = stat.rsplit_once(") ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // utime is field 14, stime field 15: indexes 11 and 12 from field 3.
            p.cpu_seconds = (tick(11) + tick(12)) as f64 / 100.0;
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        p.open_fds = dir.count() as u64;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name() {
        let om = "# HELP a_x Help.\n# TYPE a_x counter\na_x_total 3\n# HELP g_total G.\n# TYPE g_total gauge\ng_total 1\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP a_x_total Help.\n# TYPE a_x_total counter\na_x_total 3\n# HELP g_total G.\n# TYPE g_total gauge\ng_total 1\n"
        );
    }

    #[test]
    fn codes_spelled_as_etcd() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
    }
}
