//! Plumbing shared by the power-loss tests that run a store in a child process on a
//! [`Mount`] (`mvcc-core/tests/power_loss.rs`, `rusd-raft/tests/power_loss.rs`):
//! the cut count and seed from the environment, the FUSE availability check, the child's
//! output reader, the freeze before a cut, the model of acknowledged writes ([`Acked`]) and
//! the cut-and-restart loop ([`power_cycles`] over a [`PowerLossDriver`]: the test says how to
//! start its child, parse its report and check the store on the remounted image; the loop
//! runs the child, cuts the power at the chosen moment, remounts, counts the cuts by target
//! and stops at the first cycle with problems). Test support: it panics on broken invariants
//! of the test itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Image, Mount, Options};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The environment variable that replays a run's random choices.
pub const SEED_ENV: &str = "RUSD_POWER_SEED";
/// Set (to `1`) in the child process's environment.
pub const CHILD_ENV: &str = "RUSD_POWER_CHILD";
/// The child's data directory (on the mount).
pub const DIR_ENV: &str = "RUSD_POWER_DIR";
/// The cycle number, in the child's environment.
pub const CYCLE_ENV: &str = "RUSD_POWER_CYCLE";
/// The test function the child runs (`--exact`).
pub const CHILD_ENTRY: &str = "power_loss_child_entry";

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

/// Collects the child's lines from `rx` into `lines` until the moment to strike: `delay`
/// after the call, or, when `op` is given and the child prints `@@ BEGIN <op>` first,
/// `jitter` after that line (inside the operation); or until the child's output ends.
pub fn collect_until(
    rx: &mpsc::Receiver<String>,
    lines: &mut Vec<String>,
    delay: Duration,
    op: Option<&str>,
    jitter: Duration,
) {
    let deadline = Instant::now() + delay;
    let begin = op.map(|op| format!("@@ BEGIN {op}"));
    let mut armed: Option<Instant> = None;
    loop {
        let until = armed.unwrap_or(deadline);
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(l) => {
                if let (Some(begin), None) = (&begin, armed) {
                    if l.starts_with(begin.as_str()) {
                        armed = Some(Instant::now() + jitter);
                    }
                }
                lines.push(l);
            }
            Err(_) => break,
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

/// Deterministic randomness (splitmix64; no extra dependency).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// The kind of an event an acknowledged write must have left at its revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AckedKind {
    /// A put.
    Put,
    /// A deletion.
    Delete,
}

/// A write the child acknowledged (`@@ ACK put|txn|del ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acked {
    /// `@@ ACK put <revision> <key> <value>`.
    Put {
        /// Its revision.
        rev: i64,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// `@@ ACK txn <revision> <value> <key>,<key>,...`: one value put to every key at one
    /// revision.
    Txn {
        /// Its revision.
        rev: i64,
        /// The value of every put.
        value: String,
        /// The keys.
        keys: Vec<String>,
    },
    /// `@@ ACK del <revision> <key>` (a deletion that deleted the key).
    Del {
        /// Its revision.
        rev: i64,
        /// The key.
        key: String,
    },
}

impl Acked {
    /// The write's revision.
    pub fn rev(&self) -> i64 {
        match self {
            Acked::Put { rev, .. } | Acked::Txn { rev, .. } | Acked::Del { rev, .. } => *rev,
        }
    }

    /// The events the revision must hold, as `(kind, key, value)` sorted by key and value
    /// (see [`sort_events`]); a deletion's value is empty.
    pub fn expected(&self) -> Vec<(AckedKind, String, String)> {
        let mut v = match self {
            Acked::Put { key, value, .. } => {
                vec![(AckedKind::Put, key.clone(), value.clone())]
            }
            Acked::Txn { value, keys, .. } => keys
                .iter()
                .map(|k| (AckedKind::Put, k.clone(), value.clone()))
                .collect(),
            Acked::Del { key, .. } => vec![(AckedKind::Delete, key.clone(), String::new())],
        };
        sort_events(&mut v);
        v
    }

    /// Parses the tokens after `@@ ACK ` of a put, txn or del line; `None` for another
    /// acknowledgement (`compact`...). Panics on a malformed line.
    pub fn parse(t: &[&str]) -> Option<Acked> {
        let rev = || {
            t[1].parse()
                .unwrap_or_else(|_| panic!("bad revision in {t:?}"))
        };
        match t.first().copied() {
            Some("put") => Some(Acked::Put {
                rev: rev(),
                key: t[2].into(),
                value: t[3].into(),
            }),
            Some("txn") => Some(Acked::Txn {
                rev: rev(),
                value: t[2].into(),
                keys: t[3].split(',').map(String::from).collect(),
            }),
            Some("del") => Some(Acked::Del {
                rev: rev(),
                key: t[2].into(),
            }),
            _ => None,
        }
    }
}

/// Sorts `(kind, key, value)` events by key and value, as [`Acked::expected`] does.
pub fn sort_events(v: &mut [(AckedKind, String, String)]) {
    v.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
}

/// Where in the child's life the power is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// After a random delay of the running workload.
    Anytime,
    /// A few milliseconds after `@@ BEGIN <op>`.
    Op(&'static str),
    /// During start-up, before `@@ READY` or soon after.
    Startup,
}

impl Target {
    /// The name cuts are counted under: the operation, `anytime` or `startup`.
    pub fn key(self) -> String {
        match self {
            Target::Op(op) => op.to_string(),
            other => format!("{other:?}").to_lowercase(),
        }
    }
}

/// One power-loss test: its child, what the child reports and the checks after a cut.
/// [`power_cycles`] runs the loop.
pub trait PowerLossDriver {
    /// What one child run reported.
    type Run;

    /// The configuration's name in messages.
    fn name(&self) -> String;

    /// Environment variables of the child besides [`CHILD_ENV`], [`DIR_ENV`], [`SEED_ENV`]
    /// and [`CYCLE_ENV`].
    fn child_env(&self) -> Vec<(String, String)>;

    /// How long the child may take to print `@@ READY`.
    fn ready_timeout(&self) -> Duration;

    /// The target of the next cut and the delay before it (after `@@ READY`, or after the
    /// start for [`Target::Startup`]).
    fn choose(&self, rng: &mut Rng) -> (Target, Duration);

    /// The options of the next mount (the first one and each remount).
    fn mount_options(&mut self) -> Options {
        Options::new()
    }

    /// Called with the mount just before the cut (to read its statistics).
    fn before_cut(&mut self, _mount: &Mount) {}

    /// Parses the child's complete lines (from `@@ `).
    fn parse(&self, lines: Vec<String>) -> Self::Run;

    /// The maintenance operation the run began last (`@@ BEGIN <op>`), if any.
    fn pending<'a>(&self, run: &'a Self::Run) -> Option<&'a str>;

    /// The child's `@@ ERR` lines.
    fn errors<'a>(&self, run: &'a Self::Run) -> &'a [String];

    /// Whether a child that was not killed by the cut ended acceptably.
    fn exit_ok(&self, _status: ExitStatus, _run: &Self::Run) -> bool {
        false
    }

    /// Whether the child's errors fail a cycle whose checks found nothing.
    fn errors_fail_clean_cycle(&self) -> bool {
        false
    }

    /// Opens the store on the remounted image in `dir` and checks it against `run`; the
    /// problems found (none: the next cycle continues from that state).
    fn check(&mut self, dir: &Path, run: &Self::Run, cycle: usize, ctx: &str) -> Vec<String>;
}

/// What [`power_cycles`] did.
#[derive(Debug, Default)]
pub struct Cycles {
    /// Cycles run (the last one found problems if `losses` is not empty).
    pub cycles: usize,
    /// Cuts by target: (cuts, cuts with that operation begun last).
    pub targets: BTreeMap<String, (usize, usize)>,
    /// The problems of the first cycle that had any, then the child's errors if any.
    pub losses: Vec<String>,
}

/// Runs up to `cycles` power cuts of `driver`'s child on a mount in `work` (an empty
/// directory); stops at the first cycle whose checks find problems. `seed` drives every
/// choice ([`SEED_ENV`] replays it). With `RUSD_POWER_DEBUG` set, prints the durable tree after
/// each cut; with `RUSD_POWER_KEEP=<dir>`, writes the durable image of the first cycle with
/// problems under `<dir>` (to open it with the engine's own tools); a panic inside
/// [`PowerLossDriver::check`] is a problem of its cycle; with `RUSD_POWER_NO_FREEZE` set (an
/// experiment, not a test), cuts while the child runs, so it lives on for a moment after the
/// cut and sees its `fsync`s fail with `EIO`.
pub fn power_cycles<D: PowerLossDriver>(
    driver: &mut D,
    work: &Path,
    cycles: usize,
    seed: u64,
) -> Cycles {
    let mountpoint = work.join("mnt");
    std::fs::create_dir_all(&mountpoint).expect("creating the mount point");
    let log = work.join("child.stderr");
    let mut mount =
        Mount::mount(&mountpoint, Image::default(), driver.mount_options()).expect("mount");
    // The first child creates the data directory: its name must be durable too.
    let dir = mount.mountpoint().join("db");
    let mut rng = Rng::new(seed);
    let mut out = Cycles::default();
    for cycle in 0..cycles {
        let (target, delay) = driver.choose(&mut rng);
        let child_seed = rng.next();
        let ctx = format!(
            "{} cycle {cycle} ({target:?}, {SEED_ENV}={seed})",
            driver.name()
        );
        let (run, image) = run_child(driver, mount, &dir, &log, child_seed, cycle, target, delay);
        let t = out.targets.entry(target.key()).or_default();
        t.0 += 1;
        if let (Target::Op(op), Some(p)) = (target, driver.pending(&run)) {
            t.1 += usize::from(p == op);
        }
        if std::env::var_os("RUSD_POWER_DEBUG").is_some() {
            for (path, entry) in image.tree() {
                let size = match entry {
                    crate::Entry::File(d) => d.len().to_string(),
                    crate::Entry::Dir => "dir".into(),
                };
                eprintln!("{ctx}: image {}: {size}", path.display());
            }
        }
        let kept = std::env::var_os("RUSD_POWER_KEEP").map(|to| (to, image.clone()));
        mount = Mount::mount(&mountpoint, image, driver.mount_options()).expect("remount");
        // An engine that panics while recovering the image (sled 0.34.7 did, see
        // vendor/sled/RUSD-PATCH.md) is a finding of this cycle, reported with its seed.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            driver.check(&dir, &run, cycle, &ctx)
        }));
        let mut problems = checked.unwrap_or_else(|panic| {
            vec![format!(
                "{ctx}: the check panicked (recovery or a read of the recovered store): {}",
                panic_message(panic.as_ref())
            )]
        });
        out.cycles = cycle + 1;
        let errors = driver.errors(&run);
        if !problems.is_empty() {
            if !errors.is_empty() {
                problems.push(format!("child errors: {errors:?}"));
            }
            if let Some((to, image)) = kept {
                save_image(&image, Path::new(&to));
                eprintln!("{ctx}: durable image saved in {}", Path::new(&to).display());
            }
            out.losses = problems;
            break;
        }
        if driver.errors_fail_clean_cycle() && !errors.is_empty() {
            panic!("{ctx}: the child reported errors: {errors:?}");
        }
    }
    mount.unmount().expect("unmount");
    out
}

/// Writes `image` under `to` (a debugging aid: `RUSD_POWER_KEEP=<dir>` saves the durable image
/// of the first cycle with problems).
fn save_image(image: &Image, to: &Path) {
    for (path, entry) in image.tree() {
        let target = to.join(path.strip_prefix("/").unwrap_or(&path));
        let written = match entry {
            crate::Entry::Dir => std::fs::create_dir_all(&target),
            crate::Entry::File(data) => target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&target, &data)),
        };
        if let Err(e) = written {
            eprintln!("saving the image: {}: {e}", target.display());
        }
    }
}

/// The text of a panic payload (`&str` or `String`), else a placeholder.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

/// Runs one child on `dir` and cuts the power as `target` says; returns what it printed and
/// the durable image.
#[allow(clippy::too_many_arguments)]
fn run_child<D: PowerLossDriver>(
    driver: &mut D,
    mount: Mount,
    dir: &Path,
    log: &Path,
    seed: u64,
    cycle: usize,
    target: Target,
    delay: Duration,
) -> (D::Run, Image) {
    let no_freeze = std::env::var_os("RUSD_POWER_NO_FREEZE").is_some();
    let stderr = std::fs::File::create(log).expect("child log");
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args(["--exact", CHILD_ENTRY, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env(DIR_ENV, dir)
        .env(SEED_ENV, seed.to_string())
        .env(CYCLE_ENV, cycle.to_string())
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    for (k, v) in driver.child_env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawning the child");
    let (rx, reader) = spawn_reader(child.stdout.take().expect("child stdout"));
    let mut lines = Vec::new();
    let name = driver.name();
    let stderr_text = || std::fs::read_to_string(log).unwrap_or_default();
    let fail = |child: &mut Child, lines: &[String], why: &str| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{name} cycle {cycle}: {why}; lines: {lines:?}; stderr:\n{}",
            stderr_text()
        );
    };
    if target != Target::Startup {
        let ready_deadline = Instant::now() + driver.ready_timeout();
        loop {
            let left = ready_deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    let ready = l.starts_with("@@ READY");
                    let err = l.starts_with("@@ ERR");
                    lines.push(l);
                    if ready {
                        break;
                    }
                    if err {
                        fail(&mut child, &lines, "child failed to start");
                    }
                }
                Err(_) => fail(&mut child, &lines, "child never became ready"),
            }
        }
    }
    let op = match target {
        Target::Op(op) => Some(op),
        _ => None,
    };
    collect_until(
        &rx,
        &mut lines,
        delay,
        op,
        Duration::from_micros(seed % 8000),
    );
    if !no_freeze {
        freeze_child(&child);
    }
    driver.before_cut(&mount);
    let image = mount.cut_power().expect("cutting the power");
    if no_freeze {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill(); // SIGKILL, also wakes the stopped process to die
    let status = child.wait().expect("waiting for the child");
    let _ = reader.join();
    lines.extend(rx.try_iter());
    let run = driver.parse(lines);
    use std::os::unix::process::ExitStatusExt;
    // Without the freeze, the child may fail on EIO before the kill.
    if status.signal() != Some(9) && !no_freeze && !driver.exit_ok(status, &run) {
        panic!(
            "{name} cycle {cycle}: child ended before the cut ({status}); stderr:\n{}",
            stderr_text()
        );
    }
    (run, image)
}

#[cfg(test)]
mod driver_tests {
    use super::*;

    #[test]
    fn acknowledgements_parse_and_expect_their_events() {
        assert_eq!(
            Acked::parse(&["put", "6", "k01", "v"]),
            Some(Acked::Put {
                rev: 6,
                key: "k01".into(),
                value: "v".into()
            })
        );
        let txn = Acked::parse(&["txn", "7", "T1", "k03,k01,k02"]).unwrap();
        assert_eq!(txn.rev(), 7);
        assert_eq!(
            txn.expected(),
            vec![
                (AckedKind::Put, "k01".into(), "T1".into()),
                (AckedKind::Put, "k02".into(), "T1".into()),
                (AckedKind::Put, "k03".into(), "T1".into()),
            ]
        );
        let del = Acked::parse(&["del", "9", "k04"]).unwrap();
        assert_eq!(
            (del.rev(), del.expected()),
            (9, vec![(AckedKind::Delete, "k04".into(), String::new())])
        );
        assert_eq!(Acked::parse(&["compact", "4"]), None);
    }

    #[test]
    fn the_rng_is_splitmix64_and_ranges_stay_in_bounds() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..4).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        for _ in 0..1000 {
            let r = a.range(5, 9);
            assert!((5..9).contains(&r), "{r}");
        }
        assert_eq!(a.range(3, 3), 3);
        assert_eq!(Target::Op("compact").key(), "compact");
        assert_eq!(Target::Startup.key(), "startup");
        assert_eq!(Target::Anytime.key(), "anytime");
    }
}
