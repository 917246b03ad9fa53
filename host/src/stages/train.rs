//! `kiln train`: QLoRA on a gated dataset. The dataset is the accepted set of a finished kiln
//! run whose gate passed and whose files still match its manifest; each example is rendered
//! with the template plugin (response prompt) the data was generated with, so training,
//! generation and evaluation share one format. The base is the run's own model, checked by
//! hash. Outputs: `adapter/` (PEFT files), `train_log.jsonl`, `loss.png`, `train.json`,
//! `manifest.json`; `checkpoint.safetensors` lets the same command resume after a kill.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::chart::{lines_png, Line};
use super::error::StageError;
use super::pilot::{append_log, open_run};
use super::records::write_json;
use super::process::{batched, load_plugins};
use super::progress::{Progress, Timings};
use super::records::Accepted;
use crate::config::pilot::{Ctx, PluginEntry};
use crate::config::train::TrainConfig;
use crate::config::PluginConfig;
use crate::model::tokenizer::Tokenizer;
use crate::plugin::{ResponseRequest, Runtime, World};
use crate::provenance::manifest::{environment, kiln_build, now, DatasetRecord, Gate, Manifest, ModelRecord, MANIFEST_VERSION};
use crate::provenance::{sha256_file, sha256_hex};
use crate::train::{split, BaseModel, Example, LogLine, Report};

/// File names inside a training run.
pub mod files {
    /// The adapter, in PEFT's format.
    pub const ADAPTER: &str = "adapter";
    /// Summary: split, report, final losses.
    pub const TRAIN_JSON: &str = "train.json";
    /// Training and validation loss per step.
    pub const LOSS_PNG: &str = "loss.png";
    /// Examples as trained (token ids), for inspection and reuse.
    pub const EXAMPLES: &str = "examples.jsonl";
}

/// How to run.
pub struct TrainRunOptions {
    /// Progress bars.
    pub progress: Progress,
    /// Where the base and the adapters live.
    pub device: crate::model::DeviceSpec,
}

/// What a finished training run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The training report.
    pub report: Report,
    /// Examples left out for length.
    pub too_long: usize,
    /// Examples the template could not render.
    pub unrendered: usize,
    /// Peak resident memory of the process, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Wall time of this invocation.
    pub wall_seconds: f64,
}

/// The dataset, checked: what to train on and where it came from.
struct Dataset {
    manifest: Manifest,
    record: DatasetRecord,
    samples: Vec<Accepted>,
    template: PluginEntry,
}

/// The accepted set of a gated run, refused with the reason when it may not be trained on.
fn read_dataset(cfg: &TrainConfig) -> Result<Dataset, StageError> {
    let dir = &cfg.dataset;
    let refuse = |what: String| StageError::Invalid(format!("{}: dataset \"{}\": {what}", cfg.file.display(), dir.display()));
    let run = super::dataset::open_gated(dir).map_err(refuse)?;
    if cfg.require_review {
        super::review::require_approval(dir).map_err(refuse)?;
    }
    // The template as the run used it: its resolved config, pinned by hash.
    let tpl = run
        .recipe
        .get("plugins")
        .and_then(|p| p.get("template"))
        .cloned()
        .ok_or_else(|| refuse(format!("{} has no plugins.template", run.recipe_path.display())))?;
    let tpl: PluginConfig = tpl.try_into().map_err(|e| refuse(format!("{} [plugins.template]: {e}", run.recipe_path.display())))?;
    let cx = Ctx::new(run.recipe_path.display().to_string(), dir);
    let template = cx.plugin_entry("plugins.template".into(), &tpl)?;
    let record = run.record();
    Ok(Dataset { manifest: run.manifest, record, samples: run.samples, template })
}

fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The loss chart: training loss per step and validation loss where measured.
fn loss_chart(log: &[LogLine]) -> Result<Vec<u8>, StageError> {
    let train = Line { name: "train".into(), points: log.iter().filter_map(|l| l.loss.map(|v| (l.step as f64, v))).collect(), dots: false };
    let val = Line { name: "validation".into(), points: log.iter().filter_map(|l| l.val_loss.map(|v| (l.step as f64, v))).collect(), dots: true };
    let lines: Vec<Line> = [train, val].into_iter().filter(|l| !l.points.is_empty()).collect();
    Ok(lines_png("QLoRA loss", "optimizer step", "nats per response token", &lines, (900, 540))
        .map_err(|e| StageError::Invalid(e.to_string()))?)
}

/// Train.
pub fn run(cfg: &TrainConfig, opts: &TrainRunOptions) -> Result<TrainOutcome, StageError> {
    let wall = Instant::now();
    let mut timings = Timings::default();
    let file = cfg.file.display().to_string();
    let data = timings.time("dataset", || read_dataset(cfg))?;
    let test_set = match &cfg.test_set {
        Some(dir) => Some(super::testset::checked_pair(dir, &data.record).map_err(|why| {
            StageError::Invalid(format!("{}: test set \"{}\": {why}", cfg.file.display(), dir.display()))
        })?),
        None => None,
    };

    // The base: the dataset's model, by hash.
    let m = &data.manifest.model;
    let found = timings
        .time("model_hash", || sha256_file(&m.path))
        .map_err(|e| StageError::Invalid(format!("{file}: the dataset's model \"{}\" cannot be read: {e}", m.path.display())))?;
    if found != m.sha256 {
        return Err(StageError::Invalid(format!(
            "{file}: the dataset's model \"{}\" has changed: sha256 {found}, the dataset's manifest says {}",
            m.path.display(),
            m.sha256
        )));
    }
    let tokenizer = Tokenizer::from_gguf_file(&m.path).map_err(|e| StageError::Invalid(format!("model \"{}\": {e}", m.path.display())))?;
    let device = opts.device.open().map_err(|e| StageError::Invalid(format!("{file}: {e}")))?;
    let model = timings
        .time("model_load", || BaseModel::load_on(&m.path, &device))
        .map_err(|e| StageError::Invalid(format!("model \"{}\" on {}: {e}", m.path.display(), opts.device)))?;

    // Render the examples with the run's template.
    let rt = Runtime::with_default_cache()?;
    let loaded = timings.time("plugin_load", || load_plugins(&rt, &file, data.manifest.seed, &[("template", World::PromptTemplate, &data.template)], 0))?;
    let template = &loaded[0];
    let resolved = cfg.resolved_toml(&data.record.sha256);
    let run_dir = cfg.artifacts_dir.join(&cfg.run_id);
    let (run, state) = open_run(&run_dir, &cfg.run_id, "train", &resolved, &mut timings)?;
    let mut log = vec![format!("[{}] kiln train --config {file}: invocation started", now())];
    let mut q = template.fresh_quarantine(&run)?;
    let mut w = template.plugin.worker(template.seed);
    let reqs: Vec<ResponseRequest> = data
        .samples
        .iter()
        .map(|a| ResponseRequest { id: a.sample.id.clone(), instruction_type: a.sample.instruction_type.clone(), instruction: a.sample.instruction.clone() })
        .collect();
    let bar = opts.progress.bar("prompts", reqs.len() as u64, 0);
    let prompts = timings.time(&format!("plugin:{}", template.plugin.name), || batched(&mut w, &mut q, &reqs, 256, &bar, &mut |w, b| w.response_prompts(b)))?;
    bar.finish_and_clear();
    let eos = *tokenizer.eos_ids().first().ok_or_else(|| StageError::Invalid(format!("model \"{}\" names no end-of-sequence token", m.path.display())))?;
    let bos = if tokenizer.add_bos() { tokenizer.bos_id() } else { None };
    let pad = eos;
    let mut examples = Vec::new();
    let mut unrendered = 0;
    for (a, p) in data.samples.iter().zip(&prompts) {
        let Some(p) = p else {
            unrendered += 1;
            continue;
        };
        let tok = |t: &str| tokenizer.encode(t).map_err(|e| StageError::Invalid(format!("sample {}: {e}", a.sample.id)));
        let mut prompt: Vec<u32> = bos.into_iter().collect();
        prompt.extend(tok(&p.text)?);
        let mut response = tok(&a.sample.response)?;
        response.push(eos);
        examples.push(Example { id: a.sample.id.clone(), prompt, response });
    }
    let s = split(examples, cfg.validation_fraction, cfg.max_seq_len, cfg.options.seed);
    let mut options = cfg.options.clone();
    let micro = s.train.len().div_ceil(options.batch_size) * options.epochs;
    let steps = micro.div_ceil(options.grad_accum);
    options.warmup_steps = cfg.warmup_steps.unwrap_or((steps / 10).max(1));
    let mut ex_text = String::new();
    for (part, list) in [("train", &s.train), ("validation", &s.validation)] {
        for e in list.iter() {
            ex_text.push_str(&serde_json::json!({"split": part, "id": e.id, "prompt": e.prompt, "response": e.response}).to_string());
            ex_text.push('\n');
        }
    }
    run.write_atomic(files::EXAMPLES, ex_text.as_bytes())?;

    // Train (resuming from the run's checkpoint when there is one).
    let bar = opts.progress.bar("train steps", steps as u64, 0);
    let watch = crate::model::memory::MemoryWatch::start(&device);
    let t = Instant::now();
    let (adapters, train_log, report) = crate::train::train(&model, &s.train, &s.validation, &options, pad, &run, &|done, _, tps| {
        bar.set_position(done as u64);
        bar.set_message(format!("{tps:.0} tok/s"));
    })
    .map_err(|e| StageError::Invalid(format!("training run \"{}\": {e}", cfg.run_id)))?;
    bar.finish_and_clear();
    timings.add("train", t.elapsed());
    let device_memory = watch.map(|w| w.finish());

    // Outputs.
    let t = Instant::now();
    let base_name = data.manifest.model.name.clone().unwrap_or_else(|| m.path.display().to_string());
    adapters
        .save_peft(&model.cfg, &run.join(files::ADAPTER), &base_name)
        .map_err(|e| StageError::Invalid(format!("training run \"{}\": writing the adapter: {e}", cfg.run_id)))?;
    let png = loss_chart(&train_log)?;
    run.write_atomic(files::LOSS_PNG, &png)?;
    let peak = peak_rss();
    let summary = serde_json::json!({
        "report": report,
        "options": options,
        "split": {"train": s.train.len(), "validation": s.validation.len(), "too_long": s.too_long, "unrendered": unrendered},
        "max_seq_len": cfg.max_seq_len,
        "device": opts.device.to_string(),
        "peak_rss_bytes": peak,
        "device_memory": device_memory,
        "timings": timings.entries(),
    });
    let mut out_files = BTreeMap::new();
    out_files.insert(super::pilot::files::CONFIG.to_string(), sha256_hex(resolved.as_bytes()));
    out_files.insert(files::TRAIN_JSON.to_string(), write_json(&run, files::TRAIN_JSON, &summary)?);
    out_files.insert(files::LOSS_PNG.to_string(), sha256_hex(&png));
    out_files.insert(files::EXAMPLES.to_string(), sha256_hex(ex_text.as_bytes()));
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        let rel = format!("{}/{f}", files::ADAPTER);
        out_files.insert(rel.clone(), sha256_file(&run.join(&rel)).map_err(|e| StageError::Invalid(format!("{}: {e}", run.join(&rel).display())))?);
    }
    for rel in [crate::train::trainer::files::LOG, crate::train::trainer::files::CHECKPOINT] {
        let bytes = run.read_optional(rel)?.unwrap_or_default();
        out_files.insert(rel.to_string(), sha256_hex(&bytes));
    }
    timings.add("io", t.elapsed());
    let mut counts = BTreeMap::new();
    counts.insert("examples".to_string(), data.samples.len() as u64);
    counts.insert("train_examples".to_string(), s.train.len() as u64);
    counts.insert("validation_examples".to_string(), s.validation.len() as u64);
    counts.insert("too_long".to_string(), s.too_long.len() as u64);
    counts.insert("unrendered".to_string(), unrendered as u64);
    counts.insert("steps".to_string(), report.steps as u64);
    let improved = report.improved();
    let mut manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        stage: "train".into(),
        run_id: cfg.run_id.clone(),
        status: "complete".into(),
        started_at: state.started_at.clone(),
        finished_at: now(),
        kiln: kiln_build().clone(),
        environment: environment(),
        config_file: cfg.file.clone(),
        config_hash: state.config_hash.clone(),
        seed: cfg.options.seed,
        count: s.train.len(),
        model: ModelRecord { device: (opts.device != crate::model::DeviceSpec::Cpu).then(|| opts.device.to_string()), ..data.manifest.model.clone() },
        guard: data.manifest.guard.clone(),
        plugins: vec![template.record()],
        sampling: BTreeMap::new(),
        gate: Gate {
            pass: improved,
            reasons: if improved {
                vec![]
            } else {
                vec![format!(
                    "validation loss rose from {:.4} (base) to {:.4}",
                    report.initial_val_loss.unwrap_or(f64::NAN),
                    report.final_val_loss.unwrap_or(f64::NAN)
                )]
            },
        },
        counts,
        files: out_files,
        source: None,
        arms: vec![],
        test_set,
        dataset: Some(data.record.clone()),
        training: Some(summary),
        resources: None,
        review: None,
    };
    let wall_seconds = wall.elapsed().as_secs_f64();
    log.push(format!(
        "[{}] steps {} (resumed from {}), train loss {:?}, validation loss {:?} (base {:?}); wall {wall_seconds:.1}s",
        now(),
        report.steps,
        report.resumed_from,
        report.final_loss,
        report.final_val_loss,
        report.initial_val_loss
    ));
    append_log(&run, "train", &log)?;
    manifest.write_accounted(&run, wall.elapsed())?;
    Ok(TrainOutcome { run_dir, report, too_long: s.too_long.len(), unrendered, peak_rss_bytes: peak, wall_seconds })
}
