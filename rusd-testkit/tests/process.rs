//! The process harness with standard binaries (`sleep`, `sh`): state transitions checked
//! against the kernel's view in /proc.

use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use rusd_testkit::process::{free_addr, free_port, wait_port, Process, ProcessSpec, ProcessState};
use rusd_testkit::Error;

/// The kernel's state letter for `pid` (R, S, T, Z, ...), None if there is no such process.
fn kernel_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sleeper() -> Process {
    Process::spawn(ProcessSpec::new("sleep").arg("30")).expect("spawn sleep")
}

#[test]
fn pause_resume_kill_transitions() {
    let mut p = sleeper();
    let pid = p.pid();
    assert_eq!(p.state().expect("state"), ProcessState::Running);
    assert_eq!(p.runs(), 1);
    eventually("sleep to be sleeping", || kernel_state(pid) == Some('S'));

    p.pause().expect("pause");
    assert_eq!(p.state().expect("state"), ProcessState::Paused);
    eventually("SIGSTOP to stop it", || kernel_state(pid) == Some('T'));

    p.resume().expect("resume");
    assert_eq!(p.state().expect("state"), ProcessState::Running);
    eventually("SIGCONT to continue it", || kernel_state(pid) == Some('S'));

    p.pause().expect("pause again");
    let status = p.kill().expect("kill a paused process");
    assert_eq!(status.signal(), Some(9));
    assert_eq!(p.state().expect("state"), ProcessState::Exited(status));
    assert_eq!(kernel_state(pid), None, "killed process not reaped");
    // Killing again only reports the status; pausing or resuming an exited process fails.
    assert_eq!(p.kill().expect("kill again"), status);
    assert!(matches!(p.pause(), Err(Error::InvalidState(_))));
    assert!(matches!(p.resume(), Err(Error::InvalidState(_))));
}

#[test]
fn restart_starts_a_new_run_in_the_same_directory() {
    let mut p = sleeper();
    let (first, dir) = (p.pid(), p.dir().to_path_buf());
    p.pause().expect("pause");
    p.restart().expect("restart a paused process");
    assert_ne!(p.pid(), first);
    assert_eq!(p.runs(), 2);
    assert_eq!(p.dir(), dir.as_path());
    assert_eq!(p.state().expect("state"), ProcessState::Running);
    assert_eq!(kernel_state(first), None);
    p.kill().expect("kill");
    p.restart().expect("restart a killed process");
    assert_eq!(p.runs(), 3);
    assert_eq!(p.state().expect("state"), ProcessState::Running);
}

#[test]
fn output_env_and_working_directory_are_captured_across_runs() {
    let mut p = Process::spawn(
        ProcessSpec::new("/bin/sh")
            .args(["-c", "echo out; echo err >&2; echo \"$TESTKIT_FOO\"; pwd"])
            .env("TESTKIT_FOO", "bar"),
    )
    .expect("spawn sh");
    let status = p.wait_timeout(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0));
    let dir = p.dir().display().to_string();
    assert_eq!(p.stdout().expect("stdout"), format!("out\nbar\n{dir}\n"));
    assert_eq!(p.stderr().expect("stderr"), "err\n");
    assert_eq!(p.stdout_path(), p.dir().join("stdout.log"));
    p.restart().expect("restart");
    p.wait_timeout(Duration::from_secs(10)).expect("exit");
    assert_eq!(
        p.stdout().expect("stdout"),
        format!("out\nbar\n{dir}\nout\nbar\n{dir}\n")
    );
    assert_eq!(p.stderr().expect("stderr"), "err\nerr\n");
}

#[test]
fn exit_code_is_reported() {
    let mut p = Process::spawn(ProcessSpec::new("/bin/sh").args(["-c", "exit 3"])).expect("spawn");
    let status = p.wait_timeout(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(3));
    assert_eq!(p.state().expect("state"), ProcessState::Exited(status));
}

#[test]
fn wait_timeout_times_out_on_a_running_process() {
    let mut p = sleeper();
    match p.wait_timeout(Duration::from_millis(50)) {
        Err(Error::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(50)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[test]
fn drop_kills_and_removes_its_temporary_directory() {
    let p = sleeper();
    let (pid, dir) = (p.pid(), p.dir().to_path_buf());
    assert!(dir.is_dir());
    drop(p);
    assert_eq!(kernel_state(pid), None);
    assert!(!dir.exists());
}

#[test]
fn a_given_directory_is_used_and_kept() {
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path().join("member-1");
    let p = Process::spawn(ProcessSpec::new("sleep").arg("30").dir(&dir)).expect("spawn");
    assert_eq!(p.dir(), dir.as_path());
    drop(p);
    assert!(dir.join("stdout.log").is_file());
}

#[test]
fn spawning_a_missing_program_fails() {
    let err = Process::spawn(ProcessSpec::new("/nonexistent/rusd-testkit-binary")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

/// Ports are handed out once per process, outside the kernel's ephemeral range (so no
/// outgoing connection can be given one as its source port before it is bound).
#[test]
fn free_ports_are_distinct_and_below_the_ephemeral_range() {
    let ports: Vec<u16> = (0..300).map(|_| free_port().expect("port")).collect();
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), 300);
    let quiet = ports
        .iter()
        .filter(|p| (10_000..32_000).contains(*p))
        .count();
    assert_eq!(quiet, 300, "{ports:?}");
}

#[test]
fn free_ports_and_wait_port() {
    let port = free_port().expect("port");
    assert_ne!(port, 0);
    // A free port is only free at the moment it is picked: another process (a server still
    // shutting down from an earlier test binary) may listen on it when it is probed (seen once
    // in a full-matrix run). Such a port is skipped; a `wait_port` that never times out still
    // fails after five different ports.
    let mut answered = Vec::new();
    let addr = loop {
        let addr = free_addr().expect("addr");
        assert!(addr.ip().is_loopback());
        match wait_port(addr, Duration::from_millis(100)) {
            Err(Error::Timeout { after, .. }) => {
                assert_eq!(after, Duration::from_millis(100));
                break addr;
            }
            Ok(()) if answered.len() < 4 => answered.push(addr),
            other => panic!("expected a timeout, got {other:?} (listeners on {answered:?} too)"),
        }
    };
    let listener = TcpListener::bind(addr).expect("bind the free port");
    wait_port(addr, Duration::from_secs(5)).expect("listener is up");
    drop(listener);
}
