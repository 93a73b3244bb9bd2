//! Per-worker state: an initializer builds a "model" once in every worker process, and
//! each task reads it from a `thread_local!`; an exit task reports what the worker did.
//! Workers are recycled after 40 items, and each new one builds its model again.
//!
//! Run it with `cargo run --release --example initializer`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use multiproc::prelude::*;

/// Word scores: expensive to build, so built once per worker, not once per item.
struct Model {
    scores: HashMap<String, u64>,
}

impl Model {
    fn build(vocabulary: &str) -> Model {
        let scores = vocabulary
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| (w.to_owned(), i as u64 + 1))
            .collect();
        Model { scores }
    }

    fn score(&self, sentence: &str) -> u64 {
        sentence
            .split_whitespace()
            .map(|w| self.scores.get(w).copied().unwrap_or(0))
            .sum()
    }
}

thread_local! {
    static MODEL: RefCell<Option<Model>> = const { RefCell::new(None) };
    static SCORED: Cell<u64> = const { Cell::new(0) };
}

/// Runs once in every worker, before its first task, on the thread its tasks run on.
#[parallel]
fn load(vocabulary: String) {
    MODEL.with(|m| *m.borrow_mut() = Some(Model::build(&vocabulary)));
}

#[parallel]
fn score(sentence: String) -> u64 {
    SCORED.with(|n| n.set(n.get() + 1));
    MODEL.with(|m| {
        m.borrow()
            .as_ref()
            .map_or(0, |model| model.score(&sentence))
    })
}

/// Runs once in every worker that leaves normally (recycled, or the pool closed).
#[parallel]
fn report(prefix: String) {
    eprintln!(
        "{prefix} {} scored {} sentences",
        std::process::id(),
        SCORED.with(Cell::get)
    );
}

fn main() -> multiproc::Result<()> {
    let vocabulary = "the quick brown fox jumps over lazy dog".to_string();
    let pool = Pool::builder()
        .workers(2)
        .max_tasks_per_worker(40)
        .initializer(load, vocabulary)
        .on_worker_exit(report, "worker".to_string())
        .build()?;
    let sentences: Vec<String> = (0..100)
        .map(|i| match i % 3 {
            0 => "the quick brown fox".to_string(),
            1 => "jumps over the lazy dog".to_string(),
            _ => "an unknown sentence".to_string(),
        })
        .collect();
    let scores = pool.map(score, &sentences)?;
    println!("first scores: {:?}", &scores[..6]);
    println!("total score: {}", scores.iter().sum::<u64>());
    Ok(())
}
