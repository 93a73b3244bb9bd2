//! Where the `apply` round trip's two modes come from: the same round trip (a warm pool
//! of one worker, 4,000 calls) with the caller and the worker left to the scheduler,
//! pinned to one core together, and pinned to two different cores; with the context
//! switches each call costs the caller's thread and the worker.
//!
//! Run: `cargo bench --bench placement` (needs at least 2 cores).

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::median;
use multiproc::prelude::*;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

/// The core a task runs on.
#[parallel]
fn core_of(x: u64) -> i32 {
    let _ = x;
    // SAFETY: sched_getcpu has no preconditions.
    unsafe { libc::sched_getcpu() }
}

/// Pins the calling thread (and what it starts from now on) to `cpus`.
fn pin(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; the call
    // reads the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity");
    }
}

/// Voluntary plus involuntary context switches, from a `/proc/.../status` file.
fn switches(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// The context switches of every thread of process `pid`.
fn process_switches(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .map(|t| switches(&t.path().join("status").display().to_string()))
                .sum()
        })
        .unwrap_or(0)
}

/// The median round trip (µs) on `pool`, and the context switches per call of the
/// caller's thread and of the worker `pid` (all its threads).
fn measure(pool: &Pool, pid: u32) -> (f64, f64) {
    for i in 0..200 {
        pool.apply(t1, i).expect("apply");
    }
    let before = switches("/proc/thread-self/status") + process_switches(pid);
    const CALLS: u64 = 4_000;
    let us = median(
        (0..CALLS)
            .map(|i| {
                let t = Instant::now();
                pool.apply(t1, i).expect("apply");
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect(),
    );
    let after = switches("/proc/thread-self/status") + process_switches(pid);
    (us, (after - before) as f64 / CALLS as f64)
}

fn main() -> multiproc::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 {
        println!("needs 2 cores; this machine has {cores}");
        return Ok(());
    }
    let all: Vec<usize> = (0..cores).collect();
    println!(
        "| placement | run | round trip (median) | context switches per call | caller's core, worker's core |"
    );
    println!("|---|---|---|---|---|");
    for (label, caller, worker) in [
        ("left to the scheduler", None, None),
        ("one core for both", Some(0), Some(0)),
        ("a core each", Some(0), Some(1)),
    ] {
        for run in 1..=3 {
            pin(&worker.map_or_else(|| all.clone(), |w| vec![w]));
            let pool = Pool::new(1)?;
            pin(&caller.map_or_else(|| all.clone(), |c| vec![c]));
            let pid = pool.stats().workers[0].pid;
            let (us, per_call) = measure(&pool, pid);
            let worker_core = pool.apply(core_of, 0)?;
            // SAFETY: sched_getcpu has no preconditions.
            let caller_core = unsafe { libc::sched_getcpu() };
            println!(
                "| {label} | {run} | {us:.2} µs | {per_call:.2} | {caller_core}, {worker_core} |"
            );
        }
    }
    pin(&all);
    Ok(())
}
