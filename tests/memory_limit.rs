//! The memory limit per worker: real allocations over it, in real worker processes.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use multiproc::prelude::*;
use multiproc::{ErrorKind, SharedSlice};

/// Item 3 allocates and fills 10 GiB in one go; the others a little.
#[parallel]
fn hog_on_3(x: u64) -> u64 {
    let bytes = if x == 3 { 10usize << 30 } else { 1 << 20 };
    let v = vec![1u8; bytes];
    std::hint::black_box(&v);
    x + u64::from(v[bytes - 1])
}

const LIMIT: u64 = 256 << 20;

#[test]
fn a_worker_over_its_limit_is_killed_its_item_fails_and_the_rest_go_on() {
    let pool = Pool::builder()
        .workers(2)
        .max_memory_per_worker(LIMIT)
        .build()
        .unwrap();
    let pending: Vec<_> = (0..8).map(|x| pool.apply_async(hog_on_3, x)).collect();
    for (x, r) in pending.into_iter().enumerate() {
        let r = r.get();
        if x == 3 {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
            let text = e.to_string();
            assert!(text.contains("memory limit of 256.0 MiB"), "{text}");
            assert!(text.contains("reached"), "{text}");
            assert!(text.contains("SIGKILL"), "{text}");
        } else {
            assert_eq!(r.unwrap(), x as u64 + 1);
        }
    }
    // The pool replaced the worker: both slots answer.
    let items: Vec<u64> = (10..30).collect();
    let out = pool.map(hog_on_3, &items).unwrap();
    assert_eq!(out, items.iter().map(|x| x + 1).collect::<Vec<_>>());
}

/// Reads every byte of a shared slice: its pages become resident in the worker.
#[parallel]
fn sum_shared(xs: SharedSlice<u8>) -> u64 {
    xs.iter().map(|&b| u64::from(b)).sum()
}

#[test]
fn shared_memory_a_worker_maps_does_not_count_against_its_limit() {
    let data = vec![1u8; 384 << 20];
    let xs = SharedSlice::from_slice(&data).unwrap();
    drop(data);
    let pool = Pool::builder()
        .workers(1)
        .max_memory_per_worker(128 << 20)
        .build()
        .unwrap();
    assert_eq!(pool.apply(sum_shared, xs).unwrap(), 384 << 20);
}

#[test]
fn a_limit_of_zero_or_a_malformed_variable_is_invalid() {
    let e = Pool::builder()
        .max_memory_per_worker(0)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    let out = common::child_stdout(
        "child_reports_the_global_pool",
        &[("MULTIPROC_MAX_MEMORY", "lots")],
    );
    assert!(out.contains("InvalidConfig"), "{out}");
    assert!(out.contains("MULTIPROC_MAX_MEMORY"), "{out}");
}

#[test]
fn the_environment_sets_the_limit_of_every_pool_and_the_global_one() {
    let out = common::child_stdout(
        "child_reports_the_global_pool",
        &[("MULTIPROC_MAX_MEMORY", "256M")],
    );
    assert!(out.contains("global: WorkerDied"), "{out}");
    assert!(out.contains("memory limit of 256.0 MiB"), "{out}");
    assert!(out.contains("built: WorkerDied"), "{out}");
}

/// Child half: runs the hog on the global pool and on a pool built without a limit of
/// its own, and prints what came back.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_reports_the_global_pool() {
    if !common::is_child() {
        return;
    }
    match [3u64].par_map(hog_on_3) {
        Ok(v) => println!("global: Ok({v:?})"),
        Err(e) => println!("global: {:?}: {e}", e.kind()),
    }
    match Pool::builder().workers(1).build() {
        Ok(pool) => match pool.apply(hog_on_3, 3) {
            Ok(v) => println!("built: Ok({v})"),
            Err(e) => println!("built: {:?}: {e}", e.kind()),
        },
        Err(e) => println!("built: {:?}: {e}", e.kind()),
    }
}
