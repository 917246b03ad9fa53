//! The frozen quantized base as differentiable operations: a matmul whose backward pass gives
//! the gradient of its input (candle's `QMatMul` has none), and the language-model head fused
//! with the cross-entropy loss so that the (tokens x vocabulary) logits never exist whole.
//!
//! Both dequantize the frozen weight for the backward pass (and the head for the forward pass
//! too) in tiles of whole rows, so memory stays at one tile however large the matrix.

use std::sync::{Arc, Mutex};

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

type Result<T> = candle_core::Result<T>;

/// Rows of a weight dequantized at once: about 16 M values (64 MiB of f32).
const TILE_VALUES: usize = 16 << 20;

/// Rows `[start, start + len)` of a quantized (rows, cols) matrix, dequantized to f32.
fn dequantize_rows(w: &QTensor, start: usize, len: usize) -> Result<Tensor> {
    let (rows, cols) = w.shape().dims2()?;
    if start == 0 && len == rows {
        return w.dequantize(&Device::Cpu);
    }
    let dtype = w.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = w.data()?;
    let part = qtensor_from_ggml(dtype, &data[start * row_bytes..(start + len) * row_bytes], vec![len, cols], &Device::Cpu)?;
    part.dequantize(&Device::Cpu)
}

/// Row tiles `(start, len)` covering a (rows, cols) matrix.
fn tiles(rows: usize, cols: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = (TILE_VALUES / cols.max(1)).clamp(1, rows.max(1));
    (0..rows).step_by(step).map(move |s| (s, step.min(rows - s)))
}

/// `g W` for g: (n, rows) and the quantized W: (rows, cols), tile by tile.
fn times_weight(g: &Tensor, w: &QTensor) -> Result<Tensor> {
    let (rows, cols) = w.shape().dims2()?;
    let mut acc: Option<Tensor> = None;
    for (s, len) in tiles(rows, cols) {
        let part = g.narrow(1, s, len)?.contiguous()?.matmul(&dequantize_rows(w, s, len)?)?;
        acc = Some(match acc {
            None => part,
            Some(a) => (a + part)?,
        });
    }
    acc.ok_or_else(|| candle_core::Error::Msg("an empty weight matrix".into()))
}

/// `x W^T` with a frozen quantized W: (out, in), computed in f32 from the dequantized weight;
/// the backward pass gives `dL/dx = dL/dy W`.
pub struct FrozenMatMul(pub Arc<QTensor>);

impl CustomOp1 for FrozenMatMul {
    fn name(&self) -> &'static str {
        "kiln-frozen-qmatmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        // Training passes many rows at once: dequantizing the weight (tile by tile) and using
        // the f32 matrix kernel is faster than the quantized dot products, and exact.
        let dims = layout.shape().dims().to_vec();
        let k = *dims.last().ok_or_else(|| candle_core::Error::Msg("a matmul input has a last dimension".into()))?;
        let n = layout.shape().elem_count() / k.max(1);
        let x = match layout.contiguous_offsets() {
            Some((a, b)) => Tensor::from_slice(&storage.as_slice::<f32>()?[a..b], (n, k), &Device::Cpu)?,
            None => candle_core::bail!("the frozen matmul's input is not contiguous"),
        };
        let (rows, cols) = self.0.shape().dims2()?;
        if cols != k {
            candle_core::bail!("input of width {k} for a weight of {rows} x {cols}");
        }
        let mut parts = Vec::new();
        for (s, len) in tiles(rows, cols) {
            parts.push(x.matmul(&dequantize_rows(&self.0, s, len)?.t()?)?);
        }
        let y = if parts.len() == 1 { parts.pop().expect("one part") } else { Tensor::cat(&parts, 1)? };
        let mut shape = dims;
        *shape.last_mut().expect("checked") = rows;
        let values = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(values), Shape::from(shape)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dims = grad.dims().to_vec();
        let out = *dims.last().expect("a matmul result has a last dimension");
        let g = grad.reshape(((), out))?;
        let gx = times_weight(&g, &self.0)?;
        let mut shape = dims;
        *shape.last_mut().unwrap() = gx.dim(1)?;
        Ok(Some(gx.reshape(shape)?))
    }
}

/// Logits [`HeadNll`] keeps from its forward pass for its backward pass, at most: 4 GiB of f32
/// (batch 8 x 256 on a 262 144-token vocabulary is about 1.9 GiB). Beyond, the backward pass
/// makes them again.
const KEEP_LOGITS_VALUES: usize = 1 << 30;

/// Per-token negative log-likelihood of `targets` under the head `softmax(h W^T)`, for
/// h: (n, hidden) and the quantized head W: (vocabulary, hidden). The forward pass keeps each
/// row's log-sum-exp, and the logits themselves when they fit [`KEEP_LOGITS_VALUES`], for the
/// backward pass, which otherwise makes them again tile by tile (the same products, so the
/// same values).
pub struct HeadNll {
    w: Arc<QTensor>,
    targets: Vec<u32>,
    backward: bool,
    lse: Mutex<Vec<f32>>,
    kept: Mutex<Vec<Vec<f32>>>,
}

/// The checks both forms of the head make: one target per hidden row, each in the vocabulary.
fn check_targets(rows: usize, targets: &[u32], vocab: usize) -> Result<()> {
    if rows != targets.len() {
        candle_core::bail!("{rows} hidden rows for {} targets", targets.len());
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target token {t} is outside the vocabulary of {vocab}");
    }
    Ok(())
}

impl HeadNll {
    /// The loss of one target per row; `backward`: a backward pass will follow, so the forward
    /// pass keeps its logits for it (when they fit).
    pub fn new(w: Arc<QTensor>, targets: Vec<u32>, backward: bool) -> HeadNll {
        HeadNll { w, targets, backward, lse: Mutex::new(Vec::new()), kept: Mutex::new(Vec::new()) }
    }

    fn input(&self, storage: &CpuStorage, layout: &Layout) -> Result<Tensor> {
        let (n, d) = layout.shape().dims2()?;
        check_targets(n, &self.targets, self.w.shape().dims2()?.0)?;
        let x = match layout.contiguous_offsets() {
            Some((a, b)) => &storage.as_slice::<f32>()?[a..b],
            None => candle_core::bail!("the head's input is not contiguous"),
        };
        Tensor::from_slice(x, (n, d), &Device::Cpu)
    }
}

impl CustomOp1 for HeadNll {
    fn name(&self) -> &'static str {
        "kiln-head-nll"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = self.input(storage, layout)?;
        let (n, _) = h.dims2()?;
        let (vocab, cols) = self.w.shape().dims2()?;
        // Running (max, sum of exp) per row over the vocabulary tiles, and the target's logit.
        let mut max = vec![f32::NEG_INFINITY; n];
        let mut sum = vec![0f64; n];
        let mut target = vec![0f32; n];
        let keep = self.backward && n * vocab <= KEEP_LOGITS_VALUES;
        let mut kept = Vec::new();
        for (s, len) in tiles(vocab, cols) {
            let flat = h.matmul(&dequantize_rows(&self.w, s, len)?.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            for (i, row) in flat.chunks_exact(len).enumerate() {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                if m > max[i] {
                    sum[i] *= ((max[i] - m) as f64).exp();
                    max[i] = m;
                }
                sum[i] += row.iter().map(|&z| ((z - max[i]) as f64).exp()).sum::<f64>();
                let t = self.targets[i] as usize;
                if (s..s + len).contains(&t) {
                    target[i] = row[t - s];
                }
            }
            if keep {
                kept.push(flat);
            }
        }
        *self.kept.lock().unwrap() = kept;
        let lse: Vec<f32> = (0..n).map(|i| (max[i] as f64 + sum[i].ln()) as f32).collect();
        let nll: Vec<f32> = (0..n).map(|i| lse[i] - target[i]).collect();
        *self.lse.lock().unwrap() = lse;
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let h = arg.detach().contiguous()?;
        let (n, _) = h.dims2()?;
        let lse = self.lse.lock().unwrap().clone();
        if lse.len() != n {
            candle_core::bail!("the head's backward pass ran before its forward pass");
        }
        let g = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let (vocab, cols) = self.w.shape().dims2()?;
        let mut kept = std::mem::take(&mut *self.kept.lock().unwrap()).into_iter();
        let mut acc: Option<Tensor> = None;
        for (s, len) in tiles(vocab, cols) {
            let w = dequantize_rows(&self.w, s, len)?;
            // d nll_i / d logit_ij = softmax_ij - [j = target_i], times the incoming gradient.
            let mut p = match kept.next() {
                Some(z) => z,
                None => h.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?,
            };
            for (i, row) in p.chunks_exact_mut(len).enumerate() {
                for z in row.iter_mut() {
                    *z = (*z - lse[i]).exp() * g[i];
                }
                let t = self.targets[i] as usize;
                if (s..s + len).contains(&t) {
                    row[t - s] -= g[i];
                }
            }
            let part = Tensor::from_vec(p, (n, len), &Device::Cpu)?.matmul(&w)?;
            acc = Some(match acc {
                None => part,
                Some(a) => (a + part)?,
            });
        }
        Ok(acc)
    }
}

/// Logits made at once by [`tiled_head_nll`]: about 64 M values (256 MiB of f32).
const HEAD_TILE_VALUES: usize = 64 << 20;

/// The tensor-operation form of [`HeadNll`], for any device: per-row negative log-likelihood
/// of `targets` under `softmax(h W^T)` for h: (n, hidden) and the dense head W: (vocabulary,
/// hidden), with the logits made a tile of rows of W at a time, and, when `grad`, the gradient
/// of the summed NLL with respect to h: `sum_j softmax_ij W_j - W_(target_i)`, from a second
/// pass over the same tiles. Neither result carries a graph.
pub fn tiled_head_nll(h: &Tensor, w: &Tensor, targets: &[u32], grad: bool) -> Result<(Tensor, Option<Tensor>)> {
    let (n, d) = h.dims2()?;
    let (vocab, cols) = w.dims2()?;
    if cols != d {
        candle_core::bail!("hidden rows of width {d} for a head of {vocab} x {cols}");
    }
    check_targets(n, targets, vocab)?;
    let h = h.detach().contiguous()?;
    let rows = Tensor::from_slice(targets, n, h.device())?;
    let picked = w.index_select(&rows, 0)?;
    let target = (&h * &picked)?.sum(1)?;
    let step = (HEAD_TILE_VALUES / n.max(1)).clamp(1, vocab.max(1));
    let tiles: Vec<(usize, usize)> = (0..vocab).step_by(step).map(|s| (s, step.min(vocab - s))).collect();
    let logits = |s: usize, len: usize| h.matmul(&w.narrow(0, s, len)?.t()?);
    // Running (max, sum of exp) per row over the tiles.
    let mut run: Option<(Tensor, Tensor)> = None;
    for &(s, len) in &tiles {
        let z = logits(s, len)?;
        let m = z.max_keepdim(1)?;
        let e = z.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?;
        run = Some(match run {
            None => (m, e),
            Some((m0, e0)) => {
                let mx = m0.maximum(&m)?;
                let e = ((e0 * (m0 - &mx)?.exp()?)? + (e * (m - &mx)?.exp()?)?)?;
                (mx, e)
            }
        });
    }
    let (m, e) = run.ok_or_else(|| candle_core::Error::Msg("an empty head".into()))?;
    let lse = (m + e.log()?)?;
    let nll = (lse.squeeze(1)? - target)?;
    if !grad {
        return Ok((nll, None));
    }
    let mut g = picked.neg()?;
    for &(s, len) in &tiles {
        let p = logits(s, len)?.broadcast_sub(&lse)?.exp()?;
        g = (g + p.matmul(&w.narrow(0, s, len)?)?)?;
    }
    Ok((nll, Some(g)))
}
