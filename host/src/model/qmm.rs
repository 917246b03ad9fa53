//! kiln's quantized matrix multiply for the CPU: `x W^T` for a quantized W (Q8_0, Q5_0, Q4_1,
//! Q4_K, Q6_K) and f32 rows x, with AVX2.
//!
//! candle's CPU path does one dot product per (weight row, input row) pair with a single
//! accumulator chain, so prefill and batched decode are bound by that chain's latency and by
//! streaming each weight row once per input row. Here the input rows are quantized once (to
//! the format llama.cpp and candle pair with each weight type: Q8_0, Q8_1 or Q8_K, with
//! candle's own quantizers), and each call of a tile kernel computes four weight rows against
//! several input rows, block by block, so that every loaded weight block serves several input
//! rows and every input block four weight rows, with independent accumulators.
//!
//! Exactness: the dot product of one weight block with one input block is an exact integer
//! (i32), and each output element is `acc = fma(float(block integer), scale, acc)` over the
//! blocks in order, lane by lane. Which tile an element lands in, which rows share it and
//! how many rows there are change nothing: a row's results are bitwise the same alone or in
//! any batch.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType};
use candle_core::quantized::GgmlDType;

/// The weight types with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 32 weights: f16 scale, 32 i8. Inputs as Q8_0.
    Q8_0,
    /// 32 weights: f16 scale, 32 high bits, 32 nibbles (values -16..16). Inputs as Q8_0; the
    /// integers are those of the same block widened to Q8_0, so the results are bitwise those
    /// of the Q8_0 kernel on the widened tensor, from two thirds of the bytes.
    Q5_0,
    /// 32 weights: f16 scale, f16 minimum, 32 nibbles. Inputs as Q8_1.
    Q4_1,
    /// 256 weights: f16 scale and minimum, eight 6-bit sub-scales and minima, 256 nibbles.
    /// Inputs as Q8_K.
    Q4K,
    /// 256 weights: 6-bit values (low nibbles, high pairs), sixteen i8 sub-scales, f16 scale.
    /// Inputs as Q8_K.
    Q6K,
}

impl Kind {
    /// The kernel for a weight type, if there is one and this CPU can run it.
    pub fn of(dtype: GgmlDType) -> Option<Kind> {
        if !enabled() {
            return None;
        }
        match dtype {
            GgmlDType::Q8_0 => Some(Kind::Q8_0),
            GgmlDType::Q5_0 => Some(Kind::Q5_0),
            GgmlDType::Q4_1 => Some(Kind::Q4_1),
            GgmlDType::Q4K => Some(Kind::Q4K),
            GgmlDType::Q6K => Some(Kind::Q6K),
            _ => None,
        }
    }

    /// Weights per block.
    fn block(self) -> usize {
        match self {
            Kind::Q8_0 | Kind::Q5_0 | Kind::Q4_1 => 32,
            Kind::Q4K | Kind::Q6K => 256,
        }
    }

    /// Bytes per weight block.
    fn bytes(self) -> usize {
        match self {
            Kind::Q8_0 => 34,
            Kind::Q5_0 => 22,
            Kind::Q4_1 => 20,
            Kind::Q4K => 144,
            Kind::Q6K => 210,
        }
    }
}

/// True when this CPU has what the kernels use (AVX2, FMA, F16C), unless `KILN_QMM=off` asks
/// for candle's path (for comparisons).
pub fn enabled() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("KILN_QMM").is_ok_and(|v| v == "off") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// True when the AVX-512 VNNI tiles can run: for the 32-weight formats (Q8_0, Q5_0, Q4_1) two
/// blocks per 512-bit register and one `vpdpbusd` per weight row, four byte products summed
/// per lane; for Q4_K and Q6_K two 32-weight sub-blocks per register, their byte products
/// summed in pairs and multiplied by the sub-scales in one `vpdpwssd`. The block integers are
/// the same exact sums, and each output element takes the same `fma`s per block in the same
/// order, so its results are bitwise those of the AVX2 tile.
/// `KILN_QMM=avx2` keeps the AVX2 tile (for comparisons).
pub fn vnni() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("KILN_QMM").is_ok_and(|v| v == "avx2") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            enabled()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Quantized input rows, unpacked from candle's blocks into flat arrays: the integers of a
/// row contiguous, and the per-block scale (and sum, or sums of 16) as plain numbers.
struct Acts {
    /// (rows, k) integers.
    qs: Vec<i8>,
    /// (rows, blocks) scales.
    d: Vec<f32>,
    /// (rows, blocks): Q8_1's `d * sum(qs)`.
    s: Vec<f32>,
    /// (rows, blocks, 16): Q8_K's sums of each 16 integers.
    bsums: Vec<i16>,
    /// (rows, blocks): 16 times the sum of each block's integers, for Q5_0 on the VNNI tile,
    /// which multiplies the weights as stored (0..32) and takes off 16 per input integer.
    corr: Vec<i32>,
    /// Integers per row.
    k: usize,
    /// Blocks per row.
    nb: usize,
}

fn f16_bits(lo: u8, hi: u8) -> f32 {
    half_to_f32(u16::from_le_bytes([lo, hi]))
}

/// IEEE half to f32 (exact), without a dependency for one function.
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value m * 2^-24.
            let v = m as f32 * (1.0 / 16777216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// View candle blocks as their bytes (they are `repr(C)` plain data).
fn block_bytes<T>(b: &[T]) -> &[u8] {
    // SAFETY: the block types are repr(C) structs of integers and f16/f32 with no padding
    // (candle asserts their sizes), so every byte is initialised.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, std::mem::size_of_val(b)) }
}

impl Acts {
    /// Quantize rows of `x` (rows, k) the way candle does for this weight type's dot product,
    /// rows spread over the pool.
    fn quantize(kind: Kind, x: &[f32], rows: usize, k: usize, vnni: bool) -> Acts {
        let nb = k / kind.block();
        let sums = kind == Kind::Q4_1;
        let bsums = matches!(kind, Kind::Q4K | Kind::Q6K);
        let mut a = Acts {
            qs: vec![0; rows * k],
            d: vec![0.0; rows * nb],
            s: if sums { vec![0.0; rows * nb] } else { Vec::new() },
            bsums: if bsums { vec![0; rows * nb * 16] } else { Vec::new() },
            corr: Vec::new(),
            k,
            nb,
        };
        let ptrs = (a.qs.as_mut_ptr() as usize, a.d.as_mut_ptr() as usize, a.s.as_mut_ptr() as usize, a.bsums.as_mut_ptr() as usize);
        let work = |range: std::ops::Range<usize>| {
            // SAFETY: each row's slices are written by the one worker that holds the row.
            let (qs, d, s, bs) = unsafe {
                let n = range.len();
                (
                    std::slice::from_raw_parts_mut((ptrs.0 as *mut i8).add(range.start * k), n * k),
                    std::slice::from_raw_parts_mut((ptrs.1 as *mut f32).add(range.start * nb), n * nb),
                    if sums { std::slice::from_raw_parts_mut((ptrs.2 as *mut f32).add(range.start * nb), n * nb) } else { &mut [][..] },
                    if bsums { std::slice::from_raw_parts_mut((ptrs.3 as *mut i16).add(range.start * nb * 16), n * nb * 16) } else { &mut [][..] },
                )
            };
            quantize_rows(kind, &x[range.start * k..range.end * k], k, qs, d, s, bs);
        };
        // Small inputs are not worth waking the pool for.
        if rows * k < 16384 {
            work(0..rows);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(rows, work);
        }
        if kind == Kind::Q5_0 && vnni {
            a.corr = a.qs.chunks_exact(32).map(|b| 16 * b.iter().map(|&v| v as i32).sum::<i32>()).collect();
        }
        a
    }
}

/// Quantize whole rows of `x` into the flat arrays of [`Acts`] (these rows' parts).
fn quantize_rows(kind: Kind, x: &[f32], k: usize, qs: &mut [i8], d: &mut [f32], s: &mut [f32], bsums: &mut [i16]) {
    let nb = k / kind.block();
    let copy = |dst: &mut [i8], src: &[u8]| {
        for (a, &b) in dst.iter_mut().zip(src) {
            *a = b as i8;
        }
    };
    match kind {
        Kind::Q8_0 | Kind::Q5_0 => {
            let mut blocks = vec![BlockQ8_0::zeros(); nb];
            for (r, row) in x.chunks_exact(k).enumerate() {
                BlockQ8_0::from_float(row, &mut blocks);
                for (b, raw) in block_bytes(&blocks).chunks_exact(34).enumerate() {
                    d[r * nb + b] = f16_bits(raw[0], raw[1]);
                    copy(&mut qs[r * k + b * 32..r * k + b * 32 + 32], &raw[2..34]);
                }
            }
        }
        Kind::Q4_1 => {
            let mut blocks = vec![BlockQ8_1::zeros(); nb];
            for (r, row) in x.chunks_exact(k).enumerate() {
                BlockQ8_1::from_float(row, &mut blocks);
                for (b, raw) in block_bytes(&blocks).chunks_exact(36).enumerate() {
                    d[r * nb + b] = f16_bits(raw[0], raw[1]);
                    s[r * nb + b] = f16_bits(raw[2], raw[3]);
                    copy(&mut qs[r * k + b * 32..r * k + b * 32 + 32], &raw[4..36]);
                }
            }
        }
        Kind::Q4K | Kind::Q6K => {
            let mut blocks = vec![BlockQ8K::zeros(); nb];
            for (r, row) in x.chunks_exact(k).enumerate() {
                BlockQ8K::from_float(row, &mut blocks);
                for (b, raw) in block_bytes(&blocks).chunks_exact(292).enumerate() {
                    d[r * nb + b] = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                    copy(&mut qs[r * k + b * 256..r * k + b * 256 + 256], &raw[4..260]);
                    for (j, pair) in raw[260..292].chunks_exact(2).enumerate() {
                        bsums[(r * nb + b) * 16 + j] = i16::from_le_bytes([pair[0], pair[1]]);
                    }
                }
            }
        }
    }
}

/// Input rows per pass over a range of weight rows: the quantized rows of one pass stay in
/// L2 while the weights stream through once per pass.
const ROWS_PER_PASS: usize = 64;

/// Input rows per tile kernel call (with four weight rows).
const TILE_ROWS: usize = 4;

/// One product of [`matmul_many`]: `out = x W^T` for `n` rows of raw `kind` blocks `w`.
pub struct Product<'a> {
    /// The weight type.
    pub kind: Kind,
    /// The weights' raw blocks.
    pub w: &'a [u8],
    /// Weight rows (output features).
    pub n: usize,
    /// (m, n) results.
    pub out: &'a mut [f32],
}

/// The input format a weight type's kernel pairs with (Q5_0 shares Q8_0's).
fn act_format(kind: Kind) -> Kind {
    match kind {
        Kind::Q5_0 => Kind::Q8_0,
        Kind::Q4K | Kind::Q6K => Kind::Q4K,
        other => other,
    }
}

/// Several products of the same input `x` (m, k), as [`matmul`] gives each: the input is
/// quantized once per input format, and all the products' tiles go to the pool in one call
/// (a layer's query, key and value projections, or its gate and up projections). Each result
/// is bitwise what [`matmul`] gives.
pub fn matmul_many(products: &mut [Product<'_>], k: usize, x: &[f32], m: usize) {
    assert!(enabled(), "quantized matmul kernels need AVX2, FMA and F16C");
    let vnni = vnni();
    assert_eq!(x.len(), m * k);
    for p in products.iter() {
        assert_eq!(k % p.kind.block(), 0, "{k} inputs is not a whole number of {:?} blocks", p.kind);
        assert_eq!(p.w.len(), p.n * k / p.kind.block() * p.kind.bytes(), "weight bytes do not match {} x {k} {:?}", p.n, p.kind);
        assert_eq!(p.out.len(), m * p.n);
    }
    if m == 0 {
        return;
    }
    // One quantization per input format; Q5_0's VNNI correction rides on Q8_0's.
    let mut acts: Vec<(Kind, Acts)> = Vec::new();
    for p in products.iter() {
        let f = act_format(p.kind);
        if !acts.iter().any(|(g, _)| *g == f) {
            let as_kind = if f == Kind::Q8_0 && products.iter().any(|q| q.kind == Kind::Q5_0) { Kind::Q5_0 } else { f };
            acts.push((f, Acts::quantize(as_kind, x, m, k, vnni)));
        }
    }
    // (kind, weights, n, out, acts, first tile) per product; tiles numbered across products.
    let mut parts = Vec::with_capacity(products.len());
    let mut tiles = 0;
    for p in products.iter_mut() {
        let a = &acts.iter().find(|(g, _)| *g == act_format(p.kind)).expect("quantized above").1;
        parts.push((p.kind, p.w, p.n, p.out.as_mut_ptr() as usize, a, tiles));
        tiles += p.n.div_ceil(4);
    }
    let work = |range: std::ops::Range<usize>| {
        for &(kind, w, n, out, a, first) in &parts {
            let (lo, hi) = (range.start.max(first), range.end.min(first + n.div_ceil(4)));
            if lo < hi {
                // SAFETY: as in `matmul_on`; tile t of a product is handed to one worker only.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    run_tiles(kind, w, k / kind.block() * kind.bytes(), n, a, m, lo - first..hi - first, out as *mut f32, vnni)
                }
            }
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(tiles, work);
}

/// `out = x W^T`: `w` holds `n` rows of `k` weights as raw blocks of `kind`, `x` is (m, k),
/// `out` is (m, n). `k` must be a multiple of the block size. Call only when [`enabled`].
pub fn matmul(kind: Kind, w: &[u8], n: usize, k: usize, x: &[f32], m: usize, out: &mut [f32]) {
    matmul_on(kind, w, n, k, x, m, out, vnni())
}

/// [`matmul`], with the VNNI tile for the 32-weight formats when `vnni` (which [`vnni()`] must
/// allow).
#[allow(clippy::too_many_arguments)]
fn matmul_on(kind: Kind, w: &[u8], n: usize, k: usize, x: &[f32], m: usize, out: &mut [f32], vnni: bool) {
    assert!(!vnni || self::vnni(), "the VNNI tile needs AVX-512 VNNI");
    assert!(enabled(), "quantized matmul kernels need AVX2, FMA and F16C");
    assert_eq!(k % kind.block(), 0, "{k} inputs is not a whole number of {kind:?} blocks");
    assert_eq!(w.len(), n * k / kind.block() * kind.bytes(), "weight bytes do not match {n} x {k} {kind:?}");
    assert_eq!(x.len(), m * k);
    assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    let acts = Acts::quantize(kind, x, m, k, vnni);
    let tiles = n.div_ceil(4);
    let row_bytes = k / kind.block() * kind.bytes();
    let out_ptr = out.as_mut_ptr() as usize;
    let work = |range: std::ops::Range<usize>| {
        // SAFETY: `enabled()` checked the CPU features; each tile writes only its own columns
        // of `out`, and tiles are handed to exactly one worker.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            run_tiles(kind, w, row_bytes, n, &acts, m, range, out_ptr as *mut f32, vnni)
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(tiles, work);
}

/// Tiles `range` (four weight rows each) against every input row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_tiles(kind: Kind, w: &[u8], row_bytes: usize, n: usize, acts: &Acts, m: usize, range: std::ops::Range<usize>, out: *mut f32, vnni: bool) {
    let ahead = 4 * row_bytes;
    for pass in (0..m).step_by(ROWS_PER_PASS) {
        let end = m.min(pass + ROWS_PER_PASS);
        for t in range.clone() {
            // A last tile of fewer than four rows repeats its last row; the extra lanes are
            // computed and dropped.
            let wr: [*const u8; 4] = std::array::from_fn(|i| w.as_ptr().add((4 * t + i).min(n - 1) * row_bytes));
            let cols = (n - 4 * t).min(4);
            let mut r = pass;
            // AVX-512's 32 registers hold twice the input rows per tile.
            while vnni && r + 2 * TILE_ROWS <= end {
                let rows: [usize; 2 * TILE_ROWS] = std::array::from_fn(|c| r + c);
                let res = tile(kind, wr, ahead, acts, rows, vnni);
                store(out, n, &rows, 4 * t, cols, &res);
                r += 2 * TILE_ROWS;
            }
            while r + TILE_ROWS <= end {
                let rows: [usize; TILE_ROWS] = std::array::from_fn(|c| r + c);
                let res = tile(kind, wr, ahead, acts, rows, vnni);
                store(out, n, &rows, 4 * t, cols, &res);
                r += TILE_ROWS;
            }
            while r < end {
                let res = tile(kind, wr, ahead, acts, [r], vnni);
                store(out, n, &[r], 4 * t, cols, &res);
                r += 1;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<const C: usize>(kind: Kind, wr: [*const u8; 4], ahead: usize, acts: &Acts, rows: [usize; C], vnni: bool) -> [__m128; C] {
    if vnni {
        return match kind {
            Kind::Q4K => tile_q4k_vnni(wr, ahead, acts, rows),
            Kind::Q6K => tile_q6k_vnni(wr, ahead, acts, rows),
            _ => tile_vnni(kind, wr, ahead, acts, rows),
        };
    }
    match kind {
        Kind::Q8_0 => tile_q8_0(wr, ahead, acts, rows),
        Kind::Q5_0 => tile_q5_0(wr, ahead, acts, rows),
        Kind::Q4_1 => tile_q4_1(wr, ahead, acts, rows),
        Kind::Q4K => tile_q4k(wr, ahead, acts, rows),
        Kind::Q6K => tile_q6k(wr, ahead, acts, rows),
    }
}

/// Ask for the blocks `ahead` bytes past this tile's current ones (the same blocks of the next
/// tile) to be brought into cache: a single input row is bound by how fast the weights arrive,
/// and the hardware prefetcher alone leaves the four interleaved row streams waiting. A hint
/// only: it changes no result, and an address past the weights is never read.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn prefetch4(blk: &[*const u8; 4], ahead: usize) {
    for p in blk {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead) as *const i8);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store<const C: usize>(out: *mut f32, n: usize, rows: &[usize; C], col: usize, cols: usize, res: &[__m128; C]) {
    for c in 0..C {
        let dst = out.add(rows[c] * n + col);
        if cols == 4 {
            _mm_storeu_ps(dst, res[c]);
        } else {
            let mut tmp = [0f32; 4];
            _mm_storeu_ps(tmp.as_mut_ptr(), res[c]);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
        }
    }
}

/// Sums of each of four vectors of eight i32, as the four lanes of one vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn reduce4(q: [__m256i; 4]) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(q[0], q[1]), _mm256_hadd_epi32(q[2], q[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// Sums of each of four vectors of four i32, as the four lanes of one vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn reduce4_128(q: [__m128i; 4]) -> __m128i {
    _mm_hadd_epi32(_mm_hadd_epi32(q[0], q[1]), _mm_hadd_epi32(q[2], q[3]))
}

/// The f16 at `p` in each of four blocks, as f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn scales4(p: [*const u8; 4]) -> __m128 {
    let h = |i: usize| (p[i] as *const u16).read_unaligned() as i16;
    _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, h(3), h(2), h(1), h(0)))
}

/// One block of signed 8-bit weights of four rows (scales `wd`) against the input rows, added
/// to `acc`: the arithmetic of Q8_0, which Q5_0 shares once its weights are widened.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn i8_block<const C: usize>(wd: __m128, wq: [__m256i; 4], a: &Acts, rows: [usize; C], b: usize, acc: &mut [__m128; C]) {
    let ones = _mm256_set1_epi16(1);
    // i8 x i8 through the unsigned x signed multiply: |w| times y with w's sign.
    let wabs: [__m256i; 4] = std::array::from_fn(|i| _mm256_sign_epi8(wq[i], wq[i]));
    for c in 0..C {
        let y = _mm256_loadu_si256(a.qs.as_ptr().add(rows[c] * a.k + b * 32) as *const __m256i);
        let q: [__m256i; 4] = std::array::from_fn(|i| _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[i], _mm256_sign_epi8(y, wq[i])), ones));
        let s = _mm_cvtepi32_ps(reduce4(q));
        let scale = _mm_mul_ps(wd, _mm_set1_ps(*a.d.get_unchecked(rows[c] * a.nb + b)));
        acc[c] = _mm_fmadd_ps(s, scale, acc[c]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q8_0<const C: usize>(wr: [*const u8; 4], ahead: usize, a: &Acts, rows: [usize; C]) -> [__m128; C] {
    let mut acc = [_mm_setzero_ps(); C];
    for b in 0..a.nb {
        let blk: [*const u8; 4] = std::array::from_fn(|i| wr[i].add(b * 34));
        prefetch4(&blk, ahead);
        let wq: [__m256i; 4] = std::array::from_fn(|i| _mm256_loadu_si256(blk[i].add(2) as *const __m256i));
        i8_block(scales4(blk), wq, a, rows, b, &mut acc);
    }
    acc
}

/// The 32 weights of a Q5_0 block as i8 (-16..16): [`q5_0_stored`] less 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn q5_0_values(blk: *const u8) -> __m256i {
    _mm256_sub_epi8(q5_0_stored(blk), _mm256_set1_epi8(16))
}

/// The 32 weights of a Q5_0 block as stored, 0..32: nibble j (low nibbles of bytes 0..16, then
/// their high nibbles) with bit j of the 32-bit `qh` as its fifth bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn q5_0_stored(blk: *const u8) -> __m256i {
    let qh = (blk.add(2) as *const u32).read_unaligned() as i32;
    let raw = _mm_loadu_si128(blk.add(6) as *const __m128i);
    let nibbles = _mm256_and_si256(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(raw), _mm_srli_epi16::<4>(raw)), _mm256_set1_epi8(0x0F));
    // Lane j gets byte j / 8 of qh and keeps bit j % 8 of it: 0x10 where bit j is set.
    let bytes = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles, high)
}

/// The 32 nibbles of a Q4_1 block (at `p`) as bytes 0..16: low nibbles are weights 0..16, high
/// nibbles 16..32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn q4_1_values(p: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(raw), _mm_srli_epi16::<4>(raw));
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// The tile of [`vnni`] for the 32-weight formats: blocks b and b+1 of a weight row side by
/// side in one register (a last odd block alone, the upper half zero), against the same two
/// blocks of each input row, which lie side by side in [`Acts`]. Per weight row one
/// `vpdpbusd` (unsigned weight bytes times signed input bytes); Q8_0's signed weights go in as
/// their magnitudes with their signs moved to the inputs, Q5_0's as stored with 16 times the
/// input sum taken off after, Q4_1's nibbles as they are. The four rows' sums of both blocks
/// come out of one reduction; then each block, in order, takes the AVX2 tile's `fma`s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn tile_vnni<const C: usize>(kind: Kind, wr: [*const u8; 4], ahead: usize, a: &Acts, rows: [usize; C]) -> [__m128; C] {
    match kind {
        Kind::Q8_0 => tile_vnni_of::<C, 0>(wr, ahead, a, rows),
        Kind::Q5_0 => tile_vnni_of::<C, 1>(wr, ahead, a, rows),
        _ => tile_vnni_of::<C, 2>(wr, ahead, a, rows),
    }
}

/// [`tile_vnni`]'s format as a constant: 0 Q8_0, 1 Q5_0, 2 Q4_1.
const VQ8_0: u8 = 0;
const VQ5_0: u8 = 1;
const VQ4_1: u8 = 2;

/// One 32-weight block's bytes as [`tile_vnni`] multiplies them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn vnni_values<const F: u8>(p: *const u8) -> __m256i {
    match F {
        VQ8_0 => _mm256_loadu_si256(p.add(2) as *const __m256i),
        VQ5_0 => q5_0_stored(p),
        _ => q4_1_values(p.add(4)),
    }
}

/// The f16 at offset `off` of blocks b (`p`) and b+1 (`q`) of four rows: (b x4, b+1 x4).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn scales4x2(p: [*const u8; 4], q: [*const u8; 4], off: usize) -> __m256 {
    _mm256_set_m128(scales4([q[0].add(off), q[1].add(off), q[2].add(off), q[3].add(off)]), scales4([p[0].add(off), p[1].add(off), p[2].add(off), p[3].add(off)]))
}

/// Two consecutive per-block numbers at `v` as (v[0] x4, v[1] x4); `v[0]` x8 when `pair` is false.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn spread2<T: Copy>(v: *const T, pair: bool) -> __m256i {
    if pair {
        _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(_mm_loadl_epi64(v as *const __m128i)), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
    } else {
        _mm256_set1_epi32((v as *const i32).read_unaligned())
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_vnni_of<const C: usize, const F: u8>(wr: [*const u8; 4], ahead: usize, a: &Acts, rows: [usize; C]) -> [__m128; C] {
    let bytes = match F {
        VQ8_0 => 34,
        VQ5_0 => 22,
        _ => 20,
    };
    let (k, nb) = (a.k, a.nb);
    let mut acc = [_mm_setzero_ps(); C];
    let mut b = 0;
    while b < nb {
        let pair = b + 1 < nb;
        let blk = [wr[0].add(b * bytes), wr[1].add(b * bytes), wr[2].add(b * bytes), wr[3].add(b * bytes)];
        let next = if pair { [blk[0].add(bytes), blk[1].add(bytes), blk[2].add(bytes), blk[3].add(bytes)] } else { blk };
        let mut w = [_mm512_setzero_si512(); 4];
        let mut neg = [0 as __mmask64; 4];
        for i in 0..4 {
            _mm_prefetch::<_MM_HINT_T0>(blk[i].wrapping_add(ahead) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(blk[i].wrapping_add(ahead + 2 * bytes - 1) as *const i8);
            let lo = _mm512_zextsi256_si512(vnni_values::<F>(blk[i]));
            w[i] = if pair { _mm512_inserti64x4::<1>(lo, vnni_values::<F>(next[i])) } else { lo };
            if F == VQ8_0 {
                // Magnitudes, and where each weight is negative (its input is negated).
                neg[i] = _mm512_movepi8_mask(w[i]);
                w[i] = _mm512_abs_epi8(w[i]);
            }
        }
        let wd = scales4x2(blk, next, 0);
        let wm = if F == VQ4_1 { scales4x2(blk, next, 2) } else { _mm256_setzero_ps() };
        for c in 0..C {
            let at = rows[c] * nb + b;
            let yp = a.qs.as_ptr().add(rows[c] * k + b * 32);
            let y = if pair { _mm512_loadu_si512(yp as *const __m512i) } else { _mm512_zextsi256_si512(_mm256_loadu_si256(yp as *const __m256i)) };
            let mut d = [_mm512_setzero_si512(); 4];
            for i in 0..4 {
                let yi = if F == VQ8_0 { _mm512_mask_sub_epi8(y, neg[i], _mm512_setzero_si512(), y) } else { y };
                d[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[i], yi);
            }
            let mut r = reduce4x2(d);
            if F == VQ5_0 {
                r = _mm256_sub_epi32(r, spread2(a.corr.as_ptr().add(at), pair));
            }
            let sv = _mm256_cvtepi32_ps(r);
            let scale = _mm256_mul_ps(wd, _mm256_castsi256_ps(spread2(a.d.as_ptr().add(at), pair)));
            let mut x = _mm_fmadd_ps(_mm256_castps256_ps128(sv), _mm256_castps256_ps128(scale), acc[c]);
            if F == VQ4_1 {
                let sy = _mm256_castsi256_ps(spread2(a.s.as_ptr().add(at), pair));
                x = _mm_fmadd_ps(_mm256_castps256_ps128(wm), _mm256_castps256_ps128(sy), x);
                if pair {
                    x = _mm_fmadd_ps(_mm256_extractf128_ps::<1>(sv), _mm256_extractf128_ps::<1>(scale), x);
                    x = _mm_fmadd_ps(_mm256_extractf128_ps::<1>(wm), _mm256_extractf128_ps::<1>(sy), x);
                }
            } else if pair {
                x = _mm_fmadd_ps(_mm256_extractf128_ps::<1>(sv), _mm256_extractf128_ps::<1>(scale), x);
            }
            acc[c] = x;
        }
        b += 2;
    }
    acc
}

/// The Q4_K tile of [`vnni`]: per weight row and pair of sub-blocks (the low and high nibbles
/// of 32 bytes), one register of 64 weights against the 64 input bytes they meet, the byte
/// products summed in pairs and then times the two sub-scales, added up in one `vpdpwssd`.
/// The minima go as in the AVX2 tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q4k_vnni<const C: usize>(wr: [*const u8; 4], ahead: usize, a: &Acts, rows: [usize; C]) -> [__m128; C] {
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm_setzero_ps(); C];
    let (k, nb) = (a.k, a.nb);
    for b in 0..nb {
        let blk: [*const u8; 4] = std::array::from_fn(|i| wr[i].add(b * 144));
        prefetch4(&blk, ahead);
        for p in &blk {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + 64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + 143) as *const i8);
        }
        let wd = scales4(blk);
        let wdmin = scales4(std::array::from_fn(|i| blk[i].add(2)));
        let pair_sums: [__m128i; C] = std::array::from_fn(|c| q4k_pair_sums(a, rows[c] * nb + b));
        let mut held = [_mm512_setzero_si512(); C];
        let mut p01 = [_mm512_setzero_si512(); C];
        let mut dots = [_mm_setzero_si128(); C];
        let mut mv = [_mm_setzero_si128(); 4];
        for i in 0..4 {
            let (sc, mins) = q4k_block_scales(blk[i]);
            mv[i] = mins;
            let mut q = [_mm512_setzero_si512(); 4];
            let mut sv = [_mm512_setzero_si512(); 4];
            for j in 0..4 {
                let raw = _mm256_loadu_si256(blk[i].add(16 + 32 * j) as *const __m256i);
                let lo = _mm512_castsi256_si512(_mm256_and_si256(raw, low));
                q[j] = _mm512_inserti64x4::<1>(lo, _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low));
                sv[j] = _mm512_inserti64x4::<1>(_mm512_set1_epi16(sc[2 * j] as i16), _mm256_set1_epi16(sc[2 * j + 1] as i16));
            }
            for c in 0..C {
                let y = a.qs.as_ptr().add(rows[c] * k + b * 256);
                let s = k_dot(_mm512_setzero_si512(), q, sv, y);
                fold_row(i, s, &mut held[c], &mut p01[c], &mut dots[c]);
            }
        }
        for c in 0..C {
            let dy = *a.d.get_unchecked(rows[c] * nb + b);
            let s = _mm_cvtepi32_ps(dots[c]);
            let mins: [__m128i; 4] = std::array::from_fn(|i| _mm_madd_epi16(mv[i], pair_sums[c]));
            let mn = _mm_cvtepi32_ps(reduce4_128(mins));
            acc[c] = _mm_fmadd_ps(s, _mm_mul_ps(wd, _mm_set1_ps(dy)), acc[c]);
            acc[c] = _mm_fmadd_ps(mn, _mm_mul_ps(wdmin, _mm_set1_ps(-dy)), acc[c]);
        }
    }
    acc
}

/// The Q6_K tile of [`vnni`]: per weight row, 64 six-bit weights (two groups of 32) per
/// register against the 64 input bytes they meet, the byte products summed in pairs and then
/// times their four sub-scales, added up in one `vpdpwssd`; the offset of 32 as in the AVX2
/// tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q6k_vnni<const C: usize>(wr: [*const u8; 4], ahead: usize, a: &Acts, rows: [usize; C]) -> [__m128; C] {
    // Sub-scale lanes: register r (= 2h + pair) covers sub-scales 4r..4r+4, eight i16 lanes each.
    let pick: [__m512i; 4] = std::array::from_fn(|r| {
        let lanes: [i16; 32] = std::array::from_fn(|l| (4 * r + l / 8) as i16);
        _mm512_loadu_si512(lanes.as_ptr() as *const __m512i)
    });
    let mut acc = [_mm_setzero_ps(); C];
    let (k, nb) = (a.k, a.nb);
    for b in 0..nb {
        let blk: [*const u8; 4] = std::array::from_fn(|i| wr[i].add(b * 210));
        prefetch4(&blk, ahead);
        for p in &blk {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + 64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + 128) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + 209) as *const i8);
        }
        let wd = scales4(std::array::from_fn(|i| blk[i].add(208)));
        let bsums: [__m256i; C] =
            std::array::from_fn(|c| _mm256_loadu_si256(a.bsums.as_ptr().add((rows[c] * nb + b) * 16) as *const __m256i));
        let mut held = [_mm512_setzero_si512(); C];
        let mut p01 = [_mm512_setzero_si512(); C];
        let mut dots = [_mm_setzero_si128(); C];
        for i in 0..4 {
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk[i].add(192) as *const __m128i));
            let wide = _mm512_castsi256_si512(sc16);
            let mut q = [_mm512_setzero_si512(); 4];
            let mut sv = [_mm512_setzero_si512(); 4];
            for h in 0..2 {
                let [g0, g1, g2, g3] = q6k_values(blk[i], h);
                q[2 * h] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(g0), g1);
                q[2 * h + 1] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(g2), g3);
                sv[2 * h] = _mm512_permutexvar_epi16(pick[2 * h], wide);
                sv[2 * h + 1] = _mm512_permutexvar_epi16(pick[2 * h + 1], wide);
            }
            for c in 0..C {
                let offset = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bsums[c])));
                let y = a.qs.as_ptr().add(rows[c] * k + b * 256);
                let s = k_dot(_mm512_zextsi256_si512(offset), q, sv, y);
                fold_row(i, s, &mut held[c], &mut p01[c], &mut dots[c]);
            }
        }
        for c in 0..C {
            let dy = *a.d.get_unchecked(rows[c] * nb + b);
            let s = _mm_cvtepi32_ps(dots[c]);
            acc[c] = _mm_fmadd_ps(s, _mm_mul_ps(wd, _mm_set1_ps(dy)), acc[c]);
        }
    }
    acc
}

/// The VNNI K-format tiles' integer dot of one weight row's 256 unsigned values `q` (64 per
/// register) with the 256 input bytes at `y`: byte products summed in pairs, then times the
/// sub-scales `sv`, added to `s`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn k_dot(mut s: __m512i, q: [__m512i; 4], sv: [__m512i; 4], y: *const i8) -> __m512i {
    for r in 0..4 {
        let p = _mm512_maddubs_epi16(q[r], _mm512_loadu_si512(y.add(64 * r) as *const __m512i));
        s = _mm512_dpwssd_epi32(s, p, sv[r]);
    }
    s
}

/// The VNNI K-format tiles fold weight row `i`'s partial sums `s` (rows in order 0..4) into
/// one input row's sums as they come, 0 with 1 and 2 with 3, so that eight input rows fit the
/// registers: `dots` gets the four rows' sums once row 3 came (the integers of [`reduce4x2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn fold_row(i: usize, s: __m512i, held: &mut __m512i, p01: &mut __m512i, dots: &mut __m128i) {
    match i {
        0 | 2 => *held = s,
        1 => *p01 = fold_pair(*held, s),
        _ => {
            let r = finish4x2(*p01, fold_pair(*held, s));
            *dots = _mm_add_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
        }
    }
}

/// Sums of an input row's integers over each 32-weight sub-block of block `at` (pairs of
/// Q8_K's 16-sums), as eight i16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn q4k_pair_sums(a: &Acts, at: usize) -> __m128i {
    let bs = _mm256_loadu_si256(a.bsums.as_ptr().add(at * 16) as *const __m256i);
    _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256::<1>(bs))
}

/// A Q4_K block's eight sub-scales (as bytes) and eight minima (as i16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn q4k_block_scales(blk: *const u8) -> ([u8; 8], __m128i) {
    let sm = q4k_scales(&*(blk.add(4) as *const [u8; 12]));
    let mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, sm[3] as i32, sm[2] as i32));
    ((sm[0] as u64 | (sm[1] as u64) << 32).to_le_bytes(), mins)
}

/// Half `h` (weights 128h..128h+128) of a Q6_K block as four groups of 32 values 0..64: the
/// low nibbles (64 bytes) with their high pairs (32 bytes) as bits 4 and 5.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn q6k_values(blk: *const u8, h: usize) -> [__m256i; 4] {
    let (low4, low2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    let ql0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
    let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
    let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
    [
        _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16::<4>(_mm256_and_si256(qh, low2))),
        _mm256_or_si256(_mm256_and_si256(ql1, low4), _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), low2))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4),
            _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), low2)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
            _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), low2)),
        ),
    ]
}

/// Of four vectors of sixteen i32 (lanes 0..8 from block b, 8..16 from block b+1), the sum of
/// each vector's block-b lanes and of its block-b+1 lanes: (v0..v3 for b, v0..v3 for b+1).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn reduce4x2(d: [__m512i; 4]) -> __m256i {
    finish4x2(fold_pair(d[0], d[1]), fold_pair(d[2], d[3]))
}

/// The first step of [`reduce4x2`], for two vectors: per 128-bit lane, partial sums
/// [v0, v1, v0, v1]. A tile can fold its rows in pairs as it goes with it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn fold_pair(a: __m512i, b: __m512i) -> __m512i {
    _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
}

/// The rest of [`reduce4x2`] from the folded pairs of rows (0, 1) and (2, 3).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn finish4x2(t0: __m512i, t1: __m512i) -> __m256i {
    // Per 128-bit lane: [v0, v1, v2, v3].
    let t = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    // 128-bit lanes 0+1 are block b, 2+3 block b+1.
    let u = _mm512_add_epi32(t, _mm512_shuffle_i32x4::<0b10_11_00_01>(t, t));
    _mm512_castsi512_si256(_mm512_shuffle_i32x4::<0b00_00_10_00>(u, u))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q5_0<const C: usize>(wr: [*const u8; 4], ahead: usize, a: &Acts, rows: [usize; C]) -> [__m128; C] {
    let mut acc = [_mm_setzero_ps(); C];
    for b in 0..a.nb {
        let blk: [*const u8; 4] = std::array::from_fn(|i| wr[i].add(b * 22));
        prefetch4(&blk, ahead);
        let wq: [__m256i; 4] = std::array::from_fn(|i| q5_0_values(blk[i]));
        i8_block(scales4(blk), wq, a, rows, b, &mut acc);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q4_1<const C: usize>(wr: [*const u8; 4], ahead: usize, a: &Acts, rows: [usize; C]) -> [__m128; C] {
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm_setzero_ps(); C];
    let (k, nb) = (a.k, a.nb);
    for b in 0..nb {
        let blk: [*const u8; 4] = std::array::from_fn(|i| wr[i].add(b * 20));
        prefetch4(&blk, ahead);
        let wd = scales4(blk);
        let wm = scales4(std::array::from_fn(|i| blk[i].add(2)));
        // Low nibbles are weights 0..16, high nibbles 16..32.
        let wq: [__m256i; 4] = std::array::from_fn(|i| {
            let raw = _mm_loadu_si128(blk[i].add(4) as *const __m128i);
            let both = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(raw), _mm_srli_epi16::<4>(raw));
            _mm256_and_si256(both, low)
        });
        for c in 0..C {
            let y = _mm256_loadu_si256(a.qs.as_ptr().add(rows[c] * k + b * 32) as *const __m256i);
            let q: [__m256i; 4] = std::array::from_fn(|i| _mm256_madd_epi16(_mm256_maddubs_epi16(wq[i], y), ones));
            let s = _mm_cvtepi32_ps(reduce4(q));
            let at = rows[c] * nb + b;
            let scale = _mm_mul_ps(wd, _mm_set1_ps(*a.d.get_unchecked(at)));
            acc[c] = _mm_fmadd_ps(s, scale, acc[c]);
            acc[c] = _mm_fmadd_ps(wm, _mm_set1_ps(*a.s.get_unchecked(at)), acc[c]);
        }
    }
    acc
}

/// Q4_K's eight 6-bit scales (bytes 0..8) and minima (bytes 8..16) from its 12 packed bytes.
fn q4k_scales(p: &[u8; 12]) -> [u32; 4] {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let u0 = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    let u1 = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    let u2 = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
    // Scales 0..4 and minima 0..4 are the low six bits of bytes 0..4 and 4..8; scales and
    // minima 4..8 take their low four bits from bytes 8..12 and their top two from the top
    // bits of bytes 0..4 and 4..8.
    [u0 & LOW6, (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4), u1 & LOW6, ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4)]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q4k<const C: usize>(wr: [*const u8; 4], ahead: usize, a: &Acts, rows: [usize; C]) -> [__m128; C] {
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm_setzero_ps(); C];
    let (k, nb) = (a.k, a.nb);
    for b in 0..nb {
        let blk: [*const u8; 4] = std::array::from_fn(|i| wr[i].add(b * 144));
        prefetch4(&blk, ahead);
        let wd = scales4(blk);
        let wdmin = scales4(std::array::from_fn(|i| blk[i].add(2)));
        let pair_sums: [__m128i; C] = std::array::from_fn(|c| q4k_pair_sums(a, rows[c] * nb + b));
        let mut dots = [[_mm256_setzero_si256(); 4]; C];
        let mut mins = [[_mm_setzero_si128(); 4]; C];
        for i in 0..4 {
            let (sc, mv) = q4k_block_scales(blk[i]);
            for c in 0..C {
                mins[c][i] = _mm_madd_epi16(mv, pair_sums[c]);
            }
            let mut s = [_mm256_setzero_si256(); C];
            for j in 0..4 {
                // 32 bytes: low nibbles are sub-block 2j, high nibbles sub-block 2j+1.
                let q = _mm256_loadu_si256(blk[i].add(16 + 32 * j) as *const __m256i);
                let ql = _mm256_and_si256(q, low);
                let qh = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
                let scl = _mm256_set1_epi16(sc[2 * j] as i16);
                let sch = _mm256_set1_epi16(sc[2 * j + 1] as i16);
                for c in 0..C {
                    let y = a.qs.as_ptr().add(rows[c] * k + b * 256 + 64 * j);
                    let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(ql, _mm256_loadu_si256(y as *const __m256i)), scl);
                    let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(qh, _mm256_loadu_si256(y.add(32) as *const __m256i)), sch);
                    s[c] = _mm256_add_epi32(s[c], _mm256_add_epi32(pl, ph));
                }
            }
            for c in 0..C {
                dots[c][i] = s[c];
            }
        }
        for c in 0..C {
            let dy = *a.d.get_unchecked(rows[c] * nb + b);
            let s = _mm_cvtepi32_ps(reduce4(dots[c]));
            let mn = _mm_cvtepi32_ps(reduce4_128(mins[c]));
            acc[c] = _mm_fmadd_ps(s, _mm_mul_ps(wd, _mm_set1_ps(dy)), acc[c]);
            acc[c] = _mm_fmadd_ps(mn, _mm_mul_ps(wdmin, _mm_set1_ps(-dy)), acc[c]);
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q6k<const C: usize>(wr: [*const u8; 4], ahead: usize, a: &Acts, rows: [usize; C]) -> [__m128; C] {
    // Shuffles that spread sub-scales (2g, 2g+1) over eight bytes each, g = 0..8.
    let spread: [__m128i; 8] = std::array::from_fn(|g| {
        let (x, y) = ((2 * g) as i8, (2 * g + 1) as i8);
        _mm_setr_epi8(x, x, x, x, x, x, x, x, y, y, y, y, y, y, y, y)
    });
    let mut acc = [_mm_setzero_ps(); C];
    let (k, nb) = (a.k, a.nb);
    for b in 0..nb {
        let blk: [*const u8; 4] = std::array::from_fn(|i| wr[i].add(b * 210));
        prefetch4(&blk, ahead);
        let wd = scales4(std::array::from_fn(|i| blk[i].add(208)));
        let bsums: [__m256i; C] =
            std::array::from_fn(|c| _mm256_loadu_si256(a.bsums.as_ptr().add((rows[c] * nb + b) * 16) as *const __m256i));
        let mut dots = [[_mm256_setzero_si256(); 4]; C];
        for i in 0..4 {
            let scales = _mm_loadu_si128(blk[i].add(192) as *const __m128i);
            // The weights are stored as 0..64 for -32..32: subtract 32 * (sub-scale * input
            // sum) per 16-weight sub-block.
            let sc16 = _mm256_cvtepi8_epi16(scales);
            let mut s: [__m256i; C] = std::array::from_fn(|c| _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bsums[c])));
            for c in 0..C {
                s[c] = _mm256_sub_epi32(_mm256_setzero_si256(), s[c]);
            }
            for h in 0..2 {
                let q = q6k_values(blk[i], h);
                for (g, qg) in q.iter().enumerate() {
                    let sv = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, spread[4 * h + g]));
                    for c in 0..C {
                        let y = a.qs.as_ptr().add(rows[c] * k + b * 256 + 128 * h + 32 * g);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*qg, _mm256_loadu_si256(y as *const __m256i)), sv);
                        s[c] = _mm256_add_epi32(s[c], p);
                    }
                }
            }
            for c in 0..C {
                dots[c][i] = s[c];
            }
        }
        for c in 0..C {
            let dy = *a.d.get_unchecked(rows[c] * nb + b);
            let s = _mm_cvtepi32_ps(reduce4(dots[c]));
            acc[c] = _mm_fmadd_ps(s, _mm_mul_ps(wd, _mm_set1_ps(dy)), acc[c]);
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn weights(dtype: GgmlDType, n: usize, k: usize) -> QTensor {
        let w = Tensor::from_vec(values(n * k, 7), (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, dtype).unwrap()
    }

    fn ours(q: &QTensor, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = q.shape().dims2().unwrap();
        let mut out = vec![0f32; m * n];
        matmul(Kind::of(q.dtype()).unwrap(), &q.data().unwrap(), n, k, x, m, &mut out);
        out
    }

    fn close_to_candle(dtype: GgmlDType) {
        if !enabled() {
            return;
        }
        // n not a multiple of 4 and m not a multiple of the tile, to cover both tails.
        let (n, k, m) = (70, 512, 11);
        let q = weights(dtype, n, k);
        let x = values(m * k, 11);
        let got = ours(&q, &x, m);
        let mm = QMatMul::from_qtensor(q).unwrap();
        let want = mm.forward(&Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = got.iter().zip(&want).fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        eprintln!("{dtype:?}: largest difference {worst:e}, largest value {scale}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * scale.max(w.abs()), "{dtype:?} element {i}: {g} vs candle {w} (largest {scale})");
        }
    }

    #[test]
    fn q8_0_matches_candle() {
        close_to_candle(GgmlDType::Q8_0);
    }

    #[test]
    fn q5_0_matches_candle() {
        close_to_candle(GgmlDType::Q5_0);
    }

    #[test]
    fn q5_0_gives_the_bits_of_its_q8_0_widening() {
        if !enabled() {
            return;
        }
        let (n, k, m) = (13, 640, 5);
        let q5 = weights(GgmlDType::Q5_0, n, k);
        let q8 = crate::model::transformer::q5_0_as_q8_0(&q5).unwrap();
        let x = values(m * k, 5);
        let (a, b) = (ours(&q5, &x, m), ours(&q8, &x, m));
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "Q5_0 and its Q8_0 widening differ");
    }

    #[test]
    fn q4_1_matches_candle() {
        close_to_candle(GgmlDType::Q4_1);
    }

    #[test]
    fn q4k_matches_candle() {
        close_to_candle(GgmlDType::Q4K);
    }

    #[test]
    fn q6k_matches_candle() {
        close_to_candle(GgmlDType::Q6K);
    }

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        if !enabled() {
            return;
        }
        let (n, k) = (37, 768);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4_1, GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = weights(dtype, n, k);
            let x = values(64 * k, 3);
            let full = ours(&q, &x, 64);
            for m in [1usize, 3, 17, 64] {
                // The last m rows, so that each row sits at another place in the tiles.
                let part = ours(&q, &x[(64 - m) * k..], m);
                for (i, (a, b)) in part.iter().zip(&full[(64 - m) * n..]).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{dtype:?} batch {m} element {i}");
                }
            }
        }
    }

    #[test]
    fn many_products_give_the_bits_of_one_at_a_time() {
        if !enabled() {
            return;
        }
        let (k, m) = (512, 6);
        let x = values(m * k, 17);
        let qs: Vec<QTensor> = [(GgmlDType::Q5_0, 9), (GgmlDType::Q8_0, 12), (GgmlDType::Q4K, 5), (GgmlDType::Q6K, 8), (GgmlDType::Q4_1, 3)]
            .iter()
            .map(|&(d, n)| weights(d, n, k))
            .collect();
        let data: Vec<_> = qs.iter().map(|q| q.data().unwrap()).collect();
        let mut outs: Vec<Vec<f32>> = qs.iter().map(|q| vec![0f32; m * q.shape().dims2().unwrap().0]).collect();
        let mut products: Vec<Product> = qs
            .iter()
            .zip(&data)
            .zip(outs.iter_mut())
            .map(|((q, w), out)| Product { kind: Kind::of(q.dtype()).unwrap(), w, n: q.shape().dims2().unwrap().0, out })
            .collect();
        matmul_many(&mut products, k, &x, m);
        for (q, got) in qs.iter().zip(&outs) {
            let want = ours(q, &x, m);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{:?}: matmul_many differs from matmul", q.dtype());
        }
    }

    #[test]
    fn vnni_tile_gives_the_bits_of_the_avx2_tile() {
        if !vnni() {
            eprintln!("no AVX-512 VNNI on this CPU: only the AVX2 tile runs here");
            return;
        }
        // An odd number of blocks (the last one alone), n and m not multiples of the tiles.
        let (n, k, m) = (70, 7 * 32, 11);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4_1, GgmlDType::Q4K, GgmlDType::Q6K] {
            let k = if dtype.block_size() == 256 { 3 * 256 } else { k };
            let q = weights(dtype, n, k);
            let x = values(m * k, 13);
            let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
            let kind = Kind::of(dtype).unwrap();
            matmul_on(kind, &q.data().unwrap(), n, k, &x, m, &mut a, false);
            matmul_on(kind, &q.data().unwrap(), n, k, &x, m, &mut b, true);
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert_eq!(u.to_bits(), v.to_bits(), "{dtype:?} element {i}: AVX2 {u} vs VNNI {v}");
            }
        }
    }

    #[test]
    fn half_conversion_is_exact() {
        for h in [0u16, 0x3c00, 0xbc00, 0x0001, 0x03ff, 0x7bff, 0x3555, 0x8400] {
            let want = match h {
                0x3c00 => 1.0,
                0xbc00 => -1.0,
                0x0001 => 2f32.powi(-24),
                0x03ff => 1023.0 * 2f32.powi(-24),
                0x7bff => 65504.0,
                0x3555 => 0.333_251_95,
                0x8400 => -(2f32.powi(-14)),
                _ => 0.0,
            };
            assert_eq!(half_to_f32(h), want, "{h:#06x}");
        }
    }
}
