//! A CUDA device's memory in use over a span of work, sampled: the high-water mark of what
//! `cuMemGetInfo` reports as used (total minus free: every allocation on the device, the
//! CUDA context and the allocator's pool included), every millisecond, from a thread of its
//! own. Nothing is sampled on the CPU. Also the host allocator's policy for the CPU engine
//! ([`keep_freed_buffers`]).

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

/// Let the C allocator keep large freed buffers for reuse (glibc: no `mmap` of its own per
/// allocation up to 512 MiB, and no returning of the heap's top to the system below 1 GiB).
/// A CPU forward pass allocates and frees activations of megabytes per operation; with
/// glibc's defaults each one is a fresh `mmap` whose pages fault in again on first write,
/// which cost a prompt pass more time than some of its products. Peak memory is unchanged (the
/// same buffers are live at the peak); memory freed after a peak stays with the process.
/// Done once per process; other C libraries keep their own settings.
pub fn keep_freed_buffers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes the allocator's thresholds; it is called once, before
        // the engine's first pass, and its failure (0) leaves the defaults.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    });
}
