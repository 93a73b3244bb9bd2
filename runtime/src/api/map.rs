//! `par_map` and `Pool::map`: split a slice into chunks, encode them in the caller's
//! thread, keep every worker's window full, and put the results back in input order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::chunk::{self, ChunkOrigin, ChunkSizer};
use crate::api::progress::Progress;
use crate::engine::{Job, MapSettings, PoolCore, Reply, ReplyTo};
use crate::error::{Error, ErrorKind, Result};
use crate::task::Task;

/// `data.par_map(task)`: run a `#[parallel]` function over every element of a slice in
/// worker processes.
///
/// Implemented for slices, so `Vec`s and arrays have it too. Results come back in input
/// order. The work runs on the current pool: the innermost `with_pool!` block of this
/// thread, else the global pool (started on first use with one worker per core, or
/// `MULTIPROC_WORKERS`). Called inside a worker, it runs inline in that worker.
///
/// ```no_run
/// use multiproc::prelude::*;
///
/// #[parallel]
/// fn t1(x: u64) -> u64 {
///     x * 10
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let data: Vec<u64> = (0..1000).collect();
///     let out = data.par_map(t1)?;
///     assert_eq!(out[999], 9990);
///     Ok(())
/// }
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
        let (pool, settings) = current_with_settings()?;
        map_on(&pool, self, &task, &settings)
    }
}

/// The pool a `par_map` on this thread runs on, with its map settings.
pub(crate) fn current_with_settings() -> Result<(Arc<PoolCore>, MapSettings)> {
    match crate::engine::current::current() {
        Some(found) => Ok(found),
        None => Ok((
            crate::cluster::global()?,
            MapSettings {
                chunk_size: None,
                progress: crate::api::progress::global_enabled(),
            },
        )),
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
            let codec = task.arg_codec();
            let mut bytes = Vec::new();
            let arg = codec
                .put(item, &mut bytes)
                .map_err(|e| {
                    let why = crate::codec::ser_failure(item, &e);
                    format!("the argument could not be serialized: {why}")
                })
                .and_then(|()| {
                    crate::codec::Reader::new(&bytes).take(&codec).map_err(|e| {
                        let why = crate::codec::de_failure::<A>(&bytes, &e);
                        format!("the argument could not be deserialized: {why}")
                    })
                })
                .map_err(|message| {
                    Error::new(ErrorKind::Serialization, message)
                        .with_task(name)
                        .with_index(index)
                })?;
            crate::sys::unwind::guarded(|| task.call(arg)).map_err(|message| {
                Error::new(ErrorKind::Panicked, message)
                    .with_task(name)
                    .with_index(index)
                    .with_pid(pid)
            })
        })
        .collect()
}

/// Tells the drivers to skip a map's queued chunks once its caller stops waiting for
/// them (it returned early with an error, or panicked).
pub(crate) struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The chunk size a map uses: the user's, else adaptive; one item per chunk under a time
/// limit, so that every item has its own deadline.
pub(crate) fn fixed_chunk_size(pool: &PoolCore, settings: &MapSettings) -> Option<usize> {
    let size = if pool.task_timeout().is_some() {
        Some(1)
    } else {
        settings.chunk_size
    };
    match (size, pool.max_tasks_per_worker()) {
        (Some(n), Some(max)) => Some(n.min(usize::try_from(max).unwrap_or(usize::MAX))),
        (None, Some(max)) => Some(usize::try_from(max).unwrap_or(usize::MAX).min(4096)),
        (n, None) => n,
    }
}

/// The ordered map of a slice on `pool`.
pub(crate) fn map_on<A, R, F>(
    pool: &PoolCore,
    items: &[A],
    task: &Task<A, R, F>,
    settings: &MapSettings,
) -> Result<Vec<R>>
where
    A: Serialize,
    R: DeserializeOwned,
{
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let name = task.name();
    let len = items.len();
    let started = std::time::Instant::now();
    let mut sizer = ChunkSizer::new(
        Some(len),
        pool.workers(),
        false,
        fixed_chunk_size(pool, settings),
    );
    // Enough chunks to fill every worker's window, plus one encoded ahead.
    let window = pool.workers() * 2 + 1;
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_guard = CancelOnDrop(Arc::clone(&cancel));
    let progress = Progress::new(settings.progress, Some(len));
    let (tx, rx) = mpsc::channel();
    let mut out: Vec<R> = Vec::with_capacity(len);
    let mut pending: BTreeMap<usize, Vec<R>> = BTreeMap::new();
    let arg_codec = task.arg_codec();
    let ret_codec = task.ret_codec();
    let mut next = 0;
    let mut inflight = 0;
    let mut bytes_per_item = 8;
    loop {
        while inflight < window && next < len {
            let size = sizer
                .next_size()
                .min(chunk::max_items_inline(bytes_per_item));
            let rest = &items[next..];
            let Some(enc) =
                chunk::encode_slice(name, arg_codec, rest, size, next, &mut bytes_per_item)?
            else {
                break;
            };
            let reply = ReplyTo::Channel(tx.clone());
            let cancel = Some(Arc::clone(&cancel));
            let count = enc.count;
            pool.submit(Job::new(enc, name, next, cancel, reply))?;
            inflight += 1;
            next += count as usize;
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
                body,
                values_len,
            } => {
                sizer.observe(nanos, count);
                let origin = ChunkOrigin {
                    task: name,
                    first_index,
                    pid,
                };
                let (values, failures) = body.bytes().split_at(values_len);
                if !failures.is_empty() || count != expected {
                    return Err(origin.first_failure(failures, count, expected));
                }
                progress.inc(count as usize);
                if first_index == out.len() {
                    origin.decode_values(ret_codec, values, count, &mut out)?;
                    while let Some(values) = pending.remove(&out.len()) {
                        out.extend(values);
                    }
                } else {
                    let mut decoded = Vec::with_capacity(count as usize);
                    origin.decode_values(ret_codec, values, count, &mut decoded)?;
                    pending.insert(first_index, decoded);
                }
            }
            Reply::Failed { error, .. } => return Err(error),
        }
    }
    pool.map_done(started.elapsed(), len);
    Ok(out)
}
