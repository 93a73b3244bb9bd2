//! Rank 0's cluster thread, incoming: what the ranks say, and what it means for the
//! pools (a pool opened, a chunk answered or failed, a pool closed).

use std::collections::HashMap;
use std::time::Instant;

use super::{Pace, Pump, Sent, Slot, ToRoot, endpoint};
use crate::engine::Reply;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::Body;

impl Pump {
    /// Handles every message waiting. Returns whether there was any.
    pub(super) fn receive(&mut self) -> bool {
        let mut busy = false;
        loop {
            let received = match self.ep.probe() {
                Ok(Some(received)) => received,
                Ok(None) => return busy,
                Err(e) => {
                    eprintln!("multiproc: {e}");
                    return busy;
                }
            };
            busy = true;
            let from = received.from;
            if let Some(state) = self.ranks.get_mut(from as usize) {
                state.last_heard = Instant::now();
            }
            let handled = endpoint::decode::<ToRoot>(&received)
                .and_then(|message| self.on_message(from, message));
            if let Err(e) = handled {
                let why = format!("broke the protocol: {e}");
                self.rank_died(from, &why);
            }
        }
    }

    fn on_message(&mut self, from: i32, message: ToRoot) -> Result<()> {
        let host = self
            .ranks
            .get(from as usize)
            .map(|s| s.host.clone())
            .unwrap_or_default();
        match message {
            ToRoot::Hello { .. } => {
                return Err(Error::new(ErrorKind::Protocol, "a second hello"));
            }
            ToRoot::Beat => {}
            ToRoot::Read { id } => self.ep.read_done(from, id),
            ToRoot::Opened { pool, workers } => {
                if let Some(p) = self.pools.iter_mut().find(|p| p.id == pool)
                    && let Some(opening) = &mut p.opening
                    && opening.waiting.remove(&from)
                {
                    let workers = usize::try_from(workers).unwrap_or(1);
                    opening.workers += workers;
                    p.slots.insert(
                        from,
                        Slot {
                            workers,
                            inflight: HashMap::new(),
                            small_nanos: Pace::default(),
                        },
                    );
                }
                self.answer_openings();
            }
            ToRoot::OpenFailed { pool, message } => {
                if let Some(p) = self.pools.iter_mut().find(|p| p.id == pool)
                    && let Some(opening) = &mut p.opening
                    && opening.waiting.remove(&from)
                {
                    opening
                        .failed
                        .get_or_insert_with(|| format!("rank {from} (on {host}): {message}"));
                }
                self.answer_openings();
            }
            ToRoot::Done {
                pool,
                chunk,
                pid,
                nanos,
                count,
                values_len,
                len,
            } => {
                let body = self.ep.receive_vec(from, len, "a body")?;
                let len = body.len();
                let Some(sent) = self.take_sent(pool, from, chunk) else {
                    // A pool terminated since, or a rank given up: nobody waits for it.
                    return Ok(());
                };
                let Sent { job, frame: _ } = sent;
                let values_len = usize::try_from(values_len).unwrap_or(usize::MAX);
                if count > job.count || values_len > len {
                    let error = Error::new(
                        ErrorKind::Protocol,
                        format!("rank {from} (on {host}) answered a chunk with a bad body"),
                    );
                    job.fail(error);
                    return Ok(());
                }
                if job.count == 1
                    && let Some(slot) = self.slot(pool, from)
                {
                    slot.small_nanos.record(nanos);
                }
                let reply = Reply::Done {
                    first_index: job.first_index,
                    pid,
                    nanos,
                    expected: job.count,
                    count,
                    body: Body::Inline {
                        frame: body,
                        range: 0..len,
                    },
                    values_len,
                };
                job.reply(reply);
            }
            ToRoot::Failed {
                pool,
                chunk,
                kind,
                message,
                offset,
                pid,
            } => {
                if let Some(Sent { job, frame: _ }) = self.take_sent(pool, from, chunk) {
                    let mut error = Error::new(
                        kind.into(),
                        format!("{message} (on rank {from}, host {host})"),
                    );
                    if let Some(pid) = pid {
                        error = error.with_pid(pid);
                    }
                    let offset = offset.and_then(|o| usize::try_from(o).ok()).unwrap_or(0);
                    let index = job.first_index + offset.min(job.count as usize);
                    job.fail_at(error, index);
                }
            }
            ToRoot::Closed { pool } => {
                if let Some(p) = self.pools.iter_mut().find(|p| p.id == pool) {
                    p.closing.remove(&from);
                }
            }
        }
        Ok(())
    }

    fn slot(&mut self, pool: u64, rank: i32) -> Option<&mut Slot> {
        self.pools
            .iter_mut()
            .find(|p| p.id == pool)?
            .slots
            .get_mut(&rank)
    }

    fn take_sent(&mut self, pool: u64, rank: i32, chunk: u64) -> Option<Sent> {
        self.slot(pool, rank)?.inflight.remove(&chunk)
    }

    /// Answers the callers of pools that every rank has now opened (or failed to).
    pub(super) fn answer_openings(&mut self) {
        for pool in &mut self.pools {
            let Some(opening) = &pool.opening else {
                continue;
            };
            if !opening.waiting.is_empty() {
                continue;
            }
            let Some(opening) = pool.opening.take() else {
                continue;
            };
            let answer = match opening.failed {
                None => Ok((pool.id, opening.workers)),
                Some(why) => {
                    // The ranks that did open it close it again.
                    pool.joins.push(std::sync::mpsc::channel().0);
                    Err(Error::new(
                        ErrorKind::Spawn,
                        format!("the cluster pool could not start on every rank: {why}"),
                    ))
                }
            };
            let _ = opening.reply.send(answer);
        }
    }
}
