//! A loaded model with its tokenizer and identity: the thing stages use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use serde::Serialize;

use super::error::ModelError;
use super::tokenizer::Tokenizer;
use super::transformer::Model;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Load a file that carries a chat template (it is recorded in [`ModelInfo`]).
    pub allow_chat_template: bool,
    /// Where the model runs.
    pub device: DeviceSpec,
}

/// Where a model runs: `cpu` (kiln's kernels) or `cuda` / `cuda:N` (candle's CUDA backend, in
/// a build with `--features cuda`: scripts/build-cuda.sh).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!("unknown device \"{s}\": expected cpu, cuda or cuda:N")),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Open the device; an error names it and says what this build lacks.
    pub fn open(&self) -> Result<candle_core::Device, ModelError> {
        match self {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(ModelError::Request(format!(
                        "device {self}: this kiln is built without CUDA (build it with scripts/build-cuda.sh)"
                    )));
                }
                // f32 products on the tensor cores (TF32: inputs rounded to 10-bit mantissas,
                // sums in f32), as the dense products of prompts, scoring and training use.
                candle_core::cuda::set_gemm_reduced_precision_f32(true);
                candle_core::Device::new_cuda(*n).map_err(|e| ModelError::Request(format!("device {self}: {e}")))
            }
        }
    }
}

/// What a model file is, for manifests and `kiln model inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The file.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// general.architecture.
    pub architecture: String,
    /// general.name, when present.
    pub name: Option<String>,
    /// File size in bytes.
    pub file_size: u64,
    /// Tensor count per quantization type.
    pub tensor_types: BTreeMap<String, usize>,
    /// Total parameters (elements of all tensors).
    pub parameters: usize,
    /// Tokenizer kind (tokenizer.ggml.model).
    pub tokenizer: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Special token ids (bos, eos, unk, pad) when present.
    pub special_tokens: BTreeMap<String, u32>,
    /// Length of tokenizer.chat_template when the file carries one.
    pub chat_template_chars: Option<usize>,
    /// Whether a chat template was allowed at load time.
    pub chat_template_allowed: bool,
    /// Where the model runs.
    #[serde(skip)]
    pub device: DeviceSpec,
}

/// A model, its tokenizer and its identity.
pub struct Engine {
    /// The transformer.
    pub model: Model,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Identity and metadata.
    pub info: ModelInfo,
}

/// Read a GGUF's header (metadata and tensor table) with errors naming the file.
pub fn read_gguf(path: &Path) -> Result<(std::fs::File, gguf_file::Content), ModelError> {
    let mut file = std::fs::File::open(path).map_err(|source| ModelError::Read { path: path.to_path_buf(), source })?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| ModelError::Format { path: path.to_path_buf(), what: format!("not a readable GGUF file: {e}") })?;
    Ok((file, content))
}

/// Describe a GGUF without loading its weights.
pub fn inspect(path: &Path, content: &gguf_file::Content) -> Result<ModelInfo, ModelError> {
    let md = &content.metadata;
    let s = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
    let mut tensor_types = BTreeMap::new();
    let mut parameters = 0usize;
    for t in content.tensor_infos.values() {
        *tensor_types.entry(format!("{:?}", t.ggml_dtype)).or_insert(0) += 1;
        parameters += t.shape.elem_count();
    }
    let mut special_tokens = BTreeMap::new();
    for name in ["bos", "eos", "unknown", "padding", "eot"] {
        if let Some(v) = md.get(&format!("tokenizer.ggml.{name}_token_id")).and_then(|v| v.to_u32().ok()) {
            special_tokens.insert(name.to_string(), v);
        }
    }
    Ok(ModelInfo {
        path: path.to_path_buf(),
        sha256: crate::provenance::sha256_file(path).map_err(|source| ModelError::Read { path: path.to_path_buf(), source })?,
        architecture: s("general.architecture").unwrap_or_default(),
        name: s("general.name"),
        file_size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        tensor_types,
        parameters,
        tokenizer: s("tokenizer.ggml.model").unwrap_or_else(|| "(none)".into()),
        vocab_size: md.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()).map_or(0, |v| v.len()),
        special_tokens,
        chat_template_chars: s("tokenizer.chat_template").map(|t| t.chars().count()),
        chat_template_allowed: false,
        device: DeviceSpec::Cpu,
    })
}

impl Engine {
    /// Load a GGUF model: tokenizer from its metadata, weights kept quantized. A file carrying
    /// a chat template is refused unless `opts.allow_chat_template`.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Engine, ModelError> {
        let (mut file, content) = read_gguf(path)?;
        let mut info = inspect(path, &content)?;
        if let Some(len) = info.chat_template_chars {
            if !opts.allow_chat_template {
                return Err(ModelError::ChatTemplate { path: path.to_path_buf(), len });
            }
            info.chat_template_allowed = true;
            tracing::warn!(model = %path.display(), "loading a model that carries a chat template (allowed by config); kiln never applies it");
        }
        let tokenizer = Tokenizer::from_gguf(&content, &path.display().to_string())?;
        let device = opts.device.open()?;
        let model = Model::from_gguf(&content, &mut file, path, &device)?;
        info.device = opts.device;
        Ok(Engine { model, tokenizer, info })
    }

    /// Prompt token ids: BOS (when the model wants one) and the text.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let mut ids = Vec::new();
        if self.tokenizer.add_bos() {
            if let Some(b) = self.tokenizer.bos_id() {
                ids.push(b);
            }
        }
        ids.extend(self.tokenizer.encode(text)?);
        Ok(ids)
    }
}
