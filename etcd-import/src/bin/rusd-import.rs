//! `rusd-import`: moves stores between etcd and rusd, offline.
//!
//! * `rusd-import import --etcd-db <path> --data-dir <dir> [--backend <engine>]` (also without
//!   the `import` word, the original form): an etcd database into a new rusd store.
//! * `rusd-import export --data-dir <dir> --etcd-db <file> [--backend <engine>]
//!   [--snapshot-format]`: a rusd store into a new etcd 3.4 bbolt file.
//! * `rusd-import snapshot save <data dir> <file> [--backend <engine>]`,
//!   `snapshot restore <file> --data-dir <dir> [--backend <engine>]`,
//!   `snapshot status <file> [-w simple|table|json]`: rusd's own snapshots.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use etcd_import::snapshot::SnapshotSummary;
use etcd_import::{render_status, ImportError, StatusFormat};
use storage_api::BackendKind;

/// Moves data between etcd (3.4-3.6 bbolt files) and rusd stores, and handles rusd snapshots.
#[derive(Debug, Parser)]
#[command(
    name = "rusd-import",
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

fn fail(e: &ImportError) -> ExitCode {
    let mut line = format!("rusd-import: {e}");
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

fn import(args: ImportArgs) -> Result<(), ImportError> {
    let s = etcd_import::import(&args.etcd_db, &args.data_dir, args.backend)?;
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
    Ok(())
}

fn export(args: ExportArgs) -> Result<(), ImportError> {
    let s = etcd_import::export(
        &args.data_dir,
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
    print!("{}", render_status(&s.status, StatusFormat::Table));
    Ok(())
}

fn describe(s: &SnapshotSummary) -> String {
    format!(
        "{} records, revision {}, compacted at {}, {} live keys, {} leases, {} bytes, crc32 {:08x}",
        s.records, s.revision, s.compact_revision, s.live_keys, s.leases, s.size, s.crc32
    )
}

fn snapshot(cmd: SnapshotCmd) -> Result<(), ImportError> {
    match cmd {
        SnapshotCmd::Save {
            data_dir,
            file,
            backend,
        } => {
            let s = etcd_import::snapshot::save(&data_dir, &file, backend)?;
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
            let s = etcd_import::snapshot::restore(&file, &data_dir, backend)?;
            println!(
                "restored {} into {} [{}]: {}",
                file.display(),
                data_dir.display(),
                s.backend,
                describe(&s)
            );
        }
        SnapshotCmd::Status { file, write_out } => {
            let s = etcd_import::snapshot::status(&file)?;
            print!("{}", render_status(&s.status(), write_out));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Import(a)) => import(a),
        Some(Cmd::Export(a)) => export(a),
        Some(Cmd::Snapshot(c)) => snapshot(c),
        None => match (cli.etcd_db, cli.data_dir) {
            (Some(etcd_db), Some(data_dir)) => import(ImportArgs {
                etcd_db,
                data_dir,
                backend: cli.backend,
            }),
            // clap enforces both without a subcommand.
            _ => return ExitCode::from(2),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}
