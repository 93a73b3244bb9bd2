//! The ring on ordinary memory: limits, wrap-around, `len` and `close`.

use super::*;

/// A ring in ordinary memory, zeroed and page-aligned, with `data` bytes of ring.
struct Heap {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    ring: Ring,
}

impl Heap {
    fn new(data: usize, max_count: u64) -> Heap {
        let layout =
            std::alloc::Layout::from_size_align(HEADER_BYTES + data, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        // SAFETY: `ptr` maps `layout.size()` zeroed, page-aligned bytes until `drop`.
        let ring = unsafe { Ring::new(ptr, layout.size()) };
        ring.init(max_count);
        Heap { ptr, layout, ring }
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn get(ring: &Ring) -> Result<Vec<u8>, Stop> {
    ring.get_with(Some(Instant::now()), <[u8]>::to_vec)
}

#[test]
fn the_capacity_is_the_largest_power_of_two_that_fits() {
    let heap = Heap::new(3000, 0);
    assert_eq!(heap.ring.capacity(), 2048);
    assert_eq!(heap.ring.put(&[0; 2045], None), Err(Stop::TooLarge));
    assert_eq!(heap.ring.put(&[7; 2044], None), Ok(()));
    assert_eq!(get(&heap.ring), Ok(vec![7; 2044]));
}

#[test]
fn offsets_and_counts_wrap_around_their_words() {
    let heap = Heap::new(1024, 0);
    let h = heap.ring.header();
    // Both sides just short of the wrap of their offset and count words.
    let start = pack(OFFSET_MASK - 40, COUNT_MASK - 3);
    for side in [&h.producers, &h.consumers] {
        side.committed.store(start, Ordering::Relaxed);
        side.seen.store(start, Ordering::Relaxed);
    }
    assert_eq!(heap.ring.len(), 0);
    for round in 0..200u32 {
        let msgs: Vec<Vec<u8>> = (0..5u32)
            .map(|i| vec![(round * 5 + i) as u8; ((round + i) % 97) as usize])
            .collect();
        for m in &msgs {
            heap.ring.put(m, None).expect("put");
        }
        assert_eq!(heap.ring.len(), 5);
        for m in &msgs {
            assert_eq!(get(&heap.ring).as_ref(), Ok(m));
        }
        assert_eq!(heap.ring.len(), 0);
        assert_eq!(get(&heap.ring), Err(Stop::TimedOut));
    }
    let tail = h.producers.committed.load(Ordering::Relaxed);
    assert!(offset(tail) < offset(start) && count(tail) < count(start));
}

#[test]
fn a_full_ring_by_count_or_by_bytes_refuses_until_a_get() {
    let heap = Heap::new(256, 3);
    for i in 0..3u8 {
        heap.ring.put(&[i], None).expect("put");
    }
    let soon = Some(Instant::now() + Duration::from_millis(20));
    assert_eq!(heap.ring.put(&[3], soon), Err(Stop::TimedOut));
    assert_eq!(get(&heap.ring), Ok(vec![0]));
    assert_eq!(heap.ring.put(&[3], None), Ok(()));

    let heap = Heap::new(256, 0);
    heap.ring.put(&[1; 200], None).expect("put");
    let soon = Some(Instant::now() + Duration::from_millis(20));
    assert_eq!(heap.ring.put(&[2; 60], soon), Err(Stop::TimedOut));
    assert_eq!(get(&heap.ring), Ok(vec![1; 200]));
    assert_eq!(heap.ring.put(&[2; 60], None), Ok(()));
}

#[test]
fn len_never_counts_more_than_was_put_while_both_sides_run() {
    let heap = Heap::new(1 << 16, 0);
    let ring = &heap.ring;
    const N: u64 = 200_000;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..N {
                ring.put(&i.to_le_bytes(), None).expect("put");
            }
        });
        for i in 0..N {
            let got = ring
                .get_with(None, |m| u64::from_le_bytes(m.try_into().expect("8 bytes")))
                .expect("get");
            assert_eq!(got, i);
            let len = ring.len();
            assert!(len < N - i, "len {len} after {} gets of {N}", i + 1);
        }
    });
    assert_eq!(ring.len(), 0);
}

#[test]
fn close_wakes_a_sleeping_consumer_and_keeps_what_was_put() {
    let heap = Heap::new(1024, 0);
    let ring = &heap.ring;
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let first = ring.get_with(None, <[u8]>::to_vec);
            let second = ring.get_with(None, <[u8]>::to_vec);
            (first, second)
        });
        std::thread::sleep(Duration::from_millis(50));
        ring.put(b"last", None).expect("put");
        ring.close();
        let (first, second) = waiter.join().expect("consumer thread");
        assert_eq!(first, Ok(b"last".to_vec()));
        assert_eq!(second, Err(Stop::Closed));
    });
    assert_eq!(ring.put(b"late", None), Err(Stop::Closed));
}

/// A ring in a file that another process maps too, with `data` bytes of ring.
struct FileRing {
    ptr: *mut u8,
    len: usize,
    ring: Ring,
}

impl FileRing {
    /// Maps `path` (created and zeroed if `create`).
    fn map(path: std::path::PathBuf, create: bool) -> FileRing {
        let len = HEADER_BYTES + 4096;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(&path)
            .expect("open the ring file");
        file.set_len(len as u64).expect("size the ring file");
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a new shared mapping of `len` bytes of a file we hold open, at an
        // address the kernel picks.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &file,
                0,
            )
        }
        .expect("map the ring file");
        // SAFETY: `ptr` maps `len` writable, page-aligned bytes until `drop`.
        let ring = unsafe { Ring::new(ptr.cast(), len) };
        if create {
            ring.init(0);
        }
        FileRing {
            ptr: ptr.cast(),
            len,
            ring,
        }
    }
}

impl Drop for FileRing {
    fn drop(&mut self) {
        // SAFETY: mapped in `map` with this length.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// Where the holder child (below) finds the ring, and where it marks that it holds it.
const HOLD_ENV: &str = "MULTIPROC_TEST_RING_HOLD";

/// Not a test of its own: the child of `a_lock_whose_holder_was_killed_is_taken_over`.
/// It takes the producers' lock of the ring in the file `$HOLD_ENV`, says so with a
/// mark file beside it, and waits to be killed.
#[test]
#[ignore = "run as a child process by the lock take-over test"]
fn hold_the_put_lock_until_killed() {
    let Some(path) = std::env::var_os(HOLD_ENV) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let file = FileRing::map(path.clone(), false);
    let guard = crate::sys::robust::lock(&file.ring.header().producers.lock);
    std::fs::write(path.with_extension("held"), b"").expect("mark");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let _ = &guard;
    }
}

/// Waits up to a minute for `path` to exist.
fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_lock_whose_holder_was_killed_is_taken_over() {
    let dir = std::env::temp_dir().join(format!("multiproc-ring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("ring");
    let file = FileRing::map(path.clone(), true);
    let lock = &file.ring.header().producers.lock;
    let exe = std::env::current_exe().expect("test binary");
    for round in 0..8 {
        let _ = std::fs::remove_file(path.with_extension("held"));
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "--ignored", "--nocapture"])
            .arg("queue::ring::tests::hold_the_put_lock_until_killed")
            .env(HOLD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the holder");
        wait_for(&path.with_extension("held"));
        assert_ne!(lock.load(Ordering::SeqCst), 0, "the child holds the lock");
        // While the holder lives, nobody takes its lock.
        assert!(crate::sys::robust::try_lock_for(lock, 2048).is_none());
        child.kill().expect("kill the holder");
        // Half the rounds take the lock over from a zombie, not yet reaped.
        if round % 2 == 0 {
            child.wait().expect("reap the holder");
        } else {
            let stat = format!("/proc/{}/stat", child.id());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z ")) {
                assert!(
                    Instant::now() < deadline,
                    "the holder never became a zombie"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let taken = crate::sys::robust::try_lock_for(lock, 100_000);
        assert!(taken.is_some(), "the dead holder's lock was not taken over");
        drop(taken);
        file.ring
            .put(&[round as u8], None)
            .expect("put after the take-over");
        let _ = child.wait();
        assert_eq!(get(&file.ring), Ok(vec![round as u8]));
    }
    drop(file);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dead_holders_id_reused_by_a_live_thread_does_not_wedge_the_lock() {
    let heap = Heap::new(1024, 0);
    let lock = &heap.ring.header().producers.lock;
    let mut other = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("start a process whose thread id to fake");
    let live = crate::sys::robust::identity_of(other.id()).expect("its /proc entry");
    // The word names a live thread of another process, with the start time of the
    // (dead) thread that held the id before it: as after an id was reused.
    lock.store(live ^ 1, Ordering::SeqCst);
    let taken = crate::sys::robust::try_lock_for(lock, 100_000).is_some();
    // With its real start time, it is a live holder, and its lock is left alone.
    lock.store(live, Ordering::SeqCst);
    let left_alone = crate::sys::robust::try_lock_for(lock, 2048).is_none();
    let _ = other.kill();
    let _ = other.wait();
    assert!(
        taken,
        "a lock word naming a reused thread id wedged the lock"
    );
    assert!(left_alone, "a live holder's lock was taken");
    let _g = crate::sys::robust::try_lock_for(lock, 100_000).expect("taken once it died");
}
