use multiproc::{parallel, SharedChunkMut};

#[parallel]
fn passthru(p: SharedChunkMut<u64>) -> SharedChunkMut<u64> {
    p
}

#[parallel]
fn nested(p: SharedChunkMut<u64>) -> (u64, Option<multiproc::SharedChunkMut<u64>>) {
    (1, Some(p))
}

fn main() {}
