//! The wire protocol between a parent and its workers: length-prefixed frames.
//!
//! Every frame is a little-endian `u32` payload length followed by the payload, whose first
//! byte is a tag. The hot frames (`Run`, `Done`) have fixed-width headers followed by
//! concatenated postcard values, so a chunk is encoded and decoded without intermediate
//! allocations; the rare ones (`Hello`, `Fatal`) are postcard structs.

use std::fmt;
use std::io::{self, Read};

use crate::codec::encode_into;
use crate::sys::segment::SegmentDesc;
use crate::task::Failure;

pub(crate) use super::hello::Hello;

/// Bumped on every incompatible change of the frames below.
pub(crate) const PROTOCOL_VERSION: u32 = 2;

/// The largest payload either side accepts. A length prefix above it is rejected before
/// anything is allocated.
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// Leads every `Hello`, so a process that is not a multiproc peer is recognised at once.
pub(super) const MAGIC: [u8; 8] = *b"MPROC\x00\x00\x01";

const TAG_HELLO: u8 = 1;
const TAG_RUN: u8 = 2;
const TAG_DONE: u8 = 3;
const TAG_FATAL: u8 = 4;
const TAG_RELEASE: u8 = 5;
const TAG_SETUP: u8 = 6;

/// One decoded frame. Borrowed frames point into the receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    Hello(Hello),
    /// Run `count` items of `task`; the body holds their concatenated postcard encodings.
    Run {
        chunk: u64,
        count: u32,
        task: &'a str,
        trailer: Trailer<'a>,
    },
    /// `count` items of `chunk` ran, in `nanos` nanoseconds. The body holds the results
    /// of those that succeeded (its first `values_len` bytes), then the [`Failure`]s of
    /// the others.
    Done {
        chunk: u64,
        count: u32,
        nanos: u64,
        values_len: u32,
        trailer: Trailer<'a>,
    },
    /// The sender gives up, and says why.
    Fatal(&'a str),
    /// The parent holds no handle to these segments any more: drop them.
    Release(Vec<u64>),
    /// From the parent, right after the handshake: the worker's control segment (the
    /// one segment of the trailer), in which it records which item it is running, so a
    /// death names the exact item, and which holds its direct path.
    Setup {
        trailer: Trailer<'a>,
    },
}

/// A frame that does not parse, with what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// Starts a frame in `buf` (cleared): room for the length, then the tag.
fn begin(buf: &mut Vec<u8>, tag: u8) {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    buf.push(tag);
}

/// Writes the length prefix of a frame built with [`begin`].
pub(crate) fn finish(buf: &mut [u8]) -> Result<(), ProtocolError> {
    let len = buf.len().saturating_sub(4);
    if len > MAX_FRAME {
        return Err(bad(format!(
            "a frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes"
        )));
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

pub(crate) fn hello_frame(buf: &mut Vec<u8>, hello: &Hello) -> Result<(), ProtocolError> {
    begin(buf, TAG_HELLO);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    encode_into(buf, hello).map_err(|e| bad(format!("encoding the handshake: {e}")))?;
    finish(buf)
}

pub(crate) fn fatal_frame(buf: &mut Vec<u8>, message: &str) -> Result<(), ProtocolError> {
    begin(buf, TAG_FATAL);
    buf.extend_from_slice(message.as_bytes());
    finish(buf)
}

/// Starts a `Run` frame; the caller appends the items, then calls [`finish`].
pub(crate) fn begin_run(buf: &mut Vec<u8>, chunk: u64, count: u32, task: &str) {
    begin(buf, TAG_RUN);
    buf.extend_from_slice(&chunk.to_le_bytes());
    buf.extend_from_slice(&count.to_le_bytes());
    // Task names are module paths; a name longer than u16::MAX cannot be registered
    // anyway, so saturating only ever produces a lookup miss, never a misparse.
    let name = &task.as_bytes()[..task.len().min(u16::MAX as usize)];
    buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
    buf.extend_from_slice(name);
}

/// Sets the item count of a `Run` frame started by [`begin_run`].
pub(crate) fn set_run_count(buf: &mut [u8], count: u32) {
    const COUNT_AT: usize = 4 + 1 + 8;
    buf[COUNT_AT..COUNT_AT + 4].copy_from_slice(&count.to_le_bytes());
}

/// Byte offset, from the start of a `Done` frame, of the fields that are only known
/// after the chunk ran.
const DONE_COUNT_AT: usize = 4 + 1 + 8;
/// Byte offset, from the start of a `Done` frame, of its values.
const DONE_VALUES_AT: usize = DONE_COUNT_AT + 4 + 8 + 4;

/// Appends the start of a `Done` frame to `buf` (which may already hold other frames)
/// and returns where it starts; the caller appends the results of the items that
/// succeeded, then calls [`finish_done`] with that start.
pub(crate) fn begin_done(buf: &mut Vec<u8>, chunk: u64) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.push(TAG_DONE);
    buf.extend_from_slice(&chunk.to_le_bytes());
    buf.extend_from_slice(&[0; 4 + 8 + 4]);
    start
}

/// Completes the body of the `Done` frame that starts at `start`: `count` items ran (the
/// values of those that succeeded follow the header), then the `failures`, in item
/// order. [`finish_with`] ends the frame.
pub(crate) fn finish_done(
    buf: &mut Vec<u8>,
    start: usize,
    count: u32,
    nanos: u64,
    failures: &[Failure],
) -> Result<(), ProtocolError> {
    let values_len = buf.len() - start - DONE_VALUES_AT;
    let values_len = u32::try_from(values_len).map_err(|_| {
        bad(format!(
            "{values_len} bytes of results do not fit in a frame"
        ))
    })?;
    for f in failures {
        encode_into(buf, f).map_err(|e| bad(format!("encoding a failure: {e}")))?;
    }
    let frame = &mut buf[start..];
    frame[DONE_COUNT_AT..DONE_COUNT_AT + 4].copy_from_slice(&count.to_le_bytes());
    frame[DONE_COUNT_AT + 4..DONE_COUNT_AT + 12].copy_from_slice(&nanos.to_le_bytes());
    frame[DONE_COUNT_AT + 12..DONE_COUNT_AT + 16].copy_from_slice(&values_len.to_le_bytes());
    Ok(())
}

/// Where the body of a `Done` frame starting at `start` begins.
pub(crate) fn done_body_at(start: usize) -> usize {
    start + DONE_VALUES_AT
}

/// The end of a `Run` or `Done` frame: the body, and the shared-memory segments that
/// travel with the frame. A segment's memfd arrives beside the frame, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Trailer<'a> {
    /// The body, unless it travels out of line (then it is empty).
    pub body: &'a [u8],
    pub segments: Vec<SegmentDesc>,
    /// The body is the whole content of the last segment, a one-shot segment made for
    /// this frame because the body was large.
    pub out_of_line: bool,
}

/// Ends a `Run` or `Done` frame whose body is complete: appends the segment list, its
/// length and the flags, and writes the length prefix.
pub(crate) fn finish_with(
    buf: &mut Vec<u8>,
    start: usize,
    segments: &[SegmentDesc],
    out_of_line: bool,
) -> Result<(), ProtocolError> {
    let mark = buf.len();
    encode_into(buf, segments).map_err(|e| bad(format!("encoding segment list: {e}")))?;
    let list_len = u32::try_from(buf.len() - mark).map_err(|_| bad("segment list too long"))?;
    buf.extend_from_slice(&list_len.to_le_bytes());
    buf.push(u8::from(out_of_line));
    finish(&mut buf[start..])
}

fn split_trailer(rest: &[u8]) -> Result<Trailer<'_>, ProtocolError> {
    let n = rest.len();
    if n < 5 {
        return Err(bad("truncated frame: the segment trailer is missing"));
    }
    let out_of_line = match rest[n - 1] {
        0 => false,
        1 => true,
        other => return Err(bad(format!("unknown frame flags {other}"))),
    };
    let list_len =
        u32::from_le_bytes([rest[n - 5], rest[n - 4], rest[n - 3], rest[n - 2]]) as usize;
    let body_end = (n - 5)
        .checked_sub(list_len)
        .ok_or_else(|| bad("truncated frame: the segment list is longer than the frame"))?;
    let (segments, left) = postcard::take_from_bytes::<Vec<SegmentDesc>>(&rest[body_end..n - 5])
        .map_err(|e| bad(format!("malformed segment list: {e}")))?;
    if !left.is_empty() {
        return Err(bad("trailing bytes after the segment list"));
    }
    if out_of_line && (segments.is_empty() || body_end != 0) {
        return Err(bad("an out-of-line body without its segment"));
    }
    Ok(Trailer {
        body: &rest[..body_end],
        segments,
        out_of_line,
    })
}

/// Writes a `Setup` frame carrying the control segment `control`.
pub(crate) fn setup_frame(buf: &mut Vec<u8>, control: &SegmentDesc) -> Result<(), ProtocolError> {
    begin(buf, TAG_SETUP);
    finish_with(buf, 0, std::slice::from_ref(control), false)
}

/// Writes a `Release` frame for `ids`.
pub(crate) fn release_frame(buf: &mut Vec<u8>, ids: &[u64]) -> Result<(), ProtocolError> {
    begin(buf, TAG_RELEASE);
    encode_into(buf, ids).map_err(|e| bad(format!("encoding a release: {e}")))?;
    finish(buf)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ProtocolError> {
        if self.0.len() < n {
            return Err(bad(format!("truncated frame: {what} is missing")));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self, what: &str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ProtocolError> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Parses one frame payload (the bytes after the length prefix).
pub(crate) fn parse(payload: &[u8]) -> Result<Frame<'_>, ProtocolError> {
    let (&tag, rest) = payload.split_first().ok_or_else(|| bad("empty frame"))?;
    let mut c = Cursor(rest);
    match tag {
        TAG_HELLO => {
            if c.take(MAGIC.len(), "the handshake magic")? != MAGIC {
                return Err(bad("the handshake does not start with the multiproc magic"));
            }
            let protocol = c.u32("the protocol version")?;
            if protocol != PROTOCOL_VERSION {
                return Err(bad(format!(
                    "protocol version {protocol} received, {PROTOCOL_VERSION} expected \
                     (the processes run different multiproc versions)"
                )));
            }
            let (hello, left) = postcard::take_from_bytes::<Hello>(c.0)
                .map_err(|e| bad(format!("malformed handshake: {e}")))?;
            if !left.is_empty() {
                return Err(bad("trailing bytes after the handshake"));
            }
            Ok(Frame::Hello(hello))
        }
        TAG_RUN => {
            let chunk = c.u64("the chunk id")?;
            let count = c.u32("the item count")?;
            let len = c.u16("the task name length")?;
            let task = std::str::from_utf8(c.take(usize::from(len), "the task name")?)
                .map_err(|_| bad("the task name is not UTF-8"))?;
            Ok(Frame::Run {
                chunk,
                count,
                task,
                trailer: split_trailer(c.0)?,
            })
        }
        TAG_DONE => {
            let chunk = c.u64("the chunk id")?;
            let count = c.u32("the outcome count")?;
            let nanos = c.u64("the run time")?;
            let values_len = c.u32("the length of the values")?;
            let trailer = split_trailer(c.0)?;
            if !trailer.out_of_line && values_len as usize > trailer.body.len() {
                return Err(bad("truncated frame: part of the values is missing"));
            }
            Ok(Frame::Done {
                chunk,
                count,
                nanos,
                values_len,
                trailer,
            })
        }
        TAG_SETUP => {
            let trailer = split_trailer(c.0)?;
            if trailer.segments.len() != 1 || !trailer.body.is_empty() || trailer.out_of_line {
                return Err(bad("a Setup frame carries exactly one segment"));
            }
            Ok(Frame::Setup { trailer })
        }
        TAG_RELEASE => {
            let (ids, left) = postcard::take_from_bytes::<Vec<u64>>(c.0)
                .map_err(|e| bad(format!("malformed release: {e}")))?;
            if !left.is_empty() {
                return Err(bad("trailing bytes after a release"));
            }
            Ok(Frame::Release(ids))
        }
        TAG_FATAL => Ok(Frame::Fatal(
            std::str::from_utf8(c.0).map_err(|_| bad("the fatal message is not UTF-8"))?,
        )),
        other => Err(bad(format!("unknown frame tag {other}"))),
    }
}

/// Reads one frame payload into `buf`. `Ok(false)` is a clean end of stream (between
/// frames); a stream that ends inside a frame, or a length above [`MAX_FRAME`], is an
/// error. Memory grows with the bytes that actually arrive, not with the length claimed.
pub(crate) fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ended inside a frame's length prefix",
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame claims {len} bytes, more than the limit of {MAX_FRAME}"),
        ));
    }
    buf.clear();
    buf.reserve(len.min(1 << 20));
    let read = r.take(len as u64).read_to_end(buf)?;
    if read != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("truncated frame: {read} of {len} bytes arrived"),
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
