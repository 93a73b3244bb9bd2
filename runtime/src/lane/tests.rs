use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;

use super::*;
use crate::error::ErrorKind;

/// Generous: only a hang runs into it.
const HANG: Duration = Duration::from_secs(20);

/// A lane, invited (as by a caller that found it closed).
fn lane() -> Arc<Lane> {
    let lane = Arc::new(Lane::create(std::process::id()).unwrap());
    lane.invite();
    lane
}

fn worker_of(lane: &Lane) -> WorkerLane {
    let base = lane.segment().as_mut_ptr().unwrap();
    // SAFETY: the tests keep `lane` (and so its mapping) alive until the worker thread
    // is joined.
    unsafe { WorkerLane::new(base) }
}

/// The answer the test worker gives: the call's bytes reversed, `times` times over.
fn reply(payload: &[u8], times: usize, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let body: Vec<u8> = payload.iter().rev().copied().collect();
    let len = (body.len() * times) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    for _ in 0..times {
        out.extend_from_slice(&body);
    }
    start
}

fn expected(payload: &[u8], times: usize) -> Vec<u8> {
    let body: Vec<u8> = payload.iter().rev().copied().collect();
    body.repeat(times)
}

/// A thread serving a lane as its worker.
struct Server {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Idle>,
}

impl Server {
    /// Serves `lane` on a thread until stopped (or the lane is gone), answering each
    /// call with `reply(.., times)` after `delay`.
    fn start(lane: &Lane, times: usize, delay: Duration) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let mut worker = worker_of(lane);
        let thread = thread::spawn(move || {
            let mut out = Vec::new();
            let mut run = |payload: &[u8], out: &mut Vec<u8>| {
                thread::sleep(delay);
                Ok(reply(payload, times, out))
            };
            loop {
                let idle = worker
                    .serve(Duration::from_millis(5), &|| false, &mut out, &mut run)
                    .unwrap();
                if idle == Idle::Gone || stopped.load(Ordering::SeqCst) {
                    return idle;
                }
                if idle == Idle::Uninvited {
                    thread::yield_now();
                }
            }
        });
        Server { stop, thread }
    }

    /// Stops serving; how the worker last stopped.
    fn stop(self) -> Idle {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Waits for the lane to be gone; how the worker last stopped.
    fn join(self) -> Idle {
        self.thread.join().unwrap()
    }
}

/// Waits until the lane is in `state`.
fn until_state(lane: &Lane, state: u32) {
    let start = Instant::now();
    while lane.header().turn.state.load(Ordering::Acquire) != state {
        assert!(
            start.elapsed() < HANG,
            "the lane never reached state {state}"
        );
        thread::yield_now();
    }
}

fn claim(lane: &Lane) {
    let start = Instant::now();
    while !lane.try_claim() {
        assert!(start.elapsed() < HANG, "the lane never opened");
        // As a caller does when it finds the lane closed.
        lane.invite();
        thread::yield_now();
    }
}

fn call(lane: &Lane, payload: &[u8]) -> (Call, Vec<u8>) {
    claim(lane);
    let mut answer = Vec::new();
    let call = lane.call(payload, &mut answer, || {});
    (call, answer)
}

#[test]
fn calls_are_answered_through_the_lane_one_after_another() {
    let lane = lane();
    let worker = Server::start(&lane, 1, Duration::ZERO);
    for i in 0..200u32 {
        let payload = i.to_le_bytes();
        let (call, answer) = call(&lane, &payload);
        assert!(matches!(call, Call::Answered), "call {i}");
        assert_eq!(answer, expected(&payload, 1), "call {i}");
    }
    assert_ne!(worker.stop(), Idle::Gone);
}

#[test]
fn an_answer_larger_than_the_buffer_comes_in_parts() {
    let lane = lane();
    // 300 bytes, 700 times over: more than three buffers.
    let worker = Server::start(&lane, 700, Duration::ZERO);
    let payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    assert!(payload.len() * 700 > 3 * CAPACITY);
    for _ in 0..3 {
        let (call, answer) = call(&lane, &payload);
        assert!(matches!(call, Call::Answered));
        assert_eq!(answer, expected(&payload, 700));
    }
    worker.stop();
}

#[test]
fn a_caller_asleep_is_woken_by_the_answer_and_checks_meanwhile() {
    let lane = lane();
    // Long enough for the caller to go to sleep, several slices over.
    let worker = Server::start(&lane, 1, Duration::from_millis(60));
    claim(&lane);
    let mut answer = Vec::new();
    let mut checks = 0;
    let call = lane.call(b"abc", &mut answer, || checks += 1);
    assert!(matches!(call, Call::Answered));
    assert_eq!(answer, b"cba");
    assert!(checks >= 2, "{checks} checks while the call ran");
    worker.stop();
}

#[test]
fn a_kick_sends_the_worker_to_its_socket() {
    let lane = lane();
    let mut worker = worker_of(&lane);
    let kicker = {
        let lane = Arc::clone(&lane);
        thread::spawn(move || {
            // Kick once the lane is open, while the worker would watch it for a minute.
            until_state(&lane, OPEN);
            lane.kick();
        })
    };
    let mut out = Vec::new();
    let no_call = &mut |_: &[u8], _: &mut Vec<u8>| -> Result<usize, String> {
        Err("no call was made".into())
    };
    let idle = worker
        .serve(Duration::from_secs(60), &|| false, &mut out, no_call)
        .unwrap();
    assert_eq!(idle, Idle::Kicked);
    kicker.join().unwrap();
    // It left the lane closed: no caller can claim it while it reads its socket.
    assert!(!lane.try_claim());
    // A kick from before it came back is for frames in the socket: the socket says.
    lane.kick();
    let idle = worker
        .serve(Duration::from_millis(1), &|| false, &mut out, no_call)
        .unwrap();
    assert_eq!(idle, Idle::Expired);
    lane.invite();
    let idle = worker
        .serve(Duration::from_secs(60), &|| true, &mut out, no_call)
        .unwrap();
    assert_eq!(idle, Idle::Kicked);
}

#[test]
fn an_idle_worker_closes_its_lane_when_the_window_ends_and_waits_for_an_invitation() {
    let lane = lane();
    let mut worker = worker_of(&lane);
    let mut no_call =
        |_: &[u8], _: &mut Vec<u8>| -> Result<usize, String> { Err("no call was made".into()) };
    let mut serve = |window| {
        worker
            .serve(window, &|| false, &mut Vec::new(), &mut no_call)
            .unwrap()
    };
    assert_eq!(serve(Duration::from_millis(1)), Idle::Expired);
    assert!(!lane.try_claim());
    // Open a whole window for nothing: closed until a caller asks again, whatever the
    // window (it returns at once, with no look at the lane or the socket).
    assert_eq!(serve(Duration::from_secs(60)), Idle::Uninvited);
    assert!(!lane.try_claim());
    lane.invite();
    assert_eq!(serve(Duration::from_millis(1)), Idle::Expired);
}

#[test]
fn only_one_caller_claims_an_open_lane() {
    let lane = lane();
    let mut worker = worker_of(&lane);
    let claims = Arc::new(AtomicU32::new(0));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (lane, claims) = (Arc::clone(&lane), Arc::clone(&claims));
            thread::spawn(move || {
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(300) {
                    if lane.try_claim() {
                        claims.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    thread::yield_now();
                }
            })
        })
        .collect();
    // The worker stays until claimed and then waits for a call that never comes: it
    // serves a claimed lane whatever its window. Give it up from here to end it.
    let loser = {
        let lane = Arc::clone(&lane);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(500));
            lane.lose(Error::new(ErrorKind::WorkerDied, "test over"));
        })
    };
    let idle = worker
        .serve(
            Duration::from_secs(60),
            &|| false,
            &mut Vec::new(),
            &mut |_, _| Err("no call was posted".into()),
        )
        .unwrap();
    assert_eq!(idle, Idle::Gone);
    for c in callers {
        c.join().unwrap();
    }
    loser.join().unwrap();
    assert_eq!(claims.load(Ordering::SeqCst), 1);
}

#[test]
fn a_call_too_large_for_the_lane_is_not_run_and_leaves_it_open() {
    let lane = lane();
    let worker = Server::start(&lane, 1, Duration::ZERO);
    let (too_large, _) = call(&lane, &vec![1u8; CAPACITY + 1]);
    assert!(matches!(too_large, Call::NotRun));
    let (small, answer) = call(&lane, b"xy");
    assert!(matches!(small, Call::Answered));
    assert_eq!(answer, b"yx");
    worker.stop();
}

#[test]
fn a_lost_worker_fails_its_call_with_the_reason_given() {
    let lane = lane();
    // The "worker" takes its time; the driver declares it dead meanwhile.
    let worker = Server::start(&lane, 1, Duration::from_millis(300));
    let loser = {
        let lane = Arc::clone(&lane);
        thread::spawn(move || {
            until_state(&lane, RUNNING);
            lane.lose(Error::new(ErrorKind::WorkerDied, "killed by signal 9"));
        })
    };
    let (call, _) = call(&lane, b"abc");
    let Call::Lost(Some(why)) = call else {
        panic!("the call was not lost with a reason");
    };
    assert_eq!(why.kind(), ErrorKind::WorkerDied);
    assert!(why.to_string().contains("signal 9"), "{why}");
    loser.join().unwrap();
    // Its answer, when it comes, finds the lane gone.
    assert_eq!(worker.join(), Idle::Gone);
    assert!(!lane.try_claim());
}

#[test]
fn a_call_posted_to_a_worker_lost_before_it_took_it_did_not_run() {
    let lane = lane();
    // A worker that opened its lane, then died (no thread serves it).
    lane.header().turn.state.store(OPEN, Ordering::SeqCst);
    let loser = {
        let lane = Arc::clone(&lane);
        thread::spawn(move || {
            until_state(&lane, POSTED);
            lane.lose(Error::new(ErrorKind::WorkerDied, "killed by signal 9"));
        })
    };
    let (call, _) = call(&lane, b"abc");
    assert!(
        matches!(call, Call::NotRun),
        "a call never taken counts as lost"
    );
    loser.join().unwrap();
    assert!(!lane.try_claim());
}

#[test]
fn the_lane_tells_when_its_worker_has_exited() {
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let lane = Lane::create(child.id()).unwrap();
    assert!(lane.exit_watch.is_some(), "no pidfd for a child");
    assert!(!lane.worker_may_have_exited());
    child.kill().unwrap();
    let start = Instant::now();
    while !lane.worker_may_have_exited() {
        assert!(start.elapsed() < HANG, "the exit was never seen");
        thread::yield_now();
    }
    child.wait().unwrap();
    assert!(lane.worker_may_have_exited());
}

#[test]
fn the_driver_takes_an_open_lane_from_callers_but_not_a_call_in_it() {
    let lane = lane();
    let state = &lane.header().turn.state;
    for (s, closes, after) in [
        (OPEN, true, CLOSED),
        (CLOSED, true, CLOSED),
        (GONE, true, GONE),
        (CLAIMED, false, CLAIMED),
        (POSTED, false, POSTED),
        (RUNNING, false, RUNNING),
        (PART, false, PART),
        (TAKEN, false, TAKEN),
    ] {
        state.store(s, Ordering::SeqCst);
        assert_eq!(lane.close_for_write(), closes, "state {s}");
        assert_eq!(state.load(Ordering::SeqCst), after, "state {s}");
    }
    // An answer being read is left to its caller, who opens the lane again.
    state.store(ANSWERED, Ordering::SeqCst);
    let reader = {
        let lane = Arc::clone(&lane);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            lane.header().turn.state.store(OPEN, Ordering::SeqCst);
        })
    };
    assert!(lane.close_for_write());
    reader.join().unwrap();
    assert_eq!(state.load(Ordering::SeqCst), CLOSED);
}

#[test]
fn a_lane_the_driver_closed_is_not_opened_again_before_the_worker_reads_its_socket() {
    let lane = lane();
    let mut worker = worker_of(&lane);
    let server = thread::spawn(move || {
        let mut run = |payload: &[u8], out: &mut Vec<u8>| Ok(reply(payload, 1, out));
        worker
            .serve(HANG, &|| false, &mut Vec::new(), &mut run)
            .unwrap()
    });
    // A caller ready to claim the lane the moment it is closed (were it opened again,
    // it would claim it, then give it back, so that the worker can leave).
    let go = Arc::new(AtomicBool::new(false));
    let claimer = {
        let (lane, go) = (Arc::clone(&lane), Arc::clone(&go));
        thread::spawn(move || {
            while !go.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            let mut claimed = 0;
            for _ in 0..200_000 {
                if lane.try_claim() {
                    claimed += 1;
                    lane.unclaim();
                }
            }
            claimed
        })
    };
    until_state(&lane, OPEN);
    lane.kick();
    assert!(lane.close_for_write());
    go.store(true, Ordering::SeqCst);
    assert_eq!(server.join().unwrap(), Idle::Kicked);
    assert_eq!(claimer.join().unwrap(), 0, "a caller claimed the lane");
    assert_eq!(lane.header().turn.state.load(Ordering::SeqCst), CLOSED);
}

#[test]
fn closing_waits_for_the_call_in_flight() {
    let lane = lane();
    let worker = Server::start(&lane, 1, Duration::from_millis(200));
    let closer = {
        let lane = Arc::clone(&lane);
        thread::spawn(move || {
            until_state(&lane, RUNNING);
            lane.close_when_idle(|| {
                thread::sleep(Duration::from_millis(1));
                true
            })
        })
    };
    // The call posted before the pool began to shut down is answered, not lost.
    let (call, answer) = call(&lane, b"abc");
    assert!(matches!(call, Call::Answered));
    assert_eq!(answer, b"cba");
    assert!(closer.join().unwrap());
    assert_eq!(lane.header().turn.state.load(Ordering::Acquire), GONE);
    assert_eq!(worker.join(), Idle::Gone);
}

#[test]
fn closing_gives_up_on_a_worker_that_no_longer_serves() {
    let lane = lane();
    let state = &lane.header().turn.state;
    state.store(POSTED, Ordering::SeqCst);
    let mut asked = 0;
    assert!(!lane.close_when_idle(|| {
        asked += 1;
        asked < 3
    }));
    assert_eq!(asked, 3);
    assert_eq!(state.load(Ordering::SeqCst), POSTED);
}

#[test]
fn an_answer_given_is_read_even_if_the_worker_is_lost_or_the_pool_shuts_down() {
    let lane = lane();
    let state = &lane.header().turn.state;
    // The worker answered, then died before its caller looked.
    state.store(ANSWERED, Ordering::SeqCst);
    lane.lose(Error::new(ErrorKind::WorkerDied, "gone"));
    assert_eq!(state.load(Ordering::SeqCst), ANSWERED);
    // Closing waits for the caller to read it (and open the lane again).
    let reader = {
        let lane = Arc::clone(&lane);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            lane.header().turn.state.store(OPEN, Ordering::SeqCst);
        })
    };
    assert!(lane.close_when_idle(|| panic!("the worker was never asked about")));
    reader.join().unwrap();
    assert_eq!(state.load(Ordering::SeqCst), GONE);
}

#[test]
fn a_worker_holding_segments_is_not_called_through_its_lane() {
    let lane = lane();
    let worker = Server::start(&lane, 1, Duration::ZERO);
    lane.set_segments_held(1);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(100) {
        assert!(
            !lane.try_claim(),
            "claimed while the worker holds a segment"
        );
        thread::yield_now();
    }
    lane.set_segments_held(0);
    let (call, answer) = call(&lane, b"ok");
    assert!(matches!(call, Call::Answered));
    assert_eq!(answer, b"ko");
    worker.stop();
}

#[test]
fn a_call_keeps_the_worker_busy_from_its_claim_to_its_answer() {
    let lane = lane();
    let state = &lane.header().turn.state;
    for (s, in_call) in [
        (CLOSED, false),
        (OPEN, false),
        (CLAIMED, true),
        (POSTED, true),
        (RUNNING, true),
        (PART, true),
        (TAKEN, true),
        (ANSWERED, false),
        (GONE, false),
    ] {
        state.store(s, Ordering::SeqCst);
        assert_eq!(lane.in_call(), in_call, "state {s}");
    }
}
