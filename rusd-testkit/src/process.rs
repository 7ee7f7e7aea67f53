//! A harness for one server process: spawn it with arguments and environment in a working
//! directory, capture its stdout and stderr to files, kill it with SIGKILL, pause and resume
//! it with SIGSTOP and SIGCONT, restart it in the same directory, and wait for its port.
//!
//! ```no_run
//! use std::time::Duration;
//! use rusd_testkit::process::{free_addr, wait_port, Process, ProcessSpec};
//!
//! let client = free_addr().unwrap();
//! let data = tempfile::tempdir().unwrap();
//! let mut member = Process::spawn(
//!     ProcessSpec::new("target/release/rusd")
//!         .arg("--data-dir").arg(data.path())
//!         .arg("--listen-client-urls").arg(format!("http://{client}"))
//!         .env("RUST_LOG", "info"),
//! ).unwrap();
//! wait_port(client, Duration::from_secs(10)).unwrap();
//! member.pause().unwrap();   // SIGSTOP: a member that stops answering
//! member.resume().unwrap();  // SIGCONT
//! member.kill().unwrap();    // SIGKILL: a crash
//! member.restart().unwrap(); // same program, arguments, environment and directory
//! // Dropping `member` kills it.
//! ```
//!
//! Output of every run is appended to `stdout.log` and `stderr.log` in the working
//! directory, so the output of a run before a restart is kept.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// What to run: program, arguments, environment and working directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
}

impl ProcessSpec {
    /// Runs `program` (a path, or a name looked up in `PATH`).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        ProcessSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable (on top of the inherited environment).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs in `dir` (created if missing) instead of a new temporary directory. The
    /// directory is then left in place when the [`Process`] is dropped.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }
}

/// The state of a [`Process`] as the harness drove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessState {
    /// Running.
    Running,
    /// Stopped by [`Process::pause`].
    Paused,
    /// Exited on its own or was killed; the exit status.
    Exited(ExitStatus),
}

/// A running (or exited) server process; dropping it kills it with SIGKILL.
#[derive(Debug)]
pub struct Process {
    spec: ProcessSpec,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Child,
    paused: bool,
    exit: Option<ExitStatus>,
    runs: u32,
}

impl Process {
    /// Spawns the process described by `spec`.
    pub fn spawn(spec: ProcessSpec) -> Result<Self> {
        let (dir, temp) = match &spec.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("rusd-testkit-proc-")
                    .tempdir()
                    .map_err(|e| Error::io("creating a temporary directory", e))?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let child = start(&spec, &dir)?;
        Ok(Process {
            spec,
            dir,
            _temp: temp,
            child,
            paused: false,
            exit: None,
            runs: 1,
        })
    }

    /// The working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that collects the process's stdout.
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }

    /// The file that collects the process's stderr.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }

    /// Everything written to stdout so far (all runs), lossily decoded.
    pub fn stdout(&self) -> Result<String> {
        read_lossy(&self.stdout_path())
    }

    /// Everything written to stderr so far (all runs), lossily decoded.
    pub fn stderr(&self) -> Result<String> {
        read_lossy(&self.stderr_path())
    }

    /// The current run's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many times the process has been started (1 after [`Process::spawn`]).
    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// The state, after reaping the process if it has exited.
    pub fn state(&mut self) -> Result<ProcessState> {
        if let Some(status) = self.exit {
            return Ok(ProcessState::Exited(status));
        }
        match self
            .child
            .try_wait()
            .map_err(|e| Error::io("waiting for the process", e))?
        {
            Some(status) => {
                self.exit = Some(status);
                self.paused = false;
                Ok(ProcessState::Exited(status))
            }
            None if self.paused => Ok(ProcessState::Paused),
            None => Ok(ProcessState::Running),
        }
    }

    fn signal(&self, signal: Signal, name: &'static str) -> Result<()> {
        let pid = self.pid();
        let raw = i32::try_from(pid).map_err(|_| Error::InvalidState(format!("pid {pid}")))?;
        send_signal(Pid::from_raw(raw), signal).map_err(|source| Error::Signal {
            signal: name,
            pid,
            source,
        })
    }

    fn require_alive(&mut self, what: &str) -> Result<()> {
        if let ProcessState::Exited(status) = self.state()? {
            return Err(Error::InvalidState(format!(
                "cannot {what}: the process exited ({status})"
            )));
        }
        Ok(())
    }

    /// Kills the process with SIGKILL (also when paused) and reaps it; returns its exit
    /// status. A process that already exited is only reaped.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let ProcessState::Exited(status) = self.state()? {
            return Ok(status);
        }
        self.signal(Signal::SIGKILL, "SIGKILL")?;
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io("waiting for the killed process", e))?;
        self.exit = Some(status);
        self.paused = false;
        Ok(status)
    }

    /// Stops the process with SIGSTOP. Fails if it has exited.
    pub fn pause(&mut self) -> Result<()> {
        self.require_alive("pause")?;
        self.signal(Signal::SIGSTOP, "SIGSTOP")?;
        self.paused = true;
        Ok(())
    }

    /// Continues a paused process with SIGCONT. Fails if it has exited.
    pub fn resume(&mut self) -> Result<()> {
        self.require_alive("resume")?;
        self.signal(Signal::SIGCONT, "SIGCONT")?;
        self.paused = false;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit on its own; returns its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let ProcessState::Exited(status) = self.state()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("process {} to exit", self.pid()),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the current run (if still running) and starts the same program with the same
    /// arguments, environment and directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.child = start(&self.spec, &self.dir)?;
        self.exit = None;
        self.paused = false;
        self.runs += 1;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // Best effort: SIGKILL works on a stopped process too.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(spec: &ProcessSpec, dir: &Path) -> Result<Child> {
    let stdout = append(&dir.join("stdout.log"))?;
    let stderr = append(&dir.join("stderr.log"))?;
    Command::new(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| Error::io(format!("spawning {}", spec.program.display()), e))
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

fn read_lossy(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Where [`free_port`] looks first: below Linux's default ephemeral range (32768-60999), so
/// that no outgoing connection (of a test's members talking to each other, say) can be given
/// the port as its source port between the check and the bind of the process it is for.
pub const QUIET_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// A loopback port that was free a moment ago (bound, then released), never handed out before
/// by this process. It is picked at random in [`QUIET_PORTS`] (outside the ephemeral range,
/// so outgoing connections cannot take it meanwhile), else it is what binding
/// `127.0.0.1:0` gives. Another process may still take it before it is used; tests that bind
/// it should retry or fail clearly.
pub fn free_port() -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let span = u64::from(QUIET_PORTS.end - QUIET_PORTS.start);
    for _ in 0..64 {
        // A random number per call (std's hasher keys are random).
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = QUIET_PORTS.start + (r % span) as u16;
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed.insert(port);
            return Ok(port);
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("binding 127.0.0.1:0", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?
        .port();
    handed.insert(port);
    Ok(port)
}

/// `127.0.0.1:<free_port()>`.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

/// Waits until a TCP connection to `addr` succeeds, trying every 20 ms, for at most
/// `timeout`.
pub fn wait_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left.clamp(Duration::from_millis(1), Duration::from_millis(200));
        if TcpStream::connect_timeout(&addr, attempt).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("a listener on {addr}"),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
