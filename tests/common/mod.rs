//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs one test of the current test binary in a fresh process, with `envs` set and
/// `MULTIPROC_TEST_CHILD=1` so the child test knows it is the child. Used for behaviour
/// that depends on process-wide state (environment variables, process exit).
pub fn run_child_test(test: &str, envs: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        test,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("MULTIPROC_TEST_CHILD", "1")
    .env_remove("MULTIPROC_WORKERS");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("running the child test")
}

/// Runs one test of the current test binary as [`run_child_test`] does, fails unless it
/// passed (showing its output), and returns its standard output.
pub fn child_stdout(test: &str, envs: &[(&str, &str)]) -> String {
    let out = run_child_test(test, envs);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{test} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until `done` holds, failing the test after `limit`: only to detect a hang,
/// never to order events.
pub fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// True inside a process started by [`run_child_test`].
pub fn is_child() -> bool {
    std::env::var_os("MULTIPROC_TEST_CHILD").is_some()
}

/// A built example binary of this package (`cargo test` builds examples first).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (`cargo test` does)",
        path.display()
    );
    path
}

/// True while a process with this pid exists and has not exited. A zombie (exited, not
/// yet reaped by whoever inherited it) counts as gone: it runs no code and holds nothing.
pub fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The number of workers the global pool of a test process gets.
pub fn global_workers() -> usize {
    match std::env::var("MULTIPROC_WORKERS") {
        Ok(n) => n.parse().expect("MULTIPROC_WORKERS is a number"),
        Err(_) => std::thread::available_parallelism().map_or(1, usize::from),
    }
}

/// Starts one test of this binary as a child process (like [`run_child_test`], with
/// `CHILD_WAIT=1` so it stays alive), reads its output until a line contains `until`,
/// collects the pids printed after any of `keys`, then SIGKILLs it and reaps it.
pub fn kill_child_test_after(
    test: &str,
    envs: &[(&str, &str)],
    keys: &[&str],
    until: &str,
) -> Vec<u32> {
    signal_child_test_after(test, envs, keys, until, libc::SIGKILL).0
}

/// Like [`kill_child_test_after`], with any signal; also returns how the child ended.
pub fn signal_child_test_after(
    test: &str,
    envs: &[(&str, &str)],
    keys: &[&str],
    until: &str,
    signal: i32,
) -> (Vec<u32>, std::process::ExitStatus) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--include-ignored", "--nocapture"])
        .env("MULTIPROC_TEST_CHILD", "1")
        .env("CHILD_WAIT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting the child test");
    let stdout = child.stdout.take().expect("a piped stdout");
    let mut pids = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("the child's output");
        for key in keys {
            if let Some(pid) = line.trim().strip_prefix(key) {
                pids.push(pid.parse::<u32>().expect("a pid"));
            }
        }
        if line.contains(until) {
            break;
        }
    }
    // SAFETY: signalling our own child, which has not been reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let status = child.wait().expect("reaping the child");
    (pids, status)
}

/// Waits (30 s at most, to detect a hang) until none of `pids` is running.
pub fn wait_until_gone(pids: &[u32]) {
    eventually(
        &format!("{pids:?} outlived their parent"),
        Duration::from_secs(30),
        || !pids.iter().any(|&p| process_exists(p)),
    );
}

/// Runs `f` on another thread; fails the test if it takes longer than `limit` (a hang).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("hung: no answer within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the test's thread panicked (see above)")
        }
    }
}
