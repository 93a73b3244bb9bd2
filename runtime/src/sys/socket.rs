//! Unix stream sockets that carry file descriptors (`SCM_RIGHTS`) beside their bytes,
//! and the socket a worker inherits as its standard input.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most descriptors one frame may carry (the kernel's limit per message is 253).
pub(crate) const MAX_FDS: usize = 200;

/// Reads bytes with `recvmsg`, keeping the descriptors that arrive beside them in order.
pub(crate) struct FdReader {
    stream: UnixStream,
    fds: VecDeque<OwnedFd>,
}

impl FdReader {
    pub(crate) fn new(stream: UnixStream) -> Self {
        FdReader {
            stream,
            fds: VecDeque::new(),
        }
    }

    /// Makes reads return `WouldBlock` instead of waiting (for a peer known to be gone).
    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        self.stream.set_nonblocking(true)
    }

    /// The next `n` descriptors received, in order.
    pub(crate) fn take_fds(&mut self, n: usize) -> io::Result<Vec<OwnedFd>> {
        if self.fds.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a frame needs {n} file descriptors, {} arrived",
                    self.fds.len()
                ),
            ));
        }
        Ok(self.fds.drain(..n).collect())
    }

    pub(crate) fn socket(&self) -> &UnixStream {
        &self.stream
    }
}

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = loop {
            match rustix::net::recvmsg(
                &self.stream,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(msg) => break msg,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                self.fds.extend(fds);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more file descriptors arrived than a frame may carry",
            ));
        }
        Ok(msg.bytes)
    }
}

/// Writes `bytes`, with `fds` attached to the first byte, completely.
pub(crate) fn send(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use std::io::Write;
    if fds.is_empty() {
        return (&*stream).write_all(bytes);
    }
    let sent = sendmsg(stream, bytes, fds, SendFlags::empty())?;
    (&*stream).write_all(&bytes[sent..])
}

/// Writes as much of `bytes` as the socket takes now, with `fds` attached to the first
/// byte, without waiting: the number of bytes written, or `WouldBlock` if none were.
pub(crate) fn send_now(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    sendmsg(stream, bytes, fds, SendFlags::DONTWAIT)
}

/// One `sendmsg` of `bytes` with `fds` attached (none: no control message). The kernel
/// duplicates the descriptors, which stay the caller's.
fn sendmsg(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a frame may carry at most {MAX_FDS} shared-memory segments"),
        ));
    }
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("no room for the descriptors of a frame"));
    }
    let iov = [IoSlice::new(bytes)];
    loop {
        match rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL | flags) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes the socket a worker's parent passed as its standard input: moves it to a
/// close-on-exec descriptor of its own (a task's child processes must not inherit it,
/// or the parent would not see the worker's end of stream when it dies) and reopens
/// stdin on /dev/null, which is what tasks read. `Err` says what was wrong.
pub(crate) fn take_stdin_socket() -> Result<UnixStream, String> {
    let stdin = rustix::stdio::stdin();
    let st = rustix::fs::fstat(stdin).map_err(|e| format!("standard input is not open ({e})"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err("standard input is not a socket".into());
    }
    let fd = rustix::io::fcntl_dupfd_cloexec(stdin, 3)
        .map_err(|e| format!("cannot move the socket: {e}"))?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    null.and_then(|null| rustix::stdio::dup2_stdin(&null))
        .map_err(|e| format!("cannot reopen standard input on /dev/null: {e}"))?;
    Ok(UnixStream::from(fd))
}

/// Whether `fd` is an open descriptor. Takes a raw descriptor on purpose: the point is
/// to notice one closed behind its owner's back.
pub(crate) fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD takes no pointer and touches no memory; on a closed descriptor it
    // fails with EBADF, which is the answer.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}
