use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;

use super::*;
use crate::error::ErrorKind;

/// Generous: only a hang runs into it.
const HANG: Duration = Duration::from_secs(20);

/// A direct path, invited (as by a caller that found it closed).
fn direct() -> Arc<ParentEnd> {
    let direct = Arc::new(ParentEnd::create(std::process::id()).unwrap());
    direct.invite();
    direct
}

fn worker_of(direct: &ParentEnd) -> WorkerEnd {
    let base = direct.segment().as_mut_ptr().unwrap();
    // SAFETY: the tests keep `direct path` (and so its mapping) alive until the worker
    // thread is joined.
    unsafe { WorkerEnd::at(base) }
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

/// A thread serving a direct path as its worker.
struct Server {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Idle>,
}

impl Server {
    /// Serves `direct path` on a thread until stopped (or the direct path is gone),
    /// answering each call with `reply(.., times)` after `delay`.
    fn start(direct: &ParentEnd, times: usize, delay: Duration) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let mut worker = worker_of(direct);
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

    /// Waits for the direct path to be gone; how the worker last stopped.
    fn join(self) -> Idle {
        self.thread.join().unwrap()
    }
}

/// Waits until the direct path is in `state`.
fn until_state(direct: &ParentEnd, state: u32) {
    let start = Instant::now();
    while direct.header().turn.state.load(Ordering::Acquire) != state {
        assert!(
            start.elapsed() < HANG,
            "the direct path never reached state {state}"
        );
        thread::yield_now();
    }
}

fn claim(direct: &ParentEnd) {
    let start = Instant::now();
    while !direct.try_claim() {
        assert!(start.elapsed() < HANG, "the direct path never opened");
        // As a caller does when it finds the direct path closed.
        direct.invite();
        thread::yield_now();
    }
}

fn call(direct: &ParentEnd, payload: &[u8]) -> (Call, Vec<u8>) {
    claim(direct);
    let mut answer = Vec::new();
    let call = direct.call(payload, &mut answer, || {});
    (call, answer)
}

#[test]
fn calls_are_answered_through_the_direct_path_one_after_another() {
    let direct = direct();
    let worker = Server::start(&direct, 1, Duration::ZERO);
    for i in 0..200u32 {
        let payload = i.to_le_bytes();
        let (call, answer) = call(&direct, &payload);
        assert!(matches!(call, Call::Answered), "call {i}");
        assert_eq!(answer, expected(&payload, 1), "call {i}");
    }
    assert_ne!(worker.stop(), Idle::Gone);
}

#[test]
fn an_answer_larger_than_the_buffer_comes_in_parts() {
    let direct = direct();
    // 300 bytes, 700 times over: more than three buffers.
    let worker = Server::start(&direct, 700, Duration::ZERO);
    let payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    assert!(payload.len() * 700 > 3 * CAPACITY);
    for _ in 0..3 {
        let (call, answer) = call(&direct, &payload);
        assert!(matches!(call, Call::Answered));
        assert_eq!(answer, expected(&payload, 700));
    }
    worker.stop();
}

#[test]
fn a_caller_asleep_is_woken_by_the_answer_and_checks_meanwhile() {
    let direct = direct();
    // Long enough for the caller to go to sleep, several slices over.
    let worker = Server::start(&direct, 1, Duration::from_millis(60));
    claim(&direct);
    let mut answer = Vec::new();
    let mut checks = 0;
    let call = direct.call(b"abc", &mut answer, || checks += 1);
    assert!(matches!(call, Call::Answered));
    assert_eq!(answer, b"cba");
    assert!(checks >= 2, "{checks} checks while the call ran");
    worker.stop();
}

#[test]
fn a_kick_sends_the_worker_to_its_socket() {
    let direct = direct();
    let mut worker = worker_of(&direct);
    let kicker = {
        let direct = Arc::clone(&direct);
        thread::spawn(move || {
            // Kick once the direct path is open, while the worker would watch it for a
            // minute.
            until_state(&direct, OPEN);
            direct.kick();
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
    // It left the direct path closed: no caller can claim it while it reads its socket.
    assert!(!direct.try_claim());
    // A kick from before it came back is for frames in the socket: the socket says.
    direct.kick();
    let idle = worker
        .serve(Duration::from_millis(1), &|| false, &mut out, no_call)
        .unwrap();
    assert_eq!(idle, Idle::Expired);
    direct.invite();
    let idle = worker
        .serve(Duration::from_secs(60), &|| true, &mut out, no_call)
        .unwrap();
    assert_eq!(idle, Idle::Kicked);
}

#[test]
fn an_idle_worker_closes_its_direct_path_when_the_window_ends_and_waits_for_an_invitation() {
    let direct = direct();
    let mut worker = worker_of(&direct);
    let mut no_call =
        |_: &[u8], _: &mut Vec<u8>| -> Result<usize, String> { Err("no call was made".into()) };
    let mut serve = |window| {
        worker
            .serve(window, &|| false, &mut Vec::new(), &mut no_call)
            .unwrap()
    };
    assert_eq!(serve(Duration::from_millis(1)), Idle::Expired);
    assert!(!direct.try_claim());
    // Open a whole window for nothing: closed until a caller asks again, whatever the
    // window (it returns at once, with no look at the direct path or the socket).
    assert_eq!(serve(Duration::from_secs(60)), Idle::Uninvited);
    assert!(!direct.try_claim());
    direct.invite();
    assert_eq!(serve(Duration::from_millis(1)), Idle::Expired);
}

#[test]
fn only_one_caller_claims_an_open_direct_path() {
    let direct = direct();
    let mut worker = worker_of(&direct);
    let claims = Arc::new(AtomicU32::new(0));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (direct, claims) = (Arc::clone(&direct), Arc::clone(&claims));
            thread::spawn(move || {
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(300) {
                    if direct.try_claim() {
                        claims.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    thread::yield_now();
                }
            })
        })
        .collect();
    // The worker stays until claimed and then waits for a call that never comes: it
    // serves a claimed direct path whatever its window. Give it up from here to end it.
    let loser = {
        let direct = Arc::clone(&direct);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(500));
            direct.lose(Error::new(ErrorKind::WorkerDied, "test over"));
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
fn a_call_too_large_for_the_direct_path_is_not_run_and_leaves_it_open() {
    let direct = direct();
    let worker = Server::start(&direct, 1, Duration::ZERO);
    let (too_large, _) = call(&direct, &vec![1u8; CAPACITY + 1]);
    assert!(matches!(too_large, Call::NotRun));
    let (small, answer) = call(&direct, b"xy");
    assert!(matches!(small, Call::Answered));
    assert_eq!(answer, b"yx");
    worker.stop();
}

#[test]
fn a_lost_worker_fails_its_call_with_the_reason_given() {
    let direct = direct();
    // The "worker" takes its time; the driver declares it dead meanwhile.
    let worker = Server::start(&direct, 1, Duration::from_millis(300));
    let loser = {
        let direct = Arc::clone(&direct);
        thread::spawn(move || {
            until_state(&direct, RUNNING);
            direct.lose(Error::new(ErrorKind::WorkerDied, "killed by signal 9"));
        })
    };
    let (call, _) = call(&direct, b"abc");
    let Call::Lost(Some(why)) = call else {
        panic!("the call was not lost with a reason");
    };
    assert_eq!(why.kind(), ErrorKind::WorkerDied);
    assert!(why.to_string().contains("signal 9"), "{why}");
    loser.join().unwrap();
    // Its answer, when it comes, finds the direct path gone.
    assert_eq!(worker.join(), Idle::Gone);
    assert!(!direct.try_claim());
}

#[test]
fn a_call_posted_to_a_worker_lost_before_it_took_it_did_not_run() {
    let direct = direct();
    // A worker that opened its direct path, then died (no thread serves it).
    direct.header().turn.state.store(OPEN, Ordering::SeqCst);
    let loser = {
        let direct = Arc::clone(&direct);
        thread::spawn(move || {
            until_state(&direct, POSTED);
            direct.lose(Error::new(ErrorKind::WorkerDied, "killed by signal 9"));
        })
    };
    let (call, _) = call(&direct, b"abc");
    assert!(
        matches!(call, Call::NotRun),
        "a call never taken counts as lost"
    );
    loser.join().unwrap();
    assert!(!direct.try_claim());
}

#[test]
fn the_direct_path_tells_when_its_worker_has_exited() {
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let direct = ParentEnd::create(child.id()).unwrap();
    assert!(direct.exit_watch.is_some(), "no pidfd for a child");
    assert!(!direct.worker_may_have_exited());
    child.kill().unwrap();
    let start = Instant::now();
    while !direct.worker_may_have_exited() {
        assert!(start.elapsed() < HANG, "the exit was never seen");
        thread::yield_now();
    }
    child.wait().unwrap();
    assert!(direct.worker_may_have_exited());
}

#[test]
fn the_driver_takes_an_open_direct_path_from_callers_but_not_a_call_in_it() {
    let direct = direct();
    let state = &direct.header().turn.state;
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
        assert_eq!(direct.close_for_write(), closes, "state {s}");
        assert_eq!(state.load(Ordering::SeqCst), after, "state {s}");
    }
    // An answer being read is left to its caller, who opens the direct path again.
    state.store(ANSWERED, Ordering::SeqCst);
    let reader = {
        let direct = Arc::clone(&direct);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            direct.header().turn.state.store(OPEN, Ordering::SeqCst);
        })
    };
    assert!(direct.close_for_write());
    reader.join().unwrap();
    assert_eq!(state.load(Ordering::SeqCst), CLOSED);
}

#[test]
fn a_direct_path_the_driver_closed_is_not_opened_again_before_the_worker_reads_its_socket() {
    let direct = direct();
    let mut worker = worker_of(&direct);
    let server = thread::spawn(move || {
        let mut run = |payload: &[u8], out: &mut Vec<u8>| Ok(reply(payload, 1, out));
        worker
            .serve(HANG, &|| false, &mut Vec::new(), &mut run)
            .unwrap()
    });
    // A caller ready to claim the direct path the moment it is closed (were it opened
    // again, it would claim it, then give it back, so that the worker can leave).
    let go = Arc::new(AtomicBool::new(false));
    let claimer = {
        let (direct, go) = (Arc::clone(&direct), Arc::clone(&go));
        thread::spawn(move || {
            while !go.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            let mut claimed = 0;
            for _ in 0..200_000 {
                if direct.try_claim() {
                    claimed += 1;
                    direct.unclaim();
                }
            }
            claimed
        })
    };
    until_state(&direct, OPEN);
    direct.kick();
    assert!(direct.close_for_write());
    go.store(true, Ordering::SeqCst);
    assert_eq!(server.join().unwrap(), Idle::Kicked);
    assert_eq!(
        claimer.join().unwrap(),
        0,
        "a caller claimed the direct path"
    );
    assert_eq!(direct.header().turn.state.load(Ordering::SeqCst), CLOSED);
}

#[test]
fn closing_waits_for_the_call_in_flight() {
    let direct = direct();
    let worker = Server::start(&direct, 1, Duration::from_millis(200));
    let closer = {
        let direct = Arc::clone(&direct);
        thread::spawn(move || {
            until_state(&direct, RUNNING);
            direct.close_when_idle(|| {
                thread::sleep(Duration::from_millis(1));
                true
            })
        })
    };
    // The call posted before the pool began to shut down is answered, not lost.
    let (call, answer) = call(&direct, b"abc");
    assert!(matches!(call, Call::Answered));
    assert_eq!(answer, b"cba");
    assert!(closer.join().unwrap());
    assert_eq!(direct.header().turn.state.load(Ordering::Acquire), GONE);
    assert_eq!(worker.join(), Idle::Gone);
}

#[test]
fn closing_gives_up_on_a_worker_that_no_longer_serves() {
    let direct = direct();
    let state = &direct.header().turn.state;
    state.store(POSTED, Ordering::SeqCst);
    let mut asked = 0;
    assert!(!direct.close_when_idle(|| {
        asked += 1;
        asked < 3
    }));
    assert_eq!(asked, 3);
    assert_eq!(state.load(Ordering::SeqCst), POSTED);
}

#[test]
fn an_answer_given_is_read_even_if_the_worker_is_lost_or_the_pool_shuts_down() {
    let direct = direct();
    let state = &direct.header().turn.state;
    // The worker answered, then died before its caller looked.
    state.store(ANSWERED, Ordering::SeqCst);
    direct.lose(Error::new(ErrorKind::WorkerDied, "gone"));
    assert_eq!(state.load(Ordering::SeqCst), ANSWERED);
    // Closing waits for the caller to read it (and open the direct path again).
    let reader = {
        let direct = Arc::clone(&direct);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            direct.header().turn.state.store(OPEN, Ordering::SeqCst);
        })
    };
    assert!(direct.close_when_idle(|| panic!("the worker was never asked about")));
    reader.join().unwrap();
    assert_eq!(state.load(Ordering::SeqCst), GONE);
}

#[test]
fn a_worker_holding_segments_is_not_called_through_its_direct_path() {
    let direct = direct();
    let worker = Server::start(&direct, 1, Duration::ZERO);
    direct.set_segments_held(1);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(100) {
        assert!(
            !direct.try_claim(),
            "claimed while the worker holds a segment"
        );
        thread::yield_now();
    }
    direct.set_segments_held(0);
    let (call, answer) = call(&direct, b"ok");
    assert!(matches!(call, Call::Answered));
    assert_eq!(answer, b"ko");
    worker.stop();
}

#[test]
fn a_call_keeps_the_worker_busy_from_its_claim_to_its_answer() {
    let direct = direct();
    let state = &direct.header().turn.state;
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
        assert_eq!(direct.in_call(), in_call, "state {s}");
    }
}
