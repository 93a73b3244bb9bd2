//! `par_map` on the global pool, with real worker processes.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;

use multiproc::prelude::*;
use multiproc::{ErrorKind, Pool, Process};
use serde::{Deserialize, Serialize};

#[parallel]
fn times_ten(x: u64) -> u64 {
    x * 10
}

#[parallel]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[parallel]
fn seven() -> u32 {
    7
}

#[parallel]
fn whoami(_x: u32) -> u32 {
    std::process::id()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
    label: String,
}

#[parallel]
fn describe(p: Point, suffix: String) -> String {
    format!("{}({},{}){suffix}", p.label, p.x, p.y)
}

#[parallel]
fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        Err(format!("{a} / 0"))
    } else {
        Ok(a / b)
    }
}

#[parallel]
fn fails_on_13(x: u64) -> u64 {
    if x == 13 {
        panic!("thirteen is unlucky");
    }
    x
}

/// A task that maps again: the inner map runs inline in the worker.
#[parallel]
fn nested(_x: u64) -> (u32, Vec<u32>) {
    let inner: Vec<u32> = (0..4).collect();
    let pids = inner.par_map(whoami).expect("the inline map");
    (std::process::id(), pids)
}

#[test]
fn results_are_in_input_order_for_100k_items() {
    let data: Vec<u64> = (0..100_000).collect();
    let out = data.par_map(times_ten).unwrap();
    assert_eq!(out.len(), data.len());
    assert!(out.iter().zip(&data).all(|(o, d)| *o == d * 10));
}

#[test]
fn arrays_and_vecs_are_borrowed_not_consumed() {
    let data = vec![1u64, 2, 3];
    assert_eq!(data.par_map(times_ten).unwrap(), [10, 20, 30]);
    assert_eq!(data, [1, 2, 3]);
    assert_eq!([4u64, 5].par_map(times_ten).unwrap(), [40, 50]);
}

#[test]
fn the_function_still_runs_in_process() {
    assert_eq!(times_ten(5), 50);
    assert_eq!(add(2, 3), 5);
    assert_eq!(seven(), 7);
    let mapped: Vec<u64> = (1..4).map(*times_ten).collect();
    assert_eq!(mapped, [10, 20, 30]);
    assert!(
        times_ten.name().ends_with("par_map::times_ten"),
        "{}",
        times_ten.name()
    );
}

#[test]
fn tuples_feed_a_two_argument_function() {
    let pairs: Vec<(u64, u64)> = (0..1000).map(|i| (i, 2 * i)).collect();
    let out = pairs.par_map(add).unwrap();
    assert_eq!(out, (0..1000).map(|i| 3 * i).collect::<Vec<_>>());
}

#[test]
fn structs_and_strings_travel() {
    let items: Vec<(Point, String)> = (0..50)
        .map(|i| {
            let p = Point {
                x: i,
                y: -i,
                label: format!("p{i}"),
            };
            (p, "!".repeat(i as usize % 3))
        })
        .collect();
    let out = items.par_map(describe).unwrap();
    assert_eq!(out[0], "p0(0,0)");
    assert_eq!(out[7], "p7(7,-7)!");
    assert_eq!(out[49], "p49(49,-49)!");
}

#[test]
fn user_errors_come_back_as_values() {
    let pairs = [(10i64, 2i64), (1, 0), (9, 3)];
    let out = pairs.par_map(checked_div).unwrap();
    assert_eq!(out, vec![Ok(5), Err("1 / 0".to_string()), Ok(3)]);
}

#[test]
fn zero_argument_functions_take_unit() {
    let units = [(); 10];
    assert_eq!(units.par_map(seven).unwrap(), vec![7; 10]);
}

#[parallel]
fn marker_is_gone(_x: u8) -> bool {
    std::env::var_os("MULTIPROC_WORKER").is_none()
}

#[test]
fn the_worker_marker_is_removed_before_user_code_runs() {
    let out = [0u8; 8].par_map(marker_is_gone).unwrap();
    assert!(out.iter().all(|&gone| gone));
}

/// The pids of this process's children.
fn children() -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

/// Child half of `empty_input_starts_nothing`.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_maps_nothing() {
    if !common::is_child() {
        return;
    }
    let empty: Vec<u64> = Vec::new();
    let out = empty.par_map(times_ten).unwrap();
    println!("\nRESULTS={} CHILDREN={}", out.len(), children().len());
}

#[test]
fn empty_input_starts_nothing() {
    let out = common::run_child_test("child_maps_nothing", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("RESULTS=0 CHILDREN=0"), "{stdout}");
}

#[test]
fn work_runs_in_worker_processes_and_the_global_pool_is_reused() {
    let me = std::process::id();
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let data: Vec<u32> = (0..2000).collect();
        let pids: BTreeSet<u32> = data.par_map(whoami).unwrap().into_iter().collect();
        assert!(!pids.contains(&me), "a result was computed in the parent");
        seen.extend(pids);
    }
    // Three calls, the same workers: never more distinct pids than the pool has workers.
    assert!(
        seen.len() <= common::global_workers(),
        "{} distinct worker pids for a pool of {}",
        seen.len(),
        common::global_workers()
    );
}

#[test]
fn a_panic_is_reported_with_message_and_index_and_the_pool_keeps_working() {
    let data: Vec<u64> = (0..100).collect();
    let err = data.par_map(fails_on_13).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.task_index(), Some(13));
    let pid = err.worker_pid().expect("the worker's pid");
    assert_ne!(pid, std::process::id());
    let text = err.to_string();
    assert!(text.contains("thirteen is unlucky"), "{text}");
    assert!(text.contains("fails_on_13"), "{text}");
    assert!(text.contains("item 13"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    // The worker caught the panic and keeps serving; the next call works.
    let ok: Vec<u64> = (14..200).collect();
    assert_eq!(ok.par_map(fails_on_13).unwrap(), ok);
}

#[test]
fn par_map_inside_a_worker_runs_inline() {
    let data: Vec<u64> = (0..6).collect();
    for (outer, inner) in data.par_map(nested).unwrap() {
        assert_ne!(outer, std::process::id());
        assert_eq!(inner, vec![outer; 4], "the inner map left its worker");
    }
}

/// Child half of `multiproc_workers_sets_the_global_pool_size`.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_reports_worker_pids() {
    if !common::is_child() {
        return;
    }
    // The harness prints "test name ... " without a newline first.
    println!();
    let data: Vec<u32> = (0..5000).collect();
    match data.par_map(whoami) {
        Ok(pids) => {
            let distinct: BTreeSet<u32> = pids.into_iter().collect();
            println!("DISTINCT={}", distinct.len());
            for pid in distinct {
                println!("PID={pid}");
            }
        }
        Err(e) => println!("ERROR={:?}: {e}", e.kind()),
    }
}

fn child_output(envs: &[(&str, &str)]) -> String {
    let out = common::run_child_test("child_reports_worker_pids", envs);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn multiproc_workers_sets_the_global_pool_size() {
    let out = child_output(&[("MULTIPROC_WORKERS", "3")]);
    let distinct: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("DISTINCT="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no DISTINCT line in {out}"));
    assert!((1..=3).contains(&distinct), "{out}");
}

#[test]
fn an_invalid_multiproc_workers_is_a_clear_error() {
    for bad in ["0", "many"] {
        let out = child_output(&[("MULTIPROC_WORKERS", bad)]);
        assert!(out.contains("ERROR=InvalidConfig"), "{out}");
        assert!(out.contains("MULTIPROC_WORKERS"), "{out}");
    }
}

#[test]
fn workers_are_gone_after_the_program_exits() {
    let out = child_output(&[("MULTIPROC_WORKERS", "2")]);
    let pids: Vec<u32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("PID="))
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(!pids.is_empty(), "{out}");
    // The child has exited; its workers were shut down at exit and reaped by it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pids.iter().any(|&p| common::process_exists(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "workers {pids:?} outlived their parent"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Plain numbers travel as raw bytes; a type alias of one travels as postcard. Both
/// layouts must give the same answers, down to the bits of a float.
type Meters = f64;

#[parallel]
fn halve(x: f64) -> f64 {
    x / 2.0
}

#[parallel]
fn halve_alias(x: Meters) -> Meters {
    x / 2.0
}

mod qualified {
    // The qualified spelling of a primitive is what this test is about.
    #![allow(unused_qualifications)]
    use multiproc::prelude::*;

    #[parallel]
    pub fn negate_wide(x: core::primitive::i128) -> ::std::primitive::i128 {
        x.wrapping_neg()
    }
}
use qualified::negate_wide;

#[parallel]
fn rotate(x: [u16; 3]) -> [u16; 3] {
    [x[1], x[2], x[0]]
}

#[parallel]
fn byte_sum(x: [u8; 5]) -> u8 {
    x.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

#[test]
fn plain_numbers_and_arrays_round_trip_exactly() {
    let floats = [
        0.0,
        -0.0,
        1.5,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::INFINITY,
        3e-310,
    ];
    let raw = floats.par_map(halve).unwrap();
    let alias = floats.par_map(halve_alias).unwrap();
    for ((x, a), b) in floats.iter().zip(&raw).zip(&alias) {
        assert_eq!((x / 2.0).to_bits(), a.to_bits());
        assert_eq!(a.to_bits(), b.to_bits());
    }
    assert!([f64::NAN].par_map(halve).unwrap()[0].is_nan());

    let wide = [0, 1, -1, i128::MAX, i128::MIN];
    let expected: Vec<i128> = wide.iter().map(|x: &i128| x.wrapping_neg()).collect();
    assert_eq!(wide.par_map(negate_wide).unwrap(), expected);

    let arrays: Vec<[u16; 3]> = (0..10_000).map(|i| [i, i + 1, u16::MAX - i]).collect();
    let out = arrays.par_map(rotate).unwrap();
    assert!(
        arrays
            .iter()
            .zip(&out)
            .all(|(a, b)| *b == [a[1], a[2], a[0]])
    );

    // Odd sizes and alignment: 5-byte arguments, 1-byte results, through every entry point.
    let bytes: Vec<[u8; 5]> = (0..1000u32)
        .map(|i| [i as u8, 1, 2, 3, (i >> 8) as u8])
        .collect();
    let sums: Vec<u8> = bytes.iter().map(|b| byte_sum(*b)).collect();
    assert_eq!(bytes.par_map(byte_sum).unwrap(), sums);
    let pool = Pool::new(2).unwrap();
    let streamed: Vec<u8> = pool
        .imap(byte_sum, bytes.clone())
        .map(Result::unwrap)
        .collect();
    assert_eq!(streamed, sums);
    assert_eq!(pool.apply(byte_sum, bytes[7]).unwrap(), sums[7]);
    assert_eq!(
        pool.apply_async(negate_wide, i128::MIN + 1).get().unwrap(),
        i128::MAX
    );
    let child = Process::spawn(rotate, [1, 2, 3]).unwrap();
    assert_eq!(child.join().unwrap(), [2, 3, 1]);
}

/// `Vec`s of plain numbers travel as their length and their bytes; the same `Vec`s in a
/// tuple travel as postcard. Both must give the same answers.
#[parallel]
fn reverse_bytes(v: Vec<u8>) -> Vec<u8> {
    v.into_iter().rev().collect()
}

mod spelled_out {
    // The qualified spelling of `Vec` is what this function is about.
    #![allow(unused_qualifications)]
    use multiproc::prelude::*;

    #[parallel]
    pub fn scale(v: std::vec::Vec<f64>) -> Vec<f64> {
        v.iter().map(|x| x * 0.5).collect()
    }
}
use spelled_out::scale;

#[parallel]
fn scale_by(v: Vec<f64>, by: f64) -> Vec<f64> {
    v.iter().map(|x| x * by).collect()
}

#[parallel]
fn signed_pairs(n: u64) -> Vec<[i32; 2]> {
    (0..n as i32).map(|i| [i, -i]).collect()
}

#[test]
fn vecs_of_plain_numbers_round_trip_exactly() {
    let vecs: Vec<Vec<f64>> = (0..500)
        .map(|i| (0..i).map(|j| f64::from(j) * 1.25 - 3e-310).collect())
        .collect();
    let raw = vecs.par_map(scale).unwrap();
    let tupled: Vec<(Vec<f64>, f64)> = vecs.iter().map(|v| (v.clone(), 0.5)).collect();
    let postcard = tupled.par_map(scale_by).unwrap();
    for ((v, a), b) in vecs.iter().zip(&raw).zip(&postcard) {
        let expected: Vec<u64> = v.iter().map(|x| (x * 0.5).to_bits()).collect();
        assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), expected);
        assert_eq!(b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), expected);
    }

    // Large ones go through shared memory, small ones in line, empty ones too.
    let pool = Pool::builder()
        .workers(2)
        .shm_threshold(4096)
        .build()
        .unwrap();
    for len in [0usize, 1, 4095, 4096, 1 << 20] {
        let v: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let expected: Vec<u8> = v.iter().rev().copied().collect();
        assert_eq!(
            pool.apply(reverse_bytes, v.clone()).unwrap(),
            expected,
            "{len}"
        );
        assert_eq!(
            pool.apply_async(reverse_bytes, v.clone()).get().unwrap(),
            expected
        );
        let many = vec![v; 3];
        for out in pool.map(reverse_bytes, &many).unwrap() {
            assert_eq!(out, expected);
        }
        let n = len as u64;
        let expected: Vec<[i32; 2]> = (0..len as i32).map(|i| [i, -i]).collect();
        assert_eq!(pool.apply(signed_pairs, n).unwrap(), expected);
        let streamed: Vec<_> = pool
            .imap(signed_pairs, vec![n, n])
            .map(Result::unwrap)
            .collect();
        assert_eq!(streamed, [expected.clone(), expected]);
    }
    let child = Process::spawn(reverse_bytes, vec![1, 2, 3]).unwrap();
    assert_eq!(child.join().unwrap(), [3, 2, 1]);
}

/// Several plain-number arguments, and tuples of plain numbers, travel as their fields'
/// bytes; with one field that is not a plain number, as postcard.
#[parallel]
fn mix(a: u8, b: f64, c: [i16; 2]) -> (f64, u8, i64) {
    (
        b * 2.0,
        a.wrapping_add(1),
        i64::from(c[0]) * i64::from(c[1]),
    )
}

#[parallel]
fn mix_postcard(a: u8, b: f64, c: [i16; 2], _tag: bool) -> (f64, u8, i64) {
    (
        b * 2.0,
        a.wrapping_add(1),
        i64::from(c[0]) * i64::from(c[1]),
    )
}

#[parallel]
fn swap(pair: (u32, i8)) -> (i8, u32) {
    (pair.1, pair.0)
}

#[test]
fn tuples_of_plain_numbers_round_trip_exactly() {
    let args: Vec<(u8, f64, [i16; 2])> = (0..20_000u32)
        .map(|i| (i as u8, f64::from(i) * -0.75, [i as i16, -(i as i16)]))
        .collect();
    let expected: Vec<(f64, u8, i64)> = args.iter().map(|&(a, b, c)| mix(a, b, c)).collect();
    assert_eq!(args.par_map(mix).unwrap(), expected);
    let tagged: Vec<_> = args.iter().map(|&(a, b, c)| (a, b, c, true)).collect();
    assert_eq!(tagged.par_map(mix_postcard).unwrap(), expected);

    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(mix, args[7]).unwrap(), expected[7]);
    assert_eq!(pool.apply_async(mix, args[9]).get().unwrap(), expected[9]);
    let streamed: Vec<_> = pool
        .imap(mix, args[..100].to_vec())
        .map(Result::unwrap)
        .collect();
    assert_eq!(streamed, expected[..100]);
    assert_eq!(
        pool.apply(swap, (u32::MAX, -128)).unwrap(),
        (-128, u32::MAX)
    );
    let child = Process::spawn(swap, (5, 6)).unwrap();
    assert_eq!(child.join().unwrap(), (6, 5));
}

/// Words in a line, read in place in the worker: no `String` is made for it there.
#[parallel]
fn count_words(line: &str) -> usize {
    line.split_whitespace().count()
}

/// The sum of some bytes, read in place in the worker.
#[parallel]
fn sum_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// Counts the words of each line of a block, with a nested `par_map` (which runs inline
/// in the worker).
#[parallel]
fn words_in_block(block: String) -> Vec<usize> {
    let lines: Vec<String> = block.lines().map(str::to_owned).collect();
    lines.par_map(count_words).unwrap()
}

#[test]
fn a_lone_str_or_byte_slice_argument_is_borrowed_and_every_api_takes_it() {
    let lines: Vec<String> = (0..5_000)
        .map(|i| "word ".repeat(i % 17) + "é end")
        .collect();
    let expected: Vec<usize> = lines.iter().map(|l| count_words(l)).collect();
    assert_eq!(expected[3], 5);
    assert_eq!(lines.par_map(count_words).unwrap(), expected);
    let blobs: Vec<Vec<u8>> = (0..300u32)
        .map(|i| (0..i * 7).map(|b| b as u8).collect())
        .collect();
    let sums: Vec<u64> = blobs.iter().map(|b| sum_bytes(b)).collect();
    assert_eq!(blobs.par_map(sum_bytes).unwrap(), sums);

    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(count_words, "one two three".into()).unwrap(), 3);
    assert_eq!(pool.apply(sum_bytes, vec![200, 100]).unwrap(), 300);
    assert_eq!(pool.apply(count_words, String::new()).unwrap(), 0);
    assert_eq!(pool.apply_async(sum_bytes, Vec::new()).get().unwrap(), 0);
    let streamed: Vec<usize> = pool
        .imap(count_words, lines[..200].to_vec())
        .map(Result::unwrap)
        .collect();
    assert_eq!(streamed, expected[..200]);
    assert_eq!(
        Process::spawn(count_words, "a b".into())
            .unwrap()
            .join()
            .unwrap(),
        2
    );
    // Inside a worker, a nested map runs inline and borrows all the same.
    let blocks = [lines[..40].join("\n"), lines[40..90].join("\n")];
    let per_block = blocks.par_map(words_in_block).unwrap();
    assert_eq!(per_block.concat(), expected[..90]);
}
