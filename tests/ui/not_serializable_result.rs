use multiproc::parallel;

struct Opaque(u64);

#[parallel]
fn wrap(x: u64) -> Opaque {
    Opaque(x)
}

fn main() {}
