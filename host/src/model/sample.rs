//! Choosing the next token from a row of logits: greedy, or temperature sampling restricted by
//! top-k and then top-p (nucleus), with one seeded random stream per sequence.
//!
//! The work per token is a few linear passes over the vocabulary (scale, maximum, the softmax
//! normaliser, the top-k selection); only the candidates are sorted. Sorting or partitioning
//! the whole vocabulary, as a generic sampler does, costs 5-20 ms per token on gemma3's
//! 262 144-entry vocabulary - more than the model's own decode step at large batches.
//!
//! Candidates are ordered by logit, higher first, and equal logits by token id, lower first: a
//! strict total order, so the top-k set and the nucleus are the same whatever the selection
//! algorithm. Non-finite logits (NaN, -inf) are never candidates.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::generate::SamplingParams;

/// Candidate sets up to this size are kept by insertion into a sorted buffer; larger ones by
/// partitioning a copy of the row.
const INSERTION_LIMIT: usize = 128;

impl SamplingParams {
    /// How many first candidates of a row suffice for these parameters (greedy: 1; top-k: k),
    /// so that a device can send those instead of the whole row (see
    /// [`Sampler::sample_candidates`]); None when the whole row of `vocab` entries is needed.
    pub fn candidates_needed(&self, vocab: usize) -> Option<usize> {
        if self.temperature <= 0.0 || self.top_k == 1 {
            Some(1)
        } else if self.top_k > 0 && self.top_k < vocab && self.top_k <= INSERTION_LIMIT {
            Some(self.top_k)
        } else {
            None
        }
    }
}

/// One sequence's sampler: its parameters and its own random stream.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// `a` comes before `b`: a higher value, or an equal value and a lower id.
fn before(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// Entries scanned as one block: a block whose maximum cannot matter is skipped whole (the
/// maximum of a block is a vectorised pass).
const BLOCK: usize = 64;

/// The largest value of a block (NaN ignored; +inf counts, and is then looked at closely).
fn block_max(b: &[f32]) -> f32 {
    b.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// The index of the largest finite logit (the lowest such index on ties); None when there is
/// no finite logit.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let (mut best, mut at) = (f32::NEG_INFINITY, None);
    for (c, block) in logits.chunks(BLOCK).enumerate() {
        if !(block_max(block) > best) {
            continue;
        }
        for (k, &v) in block.iter().enumerate() {
            if v > best && v.is_finite() {
                best = v;
                at = Some((c * BLOCK + k) as u32);
            }
        }
    }
    at
}

/// The k first entries offered, in candidate order. Entries must be offered in increasing
/// id order: then a later entry equal to the k-th never displaces it, and once the buffer is
/// full only a strictly larger value gets in.
struct Best {
    buf: Vec<(f32, u32)>,
    k: usize,
    floor: f32,
}

impl Best {
    fn new(k: usize) -> Best {
        Best { buf: Vec::with_capacity(k + 1), k, floor: f32::NEG_INFINITY }
    }

    fn full(&self) -> bool {
        self.buf.len() == self.k
    }

    fn offer(&mut self, v: f32, id: u32) {
        if self.full() && !(v > self.floor) || !v.is_finite() {
            return;
        }
        let e = (v, id);
        let at = self.buf.partition_point(|&x| before(x, e));
        self.buf.insert(at, e);
        self.buf.truncate(self.k);
        if self.full() {
            self.floor = self.buf[self.k - 1].0;
        }
    }
}

/// The `k` first entries of `row` in candidate order (non-finite entries skipped), sorted.
fn top_k(row: &[f32], k: usize) -> Vec<(f32, u32)> {
    if k == 0 {
        return Vec::new();
    }
    if k <= INSERTION_LIMIT {
        let mut best = Best::new(k);
        for (c, block) in row.chunks(BLOCK).enumerate() {
            if best.full() && !(block_max(block) > best.floor) {
                continue;
            }
            for (j, &v) in block.iter().enumerate() {
                best.offer(v, (c * BLOCK + j) as u32);
            }
        }
        best.buf
    } else {
        let mut all: Vec<(f32, u32)> = row.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| (v, i as u32)).collect();
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if all.len() > k {
            all.select_nth_unstable_by(k, order);
            all.truncate(k);
        }
        all.sort_unstable_by(order);
        all
    }
}

/// The `k` first of (value, id) entries given in increasing id order, sorted.
fn top_k_of_entries(entries: &[(f32, u32)], k: usize) -> Vec<(f32, u32)> {
    let mut best = Best::new(k.max(1));
    for &(v, id) in entries {
        best.offer(v, id);
    }
    best.buf.truncate(k);
    best.buf
}

/// Which blocks of `size` entries of a row can hold its `k` first entries, given each block's
/// maximum: every block whose maximum is not below the k-th largest finite maximum (a block of
/// NaN or +inf included, a block of -inf never). An entry in any other block has k larger
/// entries - the maxima of k blocks - before it.
pub fn blocks_for_top_k(maxima: &[f32], k: usize) -> Vec<usize> {
    let mut finite: Vec<f32> = maxima.iter().copied().filter(|m| m.is_finite()).collect();
    let threshold = if finite.len() > k && k > 0 {
        *finite.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a)).1
    } else {
        f32::NEG_INFINITY
    };
    (0..maxima.len()).filter(|&j| !(maxima[j] < threshold) && maxima[j] != f32::NEG_INFINITY).collect()
}

/// The first entry whose running sum of weights passes `target`; the last one if rounding
/// leaves the target unreached.
fn pick(weighted: impl Iterator<Item = (u32, f64)>, target: f64) -> Option<u32> {
    let (mut acc, mut last) = (0.0, None);
    for (i, w) in weighted {
        acc += w;
        last = Some(i);
        if acc > target {
            break;
        }
    }
    last
}

impl Sampler {
    /// A sampler whose random stream starts from `seed`.
    pub fn new(seed: u64, params: SamplingParams) -> Sampler {
        Sampler { params, rng: StdRng::seed_from_u64(seed) }
    }

    /// How many first candidates of a row suffice for this sampler (see
    /// [`SamplingParams::candidates_needed`]).
    pub fn candidates_needed(&self, vocab: usize) -> Option<usize> {
        self.params.candidates_needed(vocab)
    }

    /// The next token for one row of logits; None when the row has no finite logit.
    ///
    /// With temperature T, a token's weight is exp((logit - max) / T). top-k keeps the k
    /// first candidates; top-p then keeps, in candidate order, each candidate while the mass
    /// before it is under top_p, the mass being normalised over what top-k left (the whole
    /// vocabulary without top-k) - the rules of transformers' top-k and top-p warpers. One
    /// uniform draw per token picks among what is left.
    pub fn sample(&mut self, logits: &[f32]) -> Option<u32> {
        let p = self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let u: f64 = self.rng.random::<f64>();
        if p.top_k > 0 && p.top_k < logits.len() {
            // The ranking does not depend on T: select on the raw logits.
            return self.from_top(&top_k(logits, p.top_k), u);
        }
        let inv_t = 1.0 / p.temperature;
        let max = logits[argmax(logits)? as usize];
        let w: Vec<f32> = logits.iter().map(|&v| if v.is_finite() { ((v - max) * inv_t as f32).exp() } else { 0.0 }).collect();
        let z: f64 = w.iter().map(|&x| f64::from(x)).sum();
        if p.top_p >= 1.0 {
            return pick(w.iter().enumerate().map(|(i, &x)| (i as u32, f64::from(x))), u * z);
        }
        self.nucleus(&nucleus_candidates(&w, z, p.top_p), z, u)
    }

    /// The same choice as [`Sampler::sample`] on the whole row, from entries of the row that
    /// include its first [`Sampler::candidates_needed`] candidates, given as (logit, id) in
    /// increasing id order. Only for a sampler that has a `candidates_needed`.
    pub fn sample_candidates(&mut self, entries: &[(f32, u32)]) -> Option<u32> {
        let p = self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return top_k_of_entries(entries, 1).first().map(|e| e.1);
        }
        let u: f64 = self.rng.random::<f64>();
        self.from_top(&top_k_of_entries(entries, p.top_k), u)
    }

    /// Sample from the top-k candidates (sorted) with the uniform draw `u`.
    fn from_top(&self, top: &[(f32, u32)], u: f64) -> Option<u32> {
        let inv_t = 1.0 / self.params.temperature;
        let max = top.first()?.0;
        let c: Vec<(u32, f64)> = top.iter().map(|&(v, i)| (i, (f64::from(v - max) * inv_t).exp())).collect();
        let z = c.iter().map(|c| c.1).sum();
        self.nucleus(&c, z, u)
    }

    /// Keep candidates (in candidate order, with weights) while the mass before them is under
    /// top_p of `z`, then pick one with the uniform draw `u`.
    fn nucleus(&self, candidates: &[(u32, f64)], z: f64, u: f64) -> Option<u32> {
        let top_p = self.params.top_p;
        let mut mass = 0.0;
        let kept: Vec<(u32, f64)> = candidates
            .iter()
            .take_while(|c| {
                let keep = mass < top_p * z;
                mass += c.1;
                keep
            })
            .copied()
            .collect();
        let total: f64 = kept.iter().map(|c| c.1).sum();
        pick(kept.into_iter(), u * total)
    }
}

/// The candidates of a nucleus of mass `top_p` over weights `w` (summing to `z`), in
/// candidate order with their weights: the entries whose share exceeds a floor, the floor
/// lowered until their mass reaches `top_p`, so that the nucleus - a prefix of the whole
/// ordered vocabulary - lies within them.
fn nucleus_candidates(w: &[f32], z: f64, top_p: f64) -> Vec<(u32, f64)> {
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    for floor in [1e-3f64, 1e-5, 0.0] {
        let cut = floor * z;
        let mut c: Vec<(u32, f64)> = w.iter().enumerate().filter(|(_, &x)| f64::from(x) > cut).map(|(i, &x)| (i as u32, f64::from(x))).collect();
        if floor == 0.0 || c.iter().map(|x| x.1).sum::<f64>() >= top_p * z {
            c.sort_unstable_by(order);
            return c;
        }
    }
    unreachable!("the last floor takes every entry")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_p: f64, top_k: usize) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k }
    }

    /// Frequencies of each token over `n` draws from one seeded sampler.
    fn freqs(logits: &[f32], p: SamplingParams, n: usize) -> Vec<f64> {
        let mut s = Sampler::new(7, p);
        let mut f = vec![0.0; logits.len()];
        for _ in 0..n {
            f[s.sample(logits).unwrap() as usize] += 1.0 / n as f64;
        }
        f
    }

    fn softmax(l: &[f32], t: f64) -> Vec<f64> {
        let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = l.iter().map(|&v| ((v as f64 - m) / t).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    }

    #[test]
    fn greedy_takes_the_first_largest_finite_logit() {
        let mut s = Sampler::new(0, params(0.0, 1.0, 0));
        assert_eq!(s.sample(&[0.5, 2.0, f32::NAN, 2.0, -1.0]), Some(1));
        assert_eq!(s.sample(&[f32::NAN, f32::NEG_INFINITY]), None);
        // Across blocks, with +inf and NaN in an earlier block.
        let mut row = vec![-1.0f32; 300];
        row[5] = f32::INFINITY;
        row[6] = f32::NAN;
        row[130] = 4.0;
        row[250] = 4.0;
        assert_eq!(s.sample(&row), Some(130));
        assert_eq!(top_k(&row, 3), vec![(4.0, 130), (4.0, 250), (-1.0, 0)]);
        // top_k 1 is greedy at any temperature.
        let mut s = Sampler::new(0, params(1.5, 1.0, 1));
        assert_eq!(s.sample(&[0.0, 3.0, 3.0]), Some(1));
    }

    #[test]
    fn full_sampling_follows_the_softmax() {
        let l = [1.0f32, 0.0, -1.0, 2.0, 0.5];
        let f = freqs(&l, params(0.8, 1.0, 0), 40_000);
        for (a, b) in f.iter().zip(softmax(&l, 0.8)) {
            assert!((a - b).abs() < 0.01, "{f:?}");
        }
    }

    #[test]
    fn top_k_keeps_the_k_best_renormalised() {
        let l = [1.0f32, 3.0, -2.0, 2.5, 2.5, 0.0];
        let f = freqs(&l, params(1.0, 1.0, 3), 40_000);
        // Ties: of the two 2.5s both are in (ids 3 and 4 beat 1.0); the k = 3 set is {1, 3, 4}.
        let p = softmax(&[3.0, 2.5, 2.5], 1.0);
        assert!(f[0] == 0.0 && f[2] == 0.0 && f[5] == 0.0, "{f:?}");
        for (id, want) in [(1, p[0]), (3, p[1]), (4, p[2])] {
            assert!((f[id] - want).abs() < 0.01, "{f:?}");
        }
        // A tie at the boundary goes to the lower id.
        let f = freqs(&[0.0, 1.0, 1.0, 1.0], params(1.0, 1.0, 2), 2_000);
        assert!(f[3] == 0.0 && f[0] == 0.0 && f[1] > 0.0 && f[2] > 0.0, "{f:?}");
        // The partitioning path (k above the insertion limit) picks the same set.
        let row: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        assert_eq!(top_k(&row, 200), {
            let mut all: Vec<(f32, u32)> = row.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.truncate(200);
            all
        });
        assert_eq!(top_k(&row, 100), top_k(&row, 200)[..100].to_vec());
    }

    #[test]
    fn nucleus_is_the_smallest_prefix_reaching_top_p() {
        // Probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 (ids 2, 0, 4, 1, 3).
        let l: Vec<f32> = [0.25f64, 0.0625, 0.5, 0.0625, 0.125].iter().map(|p| p.ln() as f32).collect();
        // top_p 0.7: 0.5 (< 0.7, keep), 0.75 after the second (stop): ids 2 and 0 in 2:1.
        let f = freqs(&l, params(1.0, 0.7, 0), 30_000);
        assert!((f[2] - 2.0 / 3.0).abs() < 0.01 && (f[0] - 1.0 / 3.0).abs() < 0.01, "{f:?}");
        assert_eq!(f[1] + f[3] + f[4], 0.0);
        // top-k 3, then top-p over the three renormalised (4/7, 2/7, 1/7): with 0.8 the mass
        // before id 4 is 6/7, so ids 2 and 0 only; with 0.9 id 4 too.
        let f = freqs(&l, params(1.0, 0.8, 3), 30_000);
        assert!(f[1] + f[3] + f[4] == 0.0 && (f[2] - 2.0 / 3.0).abs() < 0.01, "{f:?}");
        let f = freqs(&l, params(1.0, 0.9, 3), 30_000);
        assert!(f[1] + f[3] == 0.0 && (f[4] - 1.0 / 7.0).abs() < 0.01, "{f:?}");
        // A flat distribution over a large vocabulary: the nucleus reaches past the floors.
        let flat = vec![0.0f32; 50_000];
        let mut s = Sampler::new(3, params(1.0, 0.5, 0));
        let ids: Vec<u32> = (0..200).map(|_| s.sample(&flat).unwrap()).collect();
        assert!(ids.iter().all(|&i| i < 25_001), "ties go to the lower ids: {:?}", ids.iter().max());
        assert!(ids.iter().any(|&i| i > 12_000));
    }

    /// The entries of the blocks a device would send for `k` candidates, in id order.
    fn block_entries(row: &[f32], size: usize, k: usize) -> Vec<(f32, u32)> {
        let maxima: Vec<f32> = row.chunks(size).map(|b| b.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))).collect();
        blocks_for_top_k(&maxima, k).into_iter().flat_map(|j| (j * size..((j + 1) * size).min(row.len())).map(|i| (row[i], i as u32))).collect()
    }

    #[test]
    fn candidates_from_blocks_give_the_whole_row_choice() {
        let mut x = 0x9E37_79B9u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for trial in 0..40 {
            let n = 500 + (next() % 3000) as usize;
            // Coarse values, so that ties (also across blocks) are common; some -inf and NaN.
            let row: Vec<f32> = (0..n)
                .map(|_| match next() % 50 {
                    0 => f32::NEG_INFINITY,
                    1 => f32::NAN,
                    r => (r % 12) as f32 * 0.5 - (next() % 3) as f32,
                })
                .collect();
            for p in [params(0.0, 1.0, 0), params(0.8, 1.0, 1), params(0.7, 0.9, 40), params(1.3, 1.0, 5), params(0.5, 0.6, 128)] {
                let mut a = Sampler::new(trial, p);
                let mut b = Sampler::new(trial, p);
                let k = a.candidates_needed(n).expect("greedy and small top-k need candidates only");
                let entries = block_entries(&row, 1 + trial as usize % 64, k);
                for _ in 0..5 {
                    assert_eq!(a.sample(&row), b.sample_candidates(&entries), "trial {trial}, {p:?}");
                }
            }
        }
        // Whole rows are needed for top-p alone, for full sampling and for large k.
        assert_eq!(Sampler::new(0, params(0.7, 0.9, 0)).candidates_needed(1000), None);
        assert_eq!(Sampler::new(0, params(0.7, 1.0, 0)).candidates_needed(1000), None);
        assert_eq!(Sampler::new(0, params(0.7, 1.0, 500)).candidates_needed(1000), None);
        assert_eq!(Sampler::new(0, params(0.7, 1.0, 5)).candidates_needed(5), None);
    }

    #[test]
    fn one_seed_one_stream() {
        let l: Vec<f32> = (0..5000).map(|i| ((i * 31) % 97) as f32 / 10.0).collect();
        let p = params(0.7, 0.9, 40);
        let draw = |seed| {
            let mut s = Sampler::new(seed, p);
            (0..50).map(|_| s.sample(&l).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        // Non-finite logits never come out.
        let mut l2 = l.clone();
        l2[0] = f32::NAN;
        l2[1] = f32::INFINITY;
        let mut s = Sampler::new(1, params(1.0, 1.0, 0));
        assert!((0..500).all(|_| !matches!(s.sample(&l2), Some(0) | Some(1))));
    }
}
