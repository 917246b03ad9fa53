//! AdamW (decoupled weight decay, as PyTorch's `torch.optim.AdamW`), the linear-warmup then
//! cosine-decay schedule (as transformers' `get_cosine_schedule_with_warmup`) and global
//! gradient-norm clipping. The state is plain vectors so a checkpoint holds it exactly.

use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::TrainError;

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// The learning rate of optimizer step `step` (0-based): linear from 0 over `warmup` steps,
/// then half a cosine down to 0 at `total`.
pub fn lr_at(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * (0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())).max(0.0)
}

/// AdamW's moments for every trainable tensor, and its step count.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    /// Settings.
    pub config: AdamWConfig,
    /// Updates applied so far.
    pub steps: u64,
    /// First moments, one per parameter tensor.
    pub m: Vec<Vec<f32>>,
    /// Second moments.
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub fn new(config: AdamWConfig, vars: &[&Var]) -> AdamW {
        let zeros: Vec<Vec<f32>> = vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        AdamW { config, steps: 0, m: zeros.clone(), v: zeros }
    }

    /// One update of `vars` with `grads` (same order) at learning rate `lr`.
    pub fn step(&mut self, vars: &[&Var], grads: &[Vec<f32>], lr: f64) -> Result<(), TrainError> {
        self.steps += 1;
        let c = &self.config;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (i, var) in vars.iter().enumerate() {
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let (m, v, g) = (&mut self.m[i], &mut self.v[i], &grads[i]);
            // Every element on its own (in parallel): the same bytes whatever the threads.
            p.par_iter_mut().zip(m.par_iter_mut()).zip(v.par_iter_mut()).zip(g.par_iter()).for_each(|(((pk, mk), vk), &gk)| {
                let gk = gk as f64;
                let m1 = c.beta1 * *mk as f64 + (1.0 - c.beta1) * gk;
                let v1 = c.beta2 * *vk as f64 + (1.0 - c.beta2) * gk * gk;
                *mk = m1 as f32;
                *vk = v1 as f32;
                let mut p1 = *pk as f64 * (1.0 - lr * c.weight_decay);
                p1 -= lr * (m1 / bc1) / ((v1 / bc2).sqrt() + c.eps);
                *pk = p1 as f32;
            });
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// Scale `grads` in place so their global L2 norm is at most `max_norm` (no-op when it is
/// not positive); returns the norm before clipping.
pub fn clip_global_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let norm = grads.iter().flat_map(|g| g.iter()).map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = (max_norm / (norm + 1e-6)) as f32;
        grads.iter_mut().flat_map(|g| g.iter_mut()).for_each(|x| *x *= s);
    }
    norm
}
