//! The same program on one machine, or on every rank of an MPI job, with no line
//! changed: under a launcher, `par_map` outside a `with_pool!` runs on every rank.
//!
//! On one machine: `cargo run --release --example cluster`.
//! On a cluster (see the README's "Running on a cluster"):
//!
//! ```text
//! cargo build --release --features mpi --example cluster
//! mpirun -n 3 --hostfile hosts target/release/examples/cluster
//! ```
//!
//! Standard output is the same either way; standard error says where the tasks ran.

use std::collections::BTreeSet;

use multiproc::prelude::*;

/// Steps of the Collatz sequence from `n` down to 1: uneven work per item.
#[parallel]
fn collatz_steps(n: u64) -> u32 {
    let (mut n, mut steps) = (n, 0);
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

/// Every rank receives the table once, whatever number of tasks use it.
#[parallel]
fn weigh(table: Shared<Vec<u64>>, i: usize) -> u64 {
    table.iter().skip(i).step_by(97).sum()
}

/// Where a task ran: the rank (under a launcher) and the host. Each takes a moment, as
/// real work does, so that every rank gets some.
#[parallel]
fn place(item: u32) -> String {
    let _ = item;
    std::thread::sleep(std::time::Duration::from_millis(2));
    let rank = std::env::var("OMPI_COMM_WORLD_RANK")
        .or_else(|_| std::env::var("PMI_RANK"))
        .or_else(|_| std::env::var("SLURM_PROCID"))
        .unwrap_or_else(|_| "-".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("rank {rank} on {}", host.trim())
}

fn main() -> multiproc::Result<()> {
    let numbers: Vec<u64> = (1..=300_000).collect();
    let steps = numbers.par_map(collatz_steps)?;
    let (longest, from) = steps
        .iter()
        .zip(&numbers)
        .max_by_key(|(s, n)| (**s, std::cmp::Reverse(**n)))
        .map(|(s, n)| (*s, *n))
        .unwrap_or_default();
    println!("longest Collatz chain up to 300000: {longest} steps, from {from}");
    println!(
        "total steps: {}",
        steps.iter().map(|&s| u64::from(s)).sum::<u64>()
    );

    let table = Shared::new(
        (0..1_000_000u64)
            .map(|x| x * x % 1_000_003)
            .collect::<Vec<_>>(),
    )?;
    let jobs: Vec<(Shared<Vec<u64>>, usize)> = (0..97).map(|i| (table.clone(), i)).collect();
    let weights = jobs.par_map(weigh)?;
    println!(
        "table weights: first {}, sum {}",
        weights[0],
        weights.iter().sum::<u64>()
    );

    let places: BTreeSet<String> = (0..256u32)
        .collect::<Vec<_>>()
        .par_map(place)?
        .into_iter()
        .collect();
    eprintln!(
        "tasks ran on: {}",
        places.into_iter().collect::<Vec<_>>().join("; ")
    );
    Ok(())
}
