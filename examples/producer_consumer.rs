//! The original post's producer/consumer program: two producer workers put numbers into a
//! `Queue`; the parent drains it into a pool of two consumers. Every line prints its pid.
//!
//! Run it with `cargo run --release --example producer_consumer`.

use std::time::Duration;

use multiproc::prelude::*;

/// A pseudo-random pause of `lo`–`hi` ms (the original sleeps whole seconds).
fn pause(lo: u64, hi: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(lo + u64::from(nanos ^ std::process::id()) % (hi - lo))
}

/// The producer, the first stage of the work.
#[parallel]
fn producer(q: Queue<u64>, num: u64) {
    if let Err(e) = q.put(num) {
        eprintln!("{} could not put {num}: {e}", std::process::id());
        return;
    }
    std::thread::sleep(pause(100, 300)); // producers are the faster stage
    println!("{} put {num} into the queue", std::process::id());
}

/// The consumer, the second stage.
#[parallel]
fn consumer(num: u64) {
    let res = num * 10;
    std::thread::sleep(pause(300, 600)); // consumers are the slower stage
    println!("{} took {num} out and made {res}", std::process::id());
}

fn main() -> multiproc::Result<()> {
    let q: Queue<u64> = Queue::new()?; // unlike Python, no Manager() is needed
    let p1 = Pool::new(2)?; // the producers
    let p2 = Pool::new(2)?; // the consumers

    for i in [1, 2, 3, 4, 5, 6] {
        drop(p1.apply_async(producer, (q.clone(), i)));
    }
    p1.close();
    p1.join();

    while let Some(tmp) = q.try_get()? {
        drop(p2.apply_async(consumer, tmp));
    }
    p2.close();
    p2.join();

    println!("main ({})", std::process::id());
    Ok(())
}
