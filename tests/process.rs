//! `Process`: start, join, kill, daemon children, and Python's rules at exit.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use multiproc::ErrorKind;
use multiproc::prelude::*;

#[parallel]
fn t1(x: u64) -> (u64, u32) {
    (x * 10, std::process::id())
}

#[parallel]
fn sleep_then_say(ms: u64, what: String) {
    std::thread::sleep(Duration::from_millis(ms));
    println!("{what}");
}

#[parallel]
fn boom(_x: u8) -> u8 {
    panic!("process boom")
}

#[test]
fn spawn_and_join_return_the_result_from_another_process() {
    let p = Process::spawn(t1, 5).unwrap();
    let pid = p.pid();
    assert_ne!(pid, std::process::id());
    let (value, ran_in) = p.join().unwrap();
    assert_eq!((value, ran_in), (50, pid));
}

#[test]
fn is_alive_and_kill() {
    let p = Process::spawn(sleep_then_say, (60_000, "never".to_string())).unwrap();
    assert!(p.is_alive());
    p.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.is_alive() {
        assert!(Instant::now() < deadline, "killed process still alive");
        std::thread::sleep(Duration::from_millis(5));
    }
    p.kill().unwrap(); // killing a finished process is not an error
    let e = p.join().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert!(e.to_string().contains("SIGKILL"), "{e}");
}

#[test]
fn a_panic_in_the_process_is_an_error_from_join() {
    let e = Process::spawn(boom, 1).unwrap().join().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked);
    assert!(e.to_string().contains("process boom"), "{e}");
}

/// The name of the thread the task runs on.
#[parallel]
fn thread_name(x: u8) -> Option<String> {
    let _ = x;
    std::thread::current().name().map(String::from)
}

/// Exits with `code`, without returning a result.
#[parallel]
fn exit_with(code: i32) {
    std::process::exit(code);
}

#[test]
fn terminate_sends_sigterm_and_exit_status_says_how_it_ended() {
    use std::os::unix::process::ExitStatusExt;
    let p = Process::spawn(sleep_then_say, (60_000, "never".to_string())).unwrap();
    assert_eq!(p.exit_status(), None, "still running");
    assert!(!p.wait_timeout(Duration::from_millis(50)), "still running");
    p.terminate().unwrap();
    assert!(
        p.wait_timeout(Duration::from_secs(60)),
        "ended within a minute"
    );
    let status = p.exit_status().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(p.wait_timeout(Duration::ZERO), "stays ended");
    p.terminate().unwrap(); // a child that already ended: nothing to do
    let e = p.join().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert!(e.to_string().contains("SIGTERM"), "{e}");

    let p = Process::spawn(exit_with, 7).unwrap();
    assert!(p.wait_timeout(Duration::from_secs(60)));
    assert_eq!(p.exit_status().unwrap().code(), Some(7));
    let e = p.join().unwrap_err();
    assert!(e.to_string().contains("exited with code 7"), "{e}");

    let p = Process::spawn(t1, 1).unwrap();
    assert!(p.wait_timeout(Duration::from_secs(60)));
    assert_eq!(p.exit_status().unwrap().code(), Some(0));
    assert_eq!(p.join().unwrap().0, 10);

    let p = Process::spawn(sleep_then_say, (60_000, "never".to_string())).unwrap();
    p.kill().unwrap();
    assert!(p.wait_timeout(Duration::from_secs(60)));
    assert_eq!(p.exit_status().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn a_named_process_runs_its_task_on_a_thread_of_that_name_and_errors_name_it() {
    let p = Process::builder()
        .name("loader")
        .spawn(thread_name, 0)
        .unwrap();
    assert_eq!(p.name(), Some("loader"));
    assert!(format!("{p:?}").contains("loader"));
    assert_eq!(p.join().unwrap().as_deref(), Some("loader"));
    // Unnamed, it is the worker thread.
    let unnamed = Process::spawn(thread_name, 0).unwrap().join().unwrap();
    assert_eq!(unnamed.as_deref(), Some("multiproc-worker"));

    let p = Process::builder()
        .name("loader, the second")
        .spawn(sleep_then_say, (60_000, "never".to_string()))
        .unwrap();
    p.kill().unwrap();
    let e = p.join().unwrap_err();
    assert!(
        e.to_string().contains("the process `loader, the second`"),
        "{e}"
    );

    let e = Process::builder().name("a\0b").spawn(t1, 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
}

/// Child half of the exit tests: starts a non-daemon and a daemon child, drops both
/// handles, and leaves.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_starts_processes_and_exits() {
    if !common::is_child() {
        return;
    }
    println!();
    let normal = Process::spawn(sleep_then_say, (500, "NORMAL DONE".to_string())).unwrap();
    let daemon = Process::builder()
        .daemon(true)
        .spawn(sleep_then_say, (60_000, "DAEMON DONE".to_string()))
        .unwrap();
    println!("DAEMON PID={}", daemon.pid());
    println!("NORMAL PID={}", normal.pid());
    drop((normal, daemon)); // dropping neither kills nor waits
    println!("MAIN RETURNS");
    if std::env::var_os("CHILD_WAIT").is_some() {
        std::thread::sleep(Duration::from_secs(120));
    }
}

fn pid_after(out: &str, key: &str) -> u32 {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
        .parse()
        .unwrap()
}

#[test]
fn exit_waits_for_children_and_kills_daemons() {
    let started = Instant::now();
    let out = common::run_child_test("child_starts_processes_and_exits", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let returns = stdout.find("MAIN RETURNS").expect("main returned");
    let done = stdout
        .find("NORMAL DONE")
        .expect("the non-daemon child finished");
    assert!(returns < done, "{stdout}");
    assert!(!stdout.contains("DAEMON DONE"), "{stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the daemon was waited for"
    );
    assert!(!common::process_exists(pid_after(&stdout, "DAEMON PID=")));
    assert!(!common::process_exists(pid_after(&stdout, "NORMAL PID=")));
}

#[test]
fn no_child_outlives_a_killed_parent() {
    let pids = common::kill_child_test_after(
        "child_starts_processes_and_exits",
        &[],
        &["DAEMON PID=", "NORMAL PID="],
        "MAIN RETURNS",
    );
    assert_eq!(pids.len(), 2);
    common::wait_until_gone(&pids);
}

#[test]
fn the_process_example_finishes_its_children_after_main_prints() {
    let out = Command::new(common::example_binary("process"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let main_line = stdout.find("main process").expect("the parent's line");
    for i in 0..3 {
        let end = stdout
            .find(&format!("{i} end"))
            .expect("every child finished");
        assert!(end > main_line, "{stdout}");
    }
}
