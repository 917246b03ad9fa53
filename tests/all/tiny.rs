//! Tiny models for tests: random weights, a vocabulary trained here on a small corpus, written
//! as real GGUF files.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// The corpus the tiny tokenizers are trained on.
pub const CORPUS: &str = "the cat sat on the mat. the dog ate the bone. a bird sang in the tree. \
the sea is blue and the sky is grey. instruction: write a poem. response: the waves come and go.";

/// Shape and flavour of a tiny model.
#[derive(Debug, Clone)]
pub struct Tiny {
    pub arch: &'static str,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub layers: usize,
    pub sliding_window: Option<usize>,
    pub sliding_pattern: usize,
    pub dtype: GgmlDType,
    /// The (tied) embedding's type.
    pub embed_dtype: GgmlDType,
    pub seed: u64,
    pub eos: u32,
    pub chat_template: Option<String>,
}

impl Tiny {
    pub fn gemma3() -> Tiny {
        Tiny {
            arch: "gemma3",
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            ffn: 128,
            layers: 3,
            sliding_window: Some(8),
            sliding_pattern: 3,
            dtype: GgmlDType::Q8_0,
            embed_dtype: GgmlDType::Q8_0,
            seed: 1,
            eos: 1,
            chat_template: None,
        }
    }

    pub fn llama() -> Tiny {
        Tiny { arch: "llama", hidden: 64, heads: 4, kv_heads: 2, head_dim: 16, ffn: 128, layers: 2, sliding_window: None, sliding_pattern: 0, dtype: GgmlDType::Q4_1, seed: 2, ..Tiny::gemma3() }
    }
}

/// A SentencePiece-style vocabulary trained with byte-pair merges on [`CORPUS`]: specials,
/// 256 byte tokens, characters, then merged pieces scored by merge order.
pub fn trained_vocab(merges: usize) -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens: Vec<String> = vec!["<pad>".into(), "<eos>".into(), "<bos>".into(), "<unk>".into()];
    let mut types = vec![3, 3, 3, 2];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let text = CORPUS.replace(' ', "\u{2581}");
    // SentencePiece style: the word-boundary mark starts each word.
    let mut words: Vec<Vec<String>> = text
        .split('\u{2581}')
        .filter(|w| !w.is_empty())
        .map(|w| std::iter::once("\u{2581}".to_string()).chain(w.chars().map(|c| c.to_string())).collect())
        .collect();
    let mut pieces: Vec<String> = Vec::new();
    for w in &words {
        for c in w {
            if !pieces.contains(c) {
                pieces.push(c.clone());
            }
        }
    }
    let chars = pieces.len();
    for _ in 0..merges {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for w in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += 1;
            }
        }
        let Some(((a, b), _)) = counts.into_iter().max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0))) else { break };
        let merged = format!("{a}{b}");
        for w in words.iter_mut() {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i] = merged.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        pieces.push(merged);
    }
    let mut scores = vec![0f32; tokens.len()];
    for (i, p) in pieces.into_iter().enumerate() {
        tokens.push(p);
        types.push(1);
        // As in SentencePiece BPE models: the earlier a merge was learned, the higher its
        // score; single characters come last.
        scores.push(if i < chars { -1000.0 - i as f32 } else { -((i - chars) as f32) });
    }
    (tokens, scores, types)
}

fn randn(seed: u64, shape: (usize, usize), std: f64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = shape.0 * shape.1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            // Sum of uniforms: cheap, deterministic, roughly normal.
            let mut acc = 0.0;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            }
            (acc * std * 1.7) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Write the tiny model to `path`.
pub fn write(t: &Tiny, path: &Path) {
    use gguf_file::Value as V;
    let (tokens, scores, types) = trained_vocab(40);
    let vocab = tokens.len();
    let a = t.arch;
    let mut md: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(a.into())),
        ("general.name".into(), V::String(format!("tiny-{a}"))),
        (format!("{a}.embedding_length"), V::U32(t.hidden as u32)),
        (format!("{a}.block_count"), V::U32(t.layers as u32)),
        (format!("{a}.feed_forward_length"), V::U32(t.ffn as u32)),
        (format!("{a}.attention.head_count"), V::U32(t.heads as u32)),
        (format!("{a}.attention.head_count_kv"), V::U32(t.kv_heads as u32)),
        (format!("{a}.attention.key_length"), V::U32(t.head_dim as u32)),
        (format!("{a}.attention.value_length"), V::U32(t.head_dim as u32)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), V::F32(1e-6)),
        (format!("{a}.rope.freq_base"), V::F32(10_000.0)),
        (format!("{a}.context_length"), V::U32(512)),
        ("tokenizer.ggml.model".into(), V::String("llama".into())),
        ("tokenizer.ggml.pre".into(), V::String("default".into())),
        ("tokenizer.ggml.tokens".into(), V::Array(tokens.iter().map(|s| V::String(s.clone())).collect())),
        ("tokenizer.ggml.scores".into(), V::Array(scores.iter().map(|&s| V::F32(s)).collect())),
        ("tokenizer.ggml.token_type".into(), V::Array(types.iter().map(|&s| V::I32(s)).collect())),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(2)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(t.eos)),
        ("tokenizer.ggml.unknown_token_id".into(), V::U32(3)),
        ("tokenizer.ggml.padding_token_id".into(), V::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), V::Bool(true)),
        ("tokenizer.ggml.add_space_prefix".into(), V::Bool(false)),
    ];
    if let Some(w) = t.sliding_window {
        md.push((format!("{a}.attention.sliding_window"), V::U32(w as u32)));
        md.push((format!("{a}.attention.sliding_window_pattern"), V::U32(t.sliding_pattern as u32)));
    }
    if let Some(tpl) = &t.chat_template {
        md.push(("tokenizer.chat_template".into(), V::String(tpl.clone())));
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut seed = t.seed * 1000;
    let mut q = |name: String, shape: (usize, usize), std: f64, dtype: GgmlDType| {
        seed += 1;
        let w = randn(seed, shape, std);
        (name, QTensor::quantize(&w, dtype).unwrap())
    };
    let norm = |name: String, n: usize, seed: u64| {
        let w = (randn(seed, (1, n), 0.1).reshape(n).unwrap() + 1.0).unwrap();
        (name, QTensor::quantize(&w, GgmlDType::F32).unwrap())
    };
    // Small embeddings: the output projection is tied, and moderate logits keep sampling diverse.
    tensors.push(q("token_embd.weight".into(), (vocab, t.hidden), 0.15, t.embed_dtype));
    tensors.push(norm("output_norm.weight".into(), t.hidden, 7));
    let qd = t.heads * t.head_dim;
    let kd = t.kv_heads * t.head_dim;
    let s_in = 1.0 / (t.hidden as f64).sqrt();
    for l in 0..t.layers {
        let p = format!("blk.{l}");
        tensors.push(q(format!("{p}.attn_q.weight"), (qd, t.hidden), s_in, t.dtype));
        tensors.push(q(format!("{p}.attn_k.weight"), (kd, t.hidden), s_in, t.dtype));
        tensors.push(q(format!("{p}.attn_v.weight"), (kd, t.hidden), s_in, t.dtype));
        tensors.push(q(format!("{p}.attn_output.weight"), (t.hidden, qd), 1.0 / (qd as f64).sqrt(), t.dtype));
        tensors.push(q(format!("{p}.ffn_gate.weight"), (t.ffn, t.hidden), s_in, t.dtype));
        tensors.push(q(format!("{p}.ffn_up.weight"), (t.ffn, t.hidden), s_in, t.dtype));
        tensors.push(q(format!("{p}.ffn_down.weight"), (t.hidden, t.ffn), 1.0 / (t.ffn as f64).sqrt(), t.dtype));
        tensors.push(norm(format!("{p}.attn_norm.weight"), t.hidden, 100 + l as u64));
        tensors.push(norm(format!("{p}.ffn_norm.weight"), t.hidden, 200 + l as u64));
        if a == "gemma3" {
            tensors.push(norm(format!("{p}.attn_q_norm.weight"), t.head_dim, 300 + l as u64));
            tensors.push(norm(format!("{p}.attn_k_norm.weight"), t.head_dim, 400 + l as u64));
            tensors.push(norm(format!("{p}.post_attention_norm.weight"), t.hidden, 500 + l as u64));
            tensors.push(norm(format!("{p}.post_ffw_norm.weight"), t.hidden, 600 + l as u64));
        }
    }
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}
