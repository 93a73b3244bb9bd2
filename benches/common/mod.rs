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
