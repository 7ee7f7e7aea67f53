//! `rusd-index-mem`: measures the key index's heap bytes per key (beyond the key bytes) and
//! per extra version, with a counting global allocator (the `cap` crate), and prints them as
//! JSON. Run by `rusd-bench`; usable alone: `rusd-index-mem --keys 1000000 --versions 5`.

use std::alloc::System;

use cap::Cap;
use clap::Parser;
use mvcc_core::{Revision, TreeIndex};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

#[derive(Debug, Parser)]
#[command(about = "Measure the key index's memory per key and per version")]
struct Cli {
    /// Keys to index.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Versions per key (at least 2).
    #[arg(long, default_value_t = 5)]
    versions: usize,
    /// Key size in bytes (at least 8).
    #[arg(long, default_value_t = 16)]
    key_size: usize,
}

fn key(i: usize, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0width$}", width = size.max(8)).into_bytes();
    k.truncate(size.max(8));
    k
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let versions = cli.versions.max(2);
    let keys: Vec<Vec<u8>> = (0..cli.keys).map(|i| key(i, cli.key_size)).collect();
    let key_bytes: usize = keys.iter().map(Vec::len).sum();

    let before = ALLOC.allocated();
    let index = TreeIndex::new();
    let mut rev = 0i64;
    for k in &keys {
        rev += 1;
        index.put(k, Revision::new(rev, 0))?;
    }
    let one_version = ALLOC.allocated().saturating_sub(before);
    for _ in 1..versions {
        for k in &keys {
            rev += 1;
            index.put(k, Revision::new(rev, 0))?;
        }
    }
    let all_versions = ALLOC.allocated().saturating_sub(before);
    let n = cli.keys.max(1) as f64;
    let per_key = (one_version as f64 - key_bytes as f64) / n;
    let per_version =
        (all_versions.saturating_sub(one_version)) as f64 / (n * (versions - 1) as f64);
    println!(
        "{}",
        serde_json::json!({
            "keys": cli.keys,
            "versions": versions,
            "key_size": cli.key_size,
            "bytes_per_key_beyond_key": per_key,
            "bytes_per_extra_version": per_version,
            "index_len": index.len(),
        })
    );
    Ok(())
}
