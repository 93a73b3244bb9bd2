//! The README's pool tour: `Pool`, callbacks, lazy `imap`, a configured pool,
//! `with_pool!` and `Process`.
//!
//! Run it with `cargo run --release --example pools`.

use std::time::Duration;

use multiproc::prelude::*;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

fn main() -> multiproc::Result<()> {
    let data: Vec<u64> = (0..1000).collect();

    let pool = Pool::new(3)?; // Pool(3)
    let r = pool
        .apply_async(t1, 5)
        .on_success(|v| println!("callback in the parent ({}): got {v}", std::process::id()));
    let all = pool.map(t1, &data)?; // ordered, chunked
    for r in pool.imap(t1, 0..).take(3) {
        println!("imap: {}", r?); // lazy: an endless input is fine
    }
    println!("apply_async: {}; map: {} results", r.get()?, all.len());
    pool.close();
    pool.join(); // every task done, every callback run

    let pool = Pool::builder()
        .workers(2)
        .chunk_size(64)
        .max_tasks_per_worker(1000) // recycle workers: leaked memory goes back to the OS
        .task_timeout(Duration::from_secs(5)) // kill and replace a stuck worker
        .progress(true) // a bar on stderr, when it is a terminal
        .build()?;
    println!("configured pool: {} results", pool.map(t1, &data)?.len());
    drop(pool); // closes and joins

    // `with Pool(3) as pool:` — par_map inside the block uses this pool.
    let v = with_pool!(3, |pool| {
        let r = pool.apply_async(t1, 5);
        let all = data.par_map(t1)?;
        r.get()? + all.iter().sum::<u64>()
    });
    println!("with_pool!: {v}");

    let p = Process::spawn(t1, 5)?; // Process(target=t1, args=(5,)).start()
    println!("child {} alive: {}", p.pid(), p.is_alive());
    println!("child returned {}", p.join()?);
    let d = Process::builder().daemon(true).spawn(t1, 6)?; // killed if still running at exit
    println!("daemon child {}", d.pid());
    Ok(())
}
