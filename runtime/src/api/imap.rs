//! `Pool::imap` and `Pool::imap_unordered`: lazy maps over any iterator, with a bounded
//! number of chunks in flight, so an endless input works and memory stays flat.

use std::collections::{BTreeMap, VecDeque};
use std::iter::Fuse;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::chunk::{self, ChunkSizer};
use crate::api::map::CancelOnDrop;
use crate::api::progress::Progress;
use crate::codec::Codec;
use crate::engine::{Job, MapSettings, PoolCore, Reply, ReplyTo};
use crate::error::{Error, ErrorKind, Result};

/// The iterator returned by [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered): one `Result` per input item.
///
/// It pulls items from its input only as workers need them (a few chunks ahead), so the
/// input may be endless. A failed item (a panic, a dead worker, …) is an `Err` in its
/// place, and the items after it still come. Dropping the iterator cancels the chunks it
/// has not yet sent.
pub struct IMap<I: Iterator, R> {
    pool: Arc<PoolCore>,
    task: &'static str,
    arg: Codec<I::Item>,
    ret: Codec<R>,
    input: Fuse<I>,
    ordered: bool,
    sizer: ChunkSizer,
    window: usize,
    inflight: usize,
    next_index: usize,
    bytes_per_item: usize,
    /// Ordered mode: decoded chunks that arrived ahead of their turn, by first index.
    pending: BTreeMap<usize, Vec<Result<R>>>,
    /// Items ready to be yielded, in yield order.
    ready: VecDeque<Result<R>>,
    /// Ordered mode: the index of the next item to yield.
    next_yield: usize,
    /// An error that stops the stream (the pool closed, an argument did not serialize).
    stop: Option<Error>,
    tx: mpsc::Sender<Reply>,
    rx: mpsc::Receiver<Reply>,
    cancel: CancelOnDrop,
    progress: Progress,
    _result: PhantomData<fn() -> R>,
}

impl<I, R> IMap<I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    pub(crate) fn new(
        pool: Arc<PoolCore>,
        task: &'static str,
        (arg, ret): (Codec<I::Item>, Codec<R>),
        input: I,
        ordered: bool,
        settings: &MapSettings,
    ) -> Self {
        let total = match input.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        };
        let fixed = crate::api::map::fixed_chunk_size(&pool, settings);
        let (tx, rx) = mpsc::channel();
        IMap {
            sizer: ChunkSizer::new(total, pool.workers(), true, fixed),
            window: pool.workers() * 2 + 1,
            pool,
            task,
            arg,
            ret,
            input: input.fuse(),
            ordered,
            inflight: 0,
            next_index: 0,
            bytes_per_item: 8,
            pending: BTreeMap::new(),
            ready: VecDeque::new(),
            next_yield: 0,
            stop: None,
            tx,
            rx,
            cancel: CancelOnDrop(Arc::new(AtomicBool::new(false))),
            progress: Progress::new(settings.progress, total),
            _result: PhantomData,
        }
    }

    /// Encodes and submits chunks until the window is full or the input ends.
    fn fill(&mut self) {
        while self.stop.is_none() && self.inflight < self.window {
            let size = self.sizer.next_size();
            let first = self.next_index;
            let encoded = chunk::encode_chunk(
                self.task,
                self.arg,
                &mut self.input,
                size,
                first,
                &mut self.bytes_per_item,
                self.pool.spill_at(),
            );
            let enc = match encoded {
                Ok(Some(enc)) => enc,
                Ok(None) => return,
                Err(e) => {
                    self.stop = Some(e);
                    return;
                }
            };
            let reply = ReplyTo::Channel(self.tx.clone());
            let cancel = Some(Arc::clone(&self.cancel.0));
            let count = enc.count;
            let job = Job::new(enc, self.task, first, cancel, reply);
            if let Err(e) = self.pool.submit(job) {
                self.stop = Some(e.with_task(self.task).with_index(first));
                return;
            }
            self.inflight += 1;
            self.next_index += count as usize;
        }
    }

    fn accept(&mut self, reply: Reply) {
        if let Reply::Done { nanos, count, .. } = &reply {
            self.sizer.observe(*nanos, *count);
        }
        let (first, items) = chunk::reply_items::<R>(self.task, self.ret, reply);
        if !self.ordered {
            self.ready.extend(items);
            return;
        }
        self.pending.insert(first, items);
        while let Some(items) = self.pending.remove(&self.next_yield) {
            self.next_yield += items.len();
            self.ready.extend(items);
        }
    }
}

impl<I, R> Iterator for IMap<I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                self.progress.inc(1);
                return Some(item);
            }
            self.fill();
            if self.inflight == 0 {
                // Everything sent has come back; a stop error is the last item.
                return self.stop.take().map(Err);
            }
            match self.rx.recv() {
                Ok(reply) => {
                    self.inflight -= 1;
                    self.accept(reply);
                }
                Err(_) => {
                    self.inflight = 0;
                    let e = Error::new(ErrorKind::Closed, "the pool went away during the map");
                    return Some(Err(e.with_task(self.task)));
                }
            }
        }
    }
}
