use multiproc::with_pool;

fn main() {
    let _ = with_pool!(2);
    let _ = with_pool!();
}
