//! kiln's transformer: gemma3 and llama from GGUF, weights kept quantized, a batch of
//! sequences with their own lengths and positions in one forward pass, a KV cache per sequence
//! (sliding-window layers trim theirs), LoRA hooks on every projection, and logits computed
//! only for the rows asked for.
//!
//! Row independence: the projections work row by row (per-row activation quantization) and
//! attention runs per sequence, so a sequence's logits do not depend on what else is in the
//! batch.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use rayon::prelude::*;

use super::profile::phase;
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

/// Rows from which a projection off the CPU dequantizes its weight for a dense product.
const DENSE_ROWS: usize = 512;

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
        // The probe is of candle's CPU kernels; other devices have their own.
        let pad_single = kernel.is_none() && q.device().is_cpu() && !single_row_consistent(q.dtype());
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
        } else if !x.device().is_cpu() && x.rank() == 2 && x.dim(0)? >= DENSE_ROWS {
            // Many rows at once (prompts, scoring): the weight dequantized on the device and a
            // dense product on the tensor cores beat the quantized kernels, which have none.
            phase(x.device(), "dense-products", || x.matmul(&self.raw.dequantize(x.device())?.t()?))?
        } else if self.pad_single && x.dim(0)? == 1 {
            self.weight.forward(&Tensor::cat(&[x, x], 0)?)?.narrow(0, 0, 1)?
        } else {
            self.weight.forward(x)?
        };
        self.add_adapter(x, y)
    }

    /// `y` (the frozen product of `x`) plus the adapter's contribution, if there is one.
    fn add_adapter(&self, x: &Tensor, y: Tensor) -> Result<Tensor, candle_core::Error> {
        match &self.adapter {
            None => Ok(y),
            Some(ad) => y + (x.matmul(&ad.a.t()?)?.matmul(&ad.b.t()?)? * ad.scale)?,
        }
    }
}

/// Several projections of the same input (each with its adapter, if any): on the CPU with
/// kiln's kernels, the input is quantized once and the products share one call to the pool;
/// each result is what [`Linear::forward`] gives.
pub fn forward_many(linears: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>, candle_core::Error> {
    let fused = matches!((x.device(), x.dtype(), x.rank()), (Device::Cpu, DType::F32, 2))
        && linears.iter().all(|l| l.kernel.is_some() && l.in_features == linears[0].in_features);
    if !fused || linears.len() < 2 {
        return linears.iter().map(|l| l.forward(x)).collect();
    }
    let (m, k) = x.dims2()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let data = linears.iter().map(|l| l.raw.data()).collect::<Result<Vec<_>, _>>()?;
    let mut outs: Vec<Vec<f32>> = linears.iter().map(|l| vec![0f32; m * l.out_features]).collect();
    let mut products: Vec<qmm::Product> = linears
        .iter()
        .zip(&data)
        .zip(outs.iter_mut())
        .map(|((l, w), out)| qmm::Product { kind: l.kernel.expect("checked above"), w, n: l.out_features, out })
        .collect();
    qmm::matmul_many(&mut products, k, &xs, m);
    linears
        .iter()
        .zip(outs)
        .map(|(l, out)| {
            l.add_adapter(x, Tensor::from_vec(out, (m, l.out_features), x.device())?)
        })
        .collect()
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
}

/// The KV cache of one sequence: per layer on the CPU path; on the tensor path, pages of the
/// model's [`Arena`] (the same pages in every layer), handed back when the cache is dropped.
#[derive(Debug, Default)]
pub struct SeqCache {
    layers: Vec<LayerKv>,
    len: usize,
    /// Arena pages: position p is row `pages[p / PAGE] * PAGE + p % PAGE` of the arena.
    pages: Vec<u32>,
    arena: Option<Arc<Mutex<Arena>>>,
}

impl Drop for SeqCache {
    fn drop(&mut self) {
        if let Some(a) = &self.arena {
            if let Ok(mut a) = a.lock() {
                a.free.append(&mut self.pages);
            }
        }
    }
}

/// Rows per arena page.
const PAGE: usize = 16;

/// Keys and values of every sequence on the tensor path: per layer one (rows, kv_heads *
/// head_dim) tensor on the device, in pages of [`PAGE`] rows that caches own. A forward pass
/// writes all its new rows with one scatter per layer and gathers the rows each query sees with
/// one gather, whatever the batch size.
#[derive(Debug)]
pub struct Arena {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    pages: usize,
    free: Vec<u32>,
}

impl Arena {
    /// Make room for `more` pages beyond those free (the tensors grow, old rows copied).
    fn reserve(&mut self, more: usize, kw: usize, device: &Device) -> Result<(), candle_core::Error> {
        if self.free.len() >= more {
            return Ok(());
        }
        let want = (self.pages + more - self.free.len()).max(2 * self.pages).max(64);
        let extra = (want - self.pages) * PAGE;
        let grow = |t: &Tensor| -> Result<Tensor, candle_core::Error> {
            let z = Tensor::zeros((extra, kw), DType::F32, device)?;
            if t.dim(0)? == 0 {
                Ok(z)
            } else {
                Tensor::cat(&[t, &z], 0)
            }
        };
        self.k = self.k.iter().map(grow).collect::<Result<_, _>>()?;
        self.v = self.v.iter().map(grow).collect::<Result<_, _>>()?;
        self.free.extend((self.pages as u32..want as u32).rev());
        self.pages = want;
        Ok(())
    }
}

/// What one tensor-path forward pass needs in every layer, made once: where the new rows go,
/// and per attention window the rows each query gathers and its mask.
struct Plan {
    /// (n) arena rows of the new keys and values.
    write: Tensor,
    /// Batch rows of the one-token steps, in the order of `decode`, when not all rows are.
    decode_rows: Option<Tensor>,
    /// Per window (None: global): the one-token steps' gather (B * L) and mask (B, 1, 1, L).
    decode: Vec<(Option<usize>, Tensor, Tensor, usize)>,
    /// Longer steps, attended in padded groups.
    prefill: Vec<PrefillGroup>,
    /// Batch row order of [decode rows..., prefill rows...] back to the batch's, when mixed.
    unpermute: Option<Tensor>,
}

/// Longer steps attended together: P steps padded to the longest, T query rows each.
struct PrefillGroup {
    p: usize,
    t: usize,
    /// (P * T) pass rows of the queries; a padding row repeats its step's first row.
    queries: Tensor,
    /// Which of the (P * T) padded rows are real, in step order.
    real: Tensor,
    /// Per window (None: global): the gather (P * L) and mask (P, T, L), and L.
    per: Vec<(Option<usize>, Tensor, Tensor, usize)>,
}

/// Scores a prefill group may hold at once (P * heads * T * L values).
const PREFILL_SCORES: usize = 1 << 27;

/// An additive attention mask (P, T, L): 0 where `first[i][j] <= c <= last[i][j]`, -inf
/// elsewhere; built on the device from the per-row bounds.
fn band_mask(first: Vec<f32>, last: Vec<f32>, (p, t, l): (usize, usize, usize), dev: &Device) -> Result<Tensor, candle_core::Error> {
    let lo = Tensor::from_vec(first, (p, t, 1), dev)?;
    let hi = Tensor::from_vec(last, (p, t, 1), dev)?;
    let c = Tensor::arange(0f32, l as f32, dev)?.reshape((1, 1, l))?;
    let visible = (c.broadcast_ge(&lo)? * c.broadcast_le(&hi)?)?;
    visible.where_cond(&Tensor::zeros((p, t, l), DType::F32, dev)?, &Tensor::full(f32::NEG_INFINITY, (p, t, l), dev)?)
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

/// The arena row of position `p` of a cache with these pages.
fn row_of(pages: &[u32], p: usize) -> u32 {
    pages[p / PAGE] * PAGE as u32 + (p % PAGE) as u32
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

impl Step<'_> {
    /// The rows of this step whose logits it wants; a row beyond its tokens is an error.
    fn wanted(&self) -> Result<Vec<usize>, ModelError> {
        let t = self.tokens.len();
        let wanted: Vec<usize> = match &self.want {
            Want::Nothing => vec![],
            Want::Last => (t > 0).then(|| t - 1).into_iter().collect(),
            Want::All => (0..t).collect(),
            Want::Rows(r) => r.clone(),
        };
        if let Some(bad) = wanted.iter().find(|&&r| r >= t) {
            return Err(ModelError::Request(format!("logits wanted for row {bad} of a step of {t} tokens")));
        }
        Ok(wanted)
    }
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
    /// The tensor path's KV arena.
    arena: Arc<Mutex<Arena>>,
    device: Device,
    /// Sampling candidates and scoring log-probabilities reduced on the device (on by default
    /// with tensor attention); off, whole logits rows go to the host.
    device_reductions: bool,
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
        if device.is_cpu() {
            super::memory::keep_freed_buffers();
        }
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
        let empty = || Tensor::zeros((0, cfg.kv_heads * cfg.head_dim), DType::F32, &device);
        let arena = Arena { k: (0..cfg.layers).map(|_| empty()).collect::<Result<_, _>>()?, v: (0..cfg.layers).map(|_| empty()).collect::<Result<_, _>>()?, pages: 0, free: Vec::new() };
        let arena = Arc::new(Mutex::new(arena));
        let mut model = Model { cfg, path: path.to_path_buf(), embed, layers, final_norm, output, ropes, rope_tensors: None, arena, device, device_reductions: true };
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

    /// With tensor attention, reduce logits on the device (the next token's candidates, the
    /// scored tokens' log-probabilities) instead of sending whole rows to the host: on by
    /// default; off is the reference the reductions are tested against.
    pub fn set_device_reductions(&mut self, on: bool) {
        self.device_reductions = on;
    }

    /// True when logits are reduced on the device (see [`Model::set_device_reductions`]).
    pub fn device_reductions(&self) -> bool {
        self.device_reductions && self.tensor_attention()
    }

    /// True when attention runs as tensor operations (see [`Model::set_tensor_attention`]).
    pub fn tensor_attention(&self) -> bool {
        self.rope_tensors.is_some()
    }

    /// A fresh, empty cache for one sequence.
    pub fn new_cache(&self) -> SeqCache {
        if self.tensor_attention() {
            SeqCache { layers: Vec::new(), len: 0, pages: Vec::new(), arena: Some(self.arena.clone()) }
        } else {
            SeqCache { layers: vec![LayerKv::default(); self.cfg.layers], len: 0, pages: Vec::new(), arena: None }
        }
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
            let on_tensors = st.cache.arena.is_some();
            if (st.cache.len > 0 || on_tensors) && on_tensors != self.tensor_attention() {
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
        let dev = &self.device;
        let mut x = phase(dev, "embed", || self.embed(&ids))?;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
        // The tensor path holds the arena for the whole pass.
        let mut arena = if self.tensor_attention() { Some(self.arena.lock().map_err(|_| ModelError::Request("the KV arena was poisoned by a failed pass".into()))?) } else { None };
        let plan = match arena.as_deref_mut() {
            Some(a) => Some(phase(dev, "plan", || self.plan(a, steps))?),
            None => None,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = phase(dev, "qkv", || -> Result<_, candle_core::Error> {
                let h = rms_norm(&x, &layer.attn_norm, cfg.eps)?;
                let [mut q, mut k, v]: [Tensor; 3] = forward_many(&[&layer.q, &layer.k, &layer.v], &h)?.try_into().expect("three projections");
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    q = rms_norm(&q.reshape((n * nh, hd))?, qn, cfg.eps)?;
                    k = rms_norm(&k.reshape((n * nkv, hd))?, kn, cfg.eps)?;
                }
                Ok((q, k, v))
            })?;
            if let (Some(tables), Some(plan), Some(arena)) = (&self.rope_tensors, &plan, arena.as_deref()) {
                let attn = phase(dev, "attention", || self.attend_tensors(layer, &tables[layer.rope], (&arena.k[l], &arena.v[l]), plan, &q, &k, &v, &pos))?;
                x = self.finish_layer(layer, x, &attn)?;
                continue;
            }
            let attn = phase(dev, "attention", || self.attend_rows(l, layer, steps, &q, &k, &v, &pos, &owner))?;
            x = self.finish_layer(layer, x, &attn)?;
            self.trim_window(l, layer, steps);
        }
        for st in steps.iter_mut() {
            st.cache.len += st.tokens.len();
        }
        Ok(x)
    }

    /// Attention of one layer on the CPU, per row and head in f32 (rayon over rows): rotary
    /// embedding at each row's position, the new keys and values appended to each sequence's
    /// cache, then each row attends over the keys it may see. Returns (rows, heads * head_dim).
    #[allow(clippy::too_many_arguments)]
    fn attend_rows(&self, l: usize, layer: &Layer, steps: &mut [Step<'_>], q: &Tensor, k: &Tensor, v: &Tensor, pos: &[usize], owner: &[usize]) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        let (hd, nh, nkv, n) = (cfg.head_dim, cfg.heads, cfg.kv_heads, pos.len());
        let mut qv = q.flatten_all()?.to_vec1::<f32>()?;
        let mut kv = k.flatten_all()?.to_vec1::<f32>()?;
        let vv = v.flatten_all()?.to_vec1::<f32>()?;
        let rope = &self.ropes[layer.rope];
        let style = cfg.rope_style();
        // Rotary embedding is light: rows go to the pool only when there are many.
        if n < 64 {
            qv.chunks_mut(nh * hd).zip(pos).for_each(|(row, &p)| rope.apply(row, hd, p, style));
            kv.chunks_mut(nkv * hd).zip(pos).for_each(|(row, &p)| rope.apply(row, hd, p, style));
        } else {
            qv.par_chunks_mut(nh * hd).zip(pos.par_iter()).for_each(|(row, &p)| rope.apply(row, hd, p, style));
            kv.par_chunks_mut(nkv * hd).zip(pos.par_iter()).for_each(|(row, &p)| rope.apply(row, hd, p, style));
        }
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
        // Attention per row and head, in f32, over the keys the row may see. The heads that
        // share a key-value head go together, so that each cached key and value is read once
        // per row, not once per head; each head's arithmetic is as if it were alone.
        let attend = |(scores, inv): &mut (Vec<f32>, Vec<f32>), (row, o): (usize, &mut [f32])| {
            let c = caches[owner[row]];
            let p = pos[row];
            let first = window.map_or(0, |w| (p + 1).saturating_sub(w)).max(c.start);
            let len = p + 1 - first;
            let qrow = &qv[row * nh * hd..(row + 1) * nh * hd];
            for kh in 0..nkv {
                let heads = kh * group..(kh + 1) * group;
                scores.clear();
                scores.resize(group * len, 0.0);
                for (j, kp) in (first..=p).enumerate() {
                    let i = kp - c.start;
                    let key = &c.k[i * kw + kh * hd..i * kw + (kh + 1) * hd];
                    for (g, head) in heads.clone().enumerate() {
                        scores[g * len + j] = dot(&qrow[head * hd..(head + 1) * hd], key) * scale;
                    }
                }
                for (g, sc) in scores.chunks_exact_mut(len).enumerate() {
                    let max = sc.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let mut sum = 0f32;
                    for s in sc.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    inv[g] = 1.0 / sum;
                }
                for (j, kp) in (first..=p).enumerate() {
                    let i = kp - c.start;
                    let value = &c.v[i * kw + kh * hd..i * kw + (kh + 1) * hd];
                    for (g, head) in heads.clone().enumerate() {
                        let w = scores[g * len + j] * inv[g];
                        for (a, b) in o[head * hd..(head + 1) * hd].iter_mut().zip(value) {
                            *a += w * b;
                        }
                    }
                }
            }
        };
        // One row (decode at batch 1) is one task: handing it to the pool would only add the
        // pool's wake-up to every layer.
        let scratch = || (Vec::<f32>::new(), vec![0f32; group]);
        if n == 1 {
            attend(&mut scratch(), (0, &mut out));
        } else {
            out.par_chunks_mut(nh * hd).enumerate().for_each_init(scratch, attend);
        }
        drop(caches);
        Ok(Tensor::from_vec(out, (n, nh * hd), &self.device)?)
    }

    /// The rest of a block after attention: output projection, residual, feed-forward.
    fn finish_layer(&self, layer: &Layer, x: Tensor, attn: &Tensor) -> Result<Tensor, ModelError> {
        let (eps, dev) = (self.cfg.eps, &self.device);
        let x = phase(dev, "o", || -> Result<_, candle_core::Error> {
            let mut a = layer.o.forward(attn)?;
            if let Some(pn) = &layer.post_attn_norm {
                a = rms_norm(&a, pn, eps)?;
            }
            x + a
        })?;
        let (g, u) = phase(dev, "gate+up", || -> Result<_, candle_core::Error> {
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let [g, u]: [Tensor; 2] = forward_many(&[&layer.gate, &layer.up], &h)?.try_into().expect("two projections");
            Ok((g, u))
        })?;
        let act = phase(dev, "activation", || gated(self.cfg.arch, &g, &u))?;
        Ok(phase(dev, "down", || -> Result<_, candle_core::Error> {
            let mut m = layer.down.forward(&act)?;
            if let Some(pn) = &layer.post_ffn_norm {
                m = rms_norm(&m, pn, eps)?;
            }
            x + m
        })?)
    }

    /// Sliding-window layers of the CPU path keep only the keys a future query can still see
    /// (trimmed in steps of a window, so that the copy is rare). The arena keeps every row.
    fn trim_window(&self, l: usize, layer: &Layer, steps: &mut [Step<'_>]) {
        let Some(w) = layer.window else { return };
        let kw = self.cfg.kv_heads * self.cfg.head_dim;
        for st in steps.iter_mut() {
            let next = st.cache.len + st.tokens.len();
            let c = &mut st.cache.layers[l];
            let keep_from = (next + 1).saturating_sub(w);
            if keep_from > c.start + w {
                let drop_rows = keep_from - c.start;
                c.k.drain(..drop_rows * kw);
                c.v.drain(..drop_rows * kw);
                c.start = keep_from;
            }
        }
    }

    /// The tensor path's plan of one pass: pages for the new rows (the arena grows when
    /// needed), where each new row goes, and per distinct window the rows each query sees.
    fn plan(&self, arena: &mut Arena, steps: &mut [Step<'_>]) -> Result<Plan, ModelError> {
        let kw = self.cfg.kv_heads * self.cfg.head_dim;
        let need: usize = steps.iter().map(|st| (st.cache.len + st.tokens.len()).div_ceil(PAGE).saturating_sub(st.cache.pages.len())).sum();
        arena.reserve(need, kw, &self.device)?;
        let mut write = Vec::new();
        for st in steps.iter_mut() {
            if st.cache.arena.is_none() {
                st.cache.arena = Some(self.arena.clone());
            }
            while st.cache.pages.len() * PAGE < st.cache.len + st.tokens.len() {
                st.cache.pages.push(arena.free.pop().expect("reserved"));
            }
            write.extend((st.cache.len..st.cache.len + st.tokens.len()).map(|p| row_of(&st.cache.pages, p)));
        }
        let n = write.len();
        let write = Tensor::from_vec(write, n, &self.device)?;
        let mut windows: Vec<Option<usize>> = self.layers.iter().map(|l| l.window).collect();
        windows.sort();
        windows.dedup();
        // Visible positions of the query at position p: first..=p.
        let first = |w: Option<usize>, p: usize| w.map_or(0, |w| (p + 1).saturating_sub(w));
        let mut decode_idx = Vec::new(); // (step, batch row)
        let mut prefill_at = Vec::new();
        let mut r = 0;
        for (s, st) in steps.iter().enumerate() {
            match st.tokens.len() {
                0 => {}
                1 => decode_idx.push((s, r)),
                t => prefill_at.push((s, r, t)),
            }
            r += st.tokens.len();
        }
        let mut decode = Vec::new();
        if !decode_idx.is_empty() {
            let b = decode_idx.len();
            for &w in &windows {
                let lmax = decode_idx.iter().map(|&(s, _)| steps[s].cache.len + 1 - first(w, steps[s].cache.len)).max().unwrap_or(1);
                let mut idx = Vec::with_capacity(b * lmax);
                let mut mask = Vec::with_capacity(b * lmax);
                for &(s, _) in &decode_idx {
                    let (p, pages) = (steps[s].cache.len, &steps[s].cache.pages);
                    let lo = first(w, p);
                    for j in 0..lmax {
                        let visible = lo + j <= p;
                        idx.push(row_of(pages, if visible { lo + j } else { lo }));
                        mask.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                    }
                }
                decode.push((w, Tensor::from_vec(idx, b * lmax, &self.device)?, Tensor::from_vec(mask, (b, 1, 1, lmax), &self.device)?, lmax));
            }
        }
        // Longer steps in groups of similar length (longest first), each group padded to its
        // longest step and bounded in the scores it holds.
        let mut by_len = prefill_at.clone();
        by_len.sort_by_key(|&(s, _, t)| (std::cmp::Reverse(t), s));
        let mut groups: Vec<Vec<(usize, usize, usize)>> = Vec::new();
        for m in by_len {
            let span = |g: &[(usize, usize, usize)]| g.iter().map(|&(s, _, t)| steps[s].cache.len + t).max().unwrap_or(0);
            match groups.last_mut() {
                Some(g) if (g.len() + 1) * g[0].2 * span(g).max(steps[m.0].cache.len + m.2) * self.cfg.heads <= PREFILL_SCORES => g.push(m),
                _ => groups.push(vec![m]),
            }
        }
        let mut prefill = Vec::new();
        for g in &groups {
            let (p, t) = (g.len(), g[0].2);
            let mut queries = Vec::with_capacity(p * t);
            let mut real = Vec::new();
            for (i, &(_, r, ti)) in g.iter().enumerate() {
                queries.extend((0..t).map(|j| (r + j.min(ti - 1)) as u32));
                real.extend((0..ti).map(|j| (i * t + j) as u32));
            }
            let mut per = Vec::new();
            for &w in &windows {
                let l = g.iter().map(|&(s, _, ti)| steps[s].cache.len + ti - first(w, steps[s].cache.len)).max().unwrap_or(1);
                let (mut idx, mut lo, mut hi) = (Vec::with_capacity(p * l), Vec::with_capacity(p * t), Vec::with_capacity(p * t));
                for &(s, _, ti) in g {
                    let (past, pages) = (steps[s].cache.len, &steps[s].cache.pages);
                    let start = first(w, past);
                    idx.extend((0..l).map(|c| row_of(pages, if start + c < past + ti { start + c } else { start })));
                    for j in 0..t {
                        // A padding row sees its step's first key only (and is dropped).
                        let (f, e) = if j < ti { (first(w, past + j) - start, past + j - start) } else { (0, 0) };
                        lo.push(f as f32);
                        hi.push(e as f32);
                    }
                }
                per.push((w, Tensor::from_vec(idx, p * l, &self.device)?, band_mask(lo, hi, (p, t, l), &self.device)?, l));
            }
            let nq = queries.len();
            let nr = real.len();
            prefill.push(PrefillGroup { p, t, queries: Tensor::from_vec(queries, nq, &self.device)?, real: Tensor::from_vec(real, nr, &self.device)?, per });
        }
        let prefill_order: Vec<u32> = groups.iter().flatten().flat_map(|&(_, r, t)| (r..r + t).map(|x| x as u32)).collect();
        let order: Vec<u32> = decode_idx.iter().map(|&(_, r)| r as u32).chain(prefill_order).collect();
        let identity = order.iter().enumerate().all(|(i, &o)| i as u32 == o);
        let (decode_rows, unpermute) = if identity {
            (None, None)
        } else {
            let mut inv = vec![0u32; order.len()];
            for (i, &o) in order.iter().enumerate() {
                inv[o as usize] = i as u32;
            }
            let rows: Vec<u32> = decode_idx.iter().map(|&(_, r)| r as u32).collect();
            let decode_rows = if rows.is_empty() { None } else { Some(Tensor::from_vec(rows, decode_idx.len(), &self.device)?) };
            (decode_rows, Some(Tensor::from_vec(inv, order.len(), &self.device)?))
        };
        Ok(Plan { write, decode_rows, decode, prefill, unpermute })
    }

    /// Attention of one layer as tensor operations on the model's device: rotary embedding
    /// at each row's own position, the new keys and values scattered into the arena, then
    /// `softmax(q K^T * scale + mask) V` with grouped-query heads, all one-token steps in one
    /// batched product over their gathered rows, longer steps one by one. Returns (rows,
    /// heads * head_dim).
    #[allow(clippy::too_many_arguments)]
    fn attend_tensors(
        &self,
        layer: &Layer,
        (cos, sin): &(Tensor, Tensor),
        (ka, va): (&Tensor, &Tensor),
        plan: &Plan,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pos: &[usize],
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        let (n, hd, nh, nkv) = (pos.len(), cfg.head_dim, cfg.heads, cfg.kv_heads);
        let (group, kw) = (nh / nkv, nkv * hd);
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
        let dev = &self.device;
        let (q, k) = phase(dev, "attention:rope", || -> Result<_, candle_core::Error> { Ok((rotate(q, nh)?, rotate(k, nkv)?.reshape((n, kw))?)) })?;
        phase(dev, "attention:scatter", || -> Result<_, candle_core::Error> {
            ka.inplace_op3(&k.contiguous()?, &plan.write, &super::scatter::ScatterRows)?;
            va.inplace_op3(&v.reshape((n, kw))?.contiguous()?, &plan.write, &super::scatter::ScatterRows)
        })?;
        let scale = cfg.attn_scale as f64;
        // q: (B, kv_heads, group * t, head_dim); gathered rows: (B * L, kw); mask broadcast
        // over (B, kv_heads, group * t, L).
        let attend = |q: &Tensor, rows: &Tensor, mask: &Tensor, b: usize, l: usize, t: usize| -> Result<Tensor, candle_core::Error> {
            let gather = |a: &Tensor| a.index_select(rows, 0)?.reshape((b, l, nkv, hd))?.transpose(1, 2)?.contiguous();
            let (kg, vg) = phase(dev, "attention:gather", || -> Result<_, candle_core::Error> { Ok((gather(ka)?, gather(va)?)) })?;
            let scores = phase(dev, "attention:scores", || -> Result<_, candle_core::Error> {
                let scores = (q.matmul(&kg.transpose(2, 3)?)? * scale)?;
                scores.reshape((b, nkv, group, t, l))?.broadcast_add(&mask.reshape((b, 1, 1, t, l))?)?.reshape((b, nkv, group * t, l))
            })?;
            phase(dev, "attention:softmax-pv", || candle_nn::ops::softmax_last_dim(&scores)?.matmul(&vg))
        };
        let mut outs = Vec::new();
        if let Some((_, rows, mask, l)) = plan.decode.iter().find(|d| d.0 == layer.window) {
            let qd = match &plan.decode_rows {
                Some(r) => q.index_select(r, 0)?,
                None => q.narrow(0, 0, rows.dim(0)? / l)?,
            };
            let b = qd.dim(0)?;
            let o = attend(&qd.reshape((b, nkv, group, hd))?, rows, mask, b, *l, 1)?;
            outs.push(o.reshape((b, nh * hd))?);
        }
        for g in &plan.prefill {
            let (_, rows, mask, l) = g.per.iter().find(|d| d.0 == layer.window).expect("a plan for every window");
            let (p, t) = (g.p, g.t);
            // (P * T, heads * head_dim) -> (P, kv_heads, group * T, head_dim)
            let qs = phase(dev, "attention:layout", || {
                q.index_select(&g.queries, 0)?.reshape((p, t, nkv, group, hd))?.permute((0, 2, 3, 1, 4))?.reshape((p, nkv, group * t, hd))?.contiguous()
            })?;
            let o = attend(&qs, rows, mask, p, *l, t)?; // (P, kv_heads, group * T, head_dim)
            let o = phase(dev, "attention:layout", || o.reshape((p, nkv, group, t, hd))?.permute((0, 3, 1, 2, 4))?.reshape((p * t, nh * hd))?.index_select(&g.real, 0))?;
            outs.push(o);
        }
        let out = if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::cat(&outs, 0)? };
        Ok(match &plan.unpermute {
            Some(inv) => out.index_select(inv, 0)?,
            None => out,
        })
    }

    /// Logits (rows, vocab) for hidden states (rows, hidden).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let h = rms_norm(hidden, &self.final_norm, self.cfg.eps)?;
        Ok(self.output.forward(&h)?)
    }

    /// One forward pass, then the logits (rows, vocab) of the rows the steps want, in step
    /// and row order (None when no step wants any), and how many rows each step wants.
    fn wanted_logits(&self, steps: &mut [Step<'_>]) -> Result<(Option<Tensor>, Vec<usize>), ModelError> {
        let mut rows = Vec::new();
        let mut counts = Vec::with_capacity(steps.len());
        let mut base = 0;
        for st in steps.iter() {
            let wanted = st.wanted()?;
            counts.push(wanted.len());
            rows.extend(wanted.into_iter().map(|r| (base + r) as u32));
            base += st.tokens.len();
        }
        let hidden = self.forward_hidden(steps)?;
        if rows.is_empty() {
            return Ok((None, counts));
        }
        let n = rows.len();
        let idx = Tensor::from_vec(rows, n, &self.device)?;
        let logits = phase(&self.device, "logits", || self.logits(&hidden.index_select(&idx, 0)?))?;
        Ok((Some(logits), counts))
    }

    /// One forward pass; per step (each wanting one row, its last), the entries of that row's
    /// logits that can hold the row's `k` largest, as (logit, token id) in increasing id order: the logits stay on the
    /// device, which sends each row's block maxima, then the blocks that can hold the k
    /// largest (see [`super::sample::blocks_for_top_k`]) - about 64k values per row instead
    /// of the whole vocabulary.
    pub fn forward_top(&self, steps: &mut [Step<'_>], k: usize) -> Result<Vec<Vec<(f32, u32)>>, ModelError> {
        for st in steps.iter() {
            let wanted = st.wanted()?;
            if wanted.len() != 1 {
                return Err(ModelError::Request(format!("sampling candidates need one wanted row per step; a step of {} tokens wants {wanted:?}", st.tokens.len())));
            }
        }
        let (Some(logits), _) = self.wanted_logits(steps)? else {
            return Ok(Vec::new());
        };
        let dev = &self.device;
        let (r, vocab) = logits.dims2()?;
        let size = (1..=64).rev().find(|b| vocab % b == 0).unwrap_or(1);
        let nb = vocab / size;
        phase(dev, "to-host", || -> Result<_, ModelError> {
            let blocks = logits.reshape((r * nb, size))?;
            let maxima = blocks.max(candle_core::D::Minus1)?.reshape((r, nb))?.to_vec2::<f32>()?;
            let chosen: Vec<Vec<usize>> = maxima.par_iter().map(|m| super::sample::blocks_for_top_k(m, k)).collect();
            let flat: Vec<u32> = chosen.iter().enumerate().flat_map(|(i, js)| js.iter().map(move |&j| (i * nb + j) as u32)).collect();
            let n = flat.len();
            let values = blocks.index_select(&Tensor::from_vec(flat, n, dev)?, 0)?.flatten_all()?.to_vec1::<f32>()?;
            let mut at = 0;
            Ok(chosen
                .iter()
                .map(|js| {
                    let mut e = Vec::with_capacity(js.len() * size);
                    for &j in js {
                        e.extend(values[at..at + size].iter().enumerate().map(|(i, &v)| (v, (j * size + i) as u32)));
                        at += size;
                    }
                    e
                })
                .collect())
        })
    }

    /// One forward pass; per step and wanted row, the log-probabilities of the given token ids
    /// (`targets[step][row]`), computed on the device (log-softmax in f32, then a gather), so
    /// that only those values travel.
    pub fn forward_logprobs(&self, steps: &mut [Step<'_>], targets: &[Vec<Vec<u32>>]) -> Result<Vec<Vec<Vec<f64>>>, ModelError> {
        if steps.len() != targets.len() {
            return Err(ModelError::Request(format!("{} steps and {} target lists", steps.len(), targets.len())));
        }
        let vocab = self.cfg.vocab as u32;
        for (st, tg) in steps.iter().zip(targets) {
            let wanted = st.wanted()?;
            if wanted.len() != tg.len() {
                return Err(ModelError::Request(format!("log-probabilities wanted for rows {wanted:?} of a step of {} tokens with {} target lists", st.tokens.len(), tg.len())));
            }
            if let Some(bad) = tg.iter().flatten().find(|&&x| x >= vocab) {
                return Err(ModelError::Request(format!("token id {bad} is outside the vocabulary of {vocab}")));
            }
        }
        let width = targets.iter().flatten().map(Vec::len).max().unwrap_or(0);
        let (logits, _) = self.wanted_logits(steps)?;
        let Some(logits) = logits.filter(|_| width > 0) else {
            return Ok(targets.iter().map(|tg| tg.iter().map(|t| vec![0.0; t.len()]).collect()).collect());
        };
        let n = logits.dim(0)?;
        let idx: Vec<u32> = targets.iter().flatten().flat_map(|t| t.iter().copied().chain(std::iter::repeat(0).take(width - t.len()))).collect();
        let dev = &self.device;
        let picked = phase(dev, "to-host", || -> Result<_, ModelError> {
            let lp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
            Ok(lp.gather(&Tensor::from_vec(idx, (n, width), dev)?, 1)?.to_vec2::<f32>()?)
        })?;
        let mut it = picked.into_iter();
        Ok(targets
            .iter()
            .map(|tg| tg.iter().map(|t| it.next().expect("one row per target list")[..t.len()].iter().map(|&v| f64::from(v)).collect()).collect())
            .collect())
    }

    /// One forward pass over a batch of steps; returns, per step, the logits of the rows it
    /// wanted (each a vector over the vocabulary), in row order.
    pub fn forward(&self, steps: &mut [Step<'_>]) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        let (logits, counts) = self.wanted_logits(steps)?;
        let Some(logits) = logits else {
            return Ok(counts.iter().map(|_| Vec::new()).collect());
        };
        let logits = phase(&self.device, "to-host", || logits.to_vec2::<f32>())?;
        let mut it = logits.into_iter();
        Ok(counts.into_iter().map(|c| it.by_ref().take(c).collect()).collect())
    }
}

/// The feed-forward's gated activation `act(g) * u`: GELU (tanh form) for gemma3, SiLU for
/// llama. On the CPU one pass over both inputs as they are stored (no copies), rows spread
/// over the pool, with GELU written as `x * sigmoid(2 * inner)`, which equals
/// `0.5 * x * (1 + tanh(inner))`, and the exponential of [`exp_f32`], which vectorises;
/// elsewhere tensor operations.
fn gated(arch: Arch, g: &Tensor, u: &Tensor) -> Result<Tensor, candle_core::Error> {
    if !g.device().is_cpu() || g.dtype() != DType::F32 || u.dtype() != DType::F32 || g.shape() != u.shape() {
        let act = match arch {
            Arch::Gemma3 => g.gelu()?,
            Arch::Llama => candle_nn::ops::silu(g)?,
        };
        return act * u;
    }
    g.apply_op2_no_bwd(u, &Gated(arch))
}

/// [`gated`]'s CPU pass.
struct Gated(Arch);

impl candle_core::CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "kiln-gated-activation"
    }

    fn cpu_fwd(
        &self,
        gs: &candle_core::CpuStorage,
        gl: &candle_core::Layout,
        us: &candle_core::CpuStorage,
        ul: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape), candle_core::Error> {
        let (Some((g0, g1)), Some((u0, u1))) = (gl.contiguous_offsets(), ul.contiguous_offsets()) else {
            candle_core::bail!("the gated activation's inputs are not contiguous");
        };
        let (gv, uv) = (&gs.as_slice::<f32>()?[g0..g1], &us.as_slice::<f32>()?[u0..u1]);
        let mut out = vec![0f32; gv.len()];
        const CHUNK: usize = 4096;
        let arch = self.0;
        let f = |(o, (g, u)): (&mut [f32], (&[f32], &[f32]))| match arch {
            Arch::Gemma3 => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                for ((o, &x), &u) in o.iter_mut().zip(g).zip(u) {
                    let inner = SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x);
                    *o = x / (1.0 + exp_f32(-2.0 * inner)) * u;
                }
            }
            Arch::Llama => {
                for ((o, &x), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = x / (1.0 + exp_f32(-x)) * u;
                }
            }
        };
        if out.len() <= CHUNK {
            f((&mut out, (gv, uv)));
        } else {
            out.par_chunks_mut(CHUNK).zip(gv.par_chunks(CHUNK).zip(uv.par_chunks(CHUNK))).for_each(f);
        }
        Ok((candle_core::CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `e^x` in f32 within 2 ulp (tested against f64), in straight-line arithmetic that the
/// compiler vectorises (libm's `expf` is a call per element): `x = n ln 2 + r` with
/// |r| <= ln 2 / 2, a degree-7 Taylor polynomial for `e^r` (Horner, fused multiply-adds), and
/// `2^n` put into the exponent bits. The input is clamped to [-87.3, 88], where `2^n` stays a
/// normal f32 (so very large inputs give about 2e38, not infinity, and very small ones about
/// 1e-38).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and taking off 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0].iter().fold(1.0 / 5040.0, |acc: f32, &c| acc.mul_add(r, c));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Dot product with sixteen independent accumulators (two AVX vectors; the chunks are exact
/// so that the loop has no bounds checks and vectorises).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] = x[j].mul_add(y[j], acc[j]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
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
    fn exp_f32_is_within_two_ulp_of_f64() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            // One ulp of the f32 nearest the true value.
            let ulp = (want as f32).abs().next_up() as f64 - (want as f32).abs() as f64;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "exp_f32 is {worst} ulp from e^x");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(1000.0).is_finite() && exp_f32(-1000.0) >= 0.0);
    }

    #[test]
    fn gated_activation_matches_the_tensor_operations() {
        let g = Tensor::from_vec((0..6000).map(|i| (i as f32 - 3000.0) / 300.0).collect::<Vec<f32>>(), (3, 2000), &Device::Cpu).unwrap();
        let u = Tensor::from_vec((0..6000).map(|i| 1.0 + (i % 7) as f32 / 3.0).collect::<Vec<f32>>(), (3, 2000), &Device::Cpu).unwrap();
        for (arch, want) in [(Arch::Gemma3, (g.gelu().unwrap() * &u).unwrap()), (Arch::Llama, (candle_nn::ops::silu(&g).unwrap() * &u).unwrap())] {
            let got = gated(arch, &g, &u).unwrap();
            let worst = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(worst < 1e-5, "{arch:?}: largest difference {worst}");
        }
    }

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

