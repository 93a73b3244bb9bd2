//! The transport seam: what the pool's drivers and a worker's serving loop need from
//! "the other end", whatever carries the bytes.
//!
//! [`SocketLink`](super::socket::SocketLink) is the first implementation: a Unix stream
//! socket from a socketpair, with memfd segments passed beside the frames as file
//! descriptors (`SCM_RIGHTS`) and named segments by name. A second transport (the
//! cluster's, between ranks) implements [`Link`] and nothing else changes above it.
//! It must provide:
//!
//! - **Frames, in order, whole.** [`recv`](Link::recv) yields each frame's payload as
//!   [`frame::read_frame`](super::frame::read_frame) does (a clean end between frames is
//!   `Ok(false)`; an end inside one is an error); everything sent arrives once, in the
//!   order it was sent. Writes never block the caller unless it asks
//!   ([`send`](Link::send)): a driver that waited for a busy worker to read could not
//!   read that worker's answers meanwhile, nor enforce a time limit.
//! - **Segments, or their contents.** A frame's trailer lists the segments that travel
//!   with it ([`SegmentDesc`](crate::sys::segment::SegmentDesc)). The sender hands
//!   their [`Segment`]s to [`attach`](Link::attach) or [`send`](Link::send) with the
//!   frame bytes; the receiver's [`segments`](Link::segments) turns the trailer back into
//!   mapped `Segment`s of the same ids, lengths and contents. A socket passes
//!   descriptors; a transport between hosts copies the bytes into the stream and makes
//!   a local segment of them at the far end (once per segment and peer: the driver
//!   sends each one once).
//! - **Noticing that the peer is gone.** [`wait`](Link::wait) returns when a frame can
//!   be read, when staged bytes can go out, when the peer hung up (reading then reports
//!   the end), or when an extra descriptor (the worker's pidfd) becomes readable; and
//!   on its own after a timeout, so that time limits hold. A transport that cannot poll
//!   a descriptor probes in slices (an MPI probe, say) within the same timeout.
//!
//! The direct shared-memory path (`crate::direct`) is beside this seam, not behind it:
//! it only exists between a parent and its local workers.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use super::frame::Trailer;
use crate::error::Result;
use crate::sys::segment::Segment;

/// What a [`Link::wait`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    /// A frame (or the end of the stream) can be read.
    pub readable: bool,
    /// Staged bytes can go out.
    pub writable: bool,
    /// The extra descriptor is readable (the worker's pidfd: it has exited).
    pub exited: bool,
}

impl Ready {
    /// Nothing happened before the timeout.
    pub(crate) const NOTHING: Ready = Ready {
        readable: false,
        writable: false,
        exited: false,
    };
    /// Go and read: a read reports what happened (used when waiting itself failed).
    pub(crate) const READ: Ready = Ready {
        readable: true,
        writable: false,
        exited: false,
    };
}

/// The segments a received frame carries, opened.
pub(crate) struct Opened {
    /// Those its handles refer to (`Shared`, `SharedSlice`...), in the trailer's order.
    pub attached: Vec<Segment>,
    /// The one-shot segment holding the frame's body, if it came out of line.
    pub body: Option<Segment>,
}

/// One end of a connection between a parent and a worker; see the module docs for
/// what an implementation must provide.
pub(crate) trait Link: Send {
    /// Reads the next frame's payload into `buf`. `Ok(false)`: the peer closed the
    /// connection between frames.
    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<bool>;

    /// Whether bytes already received wait in this end's buffer (reading needs no wait).
    fn has_buffered(&self) -> bool;

    /// The segments listed in `trailer`, a frame just received, opened in order.
    fn segments(&mut self, trailer: &Trailer<'_>) -> Result<Opened>;

    /// What is waiting to go out: whole frames are appended here, and
    /// [`push`](Self::push) sends them.
    fn outbox(&mut self) -> &mut Vec<u8>;

    /// `segments` travel with the frames in the outbox, ahead of any frame appended
    /// after this call (so before the frame that lists them, or with it).
    fn attach(&mut self, segments: &[&Segment]) -> io::Result<()>;

    /// Sends what the peer takes now of the staged bytes, without waiting.
    fn push(&mut self) -> io::Result<()>;

    /// Whether staged bytes are still waiting to go out.
    fn pending(&self) -> bool;

    /// Forgets the staged bytes (all sent, or the peer is gone).
    fn discard_pending(&mut self);

    /// Sends `bytes` completely, with `segments`, waiting as long as that takes.
    fn send(&mut self, bytes: &[u8], segments: &[&Segment]) -> io::Result<()>;

    /// Waits until something can be read, staged bytes can go out, or `exit` becomes
    /// readable, for at most `timeout` (`None`: no limit). See [`Ready`].
    fn wait(&self, exit: Option<BorrowedFd<'_>>, timeout: Option<Duration>) -> io::Result<Ready>;

    /// From now on reads return at once instead of waiting (for a peer known to be
    /// gone: what it sent before is read, then the end).
    fn stop_waiting(&mut self) -> io::Result<()>;

    /// Whether this end is still intact in this process: a task may have closed the
    /// descriptors under it (a worker checks after every chunk).
    fn intact(&self) -> bool;
}
