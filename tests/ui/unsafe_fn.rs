use multiproc::parallel;

#[parallel]
unsafe fn deref(p: usize) -> u8 {
    unsafe { *(p as *const u8) }
}

fn main() {}
