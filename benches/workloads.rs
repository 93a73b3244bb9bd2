//! Real work, as a user would write it, in one run: multiproc's `Pool::map`, rayon with
//! as many threads (the floor: no processes, no copies), plain sequential code, and
//! Python's `multiprocessing.Pool` doing the same work with `gzip`, `json` and `hashlib`
//! (`benches/peers/workloads.py`, on the very same data, which this bench writes first).
//!
//! - **gzip:** 64 buffers of 1 MiB of text, each compressed (flate2, level 6); the
//!   compressed bytes come back.
//! - **JSON lines:** 200,000 lines parsed (serde_json) into a struct of `String`s, a
//!   `Vec<String>` and numbers; the structs come back.
//! - **Hashing files:** 128 files of 1 MiB, each read and hashed (SHA-256); the digests
//!   come back.
//!
//! For each, it prints the times and ratios, then multiproc's speedup over sequential
//! code and its cost per item beside rayon's, and the cost of an in-process postcard
//! round trip of the same argument and result (what the serde path cannot go under).
//! The multiproc times are compared with `benches/workloads-baseline.txt`; one worse by
//! more than 20% prints a warning (`BENCH_RECORD=1` records a new baseline).
//!
//! Run: `cargo bench --bench workloads`. `WORKLOADS_ONLY=json` (or `gzip`, `hash`) runs
//! one workload alone, without Python, for profiling.

#[path = "common/mod.rs"]
mod common;
#[path = "report/mod.rs"]
mod report;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{median, python};
use multiproc::prelude::*;
use rayon::prelude::*;
use report::{Cell, Row, compare_with_baseline, from_python, print_table};
use serde::{Deserialize, Serialize};
use sha2::Digest;

const WORKERS: usize = 2;
/// Timed runs of each side; the median is shown.
const RUNS: usize = 5;

/// A JSON line, as a user would declare it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u64,
    name: String,
    email: String,
    city: String,
    tags: Vec<String>,
    score: f64,
    active: bool,
}

fn gzip_bytes(buf: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(buf).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

fn parse_line(line: &str) -> Record {
    serde_json::from_str(line).expect("a valid line")
}

fn hash_path(path: &Path) -> [u8; 32] {
    let mut file = std::fs::File::open(path).expect("a generated file");
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).expect("reading a generated file");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().into()
}

#[parallel]
fn gzip(buf: Vec<u8>) -> Vec<u8> {
    gzip_bytes(&buf)
}

/// Borrows its line: the worker reads it in place, in the chunk.
#[parallel]
fn parse(line: &str) -> Record {
    parse_line(line)
}

#[parallel]
fn hash_file(path: PathBuf) -> [u8; 32] {
    hash_path(&path)
}

/// A reproducible stream of numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }
}

const WORDS: [&str; 32] = [
    "process", "worker", "memory", "shared", "queue", "pool", "task", "result", "rank", "cluster",
    "signal", "timeout", "segment", "chunk", "frame", "thread", "the", "of", "and", "a", "to",
    "in", "is", "it", "that", "for", "on", "with", "as", "was", "by", "at",
];

/// `len` bytes of text: lines of words.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        for _ in 0..(8 + rng.next() % 8) {
            out.extend_from_slice(rng.pick(&WORDS).as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

fn record(rng: &mut Rng, id: u64) -> Record {
    let name = format!("{} {}", rng.pick(&WORDS), rng.pick(&WORDS));
    Record {
        id,
        email: format!("{}.{id}@example.org", rng.pick(&WORDS)),
        name,
        city: rng.pick(&WORDS).to_uppercase(),
        tags: (0..rng.next() % 6)
            .map(|_| rng.pick(&WORDS).to_owned())
            .collect(),
        score: (rng.next() % 100_000) as f64 / 100.0,
        active: rng.next().is_multiple_of(2),
    }
}

/// The data, made once and written under `dir` for the Python side.
struct Data {
    buffers: Vec<Vec<u8>>,
    lines: Vec<String>,
    files: Vec<PathBuf>,
}

fn make_data(dir: &Path) -> Data {
    let mut rng = Rng(2026);
    let buffers: Vec<Vec<u8>> = (0..64).map(|_| text(&mut rng, 1 << 20)).collect();
    let mut all = Vec::with_capacity(64 << 20);
    buffers.iter().for_each(|b| all.extend_from_slice(b));
    std::fs::write(dir.join("buffers.bin"), &all).expect("writing the buffers");
    let lines: Vec<String> = (0..200_000)
        .map(|i| serde_json::to_string(&record(&mut rng, i)).expect("a record"))
        .collect();
    std::fs::write(dir.join("lines.jsonl"), lines.join("\n")).expect("writing the lines");
    let files: Vec<PathBuf> = (0..128)
        .map(|i| {
            let path = dir.join(format!("file{i:03}.bin"));
            let mut bytes = text(&mut rng, 1 << 20);
            bytes
                .iter_mut()
                .step_by(7)
                .for_each(|b| *b ^= rng.next() as u8);
            std::fs::write(&path, bytes).expect("writing a file");
            path
        })
        .collect();
    Data {
        buffers,
        lines,
        files,
    }
}

/// The median seconds of [`RUNS`] calls of `f`, after one untimed call, and its last
/// result.
fn timed<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut last = f();
    let secs = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                last = std::hint::black_box(f());
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    (secs, last)
}

/// Seconds per item of an in-process postcard round trip of every argument and result:
/// encode and decode each, as the serde path does once each.
fn postcard_round_trip<A, R>(args: &[A], results: &[R]) -> f64
where
    A: Serialize + serde::de::DeserializeOwned,
    R: Serialize + serde::de::DeserializeOwned,
{
    let (secs, ()) = timed(|| {
        for (a, r) in args.iter().zip(results) {
            let bytes = postcard::to_stdvec(a).expect("encode");
            std::hint::black_box(postcard::from_bytes::<A>(&bytes).expect("decode"));
            let bytes = postcard::to_stdvec(r).expect("encode");
            std::hint::black_box(postcard::from_bytes::<R>(&bytes).expect("decode"));
        }
    });
    secs / args.len() as f64
}

/// One workload's figures, in seconds.
struct Figures {
    name: &'static str,
    items: usize,
    ours: f64,
    rayon: f64,
    sequential: f64,
    python: Cell,
    postcard: f64,
}

/// What every workload runs against: the pool, rayon's threads, Python's figures, and
/// which workloads `WORKLOADS_ONLY` asks for; with the figures so far, by baseline key.
struct Bench<'a> {
    pool: &'a Pool,
    threads: &'a rayon::ThreadPool,
    python: &'a Result<String, String>,
    only: Option<&'a str>,
    done: Vec<(&'static str, Figures)>,
}

impl Bench<'_> {
    /// Runs workload `key` (`gzip_ms`: its Python figure is `gzip_s=`) as multiproc's
    /// `task`, rayon's and sequential code's `direct`, over `items`, unless left out.
    fn run<A, R, F>(
        &mut self,
        key: &'static str,
        name: &'static str,
        items: &[A],
        task: Task<A, R, F>,
        direct: impl Fn(&A) -> R + Sync,
    ) where
        F: Copy,
        A: Serialize + serde::de::DeserializeOwned + Sync,
        R: Serialize + serde::de::DeserializeOwned + Send + PartialEq + std::fmt::Debug + 'static,
    {
        if self.only.is_some_and(|o| !key.starts_with(o)) {
            return;
        }
        let (sequential, expected) = timed(|| items.iter().map(&direct).collect::<Vec<R>>());
        let (rayon, by_threads) = timed(|| {
            self.threads
                .install(|| items.par_iter().map(&direct).collect::<Vec<R>>())
        });
        let (ours, by_pool) = timed(|| self.pool.map(task, items).expect("map"));
        assert!(
            by_threads == expected && by_pool == expected,
            "{name}: results differ"
        );
        let python_key = format!("{}_s=", key.trim_end_matches("_ms"));
        self.done.push((
            key,
            Figures {
                name,
                items: items.len(),
                ours,
                rayon,
                sequential,
                python: from_python(self.python, &python_key),
                postcard: postcard_round_trip(items, &expected),
            },
        ));
    }
}

fn main() -> multiproc::Result<()> {
    let dir = std::env::temp_dir().join(format!("multiproc-workloads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a data directory");
    let data = make_data(&dir);
    let only = std::env::var("WORKLOADS_ONLY").ok();
    let py = match &only {
        None => python(
            "workloads.py",
            &[WORKERS.to_string(), dir.display().to_string()],
        ),
        Some(_) => Err("skipped (WORKLOADS_ONLY)".to_owned()),
    };
    let pool = Pool::new(WORKERS)?;
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("a rayon pool");
    let mut bench = Bench {
        pool: &pool,
        threads: &threads,
        python: &py,
        only: only.as_deref(),
        done: Vec::new(),
    };
    bench.run(
        "gzip_ms",
        "gzip, 64 x 1 MiB of text",
        &data.buffers,
        gzip,
        |b| gzip_bytes(b),
    );
    bench.run(
        "json_ms",
        "JSON lines into structs, 200k",
        &data.lines,
        parse,
        |l| parse_line(l),
    );
    bench.run(
        "hash_ms",
        "hashing files, 128 x 1 MiB",
        &data.files,
        hash_file,
        |p| hash_path(p),
    );
    let all = bench.done;
    drop(pool);
    let _ = std::fs::remove_dir_all(&dir);

    println!("{WORKERS} workers; times in ms, median of {RUNS} runs, all in one run");
    let rows: Vec<Row> = all
        .iter()
        .map(|&(key, ref f)| Row {
            name: f.name,
            key,
            unit: "ms",
            lower_is_better: true,
            ours: f.ours * 1e3,
            peers: [
                match &f.python {
                    Cell::Value(s) => Cell::Value(s * 1e3),
                    Cell::NotApplicable => Cell::NotApplicable,
                    Cell::Missing(why) => Cell::Missing(why.clone()),
                },
                Cell::NotApplicable,
                Cell::Value(f.rayon * 1e3),
                Cell::Value(f.sequential * 1e3),
            ],
        })
        .collect();
    print_table(&rows);
    println!();
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>14} {:>14} {:>14}",
        "workload",
        "speedup",
        "rayon's",
        "/ rayon",
        "ours - seq/2",
        "rayon - seq/2",
        "postcard trip"
    );
    for (_, f) in &all {
        let per_item_us = |secs: f64| (secs - f.sequential / WORKERS as f64) * 1e6 / f.items as f64;
        println!(
            "{:<32} {:>9.2}x {:>9.2}x {:>9.2}x {:>11.2} µs {:>11.2} µs {:>11.2} µs",
            f.name,
            f.sequential / f.ours,
            f.sequential / f.rayon,
            f.ours / f.rayon,
            per_item_us(f.ours),
            per_item_us(f.rayon),
            f.postcard * 1e6
        );
    }
    println!(
        "(speedup: over sequential code; `ours - seq/2`: wall time per item beyond a \
         perfect split of the sequential time over {WORKERS}; postcard trip: encoding and \
         decoding the argument and the result once each, in one process)"
    );
    if only.is_none() {
        compare_with_baseline(&rows, "workloads-baseline.txt");
    }
    Ok(())
}
