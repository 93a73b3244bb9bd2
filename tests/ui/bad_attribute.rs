use multiproc::parallel;

#[parallel(workers = 3)]
fn t1(x: u64) -> u64 {
    x
}

#[parallel]
struct NotAFunction;

fn main() {}
