//! Tasks a pool runs in each of its workers at a turn of the worker's life: the
//! initializer, before the worker's first task, and the exit task, when it leaves
//! normally. Each is a one-item chunk encoded once, when the pool is built, and sent
//! again to every worker that needs it.

use std::sync::Arc;

use super::Encoded;
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Entry;

/// A one-item chunk a driver runs on a worker of its own accord (see the module docs).
#[derive(Clone)]
pub(crate) struct Hook(Arc<Chunk>);

struct Chunk {
    task: &'static str,
    /// What the builder called it, for errors: `initializer`, `on_worker_exit`.
    role: &'static str,
    chunk: u64,
    frame: Vec<u8>,
    body_at: usize,
    /// The segments its argument's handles refer to, held for the pool's life.
    attachments: Vec<Arc<Entry>>,
}

impl Hook {
    /// The hook `role` of a pool: `task` run on the one item `enc` holds. A
    /// `SharedSliceMut` range cannot be lent to every worker at once: refused.
    pub(crate) fn new(role: &'static str, task: &'static str, enc: Encoded) -> Result<Hook> {
        if !enc.leases.is_empty() || enc.count != 1 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "the argument of {role} cannot hold a SharedSliceMut: every worker runs \
                     it, and a range is lent to one task at a time"
                ),
            )
            .with_task(task));
        }
        Ok(Hook(Arc::new(Chunk {
            task,
            role,
            chunk: enc.chunk,
            frame: enc.frame,
            body_at: enc.body_at,
            attachments: enc.attachments,
        })))
    }

    pub(crate) fn task(&self) -> &'static str {
        self.0.task
    }

    pub(crate) fn role(&self) -> &'static str {
        self.0.role
    }

    /// The chunk id its worker echoes.
    pub(crate) fn chunk(&self) -> u64 {
        self.0.chunk
    }

    /// The `Run` frame without its trailer: header, then body.
    pub(crate) fn frame(&self) -> (&[u8], &[u8]) {
        self.0.frame.split_at(self.0.body_at)
    }

    pub(crate) fn attachments(&self) -> &[Arc<Entry>] {
        &self.0.attachments
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hook")
            .field(&self.0.role)
            .field(&self.0.task)
            .finish()
    }
}
