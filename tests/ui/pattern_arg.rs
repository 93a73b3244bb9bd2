use multiproc::parallel;

#[parallel]
fn sum((a, b): (u64, u64)) -> u64 {
    a + b
}

#[parallel]
fn ignore(_: u64) -> u64 {
    0
}

fn main() {}
