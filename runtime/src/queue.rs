//! [`Queue<T>`]: a cross-process, multi-producer multi-consumer queue in shared memory.

mod life;
mod ring;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use self::life::Life;
use self::ring::{HEADER_BYTES, Ring, Stop};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::{Entry, Pages, Segment, ShmBackend};
use crate::sys::segment::SegmentDesc;

/// Ring size of a queue made by [`Queue::new`]: its messages wait in this many bytes.
const UNBOUNDED_RING: usize = 16 << 20;
/// Ring size of a queue made by [`Queue::bounded`].
const BOUNDED_RING: usize = 4 << 20;
/// A message larger than this travels in a segment of its own; the ring holds its name.
const INLINE_MAX: usize = 256 << 10;

/// A queue that the parent, the workers of any pool and `Process` children share, like
/// Python's `multiprocessing.Queue` (and unlike it, usable as an argument of a pool task).
///
/// ```no_run
/// use multiproc::prelude::*;
///
/// #[parallel]
/// fn producer(q: Queue<u64>, n: u64) {
///     for i in 0..n {
///         q.put(i).expect("the queue is open");
///     }
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let q: Queue<u64> = Queue::bounded(1024)?;
///     let p = Process::spawn(producer, (q.clone(), 10))?; // Queue is Clone + serde
///     for x in q.iter().take(10) {
///         println!("{x}");
///     }
///     p.join()?;
///     Ok(())
/// }
/// ```
///
/// `put` waits while a bounded queue is full (that is its back-pressure); `get` waits
/// while it is empty. After [`close`](Self::close), `put` is [`ErrorKind::Closed`] and
/// `get` returns what is left, then [`ErrorKind::Closed`]. Messages are serde values of
/// any size; one over 256 KiB travels in a named shared-memory segment of its own,
/// which lives until it is read or no process holds the queue any more, whoever put it
/// (see `queue::life` in the source). The queue lives in a shared-memory ring; a process
/// killed in the middle of a `put` or `get` leaves it consistent and unlocked (see the
/// module documentation of the ring).
///
/// Create queues in the parent: a worker can use any queue it is given, but a handle to
/// a queue made in a worker cannot be sent to another process (it is an error there).
pub struct Queue<T> {
    entry: Arc<Entry>,
    ring: Arc<Ring>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            entry: Arc::clone(&self.entry),
            ring: Arc::clone(&self.ring),
            _t: PhantomData,
        }
    }
}

fn stop_error(stop: Stop, what: &str) -> Error {
    match stop {
        Stop::Closed => Error::new(ErrorKind::Closed, format!("{what}: the queue is closed")),
        Stop::TimedOut => Error::new(ErrorKind::Timeout, format!("{what}: timed out")),
        Stop::TooLarge => Error::new(
            ErrorKind::InvalidConfig,
            format!("{what}: the message does not fit in the queue"),
        ),
    }
}

/// The first byte of a ring message: the value follows, or where a large value lies.
const INLINE: u8 = 0;
const IN_SEGMENT: u8 = 1;

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// An unbounded queue: `put` never waits for a consumer, unless 16 MiB of messages
    /// are waiting to be read.
    pub fn new() -> Result<Queue<T>> {
        Queue::with_ring(UNBOUNDED_RING, 0)
    }

    /// A queue of at most `n` messages (and at most 4 MiB of them, large messages
    /// aside): `put` waits while it is full. `0` is [`ErrorKind::InvalidConfig`].
    pub fn bounded(n: usize) -> Result<Queue<T>> {
        if n == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "Queue::bounded(0): a queue needs room for at least one message",
            ));
        }
        Queue::with_ring(BOUNDED_RING, n as u64)
    }

    fn with_ring(bytes: usize, max_count: u64) -> Result<Queue<T>> {
        life::sweep_once();
        let segment =
            Segment::create_writable(ShmBackend::Memfd, HEADER_BYTES + bytes, Pages::Now)?;
        let entry = Entry::new(segment);
        let id = entry.segment.id();
        entry.keep_with(|| Life::create(id))?;
        crate::shm::register_created(&entry);
        let queue = Queue::from_entry(entry)?;
        queue.ring.init(max_count);
        Ok(queue)
    }

    fn from_entry(entry: Arc<Entry>) -> Result<Queue<T>> {
        // The creator made it already; another process joins here, once.
        let id = entry.segment.id();
        entry.keep_with(|| Life::join(id))?;
        let base = entry.segment.as_mut_ptr().ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                "a queue's segment is not writable here",
            )
        })?;
        // SAFETY: the segment maps `len` writable, page-aligned bytes for as long as
        // `entry` lives, which the queue keeps alive; only rings touch queue segments.
        let ring = unsafe { Ring::new(base, entry.segment.len()) };
        Ok(Queue {
            entry,
            ring: Arc::new(ring),
            _t: PhantomData,
        })
    }

    /// Encodes `value` as a message into `msg` (cleared first): inline, or the descriptor
    /// of a segment holding it. The segment is returned: it is removed when dropped,
    /// unless the message was put (see [`Queue::put_until`]).
    fn encode(&self, value: &T, msg: &mut Vec<u8>) -> Result<Option<Segment>> {
        let ser = |why: String| {
            Error::new(
                ErrorKind::Serialization,
                format!("a queue message could not be serialized: {why}"),
            )
        };
        msg.clear();
        msg.push(INLINE);
        crate::codec::encode_into(msg, value)
            .map_err(|e| ser(crate::codec::ser_failure(value, &e)))?;
        if msg.len() <= INLINE_MAX {
            return Ok(None);
        }
        let body = &msg[1..];
        // 32 random bits name the message among its queue's: a name already taken is
        // drawn again.
        let mut seg = None;
        for _ in 0..8 {
            let n = crate::sys::random::random_u64("a queue message's name")? as u32;
            seg = Segment::create_named(life::message_name(self.entry.segment.id(), n), body)?;
            if seg.is_some() {
                break;
            }
        }
        let seg = seg.ok_or_else(|| {
            Error::new(ErrorKind::Io, "no free name for a queue message's segment")
        })?;
        msg.clear();
        msg.push(IN_SEGMENT);
        crate::codec::encode_into(msg, seg.desc()).map_err(|e| ser(e.to_string()))?;
        Ok(Some(seg))
    }

    fn decode(&self, msg: &[u8]) -> Result<T> {
        let bad = |why: String| {
            Error::new(
                ErrorKind::Serialization,
                format!("a queue message could not be deserialized: {why}"),
            )
        };
        let value = |bytes: &[u8]| {
            postcard::from_bytes(bytes).map_err(|e| bad(crate::codec::de_failure::<T>(bytes, &e)))
        };
        match msg.split_first() {
            Some((&INLINE, bytes)) => value(bytes),
            Some((&IN_SEGMENT, desc)) => {
                let desc: SegmentDesc =
                    postcard::from_bytes(desc).map_err(|e| bad(e.to_string()))?;
                let mut seg = Segment::open(desc, None)?;
                seg.unlink_now();
                value(seg.bytes())
            }
            _ => Err(Error::new(
                ErrorKind::Protocol,
                "a queue message of an unknown kind",
            )),
        }
    }

    fn put_until(&self, value: &T, deadline: Option<Instant>) -> Result<()> {
        thread_local! {
            /// Each thread encodes its messages here: no allocation per `put`.
            static SCRATCH: std::cell::RefCell<Vec<u8>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| {
            let mut msg = scratch.take();
            let result = self.encode(value, &mut msg).and_then(|seg| {
                self.ring
                    .put(&msg, deadline)
                    .map_err(|s| stop_error(s, "put"))?;
                // Put: the consumer that takes it removes the name (or the queue's last
                // holder does). Not put: dropping `seg` removes it now.
                if let Some(mut seg) = seg {
                    seg.leave_name_to_receiver();
                }
                Ok(())
            });
            if msg.capacity() <= 1 << 20 {
                scratch.replace(msg);
            }
            result
        })
    }

    /// Appends `value`, waiting while a bounded queue is full. A closed queue is
    /// [`ErrorKind::Closed`].
    pub fn put(&self, value: T) -> Result<()> {
        self.put_until(&value, None)
    }

    /// Like [`put`](Self::put), waiting at most `timeout` for room. A message that could
    /// not be put comes back with the reason (as crossbeam's `SendTimeoutError` does):
    /// [`ErrorKind::Timeout`] if there was no room, [`ErrorKind::Closed`] if the queue
    /// is closed. `?` turns it into a [`multiproc::Error`](Error).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn main() -> multiproc::Result<()> {
    /// let q = multiproc::Queue::<String>::bounded(1)?;
    /// q.put("first".to_owned())?;
    /// if let Err(rejected) = q.put_timeout("second".to_owned(), Duration::from_millis(10)) {
    ///     assert_eq!(rejected.kind(), multiproc::ErrorKind::Timeout);
    ///     let second: String = rejected.into_value(); // not lost: try again later
    ///     assert_eq!(second, "second");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn put_timeout(&self, value: T, timeout: Duration) -> std::result::Result<(), Rejected<T>> {
        match self.put_until(&value, Some(Instant::now() + timeout)) {
            Ok(()) => Ok(()),
            Err(error) => Err(Rejected { error, value }),
        }
    }

    /// Takes the oldest message, waiting for one. A closed queue that is empty is
    /// [`ErrorKind::Closed`].
    pub fn get(&self) -> Result<T> {
        self.ring
            .get_with(None, |msg| self.decode(msg))
            .map_err(|s| stop_error(s, "get"))?
    }

    /// Takes the oldest message if there is one now: `Ok(None)` if the queue is empty
    /// and open. A closed queue still gives what is left, then [`ErrorKind::Closed`]
    /// once it is empty (as [`get`](Self::get) does), so a consumer loop ends.
    pub fn try_get(&self) -> Result<Option<T>> {
        self.get_timeout(Duration::ZERO)
    }

    /// Takes the oldest message, waiting at most `timeout`; `None` if none came.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<T>> {
        match self
            .ring
            .get_with(Some(Instant::now() + timeout), |msg| self.decode(msg))
        {
            Ok(value) => value.map(Some),
            Err(Stop::TimedOut) => Ok(None),
            Err(s) => Err(stop_error(s, "get")),
        }
    }

    /// The number of messages waiting.
    pub fn len(&self) -> usize {
        self.ring.len() as usize
    }

    /// True when no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the queue for every process: `put` fails from now on, `get` drains what
    /// is left, and everyone waiting wakes up.
    pub fn close(&self) {
        self.ring.close();
    }

    /// True once [`close`](Self::close) was called, by any process.
    pub fn is_closed(&self) -> bool {
        self.ring.is_closed()
    }

    /// The messages, in order, until the queue is closed and drained.
    pub fn iter(&self) -> QueueIter<'_, T> {
        QueueIter { queue: self }
    }
}

/// A message that [`Queue::put_timeout`] could not put, given back with the reason.
pub struct Rejected<T> {
    error: Error,
    value: T,
}

impl<T> Rejected<T> {
    /// Why it was not put: [`ErrorKind::Timeout`], [`ErrorKind::Closed`], ...
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }

    /// The error, in full.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The message that was not put.
    pub fn into_value(self) -> T {
        self.value
    }

    /// The error and the message.
    pub fn into_parts(self) -> (Error, T) {
        (self.error, self.value)
    }
}

impl<T> From<Rejected<T>> for Error {
    fn from(r: Rejected<T>) -> Error {
        r.error
    }
}

impl<T> std::fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> std::fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (the message is given back)", self.error)
    }
}

impl<T> std::error::Error for Rejected<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Iterates a queue's messages until it is closed and drained; see [`Queue::iter`].
pub struct QueueIter<'a, T> {
    queue: &'a Queue<T>,
}

impl<T: Serialize + DeserializeOwned> Iterator for QueueIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        // A message that does not decode ends the iteration like a closed queue would
        // not: it is skipped, and reported on stderr.
        loop {
            match self.queue.get() {
                Ok(v) => return Some(v),
                Err(e) if e.kind() == ErrorKind::Closed => return None,
                Err(e) => eprintln!("multiproc: a queue message was skipped: {e}"),
            }
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.ring.len())
            .field("closed", &self.ring.is_closed())
            .finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::shm::serialize_entry(&self.entry, s)
    }
}

impl<'de, T: Serialize + DeserializeOwned> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let entry = crate::shm::deserialize_entry(d)?;
        Queue::from_entry(entry).map_err(<D::Error as serde::de::Error>::custom)
    }
}
