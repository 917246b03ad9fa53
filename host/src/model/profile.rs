//! Where a pass's time goes, by phase, for `kiln model generate|score --profile`: each phase
//! waits for the device before and after, so that asynchronous accelerator work is charged to
//! the phase that queued it. Off (and free) unless switched on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::Device;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Switch phase timing on or off (it makes every phase wait for the device).
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Run `f` as phase `name`.
pub fn phase<T>(device: &Device, name: &'static str, f: impl FnOnce() -> T) -> T {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let _ = device.synchronize();
    let t = Instant::now();
    let out = f();
    let _ = device.synchronize();
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let e = totals.entry(name).or_default();
    e.0 += t.elapsed();
    e.1 += 1;
    out
}

/// The totals so far, as {phase: {"seconds", "calls"}}, and reset them.
pub fn take() -> serde_json::Value {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let v = totals.iter().map(|(k, (d, n))| (k.to_string(), serde_json::json!({ "seconds": d.as_secs_f64(), "calls": n }))).collect::<serde_json::Map<_, _>>();
    totals.clear();
    serde_json::Value::Object(v)
}
