use multiproc::with_pool;

fn main() {
    let _ = with_pool!(0, |pool| pool.workers());
}
