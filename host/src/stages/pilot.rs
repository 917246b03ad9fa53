//! `kiln pilot`: completion-mode data generation through the plugins to a QC gate.
//!
//! instruction prompts (template) -> instruction completions (model, chunked, resumable) ->
//! parse (template) -> response prompts (template) -> response completions (model, chunked,
//! resumable) -> raw pool -> cleaner chain -> critics (host-batched A/B scoring between their
//! two phases) -> QC rules -> gate -> accepted samples with provenance, reports, manifest.
//!
//! Only the model work is checkpointed: everything after it is recomputed on every invocation
//! from the stored completions (it takes seconds), so an interrupted run and an uninterrupted
//! one write the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::pilot::{ModelChoice, ModelSpec, PilotConfig, PluginEntry};
use crate::model::{guard, Engine, LoadOptions};
use crate::plugin::{InstructionCompletion, InstructionRequest, Parsed, Quarantine, ResponseRequest, Runtime, World};
use crate::provenance::manifest::{
    environment, kiln_build, now, Gate, Manifest, ModelRecord, PluginRef, SampleProvenance, MANIFEST_VERSION,
};
use crate::provenance::sha256_hex;
use crate::sandbox::RunDir;

use super::error::StageError;
use super::process::{batched, load_plugins, process, Loaded, ProcessOptions, Processed, Scorer};
use super::progress::{Progress, Timings};
use super::raw::{abort_point, generate_phase, GenJob, PhaseRun};
use super::records::{write_json, write_jsonl, Accepted, Dropped, Phase, RawRecord};
use super::report::{self, counts, drop_reasons, metric_rows, QcReportFile, Summary};
use super::seeds::{choose, derive_seed, type_schedule};
use super::PILOT_SHARD;

/// File names inside a run directory.
pub mod files {
    /// The resolved config.
    pub const CONFIG: &str = "config.resolved.toml";
    /// When the run was first started.
    pub const STATE: &str = "run.json";
    /// The raw pool.
    pub const RAW: &str = "raw/shard-00000.jsonl";
    /// Accepted samples.
    pub const ACCEPTED: &str = "pilot/shard-00000.jsonl";
    /// The cleaned, judged set.
    pub const CLEANED: &str = "pilot/cleaned/shard-00000.jsonl";
    /// Dropped samples.
    pub const DROPPED: &str = "pilot/dropped/shard-00000.jsonl";
    /// Critic records.
    pub const CRITIC: &str = "critic/shard-00000.jsonl";
    /// QC report.
    pub const QC_JSON: &str = "qc_report.json";
    /// QC report, readable.
    pub const QC_MD: &str = "qc_report.md";
    /// Stats and timings.
    pub const STATS: &str = "stats/00000.json";
}

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct PilotOptions {
    /// Progress bars.
    pub progress: Progress,
    /// Where the model runs (a placement, not part of the recipe: recorded in the manifest).
    pub device: crate::model::DeviceSpec,
}

/// What a finished pilot says.
#[derive(Debug, Clone)]
pub struct PilotOutcome {
    /// The summary.
    pub summary: Summary,
    /// The manifest written.
    pub manifest: Manifest,
}

/// `run.json`: when a run was first started, with which config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Run id.
    pub run_id: String,
    /// The stage.
    pub stage: String,
    /// The config hash.
    pub config_hash: String,
    /// When the first invocation started.
    pub started_at: String,
    /// The command line of the first invocation (what resumes the run).
    #[serde(default)]
    pub command: Vec<String>,
    /// The directory it ran in.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

/// One planned sample.
#[derive(Debug, Clone)]
struct Planned {
    index: usize,
    id: String,
    type_idx: usize,
    examples: Vec<String>,
    instruction_seed: u64,
    response_seed: u64,
}

/// Which samples a generation run makes, and where: a pilot is shard 0 (ids `p-NNNNN`); a
/// scale shard is its own run folder with its own shard number in every seed.
#[derive(Debug, Clone)]
pub struct Slice {
    /// The stage recorded in the manifest ("pilot", "scale-shard").
    pub stage: &'static str,
    /// Run id.
    pub run_id: String,
    /// The run folder.
    pub run_dir: PathBuf,
    /// The shard number in every sample's seeds.
    pub shard: u64,
    /// Samples.
    pub count: usize,
    /// Sample ids are `<prefix>NNNNN`.
    pub id_prefix: String,
    /// Appended to the resolved config (what makes this slice differ from the config's own run).
    pub resolved_extra: String,
    /// Leave `artifacts_dir` out of the resolved config, so that the config hash every sample
    /// carries does not depend on where the run folder is (a scale's shards).
    pub portable: bool,
}

impl Slice {
    /// The pilot of `cfg`: shard 0, `cfg.count` samples, in `artifacts_dir/run_id`.
    pub fn pilot(cfg: &PilotConfig) -> Slice {
        Slice {
            stage: "pilot",
            run_id: cfg.run_id.clone(),
            run_dir: cfg.artifacts_dir.join(&cfg.run_id),
            shard: PILOT_SHARD,
            count: cfg.count,
            id_prefix: "p-".into(),
            resolved_extra: String::new(),
            portable: false,
        }
    }
}

fn plan(cfg: &PilotConfig, slice: &Slice) -> Vec<Planned> {
    let shard = slice.shard;
    let sched = type_schedule(&cfg.types, slice.count);
    sched
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let i64_ = i as u64;
            Planned {
                index: i,
                id: format!("{}{i:05}", slice.id_prefix),
                type_idx: t,
                examples: choose(&cfg.types[t].seeds, cfg.examples_per_prompt, derive_seed(cfg.seed, shard, i64_, "examples")),
                instruction_seed: derive_seed(cfg.seed, shard, i64_, "instruction"),
                response_seed: derive_seed(cfg.seed, shard, i64_, "response"),
            }
        })
        .collect()
}

/// Flatten a TOML table into dotted keys (`plugins.cleaners[0].config.max_repetition`) and
/// displayed values.
pub fn flatten_toml(t: &toml::Table) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
                if a.is_empty() {
                    out.insert(prefix.to_string(), "[]".into());
                }
            }
            // Strings and lists of plain values as JSON: one line, escapes visible.
            toml::Value::String(_) | toml::Value::Array(_) => {
                let json = serde_json::to_value(v).map(|j| j.to_string()).unwrap_or_else(|_| v.to_string());
                out.insert(prefix.to_string(), json);
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (k, v) in t {
        walk(k, v, &mut out);
    }
    out
}

/// `a -> b` for the keys that differ (at most `max`, then "...").
pub fn describe_diff(old: &str, new: &str, max: usize) -> String {
    let (Ok(a), Ok(b)) = (old.parse::<toml::Table>(), new.parse::<toml::Table>()) else {
        return "the stored config is unreadable".into();
    };
    let (fa, fb) = (flatten_toml(&a), flatten_toml(&b));
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| {
            format!("{k}: {} -> {}", fa.get(k).map_or("(absent)", String::as_str), fb.get(k).map_or("(absent)", String::as_str))
        })
        .collect();
    if diffs.is_empty() {
        return "formatting only".into();
    }
    let more = diffs.len().saturating_sub(max);
    let mut s = diffs.into_iter().take(max).collect::<Vec<_>>().join(", ");
    if more > 0 {
        s.push_str(&format!(", and {more} more"));
    }
    s
}

/// Write `resolved` as the run's config, or, when the run has one, check that it is the same.
pub fn claim_config(run: &RunDir, resolved: &str) -> Result<(), StageError> {
    match run.read_optional(files::CONFIG)? {
        Some(old) if old != resolved.as_bytes() => Err(StageError::ConfigChanged {
            dir: run.path().to_path_buf(),
            diff: describe_diff(&String::from_utf8_lossy(&old), resolved, 4),
        }),
        Some(_) => Ok(()),
        None => Ok(run.write_atomic(files::CONFIG, resolved.as_bytes())?),
    }
}

/// Open (or create) a run directory for `resolved`: a new run writes the config; an existing
/// one must have been made with the same config. Returns the run's state.
pub fn open_run(dir: &Path, run_id: &str, stage: &str, resolved: &str, timings: &mut Timings) -> Result<(RunDir, RunState), StageError> {
    let t = Instant::now();
    let mut run = RunDir::create(dir)?;
    run.lock()?;
    let config_hash = sha256_hex(resolved.as_bytes());
    claim_config(&run, resolved)?;
    let state = match run.read_optional(files::STATE)?.and_then(|b| serde_json::from_slice::<RunState>(&b).ok()) {
        Some(s) if s.config_hash == config_hash => s,
        _ => {
            let s = RunState {
                run_id: run_id.to_string(),
                stage: stage.to_string(),
                config_hash,
                started_at: now(),
                command: std::env::args().collect(),
                cwd: std::env::current_dir().ok(),
            };
            write_json(&run, files::STATE, &s)?;
            s
        }
    };
    timings.add("io", t.elapsed());
    Ok((run, state))
}

/// Ids and messages of the entries a quarantine got in this invocation.
fn quarantine_messages(q: &Quarantine, plugin: &str) -> HashMap<String, String> {
    q.entries().iter().map(|e| (e.record_id.clone(), format!("{plugin}: {}", e.message))).collect()
}

/// The model file for a config: a path, or a known model fetched on first use.
pub fn model_path(choice: &ModelChoice) -> Result<PathBuf, StageError> {
    match choice {
        ModelChoice::Path(p) => Ok(p.clone()),
        ModelChoice::Known(name) => {
            let m = crate::model::fetch::known(name)?;
            Ok(crate::model::fetch::ensure(&m, &crate::model::fetch::models_dir(None))?)
        }
    }
}

/// The manifest's record of a model.
pub fn model_record(engine: &Engine) -> ModelRecord {
    let i = &engine.info;
    ModelRecord {
        path: i.path.clone(),
        sha256: i.sha256.clone(),
        architecture: i.architecture.clone(),
        name: i.name.clone(),
        file_size: i.file_size,
        chat_template_allowed: i.chat_template_allowed,
        device: (i.device != crate::model::DeviceSpec::Cpu).then(|| i.device.to_string()),
    }
}

/// Load the model of a config, check its pin and run the contamination guard.
pub fn load_model(cfg: &PilotConfig, device: crate::model::DeviceSpec, timings: &mut Timings) -> Result<(Engine, guard::GuardReport), StageError> {
    let spec = ModelSpec {
        choice: cfg.model.clone(),
        sha256: cfg.model_sha256.clone(),
        allow_chat_template: cfg.allow_chat_template,
        guard_threshold: cfg.guard_threshold,
    };
    load_model_spec(&spec, &cfg.file, "model", device, timings)
}

/// Load a model, check its pin (an error names the config `file` and `field`) and run the
/// contamination guard.
pub fn load_model_spec(spec: &ModelSpec, file: &Path, field: &str, device: crate::model::DeviceSpec, timings: &mut Timings) -> Result<(Engine, guard::GuardReport), StageError> {
    let path = model_path(&spec.choice)?;
    let engine = timings.time("model_load", || Engine::load(&path, &LoadOptions { allow_chat_template: spec.allow_chat_template, device }))?;
    if let Some(expected) = &spec.sha256 {
        if &engine.info.sha256 != expected {
            return Err(StageError::Invalid(format!(
                "{}: {field}.sha256: model \"{}\": hash mismatch, found {} but expected {expected}",
                file.display(),
                path.display(),
                engine.info.sha256
            )));
        }
    }
    let report = timings.time("guard", || guard::check(&engine, spec.guard_threshold))?;
    if report.flagged_by_behaviour {
        return Err(super::error::GuardFailed {
            path,
            sha256: engine.info.sha256.clone(),
            preference: report.assistant_preference,
            threshold: report.threshold,
            wins: report.assistant_wins,
            sentinels: report.sentinels.len(),
        }
        .into());
    }
    Ok((engine, report))
}

/// The plugin entries of a config with the world each field needs.
pub fn plugin_fields(cfg: &PilotConfig) -> Vec<(&'static str, World, &PluginEntry)> {
    let mut v = vec![("template", World::PromptTemplate, &cfg.template)];
    v.extend(cfg.cleaners.iter().map(|e| ("cleaner", World::Cleaner, e)));
    v.extend(cfg.critics.iter().map(|e| ("critic", World::Critic, e)));
    v.extend(cfg.qc_rules.iter().map(|e| ("qc-rule", World::QcRule, e)));
    v
}

/// Sampling per phase, as recorded.
pub fn sampling_record(cfg: &PilotConfig) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    m.insert("instruction".to_string(), serde_json::to_value(cfg.instruction_sampling).expect("serialises"));
    m.insert("response".to_string(), serde_json::to_value(cfg.response_sampling).expect("serialises"));
    m
}

/// Append lines to `logs/<name>.log` (rewritten atomically).
pub fn append_log(run: &RunDir, name: &str, lines: &[String]) -> Result<(), StageError> {
    let rel = format!("logs/{name}.log");
    let mut text = run.read_optional(&rel)?.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    run.write_atomic(&rel, text.as_bytes())?;
    Ok(())
}

/// Everything after the plugins: what a pilot and a replay both write.
pub struct Finish<'a> {
    /// The run.
    pub run: &'a RunDir,
    /// "pilot" or "replay".
    pub stage: &'a str,
    /// Run id.
    pub run_id: &'a str,
    /// The raw pool.
    pub raw: &'a [RawRecord],
    /// Samples the template dropped.
    pub template_dropped: Vec<Dropped>,
    /// Samples the template quarantined.
    pub template_quarantined: usize,
    /// What the plugins made.
    pub processed: Processed,
    /// The per-sample provenance, less what is per sample.
    pub provenance: SampleProvenance,
    /// The manifest, less gate, counts and files.
    pub manifest: Manifest,
}

impl Finish<'_> {
    /// Write the outputs, the QC reports and (last) the manifest; `files` are outputs already
    /// written (name -> sha256).
    pub fn write(
        self,
        mut files: BTreeMap<String, String>,
        timings: &mut Timings,
        quarantine_files: &[String],
    ) -> Result<(Manifest, QcReportFile, Vec<report::DropReason>), StageError> {
        let t = Instant::now();
        let Finish { run, stage, run_id, raw, template_dropped, template_quarantined, processed, provenance, mut manifest } = self;
        let by_id: HashMap<&str, &RawRecord> = raw.iter().map(|r| (r.id.as_str(), r)).collect();
        let accepted_at = now();
        let accepted: Vec<Accepted> = processed
            .accepted
            .iter()
            .map(|s| {
                let r = by_id.get(s.id.as_str());
                let (iseed, igen) = r.and_then(|r| r.instruction.as_ref()).map_or((0, String::new()), |c| (c.seed, c.generated_at.clone()));
                let (rseed, rgen) = r.and_then(|r| r.response.as_ref()).map_or((0, String::new()), |c| (c.seed, c.generated_at.clone()));
                let mut p = provenance.clone();
                p.instruction_seed = iseed;
                p.response_seed = rseed;
                p.instruction_generated_at = igen;
                p.response_generated_at = rgen;
                p.accepted_at = accepted_at.clone();
                Accepted { sample: s.clone(), provenance: p }
            })
            .collect();
        let mut dropped = template_dropped.clone();
        dropped.extend(processed.dropped.iter().cloned());
        files.insert(files::ACCEPTED.into(), write_jsonl(run, files::ACCEPTED, &accepted)?);
        files.insert(files::CLEANED.into(), write_jsonl(run, files::CLEANED, &processed.judged)?);
        files.insert(files::DROPPED.into(), write_jsonl(run, files::DROPPED, &dropped)?);
        files.insert(files::CRITIC.into(), write_jsonl(run, files::CRITIC, &processed.critic_records)?);
        for q in quarantine_files {
            let bytes = run.read_optional(q)?.unwrap_or_default();
            files.insert(q.clone(), sha256_hex(&bytes));
        }
        let c = counts(raw, &template_dropped, template_quarantined, &processed);
        let qc = QcReportFile {
            run_id: run_id.to_string(),
            stage: stage.to_string(),
            pass: processed.pass,
            reasons: processed.reasons.clone(),
            evaluated: processed.judged.len(),
            metrics: metric_rows(&processed.rules),
            rules: processed.rules.clone(),
            counts: c.clone(),
        };
        let drops = drop_reasons(&dropped);
        files.insert(files::QC_JSON.into(), write_json(run, files::QC_JSON, &qc)?);
        let md = report::markdown(&qc, &drops);
        run.write_atomic(files::QC_MD, md.as_bytes())?;
        files.insert(files::QC_MD.into(), sha256_hex(md.as_bytes()));
        manifest.gate = Gate { pass: processed.pass, reasons: processed.reasons.clone() };
        manifest.counts = c;
        manifest.files = files;
        manifest.finished_at = now();
        timings.add("io", t.elapsed());
        Ok((manifest, qc, drops))
    }
}

/// Run a pilot.
pub fn run(cfg: &PilotConfig, opts: &PilotOptions) -> Result<PilotOutcome, StageError> {
    run_slice(cfg, &Slice::pilot(cfg), opts)
}

/// Generate, clean, judge and gate the samples of `slice` with the model and plugins of `cfg`.
pub fn run_slice(cfg: &PilotConfig, slice: &Slice, opts: &PilotOptions) -> Result<PilotOutcome, StageError> {
    let wall = Instant::now();
    let mut timings = Timings::default();
    let progress = &opts.progress;
    let file = cfg.file.display().to_string();

    // Plugins first: they are quick to check, and a bad one should not wait for the model.
    let rt = Runtime::with_default_cache()?;
    let fields = plugin_fields(cfg);
    let loaded = timings.time("plugin_load", || load_plugins(&rt, &file, cfg.seed, &fields, 0))?;
    let template = &loaded[0];
    let nc = cfg.cleaners.len();
    let nk = cfg.critics.len();
    let cleaners: Vec<&Loaded> = loaded[1..1 + nc].iter().collect();
    let critics: Vec<&Loaded> = loaded[1 + nc..1 + nc + nk].iter().collect();
    let qc_rules: Vec<&Loaded> = loaded[1 + nc + nk..].iter().collect();

    let (engine, guard_report) = load_model(cfg, opts.device, &mut timings)?;
    let shas: Vec<String> = loaded.iter().map(|l| l.plugin.sha256.clone()).collect();
    let mut table = cfg.resolved_table(&shas, &engine.info.path, &engine.info.sha256);
    if slice.portable {
        table.remove("artifacts_dir");
    }
    let resolved = crate::config::pilot::resolved_text(&table) + &slice.resolved_extra;
    let run_dir = slice.run_dir.clone();
    let (run, state) = open_run(&run_dir, &slice.run_id, slice.stage, &resolved, &mut timings)?;
    let mut log = vec![format!("[{}] kiln {} {} (config {}): invocation started", now(), slice.stage, slice.run_id, file)];

    // Instruction prompts.
    let planned = plan(cfg, slice);
    let mut tq = template.fresh_quarantine(&run)?;
    let mut tw = template.plugin.worker(template.seed);
    let tname = template.plugin.name.clone();
    let ireqs: Vec<InstructionRequest> = planned
        .iter()
        .map(|p| InstructionRequest {
            id: p.id.clone(),
            instruction_type: cfg.types[p.type_idx].name.clone(),
            type_description: cfg.types[p.type_idx].description.clone(),
            examples: p.examples.clone(),
        })
        .collect();
    let t = Instant::now();
    let bar = progress.bar("prompts", ireqs.len() as u64, 0);
    let iprompts = batched(&mut tw, &mut tq, &ireqs, cfg.plugin_batch_size, &bar, &mut |w, b| w.instruction_prompts(b))?;
    bar.finish_and_clear();
    timings.add(&format!("plugin:{tname}"), t.elapsed());
    let ijobs: Vec<GenJob> = planned
        .iter()
        .zip(&iprompts)
        .filter_map(|(p, pr)| {
            pr.as_ref().map(|pr| GenJob {
                index: p.index,
                id: p.id.clone(),
                prompt: pr.text.clone(),
                stop: pr.stop.clone(),
                max_tokens: cfg.instruction_sampling.budget(pr.max_tokens),
                seed: p.instruction_seed,
                stop_after_text: cfg.instruction_sampling.stop_after_text,
            })
        })
        .collect();

    // Instructions.
    let mut written = 0usize;
    let phase_run = PhaseRun {
        engine: &engine,
        run: &run,
        shard: slice.shard,
        sampling: &cfg.instruction_sampling,
        batch_size: cfg.batch_size,
        chunk_size: cfg.chunk_size,
        progress,
        written: &mut written,
    };
    let (instr, resumed_i) = generate_phase(phase_run, Phase::Instruction, &ijobs, &mut timings)?;
    abort_point("after-instructions");

    // Parse.
    let comps: Vec<InstructionCompletion> = instr
        .values()
        .map(|c| InstructionCompletion {
            id: c.id.clone(),
            instruction_type: cfg.types[planned[c.index].type_idx].name.clone(),
            prompt: c.prompt.clone(),
            text: c.text.clone(),
        })
        .collect();
    let t = Instant::now();
    let bar = progress.bar("parse", comps.len() as u64, 0);
    let parsed_list = batched(&mut tw, &mut tq, &comps, cfg.plugin_batch_size, &bar, &mut |w, b| w.parse_instructions(b))?;
    bar.finish_and_clear();
    let parsed: BTreeMap<usize, Option<Parsed>> = instr.keys().copied().zip(parsed_list).collect();

    // Response prompts.
    let rreqs: Vec<(usize, ResponseRequest)> = parsed
        .iter()
        .filter_map(|(&i, p)| match p {
            Some(Parsed::Instruction(text)) => Some((
                i,
                ResponseRequest { id: planned[i].id.clone(), instruction_type: cfg.types[planned[i].type_idx].name.clone(), instruction: text.clone() },
            )),
            _ => None,
        })
        .collect();
    let only: Vec<ResponseRequest> = rreqs.iter().map(|(_, r)| r.clone()).collect();
    let bar = progress.bar("prompts", only.len() as u64, 0);
    let rprompts = batched(&mut tw, &mut tq, &only, cfg.plugin_batch_size, &bar, &mut |w, b| w.response_prompts(b))?;
    bar.finish_and_clear();
    timings.add(&format!("plugin:{tname}"), t.elapsed());
    let rjobs: Vec<GenJob> = rreqs
        .iter()
        .zip(&rprompts)
        .filter_map(|((i, _), pr)| {
            pr.as_ref().map(|pr| GenJob {
                index: *i,
                id: planned[*i].id.clone(),
                prompt: pr.text.clone(),
                stop: pr.stop.clone(),
                max_tokens: cfg.response_sampling.budget(pr.max_tokens),
                seed: planned[*i].response_seed,
                stop_after_text: cfg.response_sampling.stop_after_text,
            })
        })
        .collect();

    // Responses.
    let phase_run = PhaseRun {
        engine: &engine,
        run: &run,
        shard: slice.shard,
        sampling: &cfg.response_sampling,
        batch_size: cfg.batch_size,
        chunk_size: cfg.chunk_size,
        progress,
        written: &mut written,
    };
    let (resp, resumed_r) = generate_phase(phase_run, Phase::Response, &rjobs, &mut timings)?;

    // The raw pool.
    let qmsgs = quarantine_messages(&tq, &tname);
    let mut instr = instr;
    let mut resp = resp;
    let raw: Vec<RawRecord> = planned
        .iter()
        .map(|p| RawRecord {
            id: p.id.clone(),
            index: p.index,
            instruction_type: cfg.types[p.type_idx].name.clone(),
            examples: p.examples.clone(),
            instruction: instr.remove(&p.index),
            parsed: parsed.get(&p.index).cloned().flatten(),
            response: resp.remove(&p.index),
            quarantined: qmsgs.get(&p.id).cloned(),
        })
        .collect();
    drop(tq);
    let mut out_files = BTreeMap::new();
    let t = Instant::now();
    out_files.insert(files::CONFIG.to_string(), sha256_hex(resolved.as_bytes()));
    out_files.insert(files::RAW.to_string(), write_jsonl(&run, files::RAW, &raw)?);
    timings.add("io", t.elapsed());
    abort_point("after-raw-pool");

    // Plugins.
    let (samples, template_dropped, template_quarantined) = split_raw(&raw, template);
    let mut scorer = Scorer::with_engine(&engine, cfg.batch_size);
    let popts = ProcessOptions { run: &run, plugin_batch: cfg.plugin_batch_size, critic_filter: cfg.critic_filter, progress };
    let processed = process(samples, &cleaners, &critics, &qc_rules, &mut scorer, &popts, &mut timings)?;

    // Outputs.
    let build = kiln_build();
    let records: Vec<_> = loaded.iter().map(Loaded::record).collect();
    let provenance = SampleProvenance {
        run_id: slice.run_id.clone(),
        kiln_revision: build.git_revision.clone(),
        kiln_dirty: build.git_dirty,
        kiln_version: build.version.clone(),
        model_sha256: engine.info.sha256.clone(),
        plugins: records.iter().map(PluginRef::from).collect(),
        config_hash: state.config_hash.clone(),
        run_seed: cfg.seed,
        instruction_seed: 0,
        response_seed: 0,
        sampling: sampling_record(cfg),
        instruction_generated_at: String::new(),
        response_generated_at: String::new(),
        accepted_at: String::new(),
    };
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        stage: slice.stage.into(),
        run_id: slice.run_id.clone(),
        status: "complete".into(),
        started_at: state.started_at.clone(),
        finished_at: String::new(),
        kiln: build.clone(),
        environment: environment(),
        config_file: cfg.file.clone(),
        config_hash: state.config_hash.clone(),
        seed: cfg.seed,
        count: slice.count,
        model: model_record(&engine),
        guard: serde_json::to_value(&guard_report).expect("serialises"),
        plugins: records,
        sampling: sampling_record(cfg),
        gate: Gate { pass: false, reasons: vec![] },
        counts: BTreeMap::new(),
        files: BTreeMap::new(),
        source: None,
        arms: vec![],
        test_set: None,
        dataset: None,
        training: None,
        resources: None,
        review: None,
    };
    let quarantine_files: Vec<String> = loaded.iter().filter(|l| l.role != "qc-rule").map(|l| l.quarantine.clone()).collect();
    let mut quarantined = processed.quarantined.clone();
    if template_quarantined > 0 {
        *quarantined.entry(tname.clone()).or_default() += template_quarantined;
    }
    let finish = Finish {
        run: &run,
        stage: slice.stage,
        run_id: &slice.run_id,
        raw: &raw,
        template_dropped,
        template_quarantined,
        processed,
        provenance,
        manifest,
    };
    let (mut manifest, qc, drops) = finish.write(out_files, &mut timings, &quarantine_files)?;

    let wall_seconds = wall.elapsed().as_secs_f64();
    let mut resumed = BTreeMap::new();
    resumed.insert("instruction".to_string(), resumed_i);
    resumed.insert("response".to_string(), resumed_r);
    let summary = Summary {
        stage: slice.stage.into(),
        run_id: slice.run_id.clone(),
        run_dir: run_dir.clone(),
        pass: qc.pass,
        reasons: qc.reasons.clone(),
        counts: qc.counts.clone(),
        dropped_by_reason: drops,
        quarantined,
        metrics: qc.metrics.clone(),
        resumed,
        wall_seconds,
        timings: timings.entries(),
        examples_per_minute: slice.count as f64 / (wall_seconds / 60.0).max(1e-9),
    };
    write_stats(&run, &summary, &timings, scorer.computed, scorer.cached)?;
    log.push(format!(
        "[{}] resumed {} instruction and {} response completions; generated {}; gate {}; wall {:.1}s",
        now(),
        resumed_i,
        resumed_r,
        written,
        if qc.pass { "PASSED" } else { "FAILED" },
        wall_seconds
    ));
    append_log(&run, slice.stage, &log)?;
    abort_point("before-manifest");
    manifest.write_accounted(&run, wall.elapsed())?;
    Ok(PilotOutcome { summary, manifest })
}

/// The samples of a raw pool, the samples the template dropped, and how many it quarantined.
pub fn split_raw(raw: &[RawRecord], template: &Loaded) -> (Vec<crate::plugin::Sample>, Vec<Dropped>, usize) {
    split_raw_named(raw, &template.plugin.name, &template.plugin.sha256)
}

/// [`split_raw`] with the template named by name and hash.
pub fn split_raw_named(raw: &[RawRecord], name: &str, sha256: &str) -> (Vec<crate::plugin::Sample>, Vec<Dropped>, usize) {
    let mut samples = Vec::new();
    let mut dropped = Vec::new();
    let mut quarantined = 0;
    for r in raw {
        if r.quarantined.is_some() {
            quarantined += 1;
            continue;
        }
        if let Some(Parsed::Rejected(why)) = &r.parsed {
            dropped.push(Dropped {
                id: r.id.clone(),
                stage: "template".into(),
                plugin: name.to_string(),
                plugin_sha256: sha256.to_string(),
                code: "unparsed-instruction".into(),
                detail: format!("{why} (completion: {:?})", r.instruction.as_ref().map(|c| c.text.as_str()).unwrap_or("")),
                sample: None,
            });
            continue;
        }
        if let Some(s) = r.sample() {
            samples.push(s);
        }
    }
    (samples, dropped, quarantined)
}

/// `stats/00000.json`: counts and the wall-time breakdown of this invocation.
pub fn write_stats(run: &RunDir, s: &Summary, timings: &Timings, scored: usize, cached: usize) -> Result<(), StageError> {
    let plugin = timings.sum_prefix("plugin:") + timings.get("plugin_load");
    let io = timings.get("io");
    let stats = serde_json::json!({
        "shard": 0,
        "counts": s.counts,
        "resumed": s.resumed,
        "wall_seconds": s.wall_seconds,
        "examples_per_minute": s.examples_per_minute,
        "timings": timings.entries().into_iter().collect::<BTreeMap<_, _>>(),
        "plugins_and_io_share": if s.wall_seconds > 0.0 { (plugin + io) / s.wall_seconds } else { 0.0 },
        "score_requests": { "computed": scored, "from_cache": cached },
    });
    write_json(run, files::STATS, &stats)?;
    Ok(())
}

/// Read the raw completions of a finished run's raw pool.
pub fn read_raw(run_dir: &Path) -> Result<Vec<RawRecord>, StageError> {
    Ok(crate::sandbox::read_jsonl(&run_dir.join(files::RAW))?)
}
