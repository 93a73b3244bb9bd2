//! Large data through shared memory: automatic big messages both ways, `Shared<T>`,
//! `SharedSlice<T>`, `SharedSliceMut<T>`, both backends, bad handles and leak checks.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use multiproc::prelude::*;
use multiproc::{ErrorKind, ShmBackend};
use serde::{Deserialize, Deserializer, Serialize};

/// Position-sensitive, over 8-byte words (these tests run unoptimized).
fn checksum(data: &[u8]) -> u64 {
    let words = data.chunks_exact(8);
    let tail = words
        .remainder()
        .iter()
        .fold(0u64, |h, &b| h * 31 + u64::from(b));
    words.fold(tail, |h, w| {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h.rotate_left(5) ^ u64::from_le_bytes(a)
    })
}

/// 64 MiB in, 64 MiB out: both directions go through shared memory.
#[parallel]
fn reverse_bytes(mut data: Vec<u8>) -> (u64, Vec<u8>) {
    let sum = checksum(&data);
    data.reverse();
    (sum, data)
}

/// `n` bytes of a pattern that does not repeat with any power-of-two period.
fn big_input(n: usize, seed: u8) -> Vec<u8> {
    let pattern: Vec<u8> = (0..251u16)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed)
        .collect();
    let mut out = Vec::with_capacity(n + pattern.len());
    while out.len() < n {
        out.extend_from_slice(&pattern);
    }
    out.truncate(n);
    out
}

fn round_trip_64mib(backend: ShmBackend) {
    let pool = Pool::builder()
        .workers(2)
        .shm_backend(backend)
        .build()
        .unwrap();
    let inputs: Vec<Vec<u8>> = (0..2).map(|k| big_input(64 << 20, k)).collect();
    let out = pool.map(reverse_bytes, &inputs).unwrap();
    for (input, (sum, reversed)) in inputs.iter().zip(&out) {
        assert_eq!(*sum, checksum(input), "the worker saw different bytes");
        let mut expect = input.clone();
        expect.reverse();
        assert!(*reversed == expect, "the result came back changed");
    }
}

#[test]
fn sixty_four_mib_arguments_and_results_round_trip_memfd() {
    round_trip_64mib(ShmBackend::Memfd);
}

#[test]
fn sixty_four_mib_arguments_and_results_round_trip_posix() {
    round_trip_64mib(ShmBackend::Posix);
}

/// Dies the first time it runs for `dir` (leaving a mark there), then checks its bytes.
#[parallel]
fn die_once_then_checksum(dir: String, data: serde_bytes::ByteBuf) -> u64 {
    let marks = std::fs::read_dir(&dir).unwrap().count();
    std::fs::write(format!("{dir}/{}", std::process::id()), b"").unwrap();
    if marks == 0 {
        std::process::abort();
    }
    checksum(&data)
}

/// A large argument is written into its segment while it is encoded; a chunk whose
/// worker died is sent to the next worker with the same segment, unchanged.
#[test]
fn a_large_argument_survives_its_workers_death_and_reaches_the_next_one() {
    let dir = std::env::temp_dir().join(format!("multiproc-big-retry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = big_input(24 << 20, 3);
    let pool = Pool::builder()
        .workers(1)
        .retries(1)
        .shm_backend(ShmBackend::Memfd)
        .build()
        .unwrap();
    let arg = (
        dir.to_string_lossy().into_owned(),
        serde_bytes::ByteBuf::from(data.clone()),
    );
    let args = [arg.clone(), arg];
    let sums = pool.map(die_once_then_checksum, &args).unwrap();
    assert_eq!(sums, [checksum(&data); 2]);
    assert_eq!(pool.stats().workers_died, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Counts deserializations of `Counted` in this process.
static DESERIALIZED: AtomicUsize = AtomicUsize::new(0);

#[derive(Serialize)]
struct Counted(Vec<u64>);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DESERIALIZED.fetch_add(1, Ordering::SeqCst);
        Ok(Counted(Vec::deserialize(d)?))
    }
}

#[parallel]
fn lookup(table: Shared<Counted>, i: u64) -> (u64, usize, u32) {
    let v = table.0[i as usize];
    (v, DESERIALIZED.load(Ordering::SeqCst), std::process::id())
}

fn shared_is_deserialized_once_per_worker(backend: ShmBackend) {
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .shm_backend(backend)
        .build()
        .unwrap();
    let table =
        Shared::with_backend(Counted((0..100_000).map(|x| x * 3).collect()), backend).unwrap();
    assert_eq!(table.0[7], 21); // derefs in the parent
    for _ in 0..2 {
        let args: Vec<(Shared<Counted>, u64)> =
            (0..60).map(|i| (table.clone(), i * 1000)).collect();
        let out = pool.map(lookup, &args).unwrap();
        for (i, (v, count, pid)) in out.iter().enumerate() {
            assert_eq!(*v, i as u64 * 3000);
            assert_eq!(
                *count, 1,
                "worker {pid} deserialized the Shared {count} times"
            );
        }
    }
}

#[test]
fn shared_is_deserialized_at_most_once_per_worker_memfd() {
    shared_is_deserialized_once_per_worker(ShmBackend::Memfd);
}

#[test]
fn shared_is_deserialized_at_most_once_per_worker_posix() {
    shared_is_deserialized_once_per_worker(ShmBackend::Posix);
}

#[parallel]
fn describe_view(part: SharedSlice<f64>) -> (usize, usize, f64, f64, f64) {
    let first = part.first().copied().unwrap_or(-1.0);
    let last = part.last().copied().unwrap_or(-1.0);
    (part.offset(), part.len(), first, last, part.iter().sum())
}

#[test]
fn shared_slice_views_read_the_right_ranges() {
    for backend in [ShmBackend::Memfd, ShmBackend::Posix] {
        let data: Vec<f64> = (0..10_007).map(f64::from).collect();
        let xs = SharedSlice::from_slice_with(&data, backend).unwrap();
        assert_eq!(&xs[..], &data[..]);
        let views = xs.views(1000).unwrap();
        assert_eq!(views.len(), 11);
        let out = with_pool!(2, { views.par_map(describe_view).unwrap() });
        for (k, (offset, len, first, last, sum)) in out.into_iter().enumerate() {
            let expect = &data[k * 1000..(k * 1000 + 1000).min(data.len())];
            assert_eq!((offset, len), (k * 1000, expect.len()));
            assert_eq!((first, last), (expect[0], expect[expect.len() - 1]));
            assert_eq!(sum, expect.iter().sum::<f64>());
        }
    }
}

#[test]
fn empty_slices_and_zero_chunks() {
    let empty = SharedSlice::<u32>::from_slice(&[]).unwrap();
    assert!(empty.is_empty());
    assert!(empty.views(4).unwrap().is_empty());
    assert_eq!(empty.views(0).unwrap_err().kind(), ErrorKind::InvalidConfig);
    let pool = Pool::new(1).unwrap();
    let out = pool
        .map(
            describe_view,
            &[SharedSlice::<f64>::from_slice(&[]).unwrap()],
        )
        .unwrap();
    assert_eq!(out[0].1, 0);
    let mut m = SharedSliceMut::<u8>::zeroed(0).unwrap();
    assert_eq!(
        m.chunks_mut(0).unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    assert!(m.as_slice().unwrap().is_empty());
}

/// Tries to write into the sealed memfd behind a SharedSlice, from the worker.
#[parallel]
fn try_to_write(part: SharedSlice<u64>) -> (bool, bool, u64) {
    let mut write_refused = true;
    let mut map_refused = true;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().contains("memfd:multiproc") {
            continue;
        }
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let byte = [0xffu8];
        // SAFETY: pwrite of one byte from our buffer to an fd of this process.
        if unsafe { libc::pwrite(fd, byte.as_ptr().cast(), 1, 0) } == 1 {
            write_refused = false;
        }
        // SAFETY: asking for a writable shared mapping; unmapped again if granted.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            map_refused = false;
            // SAFETY: unmapping what was just mapped.
            unsafe { libc::munmap(p, 4096) };
        }
    }
    (write_refused, map_refused, part.iter().sum())
}

#[test]
fn a_worker_cannot_write_into_a_sealed_input() {
    let data: Vec<u64> = (0..4096).collect();
    let xs = SharedSlice::from_slice_with(&data, ShmBackend::Memfd).unwrap();
    let pool = Pool::new(1).unwrap();
    let (write_refused, map_refused, sum) = pool.apply(try_to_write, xs.clone()).unwrap();
    assert!(write_refused, "a worker wrote into a sealed segment");
    assert!(map_refused, "a worker mapped a sealed segment writable");
    assert_eq!(sum, data.iter().sum::<u64>());
    assert_eq!(xs[4095], 4095);
}

#[parallel]
fn fill(mut part: SharedChunkMut<u64>) -> usize {
    let start = part.offset() as u64;
    for (i, x) in part.iter_mut().enumerate() {
        *x = (start + i as u64) * 2;
    }
    part.len()
}

#[test]
fn workers_fill_disjoint_ranges_of_a_shared_slice_mut() {
    for backend in [ShmBackend::Memfd, ShmBackend::Posix] {
        let mut out = SharedSliceMut::<u64>::zeroed_with(100_003, backend).unwrap();
        let parts = out.chunks_mut(10_000).unwrap();
        assert_eq!(out_len_while_lent(&out), ErrorKind::InvalidConfig);
        let written: usize = with_pool!(2, { parts.par_map(fill).unwrap() }).iter().sum();
        assert_eq!(written, 100_003);
        drop(parts);
        let values = out.as_slice().unwrap();
        assert!(values.iter().enumerate().all(|(i, &v)| v == i as u64 * 2));
    }
}

fn out_len_while_lent(out: &SharedSliceMut<u64>) -> ErrorKind {
    out.as_slice().unwrap_err().kind()
}

#[test]
fn forged_handles_are_errors_not_crashes() {
    #[derive(Serialize)]
    struct Wire {
        id: u64,
        offset: u64,
        len: u64,
    }
    let forged = postcard::to_stdvec(&Wire {
        id: 0xdead_beef,
        offset: 0,
        len: 10,
    })
    .unwrap();
    let err = postcard::from_bytes::<SharedSlice<u64>>(&forged).unwrap_err();
    assert!(
        err.to_string().contains("not available") || matches!(err, postcard::Error::SerdeDeCustom)
    );
    // A real segment, but a range outside it.
    let xs = SharedSlice::from_slice(&[1u64, 2, 3]).unwrap();
    let mut bytes = postcard::to_stdvec(&xs).unwrap();
    let tampered = postcard::from_bytes::<(u64, u64, u64)>(&bytes).unwrap();
    bytes = postcard::to_stdvec(&(tampered.0, 2u64, 5u64)).unwrap();
    assert!(postcard::from_bytes::<SharedSlice<u64>>(&bytes).is_err());
    // In a worker: the handle is forged there, and the task fails with a clear error.
    let pool = Pool::new(1).unwrap();
    let e = pool.apply(forge_in_worker, forged).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
    assert!(e.to_string().contains("not available"), "{e}");
}

#[parallel]
fn forge_in_worker(bytes: Vec<u8>) -> u64 {
    match postcard::from_bytes::<SharedSlice<u64>>(&bytes) {
        Ok(s) => s.iter().sum(),
        Err(_) => panic!("the forged handle is not available in this process"),
    }
}

#[test]
fn a_segment_larger_than_memory_fails_cleanly() {
    let e = SharedSliceMut::<u8>::zeroed(1 << 50).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Io | ErrorKind::InvalidConfig),
        "{e}"
    );
    let e = SharedSliceMut::<u64>::zeroed(usize::MAX / 2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn my_named_segments() -> Vec<String> {
    // `mproc<creator pid, hex>-<id>`.
    let prefix = format!("mproc{:x}-", std::process::id());
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[parallel]
fn sum_and_maybe_die(part: SharedSlice<u64>, big: Vec<u8>, die: bool) -> u64 {
    if die {
        std::process::exit(9);
    }
    part.iter().sum::<u64>() + big.len() as u64
}

/// Child half of `nothing_leaks`: uses every kind of segment, kills a worker mid-task,
/// and reports its fd count and named segments before and after.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_uses_segments() {
    if !common::is_child() {
        return;
    }
    println!();
    let before = fd_count();
    for backend in [ShmBackend::Memfd, ShmBackend::Posix] {
        let pool = Pool::builder()
            .workers(2)
            .shm_backend(backend)
            .build()
            .unwrap();
        let xs =
            SharedSlice::from_slice_with(&(0..100_000u64).collect::<Vec<_>>(), backend).unwrap();
        let big = vec![7u8; 4 << 20];
        let args: Vec<_> = xs
            .views(10_000)
            .unwrap()
            .into_iter()
            .map(|v| (v, big.clone(), false))
            .collect();
        assert_eq!(pool.map(sum_and_maybe_die, &args).unwrap().len(), 10);
        let killer = vec![(xs.clone(), big.clone(), true)];
        assert_eq!(
            pool.map(sum_and_maybe_die, &killer).unwrap_err().kind(),
            ErrorKind::WorkerDied
        );
        assert_eq!(pool.map(sum_and_maybe_die, &args).unwrap().len(), 10);
        drop((pool, xs, args, killer));
    }
    println!("FDS before={before} after={}", fd_count());
    println!("SEGMENTS={:?}", my_named_segments());
    println!("HELD={}", multiproc::testing::segments_held());
    if std::env::var_os("CHILD_WAIT").is_some() {
        // Leave named segments behind in a worker that is busy when we are killed.
        let xs = SharedSlice::from_slice_with(&[1u64; 1000], ShmBackend::Posix).unwrap();
        let pool = Pool::builder()
            .workers(1)
            .shm_backend(ShmBackend::Posix)
            .build()
            .unwrap();
        let _pending = pool.apply_async(sum_and_maybe_die, (xs.clone(), vec![0u8; 2 << 20], false));
        println!("PID={}", std::process::id());
        println!("READY");
        std::thread::sleep(std::time::Duration::from_secs(120));
    }
}

#[test]
fn nothing_leaks_after_normal_runs_and_a_killed_worker() {
    let stdout = common::child_stdout("child_uses_segments", &[]);
    let line = stdout.lines().find(|l| l.starts_with("FDS")).unwrap();
    let nums: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.split('=').nth(1)?.parse().ok())
        .collect();
    assert_eq!(nums[0], nums[1], "file descriptors leaked: {line}");
    assert!(stdout.contains("SEGMENTS=[]"), "{stdout}");
    assert!(stdout.contains("HELD=0"), "{stdout}");
}

#[test]
fn segments_of_a_killed_parent_are_swept_at_the_next_start() {
    let pids = common::kill_child_test_after("child_uses_segments", &[], &["PID="], "READY");
    let dead = pids[0];
    common::wait_until_gone(&pids);
    // A new process sweeps, before it makes its first named segment, what dead
    // processes left behind.
    let out = common::run_child_test("child_uses_segments", &[]);
    assert!(out.status.success());
    let leftovers: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("mproc{dead:x}-")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Child half of `running_out_of_file_descriptors_is_an_error`.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_with_few_fds() {
    if !common::is_child() {
        return;
    }
    let limit = libc::rlimit {
        rlim_cur: 64,
        rlim_max: 64,
    };
    // SAFETY: lowering this process's own descriptor limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let mut kept = Vec::new();
    let mut error = None;
    for _ in 0..200 {
        match SharedSlice::from_slice_with(&[1u8; 16], ShmBackend::Memfd) {
            Ok(s) => kept.push(s),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let e = error.expect("64 descriptors ran out");
    println!("\nERROR={:?}: {e}", e.kind());
}

#[test]
fn running_out_of_file_descriptors_is_an_error() {
    let out = common::run_child_test("child_with_few_fds", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ERROR=Io"), "{stdout}");
    assert!(stdout.contains("Too many open files"), "{stdout}");
}

#[parallel]
fn held_here(_x: u8) -> usize {
    multiproc::testing::segments_held()
}

#[parallel]
fn first_of(s: Shared<Vec<u32>>) -> u32 {
    s[0]
}

#[test]
fn a_worker_frees_a_segment_once_the_parent_drops_its_handles() {
    let pool = Pool::new(1).unwrap();
    let s = Shared::new(vec![5u32; 1000]).unwrap();
    assert_eq!(pool.apply(first_of, s.clone()).unwrap(), 5);
    assert_eq!(
        pool.apply(held_here, 0).unwrap(),
        1,
        "the worker holds the segment"
    );
    drop(s);
    // The release travels in front of the next frame the worker gets.
    assert_eq!(
        pool.apply(held_here, 0).unwrap(),
        0,
        "the worker still holds it"
    );
}

/// Child half of `multiproc_shm_selects_named_segments`.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_makes_a_default_segment() {
    if !common::is_child() {
        return;
    }
    let xs = SharedSlice::from_slice(&[1u8, 2, 3]).unwrap();
    println!("\nNAMED={}", my_named_segments().len());
    let pool = Pool::new(1).unwrap();
    println!("SUM={}", pool.apply(slice_sum_u8, xs).unwrap());
}

#[parallel]
fn slice_sum_u8(s: SharedSlice<u8>) -> u32 {
    s.iter().map(|&b| u32::from(b)).sum()
}

#[test]
fn multiproc_shm_selects_named_segments() {
    let posix = common::run_child_test(
        "child_makes_a_default_segment",
        &[("MULTIPROC_SHM", "posix")],
    );
    let out = String::from_utf8_lossy(&posix.stdout);
    assert!(out.contains("NAMED=1") && out.contains("SUM=6"), "{out}");
    let memfd = common::run_child_test("child_makes_a_default_segment", &[]);
    let out = String::from_utf8_lossy(&memfd.stdout);
    assert!(out.contains("NAMED=0") && out.contains("SUM=6"), "{out}");
}

#[test]
#[allow(deprecated)]
fn views_is_the_new_name_of_chunks_which_still_works() {
    let xs = SharedSlice::from_slice(&[1u64, 2, 3, 4, 5]).unwrap();
    let views = xs.views(2).unwrap();
    let old = xs.chunks(2).unwrap();
    let lens: Vec<usize> = views.iter().map(|v| v.len()).collect();
    assert_eq!(lens, [2, 2, 1]);
    assert_eq!(old.len(), 3);
    // Through `Deref`, the slice's own `chunks` is there too.
    assert_eq!((*xs).chunks(2).count(), 3);
}

#[test]
#[ignore = "run as a child process by the backend default test"]
fn default_backend_child() {
    if !common::is_child() {
        return;
    }
    println!("default: {:?}", ShmBackend::default());
}

#[test]
fn the_default_backend_honours_multiproc_shm() {
    for (var, want) in [("posix", "Posix"), ("memfd", "Memfd")] {
        let out = common::run_child_test("default_backend_child", &[("MULTIPROC_SHM", var)]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("default: {want}")),
            "{var}: {stdout}"
        );
    }
}
