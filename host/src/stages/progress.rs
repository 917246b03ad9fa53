//! Progress bars (one per phase, with examples/s and ETA) and the wall-time breakdown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Makes progress bars, or hidden ones (for `--json`, or when stderr is not a terminal).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    visible: bool,
}

impl Progress {
    /// Bars drawn on stderr when `visible` and stderr is a terminal.
    pub fn new(visible: bool) -> Self {
        Progress { visible }
    }

    /// No bars.
    pub fn hidden() -> Self {
        Progress { visible: false }
    }

    /// A bar for a phase of `len` items, `done` of them already done (resumed).
    pub fn bar(&self, phase: &str, len: u64, done: u64) -> ProgressBar {
        let target = if self.visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let pb = ProgressBar::with_draw_target(Some(len), target);
        pb.set_style(
            ProgressStyle::with_template("{prefix:>14.bold} [{bar:32.cyan/blue}] {pos}/{len} {per_sec:>10} ETA {eta:>4} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(phase.to_string());
        pb.set_position(done);
        pb.reset_eta();
        pb.enable_steady_tick(Duration::from_millis(250));
        pb
    }
}

/// Wall time per phase, in seconds, accumulated.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    seconds: BTreeMap<String, f64>,
    order: Vec<String>,
}

impl Timings {
    /// Add `d` to `key`.
    pub fn add(&mut self, key: &str, d: Duration) {
        if !self.seconds.contains_key(key) {
            self.order.push(key.to_string());
        }
        *self.seconds.entry(key.to_string()).or_default() += d.as_secs_f64();
    }

    /// Time `f` under `key`.
    pub fn time<T>(&mut self, key: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.add(key, t.elapsed());
        out
    }

    /// Seconds under `key`.
    pub fn get(&self, key: &str) -> f64 {
        self.seconds.get(key).copied().unwrap_or(0.0)
    }

    /// (key, seconds) in the order keys first appeared.
    pub fn entries(&self) -> Vec<(String, f64)> {
        self.order.iter().map(|k| (k.clone(), self.seconds[k])).collect()
    }

    /// Sum over keys starting with `prefix`.
    pub fn sum_prefix(&self, prefix: &str) -> f64 {
        self.seconds.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
    }
}
