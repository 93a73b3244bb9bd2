//! Ctrl-C: SIGINT sent to the process group of a real child program, as a terminal
//! sends it, with each way the parent may take it. Afterwards no worker runs, none is a
//! zombie of a live parent, and nothing is left in `/dev/shm`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader, Lines};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multiproc::Interrupt;
use multiproc::prelude::*;

/// Prints that it started, then waits for the `go` file in `dir` (a minute at most).
/// Its argument is large enough to travel through a shared-memory segment.
#[parallel]
fn wait_for_go(dir: String, ballast: Vec<u8>) -> usize {
    println!("STARTED {}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new(&dir).join("go").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    ballast.len()
}

/// A child program of this test binary in a process group of its own, as a shell
/// starts a job, with its output read line by line.
struct Job {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    dir: PathBuf,
    workers: Vec<u32>,
}

impl Job {
    fn start(case: &str) -> Job {
        let dir = std::env::temp_dir().join(format!("multiproc-int-{case}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["child_case", "--exact", "--include-ignored", "--nocapture"])
            .env("MULTIPROC_TEST_CHILD", "1")
            .env("CASE", case)
            .env("GO_DIR", &dir)
            .env("MULTIPROC_SHM", "posix")
            .stdout(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Job {
            child,
            lines,
            dir,
            workers: Vec::new(),
        }
    }

    /// Reads lines until one starts with `prefix` (a minute at most); returns the rest
    /// of it. `STARTED <pid>` lines record the workers on the way.
    fn until(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "no {prefix:?} line within a minute"
            );
            let line = self
                .lines
                .next()
                .unwrap_or_else(|| panic!("no {prefix:?} line: the child ended"))
                .unwrap();
            if let Some(pid) = line.strip_prefix("STARTED ") {
                self.workers.push(pid.parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    /// Reads lines until one of each of `prefixes` came, in any order; returns the rest
    /// of each, in the order of `prefixes`.
    fn each(&mut self, prefixes: &[&str]) -> Vec<String> {
        let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
        while found.iter().any(Option::is_none) {
            let line = self.until("");
            for (i, prefix) in prefixes.iter().enumerate() {
                if let Some(rest) = line.strip_prefix(prefix) {
                    found[i] = Some(rest.trim().to_owned());
                }
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Waits until `n` tasks have started.
    fn started(&mut self, n: usize) {
        while self.workers.len() < n {
            self.until("STARTED ");
        }
    }

    /// Ctrl-C: SIGINT to the whole process group.
    fn ctrl_c(&self) {
        let group = -(self.child.id() as i32);
        // SAFETY: a signal to the process group of the child this test started.
        let sent = unsafe { libc::kill(group, libc::SIGINT) };
        assert_eq!(sent, 0);
    }

    fn go(&self) {
        std::fs::write(self.dir.join("go"), "").unwrap();
    }

    /// Waits for the child to end; checks that none of its workers runs and that none
    /// of them, nor the child, left a segment in `/dev/shm`.
    fn end(mut self) -> std::process::ExitStatus {
        let status = common::within(Duration::from_secs(60), move || {
            let status = self.child.wait().unwrap();
            (status, self)
        });
        let (status, job) = status;
        common::wait_until_gone(&job.workers);
        let mut pids = job.workers.clone();
        pids.push(job.child.id());
        let leftovers: Vec<String> = std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| pids.iter().any(|p| n.starts_with(&format!("mproc{p:x}-"))))
            .collect();
        assert!(leftovers.is_empty(), "left in /dev/shm: {leftovers:?}");
        let _ = std::fs::remove_dir_all(&job.dir);
        status
    }
}

#[test]
fn a_parent_that_keeps_the_default_dies_of_ctrl_c_and_its_workers_with_it() {
    let mut job = Job::start("default");
    job.started(2);
    job.ctrl_c();
    let status = job.end();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
}

#[test]
fn a_parent_with_a_handler_may_terminate_its_pool_and_no_worker_died() {
    let mut job = Job::start("terminate");
    job.started(2);
    job.ctrl_c();
    assert_eq!(job.until("RESULT"), "Closed");
    assert_eq!(job.until("DIED"), "0");
    assert_eq!(job.until("CHILDREN"), "0");
    assert!(job.end().success());
}

#[test]
fn a_parent_with_a_handler_may_let_the_work_go_on() {
    let mut job = Job::start("go-on");
    job.started(2);
    job.ctrl_c();
    job.until("SIGINT SEEN");
    job.go();
    assert_eq!(job.until("RESULT"), "Ok");
    assert_eq!(job.until("DIED"), "0");
    assert!(job.end().success());
}

#[test]
fn with_interrupt_cancel_every_call_returns_interrupted_and_a_second_ctrl_c_exits() {
    let mut job = Job::start("cancel");
    job.started(3);
    job.ctrl_c();
    let kinds = job.each(&["MAP ", "IMAP ", "APPLY "]);
    assert_eq!(kinds, ["Interrupted"; 3]);
    assert_eq!(job.until("AFTER"), "Interrupted");
    assert_eq!(job.until("DIED"), "0");
    assert_eq!(job.until("CHILDREN"), "0");
    job.ctrl_c();
    let status = job.end();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
}

/// The child processes of this process still in the process table, zombies included.
fn children_left() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .is_some_and(|ppid| ppid == me)
        })
        .count()
}

fn arg() -> (String, Vec<u8>) {
    (std::env::var("GO_DIR").unwrap(), vec![7u8; 1 << 20])
}

fn kind_of<T>(r: &multiproc::Result<T>) -> String {
    match r {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

/// Child half: what `CASE` says.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_case() {
    if !common::is_child() {
        return;
    }
    // Whoever started the tests may have left SIGINT ignored (a shell does for its
    // background jobs), and this process inherited that; each case is about a program
    // that starts with the default.
    // SAFETY: setting a signal's disposition has no preconditions; this fresh process
    // has no handler of its own yet.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let case = std::env::var("CASE").unwrap();
    match case.as_str() {
        "default" => {
            let pool = Pool::new(2).unwrap();
            let _ = pool.map(wait_for_go, &[arg(), arg()]);
            unreachable!("Ctrl-C ends this process");
        }
        "terminate" | "go-on" => {
            let pool = Arc::new(Pool::new(2).unwrap());
            let handler_pool = Arc::clone(&pool);
            let terminate = case == "terminate";
            ctrlc::set_handler(move || {
                println!("SIGINT SEEN");
                if terminate {
                    handler_pool.terminate();
                }
            })
            .unwrap();
            let r = pool.map(wait_for_go, &[arg(), arg()]);
            println!("RESULT {}", kind_of(&r));
            println!("DIED {}", pool.stats().workers_died);
            pool.terminate();
            println!("CHILDREN {}", children_left());
        }
        "cancel" => {
            let pool = Pool::builder()
                .workers(3)
                .interrupt(Interrupt::Cancel)
                .build()
                .unwrap();
            std::thread::scope(|s| {
                s.spawn(|| println!("MAP {}", kind_of(&pool.map(wait_for_go, &[arg()]))));
                s.spawn(|| {
                    let first = pool.imap(wait_for_go, [arg()]).next().unwrap();
                    println!("IMAP {}", kind_of(&first));
                });
                s.spawn(|| println!("APPLY {}", kind_of(&pool.apply(wait_for_go, arg()))));
            });
            println!("AFTER {}", kind_of(&pool.apply(wait_for_go, arg())));
            println!("DIED {}", pool.stats().workers_died);
            drop(pool);
            println!("CHILDREN {}", children_left());
            // Waits for the second Ctrl-C, which ends the process.
            std::thread::sleep(Duration::from_secs(120));
            unreachable!("the second Ctrl-C ends this process");
        }
        other => panic!("unknown case {other}"),
    }
}
