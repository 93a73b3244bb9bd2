//! The first [`Link`]: a Unix stream socket from a socketpair. Frames are its bytes;
//! memfd segments travel beside them as descriptors (`SCM_RIGHTS`), named segments by
//! the name in the trailer.

use std::io::{self, BufReader};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::frame::{self, Trailer};
use super::link::{Link, Opened, Ready};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::poll::{self, PollFlags, Watch};
use crate::sys::segment::Segment;
use crate::sys::socket::{self, FdReader};

/// How much a link reads ahead: a driver's batch of small frames arrives in one read
/// (a few hundred answers of plain values); a larger frame's body mostly bypasses it,
/// read into its own buffer. Kept small because `BufReader` zero-fills its whole buffer
/// on the first read, on the path of a fresh pool's first call (and of each worker's
/// start): 256 KiB of fresh pages took 140–240 µs there, 16 KiB takes a few.
const READ_AHEAD: usize = 16 << 10;

/// A connection over a Unix stream socket.
pub(crate) struct SocketLink {
    /// Written to directly; read through `reader`, which holds a second descriptor of
    /// the same socket.
    stream: UnixStream,
    reader: BufReader<FdReader>,
    /// Staged bytes, how many of them went out, and the descriptors still to attach to
    /// the next byte sent (our own duplicates, so they stay valid whatever happens to
    /// the segments they came from).
    wbuf: Vec<u8>,
    written: usize,
    wfds: Vec<OwnedFd>,
}

impl SocketLink {
    pub(crate) fn new(stream: UnixStream) -> io::Result<SocketLink> {
        let reader = stream.try_clone()?;
        Ok(SocketLink::with_reader(stream, reader))
    }

    /// As [`SocketLink::new`], with the second descriptor of `stream` made beforehand
    /// (`reader`, from `stream.try_clone()`), so that a start that runs out of
    /// descriptors fails before the handshake, not after it.
    pub(crate) fn with_reader(stream: UnixStream, reader: UnixStream) -> SocketLink {
        SocketLink {
            stream,
            reader: BufReader::with_capacity(READ_AHEAD, FdReader::new(reader)),
            wbuf: Vec::new(),
            written: 0,
            wfds: Vec::new(),
        }
    }
}

/// The descriptors of `segments` that must travel beside the bytes (memfds; named
/// segments travel by name).
fn fds_of<'a>(segments: &'a [&'a Segment]) -> Vec<BorrowedFd<'a>> {
    segments.iter().filter_map(|s| s.fd()).collect()
}

impl Link for SocketLink {
    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        frame::read_frame(&mut self.reader, buf)
    }

    fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    fn segments(&mut self, trailer: &Trailer<'_>) -> Result<Opened> {
        let n_fds = trailer.segments.iter().filter(|d| d.name.is_none()).count();
        let mut fds = self
            .reader
            .get_mut()
            .take_fds(n_fds)
            .map_err(|e| Error::io(ErrorKind::Protocol, "receiving shared-memory segments", e))?
            .into_iter();
        let mut opened = Opened {
            attached: Vec::new(),
            body: None,
        };
        let last = trailer.segments.len().saturating_sub(1);
        for (i, desc) in trailer.segments.iter().enumerate() {
            let fd = if desc.name.is_none() {
                fds.next()
            } else {
                None
            };
            let mut seg = Segment::open(desc.clone(), fd)?;
            if trailer.out_of_line && i == last {
                // One receiver: the name (if any) can go as soon as it is mapped.
                seg.unlink_now();
                opened.body = Some(seg);
            } else {
                opened.attached.push(seg);
            }
        }
        Ok(opened)
    }

    fn outbox(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    fn attach(&mut self, segments: &[&Segment]) -> io::Result<()> {
        // Descriptors ride with the first byte of the next send: before their frame,
        // or with it, never after it, which is all the receiver needs.
        let fds = fds_of(segments)
            .into_iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<io::Result<Vec<OwnedFd>>>()?;
        self.wfds.extend(fds);
        Ok(())
    }

    fn push(&mut self) -> io::Result<()> {
        while self.pending() {
            let fds: Vec<BorrowedFd<'_>> = self.wfds.iter().map(AsFd::as_fd).collect();
            match socket::send_now(&self.stream, &self.wbuf[self.written..], &fds) {
                Ok(n) => {
                    self.written += n;
                    self.wfds.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    self.discard_pending();
                    return Err(e);
                }
            }
        }
        self.discard_pending();
        Ok(())
    }

    fn pending(&self) -> bool {
        self.written < self.wbuf.len()
    }

    fn discard_pending(&mut self) {
        self.wbuf.clear();
        self.written = 0;
        self.wfds.clear();
        if self.wbuf.capacity() > 16 << 20 {
            self.wbuf = Vec::new();
        }
    }

    fn send(&mut self, bytes: &[u8], segments: &[&Segment]) -> io::Result<()> {
        socket::send(&self.stream, bytes, &fds_of(segments))
    }

    fn wait(&self, exit: Option<BorrowedFd<'_>>, timeout: Option<Duration>) -> io::Result<Ready> {
        if self.has_buffered() {
            return Ok(Ready::READ);
        }
        let events = if self.pending() {
            PollFlags::IN | PollFlags::OUT
        } else {
            PollFlags::IN
        };
        let socket = self.stream.as_fd();
        let mut watches = [
            Watch::from_borrowed_fd(socket, events),
            Watch::from_borrowed_fd(exit.unwrap_or(socket), PollFlags::IN),
        ];
        let watched = if exit.is_some() { 2 } else { 1 };
        if !poll::wait(&mut watches[..watched], timeout)? {
            return Ok(Ready::NOTHING);
        }
        let [socket, exit] = &watches;
        Ok(Ready {
            readable: !(socket.revents() - PollFlags::OUT).is_empty(),
            writable: socket.revents().contains(PollFlags::OUT),
            exited: watched == 2 && !exit.revents().is_empty(),
        })
    }

    fn stop_waiting(&mut self) -> io::Result<()> {
        self.reader.get_ref().set_nonblocking()
    }

    fn intact(&self) -> bool {
        // Raw descriptors, not borrowed ones: the point is that they may have been
        // closed behind their owners' backs.
        [
            self.stream.as_raw_fd(),
            self.reader.get_ref().socket().as_raw_fd(),
        ]
        .into_iter()
        .all(socket::is_open)
    }
}

#[cfg(test)]
mod tests;
