//! Worker processes and their parent: output goes where the parent's goes, and no worker
//! outlives a parent that exits or is killed.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use multiproc::prelude::*;

#[parallel]
fn say_hello(x: u32) -> u32 {
    println!("HELLO-FROM-WORKER item={x} pid={}", std::process::id());
    // One write for the whole line: workers print at the same moment, and a line that
    // `eprintln!` writes in pieces can interleave with another process's.
    let line = format!("STDERR-FROM-WORKER item={x}\n");
    eprint!("{line}");
    std::process::id()
}

/// Child half of the tests below: maps, prints the worker pids, then waits to be killed
/// if asked to.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_maps_then_waits() {
    if !common::is_child() {
        return;
    }
    println!();
    let pids = [1u32, 2, 3, 4].par_map(say_hello).unwrap();
    for pid in pids {
        println!("PID={pid}");
    }
    if std::env::var_os("CHILD_WAIT").is_some() {
        println!("READY");
        std::thread::sleep(Duration::from_secs(120));
    }
}

#[test]
fn worker_output_goes_to_the_parents_stdout_and_stderr() {
    let out = common::run_child_test("child_maps_then_waits", &[("MULTIPROC_WORKERS", "2")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for item in 1..=4 {
        assert!(
            stdout.contains(&format!("HELLO-FROM-WORKER item={item}")),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!("STDERR-FROM-WORKER item={item}")),
            "{stderr}"
        );
    }
}

#[test]
fn workers_die_with_a_parent_that_is_killed() {
    let pids = common::kill_child_test_after(
        "child_maps_then_waits",
        &[("MULTIPROC_WORKERS", "2")],
        &["PID="],
        "READY",
    );
    assert!(!pids.is_empty());
    common::wait_until_gone(&pids);
}
