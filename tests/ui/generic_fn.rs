use multiproc::parallel;

#[parallel]
fn twice<T: Clone>(x: T) -> (T, T) {
    (x.clone(), x)
}

#[parallel]
fn bounded(x: u64) -> u64
where
    u64: Copy,
{
    x
}

fn main() {}
