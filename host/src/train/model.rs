//! The base model for training: the GGUF's own quantized tensors, frozen, in a forward pass
//! built from differentiable tensor operations (whole padded sequences, causal and
//! sliding-window masks, no KV cache) with LoRA adapters on the chosen projections.
//!
//! The model lives on one device. On the CPU the frozen projections and the head are kiln's
//! custom operations (`frozen.rs`); elsewhere (CUDA) they are plain tensor operations on the
//! weight dequantized on the device: a projection multiplies by the dequantized weight, which the
//! graph holds as a constant (one block's at a time under activation checkpointing), and the
//! head's loss and gradient are computed tile by tile (`frozen::tiled_head_nll`).

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{Device, Tensor, D};

use crate::model::{Arch, ModelConfig, ModelError};

use super::error::TrainError;
use super::frozen::{tiled_head_nll, FrozenMatMul, HeadNll};
use super::lora::{Adapters, MODULES};
use super::rng::SplitMix;
use crate::model::profile::phase;

/// GGUF names of the projections, in [`MODULES`] order.
pub(crate) const GGUF_NAMES: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

struct Block {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    post_ffn_norm: Option<Tensor>,
    proj: Vec<Arc<QTensor>>,
    window: Option<usize>,
    local_rope: bool,
}

/// A frozen base ready for training.
pub struct BaseModel {
    /// Shape.
    pub cfg: ModelConfig,
    embed: Arc<QTensor>,
    head: Arc<QTensor>,
    final_norm: Tensor,
    blocks: Vec<Block>,
    device: Device,
    /// The head dequantized on the device, for the tensor-operation path.
    head_dense: Option<Tensor>,
}

/// One padded batch: `rows` sequences of `len` tokens; `labels[i]` is the token position `i`
/// must predict, or None (prompt, padding, last position).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, row-major (rows x len).
    pub ids: Vec<u32>,
    /// Targets, same layout.
    pub labels: Vec<Option<u32>>,
    /// Sequences.
    pub rows: usize,
    /// Padded length.
    pub len: usize,
}

impl Batch {
    /// Positions that carry a loss.
    pub fn targets(&self) -> usize {
        self.labels.iter().filter(|l| l.is_some()).count()
    }
}

/// Dropout on the adapters' input: its probability and where its masks come from.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    /// Probability of zeroing a value.
    pub p: f64,
    /// Seed of this forward pass's masks.
    pub seed: u64,
}

/// What every block of one batch shares.
struct Shared {
    rows: usize,
    len: usize,
    global: (Tensor, Tensor),
    local: (Tensor, Tensor),
    masks: Vec<(Option<usize>, Tensor)>,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// Softmax over the last dimension; the max is only a shift, so it carries no gradient.
fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

impl BaseModel {
    /// Load the frozen base from a GGUF file onto the CPU.
    pub fn load(path: &Path) -> Result<BaseModel, TrainError> {
        BaseModel::load_on(path, &Device::Cpu)
    }

    /// Load the frozen base from a GGUF file onto `device`.
    pub fn load_on(path: &Path, device: &Device) -> Result<BaseModel, TrainError> {
        let (mut file, content) = crate::model::engine::read_gguf(path)?;
        Ok(BaseModel::from_gguf(&content, &mut file, path, device)?)
    }

    /// Load from an open GGUF onto `device`.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        path: &Path,
        device: &Device,
    ) -> Result<BaseModel, ModelError> {
        let cfg = ModelConfig::from_metadata(&content.metadata, path)?;
        let fmt = |what: String| ModelError::Format { path: path.to_path_buf(), what };
        let mut tensor = |name: &str| -> Result<QTensor, ModelError> {
            if !content.tensor_infos.contains_key(name) {
                return Err(fmt(format!("missing tensor {name}")));
            }
            content.tensor(reader, name, device).map_err(|e| fmt(format!("tensor {name}: {e}")))
        };
        let dense = |q: QTensor| q.dequantize(device);
        let embed = Arc::new(tensor("token_embd.weight")?);
        let head = if content.tensor_infos.contains_key("output.weight") { Arc::new(tensor("output.weight")?) } else { embed.clone() };
        let final_norm = dense(tensor("output_norm.weight")?)?;
        let gemma = cfg.arch == Arch::Gemma3;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("blk.{l}");
            let mut norm = |n: &str| -> Result<Tensor, ModelError> { Ok(dense(tensor(&format!("{p}.{n}.weight"))?)?) };
            let (q_norm, k_norm, post_attn_norm, post_ffn_norm) = if gemma {
                (Some(norm("attn_q_norm")?), Some(norm("attn_k_norm")?), Some(norm("post_attention_norm")?), Some(norm("post_ffw_norm")?))
            } else {
                (None, None, None, None)
            };
            let attn_norm = norm("attn_norm")?;
            let ffn_norm = norm("ffn_norm")?;
            let mut proj = Vec::with_capacity(7);
            for (g, m) in GGUF_NAMES.iter().zip(MODULES) {
                let name = format!("{p}.{g}.weight");
                let t = tensor(&name)?;
                let (inp, out) = super::lora::module_shape(&cfg, m);
                if t.shape().dims() != [out, inp] {
                    return Err(fmt(format!("{name} is {:?}, expected [{out}, {inp}]", t.shape().dims())));
                }
                proj.push(Arc::new(t));
            }
            let window = cfg.layer_window(l);
            let local_rope = window.is_some() && cfg.rope_base_local != cfg.rope_base;
            blocks.push(Block { attn_norm, ffn_norm, q_norm, k_norm, post_attn_norm, post_ffn_norm, proj, window, local_rope });
        }
        let mut model = BaseModel { cfg, embed, head, final_norm, blocks, device: device.clone(), head_dense: None };
        model.use_tensor_ops(!device.is_cpu())?;
        Ok(model)
    }

    /// The device the model is on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute the frozen projections and the head with plain tensor operations on weights
    /// dequantized on the device (the default off the CPU) instead of kiln's CPU operations.
    /// Both give the same loss and gradients; the tensor path keeps the dequantized head
    /// (vocabulary x hidden, f32) for the model's lifetime.
    pub fn use_tensor_ops(&mut self, on: bool) -> candle_core::Result<()> {
        self.head_dense = if on { Some(self.head.dequantize(&self.device)?) } else { None };
        Ok(())
    }

    /// True when the tensor-operation path is on.
    pub fn tensor_ops(&self) -> bool {
        self.head_dense.is_some()
    }

    /// Rotary cos/sin tables (len, head_dim / 2) for one base, computed as the engine does.
    fn rope_tables(&self, base: f32, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let dims = self.cfg.rope_dims;
        let half = dims / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in 0..len {
            for i in 0..half {
                let theta = p as f64 * (base as f64).powf(-2.0 * i as f64 / dims as f64);
                cos.push(theta.cos() as f32);
                sin.push(theta.sin() as f32);
            }
        }
        Ok((Tensor::from_vec(cos, (1, len, 1, half), &self.device)?, Tensor::from_vec(sin, (1, len, 1, half), &self.device)?))
    }

    /// Rotate x: (rows, len, heads, head_dim).
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, h, d) = x.dims4()?;
        let half = d / 2;
        match self.cfg.arch {
            Arch::Gemma3 => {
                let x0 = x.narrow(3, 0, half)?;
                let x1 = x.narrow(3, half, half)?;
                let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
                let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
                Tensor::cat(&[r0, r1], 3)
            }
            Arch::Llama => {
                let x = x.reshape((b, t, h, half, 2))?;
                let x0 = x.narrow(4, 0, 1)?.squeeze(4)?;
                let x1 = x.narrow(4, 1, 1)?.squeeze(4)?;
                let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
                let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
                Tensor::stack(&[r0, r1], 4)?.reshape((b, t, h, d))
            }
        }
    }

    /// Additive attention mask (len, len): causal, and within `window` when set.
    fn mask(len: usize, window: Option<usize>, device: &Device) -> candle_core::Result<Tensor> {
        let mut m = vec![0f32; len * len];
        for p in 0..len {
            for k in 0..len {
                let visible = k <= p && window.is_none_or(|w| p - k < w);
                if !visible {
                    m[p * len + k] = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(m, (len, len), device)
    }

    /// A projection with its adapter: `x W^T + scale * dropout(x) A^T B^T`, x: (n, in).
    fn project(&self, l: usize, m: usize, x: &Tensor, adapters: Option<&Adapters>, dropout: Option<Dropout>) -> candle_core::Result<Tensor> {
        let w = &self.blocks[l].proj[m];
        let y = phase(&self.device, "train:frozen-proj", || -> candle_core::Result<Tensor> {
            if self.tensor_ops() {
                x.matmul(&w.dequantize(&self.device)?.t()?)
            } else {
                x.apply_op1(FrozenMatMul(w.clone()))
            }
        })?;
        let Some(pair) = adapters.and_then(|a| a.pairs.get(&(l, m))) else { return Ok(y) };
        let scale = adapters.expect("checked").config.scale();
        let x = match dropout {
            Some(d) if d.p > 0.0 => {
                (x * super::dropout::mask(&SplitMix::at(d.seed, &[l as u64, m as u64]), d.p, x.shape().clone(), &self.device)?)?
            }
            _ => x.clone(),
        };
        phase(&self.device, "train:adapter", || {
            let delta = x.matmul(&pair.a.as_tensor().t()?)?.matmul(&pair.b.as_tensor().t()?)?;
            y + (delta * scale)?
        })
    }

    /// The batch's embeddings and what every block needs: rotary tables and masks.
    fn prepare(&self, batch: &Batch) -> Result<(Tensor, Shared), TrainError> {
        let cfg = &self.cfg;
        let (b, t) = (batch.rows, batch.len);
        if batch.ids.len() != b * t || batch.labels.len() != b * t {
            return Err(TrainError::Config(format!("a batch of {b} x {t} with {} ids and {} labels", batch.ids.len(), batch.labels.len())));
        }
        if let Some(&bad) = batch.ids.iter().find(|&&i| i as usize >= cfg.vocab) {
            return Err(TrainError::Config(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab)));
        }
        let ids = Tensor::from_slice(&batch.ids, b * t, &self.device)?;
        let mut x = self.embed.embedding(&ids)?;
        if cfg.arch == Arch::Gemma3 {
            x = (x * (cfg.hidden as f64).sqrt())?;
        }
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for blk in &self.blocks {
            if !masks.iter().any(|(w, _)| *w == blk.window) {
                masks.push((blk.window, Self::mask(t, blk.window, &self.device)?));
            }
        }
        let shared = Shared { rows: b, len: t, global: self.rope_tables(cfg.rope_base, t)?, local: self.rope_tables(cfg.rope_base_local, t)?, masks };
        Ok((x, shared))
    }

    /// Block `l` on x: (rows * len, hidden).
    fn block(&self, l: usize, x: &Tensor, sh: &Shared, adapters: Option<&Adapters>, dropout: Option<Dropout>) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let blk = &self.blocks[l];
        let (b, t) = (sh.rows, sh.len);
        let n = b * t;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
        let drop = |m: usize| dropout.map(|d| Dropout { p: d.p, seed: SplitMix::at(d.seed, &[l as u64, m as u64]).next_u64() });
        let h = rms_norm(x, &blk.attn_norm, cfg.eps)?;
        let mut q = self.project(l, 0, &h, adapters, drop(0))?.reshape((b, t, nh, hd))?;
        let mut k = self.project(l, 1, &h, adapters, drop(1))?.reshape((b, t, nkv, hd))?;
        let v = self.project(l, 2, &h, adapters, drop(2))?.reshape((b, t, nkv, hd))?;
        if let (Some(qn), Some(kn)) = (&blk.q_norm, &blk.k_norm) {
            q = rms_norm(&q, qn, cfg.eps)?;
            k = rms_norm(&k, kn, cfg.eps)?;
        }
        let (cos, sin) = if blk.local_rope { &sh.local } else { &sh.global };
        let q = self.rope(&q, cos, sin)?.transpose(1, 2)?.contiguous()?;
        let k = self.rope(&k, cos, sin)?.transpose(1, 2)?;
        let v = v.transpose(1, 2)?;
        let group = nh / nkv;
        let expand = |z: Tensor| -> candle_core::Result<Tensor> {
            if group == 1 {
                return z.contiguous();
            }
            z.unsqueeze(2)?.expand((b, nkv, group, t, hd))?.reshape((b, nh, t, hd))
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let mask = &sh.masks.iter().find(|(w, _)| *w == blk.window).expect("a mask per window").1;
        let att = phase(&self.device, "train:attention", || -> candle_core::Result<Tensor> {
            let scores = (q.matmul(&k.t()?)? * cfg.attn_scale as f64)?.broadcast_add(mask)?;
            softmax(&scores)?.matmul(&v)
        })?;
        let att = att.transpose(1, 2)?.reshape((n, nh * hd))?;
        let mut a = self.project(l, 3, &att, adapters, drop(3))?;
        if let Some(pn) = &blk.post_attn_norm {
            a = rms_norm(&a, pn, cfg.eps)?;
        }
        let x = (x + a)?;
        let h = rms_norm(&x, &blk.ffn_norm, cfg.eps)?;
        let g = self.project(l, 4, &h, adapters, drop(4))?;
        let u = self.project(l, 5, &h, adapters, drop(5))?;
        let act = match cfg.arch {
            Arch::Gemma3 => g.gelu()?,
            Arch::Llama => candle_nn::ops::silu(&g)?,
        };
        let mut m = self.project(l, 6, &(act * u)?, adapters, drop(6))?;
        if let Some(pn) = &blk.post_ffn_norm {
            m = rms_norm(&m, pn, cfg.eps)?;
        }
        x + m
    }

    /// Hidden states after the final norm, (rows * len, hidden), with the autograd graph of
    /// the whole forward pass (every block's intermediates stay alive for a backward pass).
    pub fn hidden(&self, batch: &Batch, adapters: Option<&Adapters>, dropout: Option<Dropout>) -> Result<Tensor, TrainError> {
        self.forward_hidden(batch, adapters, dropout, true)
    }

    /// [`Self::hidden`]; without `graph`, each block's output is detached, so that memory holds
    /// one block's intermediates at a time instead of the whole pass's (the adapters are
    /// variables, so their products would otherwise keep every block's graph alive).
    fn forward_hidden(&self, batch: &Batch, adapters: Option<&Adapters>, dropout: Option<Dropout>, graph: bool) -> Result<Tensor, TrainError> {
        let (mut x, sh) = self.prepare(batch)?;
        for l in 0..self.blocks.len() {
            x = self.block(l, &x, &sh, adapters, dropout)?;
            if !graph {
                x = x.detach();
            }
        }
        Ok(rms_norm(&x, &self.final_norm, self.cfg.eps)?)
    }

    /// The summed NLL of the labelled positions of `h` (hidden after the final norm), a scalar
    /// that carries gradients to `h` when `grad`, and the positions it covers.
    fn head_nll(&self, h: &Tensor, batch: &Batch, grad: bool) -> Result<(Tensor, usize), TrainError> {
        let (rows, targets): (Vec<u32>, Vec<u32>) =
            batch.labels.iter().enumerate().filter_map(|(i, l)| l.map(|t| (i as u32, t))).unzip();
        if rows.is_empty() {
            return Ok(((h.sum_all()? * 0.0)?, 0));
        }
        let n = targets.len();
        let idx = Tensor::from_vec(rows, n, &self.device)?;
        let picked = h.index_select(&idx, 0)?.contiguous()?;
        let Some(w) = &self.head_dense else {
            let nll = picked.apply_op1(HeadNll::new(self.head.clone(), targets, grad))?;
            return Ok((nll.sum_all()?, n));
        };
        let (nll, g) = tiled_head_nll(&picked.detach(), w, &targets, grad)?;
        let value = nll.sum_all()?;
        Ok(match g {
            // A scalar whose value is the NLL and whose gradient with respect to `picked` is g.
            Some(g) => {
                let surrogate = (&picked * g)?.sum_all()?;
                let offset = (value - surrogate.detach())?;
                ((surrogate + offset)?, n)
            }
            None => (value, n),
        })
    }

    /// The summed NLL (as a number), the positions it covers, and the gradients of
    /// `scale * NLL` for every adapter tensor (in [`Adapters::vars`] order), with activation
    /// checkpointing: the forward pass keeps only each block's input, and the backward pass
    /// recomputes one block at a time, so memory holds one block's graph instead of all.
    pub fn nll_backward(&self, batch: &Batch, adapters: &Adapters, dropout: Option<Dropout>, scale: f64) -> Result<(f64, usize, Vec<Vec<f32>>), TrainError> {
        let dev = &self.device;
        let (x0, sh) = phase(dev, "train:prepare", || self.prepare(batch))?;
        let mut inputs = vec![x0];
        for l in 0..self.blocks.len() {
            let y = phase(dev, "train:forward", || self.block(l, inputs.last().expect("one input"), &sh, Some(adapters), dropout))?.detach();
            inputs.push(y);
        }
        let vars = adapters.vars();
        // Gradients stay on the device until the pass is done (one copy each at the end).
        let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
        let last = candle_core::Var::from_tensor(inputs.last().expect("one output"))?;
        let h = rms_norm(last.as_tensor(), &self.final_norm, self.cfg.eps)?;
        let (nll, n) = phase(dev, "train:head", || self.head_nll(&h, batch, true))?;
        let total = nll.to_scalar::<f32>()? as f64;
        if n == 0 {
            return Ok((0.0, 0, vars.iter().map(|v| vec![0f32; v.elem_count()]).collect()));
        }
        let store = phase(dev, "train:head-backward", || (nll * scale)?.backward())?;
        let mut upstream = store.get(last.as_tensor()).cloned().ok_or_else(|| TrainError::Config("no gradient reached the last block".into()))?;
        let index: std::collections::HashMap<(usize, usize), usize> = adapters.pairs.keys().enumerate().map(|(i, k)| (*k, 2 * i)).collect();
        for l in (0..self.blocks.len()).rev() {
            let input = candle_core::Var::from_tensor(&inputs[l])?;
            let y = phase(dev, "train:recompute", || self.block(l, input.as_tensor(), &sh, Some(adapters), dropout))?;
            let store = phase(dev, "train:backward", || (y * &upstream)?.sum_all()?.backward())?;
            for m in 0..MODULES.len() {
                let (Some(&i), Some(pair)) = (index.get(&(l, m)), adapters.pairs.get(&(l, m))) else { continue };
                for (j, var) in [&pair.a, &pair.b].into_iter().enumerate() {
                    // Each adapter belongs to one block: its gradient comes from this pass alone.
                    acc[i + j] = store.get(var.as_tensor()).cloned();
                }
            }
            if l > 0 {
                upstream = store.get(input.as_tensor()).cloned().ok_or_else(|| TrainError::Config(format!("no gradient reached block {l}'s input")))?;
            }
        }
        let grads = phase(dev, "train:grads-to-host", || -> candle_core::Result<Vec<Vec<f32>>> {
            acc.into_iter()
                .zip(&vars)
                .map(|(a, v)| match a {
                    Some(t) => t.flatten_all()?.to_vec1::<f32>(),
                    None => Ok(vec![0f32; v.elem_count()]),
                })
                .collect()
        })?;
        Ok((total, n, grads))
    }

    /// Summed negative log-likelihood of the batch's labelled positions (a scalar that carries
    /// gradients to the adapters) and how many positions it covers.
    pub fn nll(&self, batch: &Batch, adapters: Option<&Adapters>, dropout: Option<Dropout>) -> Result<(Tensor, usize), TrainError> {
        let hidden = self.hidden(batch, adapters, dropout)?;
        self.head_nll(&hidden, batch, true)
    }

    /// The summed NLL of the batch's labelled positions as a number (no dropout, and no
    /// gradient), and how many positions it covers.
    pub fn nll_value(&self, batch: &Batch, adapters: Option<&Adapters>) -> Result<(f64, usize), TrainError> {
        let hidden = self.forward_hidden(batch, adapters, None, false)?;
        let (nll, n) = self.head_nll(&hidden, batch, false)?;
        Ok((nll.to_scalar::<f32>()? as f64, n))
    }

    /// Log-probabilities (rows * len, vocabulary) of every position, for checks against the
    /// engine and against other implementations. Small models only: it makes the whole logits.
    pub fn log_probs(&self, batch: &Batch, adapters: Option<&Adapters>) -> Result<Tensor, TrainError> {
        let hidden = self.forward_hidden(batch, adapters, None, false)?;
        let w = self.head.dequantize(&self.device)?;
        let logits = hidden.matmul(&w.t()?)?;
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }
}
