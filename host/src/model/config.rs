//! Model hyper-parameters, read from GGUF metadata.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use super::error::ModelError;

/// The architectures kiln has model code for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Gemma 3 (text): q/k norms, pre and post norms, GELU, sliding-window layers, embedding
    /// scaled by sqrt(d), NeoX-style rotary embedding.
    Gemma3,
    /// Llama: pre norms, SiLU, interleaved rotary embedding.
    Llama,
}

/// How rotary embeddings pair dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// (i, i + d/2): GPT-NeoX, gemma.
    Neox,
    /// (2i, 2i + 1): llama as stored in GGUF.
    Interleaved,
}

/// Everything the forward pass needs to know about the model's shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Hidden size.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of a head.
    pub head_dim: usize,
    /// Feed-forward size.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMS norm epsilon.
    pub eps: f64,
    /// Rotary base of global layers.
    pub rope_base: f32,
    /// Rotary base of sliding-window layers.
    pub rope_base_local: f32,
    /// Rotary dimensions (== head_dim for the supported models).
    pub rope_dims: usize,
    /// Sliding window (tokens a query sees, itself included), for the layers that have one.
    pub sliding_window: Option<usize>,
    /// Every n-th layer is global when a sliding window exists (gemma3: 6).
    pub sliding_pattern: usize,
    /// Attention scale.
    pub attn_scale: f32,
    /// Context length the model was trained for.
    pub context: usize,
}

impl ModelConfig {
    /// Read the configuration from GGUF metadata.
    pub fn from_metadata(md: &HashMap<String, Value>, path: &Path) -> Result<ModelConfig, ModelError> {
        let fmt = |what: String| ModelError::Format { path: path.to_path_buf(), what };
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| fmt("missing general.architecture".into()))?;
        let arch = match arch_name.as_str() {
            "gemma3" => Arch::Gemma3,
            "llama" => Arch::Llama,
            _ => return Err(ModelError::Architecture { path: path.to_path_buf(), arch: arch_name }),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_u = |k: &str| -> Result<usize, ModelError> {
            let v = md.get(&key(k)).ok_or_else(|| fmt(format!("missing metadata key {}", key(k))))?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|_| fmt(format!("metadata key {} is {v:?}, expected an integer", key(k))))
        };
        let opt_u = |k: &str| md.get(&key(k)).and_then(|v| v.to_u32().ok().map(|x| x as usize));
        let opt_f = |k: &str| md.get(&key(k)).and_then(|v| v.to_f32().ok());
        let hidden = get_u("embedding_length")?;
        let heads = get_u("attention.head_count")?;
        let kv_heads = opt_u("attention.head_count_kv").unwrap_or(heads);
        let head_dim = opt_u("attention.key_length").unwrap_or(hidden / heads.max(1));
        let vocab = opt_u("vocab_size")
            .or_else(|| md.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()).map(|v| v.len()))
            .ok_or_else(|| fmt("cannot tell the vocabulary size (no vocab_size, no tokenizer.ggml.tokens)".into()))?;
        let eps = opt_f("attention.layer_norm_rms_epsilon").ok_or_else(|| fmt(format!("missing {}", key("attention.layer_norm_rms_epsilon"))))? as f64;
        let rope_base = opt_f("rope.freq_base").unwrap_or(10_000.0);
        let cfg = ModelConfig {
            arch,
            hidden,
            layers: get_u("block_count")?,
            heads,
            kv_heads,
            head_dim,
            ffn: get_u("feed_forward_length")?,
            vocab,
            eps,
            rope_base,
            rope_base_local: match arch {
                Arch::Gemma3 => opt_f("rope.local_freq_base").unwrap_or(10_000.0),
                Arch::Llama => rope_base,
            },
            rope_dims: opt_u("rope.dimension_count").unwrap_or(head_dim),
            sliding_window: match arch {
                Arch::Gemma3 => opt_u("attention.sliding_window"),
                Arch::Llama => None,
            },
            sliding_pattern: opt_u("attention.sliding_window_pattern").unwrap_or(6),
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            context: opt_u("context_length").unwrap_or(2048),
        };
        if cfg.heads == 0 || cfg.kv_heads == 0 || cfg.heads % cfg.kv_heads != 0 {
            return Err(fmt(format!("head counts {} / {} are not a valid grouping", cfg.heads, cfg.kv_heads)));
        }
        if cfg.rope_dims != cfg.head_dim || cfg.head_dim % 2 != 0 {
            return Err(fmt(format!("rotary dimensions {} with head dimension {} are not supported", cfg.rope_dims, cfg.head_dim)));
        }
        Ok(cfg)
    }

    /// The rotary style of the architecture.
    pub fn rope_style(&self) -> RopeStyle {
        match self.arch {
            Arch::Gemma3 => RopeStyle::Neox,
            Arch::Llama => RopeStyle::Interleaved,
        }
    }

    /// The sliding window of layer `l`, if it has one.
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        let w = self.sliding_window?;
        if self.sliding_pattern > 0 && (l + 1) % self.sliding_pattern == 0 {
            None
        } else {
            Some(w)
        }
    }
}
