//! Our own memory: advice to the kernel, and how much we use.

/// Asks for the pages of `buf`'s spare capacity that fill whole 2 MiB pages to be
/// transparent huge pages: one page fault per 2 MiB instead of one per 4 KiB while a
/// large copy lands in fresh memory. Only advice: without transparent huge pages, or if
/// the kernel refuses, nothing changes.
pub(crate) fn advise_huge_spare<T>(buf: &mut Vec<T>) {
    const HUGE_PAGE: usize = 2 << 20;
    let spare = buf.spare_capacity_mut();
    let start = spare.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + size_of_val(spare)) / HUGE_PAGE * HUGE_PAGE;
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

/// This process's private resident memory, in bytes: its resident pages that are
/// neither file-backed (its code) nor shared memory (segments a parent mapped into it),
/// from `/proc/self/statm`. `None` if that cannot be read.
pub(crate) fn private_resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_ascii_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared) * rustix::param::page_size() as u64)
}

/// `bytes` for people: `512 B`, `3.0 KiB`, `256.0 MiB`, `1.5 GiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_resident_memory_grows_with_a_touched_allocation() {
        let before = private_resident().unwrap();
        let buf = vec![1u8; 64 << 20];
        let after = private_resident().unwrap();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        drop(buf);
    }

    #[test]
    fn sizes_are_written_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 10), "3.0 KiB");
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
