use multiproc::prelude::*;

fn t1(x: u64) -> u64 {
    x * 10
}

fn main() {
    let data: Vec<u64> = (0..10).collect();
    let _ = data.par_map(t1);
}
