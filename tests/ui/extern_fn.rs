use multiproc::parallel;

#[parallel]
extern "C" fn callback(x: u64) -> u64 {
    x
}

fn main() {}
