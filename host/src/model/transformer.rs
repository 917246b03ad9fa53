//! kiln's transformer: gemma3 and llama from GGUF, weights kept quantized, a batch of
//! sequences with their own lengths and positions in one forward pass, a KV cache per sequence
//! (sliding-window layers trim theirs), LoRA hooks on every projection, and logits computed
//! only for the rows asked for.
//!
//! Row independence: the projections work row by row (per-row activation quantization) and
//! attention runs per sequence, so a sequence's logits do not depend on what else is in the
//! batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use rayon::prelude::*;

use super::config::{Arch, ModelConfig, RopeStyle};
use super::error::ModelError;
use super::qmm;

/// A LoRA adapter on one projection: `y += scale * (x A^T) B^T`, A: (r, in), B: (out, r).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Down projection (r, in).
    pub a: Tensor,
    /// Up projection (out, r).
    pub b: Tensor,
    /// `lora_alpha / r`.
    pub scale: f64,
}

/// True when the quantized kernels of `dtype` give a row computed alone the same bits as the
/// same row computed in a batch. Some of candle's kernels take another path for a single row
/// (Q6K on x86); checked once per type with a probe.
fn single_row_consistent(dtype: candle_core::quantized::GgmlDType) -> bool {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashMap<String, bool>>> = Mutex::new(None);
    let key = format!("{dtype:?}");
    if let Some(v) = SEEN.lock().unwrap().get_or_insert_with(HashMap::new).get(&key) {
        return *v;
    }
    let probe = || -> Result<bool, candle_core::Error> {
        let k = 1024;
        let w: Vec<f32> = (0..64 * k).map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0).collect();
        let x: Vec<f32> = (0..3 * k).map(|i| (i * 104729 % 997) as f32 / 498.0 - 1.0).collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (64, k), &Device::Cpu)?, dtype)?;
        let mm = QMatMul::from_qtensor(w)?;
        let x = Tensor::from_vec(x, (3, k), &Device::Cpu)?;
        let batch = mm.forward(&x)?.narrow(0, 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let alone = mm.forward(&x.narrow(0, 1, 1)?)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(batch == alone)
    };
    let ok = probe().unwrap_or(false);
    SEEN.lock().unwrap().get_or_insert_with(HashMap::new).insert(key, ok);
    ok
}

/// A frozen quantized projection with an optional LoRA adapter (the hook training attaches to).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    /// The same weights, for kiln's own kernels.
    raw: Arc<QTensor>,
    /// kiln's kernel for the weight type, when there is one (else candle's).
    kernel: Option<qmm::Kind>,
    /// Run single rows as a batch of two (see [`single_row_consistent`]).
    pad_single: bool,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// The adapter, if one is attached.
    pub adapter: Option<LoraAdapter>,
}

/// The same values as a Q5_0 tensor, as Q8_0: each block keeps its scale and its 5-bit
/// integers become 8-bit ones, so every weight is unchanged (lossless), while candle's Q8_0 dot
/// product is vectorised (its Q5_0 one is scalar: 77 % of prefill time on gemma-3-270m, whose
/// 640-wide rows cannot use Q4_K and are stored as Q5_0).
pub fn q5_0_as_q8_0(q: &QTensor) -> Result<QTensor, candle_core::Error> {
    use candle_core::quantized::GgmlDType;
    const Q5: usize = 22;
    let raw = q.data()?;
    if raw.len() % Q5 != 0 {
        candle_core::bail!("a Q5_0 tensor of {} bytes is not a whole number of 22-byte blocks", raw.len());
    }
    let mut out = Vec::with_capacity(raw.len() / Q5 * 34);
    for b in raw.chunks_exact(Q5) {
        out.extend_from_slice(&b[0..2]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        let value = |low: u8, bit: u32| (((low as u32) | (((qh >> bit) & 1) << 4)) as i32 - 16) as i8 as u8;
        for j in 0..16 {
            out.push(value(qs[j] & 0x0F, j as u32));
        }
        for j in 0..16 {
            out.push(value(qs[j] >> 4, j as u32 + 16));
        }
    }
    candle_core::quantized::ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &out, q.shape().dims().to_vec(), &Device::Cpu)
}

impl Linear {
    fn new(q: QTensor) -> Result<Linear, candle_core::Error> {
        // Without kiln's kernels, Q5_0 goes through candle as Q8_0 (its Q5_0 path is scalar).
        let widen = q.dtype() == candle_core::quantized::GgmlDType::Q5_0 && qmm::Kind::of(q.dtype()).is_none();
        let q = if widen { q5_0_as_q8_0(&q)? } else { q };
        Linear::from_arc(Arc::new(q))
    }

    /// A projection on weights shared with something else (the tied embedding).
    fn from_arc(q: Arc<QTensor>) -> Result<Linear, candle_core::Error> {
        let (out_features, in_features) = q.shape().dims2()?;
        let kernel = qmm::Kind::of(q.dtype());
        let pad_single = kernel.is_none() && !single_row_consistent(q.dtype());
        Ok(Linear { weight: QMatMul::from_arc(q.clone())?, raw: q, kernel, pad_single, in_features, out_features, adapter: None })
    }

    /// `x W^T` (+ the adapter's contribution), x: (rows, in). A row's result does not depend
    /// on the other rows.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, candle_core::Error> {
        let y = if let (Some(kind), Device::Cpu, DType::F32, 2) = (self.kernel, x.device(), x.dtype(), x.rank()) {
            let m = x.dim(0)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let mut out = vec![0f32; m * self.out_features];
            qmm::matmul(kind, &self.raw.data()?, self.out_features, self.in_features, &xs, m, &mut out);
            Tensor::from_vec(out, (m, self.out_features), x.device())?
        } else if self.pad_single && x.dim(0)? == 1 {
            self.weight.forward(&Tensor::cat(&[x, x], 0)?)?.narrow(0, 0, 1)?
        } else {
            self.weight.forward(x)?
        };
        match &self.adapter {
            None => Ok(y),
            Some(ad) => y + (x.matmul(&ad.a.t()?)?.matmul(&ad.b.t()?)? * ad.scale)?,
        }
    }
}

/// Which projections exist in a layer, by PEFT's names.
pub const TARGET_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Layer {
    attn_norm: Tensor,
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection.
    pub o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    /// Gate projection.
    pub gate: Linear,
    /// Up projection.
    pub up: Linear,
    /// Down projection.
    pub down: Linear,
    post_ffn_norm: Option<Tensor>,
    window: Option<usize>,
    rope: usize,
}

impl Layer {
    /// The projection named as in PEFT (`q_proj`, ...).
    pub fn projection_mut(&mut self, name: &str) -> Option<&mut Linear> {
        Some(match name {
            "q_proj" => &mut self.q,
            "k_proj" => &mut self.k,
            "v_proj" => &mut self.v,
            "o_proj" => &mut self.o,
            "gate_proj" => &mut self.gate,
            "up_proj" => &mut self.up,
            "down_proj" => &mut self.down,
            _ => return None,
        })
    }
}

/// Precomputed rotary cos/sin for one base.
#[derive(Debug, Clone)]
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    max_pos: usize,
}

impl Rope {
    fn new(base: f32, dims: usize, max_pos: usize) -> Rope {
        let half = dims / 2;
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for i in 0..half {
                let freq = (base as f64).powf(-2.0 * i as f64 / dims as f64);
                let theta = p as f64 * freq;
                cos.push(theta.cos() as f32);
                sin.push(theta.sin() as f32);
            }
        }
        Rope { cos, sin, half, max_pos }
    }

    /// Rotate every head of one row in place.
    fn apply(&self, row: &mut [f32], head_dim: usize, pos: usize, style: RopeStyle) {
        let c = &self.cos[pos * self.half..(pos + 1) * self.half];
        let s = &self.sin[pos * self.half..(pos + 1) * self.half];
        for head in row.chunks_exact_mut(head_dim) {
            match style {
                RopeStyle::Neox => {
                    let (a, b) = head.split_at_mut(self.half);
                    for i in 0..self.half {
                        let (x0, x1) = (a[i], b[i]);
                        a[i] = x0 * c[i] - x1 * s[i];
                        b[i] = x0 * s[i] + x1 * c[i];
                    }
                }
                RopeStyle::Interleaved => {
                    for i in 0..self.half {
                        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = x0 * c[i] - x1 * s[i];
                        head[2 * i + 1] = x0 * s[i] + x1 * c[i];
                    }
                }
            }
        }
    }
}

/// Keys and values of one layer of one sequence: rows of `kv_heads * head_dim`, the first one
/// at absolute position `start`. Kept in f32: these small models' log-probs move by tenths of
/// a nat with an f16 cache, and exactness against the reference matters more than memory.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    start: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    /// On the tensor path (an accelerator): keys and values as (kv_heads, rows, head_dim)
    /// tensors on the model's device, the first row at position `start`.
    dk: Option<Tensor>,
    dv: Option<Tensor>,
}

/// The KV cache of one sequence.
#[derive(Debug, Clone, Default)]
pub struct SeqCache {
    layers: Vec<LayerKv>,
    len: usize,
}

impl SeqCache {
    /// Tokens seen so far (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Which rows of a step need logits.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// None (prefill only).
    Nothing,
    /// The last token's.
    Last,
    /// Every token's.
    All,
    /// These rows (indices into the step's tokens).
    Rows(Vec<usize>),
}

/// One sequence's part of a forward pass.
pub struct Step<'a> {
    /// Its cache (extended by this step).
    pub cache: &'a mut SeqCache,
    /// New tokens.
    pub tokens: &'a [u32],
    /// Rows that need logits.
    pub want: Want,
}

/// A loaded model.
pub struct Model {
    /// Shape.
    pub cfg: ModelConfig,
    /// The file it came from.
    pub path: PathBuf,
    embed: Arc<QTensor>,
    /// The blocks.
    pub layers: Vec<Layer>,
    final_norm: Tensor,
    output: Linear,
    ropes: Vec<Rope>,
    /// The rotary tables as (positions, head_dim / 2) cos and sin tensors on the device, one
    /// pair per `ropes` entry: present when attention runs as tensor operations.
    rope_tensors: Option<Vec<(Tensor, Tensor)>>,
    device: Device,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor, candle_core::Error> {
    candle_nn::ops::rms_norm(x, w, eps as f32)
}

impl Model {
    /// Load from an open GGUF (content already read) onto `device`: the CPU, with kiln's
    /// kernels and per-row attention, or an accelerator (CUDA), with candle's quantized kernels
    /// and attention as tensor operations.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        path: &Path,
        device: &Device,
    ) -> Result<Model, ModelError> {
        let cfg = ModelConfig::from_metadata(&content.metadata, path)?;
        let device = device.clone();
        let fmt = |what: String| ModelError::Format { path: path.to_path_buf(), what };
        let mut tensor = |name: &str| -> Result<QTensor, ModelError> {
            if !content.tensor_infos.contains_key(name) {
                return Err(fmt(format!("missing tensor {name}")));
            }
            content.tensor(reader, name, &device).map_err(|e| fmt(format!("tensor {name}: {e}")))
        };
        let embed = tensor("token_embd.weight")?;
        let (vocab, hidden) = embed.shape().dims2().map_err(|e| fmt(format!("token_embd.weight: {e}")))?;
        if hidden != cfg.hidden || vocab != cfg.vocab {
            return Err(fmt(format!(
                "token_embd.weight is {vocab} x {hidden}, metadata says vocabulary {} and hidden size {}",
                cfg.vocab, cfg.hidden
            )));
        }
        let embed = Arc::new(embed);
        let output = if content.tensor_infos.contains_key("output.weight") {
            Linear::from_arc(Arc::new(tensor("output.weight")?))?
        } else {
            Linear::from_arc(embed.clone())?
        };
        let dense = |q: QTensor| q.dequantize(&device);
        let final_norm = dense(tensor("output_norm.weight")?)?;
        let max_pos = cfg.context.min(16384);
        let mut ropes = vec![Rope::new(cfg.rope_base, cfg.rope_dims, max_pos)];
        if cfg.sliding_window.is_some() && cfg.rope_base_local != cfg.rope_base {
            ropes.push(Rope::new(cfg.rope_base_local, cfg.rope_dims, max_pos));
        }
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("blk.{l}");
            let gemma = cfg.arch == Arch::Gemma3;
            let opt_norm = |t: &mut dyn FnMut(&str) -> Result<QTensor, ModelError>, n: &str| -> Result<Option<Tensor>, ModelError> {
                if gemma {
                    Ok(Some(dense(t(&format!("{p}.{n}.weight"))?)?))
                } else {
                    Ok(None)
                }
            };
            let window = cfg.layer_window(l);
            let layer = Layer {
                attn_norm: dense(tensor(&format!("{p}.attn_norm.weight"))?)?,
                q: Linear::new(tensor(&format!("{p}.attn_q.weight"))?)?,
                k: Linear::new(tensor(&format!("{p}.attn_k.weight"))?)?,
                v: Linear::new(tensor(&format!("{p}.attn_v.weight"))?)?,
                o: Linear::new(tensor(&format!("{p}.attn_output.weight"))?)?,
                q_norm: opt_norm(&mut tensor, "attn_q_norm")?,
                k_norm: opt_norm(&mut tensor, "attn_k_norm")?,
                post_attn_norm: opt_norm(&mut tensor, "post_attention_norm")?,
                ffn_norm: dense(tensor(&format!("{p}.ffn_norm.weight"))?)?,
                gate: Linear::new(tensor(&format!("{p}.ffn_gate.weight"))?)?,
                up: Linear::new(tensor(&format!("{p}.ffn_up.weight"))?)?,
                down: Linear::new(tensor(&format!("{p}.ffn_down.weight"))?)?,
                post_ffn_norm: opt_norm(&mut tensor, "post_ffw_norm")?,
                window,
                rope: if window.is_some() && ropes.len() > 1 { 1 } else { 0 },
            };
            let expect = [
                ("attn_q", &layer.q, cfg.hidden, cfg.heads * cfg.head_dim),
                ("attn_k", &layer.k, cfg.hidden, cfg.kv_heads * cfg.head_dim),
                ("attn_v", &layer.v, cfg.hidden, cfg.kv_heads * cfg.head_dim),
                ("attn_output", &layer.o, cfg.heads * cfg.head_dim, cfg.hidden),
                ("ffn_gate", &layer.gate, cfg.hidden, cfg.ffn),
                ("ffn_up", &layer.up, cfg.hidden, cfg.ffn),
                ("ffn_down", &layer.down, cfg.ffn, cfg.hidden),
            ];
            for (name, lin, i, o) in expect {
                if lin.in_features != i || lin.out_features != o {
                    return Err(fmt(format!(
                        "{p}.{name}.weight is {} x {}, expected {o} x {i}",
                        lin.out_features, lin.in_features
                    )));
                }
            }
            layers.push(layer);
        }
        let mut model = Model { cfg, path: path.to_path_buf(), embed, layers, final_norm, output, ropes, rope_tensors: None, device };
        if !model.device.is_cpu() {
            model.set_tensor_attention(true)?;
        }
        Ok(model)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Run attention as tensor operations on the model's device (the accelerator path, also
    /// available on the CPU, where it checks the accelerator's arithmetic against kiln's
    /// per-row attention) or, with `false` on the CPU, per row and head with rayon. Caches
    /// made on one path cannot be continued on the other.
    pub fn set_tensor_attention(&mut self, on: bool) -> Result<(), ModelError> {
        if !on && !self.device.is_cpu() {
            return Err(ModelError::Request("per-row attention runs only on the CPU".into()));
        }
        self.rope_tensors = if on {
            let mut t = Vec::with_capacity(self.ropes.len());
            for r in &self.ropes {
                let cos = Tensor::from_slice(&r.cos, (r.max_pos, r.half), &self.device)?;
                let sin = Tensor::from_slice(&r.sin, (r.max_pos, r.half), &self.device)?;
                t.push((cos, sin));
            }
            Some(t)
        } else {
            None
        };
        Ok(())
    }

    /// True when attention runs as tensor operations (see [`Model::set_tensor_attention`]).
    pub fn tensor_attention(&self) -> bool {
        self.rope_tensors.is_some()
    }

    /// A fresh, empty cache for one sequence.
    pub fn new_cache(&self) -> SeqCache {
        SeqCache { layers: vec![LayerKv::default(); self.cfg.layers], len: 0 }
    }

    /// The largest position the rotary tables cover.
    pub fn max_positions(&self) -> usize {
        self.ropes[0].max_pos
    }

    /// Embed token ids: (rows, hidden).
    fn embed(&self, ids: &[u32]) -> Result<Tensor, candle_core::Error> {
        let t = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let x = self.embed.embedding(&t)?;
        if self.cfg.arch == Arch::Gemma3 {
            x * (self.cfg.hidden as f64).sqrt()
        } else {
            Ok(x)
        }
    }

    /// Hidden states after the last block (before the final norm) for every new token of every
    /// step; caches are extended. Returns (rows, hidden).
    pub fn forward_hidden(&self, steps: &mut [Step<'_>]) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut owner = Vec::new();
        for (s, st) in steps.iter().enumerate() {
            let on_tensors = st.cache.layers.first().is_some_and(|c| c.dk.is_some());
            if st.cache.len > 0 && on_tensors != self.tensor_attention() {
                let (made, now) = if on_tensors { ("tensor", "per-row") } else { ("per-row", "tensor") };
                return Err(ModelError::Request(format!(
                    "a sequence of {} tokens cached by {made} attention cannot go on with {now} attention",
                    st.cache.len
                )));
            }
            for (j, &t) in st.tokens.iter().enumerate() {
                if t as usize >= cfg.vocab {
                    return Err(ModelError::Request(format!("token id {t} is outside the vocabulary of {}", cfg.vocab)));
                }
                ids.push(t);
                pos.push(st.cache.len + j);
                owner.push(s);
            }
        }
        if let Some(&p) = pos.iter().max() {
            if p >= self.max_positions() {
                return Err(ModelError::Request(format!(
                    "position {p} is beyond the {} positions this model supports here",
                    self.max_positions()
                )));
            }
        }
        let n = ids.len();
        if n == 0 {
            return Ok(Tensor::zeros((0, cfg.hidden), DType::F32, &self.device)?);
        }
        let mut x = self.embed(&ids)?;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, cfg.eps)?;
            let mut q = layer.q.forward(&h)?;
            let mut k = layer.k.forward(&h)?;
            let v = layer.v.forward(&h)?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = rms_norm(&q.reshape((n * nh, hd))?, qn, cfg.eps)?;
                k = rms_norm(&k.reshape((n * nkv, hd))?, kn, cfg.eps)?;
            }
            if let Some(tables) = &self.rope_tensors {
                let attn = self.attend_tensors(l, layer, &tables[layer.rope], &q, &k, &v, steps, &pos)?;
                x = self.finish_layer(layer, x, &attn)?;
                self.trim_window(l, layer, steps);
                continue;
            }
            let mut qv = q.flatten_all()?.to_vec1::<f32>()?;
            let mut kv = k.flatten_all()?.to_vec1::<f32>()?;
            let vv = v.flatten_all()?.to_vec1::<f32>()?;
            let rope = &self.ropes[layer.rope];
            let style = cfg.rope_style();
            qv.par_chunks_mut(nh * hd).zip(pos.par_iter()).for_each(|(row, &p)| rope.apply(row, hd, p, style));
            kv.par_chunks_mut(nkv * hd).zip(pos.par_iter()).for_each(|(row, &p)| rope.apply(row, hd, p, style));
            // Append this step's keys and values to each sequence's cache.
            let kw = nkv * hd;
            let mut r = 0;
            for st in steps.iter_mut() {
                let c = &mut st.cache.layers[l];
                let t = st.tokens.len();
                c.k.extend_from_slice(&kv[r * kw..(r + t) * kw]);
                c.v.extend_from_slice(&vv[r * kw..(r + t) * kw]);
                r += t;
            }
            let caches: Vec<&LayerKv> = steps.iter().map(|st| &st.cache.layers[l]).collect();
            let mut out = vec![0f32; n * nh * hd];
            let group = nh / nkv;
            let scale = cfg.attn_scale;
            let window = layer.window;
            // Attention per row and head, in f32, over the keys the row may see.
            out.par_chunks_mut(nh * hd).enumerate().for_each_init(Vec::<f32>::new, |scores, (row, o)| {
                let c = caches[owner[row]];
                let p = pos[row];
                let first = window.map_or(0, |w| (p + 1).saturating_sub(w)).max(c.start);
                let qrow = &qv[row * nh * hd..(row + 1) * nh * hd];
                for head in 0..nh {
                    let kh = head / group;
                    let qh = &qrow[head * hd..(head + 1) * hd];
                    scores.clear();
                    let mut max = f32::NEG_INFINITY;
                    for kp in first..=p {
                        let i = kp - c.start;
                        let s = dot(qh, &c.k[i * kw + kh * hd..i * kw + (kh + 1) * hd]) * scale;
                        max = max.max(s);
                        scores.push(s);
                    }
                    let mut sum = 0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    let oh = &mut o[head * hd..(head + 1) * hd];
                    for (idx, kp) in (first..=p).enumerate() {
                        let i = kp - c.start;
                        let w = scores[idx] * inv;
                        for (a, b) in oh.iter_mut().zip(&c.v[i * kw + kh * hd..i * kw + (kh + 1) * hd]) {
                            *a += w * b;
                        }
                    }
                }
            });
            drop(caches);
            let attn = Tensor::from_vec(out, (n, nh * hd), &self.device)?;
            x = self.finish_layer(layer, x, &attn)?;
            self.trim_window(l, layer, steps);
        }
        for st in steps.iter_mut() {
            st.cache.len += st.tokens.len();
        }
        Ok(x)
    }

    /// The rest of a block after attention: output projection, residual, feed-forward.
    fn finish_layer(&self, layer: &Layer, x: Tensor, attn: &Tensor) -> Result<Tensor, ModelError> {
        let eps = self.cfg.eps;
        let mut a = layer.o.forward(attn)?;
        if let Some(pn) = &layer.post_attn_norm {
            a = rms_norm(&a, pn, eps)?;
        }
        let x = (x + a)?;
        let h = rms_norm(&x, &layer.ffn_norm, eps)?;
        let g = layer.gate.forward(&h)?;
        let u = layer.up.forward(&h)?;
        let act = match self.cfg.arch {
            Arch::Gemma3 => g.gelu()?,
            Arch::Llama => candle_nn::ops::silu(&g)?,
        };
        let mut m = layer.down.forward(&(act * u)?)?;
        if let Some(pn) = &layer.post_ffn_norm {
            m = rms_norm(&m, pn, eps)?;
        }
        Ok((x + m)?)
    }

    /// Sliding-window layers keep only the keys a future query can still see (trimmed in
    /// steps of a window, so that the copy is rare).
    fn trim_window(&self, l: usize, layer: &Layer, steps: &mut [Step<'_>]) {
        let Some(w) = layer.window else { return };
        let kw = self.cfg.kv_heads * self.cfg.head_dim;
        for st in steps.iter_mut() {
            let next = st.cache.len + st.tokens.len();
            let c = &mut st.cache.layers[l];
            let keep_from = (next + 1).saturating_sub(w);
            if keep_from > c.start + w {
                let drop_rows = keep_from - c.start;
                if let (Some(k), Some(v)) = (&c.dk, &c.dv) {
                    let rows = k.dim(1).expect("a (heads, rows, dim) cache");
                    // A copy, so that the dropped rows' memory is freed.
                    let keep = |t: &Tensor| t.narrow(1, drop_rows, rows - drop_rows).and_then(|t| t.contiguous());
                    if let (Ok(k), Ok(v)) = (keep(k), keep(v)) {
                        c.dk = Some(k);
                        c.dv = Some(v);
                        c.start = keep_from;
                    }
                } else {
                    c.k.drain(..drop_rows * kw);
                    c.v.drain(..drop_rows * kw);
                    c.start = keep_from;
                }
            }
        }
    }

    /// Attention of one layer as tensor operations on the model's device: rotary embedding
    /// at each row's own position, this step's keys and values appended to each sequence's
    /// cache, then per sequence `softmax(q K^T * scale + mask) V` with grouped-query heads and
    /// the sliding window. Returns (rows, heads * head_dim).
    #[allow(clippy::too_many_arguments)]
    fn attend_tensors(
        &self,
        l: usize,
        layer: &Layer,
        (cos, sin): &(Tensor, Tensor),
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        steps: &mut [Step<'_>],
        pos: &[usize],
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        let (n, hd, nh, nkv) = (pos.len(), cfg.head_dim, cfg.heads, cfg.kv_heads);
        let group = nh / nkv;
        let idx = Tensor::from_iter(pos.iter().map(|&p| p as u32), &self.device)?;
        let (c, s) = (cos.index_select(&idx, 0)?.unsqueeze(1)?, sin.index_select(&idx, 0)?.unsqueeze(1)?);
        // Each row is its own batch entry, so that it rotates by its own position.
        let rotate = |x: &Tensor, heads: usize| -> Result<Tensor, candle_core::Error> {
            let x = x.reshape((n, heads, 1, hd))?.contiguous()?;
            let r = match cfg.rope_style() {
                RopeStyle::Neox => candle_nn::rotary_emb::rope(&x, &c, &s)?,
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &c, &s)?,
            };
            r.reshape((n, heads, hd))
        };
        let q = rotate(q, nh)?;
        let k = rotate(k, nkv)?;
        let v = v.reshape((n, nkv, hd))?;
        let mut outs = Vec::with_capacity(steps.len());
        let mut r = 0;
        for st in steps.iter_mut() {
            let t = st.tokens.len();
            if t == 0 {
                continue;
            }
            let past = st.cache.len;
            let cache = &mut st.cache.layers[l];
            // (kv_heads, t, head_dim), appended to the cache.
            let kn = k.narrow(0, r, t)?.transpose(0, 1)?.contiguous()?;
            let vn = v.narrow(0, r, t)?.transpose(0, 1)?.contiguous()?;
            let (kc, vc) = match (&cache.dk, &cache.dv) {
                (Some(kc), Some(vc)) => (Tensor::cat(&[kc, &kn], 1)?, Tensor::cat(&[vc, &vn], 1)?),
                _ => {
                    cache.start = 0;
                    (kn, vn)
                }
            };
            cache.dk = Some(kc.clone());
            cache.dv = Some(vc.clone());
            // Row j (position past + j) sees the cache rows of positions first_j..=past + j.
            let first = |j: usize| layer.window.map_or(0, |w| (past + j + 1).saturating_sub(w)).max(cache.start);
            let (lo, hi) = (first(0) - cache.start, past + t - cache.start);
            let (kc, vc) = (kc.narrow(1, lo, hi - lo)?, vc.narrow(1, lo, hi - lo)?);
            let width = hi - lo;
            // (kv_heads, group * t, head_dim): the query heads of one key head, row-major.
            let qs = q.narrow(0, r, t)?.transpose(0, 1)?.reshape((nkv, group * t, hd))?.contiguous()?;
            let mut scores = (qs.matmul(&kc.t()?.contiguous()?)? * cfg.attn_scale as f64)?;
            if t > 1 {
                let mut mask = vec![0f32; t * width];
                for j in 0..t {
                    let (f, p) = (first(j) - cache.start - lo, past + j - cache.start - lo);
                    for (i, m) in mask[j * width..(j + 1) * width].iter_mut().enumerate() {
                        if i < f || i > p {
                            *m = f32::NEG_INFINITY;
                        }
                    }
                }
                let mask = Tensor::from_vec(mask, (t, width), &self.device)?;
                scores = scores.reshape((nkv, group, t, width))?.broadcast_add(&mask)?.reshape((nkv, group * t, width))?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let o = probs.matmul(&vc.contiguous()?)?; // (kv_heads, group * t, head_dim)
            outs.push(o.reshape((nh, t, hd))?.transpose(0, 1)?.reshape((t, nh * hd))?);
            r += t;
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// Logits (rows, vocab) for hidden states (rows, hidden).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let h = rms_norm(hidden, &self.final_norm, self.cfg.eps)?;
        Ok(self.output.forward(&h)?)
    }

    /// One forward pass over a batch of steps; returns, per step, the logits of the rows it
    /// wanted (each a vector over the vocabulary), in row order.
    pub fn forward(&self, steps: &mut [Step<'_>]) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        let mut rows = Vec::new();
        let mut counts = Vec::new();
        let mut base = 0;
        for st in steps.iter() {
            let t = st.tokens.len();
            let wanted: Vec<usize> = match &st.want {
                Want::Nothing => vec![],
                Want::Last => (t > 0).then(|| t - 1).into_iter().collect(),
                Want::All => (0..t).collect(),
                Want::Rows(r) => r.clone(),
            };
            if let Some(bad) = wanted.iter().find(|&&r| r >= t) {
                return Err(ModelError::Request(format!("logits wanted for row {bad} of a step of {t} tokens")));
            }
            counts.push(wanted.len());
            rows.extend(wanted.into_iter().map(|r| (base + r) as u32));
            base += t;
        }
        let hidden = self.forward_hidden(steps)?;
        let mut out = Vec::with_capacity(steps.len());
        if rows.is_empty() {
            return Ok(counts.iter().map(|_| Vec::new()).collect());
        }
        let idx = Tensor::from_vec(rows, counts.iter().sum::<usize>(), &self.device)?;
        let picked = hidden.index_select(&idx, 0)?;
        let logits = self.logits(&picked)?.to_vec2::<f32>()?;
        let mut it = logits.into_iter();
        for c in counts {
            out.push(it.by_ref().take(c).collect());
        }
        Ok(out)
    }
}

/// Dot product with eight independent accumulators (vectorises with AVX2/FMA).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for j in 0..8 {
            acc[j] += a[i * 8 + j] * b[i * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// log-softmax of one row of logits, in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&x| x as f64 - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_0_becomes_q8_0_without_changing_a_weight() {
        let k = 256;
        let w: Vec<f32> = (0..8 * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 32) as f32 * 0.1)).collect();
        let q5 = QTensor::quantize(&Tensor::from_vec(w, (8, k), &Device::Cpu).unwrap(), candle_core::quantized::GgmlDType::Q5_0).unwrap();
        let q8 = q5_0_as_q8_0(&q5).unwrap();
        assert_eq!(q8.dtype(), candle_core::quantized::GgmlDType::Q8_0);
        let a = q5.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = q8.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
    }
}

