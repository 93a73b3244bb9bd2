//! Large data through shared memory: a big argument that travels automatically, a
//! `Shared<T>` read by every worker, a `SharedSlice<f64>` summed in zero-copy views, and a
//! `SharedSliceMut<f64>` that workers fill in place.
//!
//! Run it with `cargo run --release --example shared_memory`.

use std::collections::HashMap;

use multiproc::prelude::*;
use serde_bytes::ByteBuf;

/// A large argument (here 8 MB) goes through a one-shot shared-memory segment by itself.
#[parallel]
fn count_zeros(data: ByteBuf) -> usize {
    data.iter().filter(|&&b| b == 0).count()
}

/// Each worker deserializes the table once, however many tasks use it.
#[parallel]
fn lookup(table: Shared<HashMap<u64, String>>, key: u64) -> Option<String> {
    table.get(&key).cloned()
}

/// Reads its view of the slice straight from the shared pages: no copy.
#[parallel]
fn sum(part: SharedSlice<f64>) -> f64 {
    part.iter().sum()
}

/// Writes its own range of the output, in place.
#[parallel]
fn squares(mut part: SharedChunkMut<f64>) {
    let start = part.offset();
    for (i, x) in part.iter_mut().enumerate() {
        *x = ((start + i) as f64).powi(2);
    }
}

fn main() -> multiproc::Result<()> {
    let pool = Pool::new(2)?;

    let blob = ByteBuf::from(vec![0u8; 8 << 20]);
    println!("zeros in 8 MB: {}", pool.apply(count_zeros, blob)?);

    let table = Shared::new(
        (0..100_000u64)
            .map(|k| (k, format!("v{k}")))
            .collect::<HashMap<_, _>>(),
    )?;
    let keys: Vec<(Shared<HashMap<u64, String>>, u64)> = [7, 99_999, 123_456]
        .into_iter()
        .map(|k| (table.clone(), k))
        .collect();
    println!("lookups: {:?}", pool.map(lookup, &keys)?);

    let floats: Vec<f64> = (0..10_000_000).map(|i| i as f64).collect();
    let xs = SharedSlice::from_slice(&floats)?;
    let total: f64 = pool.map(sum, &xs.views(1 << 20)?)?.iter().sum();
    println!("sum of 10M floats in views: {total}");

    let mut out = SharedSliceMut::<f64>::zeroed(1_000)?;
    let parts = out.chunks_mut(100)?;
    pool.map(squares, &parts)?;
    drop(parts); // the parent may read once no range handle is left
    let values = out.as_slice()?;
    println!(
        "squares filled by the workers: {:?} … {}",
        &values[..4],
        values[999]
    );
    Ok(())
}
