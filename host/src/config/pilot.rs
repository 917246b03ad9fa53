//! The pilot config (`configs/pilot.toml`): a strict file form ([`PilotFile`], unknown keys
//! are errors) validated into the form the stage uses ([`PilotConfig`]). Every path in the file
//! is relative to the file's own directory; every validation error names the file, the field
//! and the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, PluginConfig};
use crate::model::SamplingParams;
use crate::plugin::PluginSpec;

/// Default sampling temperature.
pub const DEFAULT_TEMPERATURE: f64 = 0.7;
/// Default nucleus mass.
pub const DEFAULT_TOP_P: f64 = 0.9;
/// Default top-k.
pub const DEFAULT_TOP_K: usize = 40;
/// Default sequences decoded together.
pub const DEFAULT_BATCH_SIZE: usize = 16;
/// Default completions per chunk file of the raw pool.
pub const DEFAULT_CHUNK_SIZE: usize = 8;
/// Default records per plugin call.
pub const DEFAULT_PLUGIN_BATCH_SIZE: usize = 512;
/// Default few-shot examples per instruction prompt.
pub const DEFAULT_EXAMPLES_PER_PROMPT: usize = 5;

/// The file form of a pilot config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PilotFile {
    /// The run's name: its folder under `artifacts_dir` (default: the config file's stem).
    pub run_id: Option<String>,
    /// Where runs go (default: `artifacts` in the current directory).
    pub artifacts_dir: Option<PathBuf>,
    /// The run seed: every sequence's sampler is seeded from (seed, shard, index).
    pub seed: u64,
    /// Samples to generate.
    pub count: usize,
    /// Sequences decoded together.
    pub batch_size: Option<usize>,
    /// Completions per chunk file of the raw pool (what a kill can lose at most, per phase).
    pub chunk_size: Option<usize>,
    /// Records per plugin call.
    pub plugin_batch_size: Option<usize>,
    /// Few-shot examples shown in each instruction prompt.
    pub examples_per_prompt: Option<usize>,
    /// Drop samples that any critic verdict fails (default true); QC always sees them.
    pub critic_filter: Option<bool>,
    /// Input data.
    pub data: DataSection,
    /// The model.
    pub model: ModelSection,
    /// Sampling.
    #[serde(default)]
    pub sampling: SamplingSection,
    /// Instruction-type mix: type name -> weight (default: every type, equal weights).
    pub mix: Option<BTreeMap<String, f64>>,
    /// The plugins.
    pub plugins: PluginsSection,
}

/// `[data]`: the seed instructions and the instruction types.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// JSON lines `{"instruction_type", "instruction"}`.
    pub seeds: PathBuf,
    /// JSON array of `{"name", "description"}`.
    pub instruction_types: PathBuf,
}

/// `[model]`: a known model by name (fetched on first use) or a GGUF file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A model kiln knows (`gemma3-270m`), fetched into the model cache on first use.
    pub name: Option<String>,
    /// A GGUF file.
    pub path: Option<PathBuf>,
    /// sha256 pin of the model file (hex); a mismatch is an error.
    pub sha256: Option<String>,
    /// Load a file that carries a chat template (recorded; never applied).
    #[serde(default)]
    pub allow_chat_template: bool,
    /// Contamination-guard threshold (mean nats per token in favour of assistant-style text).
    pub guard_threshold: Option<f64>,
}

/// Sampling parameters of one phase; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOverride {
    /// Temperature (0 = greedy).
    pub temperature: Option<f64>,
    /// Nucleus mass (1 = off).
    pub top_p: Option<f64>,
    /// Top-k (0 = off).
    pub top_k: Option<usize>,
    /// Upper bound on a prompt's token budget (the template sets each prompt's own).
    pub max_tokens: Option<u32>,
    /// Stop sequences count only after the completion's first non-whitespace text.
    pub stop_after_text: Option<bool>,
}

/// `[sampling]`: defaults for both phases, with `[sampling.instruction]` and
/// `[sampling.response]` overriding them per phase.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSection {
    /// Temperature (0 = greedy).
    pub temperature: Option<f64>,
    /// Nucleus mass (1 = off).
    pub top_p: Option<f64>,
    /// Top-k (0 = off).
    pub top_k: Option<usize>,
    /// Upper bound on a prompt's token budget.
    pub max_tokens: Option<u32>,
    /// Stop sequences count only after the completion's first non-whitespace text (default
    /// false: a stop sequence ends the completion wherever it appears).
    pub stop_after_text: Option<bool>,
    /// Instruction generation.
    pub instruction: Option<SamplingOverride>,
    /// Response generation.
    pub response: Option<SamplingOverride>,
}

/// `[plugins]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// The prompt template.
    pub template: PluginConfig,
    /// The cleaner chain, in order.
    #[serde(default)]
    pub cleaners: Vec<PluginConfig>,
    /// The critics, in order.
    #[serde(default)]
    pub critics: Vec<PluginConfig>,
    /// The QC rules; the gate passes when all pass.
    #[serde(default)]
    pub qc_rules: Vec<PluginConfig>,
}

/// Sampling of one phase, validated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseSampling {
    /// Temperature, top-p, top-k.
    #[serde(flatten)]
    pub params: SamplingParams,
    /// Upper bound on the token budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Stop sequences count only after the completion's first non-whitespace text.
    #[serde(default)]
    pub stop_after_text: bool,
}

impl PhaseSampling {
    /// The budget a prompt runs under: the template's, capped by `max_tokens`.
    pub fn budget(&self, asked: u32) -> u32 {
        self.max_tokens.map_or(asked, |m| asked.min(m))
    }
}

/// Which model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// A known model, fetched on first use.
    Known(&'static str),
    /// A file.
    Path(PathBuf),
}

/// A validated `[model]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Which model.
    pub choice: ModelChoice,
    /// sha256 pin of the model file (lowercase hex).
    pub sha256: Option<String>,
    /// Allow a chat template in the model file.
    pub allow_chat_template: bool,
    /// Contamination-guard threshold.
    pub guard_threshold: f64,
}

impl ModelSection {
    /// Validate a model section named `field` in the file of `cx`; `override_` is a `--model`
    /// from the command line (a file, or a known name), which also drops the file's pin.
    /// With `replay`, a model file that is not there is not an error.
    pub(crate) fn validate(&self, cx: &Ctx, cli: &Ctx, field: &str, override_: Option<&str>, replay: bool) -> Result<ModelSpec, ConfigError> {
        let model_override = override_.map(|m| {
            if crate::model::fetch::known(m).is_ok() && !Path::new(m).exists() {
                (Some(m.to_string()), None)
            } else {
                (None, Some(PathBuf::from(m)))
            }
        });
        let (name, mpath, mcx) = match model_override {
            Some((n, p)) => (n, p, cli),
            None => (self.name.clone(), self.path.clone(), cx),
        };
        let choice = match (name, mpath) {
            (Some(n), None) => match crate::model::fetch::known(&n) {
                Ok(k) => ModelChoice::Known(k.name),
                Err(e) => return Err(mcx.err(&format!("{field}.name"), format!("\"{n}\""), e.to_string())),
            },
            (None, Some(p)) => {
                let full = mcx.path(&p);
                if !full.is_file() && !replay {
                    return Err(mcx.err(&format!("{field}.path"), quoted(&p), format!("no such file ({})", full.display())));
                }
                ModelChoice::Path(full)
            }
            (Some(n), Some(p)) => {
                return Err(cx.err(field, format!("name = \"{n}\", path = {}", quoted(&p)), "give either name or path, not both"))
            }
            (None, None) => return Err(cx.err(field, "(nothing)", "give name (e.g. \"gemma3-270m\") or path (a GGUF file)")),
        };
        if let Some(h) = &self.sha256 {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(cx.err(&format!("{field}.sha256"), format!("\"{h}\""), "must be 64 hex digits"));
            }
        }
        let guard_threshold = self.guard_threshold.unwrap_or(crate::model::guard::DEFAULT_THRESHOLD);
        if !guard_threshold.is_finite() {
            return Err(cx.err(&format!("{field}.guard_threshold"), guard_threshold, "must be a finite number"));
        }
        Ok(ModelSpec {
            choice,
            sha256: if override_.is_some() { None } else { self.sha256.as_ref().map(|h| h.to_ascii_lowercase()) },
            allow_chat_template: self.allow_chat_template,
            guard_threshold,
        })
    }
}

/// One instruction type with its seeds and weight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstructionType {
    /// Name.
    pub name: String,
    /// Description shown to the template.
    pub description: String,
    /// Seed instructions of this type.
    pub seeds: Vec<String>,
    /// Share of the mix (normalised to sum to 1).
    pub weight: f64,
}

/// A plugin entry of the config: where it was named and what to load.
#[derive(Debug, Clone)]
pub struct PluginEntry {
    /// The field that named it, e.g. `plugins.cleaners[0]`.
    pub field: String,
    /// The file form (for the resolved config).
    pub file: PluginConfig,
    /// The validated spec.
    pub spec: PluginSpec,
}

/// A validated pilot config.
#[derive(Debug, Clone)]
pub struct PilotConfig {
    /// The config file.
    pub file: PathBuf,
    /// Run id.
    pub run_id: String,
    /// Where runs go (absolute).
    pub artifacts_dir: PathBuf,
    /// Run seed.
    pub seed: u64,
    /// Samples to generate.
    pub count: usize,
    /// Sequences decoded together.
    pub batch_size: usize,
    /// Completions per chunk file.
    pub chunk_size: usize,
    /// Records per plugin call.
    pub plugin_batch_size: usize,
    /// Few-shot examples per instruction prompt.
    pub examples_per_prompt: usize,
    /// Drop samples failing a critic verdict.
    pub critic_filter: bool,
    /// The seed file (absolute).
    pub seeds_file: PathBuf,
    /// The instruction-types file (absolute).
    pub types_file: PathBuf,
    /// The model.
    pub model: ModelChoice,
    /// sha256 pin of the model file.
    pub model_sha256: Option<String>,
    /// Allow a chat template in the model file.
    pub allow_chat_template: bool,
    /// Guard threshold.
    pub guard_threshold: f64,
    /// Instruction sampling.
    pub instruction_sampling: PhaseSampling,
    /// Response sampling.
    pub response_sampling: PhaseSampling,
    /// The instruction types in the mix, in the order of the types file.
    pub types: Vec<InstructionType>,
    /// The template.
    pub template: PluginEntry,
    /// The cleaner chain.
    pub cleaners: Vec<PluginEntry>,
    /// The critics.
    pub critics: Vec<PluginEntry>,
    /// The QC rules.
    pub qc_rules: Vec<PluginEntry>,
}

/// Values given on the command line that replace those of the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--run-id`.
    pub run_id: Option<String>,
    /// `--artifacts-dir` (relative to the current directory).
    pub artifacts_dir: Option<PathBuf>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--count`.
    pub count: Option<usize>,
    /// `--model` (a file, or a known name).
    pub model: Option<String>,
    /// The config is read for a replay, which uses the replayed run's model: a model file
    /// that is not there is not an error.
    pub replay: bool,
}

/// Why a pilot config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PilotConfigError {
    /// The file cannot be read.
    #[error("cannot read config \"{path}\": {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (part of the message, so not a `source()`).
        error: std::io::Error,
    },
    /// Not valid TOML, a missing or unknown key, a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (names the key and, with the line, the value).
        message: String,
    },
    /// A value that does not make sense.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

pub(crate) fn one_line(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} (`{src}`): {msg}")
        }
        None => msg,
    }
}

/// Is `s` usable as a run id (a single folder name)?
pub fn valid_run_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl PilotConfig {
    /// Read, parse and validate a pilot config file.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<PilotConfig, PilotConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| PilotConfigError::Read { path: path.to_path_buf(), error })?;
        Self::from_str(&text, path, overrides)
    }

    /// Parse and validate config text that came from `path`.
    pub fn from_str(text: &str, path: &Path, overrides: &Overrides) -> Result<PilotConfig, PilotConfigError> {
        let raw: PilotFile =
            toml::from_str(text).map_err(|e| PilotConfigError::Parse { path: path.to_path_buf(), message: one_line(&e, text) })?;
        Ok(raw.validate(path, overrides)?)
    }
}

pub(crate) struct Ctx<'a> {
    pub(crate) file: String,
    base: &'a Path,
}

impl<'a> Ctx<'a> {
    /// A context for errors about the file at `file`, resolving paths against `base`.
    pub(crate) fn new(file: String, base: &'a Path) -> Self {
        Ctx { file, base }
    }

    pub(crate) fn err(&self, field: &str, value: impl std::fmt::Display, why: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.clone(), field: field.to_string(), value: value.to_string(), why: why.into() }
    }

    /// A plugin named at `field`: its spec, with the path (which must exist) and the data
    /// folder made absolute.
    pub(crate) fn plugin_entry(&self, field: String, p: &PluginConfig) -> Result<PluginEntry, ConfigError> {
        let mut spec = p.to_spec(&self.file, &field, self.base)?;
        if !spec.path.is_file() {
            return Err(self.err(&format!("{field}.path"), quoted(&p.path), format!("no such file ({})", spec.path.display())));
        }
        spec.path = absolute(&spec.path);
        spec.data_dir = spec.data_dir.map(|d| absolute(&d));
        Ok(PluginEntry { field, file: p.clone(), spec })
    }

    pub(crate) fn path(&self, p: &Path) -> PathBuf {
        absolute(&self.base.join(p))
    }
}

/// An absolute form of a path without touching the filesystem beyond the current directory.
/// Read a config file and parse it strictly into its file form (unknown keys are errors).
pub(crate) fn read_strict<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PilotConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| PilotConfigError::Read { path: path.to_path_buf(), error })?;
    toml::from_str(&text).map_err(|e| PilotConfigError::Parse { path: path.to_path_buf(), message: one_line(&e, &text) })
}

/// A run's id and artifacts folder: the command line's (`--run-id`, `--artifacts-dir`) over
/// the file's (`run_id`, `artifacts_dir`), else the config file's stem and `./artifacts`.
pub(crate) fn run_location(
    cx: &Ctx,
    cli: &Ctx,
    path: &Path,
    run_id: (Option<&String>, Option<&String>),
    artifacts_dir: (Option<&PathBuf>, Option<&PathBuf>),
) -> Result<(String, PathBuf), ConfigError> {
    let (id, rcx, field) = match run_id {
        (Some(r), _) => (r.clone(), cli, "--run-id"),
        (None, Some(r)) => (r.clone(), cx, "run_id"),
        (None, None) => (path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into()), cx, "run_id"),
    };
    if !valid_run_id(&id) {
        return Err(rcx.err(field, format!("\"{id}\""), "must be a folder name: letters, digits, '-', '_' and '.', not starting with '.'"));
    }
    let dir = match artifacts_dir {
        (Some(d), _) => absolute(d),
        (None, Some(d)) => cx.path(d),
        (None, None) => absolute(Path::new("artifacts")),
    };
    if dir.exists() && !dir.is_dir() {
        return Err(cx.err("artifacts_dir", quoted(&dir), "exists and is not a directory"));
    }
    Ok((id, dir))
}

pub(crate) fn absolute(p: &Path) -> PathBuf {
    let p = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn quoted(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedLine {
    instruction_type: String,
    instruction: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeEntry {
    name: String,
    description: String,
}

impl PilotFile {
    /// Validate against the file it came from (`path`; relative paths are resolved against its
    /// directory) and the command-line overrides.
    pub fn validate(mut self, path: &Path, ov: &Overrides) -> Result<PilotConfig, ConfigError> {
        let base_dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base_dir = absolute(base_dir);
        let cx = Ctx::new(path.display().to_string(), &base_dir);
        let cli = Ctx::new("command line".to_string(), Path::new("."));

        // Command-line values first; errors about them name the command line.
        let mut run_id_from_cli = false;
        if let Some(r) = &ov.run_id {
            self.run_id = Some(r.clone());
            run_id_from_cli = true;
        }
        if let Some(s) = ov.seed {
            self.seed = s;
        }
        if let Some(c) = ov.count {
            self.count = c;
        }
        let run_id = match &self.run_id {
            Some(r) => r.clone(),
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pilot".into()),
        };
        if !valid_run_id(&run_id) {
            let c = if run_id_from_cli { &cli } else { &cx };
            return Err(c.err(
                if run_id_from_cli { "--run-id" } else { "run_id" },
                format!("\"{run_id}\""),
                "must be a folder name: letters, digits, '-', '_' and '.', not starting with '.'",
            ));
        }
        let artifacts_dir = match (&ov.artifacts_dir, &self.artifacts_dir) {
            (Some(d), _) => absolute(d),
            (None, Some(d)) => cx.path(d),
            (None, None) => absolute(Path::new("artifacts")),
        };
        if artifacts_dir.exists() && !artifacts_dir.is_dir() {
            return Err(cx.err("artifacts_dir", quoted(&artifacts_dir), "exists and is not a directory"));
        }
        if self.count == 0 {
            return Err(cx.err("count", 0, "must be at least 1"));
        }
        if self.count > 10_000_000 {
            return Err(cx.err("count", self.count, "is more than 10 000 000; use `kiln scale` for large runs"));
        }
        let positive = |field: &str, v: Option<usize>, default: usize| -> Result<usize, ConfigError> {
            match v {
                Some(0) => Err(cx.err(field, 0, "must be at least 1")),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let batch_size = positive("batch_size", self.batch_size, DEFAULT_BATCH_SIZE)?;
        let chunk_size = positive("chunk_size", self.chunk_size, DEFAULT_CHUNK_SIZE)?;
        let plugin_batch_size = positive("plugin_batch_size", self.plugin_batch_size, DEFAULT_PLUGIN_BATCH_SIZE)?;
        let examples_per_prompt = positive("examples_per_prompt", self.examples_per_prompt, DEFAULT_EXAMPLES_PER_PROMPT)?;

        // Model.
        let ModelSpec { choice: model, sha256: model_sha256, allow_chat_template, guard_threshold } =
            self.model.validate(&cx, &cli, "model", ov.model.as_deref(), ov.replay)?;

        // Sampling.
        let s = &self.sampling;
        let phase = |name: &str, o: &Option<SamplingOverride>| -> Result<PhaseSampling, ConfigError> {
            let o = o.clone().unwrap_or_default();
            let params = SamplingParams {
                temperature: o.temperature.or(s.temperature).unwrap_or(DEFAULT_TEMPERATURE),
                top_p: o.top_p.or(s.top_p).unwrap_or(DEFAULT_TOP_P),
                top_k: o.top_k.or(s.top_k).unwrap_or(DEFAULT_TOP_K),
            };
            let field = |f: &str| {
                let own = match f {
                    "temperature" => o.temperature.is_some(),
                    "top_p" => o.top_p.is_some(),
                    _ => o.max_tokens.is_some(),
                };
                if own {
                    format!("sampling.{name}.{f}")
                } else {
                    format!("sampling.{f}")
                }
            };
            if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
                return Err(cx.err(&field("temperature"), params.temperature, "must be a finite number >= 0 (0 = greedy)"));
            }
            if !(params.top_p > 0.0 && params.top_p <= 1.0) {
                return Err(cx.err(&field("top_p"), params.top_p, "must be in (0, 1] (1 = off)"));
            }
            let max_tokens = o.max_tokens.or(s.max_tokens);
            if max_tokens == Some(0) {
                return Err(cx.err(&field("max_tokens"), 0, "must be at least 1"));
            }
            let stop_after_text = o.stop_after_text.or(s.stop_after_text).unwrap_or(false);
            Ok(PhaseSampling { params, max_tokens, stop_after_text })
        };
        let instruction_sampling = phase("instruction", &s.instruction)?;
        let response_sampling = phase("response", &s.response)?;

        // Data: types, seeds and the mix.
        let types_file = cx.path(&self.data.instruction_types);
        let types_text = std::fs::read_to_string(&types_file)
            .map_err(|e| cx.err("data.instruction_types", quoted(&self.data.instruction_types), format!("cannot be read: {e}")))?;
        let entries: Vec<TypeEntry> = serde_json::from_str(&types_text).map_err(|e| {
            cx.err("data.instruction_types", quoted(&self.data.instruction_types), format!("is not a JSON list of {{\"name\", \"description\"}}: {e}"))
        })?;
        if entries.is_empty() {
            return Err(cx.err("data.instruction_types", quoted(&self.data.instruction_types), "lists no instruction types"));
        }
        let seeds_file = cx.path(&self.data.seeds);
        let seeds_text = std::fs::read_to_string(&seeds_file)
            .map_err(|e| cx.err("data.seeds", quoted(&self.data.seeds), format!("cannot be read: {e}")))?;
        let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, line) in seeds_text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let l: SeedLine = serde_json::from_str(line)
                .map_err(|e| cx.err("data.seeds", quoted(&self.data.seeds), format!("line {}: {e}", i + 1)))?;
            if !entries.iter().any(|t| t.name == l.instruction_type) {
                return Err(cx.err(
                    "data.seeds",
                    quoted(&self.data.seeds),
                    format!("line {}: instruction type \"{}\" is not in {}", i + 1, l.instruction_type, self.data.instruction_types.display()),
                ));
            }
            by_type.entry(l.instruction_type).or_default().push(l.instruction);
        }
        let mix: BTreeMap<String, f64> = match &self.mix {
            Some(m) => {
                for (name, w) in m {
                    let field = format!("mix.{name}");
                    if !entries.iter().any(|t| &t.name == name) {
                        let known: Vec<&str> = entries.iter().map(|t| t.name.as_str()).collect();
                        return Err(cx.err(&field, w, format!("no such instruction type (known: {})", known.join(", "))));
                    }
                    if !(w.is_finite() && *w >= 0.0) {
                        return Err(cx.err(&field, w, "a weight must be a finite number >= 0"));
                    }
                }
                m.clone()
            }
            None => entries.iter().map(|t| (t.name.clone(), 1.0)).collect(),
        };
        let total: f64 = mix.values().sum();
        if total <= 0.0 {
            return Err(cx.err("mix", "(all weights 0)", "at least one instruction type needs a positive weight"));
        }
        let mut types = Vec::new();
        for t in &entries {
            let Some(&w) = mix.get(&t.name) else { continue };
            if w == 0.0 {
                continue;
            }
            let seeds = by_type.get(&t.name).cloned().unwrap_or_default();
            if seeds.len() < examples_per_prompt {
                return Err(cx.err(
                    "examples_per_prompt",
                    examples_per_prompt,
                    format!("instruction type \"{}\" has only {} seed instructions in {}", t.name, seeds.len(), self.data.seeds.display()),
                ));
            }
            types.push(InstructionType { name: t.name.clone(), description: t.description.clone(), seeds, weight: w / total });
        }

        // Plugins.
        let entry = |field: String, p: &PluginConfig| cx.plugin_entry(field, p);
        let template = entry("plugins.template".into(), &self.plugins.template)?;
        let list = |name: &str, v: &[PluginConfig]| -> Result<Vec<PluginEntry>, ConfigError> {
            v.iter().enumerate().map(|(i, p)| entry(format!("plugins.{name}[{i}]"), p)).collect()
        };
        let cleaners = list("cleaners", &self.plugins.cleaners)?;
        let critics = list("critics", &self.plugins.critics)?;
        let qc_rules = list("qc_rules", &self.plugins.qc_rules)?;

        Ok(PilotConfig {
            file: absolute(path),
            run_id,
            artifacts_dir,
            seed: self.seed,
            count: self.count,
            batch_size,
            chunk_size,
            plugin_batch_size,
            examples_per_prompt,
            critic_filter: self.critic_filter.unwrap_or(true),
            seeds_file,
            types_file,
            model,
            model_sha256,
            allow_chat_template,
            guard_threshold,
            instruction_sampling,
            response_sampling,
            types,
            template,
            cleaners,
            critics,
            qc_rules,
        })
    }
}

/// A plugin as it appears in a resolved config: every limit explicit, the path absolute, the
/// sha256 pinned to what was loaded.
pub fn resolved_plugin(spec: &PluginSpec, sha256: &str) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("path".into(), toml::Value::String(spec.path.display().to_string()));
    t.insert("sha256".into(), toml::Value::String(sha256.to_string()));
    t.insert("fuel".into(), toml::Value::Integer(spec.limits.fuel.min(i64::MAX as u64) as i64));
    t.insert("memory_mib".into(), toml::Value::Integer((spec.limits.memory_bytes >> 20) as i64));
    t.insert("max_output_mib".into(), toml::Value::Integer((spec.limits.max_output_bytes >> 20) as i64));
    t.insert("max_failures".into(), toml::Value::Integer(spec.limits.max_failures as i64));
    if let Some(d) = &spec.data_dir {
        t.insert("data_dir".into(), toml::Value::String(d.display().to_string()));
    }
    let config: toml::Table = serde_json::from_value(spec.config.clone()).unwrap_or_default();
    t.insert("config".into(), toml::Value::Table(config));
    t
}

impl PilotConfig {
    /// The resolved config as TOML: every default explicit, paths absolute, plugins pinned by
    /// the sha256 they were loaded with (`plugin_sha256`: template, cleaners, critics, QC rules
    /// in order) and the model's path. Loading it gives the same run.
    pub fn resolved_toml(&self, plugin_sha256: &[String], model_path: &Path, model_sha256: &str) -> String {
        resolved_text(&self.resolved_table(plugin_sha256, model_path, model_sha256))
    }

    /// [`resolved_toml`](Self::resolved_toml) as a table, for a caller that changes it first.
    pub fn resolved_table(&self, plugin_sha256: &[String], model_path: &Path, model_sha256: &str) -> toml::Table {
        use toml::Value as V;
        let mut t = toml::Table::new();
        t.insert("run_id".into(), V::String(self.run_id.clone()));
        t.insert("artifacts_dir".into(), V::String(self.artifacts_dir.display().to_string()));
        t.insert("seed".into(), V::Integer(self.seed as i64));
        t.insert("count".into(), V::Integer(self.count as i64));
        t.insert("batch_size".into(), V::Integer(self.batch_size as i64));
        t.insert("chunk_size".into(), V::Integer(self.chunk_size as i64));
        t.insert("plugin_batch_size".into(), V::Integer(self.plugin_batch_size as i64));
        t.insert("examples_per_prompt".into(), V::Integer(self.examples_per_prompt as i64));
        t.insert("critic_filter".into(), V::Boolean(self.critic_filter));
        let mut data = toml::Table::new();
        data.insert("seeds".into(), V::String(self.seeds_file.display().to_string()));
        data.insert("instruction_types".into(), V::String(self.types_file.display().to_string()));
        t.insert("data".into(), V::Table(data));
        let mut model = toml::Table::new();
        model.insert("path".into(), V::String(model_path.display().to_string()));
        model.insert("sha256".into(), V::String(model_sha256.to_string()));
        model.insert("allow_chat_template".into(), V::Boolean(self.allow_chat_template));
        model.insert("guard_threshold".into(), V::Float(self.guard_threshold));
        t.insert("model".into(), V::Table(model));
        let phase = |p: &PhaseSampling| {
            let mut s = toml::Table::new();
            s.insert("temperature".into(), V::Float(p.params.temperature));
            s.insert("top_p".into(), V::Float(p.params.top_p));
            s.insert("top_k".into(), V::Integer(p.params.top_k as i64));
            if let Some(m) = p.max_tokens {
                s.insert("max_tokens".into(), V::Integer(m as i64));
            }
            s.insert("stop_after_text".into(), V::Boolean(p.stop_after_text));
            V::Table(s)
        };
        let mut sampling = toml::Table::new();
        sampling.insert("instruction".into(), phase(&self.instruction_sampling));
        sampling.insert("response".into(), phase(&self.response_sampling));
        t.insert("sampling".into(), V::Table(sampling));
        let mix: toml::Table = self.types.iter().map(|ty| (ty.name.clone(), V::Float(ty.weight))).collect();
        t.insert("mix".into(), V::Table(mix));
        let mut plugins = toml::Table::new();
        let mut shas = plugin_sha256.iter();
        let mut next = |e: &PluginEntry| V::Table(resolved_plugin(&e.spec, shas.next().map(String::as_str).unwrap_or("")));
        plugins.insert("template".into(), next(&self.template));
        for (name, list) in [("cleaners", &self.cleaners), ("critics", &self.critics), ("qc_rules", &self.qc_rules)] {
            plugins.insert(name.into(), V::Array(list.iter().map(&mut next).collect()));
        }
        t.insert("plugins".into(), V::Table(plugins));
        t
    }

    /// Every plugin entry: template, cleaners, critics, QC rules.
    pub fn plugin_entries(&self) -> impl Iterator<Item = &PluginEntry> {
        std::iter::once(&self.template).chain(&self.cleaners).chain(&self.critics).chain(&self.qc_rules)
    }
}

/// A resolved pilot config's text: its header line and the table.
pub fn resolved_text(t: &toml::Table) -> String {
    let mut text = String::from("# Written by kiln: the config this run ran with, every default explicit.\n");
    text.push_str(&toml::to_string(t).expect("a TOML table serialises"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("types.json"), r#"[{"name": "qa", "description": "A question."}, {"name": "list", "description": "A list."}]"#).unwrap();
        std::fs::write(
            d.path().join("seeds.jsonl"),
            "{\"instruction_type\": \"qa\", \"instruction\": \"Why is the sky blue?\"}\n{\"instruction_type\": \"qa\", \"instruction\": \"What is two plus two?\"}\n{\"instruction_type\": \"list\", \"instruction\": \"List three birds.\"}\n{\"instruction_type\": \"list\", \"instruction\": \"List two seas.\"}\n",
        )
        .unwrap();
        std::fs::write(d.path().join("t.wasm"), b"not really").unwrap();
        std::fs::write(d.path().join("m.gguf"), b"not really").unwrap();
        let p = d.path().join("pilot.toml");
        (d, p)
    }

    const GOOD: &str = r#"
seed = 7
count = 10
examples_per_prompt = 2
[data]
seeds = "seeds.jsonl"
instruction_types = "types.json"
[model]
path = "m.gguf"
[sampling]
temperature = 0.5
[sampling.response]
temperature = 0.2
max_tokens = 64
[mix]
qa = 3
list = 1
[plugins.template]
path = "t.wasm"
[[plugins.cleaners]]
path = "t.wasm"
[plugins.cleaners.config]
max_repetition = 0.2
"#;

    fn load(text: &str, p: &Path) -> Result<PilotConfig, PilotConfigError> {
        PilotConfig::from_str(text, p, &Overrides::default())
    }

    #[test]
    fn good_config_validates() {
        let (_d, p) = setup();
        let c = load(GOOD, &p).unwrap();
        assert_eq!(c.run_id, "pilot");
        assert_eq!(c.instruction_sampling.params.temperature, 0.5);
        assert_eq!(c.response_sampling.params.temperature, 0.2);
        assert_eq!(c.response_sampling.budget(256), 64);
        assert_eq!(c.instruction_sampling.budget(32), 32);
        assert_eq!(c.types.len(), 2);
        assert!((c.types[0].weight - 0.75).abs() < 1e-12);
        assert_eq!(c.cleaners.len(), 1);
        assert_eq!(c.cleaners[0].spec.config["max_repetition"], serde_json::json!(0.2));
        let resolved = c.resolved_toml(&["a".repeat(64), "b".repeat(64)], Path::new("/m.gguf"), &"c".repeat(64));
        let again: PilotFile = toml::from_str(&resolved).unwrap();
        assert_eq!(again.plugins.cleaners[0].sha256.as_deref(), Some("b".repeat(64).as_str()));
    }

    #[test]
    fn errors_name_file_field_and_value() {
        let (_d, p) = setup();
        let cases: Vec<(String, &str)> = vec![
            (GOOD.replace("seed = 7", "sed = 7"), "unknown field `sed`"),
            (GOOD.replace("count = 10", ""), "missing field `count`"),
            (GOOD.replace("count = 10", "count = 0"), "count = 0: must be at least 1"),
            (GOOD.replace("count = 10", "count = \"ten\""), "count = \"ten\""),
            (GOOD.replace("path = \"m.gguf\"", "path = \"nope.gguf\""), "model.path = \"nope.gguf\": no such file"),
            (GOOD.replace("path = \"m.gguf\"", "name = \"gpt-9\""), "model.name = \"gpt-9\": unknown model"),
            (GOOD.replace("temperature = 0.2", "temperature = -1"), "sampling.response.temperature = -1"),
            (GOOD.replace("qa = 3", "qa = 3\nchat = 1"), "mix.chat = 1: no such instruction type"),
            (GOOD.replace("examples_per_prompt = 2", "examples_per_prompt = 3"), "examples_per_prompt = 3: instruction type \"qa\" has only 2"),
            (GOOD.replace("path = \"t.wasm\"\n[[", "path = \"x.wasm\"\n[["), "plugins.template.path = \"x.wasm\": no such file"),
            (GOOD.replace("max_repetition = 0.2", "max_repetition = 0.2\n[plugins.cleaners.nope]"), "unknown field `nope`"),
            (GOOD.replace("seeds = \"seeds.jsonl\"", "seeds = \"none.jsonl\""), "data.seeds = \"none.jsonl\": cannot be read"),
            (GOOD.replace("seed = 7", "seed = 7\nrun_id = \"../x\""), "run_id = \"../x\""),
        ];
        for (text, want) in cases {
            let e = load(&text, &p).unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?} in: {e}");
            assert!(e.contains("pilot.toml"), "no file named in: {e}");
        }
    }

    #[test]
    fn overrides_apply() {
        let (_d, p) = setup();
        let ov = Overrides { run_id: Some("x1".into()), count: Some(3), seed: Some(9), ..Default::default() };
        let c = PilotConfig::from_str(GOOD, &p, &ov).unwrap();
        assert_eq!((c.run_id.as_str(), c.count, c.seed), ("x1", 3, 9));
        let bad = Overrides { run_id: Some("a/b".into()), ..Default::default() };
        let e = PilotConfig::from_str(GOOD, &p, &bad).unwrap_err().to_string();
        assert!(e.starts_with("command line: --run-id = \"a/b\""), "{e}");
    }
}
