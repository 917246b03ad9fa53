//! Dropout masks made where the activations are: the mask of one projection in one pass is
//! the stream `SplitMix::at(seed, [layer, module])`, element i its draw i (0 where the unit
//! value is below p, else 1 / (1 - p)). The stream is counter-based, so every element is
//! computed on its own - in parallel on the CPU, by a kernel on CUDA - and every device makes
//! the same mask bit for bit.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::rng::SplitMix;

/// Fills an f32 tensor with the mask of a stream.
struct MaskFill {
    state: u64,
    p: f64,
    keep: f32,
}

impl MaskFill {
    fn value(&self, rng: &SplitMix, i: u64) -> f32 {
        if SplitMix::to_unit(rng.peek_u64(i)) < self.p {
            0.0
        } else {
            self.keep
        }
    }
}

impl InplaceOp1 for MaskFill {
    fn name(&self) -> &'static str {
        "kiln-dropout-mask"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(v) = storage else { candle_core::bail!("a dropout mask is f32") };
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("a dropout mask is contiguous") };
        const CHUNK: usize = 1 << 14;
        let rng = SplitMix::new(self.state);
        v[a..b].par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = self.value(&rng, (c * CHUNK + j) as u64);
            }
        });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &mut candle_core::CudaStorage, layout: &Layout) -> Result<()> {
        use crate::model::kernels;
        use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("a dropout mask is contiguous") };
        let n = b - a;
        if n == 0 {
            return Ok(());
        }
        let func = storage.device.get_or_load_custom_func("kiln_dropout_mask", kernels::MODULE, kernels::ptx()?)?;
        let out = storage.as_cuda_slice_mut::<f32>()?;
        let cfg = LaunchConfig::for_num_elems(n.min(1 << 30) as u32);
        let (off, n, state) = (a as u64, n as u64, self.state);
        let mut builder = func.builder();
        builder.arg(out);
        builder.arg(&off);
        builder.arg(&n);
        builder.arg(&state);
        builder.arg(&self.p);
        builder.arg(&self.keep);
        // SAFETY: the kernel writes elements off..off + n of `out`, the tensor's own range.
        unsafe { builder.launch(cfg) }.map_err(|e| candle_core::Error::Msg(format!("kiln_dropout_mask: {e:?}")))?;
        Ok(())
    }
}

/// The dropout mask of probability `p` (in [0, 1)) for `stream`, of `shape`, on `device`.
pub fn mask(stream: &SplitMix, p: f64, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
    let t = Tensor::zeros(shape, DType::F32, device)?;
    t.inplace_op1(&MaskFill { state: stream.state(), p, keep: (1.0 / (1.0 - p)) as f32 })?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_the_streams_draws_in_order() {
        // The sequential draws are the reference: a resumed or other-device run must see the
        // same mask as the stream gives one value at a time.
        for (p, n) in [(0.05, 100_003), (0.5, 4097), (0.0, 10)] {
            let mut rng = SplitMix::at(77, &[3, 5]);
            let m = mask(&rng, p, (n,), &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
            let keep = (1.0 / (1.0 - p)) as f32;
            let want: Vec<f32> = (0..n).map(|_| if rng.unit() < p { 0.0 } else { keep }).collect();
            assert_eq!(m, want, "p = {p}");
            let dropped = m.iter().filter(|x| **x == 0.0).count() as f64 / n as f64;
            assert!((dropped - p).abs() < 0.02 + 3.0 * (p * (1.0 - p) / n as f64).sqrt(), "p = {p}: dropped {dropped}");
        }
    }
}
