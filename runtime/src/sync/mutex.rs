//! [`Mutex<T>`]: a lock and the value it guards, in shared memory, that survives a holder
//! that dies.
//!
//! The lock word holds the holder's identity (its thread id and start time, see
//! [`crate::sys::robust`]). A thread that finds it held asks, every `CHECK` while it
//! sleeps, whether that holder still lives; if not, it takes the lock over, and its
//! guard says the value was abandoned. Waiters sleep on a futex word, counted: an unlock
//! bumps the word and makes a system call only when someone sleeps.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::Entry;
use crate::sys::robust;

/// Marks a segment as a mutex's.
const MAGIC: u32 = 0x4d75_7478; // "Mutx"
/// Where the value starts in the segment: after the header's line.
const VALUE_AT: usize = 64;
/// How long a waiter spins before it sleeps.
const SPIN: Duration = Duration::from_micros(20);
/// How often a sleeping waiter asks whether the holder still lives.
const CHECK: Duration = Duration::from_millis(10);

#[repr(C, align(64))]
struct Header {
    magic: AtomicU32,
    /// `size_of::<T>()`, checked when a handle is opened.
    size: AtomicU32,
    /// The holder's identity, or 0.
    owner: AtomicU64,
    /// Bumped by an unlock while anyone sleeps; waiters sleep on it.
    released: AtomicU32,
    /// Threads, in any process, asleep on `released`.
    sleepers: AtomicU32,
}

const _: () = assert!(size_of::<Header>() <= VALUE_AT);

/// A lock and the value it guards, shared between processes, like Python's
/// `multiprocessing.Lock` with a `Value` inside it; unlike them, a process killed while it
/// holds the lock does not hang every other one: the next [`lock`](Self::lock) takes it
/// over, and [`MutexGuard::abandoned`] tells that the value may be half-written (what
/// `std` calls poisoning). `T` is [`bytemuck::Pod`]: plain bytes, valid whatever a dead
/// holder left behind.
///
/// Made in the parent and handed to workers of any pool or to `Process` children as an
/// argument (it is `Clone + Serialize`).
///
/// ```no_run
/// use multiproc::prelude::*;
/// use multiproc::sync::Mutex;
///
/// #[parallel]
/// fn add(total: Mutex<u64>, n: u64) -> Result<(), String> {
///     for _ in 0..n {
///         *total.lock().map_err(|e| e.to_string())? += 1;
///     }
///     Ok(())
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let total = Mutex::new(0u64)?;
///     let pool = Pool::new(2)?;
///     let runs: Vec<_> = (0..4).map(|_| pool.apply_async(add, (total.clone(), 1000))).collect();
///     for r in runs {
///         if let Err(why) = r.get()? {
///             eprintln!("a task could not lock: {why}");
///         }
///     }
///     assert_eq!(*total.lock()?, 4000);
///     Ok(())
/// }
/// ```
pub struct Mutex<T> {
    entry: Arc<Entry>,
    base: *mut u8,
    _t: PhantomData<T>,
}

// SAFETY: `base` points into the segment `entry` keeps mapped for as long as the mutex
// lives; the header is only accessed through atomics, and the value only through a
// guard, which exists only while this thread holds the lock (so no other thread, in
// this process or another one that follows the protocol, touches it meanwhile). `T:
// Send` because a guard hands a `&mut T` to whichever thread locks.
unsafe impl<T: Send> Send for Mutex<T> {}
// SAFETY: as for `Send`; `&Mutex<T>` only gives access to `T` under the lock.
unsafe impl<T: Send> Sync for Mutex<T> {}

impl<T> Clone for Mutex<T> {
    fn clone(&self) -> Self {
        Mutex {
            entry: Arc::clone(&self.entry),
            base: self.base,
            _t: PhantomData,
        }
    }
}

/// The segment size for a `T`: the header's line, then the value.
fn bytes_for<T>() -> usize {
    VALUE_AT + size_of::<T>().max(1)
}

impl<T: bytemuck::Pod> Mutex<T> {
    /// A mutex holding `value`, unlocked. A `T` aligned to more than 64 bytes is
    /// [`ErrorKind::InvalidConfig`].
    pub fn new(value: T) -> Result<Mutex<T>> {
        if align_of::<T>() > VALUE_AT {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "a sync::Mutex value may be aligned to at most 64 bytes",
            ));
        }
        let entry = super::create_segment(bytes_for::<T>())?;
        let mutex = Mutex::<T>::from_entry(entry, true)?;
        // SAFETY: the segment is fresh: no other thread or process has it yet; the value's
        // place is inside it (`bytes_for`) and aligned (page-aligned base, `VALUE_AT` a
        // multiple of every alignment up to 64, checked above).
        unsafe { mutex.value_ptr().write(value) };
        let h = mutex.header();
        h.size.store(
            u32::try_from(size_of::<T>()).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        h.magic.store(MAGIC, Ordering::Release);
        Ok(mutex)
    }

    /// The mutex in `entry`'s segment; `fresh` for one just created (not yet marked).
    fn from_entry(entry: Arc<Entry>, fresh: bool) -> Result<Mutex<T>> {
        let not_mine = || {
            Error::new(
                ErrorKind::Serialization,
                format!(
                    "the handle is not a sync::Mutex<{}>'s segment",
                    std::any::type_name::<T>()
                ),
            )
        };
        if align_of::<T>() > VALUE_AT {
            return Err(not_mine());
        }
        let base = super::mapped(&entry, bytes_for::<T>()).ok_or_else(not_mine)?;
        let mutex = Mutex {
            entry,
            base,
            _t: PhantomData,
        };
        let h = mutex.header();
        if !fresh
            && (h.magic.load(Ordering::Acquire) != MAGIC
                || h.size.load(Ordering::Relaxed) as usize != size_of::<T>())
        {
            return Err(not_mine());
        }
        Ok(mutex)
    }
}

impl<T> Mutex<T> {
    fn header(&self) -> &Header {
        // SAFETY: `base` starts a writable, page-aligned shared mapping of at least
        // `bytes_for::<T>()` bytes (checked in `from_entry`), kept mapped by `entry` for
        // as long as `self` lives; `Header` is all atomics, valid for any bytes.
        unsafe { &*self.base.cast::<Header>() }
    }

    fn value_ptr(&self) -> *mut T {
        // SAFETY: `VALUE_AT` plus the value lies inside the mapping (`from_entry`).
        unsafe { self.base.add(VALUE_AT).cast::<T>() }
    }

    /// Waits for the lock, for as long as that takes; a holder that died is taken over
    /// (see [`MutexGuard::abandoned`]). Locking it again from the thread that holds it is
    /// [`ErrorKind::InvalidConfig`] (it would wait for ever).
    pub fn lock(&self) -> Result<MutexGuard<'_, T>> {
        loop {
            if let Some(guard) = self.lock_until(None)? {
                return Ok(guard);
            }
        }
    }

    /// Like [`lock`](Self::lock), waiting at most `timeout`: `Ok(None)` if the lock was
    /// still held by a live holder then.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<MutexGuard<'_, T>>> {
        self.lock_until(Some(Instant::now() + timeout))
    }

    /// The lock if it is free now (or its holder is dead), else `None`.
    pub fn try_lock(&self) -> Result<Option<MutexGuard<'_, T>>> {
        self.lock_until(Some(Instant::now()))
    }

    fn lock_until(&self, deadline: Option<Instant>) -> Result<Option<MutexGuard<'_, T>>> {
        let h = self.header();
        let me = robust::me();
        // Read on the first miss only: an uncontended lock does not look at the clock.
        let mut started = None;
        loop {
            let seen = h.released.load(Ordering::SeqCst);
            let holder = match h
                .owner
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Ok(Some(self.guard(false))),
                Err(holder) if holder == me => {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        "this thread already holds the sync::Mutex: locking it again \
                         would wait for ever",
                    ));
                }
                Err(holder) => holder,
            };
            let now = Instant::now();
            let last = deadline.is_some_and(|at| now >= at);
            let spinning = now.duration_since(*started.get_or_insert(now)) < SPIN;
            if spinning && !last {
                std::hint::spin_loop();
                continue;
            }
            // Before each sleep, and at the end: is the holder still alive? (It reads
            // `/proc`, a few microseconds: not while spinning.)
            if !robust::holder_alive(holder)
                && h.owner
                    .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Ok(Some(self.guard(true)));
            }
            let slice = match deadline {
                Some(_) if last => return Ok(None),
                Some(at) => at.saturating_duration_since(now).min(CHECK),
                None => CHECK,
            };
            crate::sys::futex::sleep_counted(&h.released, &h.sleepers, slice, || {
                (h.owner.load(Ordering::SeqCst) != 0).then_some(seen)
            });
        }
    }

    fn guard(&self, abandoned: bool) -> MutexGuard<'_, T> {
        MutexGuard {
            mutex: self,
            abandoned,
            _not_send: PhantomData,
        }
    }
}

/// The lock of a [`Mutex`], held: derefs to the value; unlocks when dropped. It stays
/// on the thread that locked (the lock records that thread).
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
    abandoned: bool,
    _not_send: PhantomData<*const ()>,
}

impl<T> MutexGuard<'_, T> {
    /// True if the lock was taken over from a holder that died holding it: the value
    /// may be half-written (std's poisoning). The next lock after this guard is dropped
    /// is an ordinary one.
    pub fn abandoned(&self) -> bool {
        self.abandoned
    }
}

impl<T> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this thread holds the lock (the guard exists only then), so no other
        // thread, here or in a process that follows the protocol, writes the value; it is
        // in the mapping and aligned (`from_entry`), and any bytes are a valid `T: Pod`
        // (the only way to a guard is through `Mutex<T: Pod>::new` or `Deserialize`).
        unsafe { &*self.mutex.value_ptr() }
    }
}

impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference made
        // through this guard; no other guard exists while the lock is held.
        unsafe { &mut *self.mutex.value_ptr() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        let h = self.mutex.header();
        h.owner.store(0, Ordering::Release);
        // A sleeper counts itself, then looks at `owner`, then sleeps while `released`
        // is what it read before: either it sees the lock free and does not sleep, or
        // this sees it counted, and the bump makes its sleep return.
        crate::sys::futex::if_sleeping(&h.sleepers, || {
            h.released.fetch_add(1, Ordering::SeqCst);
            crate::sys::futex::wake_all(&h.released);
        });
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutexGuard")
            .field("value", &**self)
            .field("abandoned", &self.abandoned)
            .finish()
    }
}

impl<T> std::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field(
                "locked",
                &(self.header().owner.load(Ordering::Relaxed) != 0),
            )
            .finish_non_exhaustive()
    }
}

impl<T> Serialize for Mutex<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::shm::serialize_entry(&self.entry, s)
    }
}

impl<'de, T: bytemuck::Pod> Deserialize<'de> for Mutex<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let entry = crate::shm::deserialize_entry(d)?;
        Mutex::from_entry(entry, false).map_err(<D::Error as serde::de::Error>::custom)
    }
}
