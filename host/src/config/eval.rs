//! The eval config (`configs/eval.toml`): a strict file form ([`EvalFile`], unknown keys are
//! errors) validated into [`EvalConfig`]. Paths are relative to the file's own directory; every
//! validation error names the file, the field and the value.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pilot::{absolute, quoted, read_strict, run_location, Ctx, ModelSection, ModelSpec, PhaseSampling, PilotConfigError, PluginEntry};
use super::{ConfigError, PluginConfig};
use crate::model::SamplingParams;

/// Default significance level of the gate.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// Default confidence level of the Wilson intervals.
pub const DEFAULT_LEVEL: f64 = 0.95;
/// Default cap on an answer's token budget.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// The file form of an eval config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalFile {
    /// The run's name: its folder under `artifacts_dir` (default: the config file's stem).
    pub run_id: Option<String>,
    /// Where runs go (default: `artifacts` in the current directory).
    pub artifacts_dir: Option<PathBuf>,
    /// Seeds the plugins' random sources (answers are greedy).
    pub seed: u64,
    /// The test set: JSON lines `{"id"?, "instruction_type", "instruction"}`, or a `kiln testset`
    /// run folder (its testset.jsonl). An arm with an adapter from a `kiln train` run needs a
    /// test set checked against that run's training data.
    pub test_set: PathBuf,
    /// The gate: overall exact McNemar p below this, and the tuned arm ahead.
    pub alpha: Option<f64>,
    /// Confidence level of the Wilson intervals.
    pub level: Option<f64>,
    /// Sequences decoded together.
    pub batch_size: Option<usize>,
    /// Answers per chunk file (what a kill can lose at most).
    pub chunk_size: Option<usize>,
    /// Records per plugin call.
    pub plugin_batch_size: Option<usize>,
    /// Cap on the template's answer budget.
    pub max_tokens: Option<u32>,
    /// Stop sequences count only after the answer's first non-whitespace text.
    pub stop_after_text: Option<bool>,
    /// The base model: the base arm's model, the judge's model, and the tuned arm's model
    /// unless it names its own.
    pub model: ModelSection,
    /// The base arm.
    pub base: ArmSection,
    /// The second arm.
    pub tuned: ArmSection,
    /// The critic that judges both arms' answers.
    pub critic: PluginConfig,
}

/// One arm: a template, and optionally a model of its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSection {
    /// Another model file for this arm (default: `[model]`).
    pub model: Option<ModelSection>,
    /// A LoRA adapter folder in PEFT's format (e.g. a `kiln train` run's `adapter/`), applied
    /// unmerged to this arm's model.
    pub adapter: Option<PathBuf>,
    /// The prompt template that renders this arm's response prompts.
    pub template: PluginConfig,
}

/// One test item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestItem {
    /// Unique id (default: `t-<line>`).
    #[serde(default)]
    pub id: String,
    /// Instruction type (the statistics are per type).
    pub instruction_type: String,
    /// The instruction.
    pub instruction: String,
}

/// A validated arm.
#[derive(Debug, Clone)]
pub struct Arm {
    /// "base" or "tuned".
    pub name: &'static str,
    /// Its own model, or `None` for `[model]`.
    pub model: Option<ModelSpec>,
    /// Its adapter folder (absolute) and the sha256 of its weights file.
    pub adapter: Option<(PathBuf, String)>,
    /// Its template.
    pub template: PluginEntry,
}

/// A validated eval config.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The config file.
    pub file: PathBuf,
    /// Run id.
    pub run_id: String,
    /// Where runs go (absolute).
    pub artifacts_dir: PathBuf,
    /// Plugin seed.
    pub seed: u64,
    /// The test set file (absolute).
    pub test_set: PathBuf,
    /// The `kiln testset` run the file belongs to, when `test_set` named one.
    pub test_set_run: Option<PathBuf>,
    /// The test set's sha256 (of the bytes the items were read from).
    pub test_set_sha256: String,
    /// The test items, in file order.
    pub items: Vec<TestItem>,
    /// Gate significance level.
    pub alpha: f64,
    /// Wilson confidence level.
    pub level: f64,
    /// Sequences decoded together.
    pub batch_size: usize,
    /// Answers per chunk file.
    pub chunk_size: usize,
    /// Records per plugin call.
    pub plugin_batch_size: usize,
    /// Greedy decoding with the budget cap and the stop rule.
    pub sampling: PhaseSampling,
    /// The base model (and the judge's).
    pub model: ModelSpec,
    /// The two arms: base, tuned.
    pub arms: [Arm; 2],
    /// The critic.
    pub critic: PluginEntry,
}

/// Values given on the command line that replace those of the file.
#[derive(Debug, Clone, Default)]
pub struct EvalOverrides {
    /// `--run-id`.
    pub run_id: Option<String>,
    /// `--artifacts-dir`.
    pub artifacts_dir: Option<PathBuf>,
    /// `--test-set` (relative to the current directory).
    pub test_set: Option<PathBuf>,
    /// `--model`: the base model (a file, or a known name).
    pub model: Option<String>,
}

impl EvalConfig {
    /// Read, parse and validate an eval config file.
    pub fn load(path: &Path, ov: &EvalOverrides) -> Result<EvalConfig, PilotConfigError> {
        Ok(read_strict::<EvalFile>(path)?.validate(path, ov)?)
    }

    /// The model of an arm.
    pub fn arm_model(&self, arm: &Arm) -> ModelSpec {
        arm.model.clone().unwrap_or_else(|| self.model.clone())
    }

    /// The config as run: every path absolute, every default explicit, plugins and models
    /// pinned to what was loaded (`plugin_sha256`: base template, tuned template, critic;
    /// `models`: (path, sha256) of base and tuned).
    pub fn resolved_toml(&self, plugin_sha256: &[String; 3], models: &[(PathBuf, String); 2]) -> String {
        use toml::Value as V;
        let mut t = toml::Table::new();
        t.insert("run_id".into(), V::String(self.run_id.clone()));
        t.insert("artifacts_dir".into(), V::String(self.artifacts_dir.display().to_string()));
        t.insert("seed".into(), V::Integer(self.seed as i64));
        t.insert("test_set".into(), V::String(self.test_set.display().to_string()));
        t.insert("test_set_sha256".into(), V::String(self.test_set_sha256.clone()));
        t.insert("alpha".into(), V::Float(self.alpha));
        t.insert("level".into(), V::Float(self.level));
        t.insert("batch_size".into(), V::Integer(self.batch_size as i64));
        t.insert("chunk_size".into(), V::Integer(self.chunk_size as i64));
        t.insert("plugin_batch_size".into(), V::Integer(self.plugin_batch_size as i64));
        t.insert("max_tokens".into(), V::Integer(self.sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as i64));
        t.insert("stop_after_text".into(), V::Boolean(self.sampling.stop_after_text));
        let model = |spec: &ModelSpec, (path, sha): &(PathBuf, String)| {
            let mut m = toml::Table::new();
            m.insert("path".into(), V::String(path.display().to_string()));
            m.insert("sha256".into(), V::String(sha.clone()));
            m.insert("allow_chat_template".into(), V::Boolean(spec.allow_chat_template));
            m.insert("guard_threshold".into(), V::Float(spec.guard_threshold));
            V::Table(m)
        };
        t.insert("model".into(), model(&self.model, &models[0]));
        for (k, arm) in self.arms.iter().enumerate() {
            let mut a = toml::Table::new();
            if let Some(spec) = &arm.model {
                a.insert("model".into(), model(spec, &models[k]));
            }
            if let Some((dir, sha)) = &arm.adapter {
                a.insert("adapter".into(), V::String(dir.display().to_string()));
                a.insert("adapter_sha256".into(), V::String(sha.clone()));
            }
            a.insert("template".into(), V::Table(super::pilot::resolved_plugin(&arm.template.spec, &plugin_sha256[k])));
            t.insert(arm.name.into(), V::Table(a));
        }
        t.insert("critic".into(), V::Table(super::pilot::resolved_plugin(&self.critic.spec, &plugin_sha256[2])));
        toml::to_string(&t).expect("a TOML table serialises")
    }
}

/// Read and check a test set: JSON lines of typed instructions with unique ids. Returns the
/// items and the sha256 of the bytes they were read from.
pub fn read_test_set(path: &Path, shown: &Path, cx_file: &str, field: &str) -> Result<(Vec<TestItem>, String), ConfigError> {
    let err = |why: String| ConfigError { file: cx_file.to_string(), field: field.to_string(), value: quoted(shown), why };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot be read ({}): {e}", path.display())))?;
    let sha256 = crate::provenance::sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|e| err(format!("is not UTF-8: {e}")))?;
    let mut items = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut item: TestItem = serde_json::from_str(line)
            .map_err(|e| err(format!("line {}: not a test item {{\"id\"?, \"instruction_type\", \"instruction\"}}: {e}", i + 1)))?;
        if item.id.is_empty() {
            item.id = format!("t-{:05}", i + 1);
        }
        if item.instruction.trim().is_empty() {
            return Err(err(format!("line {}: item \"{}\" has an empty instruction", i + 1, item.id)));
        }
        if item.instruction_type.trim().is_empty() {
            return Err(err(format!("line {}: item \"{}\" has an empty instruction_type", i + 1, item.id)));
        }
        if !ids.insert(item.id.clone()) {
            return Err(err(format!("line {}: id \"{}\" appears twice", i + 1, item.id)));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(err("holds no test items".into()));
    }
    Ok((items, sha256))
}

impl EvalFile {
    /// Validate against the file it came from and the command-line overrides.
    pub fn validate(self, path: &Path, ov: &EvalOverrides) -> Result<EvalConfig, ConfigError> {
        let base_dir = absolute(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")));
        let cx = Ctx::new(path.display().to_string(), &base_dir);
        let cwd = absolute(Path::new("."));
        let cli = Ctx::new("command line".to_string(), &cwd);

        let (run_id, artifacts_dir) =
            run_location(&cx, &cli, path, (ov.run_id.as_ref(), self.run_id.as_ref()), (ov.artifacts_dir.as_ref(), self.artifacts_dir.as_ref()))?;
        let alpha = self.alpha.unwrap_or(DEFAULT_ALPHA);
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(cx.err("alpha", alpha, "must be in (0, 1)"));
        }
        let level = self.level.unwrap_or(DEFAULT_LEVEL);
        if !(level > 0.0 && level < 1.0) {
            return Err(cx.err("level", level, "must be in (0, 1)"));
        }
        let positive = |field: &str, v: Option<usize>, default: usize| -> Result<usize, ConfigError> {
            match v {
                Some(0) => Err(cx.err(field, 0, "must be at least 1")),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let batch_size = positive("batch_size", self.batch_size, super::pilot::DEFAULT_BATCH_SIZE)?;
        let chunk_size = positive("chunk_size", self.chunk_size, super::pilot::DEFAULT_CHUNK_SIZE)?;
        let plugin_batch_size = positive("plugin_batch_size", self.plugin_batch_size, super::pilot::DEFAULT_PLUGIN_BATCH_SIZE)?;
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        if max_tokens == 0 {
            return Err(cx.err("max_tokens", 0, "must be at least 1"));
        }
        let sampling = PhaseSampling {
            params: SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0 },
            max_tokens: Some(max_tokens),
            stop_after_text: self.stop_after_text.unwrap_or(false),
        };

        // A `kiln testset` run folder stands for its testset.jsonl.
        let in_run = |full: PathBuf| -> (PathBuf, Option<PathBuf>) {
            if full.is_dir() {
                (full.join(crate::stages::testset::testset_files::TESTSET), Some(full))
            } else {
                (full, None)
            }
        };
        let (test_set, test_set_run, (items, test_set_sha256)) = match &ov.test_set {
            Some(p) => {
                let (full, run) = in_run(absolute(p));
                let read = read_test_set(&full, p, "command line", "--test-set")?;
                (full, run, read)
            }
            None => {
                let (full, run) = in_run(cx.path(&self.test_set));
                let read = read_test_set(&full, &self.test_set, &cx.file, "test_set")?;
                (full, run, read)
            }
        };

        let model = self.model.validate(&cx, &cli, "model", ov.model.as_deref(), false)?;
        let arm = |name: &'static str, a: &ArmSection| -> Result<Arm, ConfigError> {
            let model = match &a.model {
                Some(m) => Some(m.validate(&cx, &cli, &format!("{name}.model"), None, false)?),
                None => None,
            };
            let adapter = match &a.adapter {
                None => None,
                Some(d) => {
                    let dir = cx.path(d);
                    let weights = dir.join("adapter_model.safetensors");
                    if !dir.join("adapter_config.json").is_file() || !weights.is_file() {
                        return Err(cx.err(
                            &format!("{name}.adapter"),
                            quoted(d),
                            format!("is not a PEFT adapter folder ({} needs adapter_config.json and adapter_model.safetensors)", dir.display()),
                        ));
                    }
                    let sha = crate::provenance::sha256_file(&weights)
                        .map_err(|e| cx.err(&format!("{name}.adapter"), quoted(d), format!("cannot be read: {e}")))?;
                    Some((dir, sha))
                }
            };
            Ok(Arm { name, model, adapter, template: cx.plugin_entry(format!("{name}.template"), &a.template)? })
        };
        let arms = [arm("base", &self.base)?, arm("tuned", &self.tuned)?];
        let critic = cx.plugin_entry("critic".into(), &self.critic)?;
        Ok(EvalConfig {
            file: absolute(path),
            run_id,
            artifacts_dir,
            seed: self.seed,
            test_set,
            test_set_run,
            test_set_sha256,
            items,
            alpha,
            level,
            batch_size,
            chunk_size,
            plugin_batch_size,
            sampling,
            model,
            arms,
            critic,
        })
    }
}
