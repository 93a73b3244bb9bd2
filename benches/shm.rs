//! Large data in detail: where the automatic shared-memory threshold pays off, and what
//! bytes cost in each form: a `serde_bytes::ByteBuf`, a `Vec<u8>` as the only argument
//! (sent as its bytes), and a `Vec<u8>` inside a tuple (serde encodes it byte by byte).
//! The headline figures (200 MB argument, 512 MiB `SharedSlice` sum) are in
//! `cargo bench --bench peers`.
//!
//! Run: `cargo bench --bench shm`.

#[path = "common/mod.rs"]
mod common;

use multiproc::prelude::*;
use serde_bytes::ByteBuf;

#[parallel]
fn byte_len(data: ByteBuf) -> usize {
    data.len()
}

#[parallel]
fn vec_len(data: Vec<u8>) -> usize {
    data.len()
}

#[parallel]
fn tupled_vec_len(data: Vec<u8>, _tag: u8) -> usize {
    data.len()
}

fn time_ms(runs: usize, f: impl FnMut()) -> f64 {
    common::median_secs(runs, f) * 1e3
}

fn threshold_table() -> multiproc::Result<()> {
    println!(
        "## one apply of a ByteBuf argument: through the socket vs through shared memory (ms)"
    );
    println!("{:>10} {:>12} {:>12}", "bytes", "socket", "shm");
    let socket = Pool::builder()
        .workers(1)
        .shm_threshold(usize::MAX)
        .build()?;
    let shm = Pool::builder().workers(1).shm_threshold(0).build()?;
    for kib in [16usize, 64, 256, 1024, 4096, 16384] {
        let arg = ByteBuf::from(vec![1u8; kib << 10]);
        let a = time_ms(21, || {
            socket.apply(byte_len, arg.clone()).expect("socket apply");
        });
        let b = time_ms(21, || {
            shm.apply(byte_len, arg.clone()).expect("shm apply");
        });
        println!("{:>10} {a:>12.3} {b:>12.3}", kib << 10);
    }
    Ok(())
}

fn vec_against_bytebuf() -> multiproc::Result<()> {
    const MB: usize = 200;
    let data = vec![b'x'; MB * 1000 * 1000];
    let pool = Pool::new(2)?;
    let bytes = [ByteBuf::from(data.clone()), ByteBuf::from(data.clone())];
    let as_bytes = time_ms(3, || {
        assert_eq!(pool.map(byte_len, &bytes).expect("map"), [data.len(); 2]);
    });
    let vecs = [data.clone(), data.clone()];
    let as_vec = time_ms(3, || {
        assert_eq!(pool.map(vec_len, &vecs).expect("map"), [data.len(); 2]);
    });
    drop(vecs);
    let tupled = [(data.clone(), 0), (data.clone(), 1)];
    let in_tuple = time_ms(3, || {
        assert_eq!(
            pool.map(tupled_vec_len, &tupled).expect("map"),
            [data.len(); 2]
        );
    });
    println!("\n## a {MB} MB argument to each of 2 workers (ms, median of 3)");
    println!("ByteBuf (bytes copied at once)     {as_bytes:>9.1}");
    println!("Vec<u8>, the only argument (same)  {as_vec:>9.1}");
    println!("Vec<u8> in a tuple (byte by byte)  {in_tuple:>9.1}");
    Ok(())
}

fn main() -> multiproc::Result<()> {
    threshold_table()?;
    vec_against_bytebuf()?;
    Ok(())
}
