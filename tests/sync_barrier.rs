//! `multiproc::sync::Barrier` between real processes: rounds in step with one leader
//! each, and parties killed with SIGKILL in a loop, which break it instead of hanging.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use multiproc::ErrorKind;
use multiproc::prelude::*;
use multiproc::sync::{Barrier, Mutex};

const ROUNDS: u64 = 200;

/// Party `me`: in each round, records it reached the round, waits, and checks every
/// party had reached it. Returns how many rounds it led, or what went wrong.
#[parallel]
fn party(barrier: Barrier, reached: Mutex<[u64; 3]>, me: usize) -> Result<u64, String> {
    let mut led = 0;
    for round in 1..=ROUNDS {
        reached.lock().map_err(|e| e.to_string())?[me] = round;
        let r = barrier.wait().map_err(|e| e.to_string())?;
        led += u64::from(r.is_leader());
        let all = *reached.lock().map_err(|e| e.to_string())?;
        if all.iter().any(|&r| r < round) {
            return Err(format!("round {round}: a party was behind: {all:?}"));
        }
    }
    Ok(led)
}

/// Waits round after round until the barrier breaks; returns its error.
#[parallel]
fn until_broken(barrier: Barrier) -> String {
    loop {
        match barrier.wait_timeout(Duration::from_secs(60)) {
            Ok(Some(_)) => {}
            Ok(None) => return "timed out".into(),
            Err(e) => return format!("{:?}: {e}", e.kind()),
        }
    }
}

#[test]
fn three_processes_go_round_in_step_with_one_leader_a_round() {
    let barrier = Barrier::new(3).unwrap();
    let reached = Mutex::new([0u64; 3]).unwrap();
    let a = Process::spawn(party, (barrier.clone(), reached.clone(), 1)).unwrap();
    let b = Process::spawn(party, (barrier.clone(), reached.clone(), 2)).unwrap();
    let mine = party(barrier, reached, 0).unwrap();
    let led = mine + a.join().unwrap().unwrap() + b.join().unwrap().unwrap();
    assert_eq!(led, ROUNDS, "one leader per round");
}

#[test]
fn a_party_killed_in_a_loop_breaks_the_barrier_for_the_others_and_nothing_hangs() {
    for round in 0..10 {
        let barrier = Barrier::new(3).unwrap();
        let victim = Process::spawn(until_broken, barrier.clone()).unwrap();
        let other = Process::spawn(until_broken, barrier.clone()).unwrap();
        // Some rounds all together, so that the victim is a known party.
        for _ in 0..20 {
            barrier
                .wait_timeout(Duration::from_secs(60))
                .unwrap()
                .unwrap();
        }
        victim.kill().unwrap();
        assert!(victim.wait_timeout(Duration::from_secs(60)));
        // The victim may have arrived in the next round before it was killed: that round
        // still ends (its arrival counts), and the one after breaks.
        let e = (0..3)
            .find_map(|_| barrier.wait_timeout(Duration::from_secs(60)).err())
            .expect("broken within two rounds");
        assert_eq!(e.kind(), ErrorKind::WorkerDied, "round {round}: {e}");
        assert!(e.to_string().contains("broken"), "{e}");
        let theirs = other.join().unwrap();
        assert!(theirs.starts_with("WorkerDied"), "round {round}: {theirs}");
        // Broken for good.
        assert_eq!(barrier.wait().unwrap_err().kind(), ErrorKind::WorkerDied);
    }
}

#[test]
fn a_wait_without_the_others_times_out_and_bad_sizes_are_invalid() {
    let barrier = Barrier::new(2).unwrap();
    assert!(
        barrier
            .wait_timeout(Duration::from_millis(30))
            .unwrap()
            .is_none()
    );
    let alone = Barrier::new(1).unwrap();
    assert!(alone.wait().unwrap().is_leader());
    for bad in [0, 257] {
        let e = Barrier::new(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    }
}
