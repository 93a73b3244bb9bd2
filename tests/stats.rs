//! `Pool::stats`: what the pool and each live worker did, counted through real runs,
//! deaths and recycling.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use multiproc::prelude::*;

#[parallel]
fn square(x: u64) -> u64 {
    x * x
}

/// Panics on multiples of 5; kills its worker on 1_000_000; sleeps 1 ms otherwise.
#[parallel]
fn faulty(x: u64) -> u64 {
    if x == 1_000_000 {
        // SAFETY: SIGKILL to this worker process itself: the fault under test.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    assert!(!x.is_multiple_of(5), "{x} is a multiple of 5");
    std::thread::sleep(Duration::from_millis(1));
    x
}

#[test]
fn a_fresh_pool_counts_its_maps_and_calls_per_worker() {
    let pool = Pool::new(2).unwrap();
    let s = pool.stats();
    assert_eq!((s.items_done, s.items_failed, s.workers_started), (0, 0, 2));
    assert_eq!(s.workers.len(), 2);
    assert_eq!(s.last_map_per_item, None);

    let items: Vec<u64> = (0..1000).collect();
    pool.map(square, &items).unwrap();
    for x in 0..5 {
        pool.apply(square, x).unwrap(); // the direct path counts too
    }
    pool.apply_async(square, 9).get().unwrap();
    let s = pool.stats();
    assert_eq!(s.items_done, 1006, "{s:?}");
    assert_eq!(s.items_failed, 0);
    assert_eq!((s.workers_died, s.workers_recycled), (0, 0));
    assert_eq!(
        s.workers.iter().map(|w| w.items).sum::<u64>(),
        1006,
        "{s:?}"
    );
    let per_item = s.last_map_per_item.unwrap();
    assert!(
        per_item > Duration::ZERO && per_item < Duration::from_secs(1),
        "{s:?}"
    );
    for w in &s.workers {
        assert!(w.pid > 0 && w.pid != std::process::id());
        assert!(w.busy > Duration::ZERO || w.items == 0, "{w:?}");
    }
}

#[test]
fn failures_deaths_and_recycling_are_counted() {
    let pool = Pool::builder()
        .workers(1)
        .max_tasks_per_worker(4)
        .build()
        .unwrap();
    // 1..=10: 5 and 10 panic.
    let out: Vec<_> = pool.imap(faulty, 1..=10).collect();
    assert_eq!(out.iter().filter(|r| r.is_err()).count(), 2);
    let s = pool.stats();
    assert_eq!((s.items_done, s.items_failed), (8, 2), "{s:?}");
    // Ten items, four per worker: two workers recycled, the third live.
    assert_eq!(
        (s.workers_started, s.workers_recycled, s.workers_died),
        (3, 2, 0),
        "{s:?}"
    );
    assert_eq!(s.workers.len(), 1);

    let e = pool.apply(faulty, 1_000_000).unwrap_err();
    assert_eq!(e.kind(), multiproc::ErrorKind::WorkerDied, "{e}");
    assert_eq!(pool.apply(faulty, 1).unwrap(), 1);
    let s = pool.stats();
    assert_eq!((s.items_done, s.items_failed), (9, 3), "{s:?}");
    assert_eq!(s.workers_died, 1, "{s:?}");
    assert_eq!(s.workers_started, 4, "{s:?}");

    // Terminating is not dying.
    pool.terminate();
    assert_eq!(pool.stats().workers_died, 1);
}

/// Kills its worker the first time it sees item 3 (it leaves a mark in `dir`).
#[parallel]
fn dies_once_on_3(x: u64, dir: String) -> u64 {
    if x == 3 && std::fs::create_dir(std::path::Path::new(&dir).join("died")).is_ok() {
        // SAFETY: SIGKILL to this worker process itself: the fault under test.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x
}

#[test]
fn a_retried_death_leaves_the_pool_at_its_size() {
    let dir = std::env::temp_dir().join(format!("multiproc-stats-{}", std::process::id()));
    for round in 0..5 {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pool = Pool::builder().workers(2).retries(1).build().unwrap();
        // One item: its worker dies, and it runs again on whichever slot takes it.
        let item = [(3u64, dir.display().to_string())];
        assert_eq!(pool.map(dies_once_on_3, &item).unwrap(), [3]);
        assert!(dir.join("died").exists());
        // The lost worker is replaced at once, not when its slot next gets work.
        common::eventually(
            "the pool is back to 2 workers",
            Duration::from_secs(60),
            || pool.stats().workers.len() == 2,
        );
        let s = pool.stats();
        assert_eq!(
            (s.workers_started, s.workers_died),
            (3, 1),
            "round {round}: {s:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
