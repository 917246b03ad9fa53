//! What a run cost: wall time, CPU time and device time, per invocation and in all.
//!
//! Each invocation that finishes a run appends its figures to `stats/accounting.jsonl` (atomic
//! rewrite) and the manifest carries the totals over the run's invocations. An invocation that
//! was killed records nothing (its work is kept, its time is not known to the run). Device time
//! is the time the run held its compute device: GPU seconds on a GPU, the wall time of the
//! machine's CPUs otherwise.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sandbox::{FsError, RunDir};

/// The accounting file inside a run folder.
pub const ACCOUNTING: &str = "stats/accounting.jsonl";

/// One invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// When it ended.
    pub finished_at: String,
    /// Wall seconds.
    pub wall_seconds: f64,
    /// CPU seconds (user + system) of the process.
    pub cpu_seconds: f64,
    /// The compute device: "cpu" or the GPU's name.
    pub device: String,
    /// Seconds the device was held.
    pub device_seconds: f64,
}

/// A run's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Wall seconds over its finished invocations.
    pub wall_seconds: f64,
    /// CPU seconds.
    pub cpu_seconds: f64,
    /// The device of the last invocation.
    pub device: String,
    /// Device seconds.
    pub device_seconds: f64,
    /// Finished invocations counted.
    pub invocations: usize,
}

/// CPU seconds (user + system) this process has used, from getrusage.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we own; RUSAGE_SELF is always valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Record this invocation (`wall` since it started; CPU time of the whole process so far) and
/// return the run's totals.
pub fn account(run: &RunDir, wall: Duration) -> Result<Resources, FsError> {
    let mut list: Vec<Invocation> = match run.read_optional(ACCOUNTING)? {
        Some(b) => String::from_utf8_lossy(&b).lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
        None => Vec::new(),
    };
    let wall_seconds = wall.as_secs_f64();
    list.push(Invocation {
        finished_at: super::manifest::now(),
        wall_seconds,
        cpu_seconds: cpu_seconds(),
        device: "cpu".into(),
        device_seconds: wall_seconds,
    });
    let mut bytes = Vec::new();
    for i in &list {
        serde_json::to_writer(&mut bytes, i).expect("serialises");
        bytes.push(b'\n');
    }
    run.write_atomic(ACCOUNTING, &bytes)?;
    Ok(Resources {
        wall_seconds: list.iter().map(|i| i.wall_seconds).sum(),
        cpu_seconds: list.iter().map(|i| i.cpu_seconds).sum(),
        device: list.last().map(|i| i.device.clone()).unwrap_or_default(),
        device_seconds: list.iter().map(|i| i.device_seconds).sum(),
        invocations: list.len(),
    })
}
