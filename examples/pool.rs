//! The original post's second program: `Pool(3)`, six `apply_async(t1, i).get()`, then
//! `close`, `join`, and the results. The same three worker processes run all six tasks.
//!
//! Run it with `cargo run --release --example pool`.

use std::time::Duration;

use multiproc::prelude::*;

/// A pseudo-random pause of 100–300 ms (the original sleeps 1–2 s).
fn pause() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(100 + u64::from((nanos ^ std::process::id()) % 200))
}

#[parallel]
fn t1(tmp: u64) -> u64 {
    println!("{tmp} starting; process id {}", std::process::id());
    std::thread::sleep(pause());
    let tmp = tmp * 10;
    println!("{tmp} end");
    tmp
}

fn main() -> multiproc::Result<()> {
    let p = Pool::new(3)?; // three worker processes, reused for every task
    let mut res = Vec::new();
    for i in 0..6 {
        let r = p.apply_async(t1, i); // the asynchronous version of apply()
        res.push(r.get()?); // get() waits for the result
    }
    p.close();
    p.join();
    println!("################################");
    for j in res {
        println!("{j}");
    }
    Ok(())
}
