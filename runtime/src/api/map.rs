//! `par_map` and `Pool::map`: split a slice into chunks, encode them in the caller's
//! thread, keep every worker's window full, and put the results back in input order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::chunk::{self, ChunkSizer, Decoded};
use crate::api::gather::{Gather, Writer};
use crate::api::progress::Progress;
use crate::engine::{Job, MapSettings, OnReply, PoolCore, Reply, ReplyTo};
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
    ///
    /// Results are decoded on the pool's threads, as they arrive, so `R` must be `Send`
    /// (as with rayon's `map`).
    fn par_map<R, F>(&self, task: Task<A, R, F>) -> Result<Vec<R>>
    where
        R: Serialize + DeserializeOwned + Send + 'static;
}

impl<A: Serialize + DeserializeOwned> ParMap<A> for [A] {
    fn par_map<R, F>(&self, task: Task<A, R, F>) -> Result<Vec<R>>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
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

/// A chunk's answer as it reaches the caller: decoded into its range already, or still
/// to decode there.
enum Arrived<R> {
    Decoded(Decoded),
    Undecoded(Reply, Writer<R>),
}

/// The ordered map of a slice on `pool`. The caller's thread encodes the chunks; each
/// chunk's results are decoded straight into the output where its answer arrives (the
/// driver of the worker that ran it, or for a cluster pool the pool's completion
/// thread), so that decoding runs beside the encoding and on as many threads as there
/// are workers. Plain numbers, one copy, are decoded by the caller, which waits anyway.
pub(crate) fn map_on<A, R, F>(
    pool: &PoolCore,
    items: &[A],
    task: &Task<A, R, F>,
    settings: &MapSettings,
) -> Result<Vec<R>>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
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
    let (tx, rx) = mpsc::channel::<Arrived<R>>();
    // The cluster thread must not spend its time decoding: there, the completion
    // thread does.
    let completions = if pool.spans_ranks() {
        Some(pool.completions()?)
    } else {
        None
    };
    let gather = Gather::<R>::new(len);
    let arg_codec = task.arg_codec();
    let ret_codec = task.ret_codec();
    // Plain numbers decode with one copy, which this thread (otherwise waiting) makes;
    // anything else is decoded by the thread that has the reply.
    let decode_here = ret_codec.is_raw();
    let mut next = 0;
    let mut inflight = 0;
    let mut bytes_per_item = 8;
    let spill_at = pool.spill_at();
    loop {
        while inflight < window && next < len {
            let size = sizer
                .next_size()
                .min(chunk::max_items_inline(bytes_per_item));
            let rest = &items[next..];
            let Some(enc) = chunk::encode_slice(
                name,
                arg_codec,
                rest,
                size,
                next,
                &mut bytes_per_item,
                spill_at,
            )?
            else {
                break;
            };
            let count = enc.count as usize;
            let mut writer = gather.claim(next, count).ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    "a chunk's results overlap another's (a bug in multiproc)",
                )
                .with_task(name)
            })?;
            let tx = tx.clone();
            let on_reply: OnReply = Box::new(move |reply| {
                if decode_here {
                    let _ = tx.send(Arrived::Undecoded(reply, writer));
                    return;
                }
                let decoded = chunk::decode_reply(name, ret_codec, reply, &mut writer);
                // Done writing before the caller hears of it.
                drop(writer);
                let _ = tx.send(Arrived::Decoded(decoded));
            });
            let reply = match &completions {
                Some(completions) => ReplyTo::Handler {
                    completions: completions.clone(),
                    on_reply,
                },
                None => ReplyTo::Inline(on_reply),
            };
            let cancel = Some(Arc::clone(&cancel));
            pool.submit(Job::new(enc, name, next, cancel, reply))?;
            inflight += 1;
            next += count;
        }
        if inflight == 0 {
            break;
        }
        // Every job replies exactly once (see `Job`'s `Drop`), and we hold a sender, so
        // this cannot fail; treat a failure as the pool being gone rather than unwrap.
        let arrived = rx
            .recv()
            .map_err(|_| Error::new(ErrorKind::Closed, "the pool went away during the map"))?;
        inflight -= 1;
        let decoded = match arrived {
            Arrived::Decoded(decoded) => decoded,
            Arrived::Undecoded(reply, mut writer) => {
                chunk::decode_reply(name, ret_codec, reply, &mut writer)
            }
        };
        match decoded {
            Decoded::Written { count, nanos } => {
                sizer.observe(nanos, count);
                progress.inc(count as usize);
            }
            Decoded::Failed(error) => return Err(error),
        }
    }
    let out = Gather::into_vec(gather).map_err(|_| {
        Error::new(
            ErrorKind::Protocol,
            "a map ended with results missing (a bug in multiproc)",
        )
        .with_task(name)
    })?;
    pool.map_done(started.elapsed(), len);
    Ok(out)
}
