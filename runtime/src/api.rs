//! What users call: [`Pool`](pool::Pool) and its builder, `par_map` and `map`
//! (`map`), `imap` (`imap`), `apply` and `apply_async` (`apply`), `map_async`
//! (`map_async`), [`Process`]
//! (`process`), pipelines (`pipeline`) and progress bars (`progress`). Typed values
//! become chunks here (`chunk`), on their way down to the engine, and come back up from
//! the replies.
//!
//! [`Process`]: process::Process

pub(crate) mod apply;
pub(crate) mod chunk;
pub(crate) mod gather;
pub(crate) mod imap;
pub(crate) mod map;
pub(crate) mod map_async;
pub(crate) mod pipeline;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod progress;
