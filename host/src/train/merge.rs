//! Merging a LoRA adapter into its base: a new GGUF whose adapted projections hold
//! `W + lora_alpha / r * B A` (in the GGUF's own row order), every other tensor and every
//! metadata entry copied unchanged, and the adapter's provenance recorded in `kiln.adapter.*`
//! keys. The result loads like any base model, in kiln and in llama.cpp.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use crate::model::{ModelConfig, ModelError};

use super::error::TrainError;
use super::lora::{Adapters, MODULES};
use super::model::GGUF_NAMES;

/// The storage type of the merged projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MergedType {
    /// 32-bit floats: exact, the largest file.
    F32,
    /// 16-bit floats: the adapter's update survives (a relative rounding of 2^-11), half the size.
    F16,
    /// 8-bit blocks (ggml's Q8_0): a quarter of f32 and kiln's fast kernels, but each block's
    /// rounding step (its largest weight / 127) can hide the smallest updates.
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl MergedType {
    fn ggml(self) -> GgmlDType {
        match self {
            MergedType::F32 => GgmlDType::F32,
            MergedType::F16 => GgmlDType::F16,
            MergedType::Q8_0 => GgmlDType::Q8_0,
        }
    }
}

/// What a merge did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    /// The base GGUF.
    pub base: PathBuf,
    /// Its sha256.
    pub base_sha256: String,
    /// The adapter folder.
    pub adapter: PathBuf,
    /// sha256 of its `adapter_model.safetensors`.
    pub adapter_sha256: String,
    /// The merged GGUF.
    pub out: PathBuf,
    /// Its sha256.
    pub out_sha256: String,
    /// How the merged projections are stored.
    pub dtype: MergedType,
    /// Projections merged (layer, PEFT module name).
    pub merged: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// The largest |lora_alpha / r * B A| entry added to any weight.
    pub max_update: f32,
}

/// Merge the PEFT adapter in `adapter_dir` into the GGUF `base`, writing `out` atomically.
pub fn merge_adapter(base: &Path, adapter_dir: &Path, out: &Path, dtype: MergedType) -> Result<MergeReport, TrainError> {
    if out == base {
        return Err(TrainError::Config(format!("the merged file {} would overwrite its base; choose another --out", out.display())));
    }
    let (mut file, content) = crate::model::engine::read_gguf(base)?;
    let cfg = ModelConfig::from_metadata(&content.metadata, base)?;
    let adapters = Adapters::load_peft(&cfg, adapter_dir)?;
    let fmt = |what: String| TrainError::Model(ModelError::Format { path: base.to_path_buf(), what });

    // Every tensor in the file's own order; the adapted projections are rebuilt.
    let mut infos: Vec<(&String, &gguf_file::TensorInfo)> = content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, i)| i.offset);
    let target = |name: &str| -> Option<(usize, usize)> {
        let rest = name.strip_prefix("blk.")?;
        let (layer, tail) = rest.split_once('.')?;
        let proj = tail.strip_suffix(".weight")?;
        let m = GGUF_NAMES.iter().position(|g| *g == proj)?;
        let l: usize = layer.parse().ok()?;
        adapters.pairs.contains_key(&(l, m)).then_some((l, m))
    };
    let scale = adapters.config.scale();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(infos.len());
    let (mut merged, mut max_update) = (0usize, 0f32);
    for (name, _) in &infos {
        let q = content.tensor(&mut file, name, &Device::Cpu).map_err(|e| fmt(format!("tensor {name}: {e}")))?;
        let Some(key) = target(name) else {
            tensors.push((name.to_string(), q));
            continue;
        };
        let pair = &adapters.pairs[&key];
        let w = q.dequantize(&Device::Cpu)?;
        let update = (pair.b.as_tensor().matmul(pair.a.as_tensor())? * scale)?;
        if w.dims() != update.dims() {
            return Err(fmt(format!("{name} is {:?}, the adapter's {} update is {:?}", w.dims(), MODULES[key.1], update.dims())));
        }
        max_update = max_update.max(update.abs()?.max_all()?.to_scalar::<f32>()?);
        let (_, cols) = w.dims2()?;
        let block = dtype.ggml().block_size();
        if cols % block != 0 {
            return Err(TrainError::Config(format!("{name} has rows of {cols} weights, not a multiple of {block}: it cannot be stored as {dtype:?}; use --dtype f16")));
        }
        tensors.push((name.to_string(), QTensor::quantize(&(w + update)?, dtype.ggml())?));
        merged += 1;
    }
    if merged != adapters.pairs.len() {
        return Err(fmt(format!("the adapter has {} projections, the file holds {merged} of them", adapters.pairs.len())));
    }

    // Metadata: the base's (candle's writer aligns tensors to 32 bytes), plus provenance.
    let adapter_file = adapter_dir.join("adapter_model.safetensors");
    let adapter_sha256 = crate::provenance::sha256_file(&adapter_file).map_err(|source| TrainError::Adapter { path: adapter_file.clone(), what: source.to_string() })?;
    let base_sha256 = crate::provenance::sha256_file(base).map_err(|source| TrainError::Model(ModelError::Read { path: base.to_path_buf(), source }))?;
    let mut metadata: Vec<(String, gguf_file::Value)> =
        content.metadata.iter().filter(|(k, _)| !k.starts_with("kiln.adapter.") && k.as_str() != "general.alignment").map(|(k, v)| (k.clone(), v.clone())).collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    use gguf_file::Value as V;
    metadata.extend([
        ("kiln.adapter.base_sha256".to_string(), V::String(base_sha256.clone())),
        ("kiln.adapter.sha256".to_string(), V::String(adapter_sha256.clone())),
        ("kiln.adapter.r".to_string(), V::U32(adapters.config.r as u32)),
        ("kiln.adapter.lora_alpha".to_string(), V::F64(adapters.config.lora_alpha)),
        ("kiln.adapter.target_modules".to_string(), V::Array(adapters.config.target_modules.iter().map(|m| V::String(m.clone())).collect())),
        ("kiln.adapter.dtype".to_string(), V::String(format!("{dtype:?}").to_lowercase())),
    ]);
    let md_refs: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut bytes = Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &md_refs, &t_refs)?;
    let bytes = bytes.into_inner();
    crate::sandbox::write_file_atomic(out, &bytes)?;
    Ok(MergeReport {
        base: base.to_path_buf(),
        base_sha256,
        adapter: adapter_dir.to_path_buf(),
        adapter_sha256,
        out: out.to_path_buf(),
        out_sha256: crate::provenance::sha256_hex(&bytes),
        dtype,
        merged,
        copied: tensors.len() - merged,
        max_update,
    })
}
