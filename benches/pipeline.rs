//! A 2-stage `pipeline` beside the same two stages run as two `par_map`s, on 200k items.
//!
//! Run: `cargo bench --bench pipeline`.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::median;
use multiproc::pipeline;
use multiproc::prelude::*;

/// Some work per item, so the stages are worth running in parallel.
#[parallel]
fn stage_a(x: u64) -> u64 {
    (0..200u64).fold(x, |h, i| {
        h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i)
    })
}

#[parallel]
fn stage_b(x: u64) -> u64 {
    (0..200u64).fold(x, |h, i| h.rotate_left(7) ^ i)
}

fn main() -> multiproc::Result<()> {
    let pool = Pool::new(2)?;
    let items: Vec<u64> = (0..200_000).collect();
    let two_maps = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let a = pool.map(stage_a, &items).expect("map a");
                let b = pool.map(stage_b, &a).expect("map b");
                assert_eq!(b.len(), items.len());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let piped = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let out = pipeline(items.iter().copied())
                    .stage(stage_a, 1)
                    .stage(stage_b, 1)
                    .collect()
                    .expect("pipeline");
                assert_eq!(out.len(), items.len());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    println!("## 200k items through two stages (ms, median of 3)");
    println!("two par_maps on a 2-worker pool   {two_maps:>9.1}");
    println!("pipeline, 1 worker per stage      {piped:>9.1}");
    Ok(())
}
