//! `AsyncResult` as a `Future`, and `map_async`, under tokio: thousands awaited at once
//! on one thread, a cancelled await whose task still runs, a map inside `tokio::spawn`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use multiproc::ErrorKind;
use multiproc::prelude::*;

#[parallel]
fn square(x: u64) -> u64 {
    x * x
}

#[parallel]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[parallel]
fn fails_on_7(x: u64) -> u64 {
    assert!(x != 7, "seven");
    x
}

/// Waits for `dir/go` (a minute at most), then leaves `dir/done`.
#[parallel]
fn wait_then_mark(dir: String) -> u64 {
    let dir = Path::new(&dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !dir.join("go").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(dir.join("done"), "").unwrap();
    1
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn a_current_thread_runtime_awaits_ten_thousand_apply_async_at_once() {
    let pool = Pool::new(2).unwrap();
    let results = current_thread().block_on(async {
        let calls: Vec<_> = (0..10_000u64)
            .map(|x| pool.apply_async(square, x))
            .collect();
        futures::future::join_all(calls).await
    });
    assert_eq!(results.len(), 10_000);
    for (x, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), (x * x) as u64);
    }
}

#[test]
fn a_timed_out_await_lets_its_task_run_and_its_callback_run_once() {
    let dir = std::env::temp_dir().join(format!("multiproc-async-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = Pool::new(1).unwrap();
    let successes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&successes);
    let call = pool
        .apply_async(wait_then_mark, dir.display().to_string())
        .on_success(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
    let timed_out = current_thread()
        .block_on(async { tokio::time::timeout(Duration::from_millis(50), call).await });
    assert!(timed_out.is_err(), "the task waits for the go file");
    // The future is gone; the task is not.
    std::fs::write(dir.join("go"), "").unwrap();
    common::eventually("the task ran", Duration::from_secs(60), || {
        dir.join("done").exists()
    });
    pool.join(); // callbacks included
    assert_eq!(successes.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn map_async_inside_tokio_spawn_keeps_the_order_and_runs_callbacks_first() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let items: Vec<(u64, u64)> = (0..5_000).map(|i| (i, 2 * i)).collect();
    let expected: Vec<u64> = items.iter().map(|(a, b)| a + b).collect();
    let successes = Arc::new(AtomicUsize::new(0));
    let (p, counted, seen) = (
        Arc::clone(&pool),
        Arc::clone(&successes),
        Arc::clone(&successes),
    );
    let handle = runtime.spawn(async move {
        let sums = p.map_async(add, items).on_success(move |v| {
            assert_eq!(v.len(), 5_000);
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let sums = sums.await;
        // The callback ran before the future resolved.
        (sums, seen.load(Ordering::SeqCst))
    });
    let (sums, callbacks_before) = runtime.block_on(handle).unwrap();
    assert_eq!(sums.unwrap(), expected);
    assert_eq!(callbacks_before, 1);
    assert_eq!(successes.load(Ordering::SeqCst), 1);
    // The same as `map`, for the same input.
    let squares: Vec<u64> = (0..1000).collect();
    assert_eq!(
        pool.map_async(square, squares.clone()).get().unwrap(),
        pool.map(square, &squares).unwrap()
    );
    assert!(pool.map_async(square, Vec::new()).get().unwrap().is_empty());
}

#[test]
fn map_async_fails_with_the_failing_item_and_its_error_callback_runs_once() {
    let pool = Pool::new(2).unwrap();
    let errors = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&errors);
    let result = pool
        .map_async(fails_on_7, (0..100).collect())
        .on_error(move |e| {
            assert_eq!(e.kind(), ErrorKind::Panicked);
            counted.fetch_add(1, Ordering::SeqCst);
        });
    let e = current_thread().block_on(result).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
    assert_eq!(e.task_index(), Some(7), "{e}");
    assert!(e.to_string().contains("seven"), "{e}");
    pool.join();
    assert_eq!(errors.load(Ordering::SeqCst), 1);

    // A closed pool: the result is an error at once, awaited or not.
    let pool = Pool::new(1).unwrap();
    pool.close();
    let e = pool.map_async(square, vec![1, 2]).get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
}
