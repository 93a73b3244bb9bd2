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
