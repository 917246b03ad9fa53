//! The scale config (`configs/scale.toml`): a strict file form ([`ScaleFile`], unknown keys are
//! errors) validated into [`ScaleConfig`]. A scale inherits everything that decides its samples
//! from a finished pilot whose gate passed (model and plugins by sha256, sampling, QC rules, the
//! instruction mix, the seed); what it changes must be written under `[overrides]` (or given
//! with `--set`) and is recorded. Paths are relative to the file's own directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::pilot::{read_strict, run_location, Ctx, PilotConfigError};
use super::ConfigError;

/// Default samples of a scale.
pub const DEFAULT_COUNT: usize = 15_000;
/// Default shards of a scale.
pub const DEFAULT_SHARDS: usize = 10;

/// The file form of a scale config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleFile {
    /// The run's name: its folder under `artifacts_dir` (default: the config file's stem).
    pub run_id: Option<String>,
    /// Where runs go (default: `artifacts` in the current directory).
    pub artifacts_dir: Option<PathBuf>,
    /// The pilot run folder whose gate passed.
    pub pilot: PathBuf,
    /// Samples in all (default 15 000).
    pub count: Option<usize>,
    /// Shards (default 10).
    pub shards: Option<usize>,
    /// Refuse a pilot without an approved review (`kiln review PILOT --approve`).
    #[serde(default)]
    pub require_review: bool,
    /// Pilot parameters changed for the scale, by their dotted names in the pilot's
    /// `config.resolved.toml` (`"sampling.response.temperature" = 0.8`); recorded.
    #[serde(default)]
    pub overrides: toml::Table,
    /// Cross-shard deduplication at merge.
    #[serde(default)]
    pub dedup: DedupSection,
    /// Slurm submission.
    #[serde(default)]
    pub slurm: SlurmSection,
}

/// `[dedup]`: the cleaner's near-duplicate measure (word n-gram Jaccard similarity of
/// instructions, `kiln-text`), applied across shards at merge. Defaults: the pilot's first
/// cleaner's `dedup_ngram` / `near_duplicate_threshold` when it sets them, else 3 and 0.7.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupSection {
    /// Word n-gram size.
    pub ngram: Option<usize>,
    /// Similarity at or above which a later instruction is a near-duplicate.
    pub threshold: Option<f64>,
}

/// `[slurm]`: resources of the job array and of the merge job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSection {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time` per shard task (default "04:00:00").
    pub time: Option<String>,
    /// `--cpus-per-task` (default 2).
    pub cpus_per_task: Option<usize>,
    /// `--mem` (default "8G").
    pub mem: Option<String>,
    /// `--gres` (e.g. "gpu:1").
    pub gres: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// Shard tasks running at once (`--array=0-N%K`).
    pub max_parallel: Option<usize>,
    /// More `#SBATCH` lines, each without the prefix (e.g. "--qos=short").
    #[serde(default)]
    pub extra: Vec<String>,
}

/// A validated scale config.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// The config file (or "command line").
    pub file: PathBuf,
    /// Run id.
    pub run_id: String,
    /// Where runs go (absolute).
    pub artifacts_dir: PathBuf,
    /// The pilot's run folder (absolute).
    pub pilot: PathBuf,
    /// Samples in all.
    pub count: usize,
    /// Shards.
    pub shards: usize,
    /// Refuse a pilot without an approved review.
    pub require_review: bool,
    /// Overrides: dotted key -> value (file's, then the command line's).
    pub overrides: BTreeMap<String, toml::Value>,
    /// Dedup n-gram size and threshold, when given.
    pub dedup: DedupSection,
    /// Slurm resources.
    pub slurm: SlurmSection,
}

/// Command-line values over the file's.
#[derive(Debug, Clone, Default)]
pub struct ScaleOverrides {
    /// `--run-id`.
    pub run_id: Option<String>,
    /// `--artifacts-dir`.
    pub artifacts_dir: Option<PathBuf>,
    /// `--pilot` (relative to the current directory).
    pub pilot: Option<PathBuf>,
    /// `--count`.
    pub count: Option<usize>,
    /// `--shards`.
    pub shards: Option<usize>,
    /// `--set KEY=VALUE` (VALUE in TOML; a bare word is a string).
    pub set: Vec<String>,
}

/// A `KEY=VALUE` of `--set`: the value read as TOML, a bare word as a string.
pub fn parse_set(s: &str) -> Result<(String, toml::Value), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("--set \"{s}\": expected KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() || k.split('.').any(str::is_empty) {
        return Err(format!("--set \"{s}\": \"{k}\" is not a dotted key"));
    }
    let v = v.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => t.remove("v").expect("parsed one key"),
        Err(_) => toml::Value::String(v.to_string()),
    };
    Ok((k.to_string(), value))
}

fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in t {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            v => {
                out.insert(key, v.clone());
            }
        }
    }
}

impl ScaleConfig {
    /// Read, parse and validate. `path` None: everything from the command line (`--pilot`
    /// required).
    pub fn load(path: Option<&Path>, ov: &ScaleOverrides) -> Result<ScaleConfig, PilotConfigError> {
        let file: ScaleFile = match path {
            Some(p) => read_strict(p)?,
            None => ScaleFile {
                run_id: None,
                artifacts_dir: None,
                pilot: PathBuf::new(),
                count: None,
                shards: None,
                require_review: false,
                overrides: toml::Table::new(),
                dedup: DedupSection::default(),
                slurm: SlurmSection::default(),
            },
        };
        Ok(file.validate(path, ov)?)
    }
}

impl ScaleFile {
    /// Validate against the file it came from and the command line.
    pub fn validate(self, path: Option<&Path>, ov: &ScaleOverrides) -> Result<ScaleConfig, ConfigError> {
        let shown = path.map(|p| p.display().to_string()).unwrap_or_else(|| "command line".into());
        let base = path.and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = super::pilot::absolute(base);
        let cx = Ctx::new(shown.clone(), &base);
        let cli = Ctx::new("command line".to_string(), Path::new("."));
        let stem_from = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("scale"));
        let (run_id, artifacts_dir) = run_location(
            &cx,
            &cli,
            &stem_from,
            (ov.run_id.as_ref(), self.run_id.as_ref()),
            (ov.artifacts_dir.as_ref(), self.artifacts_dir.as_ref()),
        )?;
        let pilot = match &ov.pilot {
            Some(p) => super::pilot::absolute(p),
            None if path.is_none() || self.pilot.as_os_str().is_empty() => {
                return Err(cli.err("--pilot", "(none)", "name the pilot run folder whose gate passed"))
            }
            None => cx.path(&self.pilot),
        };
        let (count, count_cx, count_field) = match (ov.count, self.count) {
            (Some(c), _) => (c, &cli, "--count"),
            (None, Some(c)) => (c, &cx, "count"),
            (None, None) => (DEFAULT_COUNT, &cx, "count"),
        };
        let (shards, shards_cx, shards_field) = match (ov.shards, self.shards) {
            (Some(s), _) => (s, &cli, "--shards"),
            (None, Some(s)) => (s, &cx, "shards"),
            (None, None) => (DEFAULT_SHARDS, &cx, "shards"),
        };
        if shards == 0 || shards > 100_000 {
            return Err(shards_cx.err(shards_field, shards, "must be between 1 and 100000"));
        }
        if count < shards {
            return Err(count_cx.err(count_field, count, format!("must be at least the number of shards ({shards})")));
        }
        let mut overrides = BTreeMap::new();
        flatten("", &self.overrides, &mut overrides);
        for s in &ov.set {
            let (k, v) = parse_set(s).map_err(|why| cli.err("--set", format!("\"{s}\""), why))?;
            overrides.insert(k, v);
        }
        for k in overrides.keys() {
            if ["run_id", "artifacts_dir", "count"].contains(&k.as_str()) {
                return Err(cx.err(&format!("overrides.{k}"), k, "is set by the scale itself (run_id, artifacts_dir, count)"));
            }
        }
        if let Some(n) = self.dedup.ngram {
            if n == 0 || n > 64 {
                return Err(cx.err("dedup.ngram", n, "must be between 1 and 64"));
            }
        }
        if let Some(t) = self.dedup.threshold {
            if !(t > 0.0 && t <= 1.0) {
                return Err(cx.err("dedup.threshold", t, "must be in (0, 1]"));
            }
        }
        if let Some(k) = self.slurm.max_parallel {
            if k == 0 {
                return Err(cx.err("slurm.max_parallel", k, "must be at least 1"));
            }
        }
        if let Some(c) = self.slurm.cpus_per_task {
            if c == 0 {
                return Err(cx.err("slurm.cpus_per_task", c, "must be at least 1"));
            }
        }
        for (i, line) in self.slurm.extra.iter().enumerate() {
            if !line.starts_with("--") || line.contains('\n') {
                return Err(cx.err(&format!("slurm.extra[{i}]"), format!("\"{line}\""), "must be one sbatch option starting with \"--\""));
            }
        }
        Ok(ScaleConfig {
            file: path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("command line")),
            run_id,
            artifacts_dir,
            pilot,
            count,
            shards,
            require_review: self.require_review,
            overrides,
            dedup: self.dedup,
            slurm: self.slurm,
        })
    }
}

impl ScaleConfig {
    /// Samples of shard `i` (0-based): the count split as evenly as it goes, the first shards
    /// taking one more.
    pub fn shard_count(&self, i: usize) -> usize {
        self.count / self.shards + usize::from(i < self.count % self.shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_are_toml_or_bare_strings() {
        assert_eq!(parse_set("sampling.response.temperature=0.8").unwrap().1, toml::Value::Float(0.8));
        assert_eq!(parse_set("batch_size = 4").unwrap().1, toml::Value::Integer(4));
        assert_eq!(parse_set("model.name=gemma3-270m").unwrap().1, toml::Value::String("gemma3-270m".into()));
        assert!(parse_set("nokey").is_err());
        assert!(parse_set("a..b=1").is_err());
    }

    #[test]
    fn shards_split_the_count_evenly() {
        let f = ScaleFile {
            run_id: Some("s".into()),
            artifacts_dir: None,
            pilot: PathBuf::from("p"),
            count: Some(10),
            shards: Some(4),
            require_review: false,
            overrides: toml::Table::new(),
            dedup: DedupSection::default(),
            slurm: SlurmSection::default(),
        };
        let c = f.validate(Some(Path::new("scale.toml")), &ScaleOverrides::default()).unwrap();
        let sizes: Vec<usize> = (0..4).map(|i| c.shard_count(i)).collect();
        assert_eq!(sizes, [3, 3, 2, 2]);
        assert_eq!(sizes.iter().sum::<usize>(), 10);
    }
}
