//! The optional progress bar of `map` and `imap`, on stderr.
//!
//! On when the pool was built with `progress(true)`, or for the global pool when
//! `MULTIPROC_PROGRESS` is `1`. Drawn only when stderr is a terminal, so piped output
//! never gets escape sequences, unless `MULTIPROC_PROGRESS=force`, which also draws to a
//! pipe or file: plain lines, once a second.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// Turns progress on for the global pool (`1`), or on and drawn even when stderr is not a
/// terminal, for every pool (`force`).
pub(crate) const PROGRESS_VAR: &str = "MULTIPROC_PROGRESS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FromEnv {
    Unset,
    On,
    Force,
}

fn from_env() -> FromEnv {
    static VALUE: OnceLock<FromEnv> = OnceLock::new();
    *VALUE.get_or_init(
        || match std::env::var(PROGRESS_VAR).as_deref().map(str::trim) {
            Ok("force") => FromEnv::Force,
            Ok("1" | "true" | "on" | "yes") => FromEnv::On,
            _ => FromEnv::Unset,
        },
    )
}

/// Whether the global pool shows progress.
pub(crate) fn global_enabled() -> bool {
    from_env() != FromEnv::Unset
}

/// A progress bar, or nothing.
pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar for `total` items (a spinner when unknown), if `enabled` and drawable.
    pub(crate) fn new(enabled: bool, total: Option<usize>) -> Self {
        if !enabled {
            return Progress(None);
        }
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else if from_env() == FromEnv::Force {
            ProgressDrawTarget::term_like_with_hz(Box::new(PlainLines), 1)
        } else {
            return Progress(None);
        };
        let (bar, template) = match total {
            Some(n) => (
                ProgressBar::with_draw_target(Some(n as u64), target),
                "{bar:40} {pos}/{len} items, {per_sec}, ETA {eta}",
            ),
            None => (
                ProgressBar::with_draw_target(None, target),
                "{spinner} {pos} items, {per_sec}",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    pub(crate) fn inc(&self, n: usize) {
        if let Some(bar) = &self.0 {
            bar.inc(n as u64);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}

/// Draws each refresh as one plain line: no cursor movement, for pipes and files.
#[derive(Debug)]
struct PlainLines;

impl TermLike for PlainLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        writeln!(std::io::stderr(), "{s}")
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        if s.trim().is_empty() {
            return Ok(());
        }
        writeln!(std::io::stderr(), "{s}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
