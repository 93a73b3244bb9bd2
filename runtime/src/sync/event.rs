//! [`Event`]: Python's `multiprocessing.Event`, across processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::Entry;

/// Marks a segment as an event's, so that a handle to another kind of segment is
/// refused rather than read as one.
const MAGIC: u32 = 0x4576_6e74; // "Evnt"
/// The segment: one page, of which the first line is used.
const BYTES: usize = 4096;
/// How long a waiter looks at the flag before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// The longest sleep at a time: a waiter looks at its deadline at least this often.
const SLICE: Duration = Duration::from_millis(100);

/// The event's words, at the start of its segment.
#[repr(C, align(64))]
struct Words {
    magic: AtomicU32,
    /// 1 while set.
    set: AtomicU32,
    /// Threads, in any process, asleep on `set`.
    sleepers: AtomicU32,
}

const _: () = assert!(size_of::<Words>() <= BYTES);

/// A flag that processes wait for, like Python's `multiprocessing.Event`: one sets it,
/// every waiter, in any process, wakes. Made in the parent and handed to workers of any
/// pool or to `Process` children as an argument (it is `Clone + Serialize`).
///
/// No process holds an event, so a process that dies, waiting or not, leaves it working
/// for the others. [`wait`](Self::wait) waits for as long as it takes; bound it with
/// [`wait_timeout`](Self::wait_timeout) when the setter may be gone.
///
/// ```no_run
/// use multiproc::prelude::*;
/// use multiproc::sync::Event;
/// use std::time::Duration;
///
/// #[parallel]
/// fn wait_for_start(start: Event) -> bool {
///     start.wait_timeout(Duration::from_secs(10))
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let start = Event::new()?;
///     let pool = Pool::new(2)?;
///     let waiting: Vec<_> = (0..2).map(|_| pool.apply_async(wait_for_start, start.clone())).collect();
///     start.set(); // both workers go
///     for w in waiting {
///         assert!(w.get()?);
///     }
///     Ok(())
/// }
/// ```
pub struct Event {
    entry: Arc<Entry>,
    words: *const Words,
}

// SAFETY: `words` points into the segment `entry` keeps mapped for as long as the event
// lives, and is only ever accessed through atomics, from any thread of any process.
unsafe impl Send for Event {}
// SAFETY: as for `Send`.
unsafe impl Sync for Event {}

impl Clone for Event {
    fn clone(&self) -> Self {
        Event {
            entry: Arc::clone(&self.entry),
            words: self.words,
        }
    }
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event> {
        let entry = super::create_segment(BYTES)?;
        let event = Event::from_entry(entry, true)?;
        event.words().magic.store(MAGIC, Ordering::Release);
        Ok(event)
    }

    /// The event in `entry`'s segment; `fresh` for one just created (not yet marked).
    fn from_entry(entry: Arc<Entry>, fresh: bool) -> Result<Event> {
        let not_an_event = || {
            Error::new(
                ErrorKind::Serialization,
                "the handle is not an Event's segment",
            )
        };
        let base = super::mapped(&entry, BYTES).ok_or_else(not_an_event)?;
        let event = Event {
            words: base.cast::<Words>().cast_const(),
            entry,
        };
        if !fresh && event.words().magic.load(Ordering::Acquire) != MAGIC {
            return Err(not_an_event());
        }
        Ok(event)
    }

    fn words(&self) -> &Words {
        // SAFETY: `words` is the start of a writable, page-aligned (so 64-aligned) shared
        // mapping of at least `BYTES` (checked in `from_entry`), kept mapped by `entry`
        // for as long as `self` lives; `Words` is all atomics, valid for any bytes, so
        // whatever another process wrote there, reading it is defined.
        unsafe { &*self.words }
    }

    /// Sets the event: every waiter wakes, and waits return at once until it is cleared.
    pub fn set(&self) {
        let w = self.words();
        w.set.store(1, Ordering::SeqCst);
        crate::sys::futex::if_sleeping(&w.sleepers, || crate::sys::futex::wake_all(&w.set));
    }

    /// Clears the event: waits wait again.
    pub fn clear(&self) {
        self.words().set.store(0, Ordering::SeqCst);
    }

    /// Whether the event is set.
    pub fn is_set(&self) -> bool {
        self.words().set.load(Ordering::SeqCst) == 1
    }

    /// Waits until the event is set. It waits for as long as that takes: if the process
    /// that would set it may die, use [`wait_timeout`](Self::wait_timeout).
    pub fn wait(&self) {
        while !self.wait_until(None) {}
    }

    /// Waits at most `timeout` for the event to be set; true if it is.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let w = self.words();
        let start = Instant::now();
        while start.elapsed() < SPIN {
            if self.is_set() {
                return true;
            }
            std::hint::spin_loop();
        }
        loop {
            if self.is_set() {
                return true;
            }
            let slice = match deadline {
                None => SLICE,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    left.min(SLICE)
                }
            };
            crate::sys::futex::sleep_counted(&w.set, &w.sleepers, slice, || {
                (w.set.load(Ordering::SeqCst) == 0).then_some(0)
            });
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::shm::serialize_entry(&self.entry, s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let entry = crate::shm::deserialize_entry(d)?;
        Event::from_entry(entry, false).map_err(<D::Error as serde::de::Error>::custom)
    }
}
