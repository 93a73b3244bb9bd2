//! The worker's serving loop: frames from the socket, calls from the lane, answers
//! back (batched while more frames wait).

use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{BUSY, CURRENT_CHUNK, exit_on_parent_gone, install_control};
use crate::protocol::{self, Frame};
use crate::shm::Segment;
use crate::transport::{self, FdReader, ShmConfig};

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
pub(super) fn work(socket: UnixStream, shm: ShmConfig) -> Result<std::convert::Infallible, String> {
    let mut writer = socket
        .try_clone()
        .map_err(|e| format!("cannot duplicate the socket: {e}"))?;
    let mut reader = std::io::BufReader::with_capacity(256 << 10, FdReader::new(socket));
    let mut out = Vec::new();
    let mut failures = Vec::new();
    let mut batch_started: Option<Instant> = None;
    let mut lane = None;
    let mut lane_out = Vec::new();
    loop {
        if !input_waiting(&reader) {
            // Answers held back go out as soon as no frame is waiting to be run.
            flush(&mut writer, &mut out, &mut batch_started);
            // Then, before blocking on the socket, calls may come through the lane.
            if lane.is_none() {
                lane = super::lane();
            }
            if let Some(lane) = &mut lane {
                let mut run =
                    |payload: &[u8], out: &mut Vec<u8>| run_lane_call(payload, out, &mut failures);
                let fd = reader.get_ref().raw_fd();
                lane.serve(
                    crate::lane::OPEN_FOR,
                    // A failed `poll`: the socket's read reports what is wrong.
                    &|| transport::readable_within(fd, Duration::ZERO).unwrap_or(true),
                    &mut lane_out,
                    &mut run,
                )?;
                if lane_out.capacity() > 64 << 20 {
                    lane_out = Vec::new();
                }
            }
        }
        let incoming = next_run(&mut reader)?;
        let started = Instant::now();
        let done_so_far = out.len();
        let items = incoming.body.as_ref().map(Segment::bytes);
        // Range handles (`SharedChunkMut`) decode as writers only in chunks from the
        // parent's socket (never in lane calls, which carry no segments).
        let ran =
            crate::shm::receiving(|| run_chunk(&incoming.frame, items, &mut out, &mut failures));
        let start = match ran? {
            Ran::Done(start) => start,
            Ran::UnknownTask(why) | Ran::KeptRange(why) => {
                // Answers already held back go first: their chunks are done.
                out.truncate(done_so_far);
                flush(&mut writer, &mut out, &mut batch_started);
                let _ = protocol::fatal_frame(&mut out, &why).map(|()| writer.write_all(&out));
                return Err(why);
            }
        };
        drop(incoming);
        if !socket_still_ours(&writer, reader.get_ref().raw_fd()) {
            socket_taken("the descriptor is closed");
        }
        let body_at = protocol::done_body_at(start);
        let (fds, oneshot) = transport::seal_frame(&mut out, start, body_at, &[], shm)
            .map_err(|e| format!("cannot send a result: {e}"))?;
        if let Some(mut seg) = oneshot {
            // Results out of line: send now, with the segment's descriptor. The parent
            // removes a named segment's name once it has mapped it.
            seg.leave_name_to_receiver();
            flush_with(&mut writer, &mut out, &fds, &mut batch_started);
            drop(seg);
            continue;
        }
        let batch_age = batch_started.get_or_insert(started).elapsed();
        if batch_age >= BATCH_FOR || out.len() >= BATCH_BYTES {
            flush(&mut writer, &mut out, &mut batch_started);
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
    failures: &mut Vec<protocol::Failure>,
) -> Result<Ran, String> {
    let Ok(Frame::Run {
        chunk,
        count,
        task,
        trailer,
    }) = protocol::parse(frame)
    else {
        return Err("protocol error: a worker only accepts Run frames".into());
    };
    let items = items.unwrap_or(trailer.body);
    let Some(run) = crate::task::lookup(task) else {
        return Ok(Ran::UnknownTask(format!(
            "no #[parallel] function named `{task}` in this binary"
        )));
    };
    let start = protocol::begin_done(out, chunk);
    CURRENT_CHUNK.store(chunk, Ordering::Relaxed);
    BUSY.store(true, Ordering::SeqCst);
    let started = Instant::now();
    failures.clear();
    let done = run(items, count, out, failures);
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    BUSY.store(false, Ordering::SeqCst);
    if let Some(why) = crate::shm::ranges_kept() {
        // Before the progress note: the parent blames the item that ran last.
        return Ok(Ran::KeptRange(why));
    }
    // Past its last item: if this process dies before the next chunk starts, its
    // driver knows that no chunk was running.
    super::ProgressNote::current().note(count);
    protocol::finish_done(out, start, done, nanos, failures).map_err(|e| e.to_string())?;
    Ok(Ran::Done(start))
}

/// Runs a call that came through the lane and appends its whole answer to `out`: the
/// `Done` frame, its body always in line (the lane carries answers of any size), or a
/// `Fatal` frame for a task this binary does not have.
fn run_lane_call(
    payload: &[u8],
    out: &mut Vec<u8>,
    failures: &mut Vec<protocol::Failure>,
) -> Result<usize, String> {
    if let Ok(Frame::Run { trailer, .. }) = protocol::parse(payload)
        && !trailer.segments.is_empty()
    {
        return Err("protocol error: a lane call with shared-memory segments".into());
    }
    match run_chunk(payload, None, out, failures)? {
        Ran::Done(start) => {
            protocol::finish_with(out, start, &[], false).map_err(|e| e.to_string())?;
            Ok(start)
        }
        Ran::KeptRange(why) => Err(format!("protocol error: {why} (in a lane call)")),
        Ran::UnknownTask(why) => {
            let start = out.len();
            protocol::fatal_frame(out, &why).map_err(|e| e.to_string())?;
            Ok(start)
        }
    }
}

/// Whether more frames were already received with the last read. Only those count:
/// asking the socket too (a `poll` per chunk) cost a system call on every round trip
/// and bought no batching — a driver's batch arrives in one read.
fn input_waiting(reader: &std::io::BufReader<FdReader>) -> bool {
    !reader.buffer().is_empty()
}

/// Reads frames until a `Run` frame, handling the others (segment releases, the
/// control segment) on the way. The parent's end of stream ends the worker.
fn next_run(reader: &mut std::io::BufReader<FdReader>) -> Result<Incoming, String> {
    loop {
        let mut frame = Vec::new();
        match protocol::read_frame(reader, &mut frame) {
            Ok(true) => {}
            Ok(false) => exit_on_parent_gone(),
            // A parent that exits with our results unread resets the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => exit_on_parent_gone(),
            Err(e) => return Err(format!("protocol error: {e}")),
        }
        // Segments are opened as their descriptors arrive, before any handle that refers
        // to them is decoded.
        let body = match protocol::parse(&frame) {
            Ok(Frame::Run { trailer, .. }) => {
                transport::open_segments(reader.get_mut(), &trailer, true)
                    .map_err(|e| format!("protocol error: {e}"))?
            }
            Ok(Frame::Release(ids)) => {
                crate::shm::release(&ids);
                continue;
            }
            Ok(Frame::Setup) => {
                let fd = reader
                    .get_mut()
                    .take_fds(1)
                    .map_err(|e| format!("protocol error: {e}"))?;
                install_control(fd)?;
                continue;
            }
            Ok(other) => return Err(format!("protocol error: unexpected frame {other:?}")),
            Err(e) => return Err(format!("protocol error: {e}")),
        };
        return Ok(Incoming { frame, body });
    }
}

/// Whether both of the worker's descriptors for its socket are still open: a task can
/// close them (say, by closing every descriptor it finds). Checked after every chunk,
/// so that the chunk that did it is the one the parent blames: two `fcntl` calls, a few
/// tens of nanoseconds each, against a chunk's microsecond or more. (A descriptor
/// closed and reused at once for another socket is not seen here; writing to it then
/// fails, or the parent sees the worker die.)
fn socket_still_ours(writer: &UnixStream, reader: RawFd) -> bool {
    use std::os::fd::AsRawFd;
    // Raw descriptors, not borrowed ones: the point is that they may have been closed
    // behind their owners' backs.
    [writer.as_raw_fd(), reader].into_iter().all(|fd| {
        // SAFETY: F_GETFD takes no pointer; on a closed descriptor it fails with EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0
    })
}

/// A task closed this worker's socket: leaves the note that makes the parent blame the
/// chunk that ran last (see `SOCKET_TAKEN`), says so on stderr, and exits.
fn socket_taken(why: &str) -> ! {
    super::overflow::leave_note(super::SOCKET_TAKEN);
    eprintln!(
        "multiproc worker {}: a task closed the worker's socket ({why}); the worker exits",
        std::process::id()
    );
    std::process::exit(super::EXIT_FAILURE)
}

/// Writes the held results; a parent that is gone ends the worker.
fn flush(writer: &mut UnixStream, out: &mut Vec<u8>, batch_started: &mut Option<Instant>) {
    flush_with(writer, out, &[], batch_started);
}

/// Writes the held results with `fds` beside them.
fn flush_with(
    writer: &mut UnixStream,
    out: &mut Vec<u8>,
    fds: &[RawFd],
    batch_started: &mut Option<Instant>,
) {
    *batch_started = None;
    if out.is_empty() {
        return;
    }
    if let Err(e) = transport::send(writer, out, fds) {
        if matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOTSOCK)) {
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
