//! The peers benchmark's report: one table of figures and ratios, and the comparison
//! with the last recorded figures.

use std::collections::BTreeMap;

/// One cell of the table: a figure, not applicable, or why it is missing.
pub enum Cell {
    /// The figure.
    Value(f64),
    /// The peer has nothing to compare (`-`).
    NotApplicable,
    /// The peer failed or was skipped, and why.
    Missing(String),
}

/// One figure: multiproc's value and the peers'.
pub struct Row {
    /// What the figure is, as printed.
    pub name: &'static str,
    /// Key in the baseline file.
    pub key: &'static str,
    /// The unit, as printed.
    pub unit: &'static str,
    /// Times are better lower; throughputs and speedups higher.
    pub lower_is_better: bool,
    /// multiproc's value.
    pub ours: f64,
    /// The peers' values, in the order of `PEERS`.
    pub peers: [Cell; 4],
}

/// The peers, in the order of a row's cells.
pub const PEERS: [&str; 4] = ["Python Pool", "procspawn", "rayon/threads", "sequential"];

/// A figure from a Python peer script's `key=value` output.
pub fn from_python(text: &Result<String, String>, key: &str) -> Cell {
    match text {
        Ok(t) => crate::common::field(t, key).map_or_else(
            || Cell::Missing(format!("no {key} in: {}", t.trim())),
            Cell::Value,
        ),
        Err(e) => Cell::Missing(e.clone()),
    }
}

fn fmt(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// How many times better multiproc is than `peer` on this row (>1: multiproc better).
fn advantage(row: &Row, peer: f64) -> f64 {
    if row.lower_is_better {
        peer / row.ours
    } else {
        row.ours / peer
    }
}

pub fn print_table(rows: &[Row]) {
    println!(
        "{:<32} {:>8} {:>10} {:>19} {:>19} {:>19} {:>19}",
        "figure", "unit", "multiproc", PEERS[0], PEERS[1], PEERS[2], PEERS[3]
    );
    for row in rows {
        let cells: Vec<String> = row
            .peers
            .iter()
            .map(|c| match c {
                Cell::Value(v) => format!("{} ({}x)", fmt(*v), fmt(advantage(row, *v))),
                Cell::NotApplicable => "-".to_owned(),
                Cell::Missing(why) => why.chars().take(19).collect(),
            })
            .collect();
        println!(
            "{:<32} {:>8} {:>10} {:>19} {:>19} {:>19} {:>19}",
            row.name,
            row.unit,
            fmt(row.ours),
            cells[0],
            cells[1],
            cells[2],
            cells[3]
        );
    }
    println!(
        "(x) = how many times better multiproc is than that peer on that figure \
         (>1: multiproc wins)"
    );
    for row in rows {
        for (peer, cell) in PEERS.iter().zip(&row.peers) {
            if let Cell::Missing(why) = cell {
                println!("note: {} / {peer}: {why}", row.name.trim());
            }
        }
    }
}

/// Warns about every figure worse than the one recorded in `benches/<file>` by more than
/// 20%; records this run there instead when `BENCH_RECORD=1`.
pub fn compare_with_baseline(rows: &[Row], file: &str) {
    let path = format!("{}/benches/{file}", env!("CARGO_MANIFEST_DIR"));
    let path = path.as_str();
    if std::env::var("BENCH_RECORD").is_ok_and(|v| v == "1") {
        let text: String = rows
            .iter()
            .map(|r| format!("{} {:.4}\n", r.key, r.ours))
            .collect();
        match std::fs::write(path, text) {
            Ok(()) => println!("recorded this run as the baseline in {path}"),
            Err(e) => println!("cannot record the baseline in {path}: {e}"),
        }
        return;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        println!("no baseline at {path}; BENCH_RECORD=1 records one");
        return;
    };
    let recorded: BTreeMap<&str, f64> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect();
    let mut warned = false;
    for row in rows {
        let Some(&before) = recorded.get(row.key) else {
            continue;
        };
        let worse = if row.lower_is_better {
            row.ours / before
        } else {
            before / row.ours
        };
        if worse > 1.2 {
            warned = true;
            println!(
                "WARNING: {} regressed: {} {} now, {} {} recorded ({:.0}% worse)",
                row.name.trim(),
                fmt(row.ours),
                row.unit,
                fmt(before),
                row.unit,
                (worse - 1.0) * 100.0
            );
        }
    }
    if !warned {
        println!("no figure is more than 20% worse than the recorded baseline");
    }
}
