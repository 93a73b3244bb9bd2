//! The worker's serving loop: frames from the socket, calls from the direct path, answers
//! back (batched while more frames wait).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{BUSY, exit_on_parent_gone, install_control};
use crate::sys::segment::Segment;
use crate::task::Failure;
use crate::wire::frame::{self, Frame};
use crate::wire::{self, Link, ShmConfig};

/// A `Run` frame, with the one-shot segment holding its body if it came out of line.
struct Incoming {
    frame: Vec<u8>,
    body: Option<Segment>,
}

/// Results of quick chunks are held back while more frames are already waiting, up to
/// this long, so a stream of tiny tasks costs one write per batch, not one per task.
const BATCH_FOR: Duration = Duration::from_micros(200);
/// ...and up to this many bytes.
const BATCH_BYTES: usize = 1 << 20;

/// Serves the parent: reads frames, runs the chunks, writes the answers. Returns only
/// with the reason the worker gives up.
pub(super) fn work(
    link: &mut dyn Link,
    shm: ShmConfig,
) -> Result<std::convert::Infallible, String> {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    let mut batch_started: Option<Instant> = None;
    let mut direct = None;
    let mut direct_out = Vec::new();
    loop {
        if !link.has_buffered() {
            // Answers held back go out as soon as no frame is waiting to be run.
            flush(link, &mut out, &mut batch_started);
            // Then, before blocking on the socket, calls may come through the direct path.
            if direct.is_none() {
                direct = super::direct();
            }
            if let Some(direct) = &mut direct {
                let mut run = |payload: &[u8], out: &mut Vec<u8>| {
                    run_direct_call(payload, out, &mut failures)
                };
                let ready = &*link;
                direct.serve(
                    crate::direct::OPEN_FOR,
                    // A failed wait: the socket's read reports what is wrong.
                    &|| {
                        ready
                            .wait(None, Some(Duration::ZERO))
                            .map_or(true, |r| r.readable)
                    },
                    &mut direct_out,
                    &mut run,
                )?;
                if direct_out.capacity() > 64 << 20 {
                    direct_out = Vec::new();
                }
            }
        }
        let incoming = next_run(link)?;
        let started = Instant::now();
        let done_so_far = out.len();
        let items = incoming.body.as_ref().map(Segment::bytes);
        // Range handles (`SharedChunkMut`) decode as writers only in chunks from the
        // parent's socket (never in direct calls, which carry no segments).
        let ran =
            crate::shm::receiving(|| run_chunk(&incoming.frame, items, &mut out, &mut failures));
        let start = match ran? {
            Ran::Done(start) => start,
            Ran::UnknownTask(why) | Ran::KeptRange(why) => {
                // Answers already held back go first: their chunks are done.
                out.truncate(done_so_far);
                flush(link, &mut out, &mut batch_started);
                let _ = frame::fatal_frame(&mut out, &why).map(|()| link.send(&out, &[]));
                return Err(why);
            }
        };
        drop(incoming);
        if !link.intact() {
            socket_taken("the descriptor is closed");
        }
        let body_at = frame::done_body_at(start);
        let oneshot = wire::seal_frame(&mut out, start, body_at, &[], shm)
            .map_err(|e| format!("cannot send a result: {e}"))?;
        if let Some(mut seg) = oneshot {
            // Results out of line: send now, with the segment. The parent removes a
            // named segment's name once it has mapped it.
            seg.leave_name_to_receiver();
            flush_with(link, &mut out, &[&seg], &mut batch_started);
            drop(seg);
            continue;
        }
        let batch_age = batch_started.get_or_insert(started).elapsed();
        if batch_age >= BATCH_FOR || out.len() >= BATCH_BYTES {
            flush(link, &mut out, &mut batch_started);
        }
    }
}

/// What running a `Run` frame gave.
enum Ran {
    /// The `Done` frame starts at this offset of the output, its body complete (the
    /// caller ends it).
    Done(usize),
    /// The frame names a task this binary does not have.
    UnknownTask(String),
    /// The task kept a range it received (`SharedChunkMut`) past its return: the
    /// worker must not answer, so that the parent keeps the range lent until it has
    /// killed and reaped this process.
    KeptRange(String),
}

/// Runs the chunk of a `Run` frame (its payload `frame`; its items in `items` when they
/// came out of line) and appends the start of its `Done` frame to `out`.
fn run_chunk(
    frame: &[u8],
    items: Option<&[u8]>,
    out: &mut Vec<u8>,
    failures: &mut Vec<Failure>,
) -> Result<Ran, String> {
    let Ok(Frame::Run {
        chunk,
        count,
        task,
        trailer,
    }) = frame::parse(frame)
    else {
        return Err("protocol error: a worker only accepts Run frames".into());
    };
    let items = items.unwrap_or(trailer.body);
    let Some(run) = crate::task::lookup(task) else {
        return Ok(Ran::UnknownTask(format!(
            "no #[parallel] function named `{task}` in this binary"
        )));
    };
    let start = frame::begin_done(out, chunk);
    crate::task::note::set_chunk(chunk);
    BUSY.store(true, Ordering::SeqCst);
    let started = Instant::now();
    failures.clear();
    let done = run(items, count, out, failures);
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    BUSY.store(false, Ordering::SeqCst);
    super::count_chunk(done, failures.len(), nanos);
    if let Some(why) = crate::shm::ranges_kept() {
        // Before the progress note: the parent blames the item that ran last.
        return Ok(Ran::KeptRange(why));
    }
    // Past its last item: if this process dies before the next chunk starts, its
    // driver knows that no chunk was running.
    crate::task::note::ProgressNote::current().note(count);
    frame::finish_done(out, start, done, nanos, failures).map_err(|e| e.to_string())?;
    Ok(Ran::Done(start))
}

/// Runs a call that came through the direct path and appends its whole answer to `out`:
/// the `Done` frame, its body always in line (the direct path carries answers of any
/// size), or a `Fatal` frame for a task this binary does not have.
fn run_direct_call(
    payload: &[u8],
    out: &mut Vec<u8>,
    failures: &mut Vec<Failure>,
) -> Result<usize, String> {
    if let Ok(Frame::Run { trailer, .. }) = frame::parse(payload)
        && !trailer.segments.is_empty()
    {
        return Err("protocol error: a direct call with shared-memory segments".into());
    }
    match run_chunk(payload, None, out, failures)? {
        Ran::Done(start) => {
            frame::finish_with(out, start, &[], false).map_err(|e| e.to_string())?;
            Ok(start)
        }
        Ran::KeptRange(why) => Err(format!("protocol error: {why} (in a direct call)")),
        Ran::UnknownTask(why) => {
            let start = out.len();
            frame::fatal_frame(out, &why).map_err(|e| e.to_string())?;
            Ok(start)
        }
    }
}

/// Reads frames until a `Run` frame, handling the others (segment releases, the
/// control segment) on the way. The parent's end of stream ends the worker.
fn next_run(link: &mut dyn Link) -> Result<Incoming, String> {
    loop {
        let mut frame = Vec::new();
        match link.recv(&mut frame) {
            Ok(true) => {}
            Ok(false) => exit_on_parent_gone(),
            // A parent that exits with our results unread resets the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => exit_on_parent_gone(),
            Err(e) => return Err(format!("protocol error: {e}")),
        }
        // Segments are opened as they arrive, before any handle that refers to them is
        // decoded.
        let body = match frame::parse(&frame) {
            Ok(Frame::Run { trailer, .. }) => {
                let opened = link
                    .segments(&trailer)
                    .map_err(|e| format!("protocol error: {e}"))?;
                for seg in opened.attached {
                    crate::shm::register_received(crate::shm::Entry::new(seg));
                }
                opened.body
            }
            Ok(Frame::Release(ids)) => {
                crate::shm::release(&ids);
                continue;
            }
            Ok(Frame::Setup { trailer }) => {
                let mut opened = link
                    .segments(&trailer)
                    .map_err(|e| format!("protocol error: {e}"))?;
                let control = opened
                    .attached
                    .pop()
                    .ok_or("protocol error: a Setup frame without its segment")?;
                install_control(control)?;
                continue;
            }
            Ok(other) => return Err(format!("protocol error: unexpected frame {other:?}")),
            Err(e) => return Err(format!("protocol error: {e}")),
        };
        return Ok(Incoming { frame, body });
    }
}

/// A task closed this worker's socket: leaves the note that makes the parent blame the
/// chunk that ran last (see `SOCKET_TAKEN`), says so on stderr, and exits.
fn socket_taken(why: &str) -> ! {
    crate::sys::overflow::leave_note(crate::direct::SOCKET_TAKEN);
    eprintln!(
        "multiproc worker {}: a task closed the worker's socket ({why}); the worker exits",
        std::process::id()
    );
    std::process::exit(super::EXIT_FAILURE)
}

/// Writes the held results; a parent that is gone ends the worker.
fn flush(link: &mut dyn Link, out: &mut Vec<u8>, batch_started: &mut Option<Instant>) {
    flush_with(link, out, &[], batch_started);
}

/// Writes the held results with `segments` before them.
fn flush_with(
    link: &mut dyn Link,
    out: &mut Vec<u8>,
    segments: &[&Segment],
    batch_started: &mut Option<Instant>,
) {
    *batch_started = None;
    if out.is_empty() {
        return;
    }
    if let Err(e) = link.send(out, segments) {
        let gone = [rustix::io::Errno::BADF, rustix::io::Errno::NOTSOCK];
        if gone
            .iter()
            .any(|g| e.raw_os_error() == Some(g.raw_os_error()))
        {
            // Not the parent hanging up: something else now sits at the descriptor.
            socket_taken(&e.to_string());
        }
        exit_on_parent_gone();
    }
    out.clear();
    // Don't hold on to a buffer grown by one huge chunk.
    if out.capacity() > 64 << 20 {
        *out = Vec::new();
    }
}
