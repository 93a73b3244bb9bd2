//! [`pipeline`]: the producer/consumer pattern as one expression, each stage with its own
//! pool of workers.

use std::cell::RefCell;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::imap::IMap;
use crate::api::pool::Pool;
use crate::error::{Error, Result};
use crate::task::Task;

/// Starts a pipeline over `items`: `pipeline(lines).stage(parse, 2).stage(score,
/// 4).collect()`.
///
/// Each [`stage`](Pipeline::stage) runs its `#[parallel]` function on a pool of its own
/// (`workers` processes), fed lazily by the stage before it: a stage holds at most
/// `2 × workers + 1` chunks in flight, so a fast stage waits for a slow one instead of
/// piling up results (back-pressure), and the input may be endless. Results come out in
/// input order; [`unordered`](Pipeline::unordered) lets them out as they complete. The
/// first item that fails in any stage ends the pipeline with an error that names the
/// stage, its function and the item.
///
/// Between stages, results pass through the calling process (as with two chained
/// `imap`s); use a [`Queue`](crate::Queue) in the tasks themselves to connect workers
/// directly.
pub fn pipeline<I>(items: I) -> Pipeline<Source<I::IntoIter>>
where
    I: IntoIterator,
{
    Pipeline {
        stream: Source(items.into_iter()),
        ordered: true,
        stages: 0,
    }
}

/// A pipeline under construction; see [`pipeline`].
#[must_use = "a pipeline does nothing until it is collected or iterated"]
pub struct Pipeline<S> {
    stream: S,
    ordered: bool,
    stages: usize,
}

/// The input of a pipeline, as results.
pub struct Source<I>(I);

impl<I: Iterator> Iterator for Source<I> {
    type Item = Result<I::Item>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(Ok)
    }
}

/// One stage of a pipeline: its pool and its lazy map.
pub struct Stage<S: Iterator<Item = Result<T>>, T, R> {
    pool: Option<Pool>,
    map: Option<IMap<OkOnly<S, T>, R>>,
    /// A failure before this stage (or starting its pool), yielded once the stage's
    /// in-flight work has drained.
    failed: Rc<RefCell<Option<Error>>>,
    stage: usize,
}

/// Feeds a stage with the values of the stage before it; stops at its first error,
/// which the stage reports after its own results.
pub struct OkOnly<S, T> {
    inner: S,
    failed: Rc<RefCell<Option<Error>>>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<S, T> Iterator for OkOnly<S, T>
where
    S: Iterator<Item = Result<T>>,
{
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self.inner.next()? {
            Ok(v) => Some(v),
            Err(e) => {
                self.failed.borrow_mut().get_or_insert(e);
                None
            }
        }
    }
}

impl<S, T> Pipeline<S>
where
    S: Iterator<Item = Result<T>>,
{
    /// Lets each stage added after this yield results as they complete, not in input
    /// order.
    pub fn unordered(mut self) -> Self {
        self.ordered = false;
        self
    }

    /// Adds a stage that runs `task` on `workers` processes of its own.
    pub fn stage<R, F>(self, task: Task<T, R, F>, workers: usize) -> Pipeline<Stage<S, T, R>>
    where
        T: Serialize,
        R: DeserializeOwned,
    {
        let number = self.stages + 1;
        let failed = Rc::new(RefCell::new(None));
        let feed = OkOnly {
            inner: self.stream,
            failed: Rc::clone(&failed),
            _t: std::marker::PhantomData,
        };
        let (pool, map) = match Pool::new(workers) {
            Ok(pool) => {
                let map = if self.ordered {
                    pool.imap(task, feed)
                } else {
                    pool.imap_unordered(task, feed)
                };
                (Some(pool), Some(map))
            }
            Err(e) => {
                *failed.borrow_mut() = Some(e.with_task(task.name()));
                (None, None)
            }
        };
        Pipeline {
            stream: Stage {
                pool,
                map,
                failed,
                stage: number,
            },
            ordered: self.ordered,
            stages: number,
        }
    }

    /// Runs the pipeline to the end and returns its results, or the first error of any
    /// stage.
    pub fn collect(self) -> Result<Vec<T>> {
        self.stream.collect()
    }
}

impl<S> IntoIterator for Pipeline<S>
where
    S: Iterator,
{
    type Item = S::Item;
    type IntoIter = S;

    /// The results one by one, as the last stage yields them.
    fn into_iter(self) -> S {
        self.stream
    }
}

impl<S, T, R> Iterator for Stage<S, T, R>
where
    S: Iterator<Item = Result<T>>,
    T: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if let Some(map) = self.map.as_mut() {
            match map.next() {
                Some(Ok(v)) => return Some(Ok(v)),
                Some(Err(e)) => {
                    // This stage's own failure: stop feeding it, and say where it was.
                    self.map = None;
                    return Some(Err(e.in_stage(self.stage)));
                }
                None => self.map = None,
            }
        }
        // Dropping the pool joins it: everything this stage started is finished.
        self.pool = None;
        self.failed.borrow_mut().take().map(Err)
    }
}
