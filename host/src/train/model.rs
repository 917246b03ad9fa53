//! The base model for training: the GGUF's own quantized tensors, frozen, in a forward pass
//! built from differentiable tensor operations (whole padded sequences, causal and
//! sliding-window masks, no KV cache) with LoRA adapters on the chosen projections.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{Device, Tensor, D};

use crate::model::{Arch, ModelConfig, ModelError};

use super::error::TrainError;
use super::frozen::{FrozenMatMul, HeadNll};
use super::lora::{Adapters, MODULES};
use super::rng::SplitMix;

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
    /// Load the frozen base from a GGUF file.
    pub fn load(path: &Path) -> Result<BaseModel, TrainError> {
        let (mut file, content) = crate::model::engine::read_gguf(path)?;
        Ok(BaseModel::from_gguf(&content, &mut file, path)?)
    }

    /// Load from an open GGUF.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(content: &gguf_file::Content, reader: &mut R, path: &Path) -> Result<BaseModel, ModelError> {
        let cfg = ModelConfig::from_metadata(&content.metadata, path)?;
        let fmt = |what: String| ModelError::Format { path: path.to_path_buf(), what };
        let mut tensor = |name: &str| -> Result<QTensor, ModelError> {
            if !content.tensor_infos.contains_key(name) {
                return Err(fmt(format!("missing tensor {name}")));
            }
            content.tensor(reader, name, &Device::Cpu).map_err(|e| fmt(format!("tensor {name}: {e}")))
        };
        let dense = |q: QTensor| q.dequantize(&Device::Cpu);
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
        Ok(BaseModel { cfg, embed, head, final_norm, blocks })
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
        Ok((Tensor::from_vec(cos, (1, len, 1, half), &Device::Cpu)?, Tensor::from_vec(sin, (1, len, 1, half), &Device::Cpu)?))
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
    fn mask(len: usize, window: Option<usize>) -> candle_core::Result<Tensor> {
        let mut m = vec![0f32; len * len];
        for p in 0..len {
            for k in 0..len {
                let visible = k <= p && window.is_none_or(|w| p - k < w);
                if !visible {
                    m[p * len + k] = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(m, (len, len), &Device::Cpu)
    }

    /// A projection with its adapter: `x W^T + scale * dropout(x) A^T B^T`, x: (n, in).
    fn project(&self, l: usize, m: usize, x: &Tensor, adapters: Option<&Adapters>, dropout: Option<Dropout>) -> candle_core::Result<Tensor> {
        let y = x.apply_op1(FrozenMatMul(self.blocks[l].proj[m].clone()))?;
        let Some(pair) = adapters.and_then(|a| a.pairs.get(&(l, m))) else { return Ok(y) };
        let scale = adapters.expect("checked").config.scale();
        let x = match dropout {
            Some(d) if d.p > 0.0 => {
                let mut rng = SplitMix::at(d.seed, &[l as u64, m as u64]);
                let keep = 1.0 / (1.0 - d.p);
                let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.unit() < d.p { 0.0 } else { keep as f32 }).collect();
                (x * Tensor::from_vec(mask, x.shape(), &Device::Cpu)?)?
            }
            _ => x.clone(),
        };
        let delta = x.matmul(&pair.a.as_tensor().t()?)?.matmul(&pair.b.as_tensor().t()?)?;
        y + (delta * scale)?
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
        let ids = Tensor::from_slice(&batch.ids, b * t, &Device::Cpu)?;
        let mut x = self.embed.embedding(&ids)?;
        if cfg.arch == Arch::Gemma3 {
            x = (x * (cfg.hidden as f64).sqrt())?;
        }
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for blk in &self.blocks {
            if !masks.iter().any(|(w, _)| *w == blk.window) {
                masks.push((blk.window, Self::mask(t, blk.window)?));
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
        let scores = (q.matmul(&k.t()?)? * cfg.attn_scale as f64)?.broadcast_add(mask)?;
        let att = softmax(&scores)?.matmul(&v)?;
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

    /// Hidden states after the final norm, (rows * len, hidden).
    pub fn hidden(&self, batch: &Batch, adapters: Option<&Adapters>, dropout: Option<Dropout>) -> Result<Tensor, TrainError> {
        let (mut x, sh) = self.prepare(batch)?;
        for l in 0..self.blocks.len() {
            x = self.block(l, &x, &sh, adapters, dropout)?;
        }
        Ok(rms_norm(&x, &self.final_norm, self.cfg.eps)?)
    }

    /// The summed NLL of the labelled positions of `h` (hidden after the final norm).
    fn head_nll(&self, h: &Tensor, batch: &Batch) -> Result<(Tensor, usize), TrainError> {
        let (rows, targets): (Vec<u32>, Vec<u32>) =
            batch.labels.iter().enumerate().filter_map(|(i, l)| l.map(|t| (i as u32, t))).unzip();
        if rows.is_empty() {
            return Ok(((h.sum_all()? * 0.0)?, 0));
        }
        let idx = Tensor::from_vec(rows, targets.len(), &Device::Cpu)?;
        let picked = h.index_select(&idx, 0)?.contiguous()?;
        let n = targets.len();
        let nll = picked.apply_op1(HeadNll::new(self.head.clone(), targets))?;
        Ok((nll.sum_all()?, n))
    }

    /// The summed NLL (as a number), the positions it covers, and the gradients of
    /// `scale * NLL` for every adapter tensor (in [`Adapters::vars`] order), with activation
    /// checkpointing: the forward pass keeps only each block's input, and the backward pass
    /// recomputes one block at a time, so memory holds one block's graph instead of all.
    pub fn nll_backward(&self, batch: &Batch, adapters: &Adapters, dropout: Option<Dropout>, scale: f64) -> Result<(f64, usize, Vec<Vec<f32>>), TrainError> {
        let (x0, sh) = self.prepare(batch)?;
        let mut inputs = vec![x0];
        for l in 0..self.blocks.len() {
            let y = self.block(l, inputs.last().expect("one input"), &sh, Some(adapters), dropout)?.detach();
            inputs.push(y);
        }
        let vars = adapters.vars();
        let mut grads: Vec<Vec<f32>> = vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        let last = candle_core::Var::from_tensor(inputs.last().expect("one output"))?;
        let h = rms_norm(last.as_tensor(), &self.final_norm, self.cfg.eps)?;
        let (nll, n) = self.head_nll(&h, batch)?;
        let total = nll.to_scalar::<f32>()? as f64;
        if n == 0 {
            return Ok((0.0, 0, grads));
        }
        let store = (nll * scale)?.backward()?;
        let mut upstream = store.get(last.as_tensor()).cloned().ok_or_else(|| TrainError::Config("no gradient reached the last block".into()))?;
        let index: std::collections::HashMap<(usize, usize), usize> = adapters.pairs.keys().enumerate().map(|(i, k)| (*k, 2 * i)).collect();
        for l in (0..self.blocks.len()).rev() {
            let input = candle_core::Var::from_tensor(&inputs[l])?;
            let y = self.block(l, input.as_tensor(), &sh, Some(adapters), dropout)?;
            let store = (y * &upstream)?.sum_all()?.backward()?;
            for m in 0..MODULES.len() {
                let (Some(&i), Some(pair)) = (index.get(&(l, m)), adapters.pairs.get(&(l, m))) else { continue };
                for (j, var) in [&pair.a, &pair.b].into_iter().enumerate() {
                    if let Some(g) = store.get(var.as_tensor()) {
                        for (acc, v) in grads[i + j].iter_mut().zip(g.flatten_all()?.to_vec1::<f32>()?) {
                            *acc += v;
                        }
                    }
                }
            }
            if l > 0 {
                upstream = store.get(input.as_tensor()).cloned().ok_or_else(|| TrainError::Config(format!("no gradient reached block {l}'s input")))?;
            }
        }
        Ok((total, n, grads))
    }

    /// Summed negative log-likelihood of the batch's labelled positions (a scalar that carries
    /// gradients to the adapters) and how many positions it covers.
    pub fn nll(&self, batch: &Batch, adapters: Option<&Adapters>, dropout: Option<Dropout>) -> Result<(Tensor, usize), TrainError> {
        let hidden = self.hidden(batch, adapters, dropout)?;
        self.head_nll(&hidden, batch)
    }

    /// Log-probabilities (rows * len, vocabulary) of every position, for checks against the
    /// engine and against other implementations. Small models only: it makes the whole logits.
    pub fn log_probs(&self, batch: &Batch, adapters: Option<&Adapters>) -> Result<Tensor, TrainError> {
        let hidden = self.hidden(batch, adapters, None)?;
        let w = self.head.dequantize(&Device::Cpu)?;
        let logits = hidden.matmul(&w.t()?)?;
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }
}
