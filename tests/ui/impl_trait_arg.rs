use multiproc::parallel;

#[parallel]
fn show(x: impl std::fmt::Display) -> String {
    x.to_string()
}

#[parallel]
fn numbers(n: u32) -> impl Iterator<Item = u32> {
    0..n
}

fn main() {}
