//! `multiproc::sync::Mutex` between real processes: a counter under contention from
//! workers and children, holders killed with SIGKILL in a loop while they hold it, and
//! the timed and non-blocking forms.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use multiproc::ErrorKind;
use multiproc::prelude::*;
use multiproc::sync::{Event, Mutex};

/// Adds 1 to the counter `n` times, each under the lock.
#[parallel]
fn add(total: Mutex<u64>, n: u64) -> Result<(), String> {
    for _ in 0..n {
        let mut g = total.lock().map_err(|e| e.to_string())?;
        // Read, yield, write: a lock that let two in would lose increments.
        let v = *g;
        std::hint::black_box(v);
        *g = v + 1;
    }
    Ok(())
}

/// Takes the lock, half-writes the value, says so, and never lets go (it is killed).
#[parallel]
fn hold_forever(pair: Mutex<[u64; 2]>, locked: Event) {
    let mut g = pair.lock().unwrap();
    g[0] += 1; // half of an update that keeps both halves equal
    locked.set();
    std::thread::sleep(Duration::from_secs(120));
    g[1] += 1;
}

#[test]
fn processes_that_add_under_the_lock_lose_nothing() {
    let total = Mutex::new(0u64).unwrap();
    let pool = Pool::new(2).unwrap();
    let runs: Vec<_> = (0..4)
        .map(|_| pool.apply_async(add, (total.clone(), 2_000)))
        .collect();
    let child = Process::spawn(add, (total.clone(), 2_000)).unwrap();
    add(total.clone(), 2_000).unwrap(); // and this process
    for r in runs {
        r.get().unwrap().unwrap();
    }
    child.join().unwrap().unwrap();
    let g = total.lock().unwrap();
    assert_eq!(*g, 12_000);
    assert!(!g.abandoned());
}

#[test]
fn a_holder_killed_in_a_loop_never_wedges_it_and_the_next_lock_says_so() {
    let pair = Mutex::new([0u64; 2]).unwrap();
    for round in 1..=10u64 {
        let locked = Event::new().unwrap();
        let holder = Process::spawn(hold_forever, (pair.clone(), locked.clone())).unwrap();
        assert!(
            locked.wait_timeout(Duration::from_secs(60)),
            "round {round}"
        );
        // Held by a live process: not ours yet.
        assert!(pair.try_lock().unwrap().is_none());
        assert!(
            pair.lock_timeout(Duration::from_millis(30))
                .unwrap()
                .is_none()
        );
        holder.kill().unwrap();
        assert!(holder.wait_timeout(Duration::from_secs(60)));
        let mut g = pair
            .lock_timeout(Duration::from_secs(60))
            .unwrap()
            .expect("taken over from the dead holder");
        assert!(g.abandoned(), "round {round}");
        // The dead holder's half-written value is there; repair it.
        assert_eq!(*g, [round, round - 1]);
        g[1] = g[0];
        drop(g);
        let g = pair.lock().unwrap();
        assert!(!g.abandoned(), "an ordinary lock after the repair");
        assert_eq!(*g, [round, round]);
    }
}

#[test]
fn locking_twice_on_one_thread_is_an_error_not_a_hang() {
    let m = Mutex::new(7u32).unwrap();
    let g = m.lock().unwrap();
    let e = m.lock().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(m.try_lock().is_err());
    drop(g);
    assert_eq!(*m.try_lock().unwrap().unwrap(), 7);
}

/// Takes a `Mutex<u64>` handle, and reads it as a `Mutex<[u64; 4]>`: whether that failed.
#[parallel]
fn as_other_type_fails(m: Mutex<u64>) -> bool {
    let bytes = postcard::to_allocvec(&m).unwrap();
    postcard::from_bytes::<Mutex<[u64; 4]>>(&bytes).is_err()
        && postcard::from_bytes::<Event>(&bytes).is_err()
}

#[test]
fn a_handle_of_another_type_or_kind_is_refused() {
    let pool = Pool::new(1).unwrap();
    assert!(
        pool.apply(as_other_type_fails, Mutex::new(1u64).unwrap())
            .unwrap()
    );
}
