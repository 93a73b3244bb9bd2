//! The original post's last program: `apply_async` with a callback. The task `t2` runs in
//! a worker; the callback `t3` runs in the parent process, with `t2`'s result.
//!
//! Run it with `cargo run --release --example callback`.

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
fn t2(tmp: u64) -> u64 {
    println!("{tmp} starting; process id {}", std::process::id());
    std::thread::sleep(pause());
    println!("{tmp} end");
    tmp
}

/// The callback: runs in the parent process.
fn t3(tmp: &u64) {
    let tmp = tmp * 10;
    println!("{tmp} starting; process id {}", std::process::id());
    println!("{tmp} end");
}

fn main() -> multiproc::Result<()> {
    let l = [1, 2, 3, 4, 5, 6];
    let p = Pool::new(3)?;
    let mut res = Vec::new();
    for i in l {
        let r = p.apply_async(t2, i).on_success(t3); // t3 gets t2's result, in this process
        res.push(r.get()?);
    }
    p.close();
    p.join();
    println!("{} (the main process)", std::process::id());
    Ok(())
}
