//! The runtime's layers point one way: a top-level module uses only the modules listed
//! before it in `LAYERS` (the order of the crate docs' "How it is built"), never one
//! after it. A module and its
//! own children don't count. Tests (`tests.rs`, `props.rs`, `#[cfg(test)] mod`) may
//! reach anywhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom up. `queue` and `sync` sit beside `api`: none uses another.
const LAYERS: &[&str] = &[
    "error", "sys", "codec", "task", "wire", "shm", "direct", "worker", "engine", "cluster", "api",
    "queue", "sync",
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of a source file without its test module and its comments.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules that `code` names as `crate::<module>`.
fn uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        found.insert(name);
    }
    found
}

#[test]
fn every_dependency_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "lib.rs" || name == "tests.rs" || name == "props.rs" {
            continue;
        }
        let first = rel.components().next().expect("a path");
        let top = first
            .as_os_str()
            .to_str()
            .expect("UTF-8")
            .trim_end_matches(".rs");
        let level = LAYERS
            .iter()
            .position(|l| *l == top)
            .unwrap_or_else(|| panic!("{top} is not in LAYERS: add it where it belongs"));
        let text = std::fs::read_to_string(file).expect("read a source");
        for used in uses(&code_of(&text)) {
            // Beside `api`: neither `queue` nor `sync` uses it, nor each other.
            let beside = matches!(
                (top, used.as_str()),
                ("queue" | "sync", "api") | ("sync", "queue")
            );
            if let Some(at) = LAYERS.iter().position(|l| *l == used)
                && (at > level || beside)
            {
                wrong.push(format!("{} uses {used}", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "dependencies that point up: {wrong:#?}");
}

#[test]
fn every_top_level_module_is_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("read lib.rs");
    let mut declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut layers = LAYERS.to_vec();
    declared.sort_unstable();
    layers.sort_unstable();
    assert_eq!(
        declared, layers,
        "every module of lib.rs is a layer, and no other"
    );
}
