//! Rank 0's cluster thread, outgoing: jobs to the ranks with room for them, segments
//! ahead of the jobs that need them, heartbeats, giving up on silent ranks, and closing
//! pools.

use std::sync::Arc;
use std::time::Instant;

use super::{BEAT, Keep, Pump, RankState, Sent, Slot, Taken, ToRank};
use crate::engine::Job;
use crate::error::{Error, ErrorKind};

impl Pump {
    /// Offers every pool's queued jobs to the ranks with room for them, a different
    /// rank first each round. Returns whether it sent anything.
    pub(super) fn feed(&mut self) -> bool {
        let mut busy = false;
        let size = self.ranks.len();
        for pool in &mut self.pools {
            if pool.terminated || pool.opening.is_some() {
                continue;
            }
            'ranks: for k in 0..size {
                let r = (self.first + k) % size;
                let rank = r as i32;
                let (Some(state), Some(slot)) = (self.ranks.get_mut(r), pool.slots.get_mut(&rank))
                else {
                    continue;
                };
                if !state.alive {
                    continue;
                }
                while slot.inflight.len() < slot.window() {
                    match pool.tap.take() {
                        Taken::Job(job) => {
                            busy = true;
                            send_run(&mut self.ep, rank, state, slot, pool.id, job);
                        }
                        Taken::Empty | Taken::Closed => break 'ranks,
                    }
                }
            }
        }
        self.first = (self.first % size.max(1)) + 1;
        busy
    }

    /// Sends heartbeats, and gives up on ranks silent for longer than the timeout and
    /// on pools whose ranks did not all open them in time.
    pub(super) fn keep_time(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_beat) >= BEAT {
            self.last_beat = now;
            for r in 1..self.ranks.len() {
                if self.ranks[r].alive {
                    let _ = self.ep.send(r as i32, &ToRank::Beat, None);
                }
            }
        }
        let silent: Vec<usize> = (1..self.ranks.len())
            .filter(|&r| {
                let s = &self.ranks[r];
                s.alive && now.duration_since(s.last_heard) > self.timeout
            })
            .collect();
        for r in silent {
            let why = format!(
                "stopped answering: nothing came from it for {:?} (the rank timeout, \
                 MULTIPROC_RANK_TIMEOUT); it died, or its host was lost",
                self.timeout
            );
            self.rank_died(r as i32, &why);
        }
        for pool in &mut self.pools {
            if let Some(opening) = &mut pool.opening
                && now > opening.deadline
            {
                let late: Vec<String> = opening.waiting.iter().map(i32::to_string).collect();
                opening.failed.get_or_insert_with(|| {
                    format!(
                        "ranks {} did not start their workers in time",
                        late.join(", ")
                    )
                });
                opening.waiting.clear();
            }
        }
        self.answer_openings();
    }

    /// Gives up on rank `rank`: what it held runs again elsewhere while the pool's
    /// retries allow, else fails with `WorkerDied` naming the rank.
    pub(super) fn rank_died(&mut self, rank: i32, why: &str) {
        let Some(state) = self.ranks.get_mut(rank as usize) else {
            return;
        };
        if !state.alive {
            return;
        }
        state.alive = false;
        state.segments.clear();
        let host = state.host.clone();
        self.ep.forget(rank);
        eprintln!("multiproc: rank {rank} (on {host}) {why}");
        for pool in &mut self.pools {
            if let Some(opening) = &mut pool.opening {
                opening.waiting.remove(&rank);
            }
            pool.closing.remove(&rank);
            let Some(slot) = pool.slots.remove(&rank) else {
                continue;
            };
            let retries = pool.tap.config().retries;
            let mut again = Vec::new();
            for (_, sent) in slot.inflight {
                let Sent { mut job, frame } = sent;
                if job.attempts <= retries && !pool.terminated {
                    job.frame = frame.bytes().to_vec();
                    job.attempts += 1;
                    again.push(job);
                } else {
                    let attempts = if retries > 0 {
                        format!(" (after {} attempts)", job.attempts)
                    } else {
                        String::new()
                    };
                    let error = Error::new(
                        ErrorKind::WorkerDied,
                        format!(
                            "rank {rank} (on {host}) {why}, while it held {} item(s) of \
                             this chunk{attempts}",
                            job.count
                        ),
                    );
                    job.fail(error);
                }
            }
            pool.tap.requeue(again);
        }
        self.answer_openings();
    }

    /// Closes the pools being joined once their queue is drained and every rank has
    /// answered all it held, and lets their joiners go once every rank closed them.
    pub(super) fn finish_pools(&mut self) {
        let ranks = &self.ranks;
        let ep = &mut self.ep;
        self.pools.retain_mut(|pool| {
            if pool.joins.is_empty() || pool.opening.is_some() {
                return true;
            }
            let any_alive = pool.slots.keys().any(|&r| ranks[r as usize].alive);
            if !pool.close_sent {
                let drained = match pool.tap.take() {
                    Taken::Job(job) if !any_alive => {
                        job.fail(Error::new(
                            ErrorKind::WorkerDied,
                            "every other rank of the cluster is gone",
                        ));
                        false
                    }
                    Taken::Job(job) => {
                        pool.tap.requeue(vec![job]);
                        false
                    }
                    Taken::Empty => false,
                    Taken::Closed => true,
                };
                if !drained || pool.slots.values().any(|s| !s.inflight.is_empty()) {
                    return true;
                }
                for &r in pool.slots.keys() {
                    if ranks[r as usize].alive
                        && ep.send(r, &ToRank::Close { pool: pool.id }, None).is_ok()
                    {
                        pool.closing.insert(r);
                    }
                }
                pool.close_sent = true;
            }
            if !pool.closing.is_empty() {
                return true;
            }
            for done in pool.joins.drain(..) {
                let _ = done.send(());
            }
            false
        });
    }

    /// The end: every rank is told to stop, and the last messages get a moment to go.
    pub(super) fn stop(&mut self) {
        for r in 1..self.ranks.len() {
            if self.ranks[r].alive {
                let _ = self.ep.send(r as i32, &ToRank::Shutdown, None);
            }
        }
        // Jobs still held fail `Closed` as they are dropped.
        self.pools.clear();
        let deadline = Instant::now() + super::SHUTDOWN_PATIENCE;
        let ranks = &self.ranks;
        while self.ep.sending(|r| !ranks[r as usize].alive) && Instant::now() < deadline {
            self.ep.progress();
            std::thread::yield_now();
        }
    }
}

/// Sends `job` to `rank`: first the segments it needs that the rank does not hold yet
/// (and the release of those rank 0 dropped), then the chunk.
fn send_run(
    ep: &mut super::Endpoint,
    rank: i32,
    state: &mut RankState,
    slot: &mut Slot,
    pool: u64,
    mut job: Job,
) {
    let dead = crate::shm::take_dead(&mut state.segments);
    if !dead.is_empty() {
        let _ = ep.send(rank, &ToRank::Release { ids: dead }, None);
    }
    let mut ids = Vec::with_capacity(job.attachments.len());
    for entry in &job.attachments {
        let id = entry.segment.id();
        ids.push(id);
        if state.segments.contains_key(&id) {
            continue;
        }
        let len = entry.segment.len() as u64;
        // Read through the window where the rank can, else sent as a message.
        let exposed = ep.expose(rank, entry);
        if super::logging() {
            let how = match exposed {
                Some(_) => "read through the window",
                None => "sent as a message",
            };
            eprintln!("multiproc: segment {id:016x} ({len} bytes) to rank {rank}: {how}");
        }
        let sent = match exposed {
            Some(at) => ep.send(rank, &ToRank::Exposed { id, len, at }, None),
            None => ep.send(
                rank,
                &ToRank::Segment { id, len },
                Some(Keep::Segment(Arc::clone(entry))),
            ),
        };
        if let Err(e) = sent {
            job.fail(e);
            return;
        }
        state.segments.insert(id, Arc::downgrade(entry));
    }
    // A body written into a segment while it was encoded (a job queued before the pool
    // reached other ranks) travels inside the message, like any other.
    if let Some(body) = job.spilled.take() {
        job.frame.extend_from_slice(body.bytes());
    }
    let frame = Arc::new(Keep::Bytes(std::mem::take(&mut job.frame)));
    let header = ToRank::Run {
        pool,
        chunk: job.chunk,
        task: job.task.to_owned(),
        count: job.count,
        body_at: job.body_at as u64,
        segments: ids,
        len: frame.bytes().len() as u64,
    };
    if let Err(e) = ep.send_shared(rank, &header, Arc::clone(&frame)) {
        job.fail(e);
        return;
    }
    slot.inflight.insert(job.chunk, Sent { job, frame });
}
