//! Rank 0's side of the cluster: one thread (`multiproc-cluster`) that makes every MPI
//! call of this process. It shakes hands with the serving ranks, feeds each cluster
//! pool's jobs to them (from the same queue as the pool's local workers), sends each
//! segment to a rank once, routes the answers back, and gives up on a rank that has
//! been silent for longer than the rank timeout. The pools talk to it through commands.

mod answers;
mod feed;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::endpoint::{self, Endpoint, Idle, Keep};
use super::msg::{ToRank, ToRoot};
use super::{BEAT, Hosted, start_mpi};
use crate::engine::{Job, Pace, Remote, Taken, Tap};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Entry;
use crate::sys::lock::lock;

/// How long rank 0 waits for every rank's first message.
const HELLO_PATIENCE: Duration = Duration::from_secs(120);
/// How long a pool waits for every rank to start its workers.
const OPEN_PATIENCE: Duration = Duration::from_secs(120);
/// How long the last messages get to leave at the end.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(10);
/// Chunks a rank holds per worker (one running, one queued behind it).
const WINDOW: usize = 2;
/// Single-item jobs a rank holds per worker at most, when they are short.
const SMALL_WINDOW: usize = 64;
/// How much work, by the measured run time of recent single-item jobs, a rank may hold
/// queued per worker (see the local drivers' `SMALL_BACKLOG_NANOS`).
const SMALL_BACKLOG_NANOS: u64 = 1_000_000;

/// Set to `0` on rank 0, segments go to the ranks as messages rather than being read
/// through the window (for an MPI whose one-sided reads misbehave).
const ONE_SIDED_VAR: &str = "MULTIPROC_ONE_SIDED";

/// Whether ranks may read segments through the window (`MULTIPROC_ONE_SIDED` is not 0).
fn one_sided_allowed() -> bool {
    std::env::var(ONE_SIDED_VAR).map_or(true, |v| v.trim() != "0")
}

/// Set (to anything), rank 0 says on stderr how each segment reaches each rank.
const LOG_VAR: &str = "MULTIPROC_CLUSTER_LOG";

/// Whether `MULTIPROC_CLUSTER_LOG` is set.
fn logging() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(LOG_VAR).is_some())
}

/// What the cluster looks like from rank 0.
#[derive(Debug, Clone)]
pub(super) struct Info {
    /// Rank 0's own share of its host's cores.
    pub share: usize,
}

enum Command {
    Open {
        tap: Tap,
        workers: Option<usize>,
        reply: mpsc::Sender<Result<(u64, usize)>>,
    },
    Join {
        pool: u64,
        done: mpsc::Sender<()>,
    },
    Terminate {
        pool: u64,
    },
    Shutdown {
        done: mpsc::Sender<()>,
    },
}

/// Rank 0's handle on its cluster thread.
pub(super) struct Root {
    commands: mpsc::Sender<Command>,
    pub info: Info,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Root {
    /// Starts MPI on a new thread, and waits for every rank's hello.
    pub(super) fn start(timeout: Duration) -> Result<Root> {
        let (started_tx, started_rx) = mpsc::channel();
        let (commands, commands_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("multiproc-cluster".into())
            .spawn(move || run(timeout, &started_tx, commands_rx))
            .map_err(|e| Error::io(ErrorKind::Spawn, "cannot start the cluster thread", e))?;
        let info = match started_rx.recv() {
            Ok(started) => started?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Spawn,
                    "the cluster thread ended before MPI was set up",
                ));
            }
        };
        Ok(Root {
            commands,
            info,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    fn gone() -> Error {
        Error::new(
            ErrorKind::Closed,
            "the cluster was shut down (the program is exiting)",
        )
    }

    /// Opens a pool on every usable rank; returns its id and its remote workers.
    pub(super) fn open(&self, tap: Tap, workers: Option<usize>) -> Result<(u64, usize)> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .send(Command::Open {
                tap,
                workers,
                reply,
            })
            .map_err(|_| Root::gone())?;
        answer.recv().map_err(|_| Root::gone())?
    }

    /// Stops the cluster: every rank leaves its serving loop, and MPI is finalised.
    pub(super) fn shutdown(&self) {
        let (done, finished) = mpsc::channel();
        if self.commands.send(Command::Shutdown { done }).is_ok() {
            let _ = finished.recv_timeout(SHUTDOWN_PATIENCE * 2);
        }
        // MPI is finalised on that thread, after it answered: wait for it (but never
        // forever, at exit).
        if let Some(thread) = lock(&self.thread).take() {
            let deadline = Instant::now() + SHUTDOWN_PATIENCE;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// A cluster pool's workers on the other ranks.
pub(super) struct Ranks {
    pub root: Arc<Root>,
    pub pool: u64,
    pub workers: usize,
}

impl Remote for Ranks {
    fn workers(&self) -> usize {
        self.workers
    }

    fn join(&self) {
        let (done, finished) = mpsc::channel();
        if self
            .root
            .commands
            .send(Command::Join {
                pool: self.pool,
                done,
            })
            .is_ok()
        {
            // Ends: every rank answers, closes or is given up after the rank timeout.
            let _ = finished.recv();
        }
    }

    fn terminate(&self) {
        let _ = self
            .root
            .commands
            .send(Command::Terminate { pool: self.pool });
    }
}

/// The cluster thread: MPI from start to finalisation.
fn run(timeout: Duration, started: &mpsc::Sender<Result<Info>>, commands: mpsc::Receiver<Command>) {
    let (universe, hosted) = match start_mpi() {
        Ok(up) => up,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let ep = Endpoint::new(universe.world());
    let mut pump = Pump::new(ep, timeout, commands);
    match pump.handshake(&hosted) {
        Ok(info) => {
            let _ = started.send(Ok(info));
            pump.serve();
        }
        Err(e) => {
            let _ = started.send(Err(e));
        }
    }
    drop(pump);
    // Finalises MPI.
    drop(universe);
}

struct RankState {
    host: String,
    alive: bool,
    /// Why this rank cannot serve (it runs another build), if it cannot.
    unusable: Option<String>,
    last_heard: Instant,
    /// Segments this rank holds, to send each once and release it when rank 0 drops
    /// its last handle.
    segments: HashMap<u64, Weak<Entry>>,
}

/// A job a rank holds, with its frame (moved out of the job while an immediate send may
/// still read it).
struct Sent {
    job: Job,
    frame: Arc<Keep>,
}

struct Slot {
    workers: usize,
    inflight: HashMap<u64, Sent>,
    /// The run time of recent single-item jobs here (a moving average).
    small_nanos: Pace,
}

impl Slot {
    /// How many jobs this rank may hold: `WINDOW` per worker, or for short single-item
    /// jobs as many as fit in `SMALL_BACKLOG_NANOS` of their run time (up to
    /// `SMALL_WINDOW`): a rank that answers faster is given more.
    fn window(&self) -> usize {
        let small = self.inflight.values().all(|s| s.job.count == 1);
        let per_worker = match self.small_nanos.nanos() {
            Some(nanos) if small => usize::try_from(SMALL_BACKLOG_NANOS / nanos.max(1))
                .map_or(SMALL_WINDOW, |n| n.clamp(1, SMALL_WINDOW)),
            _ => WINDOW,
        };
        per_worker * self.workers.max(1)
    }
}

struct Opening {
    reply: mpsc::Sender<Result<(u64, usize)>>,
    waiting: HashSet<i32>,
    workers: usize,
    failed: Option<String>,
    deadline: Instant,
}

struct PoolState {
    id: u64,
    tap: Tap,
    slots: HashMap<i32, Slot>,
    opening: Option<Opening>,
    /// Callers of `join`, waiting for the pool to finish on every rank.
    joins: Vec<mpsc::Sender<()>>,
    /// Ranks told to close the pool that have not said `Closed` yet.
    closing: HashSet<i32>,
    close_sent: bool,
    terminated: bool,
}

struct Pump {
    ep: Endpoint,
    /// By rank; rank 0's entry is never alive.
    ranks: Vec<RankState>,
    pools: Vec<PoolState>,
    commands: mpsc::Receiver<Command>,
    timeout: Duration,
    last_beat: Instant,
    /// The rank offered jobs first, turned each round.
    first: usize,
    shutdown: Option<mpsc::Sender<()>>,
}

static POOL_IDS: AtomicU64 = AtomicU64::new(1);

impl Pump {
    fn new(ep: Endpoint, timeout: Duration, commands: mpsc::Receiver<Command>) -> Pump {
        let size = usize::try_from(ep.size()).unwrap_or(1);
        let ranks = (0..size)
            .map(|_| RankState {
                host: String::new(),
                alive: false,
                unusable: None,
                last_heard: Instant::now(),
                segments: HashMap::new(),
            })
            .collect();
        Pump {
            ep,
            ranks,
            pools: Vec::new(),
            commands,
            timeout,
            last_beat: Instant::now(),
            first: 1,
            shutdown: None,
        }
    }

    /// Waits for every rank's hello, and checks that it runs this build.
    fn handshake(&mut self, hosted: &Hosted) -> Result<Info> {
        let size = self.ranks.len();
        let mut heard = vec![false; size];
        let deadline = Instant::now() + HELLO_PATIENCE;
        let mut idle = Idle::default();
        while heard.iter().skip(1).any(|h| !h) {
            if Instant::now() > deadline {
                let missing: Vec<String> = (1..size)
                    .filter(|&r| !heard[r])
                    .map(|r| r.to_string())
                    .collect();
                return Err(Error::new(
                    ErrorKind::Spawn,
                    format!(
                        "ranks {} did not report within {HELLO_PATIENCE:?}",
                        missing.join(", ")
                    ),
                ));
            }
            let Some(received) = self.ep.probe()? else {
                idle.after(false);
                continue;
            };
            idle.after(true);
            let from = received.from;
            let Ok(r) = usize::try_from(from) else {
                continue;
            };
            let ToRoot::Hello {
                identity,
                tasks,
                host,
                pid,
                one_sided,
            } = endpoint::decode(&received)?
            else {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("rank {from} spoke before saying hello"),
                ));
            };
            let ours = crate::task::build_identity();
            let unusable = (identity != ours).then(|| {
                format!(
                    "rank {from} (process {pid} on {host}) runs a different build of the \
                     program than rank 0 ({tasks} tasks, build {identity:016x}; rank 0 has \
                     {} tasks, build {ours:016x}); start every rank from the same binary",
                    crate::task::task_count()
                )
            });
            let (Some(state), Some(heard)) = (self.ranks.get_mut(r), heard.get_mut(r)) else {
                continue;
            };
            *heard = true;
            if one_sided && one_sided_allowed() {
                self.ep.add_reader(from);
            }
            state.host = host;
            state.alive = true;
            state.unusable = unusable;
            state.last_heard = Instant::now();
        }
        Ok(Info {
            share: hosted.share,
        })
    }

    fn serve(&mut self) {
        let mut idle = Idle::default();
        loop {
            let mut busy = self.take_commands();
            busy |= self.receive();
            busy |= self.feed();
            self.ep.progress();
            self.keep_time();
            self.finish_pools();
            if let Some(done) = self.shutdown.take() {
                self.stop();
                let _ = done.send(());
                return;
            }
            idle.after(busy);
        }
    }

    fn take_commands(&mut self) -> bool {
        let mut busy = false;
        loop {
            match self.commands.try_recv() {
                Ok(command) => {
                    busy = true;
                    self.command(command);
                }
                Err(mpsc::TryRecvError::Empty) => return busy,
                Err(mpsc::TryRecvError::Disconnected) => {
                    // Every handle is gone: nothing more can come.
                    if self.shutdown.is_none() {
                        let (done, _) = mpsc::channel();
                        self.shutdown = Some(done);
                    }
                    return busy;
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Open {
                tap,
                workers,
                reply,
            } => self.open(tap, workers, reply),
            Command::Join { pool, done } => {
                if let Some(p) = self.pools.iter_mut().find(|p| p.id == pool) {
                    p.joins.push(done);
                } else {
                    let _ = done.send(());
                }
            }
            Command::Terminate { pool } => {
                if let Some(p) = self.pools.iter_mut().find(|p| p.id == pool) {
                    p.terminated = true;
                    // Each job dropped replies `Closed`.
                    p.slots.values_mut().for_each(|s| s.inflight.clear());
                    let message = ToRank::Terminate { pool };
                    for &r in p.slots.keys() {
                        if self.ranks[r as usize].alive {
                            let _ = self.ep.send(r, &message, None);
                            p.closing.insert(r);
                        }
                    }
                    p.close_sent = true;
                }
            }
            Command::Shutdown { done } => self.shutdown = Some(done),
        }
    }

    fn open(
        &mut self,
        tap: Tap,
        workers: Option<usize>,
        reply: mpsc::Sender<Result<(u64, usize)>>,
    ) {
        let unusable: Vec<&str> = self
            .ranks
            .iter()
            .filter(|r| r.alive)
            .filter_map(|r| r.unusable.as_deref())
            .collect();
        if !unusable.is_empty() {
            let _ = reply.send(Err(Error::new(ErrorKind::Spawn, unusable.join("; "))));
            return;
        }
        let id = POOL_IDS.fetch_add(1, Ordering::Relaxed);
        let config = tap.config();
        let message = ToRank::Open {
            pool: id,
            workers: workers.map(|n| n as u64),
            max_tasks_per_worker: config.max_tasks_per_worker,
            task_timeout_nanos: config
                .task_timeout
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            retries: config.retries,
            shm_threshold: config.shm.threshold as u64,
            max_memory: config.max_memory,
        };
        let mut waiting = HashSet::new();
        for r in 1..self.ranks.len() {
            if self.ranks[r].alive {
                let rank = r as i32;
                if self.ep.send(rank, &message, None).is_ok() {
                    waiting.insert(rank);
                }
            }
        }
        self.pools.push(PoolState {
            id,
            tap,
            slots: HashMap::new(),
            opening: Some(Opening {
                reply,
                waiting,
                workers: 0,
                failed: None,
                deadline: Instant::now() + OPEN_PATIENCE,
            }),
            joins: Vec::new(),
            closing: HashSet::new(),
            close_sent: false,
            terminated: false,
        });
    }
}
