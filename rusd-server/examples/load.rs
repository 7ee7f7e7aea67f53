//! A small load generator for any etcd v3 endpoint (rusd or etcd): N concurrent clients, each
//! on its own connection, put 8-byte keys with 256-byte values, then read them back with
//! single-key ranges. Prints ops/s and p50/p99 latency per phase, and the server's peak RSS
//! (`VmHWM`) when given its pid.
//!
//! ```sh
//! cargo run --release -p rusd-server --example load -- \
//!     --endpoint http://127.0.0.1:2379 --clients 16 --ops 20000 --pid "$SERVER_PID"
//! ```

use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// The endpoint (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Operations per phase (split over the clients).
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// The server's pid, to report its peak RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// A label for the output line.
    #[arg(long, default_value = "server")]
    label: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn phase(
    args: &Args,
    clients: &[etcd_client::Client],
    put: bool,
) -> (f64, Duration, Duration) {
    let per = args.ops / args.clients;
    let value = vec![b'v'; args.value_size];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        let mut c = c.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let key = format!("{:08}", (n * per + i) % 100_000_000);
                let t = Instant::now();
                if put {
                    c.put(key, value.clone(), None).await.expect("put");
                } else {
                    let r = c.get(key, None).await.expect("get");
                    assert_eq!(r.count(), 1);
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(args.ops);
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    (
        all.len() as f64 / secs,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
    )
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(
            etcd_client::Client::connect([args.endpoint.as_str()], None)
                .await
                .expect("connect"),
        );
    }
    let (put_ops, put_p50, put_p99) = phase(&args, &clients, true).await;
    let (get_ops, get_p50, get_p99) = phase(&args, &clients, false).await;
    let rss = args
        .pid
        .and_then(peak_rss_kib)
        .map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {} |",
        args.label,
        args.clients,
        put_ops,
        put_p50.as_secs_f64() * 1e3,
        put_p99.as_secs_f64() * 1e3,
        get_ops,
        get_p50.as_secs_f64() * 1e3,
        get_p99.as_secs_f64() * 1e3,
        rss
    );
}
