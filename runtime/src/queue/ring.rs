//! The shared ring behind [`Queue`](super::Queue): a header and a byte ring in one
//! writable shared-memory segment, mapped by every process that holds the queue.
//!
//! - Two tiny locks (the holder's thread id in one word each): one for producers, one
//!   for consumers, so a put and a get never wait for each other. A lock is only held
//!   while bytes are copied, never across a system call. A process killed while holding
//!   one leaves its id behind; the next process that finds it held by a thread that no
//!   longer exists takes it over. The producers' and the consumers' fields sit on cache
//!   lines of their own.
//! - Every change is committed by a single store at the end (`tail` for a put, `head`
//!   for a get), so a process killed half-way leaves the ring as it was before: its
//!   message was not put, or not taken (and another consumer gets it).
//! - Waiting uses futexes on two sequence counters in the shared mapping, after a short
//!   spin; a waker only makes the system call when someone waits.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The header at the start of the segment. All fields are atomics in shared memory.
#[repr(C, align(64))]
pub(crate) struct Header {
    /// Written by producers.
    producers: Side,
    /// Written by consumers.
    consumers: Side,
    common: Common,
}

/// One side's lock, its committed offset and its sequence counter.
#[repr(C, align(64))]
struct Side {
    lock: AtomicU32,
    /// Bumped by every commit of this side; the other side waits on it.
    seq: AtomicU32,
    /// Threads of the other side waiting for this side's `seq`.
    waiters: AtomicU32,
    /// Monotonic byte offset: `tail` for producers, `head` for consumers.
    offset: AtomicU64,
}

#[repr(C, align(64))]
struct Common {
    closed: AtomicU32,
    /// Immutable after creation: the message limit (0: none) and the ring size.
    max_count: AtomicU64,
    capacity: AtomicU64,
    count: AtomicU64,
}

pub(crate) const HEADER_BYTES: usize = 256;
const _: () = assert!(size_of::<Header>() <= HEADER_BYTES);

/// Why a put or get could not complete.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Closed,
    TimedOut,
    /// The message can never fit in this ring.
    TooLarge,
}

/// A view of the ring in a mapped segment.
pub(crate) struct Ring {
    base: *mut u8,
    len: usize,
}

// SAFETY: the ring is shared memory accessed only through atomics (header) and through
// byte copies of ranges that the lock makes exclusive to one thread.
unsafe impl Send for Ring {}
// SAFETY: see `Send`.
unsafe impl Sync for Ring {}

/// This thread's id, asked of the kernel once per thread.
fn gettid() -> u32 {
    thread_local! {
        // SAFETY: gettid has no preconditions.
        static TID: u32 = unsafe { libc::syscall(libc::SYS_gettid) as u32 };
    }
    TID.with(|t| *t)
}

fn thread_alive(tid: u32) -> bool {
    // SAFETY: signal 0 only checks that the thread (or process) exists.
    let rc = unsafe { libc::kill(tid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn futex_wait(word: &AtomicU32, seen: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a 4-byte aligned word in a shared mapping (not private: other
    // processes wake it); returns at once if the word no longer holds `seen`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            ts_ptr,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a word in a shared mapping.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        );
    }
}

struct Guard<'a>(&'a AtomicU32);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl Ring {
    /// Views a mapping of `len` bytes that holds a ring.
    ///
    /// # Safety
    /// `base` must map `len` writable, page-aligned bytes (header included) that stay
    /// mapped for the life of the `Ring`, and that only `Ring`s touch.
    pub(crate) unsafe fn new(base: *mut u8, len: usize) -> Ring {
        Ring { base, len }
    }

    /// Lays out a fresh ring (zeroed memory) with these limits.
    pub(crate) fn init(&self, max_count: u64) {
        let h = &self.header().common;
        h.max_count.store(max_count, Ordering::Relaxed);
        h.capacity
            .store((self.len - HEADER_BYTES) as u64, Ordering::Release);
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a `Header`-sized, page-aligned region of
        // atomics (zero is a valid value for each).
        unsafe { &*self.base.cast::<Header>() }
    }

    fn capacity(&self) -> u64 {
        self.header().common.capacity.load(Ordering::Acquire)
    }

    fn lock<'a>(&self, word: &'a AtomicU32) -> Guard<'a> {
        let me = gettid();
        let mut spins = 0u32;
        loop {
            match word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Guard(word),
                Err(0) => continue,
                Err(holder) => {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(256) && !thread_alive(holder) {
                        // The holder died inside a put or get: every change is committed
                        // by one final store, so the ring is consistent; take over.
                        if word
                            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                        {
                            return Guard(word);
                        }
                    }
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data region starts right after the header, inside the mapping.
        unsafe { self.base.add(HEADER_BYTES) }
    }

    /// Copies `src` into the ring at monotonic offset `at` (wrapping).
    fn write_at(&self, at: u64, src: &[u8]) {
        let cap = self.capacity();
        let pos = (at % cap) as usize;
        let first = src.len().min(cap as usize - pos);
        // SAFETY: both ranges lie inside the data region; the lock makes them ours.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data().add(pos), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data(), src.len() - first);
        }
    }

    /// Copies from the ring at monotonic offset `at` (wrapping) into `dst`.
    fn read_at(&self, at: u64, dst: &mut [u8]) {
        let cap = self.capacity();
        let pos = (at % cap) as usize;
        let first = dst.len().min(cap as usize - pos);
        // SAFETY: both ranges lie inside the data region; the lock makes them ours.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(pos), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(
                self.data(),
                dst.as_mut_ptr().add(first),
                dst.len() - first,
            );
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.header().common.count.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.header().common.closed.load(Ordering::Acquire) != 0
    }

    pub(crate) fn close(&self) {
        let h = self.header();
        h.common.closed.store(1, Ordering::Release);
        for side in [&h.producers, &h.consumers] {
            side.seq.fetch_add(1, Ordering::AcqRel);
            futex_wake_all(&side.seq);
        }
    }

    /// Appends one message, waiting for room until `deadline` (forever if `None`).
    pub(crate) fn put(&self, msg: &[u8], deadline: Option<Instant>) -> Result<(), Stop> {
        let h = self.header();
        let (me, them) = (&h.producers, &h.consumers);
        let need = 4 + msg.len() as u64;
        if need > self.capacity() {
            return Err(Stop::TooLarge);
        }
        let len = u32::try_from(msg.len()).map_err(|_| Stop::TooLarge)?;
        loop {
            let seen = {
                let _g = self.lock(&me.lock);
                if self.is_closed() {
                    return Err(Stop::Closed);
                }
                // Read the consumers' side first: what they freed can only grow.
                let seen = them.seq.load(Ordering::Acquire);
                let head = them.offset.load(Ordering::Acquire);
                let tail = me.offset.load(Ordering::Acquire);
                let max = h.common.max_count.load(Ordering::Relaxed);
                let count = h.common.count.load(Ordering::Acquire);
                let fits = self.capacity() - (tail - head) >= need;
                if fits && (max == 0 || count < max) {
                    self.write_at(tail, &len.to_le_bytes());
                    self.write_at(tail + 4, msg);
                    // The commit: the message exists once `tail` moves past it.
                    me.offset.store(tail + need, Ordering::Release);
                    h.common.count.fetch_add(1, Ordering::AcqRel);
                    me.seq.fetch_add(1, Ordering::AcqRel);
                    None
                } else {
                    Some(seen)
                }
            };
            match seen {
                None => {
                    if me.waiters.load(Ordering::Acquire) > 0 {
                        futex_wake_all(&me.seq);
                    }
                    return Ok(());
                }
                Some(seen) => wait(&them.seq, &them.waiters, seen, deadline)?,
            }
        }
    }

    /// Takes the oldest message, waiting for one until `deadline` (forever if `None`),
    /// and hands its bytes to `f` (after the lock is released; the buffer is reused by
    /// the thread's next get). A closed, empty queue is `Stop::Closed`.
    pub(crate) fn get_with<R>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Stop> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| {
            let mut msg = scratch.take();
            let got = self.get_into(deadline, &mut msg);
            let result = got.map(|()| f(&msg));
            if msg.capacity() <= 1 << 20 {
                scratch.replace(msg);
            }
            result
        })
    }

    fn get_into(&self, deadline: Option<Instant>, msg: &mut Vec<u8>) -> Result<(), Stop> {
        let h = self.header();
        let (me, them) = (&h.consumers, &h.producers);
        loop {
            let seen = {
                let _g = self.lock(&me.lock);
                let seen = them.seq.load(Ordering::Acquire);
                let tail = them.offset.load(Ordering::Acquire);
                let head = me.offset.load(Ordering::Acquire);
                if head != tail {
                    let mut len = [0u8; 4];
                    self.read_at(head, &mut len);
                    let len = u32::from_le_bytes(len) as u64;
                    msg.clear();
                    msg.resize(len as usize, 0);
                    self.read_at(head + 4, msg);
                    // The commit: the message is taken once `head` moves past it.
                    me.offset.store(head + 4 + len, Ordering::Release);
                    h.common.count.fetch_sub(1, Ordering::AcqRel);
                    me.seq.fetch_add(1, Ordering::AcqRel);
                    Ok(())
                } else if self.is_closed() {
                    return Err(Stop::Closed);
                } else {
                    Err(seen)
                }
            };
            match seen {
                Ok(()) => {
                    if me.waiters.load(Ordering::Acquire) > 0 {
                        futex_wake_all(&me.seq);
                    }
                    return Ok(());
                }
                Err(seen) => wait(&them.seq, &them.waiters, seen, deadline)?,
            }
        }
    }
}

/// Waits for `word` to move on from `seen`: spins briefly, then sleeps on the futex.
fn wait(
    word: &AtomicU32,
    waiters: &AtomicU32,
    seen: u32,
    deadline: Option<Instant>,
) -> Result<(), Stop> {
    for _ in 0..200 {
        if word.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    let timeout = match deadline {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Stop::TimedOut);
            }
            // Wake up now and then regardless: a waker that died between its change and
            // its wake-up must not leave us asleep for good.
            Some(left.min(Duration::from_millis(100)))
        }
        None => Some(Duration::from_millis(100)),
    };
    waiters.fetch_add(1, Ordering::AcqRel);
    futex_wait(word, seen, timeout);
    waiters.fetch_sub(1, Ordering::AcqRel);
    Ok(())
}
