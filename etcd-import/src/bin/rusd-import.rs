//! `rusd-import`: moves stores between etcd and rusd, offline (see [`etcd_import::cli`]).
//! `--data-dir` is the engine's own directory (a rusd data directory's `member` folder).

use std::process::ExitCode;

fn main() -> ExitCode {
    etcd_import::cli::run(
        "rusd-import",
        std::env::args_os(),
        etcd_import::cli::Layout::EngineDir,
    )
}
