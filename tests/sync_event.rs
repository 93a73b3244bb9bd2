//! `multiproc::sync::Event` between real processes: pool workers and `Process` children
//! wait for one the parent sets, and waiters killed with SIGKILL in a loop leave it
//! working for the others.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use multiproc::prelude::*;
use multiproc::sync::Event;

/// Waits (a minute at most) for `go`, then sets `done`; returns whether `go` came.
#[parallel]
fn wait_then_answer(go: Event, done: Event) -> bool {
    let came = go.wait_timeout(Duration::from_secs(60));
    done.set();
    came
}

/// Waits without a limit, then says so.
#[parallel]
fn wait_forever(go: Event) -> u32 {
    println!("WAITING {}", std::process::id());
    go.wait();
    std::process::id()
}

#[test]
fn a_set_in_the_parent_wakes_waiters_in_workers_and_children() {
    let (go, done) = (Event::new().unwrap(), Event::new().unwrap());
    assert!(!go.is_set());
    assert!(!go.wait_timeout(Duration::from_millis(20)), "not set yet");
    let pool = Pool::new(2).unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|_| pool.apply_async(wait_then_answer, (go.clone(), done.clone())))
        .collect();
    let child = Process::spawn(wait_then_answer, (go.clone(), done.clone())).unwrap();
    // Nobody answers before the event is set.
    assert!(!done.wait_timeout(Duration::from_millis(100)));
    go.set();
    assert!(go.is_set());
    for w in waiting {
        assert!(w.get().unwrap());
    }
    assert!(child.join().unwrap());
    assert!(done.is_set());
    // Cleared, it holds waiters again; set from a worker, it wakes the parent.
    go.clear();
    done.clear();
    assert!(!go.wait_timeout(Duration::from_millis(20)));
    let r = pool.apply_async(wait_then_answer, (go.clone(), done.clone()));
    go.set();
    assert!(
        done.wait_timeout(Duration::from_secs(60)),
        "set in a worker"
    );
    assert!(r.get().unwrap());
}

#[test]
fn waiters_killed_in_a_loop_leave_the_event_working() {
    let go = Event::new().unwrap();
    for round in 0..20 {
        // Two children wait; one is killed while it waits; the other still wakes.
        let victim = Process::spawn(wait_forever, go.clone()).unwrap();
        let survivor = Process::spawn(wait_forever, go.clone()).unwrap();
        let survivor_pid = survivor.pid();
        // Both are waiting (asleep on the futex, or about to be): kill one.
        common::eventually("the victim waits", Duration::from_secs(60), || {
            asleep(victim.pid())
        });
        victim.kill().unwrap();
        assert!(victim.wait_timeout(Duration::from_secs(60)));
        let started = Instant::now();
        go.set();
        assert_eq!(survivor.join().unwrap(), survivor_pid, "round {round}");
        assert!(started.elapsed() < Duration::from_secs(60));
        go.clear();
    }
}

/// Whether a thread of process `pid` sleeps on a futex: it most likely reached its wait
/// (its other thread sleeps in `poll`). Where the kernel hides `wchan` ("0"), any state
/// will do: the kill may then come before the wait, which the test survives as well.
fn asleep(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let wchans: Vec<String> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("wchan")).ok())
        .collect();
    wchans
        .iter()
        .any(|w| w.contains("futex") || w.trim() == "0")
}

#[test]
fn a_handle_that_is_not_an_event_is_refused() {
    // A queue's handle read as an event's, in a worker: the kinds are told apart.
    let q: Queue<u64> = Queue::new().unwrap();
    let pool = Pool::new(1).unwrap();
    assert!(pool.apply(as_event_fails, q).unwrap());
}

/// Takes a queue's handle, and reads it as an event's: whether that failed.
#[parallel]
fn as_event_fails(q: Queue<u64>) -> bool {
    let bytes = postcard::to_allocvec(&q).unwrap();
    postcard::from_bytes::<Event>(&bytes).is_err()
}
