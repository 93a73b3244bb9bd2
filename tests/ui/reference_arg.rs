use multiproc::parallel;

#[parallel]
fn len(s: &str) -> usize {
    s.len()
}

#[parallel]
fn first(v: &'static [u8]) -> &'static u8 {
    &v[0]
}

fn main() {}
