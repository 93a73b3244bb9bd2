//! Helpers shared by the benchmarks (each includes this file as a module).
#![allow(dead_code)] // each benchmark uses some of them

use std::process::Command;

/// The median of `xs` (the upper one for an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs the peer script `benches/peers/<script>` with `python3` and returns what it
/// printed, or a note saying why it was skipped.
pub fn python(script: &str, args: &[String]) -> Result<String, String> {
    let path = format!("{}/benches/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .map_err(|e| format!("skipped, python3 is not available ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "skipped, the script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number after `key` (e.g. `"big_ms="`) in a script's output.
pub fn field(text: &str, key: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key))?
        .parse()
        .ok()
}

/// Peak resident set (`VmHWM`, kB) of process `pid` (`"self"` for this one).
pub fn peak_kb(pid: &str) -> u64 {
    status_kb(pid, "status", "VmHWM:")
}

/// Proportional set size (kB) of process `pid`: shared pages split between their users.
pub fn pss_kb(pid: &str) -> u64 {
    status_kb(pid, "smaps_rollup", "Pss:")
}

fn status_kb(pid: &str, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resets this process's peak resident set to its current size (Linux 4.0+), so that the
/// next `peak_kb` reading is about what happens from now on.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
