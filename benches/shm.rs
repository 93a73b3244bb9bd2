//! Large data in detail: where the automatic shared-memory threshold pays off, and what
//! bytes cost in each form: a `serde_bytes::ByteBuf`, a `Vec<u8>` as the only argument
//! (sent as its bytes), and a `Vec<u8>` inside a tuple (serde encodes it byte by byte).
//! Then what the soundness rules cost: a `SharedSliceMut` filled by workers (each range
//! lent to its task until it answers) and large `Queue` messages (each in a named
//! segment that lives as long as the queue does). The headline figures (200 MB argument,
//! 512 MiB `SharedSlice` sum) are in `cargo bench --bench peers`.
//!
//! Run: `cargo bench --bench shm` (`SHM_BENCH_ONLY_COSTS=1`: only the last two parts).

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

#[parallel]
fn fill_range(mut part: SharedChunkMut<f64>) -> usize {
    let start = part.offset();
    for (i, x) in part.iter_mut().enumerate() {
        *x = (start + i) as f64;
    }
    part.len()
}

#[parallel]
fn put_messages(q: Queue<ByteBuf>, n: u64) -> u64 {
    for _ in 0..n {
        q.put(ByteBuf::from(vec![7u8; 1 << 20])).expect("put");
    }
    n
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

fn shared_slice_mut_fill() -> multiproc::Result<()> {
    const LEN: usize = 8 << 20; // 64 MiB of f64
    let pool = Pool::new(2)?;
    let mut out = SharedSliceMut::<f64>::zeroed(LEN)?;
    println!("\n## a 64 MiB SharedSliceMut<f64> filled by 2 workers (ms, median of 11)");
    for ranges in [16usize, 1024] {
        let ms = time_ms(11, || {
            let parts = out.chunks_mut(LEN / ranges).expect("ranges");
            let filled: usize = pool.map(fill_range, &parts).expect("map").iter().sum();
            assert_eq!(filled, LEN);
            drop(parts);
            assert_eq!(out.as_slice().expect("readable")[LEN - 1], (LEN - 1) as f64);
        });
        println!("{ranges:>5} ranges  {ms:>9.2}");
    }
    Ok(())
}

fn queue_large_messages() -> multiproc::Result<()> {
    const N: u64 = 200;
    println!("\n## {N} queue messages of 1 MiB (each in a segment of its own; ms per message)");
    let q: Queue<ByteBuf> = Queue::new()?;
    let message = ByteBuf::from(vec![7u8; 1 << 20]);
    let here = time_ms(5, || {
        for _ in 0..N {
            q.put(message.clone()).expect("put");
        }
        for _ in 0..N {
            assert_eq!(q.get().expect("get").len(), 1 << 20);
        }
    }) / N as f64;
    println!("put then get, one process             {here:>7.3}");
    let across = time_ms(5, || {
        let producer = Process::spawn(put_messages, (q.clone(), N)).expect("spawn");
        for _ in 0..N {
            assert_eq!(q.get().expect("get").len(), 1 << 20);
        }
        assert_eq!(producer.join().expect("join"), N);
    }) / N as f64;
    println!("a child puts, the parent gets         {across:>7.3}");
    Ok(())
}

fn main() -> multiproc::Result<()> {
    if std::env::var_os("SHM_BENCH_ONLY_COSTS").is_none() {
        threshold_table()?;
        vec_against_bytebuf()?;
    }
    shared_slice_mut_fill()?;
    queue_large_messages()?;
    Ok(())
}
