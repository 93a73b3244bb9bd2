//! An async service that hands its CPU work to worker processes: each request is a tokio
//! task that awaits an `apply_async` (a crash or a leak in the work stays in a worker),
//! a batch request awaits a `map_async`, and a request that takes too long is given up
//! with `tokio::time::timeout` while the server goes on.
//!
//! Run it with `cargo run --release --example async_server`.

use std::sync::Arc;
use std::time::Duration;

use multiproc::prelude::*;

/// The number of primes below `n`: CPU work the server does not want on its threads.
#[parallel]
fn primes_below(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

/// A request the server cannot answer in time.
#[parallel]
fn stuck(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Handles one request: offloads it and awaits the answer, within `limit`.
async fn handle(pool: Arc<Pool>, n: u64, limit: Duration) -> String {
    let work = pool.apply_async(primes_below, n);
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(count)) => format!("primes below {n}: {count}"),
        Ok(Err(e)) => format!("request {n} failed: {e}"),
        Err(_) => format!("request {n}: no answer within {limit:?}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> multiproc::Result<()> {
    let pool = Arc::new(Pool::new(2)?);

    // Requests served concurrently by one thread, their work in two processes.
    let requests: Vec<_> = [10_000, 20_000, 50_000, 100_000]
        .into_iter()
        .map(|n| tokio::spawn(handle(Arc::clone(&pool), n, Duration::from_secs(30))))
        .collect();
    for request in requests {
        println!(
            "{}",
            request.await.unwrap_or_else(|e| format!("failed: {e}"))
        );
    }

    // A batch request: one map_async, awaited.
    let batch = pool
        .map_async(primes_below, vec![100, 1_000, 10_000])
        .await?;
    println!("batch: {batch:?}");

    // A request given up after 100 ms; the server answers the next one meanwhile.
    let slow = pool.apply_async(stuck, 2_000);
    match tokio::time::timeout(Duration::from_millis(100), slow).await {
        Ok(r) => println!("slow request answered: {:?}", r?),
        Err(_) => println!("slow request: given up after 100 ms"),
    }
    println!(
        "{}",
        handle(Arc::clone(&pool), 1_000, Duration::from_secs(30)).await
    );
    Ok(())
}
