//! Running a pool's hooks (its initializer and its exit task) on a worker: the driver
//! writes the hook's chunk and waits for its answer itself, before any job (the
//! initializer) or after the last one (the exit task).

use super::*;
use crate::engine::Hook;

/// Why a hook did not complete.
pub(super) enum HookFailure {
    /// The task panicked, or its argument did not decode: how, and the worker's message.
    Failed(crate::task::FailureKind, String),
    /// The worker ended (or broke the protocol) while running it; `Died` when its
    /// connection or process ended.
    Lost(Loss),
}

impl Driver<'_> {
    /// Runs `hook` on `live`, waiting for its answer up to the pool's time limit, if any.
    pub(super) fn run_hook(&self, live: &mut Live, hook: &Hook) -> Result<(), HookFailure> {
        let shm = self.shared.config.shm;
        let limit = self.shared.config.task_timeout;
        // A worker watching its direct path goes to its socket.
        live.direct.kick();
        let new: Vec<Arc<Entry>> = hook
            .attachments()
            .iter()
            .filter(|e| !live.segments.contains_key(&e.segment.id()))
            .cloned()
            .collect();
        let attach: Vec<&Segment> = new.iter().map(|e| &e.segment).collect();
        let (header, body) = hook.frame();
        let outbox = live.link.outbox();
        let start = outbox.len();
        let broken = |e: Error| HookFailure::Lost(Loss::Protocol(e.message().to_owned()));
        // Kept until the answer is in: the worker maps it while it runs.
        let oneshot = wire::append_frame(outbox, header, body, &attach, shm).map_err(broken)?;
        let carried: Vec<&Segment> = attach.iter().copied().chain(oneshot.as_ref()).collect();
        if live.link.attach(&carried).is_err() {
            live.link.outbox().truncate(start);
            return Err(HookFailure::Lost(Loss::Died));
        }
        for e in &new {
            live.segments.insert(e.segment.id(), Arc::downgrade(e));
        }
        let deadline = limit.map(|limit| (Instant::now() + limit, limit));
        let expect = Some(Expect {
            chunk: hook.chunk(),
            count: 1,
        });
        let mut rbuf = Vec::new();
        loop {
            if live.link.pending() {
                let _ = live.link.push();
            }
            let tick = match deadline {
                None => None,
                Some((at, limit)) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(HookFailure::Lost(Loss::TimedOut(limit)));
                    }
                    Some(left)
                }
            };
            let ready = match live.link.wait(live.direct.exit_fd(), tick) {
                Ok(ready) => ready,
                Err(_) => Ready::READ,
            };
            if ready.exited {
                let _ = live.link.stop_waiting();
            } else if !ready.readable {
                continue;
            }
            match live.link.recv(&mut rbuf) {
                Ok(true) => {}
                Ok(false) => return Err(HookFailure::Lost(Loss::Died)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(HookFailure::Lost(Loss::Died));
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(HookFailure::Lost(Loss::Protocol(e.to_string())));
                }
                Err(_) => return Err(HookFailure::Lost(Loss::Died)),
            }
            return match wire::read_answer(&mut rbuf, expect, Some(&mut *live.link)) {
                Ok(Answer::Done {
                    count,
                    values_len,
                    body,
                    ..
                }) => {
                    let failures = crate::task::decode_failures(&body.bytes()[values_len..])
                        .map_err(|why| HookFailure::Lost(Loss::Protocol(why)))?;
                    match failures.into_iter().next() {
                        Some(f) => Err(HookFailure::Failed(f.kind, f.message)),
                        None if count == 1 => Ok(()),
                        None => Err(HookFailure::Lost(Loss::Protocol(
                            "the worker answered a hook without running it".into(),
                        ))),
                    }
                }
                Ok(Answer::Fatal(why)) => Err(HookFailure::Lost(Loss::GaveUp(why))),
                Err(why) => Err(HookFailure::Lost(Loss::Protocol(why))),
            };
        }
    }
}

/// The error for the jobs of a slot whose new worker's initializer failed: it names the
/// initializer and what became of it, with its panic message.
pub(super) fn initializer_error(hook: &Hook, failure: &HookFailure, exit: &str) -> Error {
    let task = hook.task();
    let role = hook.role();
    let what = match failure {
        HookFailure::Failed(kind, message) => {
            let how = match kind {
                crate::task::FailureKind::Panicked => "panicked",
                crate::task::FailureKind::Serialization => "failed",
            };
            format!("the {role} `{task}` {how} in a new worker: {message}")
        }
        HookFailure::Lost(Loss::TimedOut(limit)) => format!(
            "the {role} `{task}` ran longer than the time limit of {limit:?} in a new worker, \
             which was killed"
        ),
        HookFailure::Lost(Loss::Died) => {
            format!("a new worker {exit} while running the {role} `{task}`")
        }
        HookFailure::Lost(Loss::Protocol(why) | Loss::GaveUp(why)) => {
            format!("a new worker broke off while running the {role} `{task}`: {why}")
        }
    };
    Error::new(
        ErrorKind::Spawn,
        format!("{what}; the pool tries again with a fresh worker, after a growing pause"),
    )
}
