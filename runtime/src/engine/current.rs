//! The current pool of a thread: the innermost `with_pool!` block, if any.

use std::cell::RefCell;
use std::sync::Arc;

use super::PoolCore;

/// What a map call takes from the pool it runs on (a `with_pool!` block's settings).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MapSettings {
    pub chunk_size: Option<usize>,
    pub progress: bool,
}

thread_local! {
    static STACK: RefCell<Vec<(Arc<PoolCore>, MapSettings)>> = const { RefCell::new(Vec::new()) };
}

/// Makes `pool` this thread's current pool until the guard is dropped.
pub(crate) fn enter(pool: Arc<PoolCore>, settings: MapSettings) -> CurrentGuard {
    STACK.with(|s| s.borrow_mut().push((pool, settings)));
    CurrentGuard { _private: () }
}

/// Restores the previous current pool when dropped, on every exit path.
#[derive(Debug)]
pub struct CurrentGuard {
    _private: (),
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        STACK.with(|s| s.borrow_mut().pop());
    }
}

/// The innermost `with_pool!` pool of this thread.
pub(crate) fn current() -> Option<(Arc<PoolCore>, MapSettings)> {
    STACK.with(|s| s.borrow().last().cloned())
}
