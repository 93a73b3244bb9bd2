//! `par_map`: split a slice into chunks, encode them in the caller's thread, keep every
//! worker's window full, and put the decoded results back in input order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};
use crate::pool::{Job, PoolCore, Reply};

use crate::protocol::{self, FailureKind};
use crate::task::Task;

/// `data.par_map(task)`: run a `#[parallel]` function over every element of a slice in
/// worker processes.
///
/// Implemented for slices, so `Vec`s and arrays have it too. Results come back in input
/// order. The work runs on the current pool: the innermost `with_pool!` block, else the
/// global pool (started on first use with one worker per core, or `MULTIPROC_WORKERS`).
/// Called inside a worker, it runs inline in that worker.
///
/// ```ignore
/// use multiproc::prelude::*;
///
/// #[parallel]
/// fn t1(x: u64) -> u64 {
///     x * 10
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let data: Vec<u64> = (0..1000).collect();
/// let out = data.par_map(t1)?;
/// assert_eq!(out[999], 9990);
/// # Ok(())
/// # }
/// ```
pub trait ParMap<A> {
    /// Runs `task` on every element, in worker processes, and returns the results in
    /// input order. The first item that fails (a panic, a dead worker, a value that does
    /// not serialize) makes the whole call an `Err` naming that item.
    fn par_map<R, F>(&self, task: Task<A, R, F>) -> Result<Vec<R>>
    where
        R: Serialize + DeserializeOwned;
}

impl<A: Serialize + DeserializeOwned> ParMap<A> for [A] {
    fn par_map<R, F>(&self, task: Task<A, R, F>) -> Result<Vec<R>>
    where
        R: Serialize + DeserializeOwned,
    {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        if crate::worker::in_worker() {
            return map_inline(self, &task);
        }
        let pool = crate::pool::global()?;
        map_on(&pool, self, &task, None)
    }
}

/// Runs `task` over `items` in this process, one item after another. Arguments still
/// make the serialization round trip a worker would see, so behaviour does not depend
/// on where the map runs.
fn map_inline<A, R, F>(items: &[A], task: &Task<A, R, F>) -> Result<Vec<R>>
where
    A: Serialize + DeserializeOwned,
{
    let name = task.name();
    let pid = std::process::id();
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let arg = postcard::to_stdvec(item)
                .and_then(|bytes| postcard::from_bytes::<A>(&bytes))
                .map_err(|e| argument_error(name, index, &e))?;
            crate::worker::guarded(|| task.call(arg)).map_err(|message| {
                Error::new(ErrorKind::Panicked, message)
                    .with_task(name)
                    .with_index(index)
                    .with_pid(pid)
            })
        })
        .collect()
}

fn argument_error(task: &'static str, index: usize, e: &postcard::Error) -> Error {
    Error::new(
        ErrorKind::Serialization,
        format!("the argument could not be serialized: {e}"),
    )
    .with_task(task)
    .with_index(index)
}

/// Chunk ids, unique in this process, so a driver can check each answer is for the chunk
/// it expects.
static NEXT_CHUNK: AtomicU64 = AtomicU64::new(1);

/// Tells the drivers to skip this map's queued chunks once the caller stops waiting for
/// them (it returned early with an error, or panicked).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The body of every ordered map: `chunk_size` fixes the chunk size, else it adapts.
pub(crate) fn map_on<A, R, F>(
    pool: &PoolCore,
    items: &[A],
    task: &Task<A, R, F>,
    chunk_size: Option<usize>,
) -> Result<Vec<R>>
where
    A: Serialize,
    R: DeserializeOwned,
{
    let name = task.name();
    let len = items.len();
    let mut sizer = ChunkSizer::new(len, pool.workers(), chunk_size);
    // Enough chunks to fill every worker's window, plus one encoded ahead.
    let window = pool.workers() * 2 + 1;
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_guard = CancelOnDrop(Arc::clone(&cancel));
    let (tx, rx) = mpsc::channel();
    let mut out: Vec<R> = Vec::with_capacity(len);
    let mut pending: BTreeMap<usize, Vec<R>> = BTreeMap::new();
    let mut next = 0;
    let mut inflight = 0;
    let mut bytes_per_item = 8;
    loop {
        while inflight < window && next < len {
            let n = sizer.next_size().min(len - next);
            let chunk = NEXT_CHUNK.fetch_add(1, Ordering::Relaxed);
            let mut frame = Vec::with_capacity(64 + n * bytes_per_item);
            protocol::begin_run(&mut frame, chunk, n as u32, name);
            let header = frame.len();
            for (offset, item) in items[next..next + n].iter().enumerate() {
                protocol::encode_into(&mut frame, item)
                    .map_err(|e| argument_error(name, next + offset, &e))?;
            }
            bytes_per_item = (frame.len() - header).div_ceil(n).max(1);
            protocol::finish(&mut frame).map_err(|e| {
                Error::new(
                    ErrorKind::Serialization,
                    format!(
                        "the arguments of items {next}..{} are too large: {e}",
                        next + n
                    ),
                )
                .with_task(name)
                .with_index(next)
            })?;
            let job = Job::new(
                chunk,
                name,
                next,
                n as u32,
                frame,
                Arc::clone(&cancel),
                tx.clone(),
            );
            pool.submit(job)?;
            inflight += 1;
            next += n;
        }
        if inflight == 0 {
            break;
        }
        // Every job replies exactly once (see `Job`'s `Drop`), and we hold a sender, so
        // this cannot fail; treat a failure as the pool being gone rather than unwrap.
        let reply = rx
            .recv()
            .map_err(|_| Error::new(ErrorKind::Closed, "the pool went away during the map"))?;
        inflight -= 1;
        match reply {
            Reply::Done {
                first_index,
                pid,
                nanos,
                expected,
                count,
                payload,
                values,
            } => {
                sizer.observe(nanos, count);
                let chunk = ChunkOrigin {
                    task: name,
                    first_index,
                    pid,
                };
                let failures = &payload[values.end..];
                if !failures.is_empty() || count != expected {
                    return Err(chunk.first_failure(failures, count, expected));
                }
                if first_index == out.len() {
                    chunk.decode_values(&payload[values], count, &mut out)?;
                    while let Some(values) = pending.remove(&out.len()) {
                        out.extend(values);
                    }
                } else {
                    let mut decoded = Vec::with_capacity(count as usize);
                    chunk.decode_values(&payload[values], count, &mut decoded)?;
                    pending.insert(first_index, decoded);
                }
            }
            Reply::Failed { error } => return Err(error),
        }
    }
    Ok(out)
}

/// Where a chunk's results came from, for error messages.
struct ChunkOrigin {
    task: &'static str,
    first_index: usize,
    pid: u32,
}

impl ChunkOrigin {
    fn error(&self, kind: ErrorKind, offset: usize, message: String) -> Error {
        Error::new(kind, message)
            .with_task(self.task)
            .with_index(self.first_index + offset)
            .with_pid(self.pid)
    }

    /// Appends the chunk's `count` values to `out`.
    fn decode_values<R: DeserializeOwned>(
        &self,
        bytes: &[u8],
        count: u32,
        out: &mut Vec<R>,
    ) -> Result<()> {
        let mut de = postcard::Deserializer::from_bytes(bytes);
        for k in 0..count as usize {
            let value = R::deserialize(&mut de).map_err(|e| {
                self.error(
                    ErrorKind::Serialization,
                    k,
                    format!("the result could not be deserialized: {e}"),
                )
            })?;
            out.push(value);
        }
        match de.finalize() {
            Ok([]) => Ok(()),
            _ => Err(self.error(
                ErrorKind::Protocol,
                0,
                "the worker sent more result bytes than results".to_owned(),
            )),
        }
    }

    /// The error for a chunk in which some item failed: the first failed item.
    fn first_failure(&self, failures: &[u8], count: u32, expected: u32) -> Error {
        let failures = match protocol::decode_failures(failures) {
            Ok(f) => f,
            Err(e) => return self.error(ErrorKind::Protocol, 0, e.to_string()),
        };
        match failures.into_iter().min_by_key(|f| f.index) {
            Some(f) => {
                let kind = match f.kind {
                    FailureKind::Panicked => ErrorKind::Panicked,
                    FailureKind::Serialization => ErrorKind::Serialization,
                };
                self.error(kind, f.index as usize, f.message)
            }
            None => self.error(
                ErrorKind::Protocol,
                count as usize,
                format!("the worker ran {count} of {expected} items and reported no failure"),
            ),
        }
    }
}

/// Chooses chunk sizes: a small probe first, then chunks that take about
/// `TARGET_CHUNK_NANOS` of worker time at the measured time per item, never more than
/// a quarter of each worker's share (so work stays balanced), never less than one item.
struct ChunkSizer {
    fixed: Option<usize>,
    cap: usize,
    nanos_per_item: Option<f64>,
}

/// Long enough that per-chunk costs (a wake-up on each side, ~60 µs here) stay a few
/// percent; short enough that a worker finishing early finds work left.
const TARGET_CHUNK_NANOS: f64 = 2_000_000.0;
/// Items in the first chunks, sent before anything has been measured.
const PROBE_ITEMS: usize = 16;

impl ChunkSizer {
    fn new(len: usize, workers: usize, fixed: Option<usize>) -> Self {
        let cap = len.div_ceil(workers.max(1) * 4).clamp(1, u32::MAX as usize);
        ChunkSizer {
            fixed: fixed.map(|n| n.clamp(1, u32::MAX as usize)),
            cap,
            nanos_per_item: None,
        }
    }

    fn next_size(&self) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        match self.nanos_per_item {
            None => PROBE_ITEMS.min(self.cap),
            Some(t) => ((TARGET_CHUNK_NANOS / t.max(0.1)) as usize).clamp(1, self.cap),
        }
    }

    fn observe(&mut self, nanos: u64, count: u32) {
        if count == 0 {
            return;
        }
        let t = nanos as f64 / f64::from(count);
        self.nanos_per_item = Some(match self.nanos_per_item {
            None => t,
            Some(prev) => 0.7 * prev + 0.3 * t,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_start_small_then_follow_the_measured_cost() {
        let mut s = ChunkSizer::new(1_000_000, 2, None);
        assert_eq!(s.next_size(), PROBE_ITEMS);
        s.observe(16 * 5, 16); // 5 ns per item: capped at a quarter of each share
        assert_eq!(s.next_size(), 125_000);
        let mut slow = ChunkSizer::new(1_000_000, 2, None);
        slow.observe(10_000_000, 1); // 10 ms per item: one at a time
        assert_eq!(slow.next_size(), 1);
    }

    #[test]
    fn small_inputs_and_fixed_sizes() {
        assert_eq!(ChunkSizer::new(3, 2, None).next_size(), 1);
        assert_eq!(ChunkSizer::new(24, 2, None).next_size(), 3);
        assert_eq!(ChunkSizer::new(1000, 2, Some(64)).next_size(), 64);
        assert_eq!(ChunkSizer::new(1000, 2, Some(0)).next_size(), 1);
    }
}
