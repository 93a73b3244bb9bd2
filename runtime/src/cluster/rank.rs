//! A serving rank: every rank but 0 runs this loop from its constructor and never
//! reaches `main`. It starts local pools (worker processes of its own, as on one
//! machine: a task that kills its worker kills only that worker), keeps the segments
//! rank 0 sends it, runs the chunks it is given, and sends back their answers.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::endpoint::{self, Endpoint, Idle, Keep};
use super::launch::Launch;
use super::msg::{ToRank, ToRoot};
use super::{BEAT, start_mpi};
use crate::engine::{Encoded, Job, PoolConfig, PoolCore, Reply, ReplyTo};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::{Entry, Segment};
use crate::wire::ShmConfig;

/// How long the last answers get to leave when the rank stops.
const STOP_PATIENCE: Duration = Duration::from_secs(10);
/// How long `MPI_Finalize` gets before a rank leaves without it.
const FINALIZE_PATIENCE: Duration = Duration::from_secs(10);

/// Serves until rank 0 says the program is over, then leaves MPI and exits.
pub(super) fn serve(launch: Launch, root_timeout: Duration) -> ! {
    let code = match run(root_timeout) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "multiproc rank {} (process {}): {e}",
                launch.rank,
                std::process::id()
            );
            2
        }
    };
    std::process::exit(code);
}

fn run(root_timeout: Duration) -> Result<()> {
    let (universe, hosted) = start_mpi()?;
    let ep = Endpoint::new(universe.world());
    if ep.rank() == 0 || ep.size() < 2 {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "the launcher's environment names this process a serving rank, but MPI \
                 has it as rank {} of {}; is the MPI library the one the launcher belongs \
                 to?",
                ep.rank(),
                ep.size()
            ),
        ));
    }
    let mut server = Server {
        ep,
        share: hosted.share,
        pools: HashMap::new(),
        segments: HashMap::new(),
        broken: HashMap::new(),
        replies: mpsc::channel(),
        closed: mpsc::channel(),
        last_heard: Instant::now(),
        last_beat: Instant::now(),
        root_timeout,
    };
    let hello = ToRoot::Hello {
        identity: crate::task::build_identity(),
        tasks: crate::task::task_count() as u64,
        host: hosted.host,
        pid: std::process::id(),
        one_sided: server.ep.has_window(),
    };
    server.ep.send(0, &hello, None)?;
    let served = server.serve();
    server.stop();
    drop(server);
    finalize_within(universe, FINALIZE_PATIENCE);
    served
}

/// Finalises MPI, but leaves without it after `patience`: Open MPI's `MPI_Finalize`
/// waits for every rank, and can wait forever for one that died (seen under
/// `--enable-recovery` after a rank was killed).
fn finalize_within(universe: mpi::environment::Universe, patience: Duration) {
    let watchdog = std::thread::Builder::new()
        .name("multiproc-finalize".into())
        .spawn(move || {
            std::thread::sleep(patience);
            eprintln!(
                "multiproc rank (process {}): MPI_Finalize did not return within \
                 {patience:?}, as when another rank of the job died; leaving without it",
                std::process::id()
            );
            crate::sys::process::exit_now(0);
        });
    if watchdog.is_err() {
        eprintln!("multiproc rank: no watchdog thread for MPI_Finalize; it may hang");
    }
    // Finalises MPI.
    drop(universe);
}

/// A chunk's answer from a local pool: which pool and chunk, and the reply.
type Answered = (u64, u64, Reply);

struct Server {
    ep: Endpoint,
    share: usize,
    pools: HashMap<u64, Arc<PoolCore>>,
    /// The segments rank 0 sent, by id.
    segments: HashMap<u64, Arc<Entry>>,
    /// Segments that could not be made here, and why.
    broken: HashMap<u64, String>,
    replies: (mpsc::Sender<Answered>, mpsc::Receiver<Answered>),
    /// Pools closed here (their workers gone).
    closed: (mpsc::Sender<u64>, mpsc::Receiver<u64>),
    last_heard: Instant,
    last_beat: Instant,
    root_timeout: Duration,
}

impl Server {
    fn serve(&mut self) -> Result<()> {
        let mut idle = Idle::default();
        loop {
            let mut busy = false;
            while let Some(received) = self.ep.probe()? {
                busy = true;
                self.last_heard = Instant::now();
                if received.from != 0 {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("rank {} sent a message to a serving rank", received.from),
                    ));
                }
                if !self.on_message(endpoint::decode(&received)?)? {
                    return Ok(());
                }
            }
            while let Ok((pool, chunk, reply)) = self.replies.1.try_recv() {
                busy = true;
                self.answer(pool, chunk, reply)?;
            }
            while let Ok(pool) = self.closed.1.try_recv() {
                busy = true;
                self.ep.send(0, &ToRoot::Closed { pool }, None)?;
            }
            self.ep.progress();
            let now = Instant::now();
            if now.duration_since(self.last_beat) >= BEAT {
                self.last_beat = now;
                self.ep.send(0, &ToRoot::Beat, None)?;
            }
            if now.duration_since(self.last_heard) > self.root_timeout {
                return Err(Error::new(
                    ErrorKind::WorkerDied,
                    format!(
                        "rank 0 has said nothing for {:?}: it is gone; stopping",
                        self.root_timeout
                    ),
                ));
            }
            idle.after(busy);
        }
    }

    /// Handles one message from rank 0; `false` once it says the program is over.
    fn on_message(&mut self, message: ToRank) -> Result<bool> {
        match message {
            ToRank::Open {
                pool,
                workers,
                max_tasks_per_worker,
                task_timeout_nanos,
                retries,
                shm_threshold,
                max_memory,
            } => {
                let config = PoolConfig {
                    workers: workers.map_or(self.share, |n| usize::try_from(n).unwrap_or(1)),
                    program: crate::engine::spawn::default_program(),
                    max_tasks_per_worker,
                    task_timeout: task_timeout_nanos.map(Duration::from_nanos),
                    shm: ShmConfig {
                        threshold: usize::try_from(shm_threshold).unwrap_or(usize::MAX),
                        ..ShmConfig::default()
                    },
                    retries,
                    max_memory,
                    cancel_on_interrupt: false,
                    initializer: None,
                    on_exit: None,
                };
                let workers = config.workers as u64;
                let answer = match PoolCore::start(config) {
                    Ok(core) => {
                        self.pools.insert(pool, Arc::new(core));
                        ToRoot::Opened { pool, workers }
                    }
                    Err(e) => ToRoot::OpenFailed {
                        pool,
                        message: e.to_string(),
                    },
                };
                self.ep.send(0, &answer, None)?;
            }
            ToRank::Segment { id, len } => self.keep_segment(id, len, None)?,
            ToRank::Exposed { id, len, at } => {
                self.keep_segment(id, len, Some(at))?;
                self.ep.send(0, &ToRoot::Read { id }, None)?;
            }
            ToRank::Release { ids } => {
                for id in ids {
                    self.segments.remove(&id);
                    self.broken.remove(&id);
                }
            }
            ToRank::Run {
                pool,
                chunk,
                task,
                count,
                body_at,
                segments,
                len,
            } => {
                let frame = self.ep.receive_vec(0, len, "a chunk")?;
                let run = Run {
                    pool,
                    chunk,
                    task,
                    count,
                    body_at: usize::try_from(body_at).unwrap_or(usize::MAX),
                    segments,
                    frame,
                };
                if let Err(e) = self.run(run) {
                    self.fail(pool, chunk, &e)?;
                }
            }
            ToRank::Close { pool } => {
                if let Some(core) = self.pools.remove(&pool) {
                    core.close();
                    self.after(core, pool, PoolCore::join);
                }
            }
            ToRank::Terminate { pool } => {
                if let Some(core) = self.pools.remove(&pool) {
                    self.after(core, pool, PoolCore::terminate);
                }
            }
            ToRank::Beat => {}
            ToRank::Shutdown => return Ok(false),
        }
        Ok(true)
    }

    /// Runs `end` on `core` on a thread of its own (it waits for workers), then says
    /// the pool is closed.
    fn after(&self, core: Arc<PoolCore>, pool: u64, end: fn(&PoolCore)) {
        let closed = self.closed.0.clone();
        let ended = std::thread::Builder::new()
            .name("multiproc-rank-close".into())
            .spawn(move || {
                end(&core);
                let _ = closed.send(pool);
            });
        if ended.is_err() {
            let _ = self.closed.0.send(pool);
        }
    }

    /// Makes a segment rank 0 sent (`at: None`) or offered to read at address `at` of
    /// its window: its contents go straight from MPI into the new segment's memory.
    fn keep_segment(&mut self, id: u64, len: u64, at: Option<u64>) -> Result<()> {
        let backend = ShmConfig::default().backend;
        // `None` until the contents are read (segment creation can fail before).
        let mut received: Option<Result<()>> = None;
        let made = match usize::try_from(len) {
            Ok(len) => Segment::filled(backend, id, len, |into| {
                let got = match at {
                    Some(at) => self.ep.fetch(at, into),
                    None => self.ep.receive_payload(0, into),
                };
                let answer = got.as_ref().map(|_| ()).map_err(Error::duplicate);
                received = Some(got);
                answer
            }),
            Err(_) => Err(Error::new(
                ErrorKind::Protocol,
                "a segment too large to hold",
            )),
        };
        match (made, received) {
            (Ok(segment), _) => {
                self.segments.insert(id, Entry::new(segment));
            }
            // A read from the window failed: chunks that need the segment fail, saying
            // why.
            (Err(e), Some(Err(_))) if at.is_some() => {
                self.broken.insert(id, e.to_string());
            }
            // The contents never came whole: the connection to rank 0 is broken.
            (Err(_), Some(Err(e))) => return Err(e),
            // They came, but the segment could not be sealed here.
            (Err(e), Some(Ok(()))) => {
                self.broken.insert(id, e.to_string());
            }
            (Err(e), None) => {
                // The segment could not be made here (out of memory, say). Contents
                // sent as a message are still on their way, and are read and dropped.
                if at.is_none() {
                    self.ep.discard_payload(0, len)?;
                }
                self.broken.insert(id, e.to_string());
            }
        }
        Ok(())
    }

    fn run(&mut self, run: Run) -> Result<()> {
        let core = self.pools.get(&run.pool).ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                format!("a chunk for pool {} that this rank does not run", run.pool),
            )
        })?;
        let task = crate::task::TASKS
            .iter()
            .find(|t| t.name == run.task)
            .map(|t| t.name)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("task `{}` is not in this rank's build", run.task),
                )
            })?;
        let mut attachments = Vec::with_capacity(run.segments.len());
        for id in &run.segments {
            match (self.segments.get(id), self.broken.get(id)) {
                (Some(entry), _) => attachments.push(Arc::clone(entry)),
                (None, Some(why)) => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("a shared-memory segment could not be made on this rank: {why}"),
                    ));
                }
                (None, None) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("a chunk refers to segment {id:016x}, which never came"),
                    ));
                }
            }
        }
        let (pool, chunk) = (run.pool, run.chunk);
        let replies = self.replies.0.clone();
        let on_reply = Box::new(move |reply: Reply| {
            let _ = replies.send((pool, chunk, reply));
        });
        let encoded = Encoded {
            chunk,
            frame: run.frame,
            body_at: run.body_at,
            count: run.count,
            attachments,
            leases: Vec::new(),
            spilled: None,
        };
        // Counted from 0, so a failure's item index is its offset in the chunk.
        let job = Job::new(
            encoded,
            task,
            0,
            None,
            ReplyTo::Handler {
                completions: core.completions()?,
                on_reply,
            },
        );
        // A job the pool refuses replies itself (`Closed`), through `on_reply`.
        let _ = core.submit(job);
        Ok(())
    }

    fn answer(&mut self, pool: u64, chunk: u64, reply: Reply) -> Result<()> {
        match reply {
            Reply::Done {
                pid,
                nanos,
                count,
                body,
                values_len,
                ..
            } => {
                let header = ToRoot::Done {
                    pool,
                    chunk,
                    pid,
                    nanos,
                    count,
                    values_len: values_len as u64,
                    len: body.bytes().len() as u64,
                };
                self.ep.send(0, &header, Some(Keep::Body(body)))
            }
            Reply::Failed { error, .. } => self.fail(pool, chunk, &error),
        }
    }

    fn fail(&mut self, pool: u64, chunk: u64, error: &Error) -> Result<()> {
        let failed = ToRoot::Failed {
            pool,
            chunk,
            kind: error.kind().into(),
            message: error.message().to_owned(),
            offset: error.task_index().map(|i| i as u64),
            pid: error.worker_pid(),
        };
        self.ep.send(0, &failed, None)
    }

    /// Stops every pool here at once (rank 0 is done with them, or gone).
    fn stop(&mut self) {
        for (_, core) in self.pools.drain() {
            core.terminate();
        }
        let deadline = Instant::now() + STOP_PATIENCE;
        while self.ep.sending(|_| false) && Instant::now() < deadline {
            self.ep.progress();
            std::thread::yield_now();
        }
    }
}

/// A chunk as it arrived.
struct Run {
    pool: u64,
    chunk: u64,
    task: String,
    count: u32,
    body_at: usize,
    segments: Vec<u64>,
    frame: Vec<u8>,
}
