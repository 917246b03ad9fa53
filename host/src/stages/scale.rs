//! `kiln scale`: the pilot's recipe at scale, in shards, merged into one dataset.
//!
//! A scale refuses to start unless its pilot finished with a passed gate (and its files still
//! match its manifest). It inherits the pilot's resolved config: model and plugins pinned by
//! sha256, sampling, instruction mix, seed, QC rules; `[overrides]` / `--set` change named
//! parameters, and are recorded. Shard `i` of `S` is a pilot-style run of its own in
//! `shards/shard-NNNNN/` whose samples are seeded from (seed, i + 1, index): shard number 0 of
//! the seeds is the pilot's own, so a scale never repeats the pilot's samples. A shard's output
//! depends on nothing but the config, so shards run in any order, in one process or many, on
//! any machine of the same kind. A shard's `manifest.json` marks it done; a re-run skips it,
//! and an interrupted shard resumes from its stored completions.
//!
//! The merge reads every shard's judged set (what its QC saw) in shard order, drops exact and
//! near-duplicate instructions across shards (kiln-text's word n-gram Jaccard similarity, the
//! cleaner's measure), runs the QC rules on the whole and writes one dataset: `dataset.jsonl`
//! (accepted samples with provenance) and `dataset.parquet`, with `qc_report.*`, `scale.json`
//! (per-shard gates and metrics) and `manifest.json`. The merged files hold no clock readings,
//! so local, reversed and cluster runs give the same bytes (each sample's generation times stay
//! in its shard's files).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::error::StageError;
use super::pilot::{self, append_log, files, run_slice, PilotOptions, Slice};
use super::process::{load_plugins, process, ProcessOptions, Scorer};
use super::progress::{Progress, Timings};
use super::records::{write_json, write_jsonl, Accepted, Dropped};
use super::report::{self, metric_rows, QcReportFile};
use crate::config::pilot::{Overrides, PilotConfig};
use crate::config::scale::ScaleConfig;
use crate::plugin::{Runtime, Sample};
use crate::provenance::manifest::{environment, kiln_build, now, Gate, Manifest, Source, MANIFEST_VERSION};
use crate::provenance::sha256_hex;
use crate::sandbox::RunDir;

/// File names inside a scale run.
pub mod scale_files {
    /// The merged dataset: accepted samples with provenance, JSON lines.
    pub const DATASET: &str = "dataset.jsonl";
    /// The same, as Parquet (one row per sample; provenance as a JSON column).
    pub const PARQUET: &str = "dataset.parquet";
    /// Samples the merge dropped (cross-shard duplicates, critic verdicts).
    pub const DROPPED: &str = "merge/dropped.jsonl";
    /// Per-shard gates, metrics and counts.
    pub const SCALE_JSON: &str = "scale.json";
    /// The shards' folder.
    pub const SHARDS: &str = "shards";
}

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct ScaleOptions {
    /// Only this shard (0-based), of the config's shards; None: every shard not done, then the
    /// merge.
    pub shard: Option<usize>,
    /// Only the merge (every shard must be done).
    pub merge_only: bool,
    /// Progress bars.
    pub progress: Progress,
    /// Where the model runs (a placement, not part of the recipe).
    pub device: crate::model::DeviceSpec,
}

/// One shard's outcome as the merge records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// 0-based shard.
    pub shard: usize,
    /// Run id of the shard's folder.
    pub run_id: String,
    /// Samples planned.
    pub count: usize,
    /// Its own gate.
    pub pass: bool,
    /// Why it failed.
    pub reasons: Vec<String>,
    /// Its counts.
    pub counts: BTreeMap<String, u64>,
    /// Its QC metrics (rule/metric -> value).
    pub metrics: BTreeMap<String, f64>,
}

/// What `scale.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleReport {
    /// The scale's run id.
    pub run_id: String,
    /// The pilot it inherits from.
    pub pilot: PathBuf,
    /// Samples planned.
    pub count: usize,
    /// Shards.
    pub shards: usize,
    /// The overrides, by dotted key.
    pub overrides: BTreeMap<String, String>,
    /// Dedup settings used.
    pub dedup_ngram: usize,
    /// See `dedup_ngram`.
    pub dedup_threshold: f64,
    /// Each shard.
    pub shard_reports: Vec<ShardReport>,
    /// Samples the merge judged (after cross-shard dedup).
    pub judged: usize,
    /// Exact duplicates dropped across shards.
    pub duplicates: usize,
    /// Near-duplicates dropped across shards.
    pub near_duplicates: usize,
    /// Samples in the dataset.
    pub accepted: usize,
}

/// What one invocation did.
#[derive(Debug, Clone)]
pub struct ScaleOutcome {
    /// The scale's folder.
    pub run_dir: PathBuf,
    /// Shards run by this invocation (0-based) and those found done.
    pub ran: Vec<usize>,
    /// Shards already done.
    pub skipped: Vec<usize>,
    /// The merged report, when the merge ran.
    pub merged: Option<(ScaleReport, Manifest)>,
    /// Wall time.
    pub wall_seconds: f64,
}

/// The pilot as the scale inherits it.
pub struct Inherited {
    /// The pilot's manifest.
    pub manifest: Manifest,
    /// The pilot's config with the overrides applied.
    pub config: PilotConfig,
    /// The same as TOML.
    pub resolved: toml::Table,
}

fn refuse(cfg: &ScaleConfig, what: impl std::fmt::Display) -> StageError {
    StageError::Invalid(format!("{}: pilot \"{}\": {what}", cfg.file.display(), cfg.pilot.display()))
}

/// Set `key` (dotted; array elements by number) in `t` to `v`. The table that holds the last
/// part must exist in the pilot's config.
fn set_dotted(t: &mut toml::Table, key: &str, v: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last().expect("a dotted key has a part");
    let mut cur = toml::Value::Table(std::mem::take(t));
    let result = (|| {
        let mut node = &mut cur;
        for (i, p) in path.iter().enumerate() {
            let here = parts[..=i].join(".");
            node = match node {
                toml::Value::Table(tab) => tab.get_mut(*p).ok_or_else(|| format!("the pilot's config has no \"{here}\""))?,
                toml::Value::Array(a) => {
                    let n: usize = p.parse().map_err(|_| format!("\"{here}\": \"{p}\" is not an index of an array"))?;
                    let len = a.len();
                    a.get_mut(n).ok_or_else(|| format!("\"{here}\": index {n} is beyond the {len} entries"))?
                }
                _ => return Err(format!("\"{}\" is a value, not a table", parts[..i].join("."))),
            };
        }
        match node {
            toml::Value::Table(tab) => {
                tab.insert(last.to_string(), v);
                Ok(())
            }
            toml::Value::Array(a) => {
                let n: usize = last.parse().map_err(|_| format!("\"{key}\": \"{last}\" is not an index of an array"))?;
                let len = a.len();
                *a.get_mut(n).ok_or_else(|| format!("\"{key}\": index {n} is beyond the {len} entries"))? = v;
                Ok(())
            }
            _ => Err(format!("\"{}\" is a value, not a table", path.join("."))),
        }
    })();
    let toml::Value::Table(back) = cur else { unreachable!("the root is a table") };
    *t = back;
    result
}

/// Read the pilot, refuse it unless it finished with a passed gate and unchanged files, and
/// apply the overrides to its config.
pub fn inherit(cfg: &ScaleConfig) -> Result<Inherited, StageError> {
    let dir = &cfg.pilot;
    let manifest = Manifest::read(dir).map_err(|e| refuse(cfg, format!("{e}; a scale starts from a finished pilot whose gate passed")))?;
    if manifest.stage != "pilot" {
        return Err(refuse(cfg, format!("is a {} run; a scale starts from a pilot", manifest.stage)));
    }
    if manifest.status != "complete" {
        return Err(refuse(cfg, format!("its run is {}, not complete", manifest.status)));
    }
    if !manifest.gate.pass {
        return Err(refuse(
            cfg,
            format!("its gate did not pass ({}); a scale needs a pilot whose gate passed", manifest.gate.reasons.join("; ")),
        ));
    }
    manifest.verify_files(dir).map_err(|e| refuse(cfg, e))?;
    if cfg.require_review {
        super::review::require_approval(dir).map_err(|why| refuse(cfg, why))?;
    }
    let path = dir.join(files::CONFIG);
    let text = String::from_utf8_lossy(&crate::sandbox::read_file(&path)?).into_owned();
    let mut table: toml::Table = text.parse().map_err(|e| refuse(cfg, format!("{}: {e}", path.display())))?;
    for (k, v) in &cfg.overrides {
        set_dotted(&mut table, k, v.clone()).map_err(|why| StageError::Invalid(format!("{}: overrides: {why}", cfg.file.display())))?;
    }
    let shown = PathBuf::from(format!("{} with the scale's overrides", path.display()));
    let config = PilotConfig::from_str(&toml::to_string(&table).expect("serialises"), &shown, &Overrides::default())
        .map_err(|e| StageError::Invalid(format!("{}: overrides: {e}", cfg.file.display())))?;
    // Paths in a resolved config are absolute, so reading it from elsewhere changes nothing.
    Ok(Inherited { manifest, config, resolved: table })
}

/// The scale's resolved config: the scale's settings and the inherited pilot config.
fn resolved_text(cfg: &ScaleConfig, inh: &Inherited, dedup: (usize, f64)) -> String {
    use toml::Value as V;
    let mut t = toml::Table::new();
    t.insert("run_id".into(), V::String(cfg.run_id.clone()));
    t.insert("pilot".into(), V::String(cfg.pilot.display().to_string()));
    t.insert("pilot_config_hash".into(), V::String(inh.manifest.config_hash.clone()));
    t.insert("count".into(), V::Integer(cfg.count as i64));
    t.insert("shards".into(), V::Integer(cfg.shards as i64));
    t.insert("overrides".into(), V::Table(cfg.overrides.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
    let mut d = toml::Table::new();
    d.insert("ngram".into(), V::Integer(dedup.0 as i64));
    d.insert("threshold".into(), V::Float(dedup.1));
    t.insert("dedup".into(), V::Table(d));
    t.insert("pilot_config".into(), V::Table(inh.resolved.clone()));
    let mut text = String::from("# Written by kiln: the scale's config and the pilot config it inherits (overrides applied).\n");
    text.push_str(&toml::to_string(&t).expect("a TOML table serialises"));
    text
}

/// The dedup settings: the config's, else the pilot's first cleaner's, else 3 and 0.7.
fn dedup_settings(cfg: &ScaleConfig, pilot: &PilotConfig) -> (usize, f64) {
    let from_cleaner = |key: &str| {
        pilot.cleaners.iter().find_map(|c| c.spec.config.get(key).cloned())
    };
    let ngram = cfg.dedup.ngram.or_else(|| from_cleaner("dedup_ngram").and_then(|v| v.as_u64()).map(|n| n as usize)).unwrap_or(3);
    let threshold = cfg.dedup.threshold.or_else(|| from_cleaner("near_duplicate_threshold").and_then(|v| v.as_f64())).unwrap_or(0.7);
    (ngram.max(1), threshold)
}

/// Write the scale's config into its folder (first writer wins; later ones must agree). No lock:
/// shard processes share the folder, each locking only its own shard's.
fn claim(dir: &Path, resolved: &str) -> Result<(), StageError> {
    pilot::claim_config(&RunDir::create(dir)?, resolved)
}

/// Shard `i`'s folder.
pub fn shard_dir(run_dir: &Path, i: usize) -> PathBuf {
    run_dir.join(scale_files::SHARDS).join(format!("shard-{i:05}"))
}

/// The shard folders that exist in a scale's folder, in shard order.
pub fn shard_dirs(run_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run_dir.join(scale_files::SHARDS))
        .map(|e| e.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Is shard `i` done (its manifest written, for this scale)?
pub fn shard_done(run_dir: &Path, i: usize) -> bool {
    Manifest::read(&shard_dir(run_dir, i)).is_ok_and(|m| m.status == "complete" && m.stage == "scale-shard")
}

fn shard_slice(cfg: &ScaleConfig, base: &PilotConfig, i: usize) -> (PilotConfig, Slice) {
    let run_dir = cfg.artifacts_dir.join(&cfg.run_id);
    let mut c = base.clone();
    c.run_id = format!("shard-{i:05}");
    c.artifacts_dir = run_dir.join(scale_files::SHARDS);
    c.count = cfg.shard_count(i);
    let slice = Slice {
        stage: "scale-shard",
        run_id: c.run_id.clone(),
        run_dir: shard_dir(&run_dir, i),
        shard: i as u64 + 1,
        count: c.count,
        id_prefix: format!("s{i:05}-"),
        resolved_extra: format!("# a scale's shard {i} of {} (seeds of shard {}), {} samples\n", cfg.shards, i + 1, c.count),
        portable: true,
    };
    (c, slice)
}

/// Run the scale: the shards asked for (those not done), then, unless one shard was asked
/// for, the merge.
pub fn run(cfg: &ScaleConfig, opts: &ScaleOptions) -> Result<ScaleOutcome, StageError> {
    let wall = Instant::now();
    let inh = inherit(cfg)?;
    let dedup = dedup_settings(cfg, &inh.config);
    let resolved = resolved_text(cfg, &inh, dedup);
    let run_dir = cfg.artifacts_dir.join(&cfg.run_id);
    claim(&run_dir, &resolved)?;
    if let Some(i) = opts.shard {
        if i >= cfg.shards {
            return Err(StageError::Invalid(format!("--shard {i}/{}: shards are numbered 0 to {}", cfg.shards, cfg.shards - 1)));
        }
    }
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    if !opts.merge_only {
        let todo: Vec<usize> = match opts.shard {
            Some(i) => vec![i],
            None => (0..cfg.shards).collect(),
        };
        for i in todo {
            if shard_done(&run_dir, i) {
                skipped.push(i);
                continue;
            }
            let (c, slice) = shard_slice(cfg, &inh.config, i);
            run_slice(&c, &slice, &PilotOptions { progress: opts.progress, device: opts.device })?;
            ran.push(i);
        }
    }
    let merged = if opts.shard.is_none() { Some(merge(cfg, &inh, dedup, &resolved, opts.progress)?) } else { None };
    Ok(ScaleOutcome { run_dir, ran, skipped, merged, wall_seconds: wall.elapsed().as_secs_f64() })
}

/// The key of an exact duplicate: the instruction with whitespace normalised, lowercased.
pub fn exact_key(instruction: &str) -> String {
    kiln_text::normalize_whitespace(instruction).to_lowercase()
}

/// Drop exact and near-duplicate instructions, keeping the first of each (in shard order).
fn dedup_across(samples: Vec<Sample>, ngram: usize, threshold: f64) -> (Vec<Sample>, Vec<Dropped>, usize, usize) {
    let mut exact: HashMap<String, String> = HashMap::new();
    let mut index = kiln_text::NearDupIndex::new(ngram);
    let mut scratch = kiln_text::SearchScratch::default();
    let mut kept = Vec::with_capacity(samples.len());
    let mut dropped = Vec::new();
    let (mut dups, mut near) = (0, 0);
    let drop = |s: &Sample, code: &str, detail: String| Dropped {
        id: s.id.clone(),
        stage: "merge".into(),
        plugin: "kiln".into(),
        plugin_sha256: String::new(),
        code: code.into(),
        detail,
        sample: Some(s.clone()),
    };
    for s in samples {
        let key = exact_key(&s.instruction);
        if let Some(first) = exact.get(&key) {
            dropped.push(drop(&s, "duplicate", format!("the same instruction as {first} (another shard)")));
            dups += 1;
            continue;
        }
        let set = kiln_text::GramSet::of(&s.instruction, ngram);
        if let Some((label, sim)) = index.most_similar_at_least(&set, threshold, &mut scratch) {
            if sim >= threshold {
                dropped.push(drop(&s, "near-duplicate", format!("Jaccard {sim:.3} with {label} (threshold {threshold})")));
                near += 1;
                continue;
            }
        }
        exact.insert(key, s.id.clone());
        index.insert_set(s.id.clone(), &set);
        kept.push(s);
    }
    (kept, dropped, dups, near)
}

/// Merge the shards into one dataset.
fn merge(cfg: &ScaleConfig, inh: &Inherited, dedup: (usize, f64), resolved: &str, progress: Progress) -> Result<(ScaleReport, Manifest), StageError> {
    let wall = Instant::now();
    let mut timings = Timings::default();
    let run_dir = cfg.artifacts_dir.join(&cfg.run_id);
    let missing: Vec<usize> = (0..cfg.shards).filter(|&i| !shard_done(&run_dir, i)).collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().take(10).map(|i| i.to_string()).collect();
        return Err(StageError::Invalid(format!(
            "scale \"{}\": {} of {} shards are not done ({}{}); run them with `kiln scale --shard I/{}` (or without --shard), then merge",
            run_dir.display(),
            missing.len(),
            cfg.shards,
            list.join(", "),
            if missing.len() > 10 { ", ..." } else { "" },
            cfg.shards
        )));
    }
    let (run, state) = pilot::open_run(&run_dir, &cfg.run_id, "scale", resolved, &mut timings)?;

    // Every shard's judged set and accepted samples, in shard order.
    let t = Instant::now();
    let mut judged = Vec::new();
    let mut provenance: HashMap<String, Accepted> = HashMap::new();
    let mut shard_reports = Vec::with_capacity(cfg.shards);
    let mut shard_records = Vec::with_capacity(cfg.shards);
    for i in 0..cfg.shards {
        let dir = shard_dir(&run_dir, i);
        let m = Manifest::read(&dir)?;
        m.verify_files(&dir)?;
        let j: Vec<Sample> = crate::sandbox::read_jsonl(&dir.join(files::CLEANED))?;
        let a: Vec<Accepted> = crate::sandbox::read_jsonl(&dir.join(files::ACCEPTED))?;
        judged.extend(j);
        for acc in a {
            provenance.insert(acc.sample.id.clone(), acc);
        }
        let qc: QcReportFile = serde_json::from_slice(&crate::sandbox::read_file(&dir.join(files::QC_JSON))?)
            .map_err(|e| StageError::Invalid(format!("{}: {e}", dir.join(files::QC_JSON).display())))?;
        let metrics = qc.metrics.iter().map(|r| (format!("{}/{}", r.rule, r.name), r.value)).collect();
        shard_reports.push(ShardReport {
            shard: i,
            run_id: m.run_id.clone(),
            count: m.count,
            pass: m.gate.pass,
            reasons: m.gate.reasons.clone(),
            counts: m.counts.clone(),
            metrics,
        });
        shard_records.push(m);
    }
    timings.add("io", t.elapsed());

    let (kept, mut dropped, duplicates, near_duplicates) = dedup_across(judged, dedup.0, dedup.1);

    // The QC rules on the whole (no cleaners or critics: those ran in the shards).
    let rt = Runtime::with_default_cache()?;
    let fields = pilot::plugin_fields(&inh.config);
    let qc_fields: Vec<_> = fields.into_iter().filter(|(_, w, _)| *w == crate::plugin::World::QcRule).collect();
    let file = cfg.file.display().to_string();
    // Seeded as in the shards: QC rules come after the template, the cleaners and the critics.
    let first = 1 + inh.config.cleaners.len() + inh.config.critics.len();
    let rules = timings.time("plugin_load", || load_plugins(&rt, &file, inh.config.seed, &qc_fields, first))?;
    let rule_refs: Vec<_> = rules.iter().collect();
    let mut scorer = Scorer::lazy(HashMap::new(), Box::new(|| Err(StageError::Invalid("the merge scores nothing".into()))), 1);
    let popts = ProcessOptions { run: &run, plugin_batch: inh.config.plugin_batch_size, critic_filter: inh.config.critic_filter, progress: &progress };
    let judged_count = kept.len();
    let processed = process(kept, &[], &[], &rule_refs, &mut scorer, &popts, &mut timings)?;
    dropped.extend(processed.dropped.iter().cloned());

    // The dataset: accepted samples with their shard's provenance, clock readings left out.
    let dataset: Vec<Accepted> = processed
        .accepted
        .iter()
        .map(|s| {
            let mut a = provenance.get(&s.id).cloned().ok_or_else(|| {
                StageError::Invalid(format!("sample {} passed the merge's QC but no shard accepted it (critic_filter changed?)", s.id))
            })?;
            a.sample = s.clone();
            a.provenance.instruction_generated_at.clear();
            a.provenance.response_generated_at.clear();
            a.provenance.accepted_at.clear();
            Ok(a)
        })
        .collect::<Result<_, StageError>>()?;
    let t = Instant::now();
    let mut out_files = BTreeMap::new();
    out_files.insert(files::CONFIG.to_string(), sha256_hex(resolved.as_bytes()));
    out_files.insert(scale_files::DATASET.to_string(), write_jsonl(&run, scale_files::DATASET, &dataset)?);
    let parquet = super::parquet::dataset_bytes(&dataset)?;
    run.write_atomic(scale_files::PARQUET, &parquet)?;
    out_files.insert(scale_files::PARQUET.to_string(), sha256_hex(&parquet));
    out_files.insert(scale_files::DROPPED.to_string(), write_jsonl(&run, scale_files::DROPPED, &dropped)?);

    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &shard_reports {
        for key in ["planned", "generated", "parsed", "cleaned", "accepted"] {
            *counts.entry(format!("shards_{key}")).or_default() += r.counts.get(key).copied().unwrap_or(0);
        }
    }
    counts.insert("judged".into(), judged_count as u64);
    counts.insert("dropped_duplicate".into(), duplicates as u64);
    counts.insert("dropped_near-duplicate".into(), near_duplicates as u64);
    counts.insert("accepted".into(), dataset.len() as u64);
    let drops = report::drop_reasons(&dropped);
    let qc = QcReportFile {
        run_id: cfg.run_id.clone(),
        stage: "scale".into(),
        pass: processed.pass,
        reasons: processed.reasons.clone(),
        evaluated: processed.judged.len(),
        metrics: metric_rows(&processed.rules),
        rules: processed.rules.clone(),
        counts: counts.clone(),
    };
    out_files.insert(files::QC_JSON.into(), write_json(&run, files::QC_JSON, &qc)?);
    let md = report::markdown(&qc, &drops);
    run.write_atomic(files::QC_MD, md.as_bytes())?;
    out_files.insert(files::QC_MD.into(), sha256_hex(md.as_bytes()));
    let report = ScaleReport {
        run_id: cfg.run_id.clone(),
        pilot: cfg.pilot.clone(),
        count: cfg.count,
        shards: cfg.shards,
        overrides: cfg.overrides.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        dedup_ngram: dedup.0,
        dedup_threshold: dedup.1,
        shard_reports,
        judged: judged_count,
        duplicates,
        near_duplicates,
        accepted: dataset.len(),
    };
    out_files.insert(scale_files::SCALE_JSON.into(), write_json(&run, scale_files::SCALE_JSON, &report)?);
    timings.add("io", t.elapsed());

    let first = &shard_records[0];
    let build = kiln_build();
    let mut manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        stage: "scale".into(),
        run_id: cfg.run_id.clone(),
        status: "complete".into(),
        started_at: state.started_at.clone(),
        finished_at: now(),
        kiln: build.clone(),
        environment: environment(),
        config_file: cfg.file.clone(),
        config_hash: state.config_hash.clone(),
        seed: inh.config.seed,
        count: cfg.count,
        model: first.model.clone(),
        guard: first.guard.clone(),
        plugins: first.plugins.clone(),
        sampling: first.sampling.clone(),
        gate: Gate { pass: processed.pass, reasons: processed.reasons.clone() },
        counts,
        files: out_files,
        source: Some(Source {
            replayed: inh.manifest.run_id.clone(),
            config_hash: inh.manifest.config_hash.clone(),
            run_id: inh.manifest.run_id.clone(),
            run_dir: cfg.pilot.clone(),
            raw_pool: files::ACCEPTED.into(),
            raw_pool_sha256: inh.manifest.files.get(files::ACCEPTED).cloned().unwrap_or_default(),
        }),
        arms: vec![],
        test_set: None,
        dataset: None,
        training: None,
        resources: None,
        review: None,
    };
    append_log(
        &run,
        "scale",
        &[format!(
            "[{}] merged {} shards: {} judged, {} duplicates, {} near-duplicates, {} accepted; gate {}",
            now(),
            cfg.shards,
            judged_count,
            duplicates,
            near_duplicates,
            manifest.counts["accepted"],
            if manifest.gate.pass { "PASSED" } else { "FAILED" }
        )],
    )?;
    manifest.write_accounted(&run, wall.elapsed())?;
    Ok((report, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, instruction: &str) -> Sample {
        Sample {
            id: id.into(),
            instruction_type: "t".into(),
            instruction: instruction.into(),
            response: String::new(),
            instruction_generation: Default::default(),
            response_generation: Default::default(),
            verdicts: vec![],
            metadata: Default::default(),
        }
    }

    #[test]
    fn dedup_keeps_the_first_of_exact_and_near_duplicates() {
        let s = vec![
            sample("a", "Write a short poem about the sea at night."),
            sample("b", "write a  short poem about the sea at night."),
            sample("c", "Write a short poem about the sea at night, please."),
            sample("d", "List three prime numbers."),
        ];
        let (kept, dropped, dups, near) = dedup_across(s, 3, 0.7);
        let ids: Vec<&str> = kept.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "d"]);
        assert_eq!((dups, near), (1, 1));
        assert_eq!(dropped[0].code, "duplicate");
        assert_eq!(dropped[1].code, "near-duplicate");
        assert!(dropped[1].detail.contains("with a"), "{}", dropped[1].detail);
    }

    #[test]
    fn overrides_reach_nested_tables_and_arrays_and_refuse_unknown_parents() {
        let mut t: toml::Table = "seed = 1\n[sampling.response]\ntemperature = 0.7\n[[plugins.cleaners]]\npath = \"x\"\n[plugins.cleaners.config]\nmax = 1\n"
            .parse()
            .unwrap();
        set_dotted(&mut t, "sampling.response.temperature", toml::Value::Float(0.9)).unwrap();
        set_dotted(&mut t, "plugins.cleaners.0.config.max", toml::Value::Integer(5)).unwrap();
        assert_eq!(t["sampling"]["response"]["temperature"].as_float(), Some(0.9));
        assert_eq!(t["plugins"]["cleaners"][0]["config"]["max"].as_integer(), Some(5));
        assert!(set_dotted(&mut t, "nosuch.key", toml::Value::Integer(1)).unwrap_err().contains("no \"nosuch\""));
        assert!(set_dotted(&mut t, "plugins.cleaners.3.path", toml::Value::Integer(1)).unwrap_err().contains("beyond"));
        assert_eq!(t["seed"].as_integer(), Some(1));
    }
}
