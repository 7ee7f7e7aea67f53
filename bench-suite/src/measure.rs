//! Measurement helpers: latency statistics, process memory, disk fsync rate.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Latencies of one phase, in nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<u64>,
}

impl Latencies {
    /// An empty recorder with room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Latencies {
            samples: Vec::with_capacity(n),
        }
    }

    /// Records one operation's duration.
    pub fn record(&mut self, d: Duration) {
        self.samples
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Times `f` and records it.
    pub fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.record(t.elapsed());
        out
    }

    /// Appends another recorder's samples.
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `q`-quantile (0..=1) in microseconds, nearest-rank.
    pub fn quantile_us(&mut self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples.sort_unstable();
        let rank = ((q * self.samples.len() as f64).ceil() as usize).clamp(1, self.samples.len());
        self.samples[rank - 1] as f64 / 1000.0
    }
}

/// Measures one phase: resets the peak-RSS counter, runs `f` (which records per-operation
/// latencies and returns the operation count) and appends the result to `out`.
pub fn phase<E>(
    name: &str,
    expected: usize,
    out: &mut Vec<PhaseResult>,
    f: impl FnOnce(&mut Latencies) -> Result<u64, E>,
) -> Result<(), E> {
    reset_peak_rss();
    let mut lat = Latencies::with_capacity(expected);
    let start = Instant::now();
    let ops = f(&mut lat)?;
    out.push(PhaseResult::new(name, ops, start.elapsed(), &mut lat));
    Ok(())
}

/// Runs `f(thread_index, latencies)` on `n` scoped threads and merges their latencies.
/// The first error is returned; a panic in a thread is propagated.
pub fn on_threads<E: Send>(
    n: usize,
    f: impl Fn(usize, &mut Latencies) -> Result<(), E> + Sync,
) -> Result<Latencies, E> {
    let results: Vec<Result<Latencies, E>> = std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..n)
            .map(|t| {
                s.spawn(move || {
                    let mut l = Latencies::default();
                    f(t, &mut l).map(|()| l)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut all = Latencies::default();
    for r in results {
        all.merge(r?);
    }
    Ok(all)
}

/// The result of one measured phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseResult {
    /// Phase name (e.g. `put`, `get (2 threads)`).
    pub name: String,
    /// Operations performed (for `mb/s` phases: bytes).
    pub ops: u64,
    /// Wall-clock seconds of the phase.
    pub seconds: f64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Median latency in microseconds (0 when not measured per operation).
    pub p50_us: f64,
    /// 99th percentile latency in microseconds (0 when not measured per operation).
    pub p99_us: f64,
    /// Throughput in MB/s for byte-oriented phases (snapshot, restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_per_sec: Option<f64>,
    /// Peak RSS in bytes during the phase.
    pub peak_rss: u64,
    /// Anonymous RSS in bytes at the end of the phase.
    pub anon_rss: u64,
}

impl PhaseResult {
    /// Builds a result from an operation count, elapsed time and latencies.
    pub fn new(name: impl Into<String>, ops: u64, elapsed: Duration, lat: &mut Latencies) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let mem = MemorySample::now();
        PhaseResult {
            name: name.into(),
            ops,
            seconds,
            ops_per_sec: ops as f64 / seconds,
            p50_us: lat.quantile_us(0.50),
            p99_us: lat.quantile_us(0.99),
            mb_per_sec: None,
            peak_rss: mem.peak_rss,
            anon_rss: mem.anon_rss,
        }
    }
}

/// Memory of this process, from `/proc/self/status` and `/proc/self/smaps_rollup`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemorySample {
    /// Current resident set size in bytes.
    pub rss: u64,
    /// Peak resident set size (`VmHWM`) since start or the last [`reset_peak_rss`].
    pub peak_rss: u64,
    /// Anonymous resident memory (heap, not file cache) in bytes.
    pub anon_rss: u64,
}

fn kb_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl MemorySample {
    /// Reads the current values (zeros where `/proc` is unavailable).
    pub fn now() -> Self {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let rollup = fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
        MemorySample {
            rss: kb_field(&status, "VmRSS:"),
            peak_rss: kb_field(&status, "VmHWM:"),
            anon_rss: kb_field(&rollup, "Anonymous:"),
        }
    }
}

/// Resets the kernel's peak-RSS counter so the next phase measures its own peak.
pub fn reset_peak_rss() {
    // "5" resets VmHWM (Linux >= 4.0); failure only means peaks accumulate.
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// Measures how many `write(4 KiB) + fdatasync` cycles per second the disk under `dir`
/// completes in about `budget`: the physical ceiling of "ack = durable" without group commit.
pub fn fsyncs_per_second(dir: &Path, budget: Duration) -> std::io::Result<f64> {
    fs::create_dir_all(dir)?;
    let path = dir.join("fsync-probe");
    let mut f = fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget || n < 10 {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    fs::remove_file(&path)?;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut l = Latencies::default();
        for us in 1..=100u64 {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.quantile_us(0.5), 50.0);
        assert_eq!(l.quantile_us(0.99), 99.0);
        assert_eq!(l.quantile_us(1.0), 100.0);
        assert_eq!(Latencies::default().quantile_us(0.5), 0.0);
    }

    #[test]
    fn parses_proc_fields() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t1024 kB\n";
        assert_eq!(kb_field(text, "VmHWM:"), 2048 * 1024);
        assert_eq!(kb_field(text, "VmRSS:"), 1024 * 1024);
        assert_eq!(kb_field(text, "Missing:"), 0);
        let m = MemorySample::now();
        assert!(m.rss > 0 && m.peak_rss >= m.rss);
    }
}
