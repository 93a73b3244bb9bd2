//! The cost of faults: how long a SIGKILLed worker takes to be reported and replaced, and
//! what `retries(1)` costs on a map in which one worker dies.
//!
//! Run: `cargo bench --bench faults`. (Python's `Pool` never reports a killed worker: its
//! `map` hangs, so there is no peer figure to set beside these.)

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::median;
use multiproc::prelude::*;

#[parallel]
fn whoami(_x: u64) -> u32 {
    std::process::id()
}

/// Creates the file `started` (so the caller knows the task runs), then sleeps `ms`.
#[parallel]
fn start_then_sleep(started: String, ms: u64) -> u64 {
    std::fs::write(&started, b"").expect("creating the start mark");
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Dies (once: it leaves a mark in `dir`) on item `victim`; otherwise a little work.
#[parallel]
fn work_or_die_once(x: u64, victim: u64, dir: String) -> u64 {
    if x == victim {
        let mark = format!("{dir}/died");
        if std::fs::metadata(&mark).is_err() {
            let _ = std::fs::write(&mark, b"");
            std::process::abort();
        }
    }
    (0..2_000u64).fold(x, |h, i| h.wrapping_mul(31).wrapping_add(i))
}

fn main() -> multiproc::Result<()> {
    let dir = std::env::temp_dir().join(format!("multiproc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let started = dir.join("started");
    let pool = Pool::new(1)?;
    let (mut reported, mut replaced) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let pid = pool.apply(whoami, 0)?;
        let _ = std::fs::remove_file(&started);
        let mark = started.to_string_lossy().into_owned();
        let pending = pool.apply_async(start_then_sleep, (mark, 60_000));
        // Killed before it starts, a task would run on the replacement instead.
        while !started.exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        // SAFETY: killing our own worker.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let err = pending.get().expect_err("the task's worker was killed");
        assert_eq!(err.kind(), multiproc::ErrorKind::WorkerDied);
        reported.push(t.elapsed().as_secs_f64() * 1e3);
        let fresh = pool.apply(whoami, 0)?;
        assert_ne!(fresh, pid);
        replaced.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("## a SIGKILLed worker (1-worker pool, median of 10)");
    println!(
        "reported as Err(WorkerDied)          {:>8.3} ms after the kill",
        median(reported)
    );
    println!(
        "replaced, next apply answered        {:>8.3} ms after the kill",
        median(replaced)
    );

    let d = dir.to_string_lossy().into_owned();
    let items = |victim: u64| -> Vec<(u64, u64, String)> {
        (0..20_000).map(|x| (x, victim, d.clone())).collect()
    };
    let clean = items(u64::MAX);
    let dying = items(12_345);
    let pool = Pool::builder().workers(2).retries(1).build()?;
    let (mut without, mut with_death) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let t = Instant::now();
        pool.map(work_or_die_once, &clean)?;
        without.push(t.elapsed().as_secs_f64() * 1e3);
        let _ = std::fs::remove_file(dir.join("died"));
        let t = Instant::now();
        pool.map(work_or_die_once, &dying)?;
        with_death.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (a, b) = (median(without), median(with_death));
    println!("\n## retries(1): a 20k-item map on 2 workers in which one worker dies (median of 7)");
    println!("no death                             {a:>8.2} ms");
    println!(
        "one death, its chunk run again        {b:>8.2} ms  (+{:.2} ms)",
        b - a
    );
    Ok(())
}
