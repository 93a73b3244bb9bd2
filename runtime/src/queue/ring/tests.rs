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
