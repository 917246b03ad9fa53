//! The test-set config (`configs/testset.toml`): a strict file form ([`TestsetFile`], unknown
//! keys are errors) validated into [`TestsetConfig`]. Paths are relative to the file's own
//! directory; every validation error names the file, the field and the value.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::pilot::{quoted, read_strict, run_location, Ctx, PilotConfigError};
use super::ConfigError;

/// The file form of a test-set config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestsetFile {
    /// The run's name: its folder under `artifacts_dir` (default: the config file's stem).
    pub run_id: Option<String>,
    /// Where runs go (default: `artifacts` in the current directory).
    pub artifacts_dir: Option<PathBuf>,
    /// The training dataset the test set must not overlap (a finished pilot, replay or scale
    /// run whose gate passed); its model, template, cleaners, critics and sampling make the
    /// test set.
    pub dataset: PathBuf,
    /// The test set's own seed (must differ from the dataset's).
    pub seed: u64,
    /// Instructions per type (default 40).
    pub per_type: Option<usize>,
    /// Instruction types (default: every type of the dataset's mix).
    pub types: Option<Vec<String>>,
    /// Candidates generated per missing item in a round (default 1.5).
    pub oversample: Option<f64>,
    /// Rounds of generation before a short test set is an error (default 8).
    pub max_rounds: Option<usize>,
    /// The contamination check.
    #[serde(default)]
    pub contamination: ContaminationSection,
}

/// `[contamination]`: when a candidate overlaps the training set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContaminationSection {
    /// Word n-gram size of the overlap measure (default 8).
    pub ngram: Option<usize>,
    /// A candidate whose share of n-grams found in the training set's instructions or
    /// responses is at least this overlaps (default 0.5).
    pub max_overlap: Option<f64>,
    /// Word n-gram size of the near-duplicate measure (default 3, the cleaner's).
    pub near_ngram: Option<usize>,
    /// A candidate whose Jaccard similarity with a training instruction (or an earlier test
    /// item) is at least this is a near-duplicate (default 0.7, the cleaner's).
    pub near_threshold: Option<f64>,
}

/// The validated contamination settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contamination {
    /// Overlap n-gram size.
    pub ngram: usize,
    /// Overlap share at which a candidate is refused.
    pub max_overlap: f64,
    /// Near-duplicate n-gram size.
    pub near_ngram: usize,
    /// Near-duplicate threshold.
    pub near_threshold: f64,
}

/// A validated test-set config.
#[derive(Debug, Clone)]
pub struct TestsetConfig {
    /// The config file.
    pub file: PathBuf,
    /// Run id.
    pub run_id: String,
    /// Where runs go (absolute).
    pub artifacts_dir: PathBuf,
    /// The training dataset's run folder (absolute).
    pub dataset: PathBuf,
    /// Seed.
    pub seed: u64,
    /// Items per type.
    pub per_type: usize,
    /// Types asked for (None: the dataset's).
    pub types: Option<Vec<String>>,
    /// Oversampling factor.
    pub oversample: f64,
    /// Rounds at most.
    pub max_rounds: usize,
    /// Contamination settings.
    pub contamination: Contamination,
}

/// Command-line values over the file's.
#[derive(Debug, Clone, Default)]
pub struct TestsetOverrides {
    /// `--run-id`.
    pub run_id: Option<String>,
    /// `--artifacts-dir`.
    pub artifacts_dir: Option<PathBuf>,
    /// `--dataset` (relative to the current directory).
    pub dataset: Option<PathBuf>,
}

impl TestsetConfig {
    /// Read, parse and validate.
    pub fn load(path: &Path, ov: &TestsetOverrides) -> Result<TestsetConfig, PilotConfigError> {
        Ok(read_strict::<TestsetFile>(path)?.validate(path, ov)?)
    }

    /// The config as run, every default explicit, with the dataset pinned by its file's sha256.
    pub fn resolved_toml(&self, types: &[String], dataset_sha256: &str) -> String {
        use toml::Value as V;
        let mut t = toml::Table::new();
        t.insert("run_id".into(), V::String(self.run_id.clone()));
        t.insert("dataset".into(), V::String(self.dataset.display().to_string()));
        t.insert("dataset_sha256".into(), V::String(dataset_sha256.to_string()));
        t.insert("seed".into(), V::Integer(self.seed as i64));
        t.insert("per_type".into(), V::Integer(self.per_type as i64));
        t.insert("types".into(), V::Array(types.iter().map(|s| V::String(s.clone())).collect()));
        t.insert("oversample".into(), V::Float(self.oversample));
        t.insert("max_rounds".into(), V::Integer(self.max_rounds as i64));
        let c = &self.contamination;
        let mut ct = toml::Table::new();
        ct.insert("ngram".into(), V::Integer(c.ngram as i64));
        ct.insert("max_overlap".into(), V::Float(c.max_overlap));
        ct.insert("near_ngram".into(), V::Integer(c.near_ngram as i64));
        ct.insert("near_threshold".into(), V::Float(c.near_threshold));
        t.insert("contamination".into(), V::Table(ct));
        format!("# Written by kiln: the config this test set was made with, every default explicit.\n{}", toml::to_string(&t).expect("serialises"))
    }
}

impl TestsetFile {
    /// Validate against the file it came from and the command line.
    pub fn validate(self, path: &Path, ov: &TestsetOverrides) -> Result<TestsetConfig, ConfigError> {
        let base = super::pilot::absolute(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")));
        let cx = Ctx::new(path.display().to_string(), &base);
        let cwd = super::pilot::absolute(Path::new("."));
        let cli = Ctx::new("command line".to_string(), &cwd);
        let (run_id, artifacts_dir) =
            run_location(&cx, &cli, path, (ov.run_id.as_ref(), self.run_id.as_ref()), (ov.artifacts_dir.as_ref(), self.artifacts_dir.as_ref()))?;
        let (dataset, dcx, dfield, shown) = match &ov.dataset {
            Some(d) => (super::pilot::absolute(d), &cli, "--dataset", d.clone()),
            None => (cx.path(&self.dataset), &cx, "dataset", self.dataset.clone()),
        };
        if !dataset.is_dir() {
            return Err(dcx.err(dfield, quoted(&shown), format!("is not a run folder ({} does not exist or is not a directory)", dataset.display())));
        }
        let per_type = self.per_type.unwrap_or(40);
        if per_type == 0 || per_type > 100_000 {
            return Err(cx.err("per_type", per_type, "must be between 1 and 100000"));
        }
        if let Some(t) = &self.types {
            if t.is_empty() {
                return Err(cx.err("types", "[]", "must name at least one type (or be left out for every type)"));
            }
            let mut seen = std::collections::HashSet::new();
            for name in t {
                if !seen.insert(name) {
                    return Err(cx.err("types", format!("\"{name}\""), "is listed twice"));
                }
            }
        }
        let oversample = self.oversample.unwrap_or(1.5);
        if !(1.0..=100.0).contains(&oversample) {
            return Err(cx.err("oversample", oversample, "must be between 1 and 100"));
        }
        let max_rounds = self.max_rounds.unwrap_or(8);
        if max_rounds == 0 || max_rounds > 1000 {
            return Err(cx.err("max_rounds", max_rounds, "must be between 1 and 1000"));
        }
        let c = &self.contamination;
        let ngram = c.ngram.unwrap_or(8);
        let near_ngram = c.near_ngram.unwrap_or(3);
        for (field, n) in [("contamination.ngram", ngram), ("contamination.near_ngram", near_ngram)] {
            if n == 0 || n > 64 {
                return Err(cx.err(field, n, "must be between 1 and 64"));
            }
        }
        let max_overlap = c.max_overlap.unwrap_or(0.5);
        let near_threshold = c.near_threshold.unwrap_or(0.7);
        for (field, v) in [("contamination.max_overlap", max_overlap), ("contamination.near_threshold", near_threshold)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(cx.err(field, v, "must be in (0, 1]"));
            }
        }
        Ok(TestsetConfig {
            file: path.to_path_buf(),
            run_id,
            artifacts_dir,
            dataset,
            seed: self.seed,
            per_type,
            types: self.types,
            oversample,
            max_rounds,
            contamination: Contamination { ngram, max_overlap, near_ngram, near_threshold },
        })
    }
}
