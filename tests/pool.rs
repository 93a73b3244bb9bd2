//! `Pool`: map, imap, apply, apply_async with callbacks, close, join, terminate.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::within;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiproc::ErrorKind;
use multiproc::prelude::*;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

#[parallel]
fn whoami(_x: u64) -> u32 {
    std::process::id()
}

#[parallel]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[parallel]
fn panics_on_3(x: u64) -> u64 {
    assert!(x != 3, "three is not allowed");
    x
}

#[test]
fn invalid_configurations_are_errors() {
    assert_eq!(Pool::new(0).unwrap_err().kind(), ErrorKind::InvalidConfig);
    let cases = [
        Pool::builder().workers(1).chunk_size(0).build(),
        Pool::builder().workers(1).max_tasks_per_worker(0).build(),
        Pool::builder()
            .workers(1)
            .task_timeout(Duration::ZERO)
            .build(),
    ];
    for case in cases {
        let e = case.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    }
}

#[test]
fn map_runs_on_the_pools_workers_in_order() {
    let pool = Pool::new(3).unwrap();
    assert_eq!(pool.workers(), 3);
    let data: Vec<u64> = (0..10_000).collect();
    assert_eq!(
        pool.map(t1, &data).unwrap(),
        data.iter().map(|x| x * 10).collect::<Vec<_>>()
    );
    let pids: BTreeSet<u32> = pool.map(whoami, &data).unwrap().into_iter().collect();
    assert!(!pids.contains(&std::process::id()));
    assert!(pids.len() <= 3, "{pids:?}");
}

#[test]
fn apply_and_apply_async_return_results() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(t1, 5).unwrap(), 50);
    let r = pool.apply_async(t1, 6);
    r.wait();
    assert!(r.ready());
    assert_eq!(r.get().unwrap(), 60);
    let slow = pool.apply_async(sleep_ms, 400);
    assert!(!slow.wait_timeout(Duration::from_millis(1)));
    assert!(slow.wait_timeout(Duration::from_secs(60)));
    assert_eq!(slow.get().unwrap(), 400);
}

#[test]
fn callbacks_run_in_the_parent_exactly_once_before_get_returns() {
    let pool = Pool::new(2).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen_pid = Arc::new(Mutex::new(Vec::new()));
    for i in 0..20u64 {
        let counter = Arc::clone(&calls);
        let seen_pid = Arc::clone(&seen_pid);
        let r = pool.apply_async(t1, i).on_success(move |v| {
            assert_eq!(*v, i * 10);
            seen_pid.lock().unwrap().push(std::process::id());
            counter.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(r.get().unwrap(), i * 10);
        // The callback ran before get() returned.
        assert_eq!(calls.load(Ordering::SeqCst), i as usize + 1);
    }
    pool.join();
    assert_eq!(calls.load(Ordering::SeqCst), 20);
    let pids = seen_pid.lock().unwrap();
    assert!(pids.iter().all(|&p| p == std::process::id()), "{pids:?}");
}

/// Item 0 waits (30 s at most, to detect a hang) until the parent signals through the
/// queue; every other item returns at once. Completion order is then fixed: the others
/// complete first, whatever the machine's load, or the test cannot progress.
#[parallel]
fn waits_for_signal(q: Queue<u8>, x: u64) -> u64 {
    if x == 0 {
        return match q.get_timeout(Duration::from_secs(30)) {
            Ok(Some(_)) => 0,
            _ => 999,
        };
    }
    x
}

#[test]
fn callbacks_run_in_completion_order() {
    let pool = Pool::new(2).unwrap();
    let q: Queue<u8> = Queue::new().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for x in [0u64, 1] {
        let order = Arc::clone(&order);
        let signal = q.clone();
        handles.push(
            pool.apply_async(waits_for_signal, (q.clone(), x))
                .on_success(move |v| {
                    order.lock().unwrap().push(*v);
                    if *v == 1 {
                        signal.put(1).unwrap(); // now item 0 may complete
                    }
                }),
        );
    }
    for h in handles {
        h.get().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [1, 0]);
}

/// Says it arrived, then waits (30 s at most, to detect a hang) for the parent's go.
#[parallel]
fn meet(arrived: Queue<u8>, go: Queue<u8>) -> bool {
    arrived.put(1).is_ok() && matches!(go.get_timeout(Duration::from_secs(30)), Ok(Some(_)))
}

#[test]
fn jobs_queued_right_after_a_result_each_get_a_worker() {
    // Right after a result, one driver polls for its next job and takes the first one
    // queued without being woken; the second job must still wake the other driver.
    // The two jobs wait for each other, so a job that never starts hangs the rounds.
    within(Duration::from_secs(120), || {
        let pool = Pool::new(2).unwrap();
        let (arrived, go) = (Queue::<u8>::new().unwrap(), Queue::<u8>::new().unwrap());
        for round in 0..20 {
            pool.apply(t1, round).unwrap();
            let handles: Vec<_> = (0..2)
                .map(|_| pool.apply_async(meet, (arrived.clone(), go.clone())))
                .collect();
            for _ in 0..2 {
                assert_eq!(arrived.get().unwrap(), 1);
            }
            go.put(1).unwrap();
            go.put(1).unwrap();
            for h in handles {
                assert!(h.get().unwrap(), "round {round}");
            }
        }
    });
}

#[test]
fn quick_tasks_do_not_queue_behind_a_long_one() {
    // One task blocks until the parent says go; of the quick ones queued after it, at
    // most one (held ready to hide latency) may wait behind it: a worker takes many
    // small tasks at once only after their measured run time showed they are tiny. On a
    // fresh pool, and on one whose last tasks took 20 ms each.
    within(Duration::from_secs(120), || {
        for warm in [false, true, false, true] {
            let pool = Pool::new(2).unwrap();
            if warm {
                let slow: Vec<_> = (0..2).map(|_| pool.apply_async(sleep_ms, 20)).collect();
                for h in slow {
                    assert_eq!(h.get().unwrap(), 20);
                }
            }
            let go = Queue::<u8>::new().unwrap();
            let blocked = pool.apply_async(waits_for_signal, (go.clone(), 0));
            let quick: Vec<_> = (1..=10u64)
                .map(|x| pool.apply_async(waits_for_signal, (go.clone(), x)))
                .collect();
            // Hangs here (and fails) if more than one waits behind the blocked task.
            while quick.iter().filter(|h| h.ready()).count() < 9 {
                std::thread::sleep(Duration::from_millis(1));
            }
            go.put(1).unwrap();
            assert_eq!(blocked.get().unwrap(), 0, "warm: {warm}");
            for (x, h) in (1..).zip(quick) {
                assert_eq!(h.get().unwrap(), x);
            }
        }
    });
}

#[test]
fn a_dropped_handle_still_runs_its_callback_and_join_waits_for_it() {
    let pool = Pool::new(2).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..50u64 {
        let calls = Arc::clone(&calls);
        drop(pool.apply_async(sleep_ms, i % 3).on_success(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
        }));
    }
    pool.close();
    pool.join();
    assert_eq!(calls.load(Ordering::SeqCst), 50);
}

#[test]
fn dropping_a_pool_loses_no_submitted_work() {
    let calls = Arc::new(AtomicUsize::new(0));
    {
        let pool = Pool::new(2).unwrap();
        for _ in 0..10 {
            let calls = Arc::clone(&calls);
            drop(pool.apply_async(sleep_ms, 20).on_success(move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
            }));
        }
    } // dropped: closed and joined
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[test]
fn on_error_runs_for_a_panicking_task() {
    let pool = Pool::new(1).unwrap();
    let got = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&got);
    let r = pool
        .apply_async(panics_on_3, 3)
        .on_success(|_| panic!("on_success must not run"))
        .on_error(move |e| *slot.lock().unwrap() = Some((e.kind(), e.to_string())));
    let e = r.get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked);
    let (kind, text) = got.lock().unwrap().clone().unwrap();
    assert_eq!(kind, ErrorKind::Panicked);
    assert!(text.contains("three is not allowed"), "{text}");
    // A callback registered after completion runs at once, in this thread.
    let late = Arc::new(AtomicUsize::new(0));
    let l = Arc::clone(&late);
    let r = pool.apply_async(t1, 1);
    r.wait();
    let r = r.on_success(move |_| {
        l.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(late.load(Ordering::SeqCst), 1);
    assert_eq!(r.get().unwrap(), 10);
}

#[test]
fn a_panicking_callback_does_not_stop_result_handling() {
    let pool = Pool::new(1).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    drop(
        pool.apply_async(t1, 1)
            .on_success(|_| panic!("callback bug")),
    );
    for i in 0..5 {
        let calls = Arc::clone(&calls);
        let r = pool.apply_async(t1, i).on_success(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(r.get().unwrap(), i * 10);
    }
    pool.join();
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[test]
fn a_closed_pool_refuses_new_work() {
    let pool = Pool::new(1).unwrap();
    pool.close();
    assert_eq!(pool.map(t1, &[1]).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(pool.apply(t1, 1).unwrap_err().kind(), ErrorKind::Closed);
    let errors = Arc::new(AtomicUsize::new(0));
    let e2 = Arc::clone(&errors);
    let r = pool.apply_async(t1, 1).on_error(move |e| {
        assert_eq!(e.kind(), ErrorKind::Closed);
        e2.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(r.get().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(errors.load(Ordering::SeqCst), 1);
    let first = pool.imap(t1, [1u64, 2]).next().unwrap();
    assert_eq!(first.unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn terminate_kills_the_workers_and_fails_what_was_pending() {
    let pool = Pool::new(2).unwrap();
    let pids: BTreeSet<u32> = pool
        .map(whoami, &[0, 1, 2, 3])
        .unwrap()
        .into_iter()
        .collect();
    let pending: Vec<_> = (0..4).map(|_| pool.apply_async(sleep_ms, 30_000)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    pool.terminate();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "terminate waited for the tasks"
    );
    for r in pending {
        assert_eq!(r.get().unwrap_err().kind(), ErrorKind::Closed);
    }
    assert!(pids.iter().all(|&p| !common::process_exists(p)), "{pids:?}");
}

#[test]
fn imap_is_lazy_and_works_on_an_endless_iterator() {
    let pool = Pool::new(2).unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let first: Vec<u64> = pool
        .imap(t1, endless)
        .take(10)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, (0..10).map(|x| x * 10).collect::<Vec<_>>());
    // Only a bounded window was taken from the input.
    let n = pulled.load(Ordering::SeqCst);
    assert!(n < 100_000, "imap pulled {n} items for 10 results");
}

#[test]
fn imap_orders_and_imap_unordered_completes() {
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    let input = [300u64, 1, 2, 3];
    let ordered: Vec<u64> = pool.imap(sleep_ms, input).map(Result::unwrap).collect();
    assert_eq!(ordered, input);
    // Item 0 completes only after the parent has seen another result: in input order
    // this could not progress; unordered, it must.
    let q: Queue<u8> = Queue::new().unwrap();
    let args: Vec<(Queue<u8>, u64)> = (0..4).map(|x| (q.clone(), x)).collect();
    let mut results = pool.imap_unordered(waits_for_signal, args);
    let first = results.next().unwrap().unwrap();
    assert_ne!(first, 0, "the waiting item came first");
    q.put(1).unwrap();
    let mut all: Vec<u64> = results.map(Result::unwrap).collect();
    all.push(first);
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3]);
}

#[test]
fn imap_yields_an_error_in_place_and_carries_on() {
    let pool = Pool::new(2).unwrap();
    let out: Vec<_> = pool.imap(panics_on_3, 0u64..8).collect();
    assert_eq!(out.len(), 8);
    for (i, r) in out.iter().enumerate() {
        if i == 3 {
            let e = r.as_ref().unwrap_err();
            assert_eq!((e.kind(), e.task_index()), (ErrorKind::Panicked, Some(3)));
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
}

#[test]
fn max_tasks_per_worker_recycles_workers() {
    let pool = Pool::builder()
        .workers(1)
        .max_tasks_per_worker(5)
        .build()
        .unwrap();
    let pids: Vec<u32> = pool.map(whoami, &(0..20).collect::<Vec<u64>>()).unwrap();
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "{pids:?}");
    for run in pids.chunks(5) {
        assert!(run.iter().all(|&p| p == run[0]), "{pids:?}");
    }
}

#[test]
fn task_timeout_kills_the_worker_and_spares_the_others() {
    let pool = Pool::builder()
        .workers(2)
        .task_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let out: Vec<_> = pool.imap(sleep_ms, [10u64, 60_000, 20, 30]).collect();
    assert_eq!(*out[0].as_ref().unwrap(), 10);
    let e = out[1].as_ref().unwrap_err();
    assert_eq!(
        (e.kind(), e.task_index()),
        (ErrorKind::Timeout, Some(1)),
        "{e}"
    );
    assert_eq!(*out[2].as_ref().unwrap(), 20);
    assert_eq!(*out[3].as_ref().unwrap(), 30);
    let r = pool.apply_async(sleep_ms, 60_000);
    assert_eq!(r.get().unwrap_err().kind(), ErrorKind::Timeout);
    assert_eq!(pool.apply(t1, 2).unwrap(), 20);
}

/// Child half of the progress tests.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_maps_with_progress() {
    if !common::is_child() {
        return;
    }
    let pool = Pool::builder().workers(2).progress(true).build().unwrap();
    let data: Vec<u64> = (0..2000).collect();
    assert_eq!(pool.map(t1, &data).unwrap().len(), 2000);
    assert_eq!(pool.imap(t1, data).count(), 2000);
}

#[test]
fn progress_stays_out_of_piped_output_unless_forced() {
    let quiet = common::run_child_test("child_maps_with_progress", &[]);
    assert!(quiet.status.success());
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(!stderr.contains("items"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape sequences in piped stderr: {stderr:?}"
    );

    let forced = common::run_child_test(
        "child_maps_with_progress",
        &[("MULTIPROC_PROGRESS", "force")],
    );
    assert!(forced.status.success());
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(stderr.contains("2000/2000 items"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape sequences in piped stderr: {stderr:?}"
    );
}

/// Child half of `the_global_pool_shows_progress_when_asked`.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_par_maps() {
    if !common::is_child() {
        return;
    }
    let data: Vec<u64> = (0..1500).collect();
    assert_eq!(data.par_map(t1).unwrap().len(), 1500);
}

#[test]
fn the_global_pool_shows_progress_when_asked() {
    let off = common::run_child_test("child_par_maps", &[]);
    assert!(off.status.success());
    assert!(!String::from_utf8_lossy(&off.stderr).contains("items"));
    let on = common::run_child_test("child_par_maps", &[("MULTIPROC_PROGRESS", "force")]);
    assert!(on.status.success());
    let stderr = String::from_utf8_lossy(&on.stderr);
    assert!(stderr.contains("1500/1500 items"), "{stderr}");
}

/// Echoes its bytes back, after `ms` milliseconds.
#[parallel]
fn echo_after(ms: u64, bytes: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    std::thread::sleep(Duration::from_millis(ms));
    bytes
}

#[test]
fn big_frames_both_ways_through_the_socket_do_not_deadlock() {
    // Everything through the socket, frames of several socket buffers each way, and a
    // worker busy while the parent still has frames to write: neither side may wait for
    // the other to read.
    let out = within(Duration::from_secs(120), || {
        let pool = Pool::builder()
            .workers(1)
            .chunk_size(1)
            .shm_threshold(usize::MAX)
            .build()
            .unwrap();
        let items: Vec<(u64, serde_bytes::ByteBuf)> = (0..12u8)
            .map(|i| {
                (
                    u64::from(i % 3),
                    serde_bytes::ByteBuf::from(vec![i; 3 << 20]),
                )
            })
            .collect();
        pool.map(echo_after, &items).unwrap()
    });
    assert_eq!(out.len(), 12);
    for (i, b) in out.iter().enumerate() {
        assert!(
            b.len() == 3 << 20 && b.iter().all(|&x| x == i as u8),
            "item {i}"
        );
    }
}

#[test]
fn a_time_limit_holds_while_frames_wait_to_be_written() {
    // The first item never ends; the ones behind it are big frames the busy worker does
    // not read. The driver must still notice the time limit, not wait in a write.
    let out = within(Duration::from_secs(120), || {
        let pool = Pool::builder()
            .workers(1)
            .task_timeout(Duration::from_secs(1))
            .shm_threshold(usize::MAX)
            .build()
            .unwrap();
        let mut items = vec![(600_000u64, serde_bytes::ByteBuf::from(vec![1u8; 16]))];
        items.extend((0..3).map(|_| (0u64, serde_bytes::ByteBuf::from(vec![2u8; 4 << 20]))));
        pool.imap(echo_after, items).collect::<Vec<_>>()
    });
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(
        (e.kind(), e.task_index()),
        (ErrorKind::Timeout, Some(0)),
        "{e}"
    );
    for r in &out[1..] {
        assert_eq!(r.as_ref().unwrap().len(), 4 << 20);
    }
}
