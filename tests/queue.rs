//! `Queue`: semantics in one process, across pools and processes, with killed
//! producers; and `pipeline`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use multiproc::prelude::*;
use multiproc::{ErrorKind, pipeline};

#[test]
fn put_get_len_and_try_get_in_one_process() {
    let q: Queue<String> = Queue::new().unwrap();
    assert!(q.is_empty());
    q.put("a".into()).unwrap();
    q.put("b".into()).unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q.get().unwrap(), "a");
    assert_eq!(q.try_get().unwrap().as_deref(), Some("b"));
    assert_eq!(q.try_get().unwrap(), None);
    assert_eq!(q.get_timeout(Duration::from_millis(50)).unwrap(), None);
}

#[test]
fn a_full_bounded_queue_blocks_put_until_there_is_room() {
    let q: Queue<u32> = Queue::bounded(2).unwrap();
    q.put(1).unwrap();
    q.put(2).unwrap();
    let e = q.put_timeout(3, Duration::from_millis(100)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    // The message comes back, and converts into a plain error for `?`.
    assert!(e.to_string().contains("given back"), "{e}");
    assert_eq!(e.into_value(), 3);
    let q2 = q.clone();
    let t = std::thread::spawn(move || q2.put(3)); // waits for room
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(q.get().unwrap(), 1);
    t.join().unwrap().unwrap();
    assert_eq!((q.get().unwrap(), q.get().unwrap()), (2, 3));
    assert_eq!(
        Queue::<u8>::bounded(0).unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
}

#[test]
fn close_semantics() {
    let q: Queue<u32> = Queue::new().unwrap();
    q.put(1).unwrap();
    q.put(2).unwrap();
    let waiter = {
        let q = Queue::<u32>::new().unwrap();
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.get());
        std::thread::sleep(Duration::from_millis(50));
        q.close();
        t
    };
    assert_eq!(
        waiter.join().unwrap().unwrap_err().kind(),
        ErrorKind::Closed
    );
    q.close();
    assert!(q.is_closed());
    assert_eq!(q.put(3).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(q.iter().collect::<Vec<_>>(), [1, 2]); // drains, then ends
    assert_eq!(q.get().unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn messages_of_any_size() {
    let q: Queue<Vec<u8>> = Queue::new().unwrap();
    let big = vec![7u8; 3 << 20];
    q.put(big.clone()).unwrap();
    q.put(vec![1]).unwrap();
    assert_eq!(q.get().unwrap(), big);
    assert_eq!(q.get().unwrap(), [1]);
    let huge = vec![9u8; 40 << 20]; // larger than the ring itself
    q.put(huge.clone()).unwrap();
    assert_eq!(q.get().unwrap(), huge);
}

#[parallel]
fn produce(q: Queue<u64>, producer: u64, n: u64) -> u64 {
    for i in 0..n {
        q.put(producer * 1_000_000 + i).unwrap();
    }
    n
}

#[parallel]
fn consume(q: Queue<u64>) -> Vec<u64> {
    q.iter().collect()
}

#[test]
fn every_message_is_delivered_exactly_once_with_4_producers_and_3_consumers() {
    let q: Queue<u64> = Queue::bounded(1000).unwrap();
    let consumers = Pool::new(3).unwrap();
    let pending: Vec<_> = (0..3)
        .map(|_| consumers.apply_async(consume, q.clone()))
        .collect();
    let producers = Pool::new(2).unwrap();
    let args: Vec<(Queue<u64>, u64, u64)> = (0..4).map(|p| (q.clone(), p, 5_000)).collect();
    assert_eq!(producers.map(produce, &args).unwrap(), [5_000; 4]);
    q.close();
    let mut all = Vec::new();
    for r in pending {
        all.extend(r.get().unwrap());
    }
    assert_eq!(all.len(), 20_000, "lost or duplicated messages");
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 20_000);
}

#[parallel]
fn produce_forever(q: Queue<(u64, u64)>) {
    let mut i = 0u64;
    loop {
        // A checkable message: a killed producer must never leave half of one behind.
        if q.put((i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).is_err() {
            return;
        }
        i += 1;
    }
}

#[test]
fn killing_producers_in_a_loop_neither_corrupts_nor_deadlocks_the_queue() {
    let q: Queue<(u64, u64)> = Queue::bounded(64).unwrap();
    let mut received = 0u64;
    for round in 0..20u64 {
        let p = Process::spawn(produce_forever, q.clone()).unwrap();
        // Let it fill the queue and block, or be in the middle of a put.
        for _ in 0..(round % 5) * 10 {
            if let Some((i, check)) = q.get_timeout(Duration::from_secs(30)).unwrap() {
                assert_eq!(check, i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                received += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(round % 3));
        p.kill().unwrap();
        assert!(p.join().is_err());
        // Drain what it left: every message whole.
        while let Some((i, check)) = q.try_get().unwrap() {
            assert_eq!(check, i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            received += 1;
        }
    }
    // Still usable by everyone.
    q.put((1, 0x9e37_79b9_7f4a_7c15)).unwrap();
    assert_eq!(q.get().unwrap(), (1, 0x9e37_79b9_7f4a_7c15));
    assert!(received > 0);
}

#[parallel]
fn put_pid(q: Queue<u32>) {
    q.put(std::process::id()).unwrap();
}

#[test]
fn queue_handles_travel_through_process_and_with_pool() {
    let q: Queue<u32> = Queue::new().unwrap();
    let p = Process::spawn(put_pid, q.clone()).unwrap();
    let child = p.pid();
    p.join().unwrap();
    assert_eq!(q.get().unwrap(), child);
    let handles = vec![q.clone(); 4];
    with_pool!(2, { handles.par_map(put_pid).unwrap() });
    let pids: Vec<u32> = (0..4).map(|_| q.get().unwrap()).collect();
    assert!(pids.iter().all(|&p| p != std::process::id()));
}

#[parallel]
fn parse(line: String) -> u64 {
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {line:?}"))
}

#[parallel]
fn score(x: u64) -> u64 {
    x * x
}

#[test]
fn a_pipeline_keeps_order_by_default_and_can_be_unordered() {
    let lines: Vec<String> = (0..500).map(|i| format!(" {i} ")).collect();
    // The adapters are named in `multiproc::pipeline`; the function stays at the root.
    use multiproc::pipeline::{Pipeline, Source, Stage};
    type Parsed = Stage<Source<std::vec::IntoIter<String>>, String, u64>;
    let staged: Pipeline<Stage<Parsed, u64, u64>> =
        pipeline(lines.clone()).stage(parse, 2).stage(score, 2);
    let out = staged.collect().unwrap();
    assert_eq!(out, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered = pipeline(lines)
        .unordered()
        .stage(parse, 2)
        .stage(score, 2)
        .collect()
        .unwrap();
    unordered.sort_unstable();
    assert_eq!(unordered, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn a_panicking_stage_is_an_error_naming_the_stage_and_the_item() {
    let lines = vec!["1".to_string(), "2".into(), "three".into(), "4".into()];
    let e = pipeline(lines)
        .stage(parse, 2)
        .stage(score, 2)
        .collect()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
    assert_eq!(e.task_index(), Some(2), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("stage 1") && text.contains("parse") && text.contains("three"),
        "{text}"
    );
    // An endless input works too: the pipeline pulls lazily.
    let first: Vec<u64> = pipeline((0u64..).map(|i| i.to_string()))
        .stage(parse, 2)
        .stage(score, 1)
        .into_iter()
        .take(5)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, [0, 1, 4, 9, 16]);
}

#[test]
fn put_timeout_gives_the_message_back_from_a_closed_queue_and_try_get_says_closed() {
    let q: Queue<String> = Queue::new().unwrap();
    q.put("kept".to_owned()).unwrap();
    q.close();
    let rejected = q
        .put_timeout("late".to_owned(), Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(rejected.kind(), ErrorKind::Closed);
    let (error, value) = rejected.into_parts();
    assert_eq!((error.kind(), value.as_str()), (ErrorKind::Closed, "late"));
    let as_error: multiproc::Error = q
        .put_timeout("x".to_owned(), Duration::ZERO)
        .unwrap_err()
        .into();
    assert_eq!(as_error.kind(), ErrorKind::Closed);
    // A closed queue still gives what is left, then says it is closed.
    assert_eq!(q.try_get().unwrap().as_deref(), Some("kept"));
    assert_eq!(q.try_get().unwrap_err().kind(), ErrorKind::Closed);
}
