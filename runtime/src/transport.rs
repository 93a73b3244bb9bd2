//! The byte transport under the protocol: a Unix stream socket that also carries file
//! descriptors (`SCM_RIGHTS`), so that memfd segments travel with the frames that need
//! them. Every other part of the runtime goes through this module to move frames, so a
//! different transport can replace it without touching pools or the macro.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Whether `fd` has something to read (or its peer is gone: reading then reports the
/// end), waiting up to `timeout` for it.
pub(crate) fn readable_within(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd and we pass a count of 1.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n < 0 => Err(io::Error::last_os_error()),
        n => Ok(n > 0),
    }
}

/// The most descriptors one frame may carry (the kernel's limit per message is 253).
pub(crate) const MAX_FDS: usize = 200;

/// Reads bytes with `recvmsg`, keeping the descriptors that arrive beside them in order.
pub(crate) struct FdReader {
    stream: UnixStream,
    fds: VecDeque<OwnedFd>,
}

impl FdReader {
    /// Makes reads return `WouldBlock` instead of waiting (for a peer known to be gone).
    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        self.stream.set_nonblocking(true)
    }

    pub(crate) fn new(stream: UnixStream) -> Self {
        FdReader {
            stream,
            fds: VecDeque::new(),
        }
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

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const SPACE: usize = MAX_FDS * size_of::<RawFd>();
        // Room for one SCM_RIGHTS header and MAX_FDS descriptors, suitably aligned.
        let mut control = [0u64; SPACE / 8 + 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr is valid; the fields set below point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        let n = loop {
            // SAFETY: recvmsg into the buffers described by `msg`, all valid for writes.
            let n =
                unsafe { libc::recvmsg(self.stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // SAFETY: walking the control messages recvmsg filled in, with the libc macros.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        self.fds.push_back(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more file descriptors arrived than a frame may carry",
            ));
        }
        Ok(n)
    }
}

/// Writes `bytes`, with `fds` attached to the first byte, completely.
pub(crate) fn send(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use std::io::Write;
    if fds.is_empty() {
        return (&*stream).write_all(bytes);
    }
    let sent = sendmsg(stream, bytes, fds, 0)?;
    (&*stream).write_all(&bytes[sent..])
}

/// Writes as much of `bytes` as the socket takes now, with `fds` attached to the first
/// byte, without waiting: the number of bytes written, or `WouldBlock` if none were.
pub(crate) fn send_now(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    sendmsg(stream, bytes, fds, libc::MSG_DONTWAIT)
}

/// One `sendmsg` of `bytes` with `fds` attached (none: no control message).
fn sendmsg(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[RawFd],
    flags: libc::c_int,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a frame may carry at most {MAX_FDS} shared-memory segments"),
        ));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let fd_bytes = size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u64; if fds.is_empty() { 0 } else { space.div_ceil(8) }];
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: filling the one control message the buffer was sized for.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: sendmsg from the buffers described by `msg`; the kernel duplicates the
        // descriptors, which stay ours.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{self, Trailer};
use crate::shm::{Entry, Segment, SegmentDesc, ShmBackend};

/// How large bodies travel, as agreed between a parent and its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShmConfig {
    /// A frame body larger than this goes through a one-shot shared-memory segment.
    pub threshold: usize,
    pub backend: ShmBackend,
}

/// Bodies above 512 KiB go through shared memory: where a one-shot segment starts to
/// beat the socket on this machine (see BENCHMARKS.md for the measurement).
pub(crate) const DEFAULT_SHM_THRESHOLD: usize = 512 << 10;

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            threshold: DEFAULT_SHM_THRESHOLD,
            backend: crate::shm::segment::default_backend(),
        }
    }
}

/// Ends a `Run` or `Done` frame that starts at `start` and whose body starts at
/// `body_at` and runs to the end of `buf`: moves a body above the threshold into a
/// one-shot segment, lists `attach` and that segment in the trailer, and returns the
/// descriptors to send beside the frame and the one-shot segment (which the caller keeps
/// until the receiver has it, or drops at once for a memfd).
pub(crate) fn seal_frame(
    buf: &mut Vec<u8>,
    start: usize,
    body_at: usize,
    attach: &[&Arc<Entry>],
    shm: ShmConfig,
) -> Result<(Vec<RawFd>, Option<Segment>)> {
    let oneshot = oneshot_for(&buf[body_at..], shm)?;
    if oneshot.is_some() {
        buf.truncate(body_at);
    }
    finish_frame(buf, start, attach, oneshot)
}

/// Appends to `buf` a frame made of `header` and `body` (kept unchanged, so the frame can
/// be sent again to another worker), ended as [`seal_frame`] does.
pub(crate) fn append_frame(
    buf: &mut Vec<u8>,
    header: &[u8],
    body: &[u8],
    attach: &[&Arc<Entry>],
    shm: ShmConfig,
) -> Result<(Vec<RawFd>, Option<Segment>)> {
    let start = buf.len();
    let oneshot = oneshot_for(body, shm)?;
    buf.extend_from_slice(header);
    if oneshot.is_none() {
        buf.extend_from_slice(body);
    }
    let sealed = finish_frame(buf, start, attach, oneshot);
    if sealed.is_err() {
        buf.truncate(start);
    }
    sealed
}

/// A one-shot segment holding `body`, if it is above the threshold.
fn oneshot_for(body: &[u8], shm: ShmConfig) -> Result<Option<Segment>> {
    if body.len() <= shm.threshold {
        return Ok(None);
    }
    Segment::create(shm.backend, body).map(Some)
}

fn finish_frame(
    buf: &mut Vec<u8>,
    start: usize,
    attach: &[&Arc<Entry>],
    oneshot: Option<Segment>,
) -> Result<(Vec<RawFd>, Option<Segment>)> {
    let mut descs: Vec<SegmentDesc> = attach.iter().map(|e| e.segment.desc().clone()).collect();
    let mut fds: Vec<RawFd> = attach.iter().filter_map(|e| e.segment.raw_fd()).collect();
    if let Some(seg) = &oneshot {
        descs.push(seg.desc().clone());
        fds.extend(seg.raw_fd());
    }
    protocol::finish_with(buf, start, &descs, oneshot.is_some())
        .map_err(|e| Error::new(ErrorKind::Serialization, e.to_string()))?;
    Ok((fds, oneshot))
}

/// The segments a received frame carries: those its handles refer to (opened and, in a
/// worker, registered until released), and the one-shot segment holding its body.
pub(crate) fn open_segments(
    reader: &mut FdReader,
    trailer: &Trailer<'_>,
    register: bool,
) -> Result<Option<Segment>> {
    let n_fds = trailer.segments.iter().filter(|d| d.name.is_none()).count();
    let mut fds = reader
        .take_fds(n_fds)
        .map_err(|e| Error::io(ErrorKind::Protocol, "receiving shared-memory segments", e))?
        .into_iter();
    let mut oneshot = None;
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
            oneshot = Some(seg);
        } else if register {
            crate::shm::register_received(Entry::new(seg));
        } else {
            return Err(Error::new(
                ErrorKind::Protocol,
                "a result carried a shared-memory handle made in a worker; handles can only \
                 be created in the parent",
            ));
        }
    }
    Ok(oneshot)
}
