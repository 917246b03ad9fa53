//! Training examples and the order they are seen in: a held-out split chosen by id, examples
//! over the length limit left out (and counted), seeded shuffling, length-bucketed batches
//! padded on the right.

use serde::{Deserialize, Serialize};

use super::model::Batch;
use super::rng::SplitMix;

/// One example: the prompt the response was generated from (BOS included when the model
/// wants one) and the response's tokens (EOS included). Only response tokens carry a loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The sample id.
    pub id: String,
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// Response tokens, ending with EOS.
    pub response: Vec<u32>,
}

impl Example {
    /// Tokens in the sequence.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.response.len()
    }

    /// True when it has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The examples split for training.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// Trained on.
    pub train: Vec<Example>,
    /// Held out for the validation loss.
    pub validation: Vec<Example>,
    /// Ids left out for being longer than the limit.
    pub too_long: Vec<String>,
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Split by a seeded hash of each id (so the split does not depend on file order), leaving out
/// examples of more than `max_len` tokens or without a response.
pub fn split(examples: Vec<Example>, validation_fraction: f64, max_len: usize, seed: u64) -> Split {
    let mut s = Split::default();
    for e in examples {
        if e.len() > max_len || e.response.is_empty() {
            s.too_long.push(e.id);
            continue;
        }
        if SplitMix::at(seed, &[0x5711, fnv1a(&e.id)]).unit() < validation_fraction {
            s.validation.push(e);
        } else {
            s.train.push(e);
        }
    }
    s
}

/// The micro-batches of all epochs, as indices into `examples`: per epoch a seeded shuffle,
/// then windows of `batch * 8` examples sorted by length and cut into batches (similar lengths
/// pad little), then the batches of the epoch shuffled.
pub fn plan(examples: &[Example], batch: usize, epochs: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for epoch in 0..epochs {
        let mut rng = SplitMix::at(seed, &[0xE90C, epoch as u64]);
        let mut order: Vec<usize> = (0..examples.len()).collect();
        rng.shuffle(&mut order);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for window in order.chunks(batch * 8) {
            let mut w = window.to_vec();
            w.sort_by_key(|&i| (examples[i].len(), i));
            batches.extend(w.chunks(batch).map(|c| c.to_vec()));
        }
        rng.shuffle(&mut batches);
        out.extend(batches);
    }
    out
}

/// Pad a set of examples into one batch (padding with `pad`, which carries no loss).
pub fn collate(examples: &[&Example], pad: u32) -> Batch {
    let len = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let rows = examples.len();
    let mut ids = Vec::with_capacity(rows * len);
    let mut labels = Vec::with_capacity(rows * len);
    for e in examples {
        let seq: Vec<u32> = e.prompt.iter().chain(&e.response).copied().collect();
        for i in 0..len {
            ids.push(seq.get(i).copied().unwrap_or(pad));
            // Position i predicts token i + 1: a loss only where that token is the response's.
            labels.push(if i + 1 >= e.prompt.len() && i + 1 < seq.len() { Some(seq[i + 1]) } else { None });
        }
    }
    Batch { ids, labels, rows, len }
}
