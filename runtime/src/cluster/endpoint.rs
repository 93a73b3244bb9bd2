//! One rank's end of the cluster transport: every MPI call this process makes, from the
//! one thread that initialised MPI (`Threading::Funneled`). Sends never block (an
//! immediate send per piece, kept with the bytes it reads until it completes); receives
//! start from a probe that never blocks, so timeouts and shutdown still work.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpi::datatype::Equivalence;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{AsRaw, Communicator, Destination, Source};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::window::Window;
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Entry;
use crate::wire::Body;

/// The tag of a message's header.
const HEADER: i32 = 1;
/// The tag of the pieces of its payload.
const PIECE: i32 = 2;
/// The largest piece: MPI counts elements in an `int`.
const PIECE_BYTES: usize = 1 << 30;
/// How long a receiver waits for each piece of a payload whose header came: longer
/// means the sender died in the middle of the message.
const PIECE_PATIENCE: Duration = Duration::from_secs(60);

/// Bytes an immediate send reads until it completes.
pub(super) enum Keep {
    Bytes(Vec<u8>),
    Segment(Arc<Entry>),
    Body(Body),
}

impl Keep {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Keep::Bytes(b) => b,
            Keep::Segment(e) => e.segment.bytes(),
            Keep::Body(b) => b.bytes(),
        }
    }
}

/// An immediate send in progress, with the bytes it reads.
struct Sending {
    to: i32,
    /// `None` once completed.
    request: Option<Request<'static, [u8], StaticScope>>,
    /// What `request` reads: dropped only once it has completed (see `Drop`).
    keep: ManuallyDrop<Arc<Keep>>,
}

impl Drop for Sending {
    fn drop(&mut self) {
        match self.request.take() {
            // SAFETY: the request is complete, so MPI no longer reads the bytes; this
            // is the last use of `keep`.
            None => unsafe { ManuallyDrop::drop(&mut self.keep) },
            Some(request) => {
                // A send to a rank that died, or the end of the program: MPI may still
                // read the bytes, so both are leaked rather than freed under it (and
                // the request's own drop would panic).
                std::mem::forget(request);
            }
        }
    }
}

/// The communicator of every rank, the sends in flight, and the window segments are
/// read through.
pub(super) struct Endpoint {
    world: SimpleCommunicator,
    sending: Vec<Sending>,
    /// `None` if MPI could not make it: segments then go as messages.
    window: Option<Window>,
    /// Rank 0: the ranks that read segments through the window.
    readers: std::collections::HashSet<i32>,
}

/// A header received, and where it came from.
pub(super) struct Received {
    pub from: i32,
    pub header: Vec<u8>,
}

impl Endpoint {
    /// Makes MPI errors come back as return codes rather than end the job, so that a
    /// rank that died is noticed (by its silence) and reported, not fatal to this one;
    /// and makes the window for segments. Collective: every rank calls it once, right
    /// after MPI starts.
    pub(super) fn new(world: SimpleCommunicator) -> Endpoint {
        // SAFETY: `world` is a valid communicator of an initialised MPI, on the thread
        // that initialised it; `MPI_ERRORS_RETURN` is a predefined handler.
        unsafe {
            mpi::ffi::MPI_Comm_set_errhandler(world.as_raw(), mpi::ffi::RSMPI_ERRORS_RETURN);
        }
        let window = match Window::create(&world, world.rank() != 0) {
            Ok(window) => Some(window),
            Err(e) => {
                eprintln!(
                    "multiproc rank {}: {e}; shared segments go to the ranks as messages",
                    world.rank()
                );
                None
            }
        };
        Endpoint {
            world,
            sending: Vec::new(),
            window,
            readers: std::collections::HashSet::new(),
        }
    }

    /// Whether this rank has the window for segments.
    pub(super) fn has_window(&self) -> bool {
        self.window.is_some()
    }

    /// Rank 0: `rank` reads segments through the window (it has one too).
    pub(super) fn add_reader(&mut self, rank: i32) {
        if self.window.is_some() {
            self.readers.insert(rank);
        }
    }

    /// Rank 0: attaches `entry` for rank `to` to read, and returns its address; `None`
    /// if `to` cannot read it so (then it goes as a message).
    pub(super) fn expose(&mut self, to: i32, entry: &Arc<Entry>) -> Option<u64> {
        if !self.readers.contains(&to) {
            return None;
        }
        self.window.as_mut()?.expose(entry, to).ok()
    }

    /// Rank 0: rank `from` has finished reading segment `id`.
    pub(super) fn read_done(&mut self, from: i32, id: u64) {
        if let Some(window) = &mut self.window {
            window.done(id, from);
        }
    }

    /// A serving rank: reads `into.len()` bytes at address `at` of rank 0's window.
    pub(super) fn fetch(&mut self, at: u64, into: &mut [u8]) -> Result<()> {
        match &mut self.window {
            Some(window) => window.fetch(at, into),
            None => Err(Error::new(
                ErrorKind::Protocol,
                "rank 0 offered a segment to read, but this rank has no window",
            )),
        }
    }

    pub(super) fn rank(&self) -> i32 {
        self.world.rank()
    }

    pub(super) fn size(&self) -> i32 {
        self.world.size()
    }

    /// Starts sending `header` to rank `to`, then `payload` (whose length the header
    /// says) in pieces.
    pub(super) fn send(
        &mut self,
        to: i32,
        header: &impl Serialize,
        payload: Option<Keep>,
    ) -> Result<()> {
        let bytes = postcard::to_stdvec(header)
            .map_err(|e| Error::new(ErrorKind::Serialization, format!("a cluster message: {e}")))?;
        self.start(to, Arc::new(Keep::Bytes(bytes)), HEADER);
        if let Some(payload) = payload {
            self.start(to, Arc::new(payload), PIECE);
        }
        Ok(())
    }

    /// Like [`send`](Self::send), with a payload the caller keeps a share of.
    pub(super) fn send_shared(
        &mut self,
        to: i32,
        header: &impl Serialize,
        payload: Arc<Keep>,
    ) -> Result<()> {
        self.send(to, header, None)?;
        self.start(to, payload, PIECE);
        Ok(())
    }

    /// Starts the sends of `keep`'s bytes, one per piece (at least one).
    fn start(&mut self, to: i32, keep: Arc<Keep>, tag: i32) {
        let bytes = keep.bytes();
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        let mut at = 0;
        loop {
            let n = (len - at).min(PIECE_BYTES);
            // SAFETY: `ptr..ptr + len` are the bytes of `keep` (a vector's heap buffer,
            // a mapped segment or a body, none of which moves while `keep` lives),
            // never written while it is shared; the `Sending` below holds a clone of
            // `keep` and frees it only once the request completed, and leaks it
            // otherwise, so the slice outlives every read MPI makes of it.
            let piece: &'static [u8] = unsafe { std::slice::from_raw_parts(ptr.add(at), n) };
            let request =
                self.world
                    .process_at_rank(to)
                    .immediate_send_with_tag(StaticScope, piece, tag);
            self.sending.push(Sending {
                to,
                request: Some(request),
                keep: ManuallyDrop::new(Arc::clone(&keep)),
            });
            at += n;
            if at >= len {
                break;
            }
        }
    }

    /// Lets sends progress, and frees those that completed.
    pub(super) fn progress(&mut self) {
        self.sending.retain_mut(|s| match s.request.take() {
            None => false,
            Some(request) => match request.test() {
                Ok(_) => false,
                Err(request) => {
                    s.request = Some(request);
                    true
                }
            },
        });
    }

    /// Whether sends are still in flight (to ranks other than those `dead`).
    pub(super) fn sending(&self, dead: impl Fn(i32) -> bool) -> bool {
        self.sending.iter().any(|s| !dead(s.to))
    }

    /// Gives up the sends to a rank that died: their bytes are leaked, not freed, and
    /// so are the segments it was reading.
    pub(super) fn forget(&mut self, rank: i32) {
        self.readers.remove(&rank);
        if let Some(window) = &mut self.window {
            window.lost(rank);
        }
        let (dead, live): (Vec<Sending>, Vec<Sending>) = std::mem::take(&mut self.sending)
            .into_iter()
            .partition(|s| s.to == rank);
        self.sending = live;
        for s in dead {
            // Dropping a `Sending` with its request pending leaks both.
            drop(s);
        }
    }

    /// The next header waiting for this rank, if any.
    pub(super) fn probe(&mut self) -> Result<Option<Received>> {
        let Some((message, status)) = self.world.any_process().immediate_matched_probe() else {
            return Ok(None);
        };
        let len = count(&status)?;
        let mut header = vec![0u8; len];
        message.matched_receive_into(&mut header[..]);
        if status.tag() != HEADER {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "rank {} sent {len} bytes that follow no message",
                    status.source_rank()
                ),
            ));
        }
        Ok(Some(Received {
            from: status.source_rank(),
            header,
        }))
    }

    /// Receives the payload that follows a header from `from` into `into` (exactly its
    /// length).
    pub(super) fn receive_payload(&mut self, from: i32, into: &mut [u8]) -> Result<()> {
        let mut at = 0;
        loop {
            let deadline = Instant::now() + PIECE_PATIENCE;
            let (message, status) = loop {
                if let Some(found) = self
                    .world
                    .process_at_rank(from)
                    .immediate_matched_probe_with_tag(PIECE)
                {
                    break found;
                }
                if Instant::now() > deadline {
                    return Err(Error::new(
                        ErrorKind::WorkerDied,
                        format!("rank {from} stopped in the middle of a message"),
                    ));
                }
                self.progress();
                std::thread::yield_now();
            };
            let n = count(&status)?;
            let Some(piece) = into.get_mut(at..at + n) else {
                // Received, so that MPI's matched message is not left pending, then refused.
                let mut sink = vec![0u8; n];
                message.matched_receive_into(&mut sink[..]);
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("rank {from} sent more bytes than its message said"),
                ));
            };
            message.matched_receive_into(piece);
            at += n;
            if at >= into.len() {
                return Ok(());
            }
        }
    }
}

impl Endpoint {
    /// Receives the `len` bytes of payload that follow a header from `from` (`what` it
    /// is, for the error if it cannot be held).
    pub(super) fn receive_vec(&mut self, from: i32, len: u64, what: &str) -> Result<Vec<u8>> {
        let len = usize::try_from(len)
            .map_err(|_| Error::new(ErrorKind::Protocol, format!("{what} too large to hold")))?;
        let mut bytes = vec![0u8; len];
        self.receive_payload(from, &mut bytes)?;
        Ok(bytes)
    }

    /// Reads and drops the `len` bytes of payload that follow a header from `from`.
    pub(super) fn discard_payload(&mut self, from: i32, len: u64) -> Result<()> {
        let mut left = len;
        loop {
            let n = usize::try_from(left.min(PIECE_BYTES as u64)).unwrap_or(PIECE_BYTES);
            let mut sink = vec![0u8; n];
            self.receive_payload(from, &mut sink)?;
            left -= n as u64;
            if left == 0 {
                return Ok(());
            }
        }
    }
}

/// The bytes a probed message holds.
fn count(status: &mpi::point_to_point::Status) -> Result<usize> {
    usize::try_from(status.count(u8::equivalent_datatype()))
        .map_err(|_| Error::new(ErrorKind::Protocol, "a message of negative length"))
}

/// Decodes a header.
pub(super) fn decode<T: DeserializeOwned>(received: &Received) -> Result<T> {
    postcard::from_bytes(&received.header).map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!(
                "rank {} sent a message that does not decode: {e}",
                received.from
            ),
        )
    })
}

/// How long a polling loop keeps checking without sleeping after it last found
/// something to do: a round trip to another rank comes back well within it.
const HOT: Duration = Duration::from_millis(1);

/// How a loop that polls waits when it found nothing to do: not at all for [`HOT`]
/// after it last did something, then in sleeps that grow to a millisecond, so an idle
/// rank costs no core.
#[derive(Default)]
pub(super) struct Idle {
    /// When the loop last found nothing after doing something.
    since: Option<Instant>,
    rounds: u32,
}

impl Idle {
    /// After a round of the loop: `busy` says whether it did anything.
    pub(super) fn after(&mut self, busy: bool) {
        if busy {
            self.since = None;
            self.rounds = 0;
            return;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() < HOT {
            std::thread::yield_now();
            return;
        }
        self.rounds = self.rounds.saturating_add(1);
        std::thread::sleep(Duration::from_micros(u64::from(self.rounds.min(50)) * 20));
    }
}
