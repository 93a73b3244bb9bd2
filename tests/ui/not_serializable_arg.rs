use multiproc::parallel;

struct Opaque(u64);

#[parallel]
fn unwrap(a: u64, x: Opaque) -> u64 {
    a + x.0
}

fn main() {}
