//! `multiproc::sync::Semaphore` between real processes: it bounds how many hold a
//! permit at once, and the permits of holders killed with SIGKILL in a loop come back.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use multiproc::ErrorKind;
use multiproc::prelude::*;
use multiproc::sync::{Event, Mutex, Semaphore};

/// Under a permit, counts itself in `now` and records the most seen at once in `peak`.
#[parallel]
fn bounded(sem: Semaphore, stats: Mutex<[u64; 2]>, rounds: u64) -> Result<(), String> {
    for _ in 0..rounds {
        let _permit = sem.acquire().map_err(|e| e.to_string())?;
        {
            let mut s = stats.lock().map_err(|e| e.to_string())?;
            s[0] += 1;
            s[1] = s[1].max(s[0]);
        }
        std::thread::sleep(Duration::from_micros(200));
        stats.lock().map_err(|e| e.to_string())?[0] -= 1;
    }
    Ok(())
}

/// Takes `n` permits, says so, and never gives them back (it is killed).
#[parallel]
fn hold_forever(sem: Semaphore, n: u32, holding: Event) {
    let permits: Vec<_> = (0..n).map(|_| sem.acquire().unwrap()).collect();
    holding.set();
    std::thread::sleep(Duration::from_secs(120));
    drop(permits);
}

#[test]
fn no_more_than_its_permits_hold_one_at_once() {
    let sem = Semaphore::new(2).unwrap();
    let stats = Mutex::new([0u64; 2]).unwrap();
    let pool = Pool::new(4).unwrap();
    let runs: Vec<_> = (0..4)
        .map(|_| pool.apply_async(bounded, (sem.clone(), stats.clone(), 50)))
        .collect();
    for r in runs {
        r.get().unwrap().unwrap();
    }
    let s = *stats.lock().unwrap();
    assert_eq!(s[0], 0);
    assert!((1..=2).contains(&s[1]), "peak {}", s[1]);
    assert_eq!(sem.available(), 2);
}

#[test]
fn permits_of_holders_killed_in_a_loop_come_back() {
    let sem = Semaphore::new(3).unwrap();
    for round in 0..10 {
        let holding = Event::new().unwrap();
        let holder = Process::spawn(hold_forever, (sem.clone(), 2, holding.clone())).unwrap();
        assert!(
            holding.wait_timeout(Duration::from_secs(60)),
            "round {round}"
        );
        assert_eq!(
            sem.available(),
            1,
            "round {round}: two held by a live process"
        );
        let one = sem.try_acquire().expect("the third permit");
        assert!(sem.try_acquire().is_none(), "round {round}: all three held");
        assert!(
            sem.acquire_timeout(Duration::from_millis(30))
                .unwrap()
                .is_none()
        );
        holder.kill().unwrap();
        assert!(holder.wait_timeout(Duration::from_secs(60)));
        // The dead holder's two permits come back to a waiter.
        let two = sem
            .acquire_timeout(Duration::from_secs(60))
            .unwrap()
            .expect("a permit of the dead holder");
        let three = sem.try_acquire().expect("the other one");
        drop((one, two, three));
        assert_eq!(sem.available(), 3, "round {round}: none lost");
    }
}

#[test]
fn a_semaphore_of_no_permits_is_invalid_and_other_handles_are_refused() {
    let e = Semaphore::new(0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    let pool = Pool::new(1).unwrap();
    assert!(
        pool.apply(as_semaphore_fails, Event::new().unwrap())
            .unwrap()
    );
}

/// Takes an event's handle, and reads it as a semaphore's: whether that failed.
#[parallel]
fn as_semaphore_fails(e: Event) -> bool {
    let bytes = postcard::to_allocvec(&e).unwrap();
    postcard::from_bytes::<Semaphore>(&bytes).is_err()
}
