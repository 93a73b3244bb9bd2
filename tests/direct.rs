//! `apply` straight to an idle worker, through its lane in shared memory. Each call under
//! test follows another at once, while the worker that answered still watches its lane:
//! the path a stream of `apply`s takes. What the tests check holds on the queue's path
//! too, which a call takes when it finds no lane open.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::within;
use multiproc::prelude::*;
use multiproc::{ErrorKind, Pool};

/// Generous: only a hang runs into it.
const HANG: Duration = Duration::from_secs(120);

#[parallel]
fn add_one(x: u64) -> u64 {
    x + 1
}

#[parallel]
fn whoami_slowly(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[parallel]
fn count_to(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[parallel]
fn fails_on_seven(x: u64) -> u64 {
    assert!(x != 7, "seven is not allowed");
    x
}

#[parallel]
fn abort(_x: u64) -> u64 {
    std::process::abort()
}

/// Creates the file `started` (so the test knows the call runs), then sleeps `ms`.
#[parallel]
fn start_then_sleep(started: String, ms: u64) -> u64 {
    std::fs::write(&started, b"").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn warm(pool: &Pool) {
    for i in 0..200 {
        assert_eq!(pool.apply(add_one, i).unwrap(), i + 1);
    }
}

/// Calls `start_then_sleep(.., ms)` on another thread, right after a stream of calls
/// (so through the lane of the worker that answered them), and returns once the call
/// runs in that worker.
fn sleep_in_the_lane(pool: &Arc<Pool>, ms: u64) -> std::thread::JoinHandle<multiproc::Result<u64>> {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let started = std::env::temp_dir().join(format!(
        "multiproc-direct-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&started);
    let pool = Arc::clone(pool);
    let path = started.to_string_lossy().into_owned();
    let caller = std::thread::spawn(move || {
        warm(&pool);
        pool.apply(start_then_sleep, (path, ms))
    });
    let waiting = Instant::now();
    while !started.exists() {
        assert!(waiting.elapsed() < HANG, "the call never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_file(&started);
    caller
}

/// `threads` threads, each making `calls` calls of its own one after another, every
/// answer checked.
fn streams_of_calls(
    pool: &Arc<Pool>,
    threads: u64,
    calls: u64,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|c| {
            let pool = Arc::clone(pool);
            std::thread::spawn(move || {
                for i in 0..calls {
                    let x = c * 1_000_000 + i;
                    assert_eq!(pool.apply(add_one, x).unwrap(), x + 1, "call {x}");
                }
            })
        })
        .collect()
}

/// The pool's worker pids: as many calls at once as it has workers, each long enough
/// that every worker takes one.
fn pids(pool: &Pool) -> BTreeSet<u32> {
    let calls: Vec<_> = (0..pool.workers())
        .map(|_| pool.apply_async(whoami_slowly, 300))
        .collect();
    calls.into_iter().map(|c| c.get().unwrap()).collect()
}

#[test]
fn a_stream_of_calls_gets_every_answer_right() {
    within(HANG, || {
        let pool = Pool::new(2).unwrap();
        for i in 0..20_000 {
            assert_eq!(pool.apply(add_one, i).unwrap(), i + 1);
        }
        // Several callers at once, each with its own stream.
        let pool = Arc::new(pool);
        let callers = streams_of_calls(&pool, 4, 5_000);
        for c in callers {
            c.join().unwrap();
        }
    });
}

#[test]
fn answers_larger_than_the_lane_come_back_whole() {
    within(HANG, || {
        let pool = Pool::new(1).unwrap();
        // 8 bytes an item or more: up to many times the lane's 60 KiB.
        for n in [0, 1, 7_000, 8_000, 100_000, 1_000_000] {
            warm(&pool);
            let got = pool.apply(count_to, n).unwrap();
            assert_eq!(got.len() as u64, n);
            assert!(got.iter().copied().eq(0..n), "n = {n}");
        }
    });
}

#[test]
fn a_panic_is_the_callers_error_and_the_worker_serves_on() {
    within(HANG, || {
        let pool = Pool::new(1).unwrap();
        let before = pids(&pool);
        for _ in 0..20 {
            warm(&pool);
            let e = pool.apply(fails_on_seven, 7).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
            assert!(e.to_string().contains("seven is not allowed"), "{e}");
            assert_eq!(pool.apply(fails_on_seven, 8).unwrap(), 8);
        }
        assert_eq!(pids(&pool), before, "a panic must not cost the worker");
    });
}

#[test]
fn a_worker_that_dies_during_a_call_fails_it_and_is_replaced() {
    within(HANG, || {
        let pool = Pool::new(2).unwrap();
        for round in 0..5 {
            warm(&pool);
            let before = pids(&pool);
            assert_eq!(before.len(), 2, "{before:?}");
            warm(&pool);
            let e = pool.apply(abort, round).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
            let text = e.to_string();
            assert!(text.contains("SIGABRT") && text.contains("abort"), "{text}");
            // The pool heals: two workers again, one of them new.
            let after = pids(&pool);
            assert_eq!(after.len(), 2, "{after:?}");
            assert_eq!(
                after.intersection(&before).count(),
                1,
                "{before:?} {after:?}"
            );
        }
    });
}

#[parallel]
fn whoami(x: u64) -> (u32, u64) {
    (std::process::id(), x)
}

/// Whichever way the next call goes: into the lane the worker left open (it was killed
/// right after a stream of calls, while it still watched its lane), or through the
/// queue (killed once it had closed its lane).
#[test]
fn a_call_to_a_worker_killed_while_idle_runs_on_its_replacement() {
    within(HANG, || {
        // No retries: the call must not count as lost, since it never ran.
        let pool = Pool::new(1).unwrap();
        for round in 0..20 {
            warm(&pool);
            let (pid, _) = pool.apply(whoami, round).unwrap();
            if round % 2 == 1 {
                // Longer than a lane stays open without calls.
                std::thread::sleep(Duration::from_millis(5));
            }
            // SAFETY: signalling one of the pool's workers, which its driver has not
            // reaped (it reaps a worker only once it has noticed it is gone).
            assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
            let dead = Instant::now();
            while common::process_exists(pid) {
                assert!(dead.elapsed() < HANG, "{pid} outlived SIGKILL");
                std::thread::yield_now();
            }
            let (new_pid, x) = pool.apply(whoami, round).unwrap();
            assert_eq!(x, round);
            assert_ne!(new_pid, pid);
        }
    });
}

#[test]
fn with_retries_a_call_lost_to_a_dead_worker_runs_again() {
    within(HANG, || {
        let pool = Pool::builder().workers(2).retries(1).build().unwrap();
        warm(&pool);
        let e = pool.apply(abort, 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
        assert!(e.to_string().contains("after 2 attempts"), "{e}");
        warm(&pool);
    });
}

#[test]
fn terminate_ends_a_call_in_flight_as_closed() {
    within(HANG, || {
        let pool = Arc::new(Pool::new(1).unwrap());
        warm(&pool);
        let started = Instant::now();
        let caller = sleep_in_the_lane(&pool, 60_000);
        pool.terminate();
        let result = caller.join().unwrap();
        let took = started.elapsed();
        let e = result.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert!(
            took < Duration::from_secs(50),
            "the call ran to its end: {took:?}"
        );
    });
}

#[test]
fn join_waits_for_a_call_in_flight() {
    within(HANG, || {
        let pool = Arc::new(Pool::new(1).unwrap());
        let caller = sleep_in_the_lane(&pool, 700);
        pool.join();
        assert_eq!(caller.join().unwrap().unwrap(), 700);
        let e = pool.apply(add_one, 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    });
}

#[test]
fn a_closed_pool_refuses_calls_even_with_a_lane_open() {
    within(HANG, || {
        let pool = Pool::new(1).unwrap();
        warm(&pool);
        pool.close();
        let e = pool.apply(add_one, 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    });
}

#[test]
fn jobs_queued_during_a_long_call_go_to_a_free_worker() {
    within(HANG, || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let caller = sleep_in_the_lane(&pool, 30_000);
        // The long call holds one worker; its driver holds nothing, and must not take
        // jobs that would wait behind the call while the other worker is free.
        let limit = Duration::from_secs(10);
        for i in 0..20 {
            let started = Instant::now();
            assert_eq!(pool.apply_async(add_one, i).get().unwrap(), i + 1);
            assert!(
                started.elapsed() < limit,
                "job {i} waited behind the long call"
            );
        }
        let started = Instant::now();
        let items: Vec<u64> = (0..1_000).collect();
        let out = pool.map(add_one, &items).unwrap();
        assert!(out.iter().copied().eq(1..1_001));
        assert!(
            started.elapsed() < limit,
            "a map waited behind the long call"
        );
        pool.terminate();
        let e = caller.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    });
}

#[test]
fn a_mixed_load_with_workers_dying_in_calls_loses_nothing_else() {
    within(HANG, || {
        let pool = Arc::new(Pool::new(2).unwrap());
        // Streams of calls from two threads, while a third makes every tenth of its
        // calls kill its worker, and this one maps and submits.
        let streams = streams_of_calls(&pool, 2, 3_000);
        let killer = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                for i in 0..300u64 {
                    if i % 10 == 9 {
                        let e = pool.apply(abort, i).unwrap_err();
                        assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
                    } else {
                        assert_eq!(pool.apply(add_one, i).unwrap(), i + 1);
                    }
                }
            })
        };
        let items: Vec<u64> = (0..2_000).collect();
        while !killer.is_finished() {
            let out = pool.map(add_one, &items).unwrap();
            assert!(out.iter().copied().eq(1..2_001));
            let calls: Vec<_> = (0..50).map(|i| pool.apply_async(add_one, i)).collect();
            for (i, c) in calls.into_iter().enumerate() {
                assert_eq!(c.get().unwrap(), i as u64 + 1);
            }
        }
        killer.join().unwrap();
        for s in streams {
            s.join().unwrap();
        }
        assert_eq!(pids(&pool).len(), 2);
    });
}
