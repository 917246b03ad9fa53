//! `kiln compare RUN...`: the QC metrics and counts of several runs side by side, and each
//! run's settings that differ from the first run's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::provenance::manifest::Manifest;

use super::error::StageError;
use super::pilot::{files, flatten_toml};
use super::report::{fmt_num, metric_values, table, QcReportFile};

/// One run in a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct RunColumn {
    /// Run id.
    pub run_id: String,
    /// Its directory.
    pub dir: PathBuf,
    /// "pilot" or "replay".
    pub stage: String,
    /// Gate passed.
    pub pass: bool,
}

/// A setting that differs from the first run's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamDiff {
    /// Dotted key in `config.resolved.toml`.
    pub key: String,
    /// The first run's value.
    pub first: Option<String>,
    /// This run's value.
    pub this: Option<String>,
}

/// Several runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The runs, in the order given.
    pub runs: Vec<RunColumn>,
    /// (metric, value per run).
    pub metrics: Vec<(String, Vec<Option<f64>>)>,
    /// Per run after the first: its settings that differ from the first run's.
    pub differences: Vec<(String, Vec<ParamDiff>)>,
}

/// A run given on the command line: a run directory, or a run id under `artifacts`.
pub fn resolve_run(arg: &Path, artifacts: &Path) -> Result<PathBuf, StageError> {
    if arg.join(crate::provenance::manifest::MANIFEST).is_file() || arg.is_dir() {
        return Ok(arg.to_path_buf());
    }
    let under = artifacts.join(arg);
    if under.is_dir() {
        return Ok(under);
    }
    Err(StageError::Invalid(format!(
        "run \"{}\": no such run directory (nor \"{}\")",
        arg.display(),
        under.display()
    )))
}

/// Compare the runs in `dirs`.
pub fn compare(dirs: &[PathBuf]) -> Result<Comparison, StageError> {
    if dirs.is_empty() {
        return Err(StageError::Invalid("compare needs at least one run".into()));
    }
    let mut runs = Vec::new();
    let mut values: Vec<HashMap<String, f64>> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut params = Vec::new();
    for d in dirs {
        let m = Manifest::read(d)?;
        let qc: QcReportFile = serde_json::from_slice(&crate::sandbox::read_file(&d.join(files::QC_JSON))?)
            .map_err(|e| StageError::Corrupt { dir: d.clone(), what: format!("{}: {e}", files::QC_JSON) })?;
        let v = metric_values(&qc);
        for (k, _) in &v {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
        values.push(v.into_iter().collect());
        let text = String::from_utf8_lossy(&crate::sandbox::read_file(&d.join(files::CONFIG))?).into_owned();
        let t: toml::Table =
            text.parse().map_err(|e| StageError::Corrupt { dir: d.clone(), what: format!("{}: {e}", files::CONFIG) })?;
        params.push(flatten_toml(&t));
        runs.push(RunColumn { run_id: m.run_id.clone(), dir: d.clone(), stage: m.stage.clone(), pass: m.gate.pass });
    }
    let metrics = names.iter().map(|n| (n.clone(), values.iter().map(|v| v.get(n).copied()).collect())).collect();
    let first = &params[0];
    let differences = params
        .iter()
        .zip(&runs)
        .skip(1)
        .map(|(p, r)| {
            let mut keys: Vec<&String> = first.keys().chain(p.keys()).collect();
            keys.sort();
            keys.dedup();
            let diffs = keys
                .into_iter()
                .filter(|k| k.as_str() != "run_id" && first.get(*k) != p.get(*k))
                .map(|k| ParamDiff { key: k.clone(), first: first.get(k).cloned(), this: p.get(k).cloned() })
                .collect();
            (r.run_id.clone(), diffs)
        })
        .collect();
    Ok(Comparison { runs, metrics, differences })
}

impl Comparison {
    /// The text form: the metrics table, then the differing settings.
    pub fn text(&self) -> String {
        let mut headers = vec!["metric".to_string()];
        headers.extend(self.runs.iter().map(|r| r.run_id.clone()));
        let rows: Vec<Vec<String>> = self
            .metrics
            .iter()
            .map(|(n, v)| {
                let mut row = vec![n.clone()];
                row.extend(v.iter().map(|x| x.map_or("-".to_string(), fmt_num)));
                row
            })
            .collect();
        let mut s = table(&headers, &rows);
        for (run, diffs) in &self.differences {
            if diffs.is_empty() {
                s.push_str(&format!("\n{run}: same settings as {}\n", self.runs[0].run_id));
                continue;
            }
            s.push_str(&format!("\n{run}: settings that differ from {}:\n", self.runs[0].run_id));
            for d in diffs {
                s.push_str(&format!(
                    "  {}: {} -> {}\n",
                    d.key,
                    d.first.as_deref().unwrap_or("(absent)"),
                    d.this.as_deref().unwrap_or("(absent)")
                ));
            }
        }
        s
    }
}
