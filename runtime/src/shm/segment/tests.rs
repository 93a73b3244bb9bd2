//! Segments made from bytes: what they hold, that a memfd is sealed, and a failed write.

use super::*;

#[test]
fn a_created_segment_holds_the_bytes_and_cannot_be_written() {
    let bytes: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i % 251) as u8).collect();
    for backend in [ShmBackend::Memfd, ShmBackend::Posix] {
        let seg = Segment::create(backend, &bytes).expect("create");
        assert_eq!(seg.bytes(), &bytes[..]);
        assert!(!seg.desc().writable);
        assert_eq!(seg.as_mut_ptr(), None);
    }
    let seg = Segment::create(ShmBackend::Memfd, &bytes).expect("create");
    let fd = seg.raw_fd().expect("a memfd has a descriptor");
    // SAFETY: F_GET_SEALS on an open memfd.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    assert_eq!(
        seals & (libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
        libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
    );
    // SAFETY: pwrite of one byte from a live buffer; the seal must refuse it.
    let wrote = unsafe { libc::pwrite(fd, [1u8].as_ptr().cast(), 1, 0) };
    assert_eq!(wrote, -1);
}

#[test]
fn an_empty_segment_is_fine() {
    let seg = Segment::create(ShmBackend::Memfd, &[]).expect("create");
    assert!(seg.bytes().is_empty());
}

#[test]
fn a_write_that_fails_is_an_error_that_says_so() {
    let file = std::fs::File::open("/proc/self/exe").expect("open our binary");
    let e = write_all_at(file.as_raw_fd(), &[1, 2, 3]).unwrap_err();
    assert!(
        e.to_string()
            .contains("writing 3 bytes into a shared-memory segment"),
        "{e}"
    );
}
