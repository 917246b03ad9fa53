//! `kiln runs`: every run under an artifacts folder, with its lineage and what it cost.
//!
//! A run folder is recognised by its `manifest.json` (finished) or its `run.json` (started, not
//! finished: interrupted, or running now), or, for a scale whose merge has not run, by its
//! `shards/`. A run's parent is the run it was made from: a replay's replayed run, a scale's
//! pilot, a test set's or a training run's dataset, an eval's adapter's training run (else its
//! test set's run). A scale's cost includes its shards'.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::StageError;
use super::pilot::{files, RunState};
use super::scale::shard_dirs;
use super::slurm::shell_quote;
use crate::provenance::accounting::Resources;
use crate::provenance::manifest::Manifest;

/// One run as listed.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// Run id (the folder's name).
    pub run_id: String,
    /// Its folder.
    pub dir: PathBuf,
    /// pilot, replay, scale, testset, train, eval.
    pub stage: String,
    /// "complete" or "interrupted" (no manifest yet: killed, failed, or running now).
    pub status: String,
    /// When it was first started.
    pub started_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Wall, CPU and device time (a scale's with its shards').
    pub resources: Option<Resources>,
    /// Gate passed (None: not finished).
    pub gate: Option<bool>,
    /// The review decision, if any.
    pub review: Option<String>,
    /// Key parameters.
    pub params: String,
    /// The run it was made from (a run id), if any.
    pub parent: Option<String>,
    /// The parent's folder.
    pub parent_dir: Option<PathBuf>,
    /// For an interrupted run: the command that resumes it.
    pub resume: Option<String>,
    /// Cost of this run at the rate asked for.
    pub cost: Option<f64>,
    /// Cost of this run and every run it descends from.
    pub lineage_cost: Option<f64>,
    /// The lineage, oldest first (run ids).
    pub lineage: Vec<String>,
}


fn sum(a: Option<Resources>, b: &Resources) -> Resources {
    match a {
        None => b.clone(),
        Some(a) => Resources {
            wall_seconds: a.wall_seconds + b.wall_seconds,
            cpu_seconds: a.cpu_seconds + b.cpu_seconds,
            device: a.device,
            device_seconds: a.device_seconds + b.device_seconds,
            invocations: a.invocations + b.invocations,
        },
    }
}

fn params(m: &Manifest) -> String {
    let model = m.model.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    match m.stage.as_str() {
        "pilot" | "replay" | "scale" => format!("count={} seed={} model={model}", m.count, m.seed),
        "testset" => format!("items={} seed={}", m.count, m.seed),
        "train" => {
            let t = m.training.as_ref();
            let o = t.and_then(|t| t.get("options"));
            let r = o.and_then(|o| o.pointer("/lora/r")).map(|v| v.to_string()).unwrap_or_default();
            let lr = o.and_then(|o| o.pointer("/optimizer/lr")).map(|v| v.to_string()).unwrap_or_default();
            let ep = o.and_then(|o| o.get("epochs")).map(|v| v.to_string()).unwrap_or_default();
            format!("r={r} lr={lr} epochs={ep} seed={}", m.seed)
        }
        "eval" => format!("items={} seed={}", m.test_set.as_ref().map_or(0, |t| t.records), m.seed),
        _ => format!("count={} seed={}", m.count, m.seed),
    }
}

/// The run a finished run was made from: (run id, folder).
fn parent(m: &Manifest, dir: &Path) -> Option<(String, PathBuf)> {
    match m.stage.as_str() {
        "replay" | "scale" => m.source.as_ref().map(|s| {
            let id = if m.stage == "replay" { s.replayed.clone() } else { s.run_id.clone() };
            let d = if m.stage == "replay" { dir.parent().unwrap_or(dir).join(&id) } else { s.run_dir.clone() };
            (id, d)
        }),
        "testset" | "train" => m.dataset.as_ref().map(|d| (d.run_id.clone(), d.run_dir.clone())),
        "eval" => {
            let from_adapter = m.arms.iter().filter_map(|a| a.adapter.as_ref()).find_map(|a| {
                let train = a.path.parent()?;
                Some((train.file_name()?.to_string_lossy().into_owned(), train.to_path_buf()))
            });
            from_adapter.or_else(|| {
                let run = m.test_set.as_ref()?.path.parent()?;
                run.join("manifest.json").is_file().then(|| (run.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(), run.to_path_buf()))
            })
        }
        _ => None,
    }
}

fn read_state(dir: &Path) -> Option<RunState> {
    serde_json::from_slice(&std::fs::read(dir.join(files::STATE)).ok()?).ok()
}

/// The listed form of the run in `dir`, if it is one.
fn row(dir: &Path) -> Option<RunRow> {
    let run_id = dir.file_name()?.to_string_lossy().into_owned();
    let state = read_state(dir);
    match Manifest::read(dir) {
        Ok(m) => {
            let resources = if m.stage == "scale" { with_shards(dir, m.resources.clone()) } else { m.resources.clone() };
            let p = parent(&m, dir);
            Some(RunRow {
                run_id,
                dir: dir.to_path_buf(),
                stage: m.stage.clone(),
                status: m.status.clone(),
                started_at: m.started_at.clone(),
                finished_at: Some(m.finished_at.clone()),
                resources,
                gate: Some(m.gate.pass),
                review: m.review.as_ref().map(|r| format!("{} by {}", r.decision, r.by)),
                params: params(&m),
                parent: p.as_ref().map(|p| p.0.clone()),
                parent_dir: p.map(|p| p.1),
                resume: None,
                cost: None,
                lineage_cost: None,
                lineage: vec![],
            })
        }
        Err(_) => {
            let shards = shard_dirs(dir);
            if state.is_none() && shards.is_empty() {
                return None;
            }
            let stage = state.as_ref().map(|s| s.stage.clone()).unwrap_or_else(|| "scale".into());
            let done = shards.iter().filter(|d| d.join("manifest.json").is_file()).count();
            let resume = state.as_ref().filter(|s| !s.command.is_empty()).map(|s| {
                let args: Vec<String> = s.command.iter().skip(1).map(|a| shell_quote(a)).collect();
                let cd = s.cwd.as_ref().map(|c| format!("cd {} && ", shell_quote(&c.display().to_string()))).unwrap_or_default();
                format!("{cd}kiln {}", args.join(" "))
            });
            let resources = with_shards(dir, None);
            Some(RunRow {
                run_id,
                dir: dir.to_path_buf(),
                stage,
                status: "interrupted".into(),
                started_at: state.map(|s| s.started_at).unwrap_or_default(),
                finished_at: None,
                resources,
                gate: None,
                review: None,
                params: if shards.is_empty() { String::new() } else { format!("shards done {done} of {}", shards.len().max(done)) },
                parent: None,
                parent_dir: None,
                resume: resume.or_else(|| (!shards.is_empty()).then(|| format!("kiln scale --run-id {} ... (the same scale command)", dir.file_name().unwrap_or_default().to_string_lossy()))),
                cost: None,
                lineage_cost: None,
                lineage: vec![],
            })
        }
    }
}

/// `base` plus the resources of every finished shard in a scale's folder.
fn with_shards(dir: &Path, base: Option<Resources>) -> Option<Resources> {
    shard_dirs(dir).iter().filter_map(|d| Manifest::read(d).ok().and_then(|m| m.resources)).fold(base, |acc, r| Some(sum(acc, &r)))
}

/// Every run under `artifacts`, oldest first, with lineage, and costs at `rate` per device
/// hour when given.
pub fn list(artifacts: &Path, rate: Option<f64>) -> Result<Vec<RunRow>, StageError> {
    let entries = std::fs::read_dir(artifacts)
        .map_err(|source| crate::sandbox::FsError { action: "list", path: artifacts.to_path_buf(), source })?;
    let mut rows: Vec<RunRow> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).filter_map(|p| row(&p)).collect();
    rows.sort_by(|a, b| (a.started_at.as_str(), a.run_id.as_str()).cmp(&(b.started_at.as_str(), b.run_id.as_str())));
    let by_dir: BTreeMap<PathBuf, usize> = rows.iter().enumerate().map(|(i, r)| (r.dir.clone(), i)).collect();
    let own: Vec<f64> = rows.iter().map(|r| r.resources.as_ref().map_or(0.0, |x| x.device_seconds / 3600.0 * rate.unwrap_or(0.0))).collect();
    for i in 0..rows.len() {
        let mut lineage = vec![rows[i].run_id.clone()];
        let mut total = own[i];
        let mut cur = rows[i].parent_dir.clone();
        let mut seen = 0;
        while let Some(d) = cur {
            seen += 1;
            if seen > 64 {
                break;
            }
            match by_dir.get(&d) {
                Some(&j) => {
                    lineage.push(rows[j].run_id.clone());
                    total += own[j];
                    cur = rows[j].parent_dir.clone();
                }
                None => {
                    lineage.push(d.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
                    cur = None;
                }
            }
        }
        lineage.reverse();
        rows[i].lineage = lineage;
        if rate.is_some() {
            rows[i].cost = Some(own[i]);
            rows[i].lineage_cost = Some(total);
        }
    }
    Ok(rows)
}
