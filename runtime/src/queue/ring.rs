//! The shared ring behind [`Queue`](super::Queue): a header and a byte ring in one
//! writable shared-memory segment, mapped by every process that holds the queue.
//!
//! - Two tiny locks (the holder's thread id and start time in one word each): one for
//!   producers, one for consumers, so a put and a get never wait for each other. A lock
//!   is only held while bytes are copied, never across a system call. A process killed
//!   while holding one leaves its identity behind; the next process that finds it held
//!   by a thread that no longer exists (or whose id now belongs to a thread that started
//!   later) takes it over (see [`crate::sys::robust`]). The producers' and the consumers'
//!   fields sit on cache lines of their own.
//! - Every change is committed by a single store at the end (`tail` and the count of
//!   messages put, packed in one word, for a put; `head` and the count taken for a get),
//!   so a process killed half-way leaves the ring as it was before: its message was not
//!   put, or not taken (and another consumer gets it).
//! - Each side reads the other side's line only when what it last saw there runs out (a
//!   producer when the ring looks full, a consumer when it looks empty), and nothing is
//!   written by both sides: in a busy queue the two sides do not steal cache lines from
//!   each other on every message.
//! - Waiting looks at the other side now and then for a short while (yielding the core in
//!   between), then sleeps on a futex in the shared mapping; a commit only makes a system
//!   call when someone sleeps.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The header at the start of the segment. All fields are atomics in shared memory.
#[repr(C, align(64))]
pub(crate) struct Header {
    /// Written by producers.
    producers: Side,
    /// Written by consumers.
    consumers: Side,
    /// Written only by threads going to sleep and by their wakers.
    sleep: Sleep,
    /// Written only by `init` and `close`.
    common: Common,
}

/// One side's lock and what it has committed.
#[repr(C, align(64))]
struct Side {
    /// The holder's identity (see [`crate::sys::robust`]), or 0.
    lock: AtomicU64,
    /// This side's byte offset and message count, packed (see [`pack`]): `tail` and
    /// messages put for producers, `head` and messages taken for consumers. One store
    /// commits a put or a get.
    committed: AtomicU64,
    /// The other side's `committed` when this side last read it. Only touched under this
    /// side's lock; it lags behind the truth, which errs on the safe side (less room,
    /// fewer messages), so the other side's line is only read when it runs out.
    seen: AtomicU64,
}

/// Futex words and sleeper counts. A commit reads `*_waiting` (a line that stays in its
/// cache while nobody sleeps) and only bumps a word and wakes when someone sleeps.
#[repr(C, align(64))]
struct Sleep {
    /// Producers asleep waiting for room.
    producers_waiting: AtomicU32,
    /// Consumers asleep waiting for a message.
    consumers_waiting: AtomicU32,
    /// Bumped when a get makes room, and by close; producers sleep on it.
    room: AtomicU32,
    /// Bumped when a put adds a message, and by close; consumers sleep on it.
    messages: AtomicU32,
}

#[repr(C, align(64))]
struct Common {
    closed: AtomicU32,
    /// Immutable after creation: the message limit (0: none) and the ring size (a power
    /// of two).
    max_count: AtomicU64,
    capacity: AtomicU64,
}

pub(crate) const HEADER_BYTES: usize = 256;
const _: () = assert!(size_of::<Header>() <= HEADER_BYTES);

/// Offsets and message counts are kept modulo 2^32, in one word. A ring holds at most
/// its capacity (a power of two, at most 2^30) in bytes and at most capacity / 4
/// messages (each has a 4-byte length), so both differences stay below 2^32.
const OFFSET_BITS: u32 = 32;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
const COUNT_MASK: u64 = (1 << (64 - OFFSET_BITS)) - 1;
/// The largest ring.
const MAX_CAPACITY: u64 = 1 << 30;

fn pack(offset: u64, count: u64) -> u64 {
    (offset & OFFSET_MASK) | ((count & COUNT_MASK) << OFFSET_BITS)
}

fn offset(packed: u64) -> u64 {
    packed & OFFSET_MASK
}

fn count(packed: u64) -> u64 {
    packed >> OFFSET_BITS
}

/// Bytes between a consumer's `head` and a producer's `tail`.
fn used(tail: u64, head: u64) -> u64 {
    offset(tail).wrapping_sub(offset(head)) & OFFSET_MASK
}

/// Messages between the messages taken and the messages put.
fn waiting(tail: u64, head: u64) -> u64 {
    count(tail).wrapping_sub(count(head)) & COUNT_MASK
}

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

/// Bumps `word` and wakes its sleepers.
fn ring_bell(word: &AtomicU32) {
    word.fetch_add(1, Ordering::SeqCst);
    crate::sys::futex::wake_all(word);
}

/// After a commit: wakes the other side if any of it sleeps.
fn wake_if_waiting(waiting: &AtomicU32, word: &AtomicU32) {
    crate::sys::futex::if_sleeping(waiting, || ring_bell(word));
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

    /// Lays out a fresh ring (zeroed memory) with these limits. The ring uses the
    /// largest power of two of bytes that fits after the header.
    pub(crate) fn init(&self, max_count: u64) {
        let h = &self.header().common;
        let room = (self.len - HEADER_BYTES) as u64;
        let capacity = (1u64 << room.ilog2()).min(MAX_CAPACITY);
        h.max_count.store(max_count, Ordering::Relaxed);
        h.capacity.store(capacity, Ordering::Release);
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a `Header`-sized, page-aligned region of
        // atomics (zero is a valid value for each).
        unsafe { &*self.base.cast::<Header>() }
    }

    fn capacity(&self) -> u64 {
        self.header().common.capacity.load(Ordering::Acquire)
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data region starts right after the header, inside the mapping.
        unsafe { self.base.add(HEADER_BYTES) }
    }

    /// Copies `src` into the ring at offset `at` (wrapping).
    fn write_at(&self, at: u64, src: &[u8]) {
        let cap = self.capacity();
        let pos = (at & (cap - 1)) as usize;
        let first = src.len().min(cap as usize - pos);
        // SAFETY: both ranges lie inside the data region; the lock makes them ours.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data().add(pos), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data(), src.len() - first);
        }
    }

    /// Copies from the ring at offset `at` (wrapping) into `dst`.
    fn read_at(&self, at: u64, dst: &mut [u8]) {
        let cap = self.capacity();
        let pos = (at & (cap - 1)) as usize;
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

    /// The number of messages waiting.
    pub(crate) fn len(&self) -> u64 {
        let h = self.header();
        // Taken first: what is put later can only add to it, so the difference is never
        // below zero.
        let head = h.consumers.committed.load(Ordering::Acquire);
        let tail = h.producers.committed.load(Ordering::Acquire);
        waiting(tail, head)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.header().common.closed.load(Ordering::Acquire) != 0
    }

    pub(crate) fn close(&self) {
        let h = self.header();
        h.common.closed.store(1, Ordering::SeqCst);
        ring_bell(&h.sleep.room);
        ring_bell(&h.sleep.messages);
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
        let max = h.common.max_count.load(Ordering::Relaxed);
        let fits = |tail: u64, head: u64| {
            self.capacity() - used(tail, head) >= need && (max == 0 || waiting(tail, head) < max)
        };
        loop {
            let head = {
                let _g = crate::sys::robust::lock(&me.lock);
                if self.is_closed() {
                    return Err(Stop::Closed);
                }
                let tail = me.committed.load(Ordering::Relaxed);
                let mut head = me.seen.load(Ordering::Relaxed);
                if !fits(tail, head) {
                    head = them.committed.load(Ordering::Acquire);
                    me.seen.store(head, Ordering::Relaxed);
                }
                if fits(tail, head) {
                    self.write_at(offset(tail), &len.to_le_bytes());
                    self.write_at(offset(tail) + 4, msg);
                    // The commit: the message exists once `tail` moves past it.
                    me.committed.store(
                        pack(offset(tail) + need, count(tail) + 1),
                        Ordering::Release,
                    );
                    None
                } else {
                    Some(head)
                }
            };
            match head {
                None => {
                    wake_if_waiting(&h.sleep.consumers_waiting, &h.sleep.messages);
                    return Ok(());
                }
                Some(head) => self.wait(
                    &them.committed,
                    head,
                    &h.sleep.room,
                    &h.sleep.producers_waiting,
                    deadline,
                )?,
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
            let tail = {
                let _g = crate::sys::robust::lock(&me.lock);
                let head = me.committed.load(Ordering::Relaxed);
                let mut tail = me.seen.load(Ordering::Relaxed);
                if offset(tail) == offset(head) {
                    tail = them.committed.load(Ordering::Acquire);
                    if offset(tail) == offset(head) && self.is_closed() {
                        // A put that committed before the close is still taken.
                        tail = them.committed.load(Ordering::Acquire);
                        if offset(tail) == offset(head) {
                            return Err(Stop::Closed);
                        }
                    }
                    me.seen.store(tail, Ordering::Relaxed);
                }
                if offset(tail) != offset(head) {
                    let mut len = [0u8; 4];
                    self.read_at(offset(head), &mut len);
                    let len = u32::from_le_bytes(len) as u64;
                    msg.clear();
                    msg.resize(len as usize, 0);
                    self.read_at(offset(head) + 4, msg);
                    // The commit: the message is taken once `head` moves past it.
                    me.committed.store(
                        pack(offset(head) + 4 + len, count(head) + 1),
                        Ordering::Release,
                    );
                    None
                } else {
                    Some(tail)
                }
            };
            match tail {
                None => {
                    wake_if_waiting(&h.sleep.producers_waiting, &h.sleep.room);
                    return Ok(());
                }
                Some(tail) => self.wait(
                    &them.committed,
                    tail,
                    &h.sleep.messages,
                    &h.sleep.consumers_waiting,
                    deadline,
                )?,
            }
        }
    }

    /// Waits for the other side's `committed` to move on from `seen`, or for the queue
    /// to close: checks now and then for a short while, then sleeps on `bell`.
    fn wait(
        &self,
        committed: &AtomicU64,
        seen: u64,
        bell: &AtomicU32,
        sleepers: &AtomicU32,
        deadline: Option<Instant>,
    ) -> Result<(), Stop> {
        let moved = || committed.load(Ordering::Acquire) != seen || self.is_closed();
        // Look at the other side's line only now and then (every look takes the line
        // away from the side about to write it), and give the core away in between: on
        // a machine with more processes than cores, the one we wait for may need it.
        for _ in 0..SPIN_LOOKS {
            std::thread::yield_now();
            if moved() {
                return Ok(());
            }
        }
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Stop::TimedOut);
                }
                // Wake up now and then regardless: a waker that died between its change
                // and its wake-up must not leave us asleep for good.
                left.min(Duration::from_millis(100))
            }
            None => Duration::from_millis(100),
        };
        let rung = bell.load(Ordering::SeqCst);
        crate::sys::futex::sleep_counted(bell, sleepers, timeout, || (!moved()).then_some(rung));
        Ok(())
    }
}

/// How often a waiter looks at the other side before it sleeps, yielding the core
/// between looks (tens of microseconds in all).
const SPIN_LOOKS: u32 = 32;

#[cfg(test)]
mod tests;
