//! Synchronisation between processes: one `Event` set → wake latency, measured as half
//! a ping-pong of two events between the parent and a `Process` child, beside Python's
//! `multiprocessing.Event` (`benches/peers/sync_ops.py`) and the same ping-pong between
//! two threads over `std::sync` (a `Mutex<bool>` and a `Condvar` per event).
//!
//! Run: `cargo bench --bench sync`.

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use common::median;
use multiproc::prelude::*;
use multiproc::sync::Event;

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

fn main() {
    let ours = multiproc_us();
    let threads = threads_us();
    println!("# Event set -> wake latency (half a ping-pong), {ROUNDS} rounds, medians of 5");
    println!(
        "{:<44} {:>10.2} us",
        "multiproc::sync::Event, two processes", ours
    );
    match common::python("sync_ops.py", &[ROUNDS.to_string()]) {
        Ok(out) => match common::field(&out, "event_us=") {
            Some(py) => println!(
                "{:<44} {:>10.2} us  (multiproc: {:.1}x faster)",
                "Python multiprocessing.Event, two processes",
                py,
                py / ours
            ),
            None => println!("Python: no figure in {out:?}"),
        },
        Err(why) => println!("Python: {why}"),
    }
    println!(
        "{:<44} {:>10.2} us  (multiproc: {:.2}x its time)",
        "std::sync Mutex + Condvar, two threads",
        threads,
        ours / threads
    );
}
