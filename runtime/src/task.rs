//! Tasks: the values `#[parallel]` defines, the link-time registry of them, the build
//! identity that the handshake compares, and (in `run`) the code a worker runs for one
//! chunk of a task, with what it records while doing so (`note`).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::OnceLock;

use crate::codec::Codec;

pub(crate) mod note;
mod run;

pub(crate) use run::decode_failures;
pub use run::{Borrowed, Failure, FailureKind, run_chunk, run_chunk_borrowed};

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
