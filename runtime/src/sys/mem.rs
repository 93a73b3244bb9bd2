//! Advice about our own memory.

/// Asks for the pages of `buf`'s spare capacity that fill whole 2 MiB pages to be
/// transparent huge pages: one page fault per 2 MiB instead of one per 4 KiB while a
/// large copy lands in fresh memory. Only advice: without transparent huge pages, or if
/// the kernel refuses, nothing changes.
pub(crate) fn advise_huge_spare(buf: &mut Vec<u8>) {
    const HUGE_PAGE: usize = 2 << 20;
    let spare = buf.spare_capacity_mut();
    let start = spare.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + spare.len()) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        // SAFETY: madvise only advises on pages of our own allocation (the whole
        // 2 MiB-aligned stretch lies inside the vector's spare capacity, which the
        // mutable borrow keeps alive and unaliased); MADV_HUGEPAGE moves, frees and
        // changes the contents of nothing, and its failure changes nothing.
        let _ = unsafe {
            rustix::mm::madvise(
                first as *mut std::ffi::c_void,
                end - first,
                rustix::mm::Advice::LinuxHugepage,
            )
        };
    }
}
