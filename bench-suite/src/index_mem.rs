//! Heap bytes of the key index per key (beyond the key bytes) and per extra version.
//!
//! Measured with a counting global allocator: `rusd-bench` installs `cap::Cap<System>` and
//! runs [`measure`] in a child process of its own (`rusd-bench index-mem`), so nothing else
//! allocates while the index grows.

use mvcc_core::{MvccResult, Revision, TreeIndex};
use serde::{Deserialize, Serialize};

/// The result of one [`measure`] run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IndexMemory {
    /// Keys indexed.
    pub keys: usize,
    /// Versions per key (at least 2).
    pub versions: usize,
    /// Key size in bytes (at least 8).
    pub key_size: usize,
    /// Index heap bytes per key with one version, beyond the key's own bytes.
    pub bytes_per_key_beyond_key: f64,
    /// Index heap bytes per additional version of a key.
    pub bytes_per_extra_version: f64,
    /// Keys in the index at the end (equals `keys`).
    pub index_len: usize,
}

/// The `i`-th key of `size` bytes (zero-padded decimal, at least 8 bytes).
fn key(i: usize, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0width$}", width = size.max(8)).into_bytes();
    k.truncate(size.max(8));
    k
}

/// Indexes `keys` keys of `key_size` bytes, `versions` times each, reading the allocator's
/// live byte count through `allocated` before, after the first version and at the end.
pub fn measure(
    keys: usize,
    versions: usize,
    key_size: usize,
    allocated: impl Fn() -> usize,
) -> MvccResult<IndexMemory> {
    let versions = versions.max(2);
    let key_size = key_size.max(8);
    let names: Vec<Vec<u8>> = (0..keys).map(|i| key(i, key_size)).collect();
    let key_bytes: usize = names.iter().map(Vec::len).sum();

    let before = allocated();
    let index = TreeIndex::new();
    let mut rev = 0i64;
    for k in &names {
        rev += 1;
        index.put(k, Revision::new(rev, 0))?;
    }
    let one_version = allocated().saturating_sub(before);
    for _ in 1..versions {
        for k in &names {
            rev += 1;
            index.put(k, Revision::new(rev, 0))?;
        }
    }
    let all_versions = allocated().saturating_sub(before);
    let n = keys.max(1) as f64;
    Ok(IndexMemory {
        keys,
        versions,
        key_size,
        bytes_per_key_beyond_key: (one_version as f64 - key_bytes as f64) / n,
        bytes_per_extra_version: all_versions.saturating_sub(one_version) as f64
            / (n * (versions - 1) as f64),
        index_len: index.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn figures_come_from_the_allocator_readings() {
        // Readings 1000 (before), 1000 + 10 keys * (16 + 50) (one version), then + 10 * 4 * 30.
        let readings = [1000usize, 1000 + 10 * 66, 1000 + 10 * 66 + 10 * 4 * 30];
        let call = Cell::new(0);
        let m = measure(10, 5, 16, || {
            let r = readings[call.get()];
            call.set(call.get() + 1);
            r
        })
        .unwrap();
        assert_eq!(call.get(), 3);
        assert_eq!(
            (m.keys, m.versions, m.key_size, m.index_len),
            (10, 5, 16, 10)
        );
        assert_eq!(m.bytes_per_key_beyond_key, 50.0);
        assert_eq!(m.bytes_per_extra_version, 30.0);
    }

    #[test]
    fn keys_are_distinct_and_sized() {
        assert_eq!(key(42, 16), b"0000000000000042".to_vec());
        assert_eq!(key(7, 3), b"00000007".to_vec());
    }
}
