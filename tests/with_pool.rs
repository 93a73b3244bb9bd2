//! `with_pool!`: the body runs inline, `par_map` inside it runs on its pool (also from
//! nested calls), blocks nest, and the pool is closed and joined on every way out.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;

use multiproc::prelude::*;
use multiproc::{ErrorKind, PoolBuilder};

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

#[parallel]
fn whoami(_x: u64) -> u32 {
    std::process::id()
}

#[parallel]
fn fails(_x: u64) -> u64 {
    panic!("no")
}

fn pids_of_current_pool() -> BTreeSet<u32> {
    let data: Vec<u64> = (0..4000).collect();
    data.par_map(whoami).unwrap().into_iter().collect()
}

#[test]
fn the_three_forms_work() {
    let data: Vec<u64> = (0..100).collect();
    let a = with_pool!(2, |pool| {
        let r = pool.apply_async(t1, 5);
        let all = data.par_map(t1).unwrap();
        (r.get().unwrap(), all.len())
    });
    assert_eq!(a, (50, 100));
    let b = with_pool!(Pool::builder().workers(2).chunk_size(1), |pool: &Pool| {
        pool.map(t1, &data).unwrap()
    });
    assert_eq!(b[99], 990);
    let c = with_pool!(3, { data.par_map(t1).unwrap() });
    assert_eq!(c, b);
}

#[test]
fn par_map_inside_runs_on_the_block_pool_even_in_nested_calls() {
    with_pool!(2, |pool| {
        // The pool's own workers (a map of quick items may all go to one of them).
        let mine: BTreeSet<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
        assert_eq!(mine.len(), 2, "{mine:?}");
        let from_nested_call = pids_of_current_pool();
        assert!(!from_nested_call.is_empty());
        assert!(
            from_nested_call.is_subset(&mine),
            "{from_nested_call:?} vs {mine:?}"
        );
    });
}

#[test]
fn blocks_nest_and_restore_the_outer_pool() {
    with_pool!(1, |outer| {
        let outer_pids: BTreeSet<u32> = outer.map(whoami, &[0]).unwrap().into_iter().collect();
        with_pool!(1, {
            let inner = pids_of_current_pool();
            assert!(
                inner.is_disjoint(&outer_pids),
                "the inner block used the outer pool"
            );
        });
        assert_eq!(pids_of_current_pool(), outer_pids);
    });
}

fn leaves_early_with_question_mark(pids: &mut Vec<u32>) -> multiproc::Result<u64> {
    with_pool!(2, |pool| {
        pids.extend(pool.map(whoami, &[0, 1, 2, 3])?);
        let data = [1u64, 2];
        data.par_map(fails)?; // returns from this function
        Ok(0)
    })
}

fn returns_from_inside(pids: &mut Vec<u32>) -> u64 {
    with_pool!(PoolBuilder::default().workers(1), |pool| {
        pids.extend(pool.map(whoami, &[0]).unwrap());
        if !pids.is_empty() {
            return 7; // leaves the function, not just the block
        }
        8
    })
}

fn wait_gone(pids: &[u32]) {
    assert!(!pids.is_empty());
    // `with_pool!` joins before the block is left: the workers must already be gone.
    assert!(
        pids.iter().all(|&p| !common::process_exists(p)),
        "workers {pids:?} outlived their with_pool! block"
    );
}

#[test]
fn question_mark_and_return_leave_the_block_and_join_the_pool() {
    let mut pids = Vec::new();
    let e = leaves_early_with_question_mark(&mut pids).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked);
    wait_gone(&pids);
    let mut pids = Vec::new();
    assert_eq!(returns_from_inside(&mut pids), 7);
    wait_gone(&pids);
}

#[test]
fn a_panic_in_the_block_still_joins_the_pool() {
    let mut pids = Vec::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_pool!(2, |pool| {
            pids.extend(pool.map(whoami, &[0, 1, 2, 3]).unwrap());
            panic!("boom in the block");
        })
    }));
    assert!(caught.is_err());
    wait_gone(&pids);
}

#[test]
#[should_panic(expected = "with_pool!: the pool could not be started")]
fn a_pool_that_cannot_start_panics_saying_why() {
    let workers = 0usize; // not a literal: only known at run time
    with_pool!(workers, {});
}

/// Child half of `no_worker_is_left_behind`.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_uses_blocks_then_counts_children() {
    if !common::is_child() {
        return;
    }
    let mut pids = Vec::new();
    let _ = leaves_early_with_question_mark(&mut pids);
    let _ = std::panic::catch_unwind(|| with_pool!(2, { panic!("boom") }));
    let children = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).unwrap_or_default())
        .collect::<String>();
    println!("\nCHILDREN=[{}]", children.trim());
}

#[test]
fn no_worker_is_left_behind() {
    let out = common::run_child_test("child_uses_blocks_then_counts_children", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CHILDREN=[]"), "{stdout}");
}
