//! `rusd-bench`: runs the same workload on every compiled engine, each in a fresh worker
//! process, and prints them side by side.
//!
//! ```text
//! cargo run --release -p bench-suite -- --quick          # a few minutes, every compiled engine
//! cargo run --release -p bench-suite                     # full profile: 1M keys
//! cargo run --release -p bench-suite --features rocksdb  # include RocksDB
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use bench_suite::measure::{fsyncs_per_second, MemorySample};
use bench_suite::report::{self, EngineReport};
use bench_suite::workload::{self, Profile};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mvcc_core::engine::{compiled_backends, AnyBackend};
use storage_api::{BackendConfig, BackendKind, Durability};

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
    #[arg(long, global = true)]
    quick: bool,
    /// Engines to run (default: every compiled engine).
    #[arg(long, value_delimiter = ',', global = true)]
    engines: Vec<String>,
    /// Output folder for results.json and chart.svg.
    #[arg(long, default_value = "bench-out", global = true)]
    out: PathBuf,
    /// Durability of the main phases (durable-write phases always use sync).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Buffered, global = true)]
    durability: DurabilityArg,
    /// Cache budget in MiB given to every engine.
    #[arg(long, default_value_t = 256, global = true)]
    cache_mb: u64,
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
        cli.durability.to_config(),
        profile,
        !volatile,
        &mut on_phase,
    )?;
    let mvcc = bench_suite::mvcc_workload::run_mvcc(
        &open,
        &tmp.path().join("mvcc"),
        cli.cache_mb,
        cli.durability.to_config(),
        profile,
        !volatile,
        &mut on_phase,
    )?;
    let report = EngineReport {
        engine: kind.name().to_string(),
        profile: profile.name.to_string(),
        keys: profile.keys,
        value_size: profile.value_size,
        cache_mb: cli.cache_mb,
        durability: cli.durability.label().to_string(),
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
    cmd.arg("--durability").arg(match cli.durability {
        DurabilityArg::Buffered => "buffered",
        DurabilityArg::Sync => "sync",
    });
    if cli.quick {
        cmd.arg("--quick");
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

/// Runs `rusd-index-mem` (built next to this binary) and returns bytes per key beyond the
/// key and bytes per extra version of the key index.
fn index_memory(keys: usize) -> Result<(f64, f64), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let tool = exe.with_file_name("rusd-index-mem");
    let out = Command::new(&tool)
        .args(["--keys", &keys.to_string(), "--versions", "5"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let field = |name: &str| v[name].as_f64().ok_or_else(|| format!("missing {name}"));
    Ok((
        field("bytes_per_key_beyond_key")?,
        field("bytes_per_extra_version")?,
    ))
}

fn compare(cli: &Cli) -> Result<(), String> {
    let kinds: Vec<BackendKind> = if cli.engines.is_empty() {
        compiled_backends()
    } else {
        cli.engines
            .iter()
            .map(|e| e.parse::<BackendKind>().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?
    };
    let profile = profile(cli);
    eprintln!(
        "rusd-bench: profile {}, engines {:?}, cache {} MiB, durability {}",
        report::describe(&profile),
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        cli.cache_mb,
        cli.durability.label()
    );
    const PHASES_PER_ENGINE: u64 = 24;
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
