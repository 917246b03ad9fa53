//! The train config (`configs/train.toml`): a strict file form ([`TrainFile`], unknown keys
//! are errors) validated into [`TrainConfig`]. Paths are relative to the file's own directory;
//! every validation error names the file, the field and the value.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::pilot::{absolute, quoted, read_strict, run_location, Ctx, PilotConfigError};
use super::ConfigError;
use crate::train::{AdamWConfig, LoraConfig, TrainOptions, MODULES};

/// The file form of a train config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    /// The run's name: its folder under `artifacts_dir` (default: the config file's stem).
    pub run_id: Option<String>,
    /// Where runs go (default: `artifacts` in the current directory).
    pub artifacts_dir: Option<PathBuf>,
    /// The dataset: the folder of a finished kiln run whose gate passed (a pilot or a replay).
    pub dataset: PathBuf,
    /// The held-out test set this training is paired with (a `kiln testset` run folder): it must
    /// have been checked against this dataset, else training is refused; recorded.
    pub test_set: Option<PathBuf>,
    /// Refuse a dataset whose run has no approved review (`kiln review RUN --approve`).
    #[serde(default)]
    pub require_review: bool,
    /// Seeds adapter initialisation, the split, shuffling and dropout.
    pub seed: u64,
    /// Longest example in tokens (prompt + response + EOS); longer ones are left out and counted.
    pub max_seq_len: Option<usize>,
    /// Share of the examples held out for the validation loss (chosen by id).
    pub validation_fraction: Option<f64>,
    /// The adapters.
    pub lora: LoraSection,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerSection,
    /// The loop.
    #[serde(default)]
    pub training: TrainingSection,
}

/// `[lora]`, with PEFT's names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Rank.
    pub r: usize,
    /// Scale numerator (default 2 r).
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapters' input (default 0.05).
    pub lora_dropout: Option<f64>,
    /// Projections that get adapters (default all seven).
    pub target_modules: Option<Vec<String>>,
}

/// `[optimizer]`: AdamW.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    /// Peak learning rate (default 2e-4).
    pub lr: Option<f64>,
    /// Default 0.9.
    pub beta1: Option<f64>,
    /// Default 0.999.
    pub beta2: Option<f64>,
    /// Default 1e-8.
    pub eps: Option<f64>,
    /// Decoupled weight decay (default 0).
    pub weight_decay: Option<f64>,
}

/// `[training]`: the loop.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Sequences per micro-batch (default 8).
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step (default 1).
    pub grad_accum: Option<usize>,
    /// Passes over the data (default 3).
    pub epochs: Option<usize>,
    /// Steps of linear warmup before the cosine decay (default 10 % of the steps, at least 1).
    pub warmup_steps: Option<usize>,
    /// Global gradient-norm limit (default 1.0; 0 turns clipping off).
    pub max_grad_norm: Option<f64>,
    /// Validation loss every this many steps (default 10).
    pub eval_every: Option<usize>,
    /// Checkpoint every this many steps (default 10).
    pub checkpoint_every: Option<usize>,
}

/// A validated train config.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The config file.
    pub file: PathBuf,
    /// Run id.
    pub run_id: String,
    /// Where runs go (absolute).
    pub artifacts_dir: PathBuf,
    /// The dataset's run folder (absolute).
    pub dataset: PathBuf,
    /// The paired test set's run folder (absolute), if any.
    pub test_set: Option<PathBuf>,
    /// Refuse a dataset without an approved review.
    pub require_review: bool,
    /// Longest example.
    pub max_seq_len: usize,
    /// Held-out share.
    pub validation_fraction: f64,
    /// Warmup as given (None: 10 % of the steps, decided once the data is known).
    pub warmup_steps: Option<usize>,
    /// Everything that decides the trained bytes (warmup filled in by the stage).
    pub options: TrainOptions,
}

/// Values given on the command line that replace those of the file.
#[derive(Debug, Clone, Default)]
pub struct TrainOverrides {
    /// `--run-id`.
    pub run_id: Option<String>,
    /// `--artifacts-dir`.
    pub artifacts_dir: Option<PathBuf>,
    /// `--dataset` (relative to the current directory).
    pub dataset: Option<PathBuf>,
    /// `--test-set` (relative to the current directory).
    pub test_set: Option<PathBuf>,
}

impl TrainConfig {
    /// Read, parse and validate a train config file.
    pub fn load(path: &Path, ov: &TrainOverrides) -> Result<TrainConfig, PilotConfigError> {
        Ok(read_strict::<TrainFile>(path)?.validate(path, ov)?)
    }

    /// The config as run: every path absolute, every default explicit.
    pub fn resolved_toml(&self, dataset_sha256: &str) -> String {
        let mut t = toml::Table::new();
        use toml::Value as V;
        t.insert("run_id".into(), V::String(self.run_id.clone()));
        t.insert("artifacts_dir".into(), V::String(self.artifacts_dir.display().to_string()));
        t.insert("dataset".into(), V::String(self.dataset.display().to_string()));
        t.insert("dataset_sha256".into(), V::String(dataset_sha256.to_string()));
        if let Some(ts) = &self.test_set {
            t.insert("test_set".into(), V::String(ts.display().to_string()));
        }
        t.insert("max_seq_len".into(), V::Integer(self.max_seq_len as i64));
        t.insert("validation_fraction".into(), V::Float(self.validation_fraction));
        let o = &self.options;
        t.insert("seed".into(), V::Integer(o.seed as i64));
        let mut l = toml::Table::new();
        l.insert("r".into(), V::Integer(o.lora.r as i64));
        l.insert("lora_alpha".into(), V::Float(o.lora.lora_alpha));
        l.insert("lora_dropout".into(), V::Float(o.lora.lora_dropout));
        l.insert("target_modules".into(), V::Array(o.lora.target_modules.iter().map(|m| V::String(m.clone())).collect()));
        t.insert("lora".into(), V::Table(l));
        let mut p = toml::Table::new();
        let c = &o.optimizer;
        for (k, v) in [("lr", c.lr), ("beta1", c.beta1), ("beta2", c.beta2), ("eps", c.eps), ("weight_decay", c.weight_decay)] {
            p.insert(k.into(), V::Float(v));
        }
        t.insert("optimizer".into(), V::Table(p));
        let mut r = toml::Table::new();
        for (k, v) in [
            ("batch_size", o.batch_size),
            ("grad_accum", o.grad_accum),
            ("epochs", o.epochs),
            ("eval_every", o.eval_every),
            ("checkpoint_every", o.checkpoint_every),
        ] {
            r.insert(k.into(), V::Integer(v as i64));
        }
        r.insert("max_grad_norm".into(), V::Float(o.max_grad_norm));
        // Unset, the warmup is 10 % of the steps, known once the data is split.
        r.insert("warmup_steps".into(), self.warmup_steps.map_or(V::String("auto".into()), |w| V::Integer(w as i64)));
        t.insert("training".into(), V::Table(r));
        format!("# Written by kiln: the config this run ran with, every default explicit.\n{}", toml::to_string(&t).expect("a TOML table serialises"))
    }
}

impl TrainFile {
    /// Validate against the file it came from and the command-line overrides.
    pub fn validate(self, path: &Path, ov: &TrainOverrides) -> Result<TrainConfig, ConfigError> {
        let base_dir = absolute(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")));
        let cx = Ctx::new(path.display().to_string(), &base_dir);
        let cwd = absolute(Path::new("."));
        let cli = Ctx::new("command line".to_string(), &cwd);
        let (run_id, artifacts_dir) =
            run_location(&cx, &cli, path, (ov.run_id.as_ref(), self.run_id.as_ref()), (ov.artifacts_dir.as_ref(), self.artifacts_dir.as_ref()))?;
        let (dataset, dcx, dfield, shown) = match &ov.dataset {
            Some(d) => (absolute(d), &cli, "--dataset", d.clone()),
            None => (cx.path(&self.dataset), &cx, "dataset", self.dataset.clone()),
        };
        if !dataset.is_dir() {
            return Err(dcx.err(dfield, quoted(&shown), format!("is not a run folder ({} does not exist or is not a directory)", dataset.display())));
        }
        let test_set = match (&ov.test_set, &self.test_set) {
            (Some(t), _) => Some(absolute(t)),
            (None, Some(t)) => Some(cx.path(t)),
            (None, None) => None,
        };
        let positive = |field: &str, v: Option<usize>, default: usize| -> Result<usize, ConfigError> {
            match v {
                Some(0) => Err(cx.err(field, 0, "must be at least 1")),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let max_seq_len = positive("max_seq_len", self.max_seq_len, 512)?;
        let validation_fraction = self.validation_fraction.unwrap_or(0.1);
        if !(0.0..0.9).contains(&validation_fraction) {
            return Err(cx.err("validation_fraction", validation_fraction, "must be in [0, 0.9)"));
        }
        let l = &self.lora;
        let lora = LoraConfig {
            r: l.r,
            lora_alpha: l.lora_alpha.unwrap_or(2.0 * l.r as f64),
            lora_dropout: l.lora_dropout.unwrap_or(0.05),
            target_modules: l.target_modules.clone().unwrap_or_else(|| MODULES.iter().map(|m| m.to_string()).collect()),
        };
        lora.validate(&format!("{}: [lora]", cx.file)).map_err(|e| cx.err("lora", format!("{:?}", self.lora), e.to_string()))?;
        let d = AdamWConfig::default();
        let o = &self.optimizer;
        let optimizer = AdamWConfig {
            lr: o.lr.unwrap_or(d.lr),
            beta1: o.beta1.unwrap_or(d.beta1),
            beta2: o.beta2.unwrap_or(d.beta2),
            eps: o.eps.unwrap_or(d.eps),
            weight_decay: o.weight_decay.unwrap_or(d.weight_decay),
        };
        if !(optimizer.lr.is_finite() && optimizer.lr > 0.0) {
            return Err(cx.err("optimizer.lr", optimizer.lr, "must be a positive number"));
        }
        for (field, v) in [("optimizer.beta1", optimizer.beta1), ("optimizer.beta2", optimizer.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(cx.err(field, v, "must be in [0, 1)"));
            }
        }
        if !(optimizer.eps.is_finite() && optimizer.eps > 0.0) {
            return Err(cx.err("optimizer.eps", optimizer.eps, "must be a positive number"));
        }
        if !(optimizer.weight_decay.is_finite() && optimizer.weight_decay >= 0.0) {
            return Err(cx.err("optimizer.weight_decay", optimizer.weight_decay, "must be 0 or more"));
        }
        let r = &self.training;
        let max_grad_norm = r.max_grad_norm.unwrap_or(1.0);
        if !(max_grad_norm.is_finite() && max_grad_norm >= 0.0) {
            return Err(cx.err("training.max_grad_norm", max_grad_norm, "must be 0 (no clipping) or more"));
        }
        let options = TrainOptions {
            lora,
            optimizer,
            batch_size: positive("training.batch_size", r.batch_size, 8)?,
            grad_accum: positive("training.grad_accum", r.grad_accum, 1)?,
            epochs: positive("training.epochs", r.epochs, 3)?,
            warmup_steps: r.warmup_steps.unwrap_or(0),
            max_grad_norm,
            eval_every: positive("training.eval_every", r.eval_every, 10)?,
            checkpoint_every: positive("training.checkpoint_every", r.checkpoint_every, 10)?,
            seed: self.seed,
        };
        Ok(TrainConfig {
            file: absolute(path),
            run_id,
            artifacts_dir,
            dataset,
            test_set,
            require_review: self.require_review,
            max_seq_len,
            validation_fraction,
            warmup_steps: r.warmup_steps,
            options,
        })
    }
}
