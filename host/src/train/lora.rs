//! LoRA adapters: PEFT's initialisation, its file format (`adapter_config.json` +
//! `adapter_model.safetensors` with the Hugging Face module names), and the row order of the
//! GGUF form of llama's q/k projections, which llama.cpp's converter permutes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::{Arch, ModelConfig};

use super::error::TrainError;
use super::rng::SplitMix;

/// PEFT's names of the projections an adapter can attach to, in kiln's order.
pub const MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The adapter's shape, with PEFT's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scale numerator: the update is `lora_alpha / r * B A x`.
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training.
    pub lora_dropout: f64,
    /// Projections that get an adapter (PEFT names: q_proj ... down_proj).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// Check the values; `what` names where they came from.
    pub fn validate(&self, what: &str) -> Result<(), TrainError> {
        let bad = |field: &str, value: String, why: &str| TrainError::Config(format!("{what}: {field} = {value} {why}"));
        if self.r == 0 {
            return Err(bad("r", "0".into(), "must be at least 1"));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(bad("lora_alpha", self.lora_alpha.to_string(), "must be a positive number"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(bad("lora_dropout", self.lora_dropout.to_string(), "must be in [0, 1)"));
        }
        if self.target_modules.is_empty() {
            return Err(bad("target_modules", "[]".into(), "must name at least one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"));
        }
        for m in &self.target_modules {
            if !MODULES.contains(&m.as_str()) {
                return Err(bad("target_modules", format!("{m:?}"), "is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"));
            }
        }
        Ok(())
    }

    /// `lora_alpha / r`.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// True when `module` gets an adapter.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|m| m == module)
    }
}

/// (input, output) features of a projection.
pub fn module_shape(cfg: &ModelConfig, module: &str) -> (usize, usize) {
    let (q, kv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    match module {
        "q_proj" => (cfg.hidden, q),
        "k_proj" | "v_proj" => (cfg.hidden, kv),
        "o_proj" => (q, cfg.hidden),
        "gate_proj" | "up_proj" => (cfg.hidden, cfg.ffn),
        "down_proj" => (cfg.ffn, cfg.hidden),
        other => panic!("unknown module {other}"),
    }
}

/// The Hugging Face name of a projection (`model.layers.3.self_attn.q_proj`).
pub fn hf_module(layer: usize, module: &str) -> String {
    let block = if ["gate_proj", "up_proj", "down_proj"].contains(&module) { "mlp" } else { "self_attn" };
    format!("model.layers.{layer}.{block}.{module}")
}

/// One adapter: A (r, in), B (out, r), trainable.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Down projection.
    pub a: Var,
    /// Up projection.
    pub b: Var,
}

/// Every adapter of a model, keyed by (layer, module).
#[derive(Debug, Clone)]
pub struct Adapters {
    /// Their shape.
    pub config: LoraConfig,
    /// (layer, module) -> pair, in a fixed order.
    pub pairs: BTreeMap<(usize, usize), Pair>,
}

impl Adapters {
    /// PEFT's initialisation: A uniform in +-1/sqrt(in) (kaiming-uniform with a = sqrt 5), B
    /// zero, so the adapted model starts as the base. Seeded.
    pub fn init(cfg: &ModelConfig, config: &LoraConfig, seed: u64) -> Result<Adapters, TrainError> {
        let mut pairs = BTreeMap::new();
        for l in 0..cfg.layers {
            for (m, name) in MODULES.iter().enumerate() {
                if !config.targets(name) {
                    continue;
                }
                let (inp, out) = module_shape(cfg, name);
                let mut rng = SplitMix::new(seed ^ SplitMix::mix((l as u64) << 8 | m as u64));
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..config.r * inp).map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, inp), &Device::Cpu)?)?;
                let b = Var::zeros((out, config.r), DType::F32, &Device::Cpu)?;
                pairs.insert((l, m), Pair { a, b });
            }
        }
        Ok(Adapters { config: config.clone(), pairs })
    }

    /// The same adapters as new trainable tensors on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Adapters, TrainError> {
        let mut pairs = BTreeMap::new();
        for (&k, p) in &self.pairs {
            let a = Var::from_tensor(&p.a.as_tensor().to_device(device)?)?;
            let b = Var::from_tensor(&p.b.as_tensor().to_device(device)?)?;
            pairs.insert(k, Pair { a, b });
        }
        Ok(Adapters { config: self.config.clone(), pairs })
    }

    /// The trainable tensors in a fixed order (A then B of each pair).
    pub fn vars(&self) -> Vec<&Var> {
        self.pairs.values().flat_map(|p| [&p.a, &p.b]).collect()
    }

    /// The pair on (layer, module name), if any.
    pub fn get(&self, layer: usize, module: &str) -> Option<&Pair> {
        let m = MODULES.iter().position(|x| *x == module)?;
        self.pairs.get(&(layer, m))
    }

    /// Tensors under PEFT's names, in the Hugging Face row order.
    pub fn peft_tensors(&self, cfg: &ModelConfig) -> Result<Vec<(String, Tensor)>, TrainError> {
        let mut out = Vec::new();
        for (&(l, m), p) in &self.pairs {
            let name = MODULES[m];
            let stem = format!("base_model.model.{}", hf_module(l, name));
            out.push((format!("{stem}.lora_A.weight"), p.a.as_tensor().clone()));
            let b = match row_order(cfg, name) {
                Some(heads) => permute_rows(p.b.as_tensor(), heads, cfg.head_dim, Direction::GgufToHf)?,
                None => p.b.as_tensor().clone(),
            };
            out.push((format!("{stem}.lora_B.weight"), b));
        }
        Ok(out)
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir` (atomically).
    pub fn save_peft(&self, cfg: &ModelConfig, dir: &Path, base_model: &str) -> Result<(), TrainError> {
        let tensors = self.peft_tensors(cfg)?;
        let bytes = safetensors_bytes(&tensors, None)?;
        let d = crate::sandbox::RunDir::create(dir)?;
        d.write_atomic("adapter_model.safetensors", &bytes)?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.r,
            "lora_alpha": self.config.lora_alpha,
            "lora_dropout": self.config.lora_dropout,
            "target_modules": self.config.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "use_rslora": false,
            "use_dora": false,
        });
        d.write_atomic("adapter_config.json", serde_json::to_string_pretty(&config).expect("json").as_bytes())?;
        Ok(())
    }

    /// Read a PEFT adapter folder for `cfg`'s architecture.
    pub fn load_peft(cfg: &ModelConfig, dir: &Path) -> Result<Adapters, TrainError> {
        let cfg_path = dir.join("adapter_config.json");
        let text = crate::sandbox::read_file(&cfg_path)?;
        let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| TrainError::Adapter { path: cfg_path.clone(), what: e.to_string() })?;
        let bad = |what: String| TrainError::Adapter { path: cfg_path.clone(), what };
        if v["peft_type"] != "LORA" {
            return Err(bad(format!("peft_type is {}, expected \"LORA\"", v["peft_type"])));
        }
        if v.get("use_dora").and_then(|d| d.as_bool()) == Some(true) || v.get("use_rslora").and_then(|d| d.as_bool()) == Some(true) {
            return Err(bad("DoRA and rsLoRA adapters are not supported".into()));
        }
        let targets: Vec<String> = match &v["target_modules"] {
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            serde_json::Value::String(s) => return Err(bad(format!("target_modules is the pattern {s:?}; kiln reads a list of module names"))),
            other => return Err(bad(format!("target_modules is {other}"))),
        };
        let config = LoraConfig {
            r: v["r"].as_u64().ok_or_else(|| bad(format!("r is {}", v["r"])))? as usize,
            lora_alpha: v["lora_alpha"].as_f64().ok_or_else(|| bad(format!("lora_alpha is {}", v["lora_alpha"])))?,
            lora_dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
            target_modules: targets,
        };
        config.validate(&cfg_path.display().to_string())?;
        let st_path = dir.join("adapter_model.safetensors");
        let bytes = crate::sandbox::read_file(&st_path)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| TrainError::Adapter { path: st_path.clone(), what: e.to_string() })?;
        let bad = |what: String| TrainError::Adapter { path: st_path.clone(), what };
        let mut pairs = BTreeMap::new();
        let mut used = 0;
        for l in 0..cfg.layers {
            for (m, name) in MODULES.iter().enumerate() {
                if !config.targets(name) {
                    continue;
                }
                let (inp, out) = module_shape(cfg, name);
                let stem = format!("base_model.model.{}", hf_module(l, name));
                let read = |suffix: &str, shape: (usize, usize)| -> Result<Tensor, TrainError> {
                    let key = format!("{stem}.{suffix}");
                    let t = st.tensor(&key).map_err(|_| bad(format!("missing tensor {key}")))?;
                    if t.shape() != [shape.0, shape.1] {
                        return Err(bad(format!("{key} has shape {:?}, expected [{}, {}]", t.shape(), shape.0, shape.1)));
                    }
                    let values: Vec<f32> = match t.dtype() {
                        safetensors::Dtype::F32 => t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                        safetensors::Dtype::F16 => t.data().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                        safetensors::Dtype::BF16 => t.data().chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                        other => return Err(bad(format!("{key} is {other:?}; kiln reads F32, F16 and BF16"))),
                    };
                    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
                };
                let a = read("lora_A.weight", (config.r, inp))?;
                let mut b = read("lora_B.weight", (out, config.r))?;
                if let Some(heads) = row_order(cfg, name) {
                    b = permute_rows(&b, heads, cfg.head_dim, Direction::HfToGguf)?;
                }
                used += 2;
                pairs.insert((l, m), Pair { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)? });
            }
        }
        let lora_names = st.names().into_iter().filter(|n| n.contains(".lora_")).count();
        if lora_names != used {
            return Err(bad(format!("{lora_names} LoRA tensors in the file, {used} expected for {} layers and {:?}", cfg.layers, config.target_modules)));
        }
        Ok(Adapters { config, pairs })
    }
}

/// For llama's q/k projections, the head count whose rows llama.cpp's converter interleaved.
fn row_order(cfg: &ModelConfig, module: &str) -> Option<usize> {
    match (cfg.arch, module) {
        (Arch::Llama, "q_proj") => Some(cfg.heads),
        (Arch::Llama, "k_proj") => Some(cfg.kv_heads),
        _ => None,
    }
}

/// Which way to reorder.
#[derive(Clone, Copy)]
enum Direction {
    GgufToHf,
    HfToGguf,
}

/// Reorder the rows of a (heads * head_dim, r) matrix between Hugging Face's rotary layout
/// (each head: first halves, then second halves) and GGUF's (pairs interleaved): GGUF row
/// `h*d + 2i + j` is Hugging Face row `h*d + j*d/2 + i`.
fn permute_rows(t: &Tensor, heads: usize, head_dim: usize, dir: Direction) -> Result<Tensor, TrainError> {
    let (rows, cols) = t.dims2()?;
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    let half = head_dim / 2;
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let gguf = h * head_dim + 2 * i + j;
                let hf = h * head_dim + j * half + i;
                let (src, dst) = match dir {
                    Direction::GgufToHf => (gguf, hf),
                    Direction::HfToGguf => (hf, gguf),
                };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    debug_assert_eq!(rows, heads * head_dim);
    Ok(Tensor::from_vec(out, (rows, cols), &Device::Cpu)?)
}

/// safetensors bytes of f32 tensors (names sorted by the format), with optional metadata.
pub fn safetensors_bytes(tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>, TrainError> {
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        raw.push((name.clone(), t.dims().to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
        .iter()
        .map(|(n, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).expect("shape matches the bytes");
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize(views, metadata).map_err(|e| TrainError::Io(format!("safetensors: {e}")))
}

impl Adapters {
    /// Attach (unmerged) to the engine's model, replacing any adapter already there: its
    /// projections then compute `x W^T + scale * x A^T B^T`.
    pub fn attach(&self, model: &mut crate::model::Model) -> Result<(), TrainError> {
        for layer in model.layers.iter_mut() {
            for name in MODULES {
                if let Some(lin) = layer.projection_mut(name) {
                    lin.adapter = None;
                }
            }
        }
        let device = model.device().clone();
        for (&(l, m), p) in &self.pairs {
            let layer = model.layers.get_mut(l).ok_or_else(|| TrainError::Config(format!("adapter for layer {l} on a model of fewer layers")))?;
            let lin = layer.projection_mut(MODULES[m]).expect("a known module");
            let (a, b) = (p.a.as_tensor().detach().to_device(&device)?, p.b.as_tensor().detach().to_device(&device)?);
            if a.dims2()? != (self.config.r, lin.in_features) || b.dims2()? != (lin.out_features, self.config.r) {
                return Err(TrainError::Config(format!(
                    "adapter {} of layer {l} is {:?} x {:?}, the projection is {} -> {}",
                    MODULES[m],
                    a.dims(),
                    b.dims(),
                    lin.in_features,
                    lin.out_features
                )));
            }
            lin.adapter = Some(crate::model::transformer::LoraAdapter { a, b, scale: self.config.scale() });
        }
        Ok(())
    }
}
