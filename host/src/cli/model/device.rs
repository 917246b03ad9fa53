//! `kiln model device-check`: does this build's accelerator backend compute what the CPU does?

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use candle_core::quantized::QMatMul;
use candle_core::{Device, Module, Tensor};
use clap::Args;

use crate::model::engine::read_gguf;

/// Multiply random activations by quantized weights on the CUDA device and on the CPU, with
/// candle's kernels on each, and print each product's relative difference
/// ‖gpu − cpu‖ / ‖cpu‖ and its time. The weights are the first layer's projections of a GGUF
/// (`--model`), or random weights of gemma-3-270m's projection shapes in each quantized type
/// kiln loads (no file needed). Needs a build with `--features cuda` (scripts/build-cuda.sh);
/// exits 1 when a difference passes --tolerance.
#[derive(Debug, Args)]
pub struct DeviceCheckCommand {
    /// A GGUF whose first layer to use (default: random weights).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub ordinal: usize,
    /// Activation rows per product.
    #[arg(long, default_value_t = 64)]
    pub rows: usize,
    /// Timed repetitions per product.
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Largest allowed relative difference (the CPU rounds activations to 8 bits).
    #[arg(long, default_value_t = 2e-2)]
    pub tolerance: f64,
}

/// `n` values uniform in ±`scale`, from `seed`.
fn uniform(seed: u64, n: usize, scale: f64) -> Vec<f32> {
    let mut rng = crate::train::rng::SplitMix::at(seed, &[]);
    (0..n).map(|_| ((rng.unit() * 2.0 - 1.0) * scale) as f32).collect()
}

fn rel_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let d = (a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let n = b.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((d / n.max(f64::MIN_POSITIVE)).sqrt())
}

impl DeviceCheckCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        anyhow::ensure!(self.rows > 0 && self.reps > 0, "--rows and --reps must be at least 1");
        let gpu = Device::new_cuda(self.ordinal).with_context(|| {
            format!("no CUDA device {} (is this kiln built with --features cuda, by scripts/build-cuda.sh?)", self.ordinal)
        })?;
        use candle_core::quantized::{GgmlDType, QTensor};
        // (name, weights on the CPU, the same on the GPU)
        let mut weights: Vec<(String, QTensor, QTensor)> = Vec::new();
        let source = match &self.model {
            Some(path) => {
                let (mut file, content) = read_gguf(path)?;
                for n in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] {
                    let name = format!("blk.0.{n}.weight");
                    let c = content.tensor(&mut file, &name, &Device::Cpu).with_context(|| format!("{}: {name}", path.display()))?;
                    let g = content.tensor(&mut file, &name, &gpu).with_context(|| format!("{name} on CUDA"))?;
                    weights.push((name, c, g));
                }
                path.display().to_string()
            }
            None => {
                let shapes = [
                    ("q 1024x640", GgmlDType::Q8_0, 1024, 640),
                    ("k 256x640", GgmlDType::Q5_0, 256, 640),
                    ("o 640x1024", GgmlDType::Q4K, 640, 1024),
                    ("gate 2048x640", GgmlDType::Q4_1, 2048, 640),
                    ("down 640x2048", GgmlDType::Q6K, 640, 2048),
                ];
                for (i, (name, dtype, out_f, in_f)) in shapes.into_iter().enumerate() {
                    let w = uniform(1000 + i as u64, out_f * in_f, 0.05);
                    let c = QTensor::quantize(&Tensor::from_vec(w, (out_f, in_f), &Device::Cpu)?, dtype)?;
                    let g = candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &c.data()?, vec![out_f, in_f], &gpu)?;
                    weights.push((name.to_string(), c, g));
                }
                "random weights in gemma-3-270m's shapes".to_string()
            }
        };
        println!("device check: {source}, CUDA {} vs CPU, {} rows", self.ordinal, self.rows);
        println!("{:<28} {:<6} {:>12} {:>10} {:>10} {:>10}", "tensor", "type", "shape", "rel diff", "gpu ms", "cpu ms");
        let mut worst = 0f64;
        for (i, (name, q_cpu, q_gpu)) in weights.into_iter().enumerate() {
            let (dtype, (out_f, in_f)) = (q_cpu.dtype(), q_cpu.shape().dims2()?);
            let (m_cpu, m_gpu) = (QMatMul::from_qtensor(q_cpu)?, QMatMul::from_qtensor(q_gpu)?);
            let x = uniform(i as u64 + 1, self.rows * in_f, 1.0);
            let x_cpu = Tensor::from_vec(x, (self.rows, in_f), &Device::Cpu)?;
            let x_gpu = x_cpu.to_device(&gpu)?;
            let y_cpu = m_cpu.forward(&x_cpu)?;
            let y_gpu = m_gpu.forward(&x_gpu)?;
            gpu.synchronize()?;
            let diff = rel_diff(&y_gpu.to_device(&Device::Cpu)?, &y_cpu)?;
            let t = Instant::now();
            for _ in 0..self.reps {
                let _ = m_gpu.forward(&x_gpu)?;
            }
            gpu.synchronize()?;
            let gms = t.elapsed().as_secs_f64() * 1e3 / self.reps as f64;
            let t = Instant::now();
            for _ in 0..self.reps.min(5) {
                let _ = m_cpu.forward(&x_cpu)?;
            }
            let cms = t.elapsed().as_secs_f64() * 1e3 / self.reps.min(5) as f64;
            worst = worst.max(if diff.is_finite() { diff } else { f64::INFINITY });
            println!("{name:<28} {:<6} {:>12} {diff:>10.2e} {gms:>10.3} {cms:>10.3}", format!("{dtype:?}"), format!("{out_f}x{in_f}"));
        }
        println!("largest relative difference {worst:.2e} (tolerance {:.0e})", self.tolerance);
        Ok(if worst.is_finite() && worst <= self.tolerance { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }
}
