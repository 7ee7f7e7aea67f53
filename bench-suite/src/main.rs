//! `rusd-bench`: runs the same workload on every compiled engine, each in a fresh worker
//! process, and prints them side by side.
//!
//! ```text
//! cargo run --release -p bench-suite -- --quick          # a few minutes, every compiled engine
//! cargo run --release -p bench-suite                     # full profile: 1M keys
//! cargo run --release -p bench-suite --features rocksdb  # include RocksDB
//! cargo run --release -p bench-suite -- defrag-load --keys 200000  # latency during defragment
//! ```
//!
//! With the `etcd` feature (needs `protoc`), two more modes drive etcd v3 servers over gRPC:
//!
//! ```text
//! cargo run --release -p bench-suite --features etcd -- load --endpoints 127.0.0.1:2379
//! cargo build --release -p rusd-server && \
//!   cargo run --release -p bench-suite --features etcd -- versus-etcd --quick
//! ```

use std::alloc::System;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use bench_suite::defrag_load::{self, DefragLoad};
use bench_suite::index_mem::{self, IndexMemory};
use bench_suite::measure::{fsyncs_per_second, MemorySample};
use bench_suite::report::{self, EngineReport};
use bench_suite::workload::{self, Profile};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mvcc_core::engine::{compiled_backends, AnyBackend};
use storage_api::{Backend, BackendConfig, BackendKind, Durability, Tree, WriteBatch};

/// Counts live heap bytes for `rusd-bench index-mem` (one atomic add per allocation, the same
/// for every engine and the baseline).
#[global_allocator]
static ALLOC: cap::Cap<System> = cap::Cap::new(System, usize::MAX);

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DurabilityArg {
    /// Durable within 100 ms (every engine's background flush), or at flush.
    Buffered,
    /// Ack = durable.
    Sync,
}

impl DurabilityArg {
    fn to_config(self) -> Durability {
        match self {
            DurabilityArg::Buffered => Durability::Buffered {
                interval: Duration::from_millis(100),
            },
            DurabilityArg::Sync => Durability::Sync,
        }
    }

    fn label(self) -> &'static str {
        match self {
            DurabilityArg::Buffered => "buffered (100 ms)",
            DurabilityArg::Sync => "sync (ack = durable)",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "rusd-bench",
    about = "Compare rusd storage engines side by side",
    version
)]
struct Cli {
    /// The quick profile (20k keys; a few minutes for every engine). Default: full (1M keys).
    /// load / versus-etcd: 10k instead of 100k operations per run.
    #[arg(long, global = true)]
    quick: bool,
    /// Engines to run (default: every compiled engine; versus-etcd: every engine of `rusd`,
    /// memory only under buffered durability).
    #[arg(long, value_delimiter = ',', global = true)]
    engines: Vec<String>,
    /// Output folder for results.json and chart.svg (load, versus-etcd: `<mode>.json` and
    /// `<mode>.md`).
    #[arg(long, default_value = "bench-out", global = true)]
    out: PathBuf,
    /// Engine comparison: durability of the main phases (durable-write phases always use
    /// sync) [default: buffered]. versus-etcd: rusd's `--durability` [default: sync, as etcd
    /// always fsyncs its WAL; rusd implements sync as group commit].
    #[arg(long, value_enum, global = true)]
    durability: Option<DurabilityArg>,
    /// Cache budget in MiB given to every engine.
    #[arg(long, default_value_t = 256, global = true)]
    cache_mb: u64,
    /// Engine comparison: run the `MvccStore` phases with the key-ordered copy of the current
    /// rows (`StoreConfig::with_key_ordered_copy`: faster ranges over rows not held in memory,
    /// slower puts; off by default, as in `rusd`).
    #[arg(long, global = true)]
    key_ordered_copy: bool,
    /// Parent folder of the data directories (default: a temporary folder).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: run one engine in this process and print its JSON report on stdout.
    #[command(hide = true)]
    Worker {
        /// Engine to run.
        #[arg(long)]
        engine: String,
    },
    /// Measure the key index's heap bytes per key (beyond the key) and per extra version with
    /// a counting allocator; prints JSON. Run by the comparison in a child process of its own.
    IndexMem {
        /// Keys to index.
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Versions per key (at least 2).
        #[arg(long, default_value_t = 5)]
        versions: usize,
        /// Key size in bytes (at least 8).
        #[arg(long, default_value_t = 16)]
        key_size: usize,
    },
    /// Put and range latency (paced writer + reader, 1k ops/s each) while `defragment` runs
    /// on a store of `--keys` keys, next to the same load on the idle store; one row per
    /// engine (default: every compiled engine), printed as Markdown.
    DefragLoad {
        /// Keys loaded before the defragment [default: 20000 with --quick, else 1000000].
        #[arg(long)]
        keys: Option<usize>,
    },
    /// Load any etcd v3 endpoint: concurrent clients put 8-byte keys, then read each back with
    /// a single-key range; prints ops/s, p50/p99 and the server's peak RSS (feature `etcd`).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Load {
        /// Comma-separated endpoints (`host:port` or `http://host:port`).
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[command(flatten)]
        load: LoadArgs,
        /// The server's pid, to report its CPU time per operation and peak RSS (`VmHWM` of
        /// /proc/PID/status); comma-separated pids (every member of a cluster): summed.
        #[arg(long, value_delimiter = ',')]
        pid: Vec<u32>,
    },
    /// Start a real etcd (when `etcd` is on PATH) and `rusd` on each engine, one at a time on
    /// loopback with a fresh data directory, run the same load against each and print them
    /// side by side with the targets (feature `etcd`; build `rusd` first).
    VersusEtcd {
        #[command(flatten)]
        load: LoadArgs,
    },
}

/// The shape of the load of `load` and `versus-etcd`.
#[derive(Debug, clap::Args)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
struct LoadArgs {
    /// Client counts, one run each (each client on its own connection).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    clients: Vec<usize>,
    /// Puts per run, then as many single-key ranges [default: 10000 with --quick, else 100000].
    #[arg(long)]
    ops: Option<usize>,
    /// Value size in bytes (keys are 8 bytes).
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// versus-etcd: every server over mutual TLS with `--client-cert-auth` and auth enabled
    /// (the same generated certificates for all; the load runs as a user whose role grants
    /// READWRITE on the key prefix `0`).
    #[arg(long)]
    tls_auth: bool,
    /// versus-etcd: members per server (3 or 5: etcd and rusd each run as one cluster of
    /// that many processes on this machine; the clients use every member's endpoint; CPU and
    /// peak RSS are summed over the members).
    #[arg(long, default_value_t = 1)]
    members: usize,
}

impl Cli {
    /// Durability of the engine comparison (default buffered).
    fn engine_durability(&self) -> DurabilityArg {
        self.durability.unwrap_or(DurabilityArg::Buffered)
    }
}

fn profile(cli: &Cli) -> Profile {
    if cli.quick {
        Profile::QUICK
    } else {
        Profile::FULL
    }
}

fn worker(cli: &Cli, engine: &str) -> Result<(), Box<dyn std::error::Error>> {
    let kind: BackendKind = engine.parse()?;
    let profile = profile(cli);
    let tmp = tempfile::Builder::new()
        .prefix("rusd-bench-")
        .tempdir_in(cli.data_dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let fsyncs = fsyncs_per_second(&tmp.path().join("probe"), Duration::from_millis(500))?;
    let mut on_phase = |name: &str| eprintln!("phase: {name}");
    // The memory engine runs volatile: persisting its image would measure image writes, not
    // the engine. Its durable-write rows are therefore not measured.
    let volatile = kind == BackendKind::Memory;
    let open = |config: BackendConfig| {
        if volatile {
            let c = BackendConfig::new("")
                .with_cache_size_mb(config.cache_size_mb)
                .with_durability(config.durability);
            AnyBackend::open(kind, c)
        } else {
            AnyBackend::open(kind, config)
        }
    };
    let raw = workload::run_raw(
        &open,
        &tmp.path().join("raw"),
        cli.cache_mb,
        cli.engine_durability().to_config(),
        profile,
        !volatile,
        &mut on_phase,
    )?;
    let mvcc = bench_suite::mvcc_workload::run_mvcc(
        &open,
        &tmp.path().join("mvcc"),
        cli.cache_mb,
        cli.engine_durability().to_config(),
        profile,
        !volatile,
        cli.key_ordered_copy,
        &mut on_phase,
    )?;
    let report = EngineReport {
        engine: kind.name().to_string(),
        profile: profile.name.to_string(),
        keys: profile.keys,
        value_size: profile.value_size,
        cache_mb: cli.cache_mb,
        durability: cli.engine_durability().label().to_string(),
        fsyncs_per_sec: fsyncs,
        raw: raw.phases,
        mvcc,
        disk: raw.disk,
        index_bytes_per_key: None,
        index_bytes_per_version: None,
        peak_rss: MemorySample::now().peak_rss,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn run_engine(cli: &Cli, kind: BackendKind, bar: &ProgressBar) -> Result<EngineReport, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("worker").arg("--engine").arg(kind.name());
    cmd.arg("--cache-mb").arg(cli.cache_mb.to_string());
    cmd.arg("--durability").arg(match cli.engine_durability() {
        DurabilityArg::Buffered => "buffered",
        DurabilityArg::Sync => "sync",
    });
    if cli.quick {
        cmd.arg("--quick");
    }
    if cli.key_ordered_copy {
        cmd.arg("--key-ordered-copy");
    }
    if let Some(d) = &cli.data_dir {
        cmd.arg("--data-dir").arg(d);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start worker: {e}"))?;
    let mut errors = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match line.strip_prefix("phase: ") {
                Some(phase) => {
                    bar.set_message(format!("{kind}: {phase}"));
                    bar.inc(1);
                }
                None => errors.push(line),
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{kind} worker failed ({}): {}",
            out.status,
            errors.join("\n")
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{kind} worker output: {e}"))
}

/// Runs `rusd-bench index-mem` in a child process (so the allocator counts the index alone)
/// and returns bytes per key beyond the key and bytes per extra version of the key index.
fn index_memory(keys: usize) -> Result<(f64, f64), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(&exe)
        .args(["index-mem", "--keys", &keys.to_string(), "--versions", "5"])
        .output()
        .map_err(|e| format!("cannot run {} index-mem: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let m: IndexMemory = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok((m.bytes_per_key_beyond_key, m.bytes_per_extra_version))
}

/// `rusd-bench index-mem`: prints [`IndexMemory`] as JSON.
fn index_mem(keys: usize, versions: usize, key_size: usize) -> Result<(), String> {
    let m = index_mem::measure(keys, versions, key_size, || ALLOC.allocated())
        .map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string(&m).map_err(|e| e.to_string())?);
    Ok(())
}

/// The engines of the comparison: `--engines`, or every compiled one.
fn selected_engines(cli: &Cli) -> Result<Vec<BackendKind>, String> {
    if cli.engines.is_empty() {
        Ok(compiled_backends())
    } else {
        cli.engines
            .iter()
            .map(|e| e.parse::<BackendKind>().map_err(|e| e.to_string()))
            .collect()
    }
}

/// `rusd-bench defrag-load`: loads `keys` keys into a fresh store per engine (batches of
/// 1000), then [`defrag_load::measure`]s; prints the table.
fn defrag_load(cli: &Cli, keys: Option<usize>) -> Result<(), String> {
    let profile = profile(cli);
    let keys = keys.unwrap_or(profile.keys).max(1);
    let durability = cli.engine_durability();
    eprintln!(
        "rusd-bench defrag-load: {keys} keys of {} bytes, cache {} MiB, durability {}",
        profile.value_size,
        cli.cache_mb,
        durability.label()
    );
    let values: Vec<Vec<u8>> = (0..64)
        .map(|i| workload::value(i, profile.value_size))
        .collect();
    let mut rows = Vec::new();
    for kind in selected_engines(cli)? {
        let tmp = tempfile::Builder::new()
            .prefix("rusd-bench-defrag-")
            .tempdir_in(cli.data_dir.clone().unwrap_or_else(std::env::temp_dir))
            .map_err(|e| e.to_string())?;
        let path = if kind == BackendKind::Memory {
            PathBuf::new()
        } else {
            tmp.path().join("store")
        };
        let config = BackendConfig::new(path)
            .with_cache_size_mb(cli.cache_mb)
            .with_durability(durability.to_config());
        let run = || -> storage_api::StorageResult<DefragLoad> {
            let db = AnyBackend::open(kind, config)?;
            for start in (0..keys).step_by(1000) {
                let mut batch = WriteBatch::with_capacity(1000);
                for i in start..(start + 1000).min(keys) {
                    batch.put(Tree::Kv, workload::key(i), values[i % 64].clone());
                }
                db.write(&batch)?;
            }
            db.flush()?;
            eprintln!("{kind}: loaded; defragment under load");
            let r = defrag_load::measure(&*db, keys, profile.value_size, &mut Vec::new())?;
            db.close()?;
            Ok(r)
        };
        let r = run().map_err(|e| format!("{kind}: {e}"))?;
        rows.push((kind.name().to_string(), keys, r));
    }
    println!("{}", defrag_load::markdown(&rows));
    Ok(())
}

fn compare(cli: &Cli) -> Result<(), String> {
    let kinds = selected_engines(cli)?;
    let profile = profile(cli);
    eprintln!(
        "rusd-bench: profile {}, engines {:?}, cache {} MiB, durability {}",
        report::describe(&profile),
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        cli.cache_mb,
        cli.engine_durability().label()
    );
    const PHASES_PER_ENGINE: u64 = 25;
    let bar = ProgressBar::new(PHASES_PER_ENGINE * kinds.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .map_err(|e| e.to_string())?,
    );
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for kind in kinds {
        match run_engine(cli, kind, &bar) {
            Ok(r) => reports.push(r),
            Err(e) => failures.push(e),
        }
    }
    bar.set_message("key index memory");
    match index_memory(profile.keys) {
        Ok((per_key, per_version)) => {
            for r in &mut reports {
                r.index_bytes_per_key = Some(per_key);
                r.index_bytes_per_version = Some(per_version);
            }
        }
        Err(e) => failures.push(format!("key index measurement: {e}")),
    }
    bar.set_message("BTreeMap baseline");
    let baseline = workload::run_baseline(profile);
    bar.finish_and_clear();

    let table = report::markdown(&reports, &baseline);
    println!("{table}");
    std::fs::create_dir_all(&cli.out).map_err(|e| e.to_string())?;
    let json = serde_json::json!({ "engines": reports, "baseline": baseline });
    let json_path = cli.out.join("results.json");
    std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&json).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(cli.out.join("results.md"), &table).map_err(|e| e.to_string())?;
    let svg = cli.out.join("chart.svg");
    report::svg_chart(&reports, &svg).map_err(|e| format!("chart: {e}"))?;
    eprintln!(
        "wrote {}, {} and results.md",
        json_path.display(),
        svg.display()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Cmd::Worker { engine }) => worker(&cli, engine).map_err(|e| e.to_string()),
        Some(Cmd::IndexMem {
            keys,
            versions,
            key_size,
        }) => index_mem(*keys, *versions, *key_size),
        Some(Cmd::DefragLoad { keys }) => defrag_load(&cli, *keys),
        Some(Cmd::Load {
            endpoints,
            load,
            pid,
        }) => etcd_mode::load(&cli, endpoints, load, pid),
        Some(Cmd::VersusEtcd { load }) => etcd_mode::versus_etcd(&cli, load),
        None => compare(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rusd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `load` and `versus-etcd` (feature `etcd`).
#[cfg(feature = "etcd")]
mod etcd_mode {
    use std::path::Path;
    use std::time::Duration;

    use bench_suite::load::{self, LoadConfig};
    use bench_suite::versus::{
        self, ClusterProcess, Deployment, LoadRun, ServerProcess, ServerSpec, StartError,
    };
    use storage_api::BackendKind;

    use super::{Cli, DurabilityArg, LoadArgs};

    const QUICK_OPS: usize = 10_000;
    const FULL_OPS: usize = 100_000;
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    const START_TIMEOUT: Duration = Duration::from_secs(60);
    const STOP_GRACE: Duration = Duration::from_secs(20);

    fn runtime() -> Result<tokio::runtime::Runtime, String> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))
    }

    fn configs(cli: &Cli, args: &LoadArgs) -> Result<Vec<LoadConfig>, String> {
        let ops = args
            .ops
            .unwrap_or(if cli.quick { QUICK_OPS } else { FULL_OPS });
        let configs: Vec<LoadConfig> = args
            .clients
            .iter()
            .map(|&clients| LoadConfig {
                clients,
                ops,
                value_size: args.value_size,
                request_timeout: REQUEST_TIMEOUT,
            })
            .collect();
        if configs.is_empty() {
            return Err("--clients is empty".into());
        }
        for c in &configs {
            c.validate()?;
        }
        Ok(configs)
    }

    fn write_out(out: &Path, stem: &str, json: &serde_json::Value, md: &str) -> Result<(), String> {
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
        let json_path = out.join(format!("{stem}.json"));
        let bytes = serde_json::to_vec_pretty(json).map_err(|e| e.to_string())?;
        std::fs::write(&json_path, bytes).map_err(|e| format!("{}: {e}", json_path.display()))?;
        let md_path = out.join(format!("{stem}.md"));
        std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
        eprintln!("wrote {} and {}", json_path.display(), md_path.display());
        Ok(())
    }

    fn progress(run: &LoadRun) {
        eprintln!(
            "  {} / {} clients: {:.0} puts/s (p99 {:.0} µs), {:.0} ranges/s (p99 {:.0} µs), peak RSS {}",
            run.server,
            run.clients,
            run.put.ops_per_sec,
            run.put.p99_us,
            run.range.ops_per_sec,
            run.range.p99_us,
            run.peak_rss
                .map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
        );
    }

    /// `rusd-bench load`.
    pub fn load(
        cli: &Cli,
        endpoints: &[String],
        args: &LoadArgs,
        pids: &[u32],
    ) -> Result<(), String> {
        let configs = configs(cli, args)?;
        let rt = runtime()?;
        rt.block_on(load::wait_ready(endpoints, Duration::from_secs(10)))?;
        let label = endpoints.join(",");
        let mut runs = Vec::new();
        for config in configs {
            eprintln!(
                "load: {label}, {} clients, {} ops",
                config.clients, config.ops
            );
            let run = rt.block_on(load::run_with(endpoints, &label, None, pids, config, None))?;
            progress(&run);
            runs.push(run);
        }
        let md = format!(
            "{} puts of 8-byte keys with {}-byte values, then as many single-key ranges{}.\n\n{}",
            runs.first().map_or(0, |r| r.put.ops),
            args.value_size,
            if !pids.is_empty() {
                "; peak RSS: the server's VmHWM since it started (summed over the pids)"
            } else {
                ""
            },
            versus::markdown(&runs, &[])
        );
        println!("{md}");
        write_out(&cli.out, "load", &serde_json::json!({ "runs": runs }), &md)
    }

    /// `rusd-bench versus-etcd`.
    pub fn versus_etcd(cli: &Cli, args: &LoadArgs) -> Result<(), String> {
        let configs = configs(cli, args)?;
        if args.members == 0 || args.members > 7 {
            return Err(format!("--members {}: 1 to 7", args.members));
        }
        if args.members > 1 && args.tls_auth {
            return Err("--tls-auth runs single members only (--members 1)".into());
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let rusd = exe.with_file_name("rusd");
        if !rusd.is_file() {
            return Err(format!(
                "{} not found: build it first with `cargo build --release -p rusd-server` \
                 (add `--features rocksdb` for RocksDB) into the same target folder",
                rusd.display()
            ));
        }
        let durability = match cli.durability.unwrap_or(DurabilityArg::Sync) {
            DurabilityArg::Sync => "sync",
            DurabilityArg::Buffered => "buffered",
        };
        let explicit = !cli.engines.is_empty();
        let mut notes = Vec::new();
        let engines: Vec<String> = if explicit {
            cli.engines
                .iter()
                .map(|e| {
                    e.parse::<BackendKind>()
                        .map(|k| k.name().to_string())
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<_, _>>()?
        } else {
            BackendKind::ALL
                .iter()
                .filter(|&&k| {
                    // Under sync the memory engine rewrites its whole image at every flush
                    // (cost proportional to the store): meant for small stores and tests.
                    let keep = k != BackendKind::Memory || durability != "sync";
                    if !keep {
                        notes.push(
                            "memory engine left out under sync (it rewrites its whole image \
                             at every flush; ask for it with --engines memory,...)"
                                .to_string(),
                        );
                    }
                    keep
                })
                .map(|k| k.name().to_string())
                .collect()
        };
        let mut specs = Vec::new();
        let etcd = versus::find_etcd();
        match &etcd {
            Some((bin, version)) => {
                eprintln!("versus-etcd: etcd {version} ({})", bin.display());
                specs.push(ServerSpec::Etcd {
                    bin: bin.clone(),
                    version: version.clone(),
                });
            }
            None => eprintln!(
                "versus-etcd: no `etcd` on PATH (Debian: apt-get install etcd-server); rusd only"
            ),
        }
        for engine in &engines {
            specs.push(ServerSpec::Rusd {
                bin: rusd.clone(),
                engine: engine.clone(),
                durability: durability.to_string(),
            });
        }
        let parent = cli.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let certs = tempfile::Builder::new()
            .prefix("rusd-versus-certs-")
            .tempdir_in(&parent)
            .map_err(|e| e.to_string())?;
        let security = if args.tls_auth {
            Some(load::Security::generate(certs.path())?)
        } else {
            None
        };
        let (scheme, extra) = match &security {
            Some(s) => ("https", s.server_flags()),
            None => ("http", Vec::new()),
        };
        let rt = runtime()?;
        let mut runs: Vec<LoadRun> = Vec::new();
        let mut failures = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        for config in &configs {
            for spec in &specs {
                if spec
                    .engine()
                    .is_some_and(|e| skipped.iter().any(|s| s == e))
                {
                    continue;
                }
                eprintln!(
                    "versus-etcd: {} with {} clients, {} ops",
                    spec.label(),
                    config.clients,
                    config.ops
                );
                let started = if args.members > 1 {
                    ClusterProcess::start(spec, &parent, START_TIMEOUT, args.members)
                        .map(Deployment::Cluster)
                } else {
                    ServerProcess::start_with(spec, &parent, START_TIMEOUT, scheme, &extra)
                        .map(Deployment::Single)
                };
                let server = match started {
                    Ok(mut s) => {
                        if security.is_some() {
                            s.set_label(format!("{} TLS+auth", s.label()));
                        }
                        s
                    }
                    Err(StartError::Exited(log))
                        if !explicit && log.contains("not compiled into this rusd build") =>
                    {
                        let engine = spec.engine().unwrap_or_default().to_string();
                        let note = format!("{engine} not compiled into {}", rusd.display());
                        eprintln!("  skipped: {note}");
                        notes.push(note);
                        skipped.push(engine);
                        continue;
                    }
                    Err(e) => {
                        failures.push(format!("{}: {e}", spec.label()));
                        continue;
                    }
                };
                let endpoints = server.endpoints();
                let as_user = security.as_ref().map(load::Security::as_bench_user);
                let result = rt
                    .block_on(load::wait_ready_with(
                        &endpoints,
                        START_TIMEOUT,
                        security.as_ref(),
                    ))
                    .and_then(|()| match &security {
                        Some(s) => rt.block_on(load::setup_auth(&endpoints, s)),
                        None => Ok(()),
                    })
                    .and_then(|()| {
                        rt.block_on(load::run_with(
                            &endpoints,
                            server.label(),
                            spec.engine(),
                            &server.pids(),
                            *config,
                            as_user.as_ref(),
                        ))
                    });
                match result {
                    Ok(run) => {
                        progress(&run);
                        runs.push(run);
                    }
                    Err(e) => failures.push(format!(
                        "{} with {} clients: {e}\n{}",
                        spec.label(),
                        config.clients,
                        server.log_tail()
                    )),
                }
                server.stop(STOP_GRACE);
            }
        }
        let checks = versus::targets(&runs);
        let ops = configs.first().map_or(0, |c| c.ops);
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let etcd_note = match &etcd {
            Some((_, v)) => format!("etcd {v} (WAL always fsynced)"),
            None => "no etcd (not on PATH)".to_string(),
        };
        let members_note;
        let tls_note = if security.is_some() {
            "; every server over mutual TLS (`--client-cert-auth`, same generated certificates) \
             with auth enabled, the load running as a user with a READWRITE grant on the key \
             prefix `0` (simple tokens, bcrypt cost 10)"
        } else if args.members > 1 {
            members_note = format!(
                "; every server as a cluster of {} members on this machine (ranges \
                 linearizable; the clients use every member's endpoint); CPU and peak RSS \
                 summed over the members",
                args.members
            );
            &members_note
        } else {
            ""
        };
        let md = format!(
            "{ops} puts of 8-byte keys with {}-byte values per run, then {ops} single-key ranges{tls_note}; \
             every server fresh on loopback with an empty data dir; {etcd_note} vs rusd \
             `--durability {durability}`{}; clients and server share this machine's {cores} cores; \
             peak RSS = the server's VmHWM at the end of the run{}.\n\n{}",
            args.value_size,
            if durability == "sync" {
                " (group commit: ack = durable)"
            } else {
                " (durable within 100 ms: not etcd's durability)"
            },
            notes.iter().map(|n| format!("; {n}")).collect::<String>(),
            versus::markdown(&runs, &checks)
        );
        println!("{md}");
        for c in &checks {
            let all = c.puts_met && c.ranges_met && c.memory_met.unwrap_or(false);
            eprintln!(
                "target {} at {} clients: {}",
                c.engine,
                c.clients,
                if all { "met" } else { "not met" }
            );
        }
        let json = serde_json::json!({
            "ops": ops,
            "value_size": args.value_size,
            "key_size": 8,
            "durability": durability,
            "tls_auth": security.is_some(),
            "members": args.members,
            "etcd_version": etcd.as_ref().map(|(_, v)| v.clone()),
            "cores": cores,
            "targets": {
                "puts_x_etcd": versus::PUT_TARGET,
                "ranges_x_etcd": versus::RANGE_TARGET,
                "peak_rss_x_etcd": versus::MEMORY_TARGET,
            },
            "skipped_engines": skipped,
            "runs": runs,
            "checks": checks,
        });
        let stem = if security.is_some() {
            "versus-etcd-tls-auth".to_string()
        } else if args.members > 1 {
            format!("versus-etcd-{}-members", args.members)
        } else {
            "versus-etcd".to_string()
        };
        write_out(&cli.out, &stem, &json, &md)?;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    }
}

/// Without the `etcd` feature, `load` and `versus-etcd` only explain how to get them.
#[cfg(not(feature = "etcd"))]
mod etcd_mode {
    use super::{Cli, LoadArgs};

    const NEEDS_FEATURE: &str = "`load` and `versus-etcd` need the `etcd` cargo feature: \
        cargo run --release -p bench-suite --features etcd -- versus-etcd \
        (the etcd-client crate needs protoc: apt-get install protobuf-compiler)";

    pub fn load(_: &Cli, _: &[String], _: &LoadArgs, _: &[u32]) -> Result<(), String> {
        Err(NEEDS_FEATURE.into())
    }

    pub fn versus_etcd(_: &Cli, _: &LoadArgs) -> Result<(), String> {
        Err(NEEDS_FEATURE.into())
    }
}
