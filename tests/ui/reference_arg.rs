use multiproc::parallel;

// A lone `&str` or `&[u8]` argument is borrowed in place; other references are refused.
#[parallel]
fn first(v: &'static [u8]) -> &'static u8 {
    &v[0]
}

#[parallel]
fn total(v: &Vec<u64>) -> u64 {
    v.iter().sum()
}

#[parallel]
fn two(s: &str, n: u64) -> usize {
    s.len() + n as usize
}

#[parallel]
fn fine(s: &str) -> usize {
    s.len()
}

fn main() {}
