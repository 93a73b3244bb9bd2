//! Synchronisation between processes: one `Event` set → wake latency, measured as half
//! a ping-pong of two events between the parent and a `Process` child; one uncontended
//! `Mutex` lock and unlock; one round of a `Barrier` of 2 processes. Beside Python's
//! `multiprocessing.Event`, `Lock` and `Barrier` (`benches/peers/sync_ops.py`) and the
//! same between threads over `std::sync` (a `Mutex<bool>` and a `Condvar` per event; a
//! `std::sync::Mutex`; a `std::sync::Barrier`). And, so that every shared-state figure
//! comes from one command, 10,000 `apply_async` awaited on tokio beside Python's asyncio
//! (the same measure as `cargo bench --bench async_results`).
//!
//! Run: `cargo bench --bench sync`.

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use common::median;
use multiproc::prelude::*;
use multiproc::sync::{Barrier as ProcessBarrier, Event, Mutex as ProcessMutex};

const ROUNDS: u64 = 2_000;

#[parallel]
fn pong(a: Event, b: Event, rounds: u64) {
    for _ in 0..rounds {
        a.wait();
        a.clear();
        b.set();
    }
}

/// One set → wake latency between two processes, µs: median of 5 runs of `ROUNDS`.
fn multiproc_us() -> f64 {
    median(
        (0..5)
            .map(|_| {
                let (a, b) = (
                    Event::new().expect("an event"),
                    Event::new().expect("an event"),
                );
                let child = Process::spawn(pong, (a.clone(), b.clone(), ROUNDS)).expect("a child");
                let t = Instant::now();
                for _ in 0..ROUNDS {
                    a.set();
                    b.wait();
                    b.clear();
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64 / 2.0;
                child.join().expect("the child");
                us
            })
            .collect(),
    )
}

/// An event between threads, as `std::sync` builds one.
#[derive(Default)]
struct ThreadEvent {
    set: Mutex<bool>,
    changed: Condvar,
}

impl ThreadEvent {
    fn set(&self) {
        *self.set.lock().expect("the lock") = true;
        self.changed.notify_all();
    }
    fn wait_and_clear(&self) {
        let mut set = self.set.lock().expect("the lock");
        while !*set {
            set = self.changed.wait(set).expect("the lock");
        }
        *set = false;
    }
}

fn threads_us() -> f64 {
    median(
        (0..5)
            .map(|_| {
                let (a, b) = (
                    Arc::new(ThreadEvent::default()),
                    Arc::new(ThreadEvent::default()),
                );
                let (ta, tb) = (Arc::clone(&a), Arc::clone(&b));
                let other = std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        ta.wait_and_clear();
                        tb.set();
                    }
                });
                let t = Instant::now();
                for _ in 0..ROUNDS {
                    a.set();
                    b.wait_and_clear();
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64 / 2.0;
                other.join().expect("the thread");
                us
            })
            .collect(),
    )
}

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

#[parallel]
fn party(barrier: ProcessBarrier, rounds: u64) {
    for _ in 0..rounds {
        barrier.wait().expect("the barrier holds");
    }
}

/// One round of a barrier of two processes, µs: median of 5 runs of `ROUNDS`.
fn barrier_us() -> f64 {
    median(
        (0..5)
            .map(|_| {
                let barrier = ProcessBarrier::new(2).expect("a barrier");
                let child = Process::spawn(party, (barrier.clone(), ROUNDS)).expect("a child");
                let t = Instant::now();
                for _ in 0..ROUNDS {
                    barrier.wait().expect("the barrier holds");
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64;
                child.join().expect("the child");
                us
            })
            .collect(),
    )
}

/// One round of a `std::sync::Barrier` of two threads, µs.
fn std_barrier_us() -> f64 {
    median(
        (0..5)
            .map(|_| {
                let barrier = Arc::new(std::sync::Barrier::new(2));
                let theirs = Arc::clone(&barrier);
                let other = std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        theirs.wait();
                    }
                });
                let t = Instant::now();
                for _ in 0..ROUNDS {
                    barrier.wait();
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64;
                other.join().expect("the thread");
                us
            })
            .collect(),
    )
}

/// One uncontended lock and unlock, ns: median of 5 runs of `n`.
fn lock_ns(n: u32, mut lock_unlock: impl FnMut()) -> f64 {
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    lock_unlock();
                }
                t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
            })
            .collect(),
    )
}

fn main() {
    let ours = multiproc_us();
    let threads = threads_us();
    let shared = ProcessMutex::new(0u64).expect("a mutex");
    let ours_lock = lock_ns(1_000_000, || {
        *shared.lock().expect("the lock") += 1;
    });
    let ours_barrier = barrier_us();
    let std_barrier = std_barrier_us();
    let awaited = {
        let pool = Pool::new(2).expect("a pool");
        common::awaited_per_s(&pool, t1)
    };
    let std_mutex = Mutex::new(0u64);
    let std_lock = lock_ns(1_000_000, || {
        *std_mutex.lock().expect("the lock") += 1;
    });
    println!("# Event set -> wake latency (half a ping-pong), {ROUNDS} rounds, medians of 5");
    println!(
        "{:<44} {:>10.2} us",
        "multiproc::sync::Event, two processes", ours
    );
    let python = common::python("sync_ops.py", &[ROUNDS.to_string()]);
    let py = |key: &str| python.as_ref().ok().and_then(|out| common::field(out, key));
    match py("event_us=") {
        Some(py) => println!(
            "{:<44} {:>10.2} us  (multiproc: {:.1}x faster)",
            "Python multiprocessing.Event, two processes",
            py,
            py / ours
        ),
        None => println!("Python: {python:?}"),
    }
    println!(
        "{:<44} {:>10.2} us  (multiproc: {:.2}x its time)",
        "std::sync Mutex + Condvar, two threads",
        threads,
        ours / threads
    );
    println!("# uncontended lock + unlock, medians of 5");
    println!(
        "{:<44} {:>10.1} ns",
        "multiproc::sync::Mutex<u64>", ours_lock
    );
    if let Some(py) = py("lock_ns=") {
        println!(
            "{:<44} {:>10.1} ns  (multiproc: {:.1}x faster)",
            "Python multiprocessing.Lock",
            py,
            py / ours_lock
        );
    }
    println!(
        "{:<44} {:>10.1} ns  (multiproc: {:.2}x its time)",
        "std::sync::Mutex<u64>",
        std_lock,
        ours_lock / std_lock
    );
    println!("# one round of a barrier of 2, {ROUNDS} rounds, medians of 5");
    println!(
        "{:<44} {:>10.2} us",
        "multiproc::sync::Barrier, two processes", ours_barrier
    );
    if let Some(py) = py("barrier_us=") {
        println!(
            "{:<44} {:>10.2} us  (multiproc: {:.1}x faster)",
            "Python multiprocessing.Barrier, two processes",
            py,
            py / ours_barrier
        );
    }
    println!(
        "{:<44} {:>10.2} us  (multiproc: {:.2}x its time)",
        "std::sync::Barrier, two threads",
        std_barrier,
        ours_barrier / std_barrier
    );
    println!("# 10,000 apply_async awaited at once, 2 workers, medians of 5");
    println!(
        "{:<44} {:>10.0}/s",
        "multiproc, tokio current_thread", awaited
    );
    let asyncio = common::python("async_ops.py", &["2".into(), "10000".into()]);
    if let Some(py) = asyncio
        .as_ref()
        .ok()
        .and_then(|out| common::field(out, "awaited_per_s="))
    {
        println!(
            "{:<44} {:>10.0}/s  (multiproc: {:.1}x)",
            "Python asyncio + ProcessPoolExecutor",
            py,
            awaited / py
        );
    }
}
