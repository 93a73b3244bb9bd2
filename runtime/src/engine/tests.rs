use std::sync::mpsc;
use std::thread;

use super::*;
use crate::api::chunk::encode_slice;
use crate::codec::Codec;
use crate::direct::ParentEnd;

fn shared(workers: usize) -> Arc<PoolShared> {
    Arc::new(PoolShared::new(PoolConfig {
        workers,
        program: PathBuf::from("/nonexistent"),
        max_tasks_per_worker: None,
        task_timeout: None,
        shm: crate::wire::ShmConfig::default(),
        retries: 0,
        max_memory: None,
        cancel_on_interrupt: false,
        initializer: None,
        on_exit: None,
    }))
}

fn job() -> Job {
    let enc = encode_slice("test", Codec::<u64>::POSTCARD, &[7u64], 1, 0, &mut 8, None)
        .unwrap()
        .unwrap();
    let (tx, _rx) = mpsc::channel();
    Job::new(enc, "test", 0, None, ReplyTo::Channel(tx))
}

#[test]
fn a_job_left_to_a_driver_whose_worker_is_in_a_call_goes_to_a_sleeping_one() {
    let shared = shared(2);
    let direct = Arc::new(ParentEnd::create(std::process::id()).unwrap());
    direct.claim_for_test();
    // Slot 0: its worker is in a direct call. Slot 1: idle, asleep once it polled.
    let busy = {
        let (shared, direct) = (Arc::clone(&shared), Arc::clone(&direct));
        thread::spawn(move || matches!(shared.next_job(0, Some(&direct)), Next::Closed))
    };
    let (took, took_rx) = mpsc::channel();
    let idle = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            let next = shared.next_job(1, None);
            let _ = took.send(());
            matches!(next, Next::Job(_))
        })
    };
    let start = Instant::now();
    while lock(&shared.queue).idle_sleeping == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "never slept");
        thread::yield_now();
    }
    // As after a wake-up that reached only the busy driver: nobody else is told.
    lock(&shared.queue).jobs.push_back(job());
    took_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the job was left waiting for the call");
    assert!(idle.join().unwrap());
    // The busy driver, which took nothing, leaves once the pool is closed.
    lock(&shared.queue).closed = true;
    shared.wake_drivers(Wake::All);
    assert!(busy.join().unwrap());
}
