//! Frame bodies: how a large one moves into a one-shot shared-memory segment, how the
//! segments a frame carries are listed in its trailer, and how a worker's answer is read
//! back (the one reader of `Done` frames, for every path that gets one).

use std::ops::Range;

use super::frame::{self, Frame};
use super::link::Link;
use crate::error::{Error, ErrorKind, Result};
use crate::sys::segment::{Segment, SegmentDesc, ShmBackend};

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
            backend: crate::sys::segment::default_backend(),
        }
    }
}

/// Ends a `Run` or `Done` frame that starts at `start` and whose body starts at
/// `body_at` and runs to the end of `buf`: moves a body above the threshold into a
/// one-shot segment, and lists `attach` and that segment in the trailer. Returns the
/// one-shot segment, which travels with the frame after `attach` (the caller keeps it
/// until the receiver has it).
pub(crate) fn seal_frame(
    buf: &mut Vec<u8>,
    start: usize,
    body_at: usize,
    attach: &[&Segment],
    shm: ShmConfig,
) -> Result<Option<Segment>> {
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
    attach: &[&Segment],
    shm: ShmConfig,
) -> Result<Option<Segment>> {
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

/// Appends to `buf` a frame made of `header` whose body is all of `body`, a one-shot
/// segment written while the chunk was encoded; lists `attach` and `body` in the
/// trailer, in that order (the order in which they must travel).
pub(crate) fn append_frame_of_segment(
    buf: &mut Vec<u8>,
    header: &[u8],
    body: &Segment,
    attach: &[&Segment],
) -> Result<()> {
    let start = buf.len();
    buf.extend_from_slice(header);
    let mut descs: Vec<SegmentDesc> = attach.iter().map(|s| s.desc().clone()).collect();
    descs.push(body.desc().clone());
    frame::finish_with(buf, start, &descs, true).map_err(|e| {
        buf.truncate(start);
        Error::new(ErrorKind::Serialization, e.to_string())
    })
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
    attach: &[&Segment],
    oneshot: Option<Segment>,
) -> Result<Option<Segment>> {
    let mut descs: Vec<SegmentDesc> = attach.iter().map(|s| s.desc().clone()).collect();
    if let Some(seg) = &oneshot {
        descs.push(seg.desc().clone());
    }
    frame::finish_with(buf, start, &descs, oneshot.is_some())
        .map_err(|e| Error::new(ErrorKind::Serialization, e.to_string()))?;
    Ok(oneshot)
}

/// The body of a `Done` frame: in the frame, or in a one-shot shared-memory segment.
pub(crate) enum Body {
    Inline { frame: Vec<u8>, range: Range<usize> },
    Mapped(Segment),
}

/// The largest buffer kept for reuse: above it, bodies travel out of line anyway.
const SPARE_LIMIT: usize = 4 << 20;

thread_local! {
    /// The buffer of the last inline body dropped on this thread, for the next frame
    /// this thread reads: a driver that decodes a chunk's results reads the next
    /// chunk's answer into the same memory, instead of allocating and freeing a frame
    /// per chunk (whose large frees made the allocator consolidate its free lists).
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// Whether this thread reads frames into spare buffers (a driver): only such a
    /// thread keeps one, so no other thread holds on to memory it would never reuse.
    static REUSES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A buffer to read the next frame into: the one an inline body dropped on this thread
/// left, else an empty one. From the first call on, this thread keeps the buffer of the
/// inline bodies it drops.
pub(crate) fn spare_buffer() -> Vec<u8> {
    REUSES.with(|r| r.set(true));
    SPARE.with(std::cell::Cell::take)
}

impl Drop for Body {
    fn drop(&mut self) {
        let Body::Inline { frame, .. } = self else {
            return;
        };
        if frame.capacity() > SPARE_LIMIT || !REUSES.try_with(std::cell::Cell::get).unwrap_or(false)
        {
            return;
        }
        let mut frame = std::mem::take(frame);
        frame.clear();
        // Keeps the larger of the two buffers.
        let _ = SPARE.try_with(|spare| {
            let old = spare.take();
            spare.set(if old.capacity() >= frame.capacity() {
                old
            } else {
                frame
            });
        });
    }
}

impl Body {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Body::Inline { frame, range } => &frame[range.clone()],
            Body::Mapped(seg) => seg.bytes(),
        }
    }
}

/// A worker's answer to a chunk.
pub(crate) enum Answer {
    /// `count` items ran, in `nanos`; the first `values_len` bytes of `body` are the
    /// values of those that succeeded, the rest the failures of the others.
    Done {
        count: u32,
        nanos: u64,
        values_len: usize,
        body: Body,
    },
    /// The worker gave up, and said why.
    Fatal(String),
}

/// What an answer must be: for chunk `chunk`, of at most `count` items.
#[derive(Clone, Copy)]
pub(crate) struct Expect {
    pub chunk: u64,
    pub count: u32,
}

/// Reads the answer in `payload` (a frame just received, taken from the caller), to
/// the chunk `expect` describes (`None`: no chunk was running, so only a `Fatal` frame
/// can be an answer). A one-shot body is opened through `link`, which also delivered
/// any segment the frame lists; without a link (the direct path), a frame that lists
/// segments is refused. `Err` says what is wrong with the frame, in words.
pub(crate) fn read_answer(
    payload: &mut Vec<u8>,
    expect: Option<Expect>,
    link: Option<&mut dyn Link>,
) -> std::result::Result<Answer, String> {
    let (count, nanos, values_len, range, oneshot) = match frame::parse(payload) {
        Ok(Frame::Done {
            chunk,
            count,
            nanos,
            values_len,
            trailer,
        }) if expect.is_some_and(|e| e.chunk == chunk && count <= e.count) => {
            let start = trailer.body.as_ptr() as usize - payload.as_ptr() as usize;
            let range = start..start + trailer.body.len();
            let oneshot = match link {
                Some(link) => {
                    let opened = link
                        .segments(&trailer)
                        .map_err(|e| e.message().to_owned())?;
                    if !opened.attached.is_empty() {
                        return Err("a result carried a shared-memory handle made in a \
                                    worker; handles can only be created in the parent"
                            .into());
                    }
                    opened.body
                }
                None if trailer.segments.is_empty() && !trailer.out_of_line => None,
                None => return Err("an answer with shared-memory segments".into()),
            };
            (count, nanos, values_len as usize, range, oneshot)
        }
        Ok(Frame::Fatal(why)) => return Ok(Answer::Fatal(why.to_owned())),
        Ok(other) => return Err(format!("unexpected frame {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    let body = match oneshot {
        Some(seg) => Body::Mapped(seg),
        None => Body::Inline {
            frame: std::mem::take(payload),
            range,
        },
    };
    if values_len > body.bytes().len() {
        return Err("the values are longer than the body".into());
    }
    Ok(Answer::Done {
        count,
        nanos,
        values_len,
        body,
    })
}
