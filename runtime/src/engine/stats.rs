//! What a pool has done so far ([`PoolStats`]), like mpire's worker insights: counted by
//! the workers themselves in their control segments (so that direct calls count too,
//! and the parent's hot path does nothing), and by the drivers for what the workers
//! cannot see (a worker's death, the items lost with it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::direct::{Counters, ParentEnd};

/// What a pool has done so far: [`Pool::stats`](crate::Pool::stats).
///
/// A snapshot, cheap to take (a lock and a few reads per worker). The counters cover
/// the pool's whole life, workers that are gone included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Items that ran and returned a value.
    pub items_done: u64,
    /// Items that failed: they panicked, did not (de)serialize in the worker, or were
    /// lost with their worker (a death, a time-out, the memory limit, a worker that
    /// could not start). Items a closed or terminated pool never ran are not counted.
    pub items_failed: u64,
    /// Worker processes started, replacements included, and those whose start then
    /// failed (their handshake or their initializer).
    pub workers_started: u64,
    /// Workers lost while the pool ran: killed, crashed, timed out, over their memory
    /// limit, or broken. Not those stopped by [`Pool::terminate`](crate::Pool::terminate).
    pub workers_died: u64,
    /// Workers replaced after their quota (`max_tasks_per_worker`).
    pub workers_recycled: u64,
    /// The live workers, by slot, those still starting included (right after a pool
    /// starts, some may be; see [`PoolBuilder::build`](crate::PoolBuilder::build)).
    pub workers: Vec<WorkerStats>,
    /// The wall time of the last completed `map`, divided by its number of items.
    pub last_map_per_item: Option<Duration>,
}

/// One live worker of a [`PoolStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Its process id.
    pub pid: u32,
    /// Items it ran (values and failures).
    pub items: u64,
    /// Time it spent running them.
    pub busy: Duration,
    /// Time since it started that it did not spend running items.
    pub idle: Duration,
}

/// A live worker as the tally sees it.
struct Live {
    direct: Arc<ParentEnd>,
    started: Instant,
}

/// A pool's counters, behind one lock: taken when a worker starts or goes, when items
/// are lost with a worker, and for a snapshot; never per item.
#[derive(Default)]
pub(crate) struct Tally {
    /// Counted by workers that are gone.
    retired: Counters,
    /// Items failed that no worker counted (lost with it, or never placed).
    lost: u64,
    started: u64,
    died: u64,
    recycled: u64,
    live: Vec<Option<Live>>,
    last_map_per_item: Option<Duration>,
}

/// How a worker left its slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// Recycled after its quota.
    Recycled,
    /// Lost: dead, killed, broken.
    Died,
    /// Closed with the pool, or stopped by `terminate`.
    Closed,
    /// Its start failed after its process was launched: counted as started, neither
    /// died nor recycled (the failure goes to the items the slot then cannot run).
    NeverReady,
}

impl Tally {
    pub(crate) fn new(slots: usize) -> Tally {
        Tally {
            live: (0..slots).map(|_| None).collect(),
            ..Tally::default()
        }
    }

    /// A worker started in `slot`.
    pub(crate) fn started(&mut self, slot: usize, direct: &Arc<ParentEnd>) {
        self.started = self.started.saturating_add(1);
        if let Some(s) = self.live.get_mut(slot) {
            *s = Some(Live {
                direct: Arc::clone(direct),
                started: Instant::now(),
            });
        }
    }

    /// The worker of `slot` left, as `how`: what it counted moves to the totals.
    pub(crate) fn left(&mut self, slot: usize, how: Left) {
        if let Some(live) = self.live.get_mut(slot).and_then(Option::take) {
            self.retired = add(self.retired, live.direct.counters());
        }
        match how {
            Left::Recycled => self.recycled = self.recycled.saturating_add(1),
            Left::Died => self.died = self.died.saturating_add(1),
            Left::Closed | Left::NeverReady => {}
        }
    }

    /// `items` failed without a worker counting them.
    pub(crate) fn lost(&mut self, items: u64) {
        self.lost = self.lost.saturating_add(items);
    }

    /// A `map` of `items` items took `elapsed`.
    pub(crate) fn map_done(&mut self, elapsed: Duration, items: usize) {
        if items > 0 {
            let items = u32::try_from(items).unwrap_or(u32::MAX);
            self.last_map_per_item = Some(elapsed / items);
        }
    }

    /// A snapshot.
    pub(crate) fn snapshot(&self) -> PoolStats {
        let mut total = self.retired;
        let now = Instant::now();
        let workers = self
            .live
            .iter()
            .flatten()
            .map(|live| {
                let c = live.direct.counters();
                total = add(total, c);
                let busy = Duration::from_nanos(c.busy_nanos);
                WorkerStats {
                    pid: live.direct.pid(),
                    items: c.items,
                    busy,
                    idle: now.duration_since(live.started).saturating_sub(busy),
                }
            })
            .collect();
        PoolStats {
            items_done: total.items.saturating_sub(total.failed),
            items_failed: total.failed.saturating_add(self.lost),
            workers_started: self.started,
            workers_died: self.died,
            workers_recycled: self.recycled,
            workers,
            last_map_per_item: self.last_map_per_item,
        }
    }
}

/// `a + b`, saturating: the counts come from the workers' memory, which a task could
/// scribble on; a wrong figure is their problem, a panic here would be ours.
fn add(a: Counters, b: Counters) -> Counters {
    Counters {
        items: a.items.saturating_add(b.items),
        failed: a.failed.saturating_add(b.failed),
        busy_nanos: a.busy_nanos.saturating_add(b.busy_nanos),
    }
}
