//! A small counter-based random source: every random choice in training (adapter
//! initialisation, shuffling, dropout masks) is a pure function of the run seed and where it
//! happens, so a resumed run draws exactly what an uninterrupted one would.

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A stream from a seed.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// A stream for one place: the seed mixed with a list of coordinates.
    pub fn at(seed: u64, coords: &[u64]) -> SplitMix {
        SplitMix(coords.iter().fold(Self::mix(seed), |h, &c| Self::mix(h ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15))))
    }

    /// The SplitMix64 finaliser.
    pub fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        Self::mix(self.0.wrapping_sub(0x9E37_79B9_7F4A_7C15))
    }

    /// Draw `i` of this stream (0: the next), without drawing: the stream is counter-based.
    pub fn peek_u64(&self, i: u64) -> u64 {
        Self::mix(self.0.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// The stream's state: with [`SplitMix::peek_u64`]'s rule, what a device kernel needs to
    /// make the same draws.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// A 64-bit draw as a unit value in [0, 1) (its top 53 bits).
    pub fn to_unit(x: u64) -> f64 {
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}
