//! Task values, the link-time task registry and the code a worker runs for one chunk.

use std::cell::Cell;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::OnceLock;

pub use crate::protocol::Failure;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, Layout, Reader};
use crate::protocol::FailureKind;

/// A `#[parallel]` function, as a value.
///
/// `#[parallel] fn t1(x: u64) -> u64` defines `const t1: Task<u64, u64, fn(u64) -> u64>`.
/// `A` is the argument the pool sends (the single argument, a tuple of all of them, or
/// `()`), `R` the result, and `F` the plain function pointer the task derefs to, so
/// `t1(5)` runs in-process and `iter.map(*t1)` works. Only `#[parallel]` creates tasks,
/// so handing a plain `fn` to a pool is a compile error.
pub struct Task<A, R, F = fn(A) -> R> {
    name: &'static str,
    func: F,
    invoke: fn(A) -> R,
    arg: Codec<A>,
    ret: Codec<R>,
}

impl<A, R, F: Copy> Clone for Task<A, R, F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, R, F: Copy> Copy for Task<A, R, F> {}

impl<A, R, F> Task<A, R, F> {
    /// Used by `#[parallel]`; not part of the public API.
    #[doc(hidden)]
    pub const fn __new(
        name: &'static str,
        func: F,
        invoke: fn(A) -> R,
        arg: Codec<A>,
        ret: Codec<R>,
    ) -> Self {
        Task {
            name,
            func,
            invoke,
            arg,
            ret,
        }
    }

    /// How the argument travels.
    pub(crate) fn arg_codec(&self) -> Codec<A> {
        self.arg
    }

    /// How the result travels.
    pub(crate) fn ret_codec(&self) -> Codec<R> {
        self.ret
    }

    /// The task's registered name: `module::path::function`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the task in this process, taking its argument in the form the pool sends it
    /// (a tuple for a function of several arguments).
    pub fn call(&self, arg: A) -> R {
        (self.invoke)(arg)
    }
}

impl<A, R, F> Deref for Task<A, R, F> {
    type Target = F;

    fn deref(&self) -> &F {
        &self.func
    }
}

impl<A, R, F> std::fmt::Debug for Task<A, R, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Task").field(&self.name).finish()
    }
}

/// How a worker runs one chunk; see [`run_chunk`].
pub type RunChunk =
    fn(input: &[u8], count: u32, out: &mut Vec<u8>, failures: &mut Vec<Failure>) -> u32;

/// One entry of the link-time registry that `#[parallel]` fills.
#[doc(hidden)]
pub struct TaskEntry {
    /// `module::path::function`, the key a parent sends to a worker.
    pub name: &'static str,
    /// The monomorphised chunk runner for this function.
    pub run: RunChunk,
}

/// Every `#[parallel]` function of the binary, collected by the linker.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static TASKS: [TaskEntry];

/// Finds a registered task by name.
pub(crate) fn lookup(name: &str) -> Option<RunChunk> {
    static INDEX: OnceLock<HashMap<&'static str, RunChunk>> = OnceLock::new();
    INDEX
        .get_or_init(|| TASKS.iter().map(|e| (e.name, e.run)).collect())
        .get(name)
        .copied()
}

/// A fingerprint of this build: the registered tasks and where their code sits relative
/// to the runtime's own code. Two processes agree on it only if they run the same tasks
/// compiled into the same binary.
pub(crate) fn build_identity() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let base = build_identity as fn() -> u64 as usize;
        let mut entries: Vec<(&str, usize)> = TASKS
            .iter()
            .map(|e| (e.name, (e.run as usize).wrapping_sub(base)))
            .collect();
        entries.sort_unstable();
        let mut h = Fnv::new();
        h.write(env!("CARGO_PKG_VERSION").as_bytes());
        for (name, offset) in entries {
            h.write(name.as_bytes());
            h.write(&offset.to_le_bytes());
        }
        h.finish()
    })
}

/// The number of tasks this binary registers (reported in handshake mismatches).
pub(crate) fn task_count() -> usize {
    TASKS.len()
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate fields so ("ab", "c") and ("a", "bc") differ.
        self.0 = self.0.rotate_left(5) ^ 0xff;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The body of every generated chunk runner: decode, call, encode, with panics caught.
///
/// The values of the items that succeed are appended to `out`, back to back; an item that
/// panics, or whose result does not encode, becomes a [`Failure`] and the next item runs.
/// An argument that does not decode (or whose decoding panics) ends the chunk: the items
/// after it cannot be located. Returns the number of items that ran.
///
/// Items run in stretches under one `catch_unwind` each, not one per item: a stretch ends
/// only at a panic, so a chunk without panics pays for one.
#[doc(hidden)]
pub fn run_chunk<A: DeserializeOwned, R: Serialize, LA: Layout<A>, LR: Layout<R>>(
    invoke: fn(A) -> R,
    input: &[u8],
    count: u32,
    out: &mut Vec<u8>,
    failures: &mut Vec<Failure>,
) -> u32 {
    /// Where the current item was when a panic ended a stretch.
    #[derive(Clone, Copy, PartialEq)]
    enum Step {
        Decoding,
        Running,
        /// Its value is in `out`; only its destructor was left.
        Encoded,
    }
    let progress = crate::worker::ProgressNote::current();
    let mut reader = Reader::new(input);
    let mut index = 0;
    while index < count {
        // A `Cell`: the last step written before a panic is read after it.
        let step = Cell::new(Step::Decoding);
        let mut mark = out.len();
        let stretch = crate::worker::guarded(|| {
            while index < count {
                progress.note(index);
                step.set(Step::Decoding);
                mark = out.len();
                let value = LA::take(&mut reader)
                    .map_err(|e| crate::codec::de_failure::<A>(reader.rest(), &e))?;
                step.set(Step::Running);
                let result = invoke(value);
                if let Err(e) = LR::put(&result, out) {
                    out.truncate(mark);
                    let why = crate::codec::ser_failure(&result, &e);
                    failures.push(Failure {
                        index,
                        kind: FailureKind::Serialization,
                        message: format!("the result could not be serialized in the worker: {why}"),
                    });
                }
                step.set(Step::Encoded);
                drop(result);
                index += 1;
            }
            Ok::<(), String>(())
        });
        match stretch {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                failures.push(Failure {
                    index,
                    kind: FailureKind::Serialization,
                    message: format!("the argument could not be deserialized in the worker: {why}"),
                });
                return index + 1;
            }
            // A destructor that panics after its value was sent does not fail the item.
            Err(_) if step.get() == Step::Encoded => index += 1,
            Err(message) => {
                out.truncate(mark);
                failures.push(Failure {
                    index,
                    kind: FailureKind::Panicked,
                    message,
                });
                index += 1;
                if step.get() == Step::Decoding {
                    return index;
                }
            }
        }
    }
    count
}
