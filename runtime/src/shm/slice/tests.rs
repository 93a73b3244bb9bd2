//! Range handles decode as writers only where a worker decodes a task's argument.

use super::*;

/// The wire bytes of a live range handle, as a hostile worker could send them back.
fn bytes_of(part: &SharedChunkMut<u64>) -> Vec<u8> {
    let (bytes, segments, leases) = crate::shm::collect(|| postcard::to_stdvec(part));
    assert_eq!(segments.len(), 1);
    assert_eq!(leases.len(), 1);
    bytes.expect("a range handle serializes into a chunk")
}

#[test]
fn a_range_handle_decodes_only_as_a_workers_argument_and_only_once() {
    let mut out = SharedSliceMut::<u64>::zeroed(16).expect("slice");
    let parts = out.chunks_mut(8).expect("ranges");
    let bytes = bytes_of(&parts[0]);
    // In a result, a queue message, a Shared value: refused.
    let e = postcard::from_bytes::<SharedChunkMut<u64>>(&bytes).err();
    assert!(
        e.is_some(),
        "a range handle decoded outside a task's argument"
    );
    // Not even as an argument in the process that made the slice (a result smuggled
    // back from a nested worker would be decoded in such a scope).
    let own = crate::shm::receiving(|| postcard::from_bytes::<SharedChunkMut<u64>>(&bytes));
    assert!(own.is_err(), "the slice's own process decoded a writer");
    // Here the test plays the worker that received the segment from its parent.
    let id = out.entry.segment.id();
    crate::shm::register_received(Arc::clone(&out.entry));
    // As a task's argument: one writer.
    let writer = crate::shm::receiving(|| postcard::from_bytes::<SharedChunkMut<u64>>(&bytes))
        .expect("decoded as an argument");
    // A second copy of the same bytes, while the first lives: refused.
    let second = crate::shm::receiving(|| postcard::from_bytes::<SharedChunkMut<u64>>(&bytes));
    assert!(second.is_err(), "two writers of one range");
    // The received handle cannot leave.
    let (again, _, leases) = crate::shm::collect(|| postcard::to_stdvec(&writer));
    assert!(again.is_err() && leases.is_empty());
    assert!(
        crate::shm::ranges_kept().is_some(),
        "the writer still lives"
    );
    drop(writer);
    assert!(crate::shm::ranges_kept().is_none());
    // Once it is gone, the range can be received again.
    let third = crate::shm::receiving(|| postcard::from_bytes::<SharedChunkMut<u64>>(&bytes));
    assert!(third.is_ok());
    drop(third);
    assert!(crate::shm::ranges_kept().is_none());
    crate::shm::release(&[id]);
}

#[test]
fn a_lent_range_is_idle_again_once_its_lease_is_dropped() {
    let mut out = SharedSliceMut::<u64>::zeroed(8).expect("slice");
    let parts = out.chunks_mut(8).expect("ranges");
    let (first, _, leases) = crate::shm::collect(|| postcard::to_stdvec(&parts[0]));
    assert!(first.is_ok());
    let (second, _, none) = crate::shm::collect(|| postcard::to_stdvec(&parts[0]));
    assert!(second.is_err() && none.is_empty(), "lent twice");
    // Outside a chunk for a worker: refused, and the range stays as it was.
    assert!(postcard::to_stdvec(&parts[0]).is_err());
    drop(leases);
    let (third, _, leases) = crate::shm::collect(|| postcard::to_stdvec(&parts[0]));
    assert!(third.is_ok());
    drop(parts);
    assert!(out.as_slice().is_err(), "readable while a lease lives");
    drop(leases);
    assert!(out.as_slice().is_ok());
}
