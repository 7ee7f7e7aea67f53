//! `rusd-import --etcd-db <path> --data-dir <dir> [--backend <engine>]`: imports an etcd
//! database (a data directory, its `member/snap/db`, or an `etcdctl snapshot save` file) into a
//! new rusd store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use storage_api::BackendKind;

/// Imports an etcd 3.4-3.6 database into a new rusd data directory.
#[derive(Debug, Parser)]
#[command(name = "rusd-import", version)]
struct Args {
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

fn main() -> ExitCode {
    let args = Args::parse();
    match etcd_import::import(&args.etcd_db, &args.data_dir, args.backend) {
        Ok(s) => {
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut line = format!("rusd-import: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                line.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}
