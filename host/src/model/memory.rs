//! A CUDA device's memory in use over a span of work, sampled: the high-water mark of what
//! `cuMemGetInfo` reports as used (total minus free: every allocation on the device, the
//! CUDA context and the allocator's pool included), every millisecond, from a thread of its
//! own. Nothing is sampled on the CPU.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::Device;
use serde::{Deserialize, Serialize};

/// What a watch saw, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMemory {
    /// Used when the watch started.
    pub start_bytes: usize,
    /// The most used at any sample.
    pub peak_bytes: usize,
    /// The device's memory.
    pub total_bytes: usize,
}

/// A running watch; [`MemoryWatch::finish`] stops it.
pub struct MemoryWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    start: usize,
    total: usize,
    thread: Option<JoinHandle<()>>,
}

impl MemoryWatch {
    /// Start watching `device`; None on the CPU, or when the device cannot say.
    pub fn start(device: &Device) -> Option<MemoryWatch> {
        let probe = probe(device)?;
        let (free, total) = probe()?;
        let start = total - free;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(start));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::Builder::new()
            .name("kiln-memory-watch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Some((free, total)) = probe() {
                        p.fetch_max(total - free, Ordering::Relaxed);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
            .ok()?;
        Some(MemoryWatch { stop, peak, start, total, thread: Some(thread) })
    }

    /// The high-water mark so far.
    pub fn peek(&self) -> DeviceMemory {
        DeviceMemory { start_bytes: self.start, peak_bytes: self.peak.load(Ordering::Relaxed), total_bytes: self.total }
    }

    /// Stop and report.
    pub fn finish(mut self) -> DeviceMemory {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peek()
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Probe = Box<dyn Fn() -> Option<(usize, usize)> + Send>;

#[cfg(feature = "cuda")]
fn probe(device: &Device) -> Option<Probe> {
    match device {
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            Some(Box::new(move || ctx.mem_get_info().ok()))
        }
        _ => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn probe(_device: &Device) -> Option<Probe> {
    None
}
