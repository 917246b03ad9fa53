//! `kiln replay RUN --config other.toml`: another config's cleaners, critics and QC rules on a
//! finished run's stored raw pool. Critic requests already scored in RUN are answered from its
//! stored log-probabilities; the model is loaded only for requests that changed. The result
//! is a new run (beside RUN) that points to the raw pool it used, and a table of what changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::config::pilot::{valid_run_id, PilotConfig};
use crate::model::{Engine, LoadOptions};
use crate::plugin::Runtime;
use crate::provenance::manifest::{kiln_build, now, Gate, Manifest, PluginRef, SampleProvenance, Source, MANIFEST_VERSION};
use crate::provenance::sha256_hex;

use super::error::StageError;
use super::pilot::{append_log, files, flatten_toml, open_run, plugin_fields, read_raw, split_raw_named, write_stats, Finish};
use super::process::{load_plugins, process, Loaded, ProcessOptions, Scorer};
use super::progress::{Progress, Timings};
use super::records::CriticRecord;
use super::report::{fmt_delta, fmt_num, metric_values, table, QcReportFile, Summary};

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The new run's id (default: `<RUN>-replay-<hash of the plugin settings>`).
    pub run_id: Option<String>,
    /// Bars.
    pub progress: Progress,
}

/// One row of the delta table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeltaRow {
    /// Metric or count.
    pub metric: String,
    /// In RUN.
    pub before: Option<f64>,
    /// In the replay.
    pub after: Option<f64>,
    /// after - before.
    pub delta: Option<f64>,
}

/// What changed between RUN and its replay.
#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    /// RUN's id.
    pub before_run: String,
    /// The replay's id.
    pub after_run: String,
    /// Metrics and counts.
    pub rows: Vec<DeltaRow>,
    /// Samples RUN accepted and the replay did not.
    pub kept_before_only: Vec<String>,
    /// Samples the replay accepted and RUN did not.
    pub kept_after_only: Vec<String>,
    /// Score requests answered from RUN's stored log-probabilities.
    pub scores_reused: usize,
    /// Score requests the model scored.
    pub scores_computed: usize,
    /// Settings of the replay config that differ from RUN's but cannot apply to a replay
    /// (generation: model, sampling, seed, count, template, data).
    pub ignored: Vec<String>,
}

impl Delta {
    /// The text table.
    pub fn table(&self) -> String {
        let show = |v: Option<f64>| v.map_or("-".to_string(), fmt_num);
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| vec![r.metric.clone(), show(r.before), show(r.after), r.delta.map_or("-".to_string(), fmt_delta)])
            .collect();
        let mut s = format!("replay \"{}\" of \"{}\":\n", self.after_run, self.before_run);
        s.push_str(&table(&["metric".into(), "before".into(), "after".into(), "delta".into()], &rows));
        let list = |ids: &[String]| {
            let mut t = ids.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
            if ids.len() > 8 {
                t.push_str(", ...");
            }
            t
        };
        s.push_str(&format!("kept by before only: {}{}\n", self.kept_before_only.len(), paren(&list(&self.kept_before_only))));
        s.push_str(&format!("kept by after only:  {}{}\n", self.kept_after_only.len(), paren(&list(&self.kept_after_only))));
        s.push_str(&format!("critic scores: {} reused from \"{}\", {} computed\n", self.scores_reused, self.before_run, self.scores_computed));
        if !self.ignored.is_empty() {
            s.push_str(&format!(
                "note: replay uses \"{}\"'s raw pool; these settings of the config differ from it and do not apply: {}\n",
                self.before_run,
                self.ignored.join(", ")
            ));
        }
        s
    }
}

fn paren(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" ({s})")
    }
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayOutcome {
    /// The summary of the new run.
    pub summary: Summary,
    /// Its manifest.
    pub manifest: Manifest,
    /// The differences.
    pub delta: Delta,
}

/// Settings a replay takes from its config (everything else comes from RUN).
const REPLAYED: [&str; 3] = ["critic_filter", "plugin_batch_size", "plugins"];

fn accepted_ids(dir: &Path) -> Result<BTreeSet<String>, StageError> {
    let v: Vec<serde_json::Value> = crate::sandbox::read_jsonl(&dir.join(files::ACCEPTED))?;
    Ok(v.iter().filter_map(|r| r.pointer("/sample/id").and_then(|x| x.as_str()).map(str::to_string)).collect())
}

/// Replay `cfg`'s cleaners, critics and QC rules on the raw pool of the run in `source`.
pub fn replay(source: &Path, cfg: &PilotConfig, opts: &ReplayOptions) -> Result<ReplayOutcome, StageError> {
    let wall = Instant::now();
    let mut timings = Timings::default();
    let file = cfg.file.display().to_string();
    let source = std::fs::canonicalize(source)
        .map_err(|e| crate::sandbox::FsError { action: "open run folder", path: source.to_path_buf(), source: e })?;
    let src = Manifest::read(&source)?;
    src.verify_files(&source)?;
    let src_qc: QcReportFile = serde_json::from_slice(&crate::sandbox::read_file(&source.join(files::QC_JSON))?)
        .map_err(|e| StageError::Corrupt { dir: source.clone(), what: format!("{}: {e}", files::QC_JSON) })?;
    // The run that holds the raw pool: RUN itself, or for a replay of a replay, its source.
    let (raw_run, raw_dir, raw_sha) = match &src.source {
        Some(s) => (s.run_id.clone(), s.run_dir.clone(), s.raw_pool_sha256.clone()),
        None => (src.run_id.clone(), source.clone(), src.files.get(files::RAW).cloned().unwrap_or_default()),
    };
    let t = Instant::now();
    let raw_bytes = crate::sandbox::read_file(&raw_dir.join(files::RAW))?;
    if sha256_hex(&raw_bytes) != raw_sha {
        return Err(StageError::Corrupt {
            dir: raw_dir.clone(),
            what: format!("{} has sha256 {} but the manifests say {raw_sha}; the raw pool was modified", files::RAW, sha256_hex(&raw_bytes)),
        });
    }
    let raw = read_raw(&raw_dir)?;
    // Stored scores: RUN's, and for a replay of a replay also those of the run with the raw pool.
    let mut src_critic: Vec<CriticRecord> = crate::sandbox::read_jsonl(&source.join(files::CRITIC))?;
    if raw_dir != source && raw_dir.join(files::CRITIC).is_file() {
        src_critic.extend(crate::sandbox::read_jsonl::<CriticRecord>(&raw_dir.join(files::CRITIC))?);
    }
    timings.add("io", t.elapsed());
    let src_template = src
        .plugins
        .iter()
        .find(|p| p.role == "template")
        .cloned()
        .ok_or_else(|| StageError::Corrupt { dir: source.clone(), what: "the manifest names no template plugin".into() })?;

    // The plugins under test (template excluded: the raw pool is already parsed).
    let rt = Runtime::with_default_cache()?;
    let fields = plugin_fields(cfg);
    let loaded = timings.time("plugin_load", || load_plugins(&rt, &file, src.seed, &fields[1..], 1))?;
    let nc = cfg.cleaners.len();
    let nk = cfg.critics.len();
    let cleaners: Vec<&Loaded> = loaded[..nc].iter().collect();
    let critics: Vec<&Loaded> = loaded[nc..nc + nk].iter().collect();
    let qc_rules: Vec<&Loaded> = loaded[nc + nk..].iter().collect();

    // The replay's config: RUN's, with this config's plugin settings.
    let src_resolved_text = String::from_utf8_lossy(&crate::sandbox::read_file(&source.join(files::CONFIG))?).into_owned();
    let mut resolved: toml::Table = src_resolved_text
        .parse()
        .map_err(|e| StageError::Corrupt { dir: source.clone(), what: format!("{}: {e}", files::CONFIG) })?;
    let mut shas = vec![src_template.sha256.clone()];
    shas.extend(loaded.iter().map(|l| l.plugin.sha256.clone()));
    let mine: toml::Table = cfg
        .resolved_toml(&shas, &src.model.path, &src.model.sha256)
        .parse()
        .expect("kiln writes valid TOML");
    let mut ignored: Vec<String> = {
        let (a, b) = (flatten_toml(&resolved), flatten_toml(&mine));
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .filter(|k| !REPLAYED.iter().any(|r| k.starts_with(r)) || k.starts_with("plugins.template"))
            .filter(|k| !matches!(k.as_str(), "run_id" | "artifacts_dir"))
            .cloned()
            .collect()
    };
    ignored.truncate(12);
    let mut settings = toml::Table::new();
    for k in ["critic_filter", "plugin_batch_size"] {
        if let Some(v) = mine.get(k) {
            resolved.insert(k.to_string(), v.clone());
            settings.insert(k.to_string(), v.clone());
        }
    }
    let mut plugins = resolved.get("plugins").and_then(|p| p.as_table()).cloned().unwrap_or_default();
    let my_plugins = mine.get("plugins").and_then(|p| p.as_table()).cloned().unwrap_or_default();
    for k in ["cleaners", "critics", "qc_rules"] {
        let v = my_plugins.get(k).cloned().unwrap_or(toml::Value::Array(vec![]));
        plugins.insert(k.to_string(), v.clone());
        settings.insert(k.to_string(), v);
    }
    resolved.insert("plugins".into(), toml::Value::Table(plugins));
    let settings_hash = sha256_hex(toml::to_string(&settings).expect("serialises").as_bytes());
    let run_id = match &opts.run_id {
        Some(r) => r.clone(),
        None => format!("{}-replay-{}", src.run_id, &settings_hash[..8]),
    };
    if !valid_run_id(&run_id) {
        return Err(StageError::Invalid(format!(
            "--run-id \"{run_id}\": must be a folder name: letters, digits, '-', '_' and '.', not starting with '.'"
        )));
    }
    let run_dir = source.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")).join(&run_id);
    if run_dir == source {
        return Err(StageError::Invalid(format!("--run-id \"{run_id}\" is the replayed run itself; choose another")));
    }
    resolved.insert("run_id".into(), toml::Value::String(run_id.clone()));
    let resolved_text = format!(
        "# Written by kiln: a replay of \"{}\" (raw pool {}), with this run's cleaners, critics and QC rules.\n{}",
        raw_run,
        raw_dir.join(files::RAW).display(),
        toml::to_string(&resolved).expect("serialises")
    );
    let (run, state) = open_run(&run_dir, &run_id, "replay", &resolved_text, &mut timings)?;

    // Scores: RUN's where the request is the same; the model (loaded on demand) otherwise.
    let mut cache = HashMap::new();
    for c in &src_critic {
        for s in &c.scores {
            cache.insert((s.prompt.clone(), s.answer_a.clone(), s.answer_b.clone()), (s.logprob_a, s.logprob_b));
        }
    }
    let model = src.model.clone();
    let batch = resolved.get("batch_size").and_then(|v| v.as_integer()).unwrap_or(16).max(1) as usize;
    let load = Box::new(move || -> Result<Engine, StageError> {
        tracing::info!(model = %model.path.display(), "loading the model to score changed critic requests");
        let e = Engine::load(&model.path, &LoadOptions { allow_chat_template: model.chat_template_allowed, ..Default::default() })?;
        if e.info.sha256 != model.sha256 {
            return Err(StageError::Invalid(format!(
                "model \"{}\": hash mismatch, found {} but expected {} (the model the replayed run used)",
                model.path.display(),
                e.info.sha256,
                model.sha256
            )));
        }
        Ok(e)
    });
    let mut scorer = Scorer::lazy(cache, load, batch);

    let (samples, template_dropped, template_quarantined) = split_raw_named(&raw, &src_template.name, &src_template.sha256);
    let popts = ProcessOptions { run: &run, plugin_batch: cfg.plugin_batch_size, critic_filter: cfg.critic_filter, progress: &opts.progress };
    let processed = process(samples, &cleaners, &critics, &qc_rules, &mut scorer, &popts, &mut timings)?;

    let build = kiln_build();
    let mut records = vec![src_template.clone()];
    records.extend(loaded.iter().map(Loaded::record));
    let provenance = SampleProvenance {
        run_id: run_id.clone(),
        kiln_revision: build.git_revision.clone(),
        kiln_dirty: build.git_dirty,
        kiln_version: build.version.clone(),
        model_sha256: src.model.sha256.clone(),
        plugins: records.iter().map(PluginRef::from).collect(),
        config_hash: state.config_hash.clone(),
        run_seed: src.seed,
        instruction_seed: 0,
        response_seed: 0,
        sampling: src.sampling.clone(),
        instruction_generated_at: String::new(),
        response_generated_at: String::new(),
        accepted_at: String::new(),
    };
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        stage: "replay".into(),
        run_id: run_id.clone(),
        status: "complete".into(),
        started_at: state.started_at.clone(),
        finished_at: String::new(),
        kiln: build.clone(),
        environment: crate::provenance::manifest::environment(),
        config_file: cfg.file.clone(),
        config_hash: state.config_hash.clone(),
        seed: src.seed,
        count: src.count,
        model: src.model.clone(),
        guard: src.guard.clone(),
        plugins: records,
        sampling: src.sampling.clone(),
        gate: Gate { pass: false, reasons: vec![] },
        counts: BTreeMap::new(),
        files: BTreeMap::new(),
        source: Some(Source {
            replayed: src.run_id.clone(),
            run_id: raw_run.clone(),
            run_dir: raw_dir.clone(),
            raw_pool: files::RAW.to_string(),
            raw_pool_sha256: raw_sha.clone(),
            config_hash: src.config_hash.clone(),
        }),
        arms: vec![],
        test_set: None,
        dataset: None,
        training: None,
        resources: None,
        review: None,
    };
    let quarantine_files: Vec<String> = loaded.iter().filter(|l| l.role != "qc-rule").map(|l| l.quarantine.clone()).collect();
    let quarantined = processed.quarantined.clone();
    let mut out_files = BTreeMap::new();
    out_files.insert(files::CONFIG.to_string(), sha256_hex(resolved_text.as_bytes()));
    let finish = Finish {
        run: &run,
        stage: "replay",
        run_id: &run_id,
        raw: &raw,
        template_dropped,
        template_quarantined,
        processed,
        provenance,
        manifest,
    };
    let (mut manifest, qc, drops) = finish.write(out_files, &mut timings, &quarantine_files)?;

    // The delta.
    let before = metric_values(&src_qc);
    let after = metric_values(&qc);
    let mut names: Vec<String> = before.iter().map(|(k, _)| k.clone()).collect();
    for (k, _) in &after {
        if !names.contains(k) {
            names.push(k.clone());
        }
    }
    let b: HashMap<&str, f64> = before.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let a: HashMap<&str, f64> = after.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let rows = names
        .iter()
        .map(|n| {
            let (x, y) = (b.get(n.as_str()).copied(), a.get(n.as_str()).copied());
            DeltaRow { metric: n.clone(), before: x, after: y, delta: x.zip(y).map(|(x, y)| y - x) }
        })
        .collect();
    let kept_before = accepted_ids(&source)?;
    let kept_after: BTreeSet<String> = qc_accepted(&run_dir)?;
    let delta = Delta {
        before_run: src.run_id.clone(),
        after_run: run_id.clone(),
        rows,
        kept_before_only: kept_before.difference(&kept_after).cloned().collect(),
        kept_after_only: kept_after.difference(&kept_before).cloned().collect(),
        scores_reused: scorer.cached,
        scores_computed: scorer.computed,
        ignored,
    };

    let wall_seconds = wall.elapsed().as_secs_f64();
    let summary = Summary {
        stage: "replay".into(),
        run_id: run_id.clone(),
        run_dir: run_dir.clone(),
        pass: qc.pass,
        reasons: qc.reasons.clone(),
        counts: qc.counts.clone(),
        dropped_by_reason: drops,
        quarantined,
        metrics: qc.metrics.clone(),
        resumed: BTreeMap::new(),
        wall_seconds,
        timings: timings.entries(),
        examples_per_minute: src.count as f64 / (wall_seconds / 60.0).max(1e-9),
    };
    write_stats(&run, &summary, &timings, scorer.computed, scorer.cached)?;
    append_log(
        &run,
        "replay",
        &[format!(
            "[{}] kiln replay {} --config {}: gate {}; {} scores reused, {} computed; wall {:.1}s",
            now(),
            source.display(),
            file,
            if qc.pass { "PASSED" } else { "FAILED" },
            scorer.cached,
            scorer.computed,
            wall_seconds
        )],
    )?;
    manifest.write_accounted(&run, wall.elapsed())?;
    Ok(ReplayOutcome { summary, manifest, delta })
}

fn qc_accepted(dir: &Path) -> Result<BTreeSet<String>, StageError> {
    accepted_ids(dir)
}
