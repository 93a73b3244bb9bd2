//! `Pool::map_async`: a whole `map` submitted at once, whose result is an
//! [`AsyncResult`]. Every chunk replies to the pool's result thread, which decodes it
//! as it comes and completes the result when the last one is in, in input order, or at
//! the first failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::apply::{AsyncResult, Slot};
use crate::api::chunk;
use crate::api::map::fixed_chunk_size;
use crate::codec::Codec;
use crate::engine::{Job, MapSettings, PoolCore, Reply, ReplyTo};
use crate::error::Result;
use crate::sys::lock::lock;
use crate::task::Task;

/// What the chunks of one `map_async` have brought so far.
struct Gather<R> {
    /// Decoded chunks by the position of their first item.
    chunks: BTreeMap<usize, Vec<R>>,
    /// Chunks not yet answered.
    left: usize,
    /// Set once the result is complete (every chunk in, or one failed).
    done: bool,
}

/// Submits `task` on every item of `items`, in chunks, and returns at once.
pub(crate) fn map_async<A, R, F>(
    pool: &PoolCore,
    task: &Task<A, R, F>,
    items: &[A],
    settings: &MapSettings,
) -> AsyncResult<Vec<R>>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    let name = task.name();
    let slot = Slot::new();
    let len = items.len();
    let completions = match pool.completions() {
        Ok(c) => c,
        Err(e) => return AsyncResult::failed(e.with_task(name)),
    };
    if pool.is_closed() {
        return AsyncResult::failed(pool.closed_error().with_task(name));
    }
    // Encoded up front (as Python's `map_async` takes a list): chunks of a quarter of
    // each worker's share, kept small enough to travel in line.
    let workers = pool.workers().max(1);
    let share = len.div_ceil(workers * 4).max(1);
    let mut bytes_per_item = 8;
    let mut encoded = Vec::new();
    let mut next = 0;
    while next < len {
        let size = fixed_chunk_size(pool, settings)
            .unwrap_or(share)
            .min(chunk::max_items_inline(bytes_per_item));
        let enc = match chunk::encode_slice(
            name,
            task.arg_codec(),
            &items[next..],
            size,
            next,
            &mut bytes_per_item,
            pool.spill_at(),
        ) {
            Ok(Some(enc)) => enc,
            Ok(None) => break,
            Err(e) => return AsyncResult::failed(e),
        };
        let first = next;
        next += enc.count as usize;
        encoded.push((first, enc));
    }
    if encoded.is_empty() {
        slot.complete(Ok(Vec::new()));
        return AsyncResult::from_slot(slot);
    }
    let gather = Arc::new(Mutex::new(Gather {
        chunks: BTreeMap::new(),
        left: encoded.len(),
        done: false,
    }));
    let cancel = Arc::new(AtomicBool::new(false));
    let codec = task.ret_codec();
    for (first, enc) in encoded {
        let (slot, gather, skip) = (Arc::clone(&slot), Arc::clone(&gather), Arc::clone(&cancel));
        let on_reply = Box::new(move |reply: Reply| {
            on_chunk(name, codec, reply, &slot, &gather, &skip, len);
        });
        let reply = ReplyTo::Handler {
            completions: completions.clone(),
            on_reply,
        };
        // On a closed pool the job is dropped, which replies `Closed` through the
        // handler: the result completes with that error.
        let _ = pool.submit(Job::new(enc, name, first, Some(Arc::clone(&cancel)), reply));
    }
    AsyncResult::from_slot(slot)
}

/// One chunk's reply, on the pool's result thread: decoded and kept, or the result
/// completed with its first failure (and the chunks still queued skipped).
fn on_chunk<R: DeserializeOwned>(
    task: &'static str,
    codec: Codec<R>,
    reply: Reply,
    slot: &Slot<Vec<R>>,
    gather: &Mutex<Gather<R>>,
    cancel: &AtomicBool,
    len: usize,
) {
    let (first, items) = chunk::reply_items::<R>(task, codec, reply);
    let values: Result<Vec<R>> = items.into_iter().collect();
    let mut g = lock(gather);
    if g.done {
        return;
    }
    g.left -= 1;
    let finished: Option<Result<Vec<R>>> = match values {
        Err(e) => {
            cancel.store(true, Ordering::Relaxed);
            Some(Err(e))
        }
        Ok(values) => {
            g.chunks.insert(first, values);
            (g.left == 0).then(|| {
                let mut out = Vec::with_capacity(len);
                for (_, values) in std::mem::take(&mut g.chunks) {
                    out.extend(values);
                }
                Ok(out)
            })
        }
    };
    if let Some(result) = finished {
        g.done = true;
        drop(g);
        slot.complete(result);
    }
}
