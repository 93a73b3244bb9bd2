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
    let fd = seg.fd().expect("a memfd has a descriptor");
    use rustix::fs::SealFlags;
    let seals = rustix::fs::fcntl_get_seals(fd).expect("its seals");
    assert!(seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW));
    // The seal refuses a write.
    assert!(rustix::io::pwrite(fd, &[1u8], 0).is_err());
}

#[test]
fn an_empty_segment_is_fine() {
    let seg = Segment::create(ShmBackend::Memfd, &[]).expect("create");
    assert!(seg.bytes().is_empty());
}

#[test]
fn a_write_that_fails_is_an_error_that_says_so() {
    let file = std::fs::File::open("/proc/self/exe").expect("open our binary");
    let e = write_all_at(&file, &[1, 2, 3], 0).unwrap_err();
    assert!(
        e.to_string()
            .contains("writing 3 bytes into a shared-memory segment"),
        "{e}"
    );
}

#[test]
fn named_segments_have_short_names_that_say_who_made_them() {
    let seg = Segment::create(ShmBackend::Posix, b"named").expect("create");
    let name = seg.desc().name.clone().expect("a named segment");
    assert_eq!(creator_of(&name), Some(std::process::id()));
    // The longest such name, with its leading slash, is within the 31 characters macOS
    // allows.
    let longest = format!("/{NAME_PREFIX}{:x}-{:016x}", u32::MAX, u64::MAX);
    assert!(longest.len() <= 31, "{longest}");
    assert_eq!(
        std::fs::metadata(format!("/dev/shm/{name}"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .ok(),
        Some(0o600)
    );
    let opened = Segment::open(seg.desc().clone(), None).expect("open by name");
    assert_eq!(opened.bytes(), b"named");
    drop(opened);
    drop(seg);
    assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists());
}

#[test]
fn a_filled_segment_keeps_its_id_and_is_sealed_read_only() {
    for backend in [ShmBackend::Memfd, ShmBackend::Posix] {
        let seg = Segment::filled(backend, 0xfeed, 5, |into| {
            into.copy_from_slice(b"hello");
            Ok(())
        })
        .expect("filled");
        assert_eq!(seg.id(), 0xfeed);
        assert_eq!(seg.bytes(), b"hello");
        assert!(!seg.desc().writable);
        assert!(seg.as_mut_ptr().is_none());
        if let Some(fd) = seg.fd() {
            // Sealed: nobody can write it any more, through any descriptor.
            assert!(write_all_at(&fd, b"x", 0).is_err());
        }
        let opened = Segment::open(
            seg.desc().clone(),
            seg.fd().map(|fd| fd.try_clone_to_owned().unwrap()),
        )
        .expect("open");
        assert_eq!(opened.bytes(), b"hello");
    }
    let failed = Segment::filled(ShmBackend::Memfd, 1, 3, |_| {
        Err(Error::new(ErrorKind::Io, "no bytes came"))
    });
    assert_eq!(failed.unwrap_err().message(), "no bytes came");
}

#[test]
fn a_growing_segment_holds_its_pieces_in_order_and_is_sealed() {
    let mut growing = Growing::new().expect("new");
    let pieces: [&[u8]; 3] = [b"head", &[7u8; 3 * 4096 + 5], b"tail"];
    for piece in pieces {
        growing.append(piece).expect("append");
    }
    assert_eq!(growing.len(), pieces.iter().map(|p| p.len() as u64).sum());
    let seg = growing.seal().expect("seal");
    assert_eq!(seg.bytes(), pieces.concat());
    assert!(!seg.desc().writable);
    let fd = seg.fd().expect("a memfd has a descriptor");
    use rustix::fs::SealFlags;
    let seals = rustix::fs::fcntl_get_seals(fd).expect("its seals");
    assert!(seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW));
    assert!(rustix::io::pwrite(fd, &[1u8], 0).is_err());
}
