//! The original post's first program: three `Process`es, started and not joined. The
//! parent prints first; the children still finish, because returning from `main` waits
//! for non-daemon children, as in Python.
//!
//! Run it with `cargo run --release --example process`.

use std::time::Duration;

use multiproc::prelude::*;

/// A pseudo-random pause of 100–500 ms (the original sleeps 1–4 s).
fn pause() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(100 + u64::from((nanos ^ std::process::id()) % 400))
}

#[parallel]
fn t1(tmp: u32) {
    println!("{tmp} starting; process id {}", std::process::id());
    std::thread::sleep(pause());
    println!("{tmp} end");
}

fn main() -> multiproc::Result<()> {
    for i in 0..3 {
        let _p = Process::spawn(t1, i)?; // started; the handle is dropped, not joined
    }
    println!("main process, process id {}", std::process::id());
    Ok(())
}
