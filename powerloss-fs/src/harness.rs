//! Plumbing shared by the power-loss tests that run a store in a child process on a
//! [`Mount`](crate::Mount) (`mvcc-core/tests/power_loss.rs`, `rusd-raft/tests/power_loss.rs`):
//! the cut count and seed from the environment, the FUSE availability check, the child's
//! output reader and the freeze before a cut. Test support: it panics on broken invariants of
//! the test itself.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The environment variable that replays a run's random choices.
pub const SEED_ENV: &str = "RUSD_POWER_SEED";

/// Cuts per configuration: `RUSD_POWER_CUTS`, else `default`.
pub fn cuts(default: usize) -> usize {
    std::env::var("RUSD_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The run's seed: [`SEED_ENV`], else the clock.
pub fn base_seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}

/// `false` (skip) when FUSE cannot be used here and `CI` is unset; panics when `CI` is set.
pub fn fuse_ready(test: &str) -> bool {
    match crate::availability() {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {e}, and CI is set: this test must run")
        }
        Err(e) => {
            eprintln!("{test}: skipped: {e}");
            false
        }
    }
}

/// Reads complete lines only (a line cut by the kill is not an acknowledgement).
pub fn spawn_reader(
    stdout: std::process::ChildStdout,
) -> (mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if buf.last() == Some(&b'\n') => {
                    let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                    // libtest prints `test power_loss_child_entry ... ` before the first line.
                    let line = match line.find("@@ ") {
                        Some(i) => line[i..].to_string(),
                        None => line,
                    };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                Ok(_) => break,
            }
        }
    });
    (rx, handle)
}

/// Stops the child and waits until none of its threads runs user code any more: from then on
/// it can neither print nor observe anything (threads inside a system call stop on return).
pub fn freeze_child(child: &Child) {
    let pid = child.id() as i32;
    let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let running = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|s| {
                            s.rsplit_once(')')
                                .and_then(|(_, rest)| rest.split_whitespace().next())
                                .map(|st| st == "R")
                        })
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if !running {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
