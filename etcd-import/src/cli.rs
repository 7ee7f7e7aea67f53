//! The command line of `rusd-import` and of `rusd import|export|snapshot`: moves stores
//! between etcd and rusd, offline.
//!
//! * `import --etcd-db <path> --data-dir <dir> [--backend <engine>]` (also without the
//!   `import` word, the original form): an etcd database into a new rusd store.
//! * `export --data-dir <dir> --etcd-db <file> [--backend <engine>] [--snapshot-format]`: a
//!   rusd store into a new etcd 3.4 bbolt file.
//! * `snapshot save <data dir> <file> [--backend <engine>]`,
//!   `snapshot restore <file> --data-dir <dir> [--backend <engine>]`,
//!   `snapshot status <file> [-w simple|table|json]`: rusd's own snapshots.
//!
//! The data directory is the engine's own directory for `rusd-import` ([`Layout::EngineDir`])
//! and `rusd`'s `--data-dir` for the `rusd` subcommands ([`Layout::RusdDataDir`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use storage_api::BackendKind;

use crate::snapshot::SnapshotSummary;
use crate::{render_status, ImportError, StatusFormat};

/// Moves data between etcd (3.4-3.6 bbolt files) and rusd stores, and handles rusd snapshots.
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// etcd data directory, its `member/snap/db`, or an `etcdctl snapshot save` file (read-only).
    #[arg(long, required = true)]
    etcd_db: Option<PathBuf>,
    /// The rusd data directory to create (must be missing or empty).
    #[arg(long, required = true)]
    data_dir: Option<PathBuf>,
    /// Storage engine: sled, redb, memory (rocksdb when compiled in).
    #[arg(long, default_value = "sled")]
    backend: BackendKind,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Imports an etcd 3.4-3.6 database into a new rusd data directory.
    Import(ImportArgs),
    /// Exports a stopped rusd store as an etcd 3.4 bbolt file (`etcdctl snapshot restore` input).
    Export(ExportArgs),
    /// rusd's own snapshots, offline (like `etcdutl snapshot`).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// etcd data directory, its `member/snap/db`, or an `etcdctl snapshot save` file (read-only).
    #[arg(long)]
    etcd_db: PathBuf,
    /// The rusd data directory to create (must be missing or empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// Storage engine: sled, redb, memory (rocksdb when compiled in).
    #[arg(long, default_value = "sled")]
    backend: BackendKind,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The rusd data directory to read (a stopped store).
    #[arg(long)]
    data_dir: PathBuf,
    /// The bbolt file to create (must not exist).
    #[arg(long)]
    etcd_db: PathBuf,
    /// The store's engine (default: the one its RUSD_ENGINE marker names).
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Append the SHA-256 trailer of `etcdctl snapshot save` files (then
    /// `etcdctl snapshot restore` needs no `--skip-hash-check`).
    #[arg(long)]
    snapshot_format: bool,
}

#[derive(Debug, Subcommand)]
enum SnapshotCmd {
    /// Saves a stopped rusd store as a portable snapshot file.
    Save {
        /// The rusd data directory.
        data_dir: PathBuf,
        /// The snapshot file to create (must not exist).
        file: PathBuf,
        /// The store's engine (default: the one its RUSD_ENGINE marker names).
        #[arg(long)]
        backend: Option<BackendKind>,
    },
    /// Restores a snapshot file into a new store.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The rusd data directory to create (must be missing or empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// Storage engine: sled, redb, memory (rocksdb when compiled in).
        #[arg(long, default_value = "sled")]
        backend: BackendKind,
    },
    /// Prints a snapshot's hash (its CRC-32), revision, live keys and size.
    Status {
        /// The snapshot file.
        file: PathBuf,
        /// Output format: simple, table or json.
        #[arg(short = 'w', long = "write-out", default_value = "table")]
        write_out: StatusFormat,
    },
}

fn fail(name: &str, e: &ImportError) -> ExitCode {
    let mut line = format!("{name}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        // Some errors repeat their source in their own message: print it once.
        let text = s.to_string();
        if !line.ends_with(&text) {
            line.push_str(&format!(": {text}"));
        }
        src = s.source();
    }
    eprintln!("{line}");
    ExitCode::FAILURE
}

fn import(args: ImportArgs, layout: Layout) -> Result<(), ImportError> {
    let s = crate::import(
        &args.etcd_db,
        &layout.engine_dir(&args.data_dir),
        args.backend,
    )?;
    println!(
        "imported {} ({}) into {} [{}]: {} rows, {} live keys, {} leases, revision {}, compacted at {}",
        s.source.display(),
        if s.snapshot { "snapshot" } else { "data file" },
        args.data_dir.display(),
        s.backend,
        s.rows,
        s.live_keys,
        s.leases,
        s.current_revision,
        s.compact_revision
    );
    if let Some(a) = &s.auth {
        println!("imported {}", a.describe());
    }
    Ok(())
}

fn export(args: ExportArgs, layout: Layout) -> Result<(), ImportError> {
    let s = crate::export(
        &layout.engine_dir(&args.data_dir),
        &args.etcd_db,
        args.backend,
        args.snapshot_format,
    )?;
    println!(
        "exported {} [{}] to {} ({}): {} rows, {} live keys, {} leases, revision {}, compacted at {}",
        args.data_dir.display(),
        s.backend,
        s.output.display(),
        if s.snapshot_format {
            "etcd snapshot"
        } else {
            "etcd bbolt file"
        },
        s.rows,
        s.live_keys,
        s.leases,
        s.current_revision,
        s.compact_revision
    );
    if let Some(a) = &s.auth {
        println!("exported {}", a.describe());
    }
    print!("{}", render_status(&s.status, StatusFormat::Table));
    Ok(())
}

fn describe(s: &SnapshotSummary) -> String {
    format!(
        "{} records, revision {}, compacted at {}, {} live keys, {} leases, {} bytes, crc32 {:08x}",
        s.records, s.revision, s.compact_revision, s.live_keys, s.leases, s.size, s.crc32
    )
}

fn snapshot(cmd: SnapshotCmd, layout: Layout) -> Result<(), ImportError> {
    match cmd {
        SnapshotCmd::Save {
            data_dir,
            file,
            backend,
        } => {
            let s = crate::snapshot::save(&layout.engine_dir(&data_dir), &file, backend)?;
            println!(
                "saved {} [{}] to {}: {}",
                data_dir.display(),
                s.backend,
                file.display(),
                describe(&s)
            );
        }
        SnapshotCmd::Restore {
            file,
            data_dir,
            backend,
        } => {
            let s = crate::snapshot::restore(&file, &layout.engine_dir(&data_dir), backend)?;
            println!(
                "restored {} into {} [{}]: {}",
                file.display(),
                data_dir.display(),
                s.backend,
                describe(&s)
            );
        }
        SnapshotCmd::Status { file, write_out } => {
            let s = crate::snapshot::status(&file)?;
            print!("{}", render_status(&s.status(), write_out));
        }
    }
    Ok(())
}

/// Where `--data-dir` (and `snapshot save`'s data directory) points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// At the engine's own directory (`rusd-import`: the `member` folder of a rusd data
    /// directory, or any store of an embedder).
    EngineDir,
    /// At a `rusd` data directory (the `--data-dir` of `rusd` itself); the engine lives in its
    /// `member` folder (the `rusd import|export|snapshot` subcommands).
    RusdDataDir,
}

impl Layout {
    fn engine_dir(self, dir: &Path) -> PathBuf {
        match self {
            Layout::EngineDir => dir.to_path_buf(),
            Layout::RusdDataDir => dir.join("member"),
        }
    }
}

/// Runs the command line `args` (the first item is the program name, as in
/// `std::env::args_os`): `import`, `export` or `snapshot save|restore|status` (without a
/// subcommand: an import). Errors are printed on standard error prefixed with `name`; the exit
/// code is 0 on success, 1 on failure and 2 on a usage error.
pub fn run<I, T>(name: &'static str, args: I, layout: Layout) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::CommandFactory as _;
    use clap::FromArgMatches as _;
    let matches = match Cli::command().name(name).try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Cmd::Import(a)) => import(a, layout),
        Some(Cmd::Export(a)) => export(a, layout),
        Some(Cmd::Snapshot(c)) => snapshot(c, layout),
        None => match (cli.etcd_db, cli.data_dir) {
            (Some(etcd_db), Some(data_dir)) => import(
                ImportArgs {
                    etcd_db,
                    data_dir,
                    backend: cli.backend,
                },
                layout,
            ),
            // clap enforces both without a subcommand.
            _ => return ExitCode::from(2),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(name, &e),
    }
}
