//! Deterministic seeds and choices: every sequence's sampler is seeded from (run seed, shard,
//! index, stream), so a sample's generation does not depend on what else was generated, in
//! which batch, in which process or on which machine.

use sha2::{Digest, Sha256};

use crate::config::pilot::InstructionType;

/// The seed of stream `stream` (e.g. "instruction", "response", "examples") of sample `index`
/// of `shard` in a run seeded with `run_seed`.
pub fn derive_seed(run_seed: u64, shard: u64, index: u64, stream: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"kiln-seed/v1\0");
    h.update(run_seed.to_le_bytes());
    h.update(shard.to_le_bytes());
    h.update(index.to_le_bytes());
    h.update(stream.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("sha256 has 32 bytes"))
}

/// SplitMix64: a tiny generator whose output is fixed forever (kiln's choices must not change
/// when a dependency updates its random number generators).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// `k` distinct items of `items`, in a random order (partial Fisher-Yates).
pub fn choose<T: Clone>(items: &[T], k: usize, seed: u64) -> Vec<T> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    let mut rng = SplitMix64::new(seed);
    let k = k.min(items.len());
    for i in 0..k {
        let j = i + rng.below((idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx[..k].iter().map(|&i| items[i].clone()).collect()
}

/// The instruction type of each of `count` samples: smooth weighted round robin, so any prefix
/// of the run follows the mix as closely as whole samples allow, and the counts of the whole
/// run are the mix's shares rounded.
pub fn type_schedule(types: &[InstructionType], count: usize) -> Vec<usize> {
    let mut current = vec![0.0f64; types.len()];
    let total: f64 = types.iter().map(|t| t.weight).sum();
    (0..count)
        .map(|_| {
            for (c, t) in current.iter_mut().zip(types) {
                *c += t.weight;
            }
            let mut best = 0;
            for i in 1..current.len() {
                // Ties (up to rounding) go to the type listed first.
                if current[i] > current[best] + 1e-9 {
                    best = i;
                }
            }
            current[best] -= total;
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(name: &str, w: f64) -> InstructionType {
        InstructionType { name: name.into(), description: String::new(), seeds: vec![], weight: w }
    }

    #[test]
    fn seeds_are_stable_and_distinct() {
        let a = derive_seed(42, 0, 7, "response");
        assert_eq!(a, derive_seed(42, 0, 7, "response"));
        assert_ne!(a, derive_seed(42, 0, 7, "instruction"));
        assert_ne!(a, derive_seed(42, 0, 8, "response"));
        assert_ne!(a, derive_seed(42, 1, 7, "response"));
        assert_ne!(a, derive_seed(43, 0, 7, "response"));
    }

    #[test]
    fn splitmix_reference_values() {
        // The reference SplitMix64 (Vigna) seeded with 0 starts e220a8397b1dcdaf 6e789e6aa1b965f4.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220a8397b1dcdaf);
        assert_eq!(r.next_u64(), 0x6e789e6aa1b965f4);
    }

    #[test]
    fn choose_is_distinct_and_seeded() {
        let items: Vec<u32> = (0..10).collect();
        let a = choose(&items, 5, 1);
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 5);
        assert_eq!(a, choose(&items, 5, 1));
        assert_ne!(a, choose(&items, 5, 2));
    }

    #[test]
    fn schedule_follows_the_mix() {
        let types = [ty("a", 0.5), ty("b", 0.25), ty("c", 0.25)];
        let s = type_schedule(&types, 8);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 4);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 2);
        assert_eq!(&s[..4], &[0, 1, 2, 0]);
        let even = [ty("a", 0.2), ty("b", 0.2), ty("c", 0.2), ty("d", 0.2), ty("e", 0.2)];
        assert_eq!(type_schedule(&even, 10), vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    }
}
