//! Cluster members as `rusd` processes on loopback, on top of [`process`](crate::process):
//! each [`Member`] has its free client and peer ports, a directory (its data directory and
//! its output), and is started with etcd's cluster flags (`--name`, `--initial-cluster`,
//! `--initial-cluster-state`, `--initial-cluster-token`, timings...) plus any extra flags
//! (TLS, `--peer-url-rewrite`, `--snapshot-count`...). It can be killed (SIGKILL), paused,
//! resumed and restarted with the same flags and data.
//!
//! This crate does not depend on the server: the test passes the binary, e.g.
//! `env!("CARGO_BIN_EXE_rusd")`.
//!
//! ```no_run
//! use std::time::Duration;
//! use rusd_testkit::cluster::{initial_cluster, ClusterState, Member};
//!
//! let tmp = tempfile::tempdir().unwrap();
//! let mut members: Vec<Member> = (1..=3)
//!     .map(|i| {
//!         Member::new("target/debug/rusd", tmp.path(), &format!("m{i}"))
//!             .unwrap()
//!             .backend("memory")
//!             .arg("--snapshot-count")
//!             .arg("20")
//!     })
//!     .collect();
//! let cluster = initial_cluster(&members);
//! for m in &mut members {
//!     m.spawn(&cluster, ClusterState::New).unwrap();
//! }
//! members[0].wait_client(Duration::from_secs(30)).unwrap();
//! println!("{}", members[0].endpoint()); // http://127.0.0.1:<port>
//! members[0].kill().unwrap();
//! members[0].restart().unwrap(); // same flags, same data
//! let log = members[0].log().unwrap(); // its stderr, every run
//! // Dropping a member kills it.
//! ```

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::{free_port, wait_port, Process, ProcessSpec};

/// The `--initial-cluster-token` of a member unless [`Member::token`] sets another.
pub const DEFAULT_TOKEN: &str = "rusd-testkit-cluster";
/// The `--heartbeat-interval` (ms) of a member unless [`Member::timing`] sets another.
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
/// The `--election-timeout` (ms) of a member unless [`Member::timing`] sets another.
pub const DEFAULT_ELECTION_MS: u64 = 300;

/// etcd's `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// `new`: the member is one of a new cluster's initial members.
    New,
    /// `existing`: the member joins a running cluster (after `MemberAdd`).
    Existing,
}

impl ClusterState {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// One cluster member: how to start it, and its process once started. Dropping it kills the
/// process; its directory stays (inside the caller's temporary directory).
#[derive(Debug)]
pub struct Member {
    binary: PathBuf,
    name: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    https_peers: bool,
    backend: Option<String>,
    token: String,
    heartbeat_ms: u64,
    election_ms: u64,
    log_level: String,
    extra: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    process: Option<Process>,
}

impl Member {
    /// A member named `name` running `binary`, in directory `parent/name` (created at
    /// [`Member::spawn`]), on two free loopback ports. Not started.
    pub fn new(binary: impl Into<PathBuf>, parent: &Path, name: &str) -> Result<Member> {
        Ok(Member {
            binary: binary.into(),
            name: name.to_string(),
            dir: parent.join(name),
            client_port: free_port()?,
            peer_port: free_port()?,
            https_peers: false,
            backend: None,
            token: DEFAULT_TOKEN.to_string(),
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_ms: DEFAULT_ELECTION_MS,
            log_level: "info".to_string(),
            extra: Vec::new(),
            env: Vec::new(),
            process: None,
        })
    }

    /// `--backend` (the server's default if not set).
    pub fn backend(mut self, backend: &str) -> Self {
        self.backend = Some(backend.to_string());
        self
    }

    /// `https` peer URLs (the TLS flags go through [`Member::arg`]) instead of `http`.
    pub fn https_peers(mut self) -> Self {
        self.https_peers = true;
        self
    }

    /// `--initial-cluster-token` (also what member ids derive from); [`DEFAULT_TOKEN`] if
    /// not set.
    pub fn token(mut self, token: &str) -> Self {
        self.token = token.to_string();
        self
    }

    /// `--heartbeat-interval` and `--election-timeout` in milliseconds.
    pub fn timing(mut self, heartbeat_ms: u64, election_ms: u64) -> Self {
        self.heartbeat_ms = heartbeat_ms;
        self.election_ms = election_ms;
        self
    }

    /// `--log-level` (`info` if not set).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// An extra argument after the cluster flags.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.extra.push(arg.as_ref().to_owned());
        self
    }

    /// Extra arguments after the cluster flags.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.extra
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable of the process.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The name (`--name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The client URL, `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL, `http(s)://127.0.0.1:<peer port>`.
    pub fn peer_url(&self) -> String {
        let scheme = if self.https_peers { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.peer_port)
    }

    /// The `--initial-cluster-token`.
    pub fn cluster_token(&self) -> &str {
        &self.token
    }

    /// The member's directory: its data directory is `data` in it, its output is collected
    /// in `stdout.log` and `stderr.log` there.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The file that collects the server's log (its stderr), every run.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }

    /// The server's log (its stderr) so far, every run; empty before the first start.
    pub fn log(&self) -> Result<String> {
        match std::fs::read(self.log_path()) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Error::io(
                format!("reading {}", self.log_path().display()),
                e,
            )),
        }
    }

    /// The command line [`Member::spawn`] runs, without the program.
    pub fn command_line(&self, initial_cluster: &str, state: ClusterState) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: &OsStr| {
            args.push(name.into());
            args.push(value.to_owned());
        };
        let peer = self.peer_url();
        flag("--name", self.name.as_ref());
        flag("--data-dir", self.data_dir().as_os_str());
        if let Some(backend) = &self.backend {
            flag("--backend", backend.as_ref());
        }
        flag("--listen-client-urls", self.endpoint().as_ref());
        flag("--listen-peer-urls", peer.as_ref());
        flag("--initial-advertise-peer-urls", peer.as_ref());
        flag("--initial-cluster", initial_cluster.as_ref());
        flag("--initial-cluster-state", state.as_str().as_ref());
        flag("--initial-cluster-token", self.token.as_ref());
        flag(
            "--heartbeat-interval",
            self.heartbeat_ms.to_string().as_ref(),
        );
        flag("--election-timeout", self.election_ms.to_string().as_ref());
        flag("--log-level", self.log_level.as_ref());
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts the server with `--initial-cluster initial_cluster` (see [`initial_cluster`])
    /// and `--initial-cluster-state state`. A member already started is killed first and
    /// started with the new flags.
    pub fn spawn(&mut self, initial_cluster: &str, state: ClusterState) -> Result<()> {
        if let Some(mut old) = self.process.take() {
            old.kill()?;
        }
        let mut spec = ProcessSpec::new(&self.binary)
            .dir(&self.dir)
            .args(self.command_line(initial_cluster, state));
        for (k, v) in &self.env {
            spec = spec.env(k, v);
        }
        self.process = Some(Process::spawn(spec)?);
        Ok(())
    }

    /// The process, once started.
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    /// The process, once started (to pause or resume it...).
    pub fn process_mut(&mut self) -> Result<&mut Process> {
        self.process
            .as_mut()
            .ok_or_else(|| Error::InvalidState(format!("member {} was never started", self.name)))
    }

    /// True while the process runs (or is paused).
    pub fn is_running(&mut self) -> Result<bool> {
        match &mut self.process {
            None => Ok(false),
            Some(p) => Ok(!matches!(
                p.state()?,
                crate::process::ProcessState::Exited(_)
            )),
        }
    }

    /// Kills the server with SIGKILL (a crash), also when paused; a no-op if it is not
    /// running.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(p) = &mut self.process {
            p.kill()?;
        }
        Ok(())
    }

    /// SIGSTOP: a member that stops answering.
    pub fn pause(&mut self) -> Result<()> {
        self.process_mut()?.pause()
    }

    /// SIGCONT after [`Member::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.process_mut()?.resume()
    }

    /// Kills the server if it runs and starts it again with the same flags and data.
    pub fn restart(&mut self) -> Result<()> {
        self.process_mut()?.restart()
    }

    /// Waits until the client port accepts connections.
    pub fn wait_client(&self, timeout: Duration) -> Result<()> {
        wait_port(([127, 0, 0, 1], self.client_port).into(), timeout)
    }
}

/// etcd's `--initial-cluster` of `members`: `name=peer-url` joined with commas.
pub fn initial_cluster(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_carries_the_cluster_flags_then_the_extra_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Member::new("/bin/rusd", tmp.path(), "m1")
            .unwrap()
            .backend("sled")
            .https_peers()
            .token("tok")
            .timing(30, 200)
            .arg("--snapshot-count")
            .arg("20");
        let peer = format!("https://127.0.0.1:{}", m.peer_port());
        assert_eq!(
            initial_cluster(std::slice::from_ref(&m)),
            format!("m1={peer}")
        );
        let line: Vec<String> = m
            .command_line("m1=x", ClusterState::Existing)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let data = tmp.path().join("m1").join("data");
        assert_eq!(
            line,
            vec![
                "--name".to_string(),
                "m1".into(),
                "--data-dir".into(),
                data.to_str().unwrap().into(),
                "--backend".into(),
                "sled".into(),
                "--listen-client-urls".into(),
                format!("http://127.0.0.1:{}", m.client_port()),
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer,
                "--initial-cluster".into(),
                "m1=x".into(),
                "--initial-cluster-state".into(),
                "existing".into(),
                "--initial-cluster-token".into(),
                "tok".into(),
                "--heartbeat-interval".into(),
                "30".into(),
                "--election-timeout".into(),
                "200".into(),
                "--log-level".into(),
                "info".into(),
                "--snapshot-count".into(),
                "20".into(),
            ]
        );
    }

    #[test]
    fn a_member_that_was_never_started_cannot_be_paused_and_has_no_log() {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = Member::new("/bin/rusd", tmp.path(), "m1").unwrap();
        assert!(!m.is_running().unwrap());
        m.kill().unwrap();
        assert!(matches!(m.pause(), Err(Error::InvalidState(_))));
        assert_eq!(m.log().unwrap(), "");
    }

    #[test]
    fn a_spawned_member_runs_in_its_directory_and_restarts_with_the_same_flags() {
        use std::os::unix::fs::PermissionsExt;
        // A stand-in for the server: logs its first two arguments and the environment
        // variable to stderr, then sleeps.
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("fake-rusd");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"run $1 $2 $MARK\" >&2\nexec sleep 30\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut m = Member::new(&fake, tmp.path(), "m1")
            .unwrap()
            .env("MARK", "x");
        m.spawn("m1=x", ClusterState::New).unwrap();
        assert!(m.is_running().unwrap());
        assert_eq!(m.process().unwrap().dir(), tmp.path().join("m1"));
        let wait_log = |m: &Member, want: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while m.log().unwrap() != want {
                assert!(std::time::Instant::now() < deadline, "{:?}", m.log());
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait_log(&m, "run --name m1 x\n");
        m.pause().unwrap();
        m.resume().unwrap();
        m.restart().unwrap();
        wait_log(&m, "run --name m1 x\nrun --name m1 x\n");
        m.kill().unwrap();
        assert!(!m.is_running().unwrap());
        assert_eq!(m.process().unwrap().runs(), 2);
    }
}
