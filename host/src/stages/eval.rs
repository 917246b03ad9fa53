//! `kiln eval`: both arms answer every test instruction greedily with their own template and
//! model, the same critic judges every answer (scored on the base model, the judge), and the
//! paired pass/fail outcomes go through McNemar, Wilson, Cohen's h and Benjamini-Hochberg per
//! instruction type and overall. The gate is the exit code: the overall exact McNemar p below
//! `alpha` with the tuned arm ahead.
//!
//! An item passes in an arm when the critic gave it at least one verdict and every verdict
//! passed. An answer the arm could not produce (its template refused or quarantined the item)
//! or the critic quarantined counts as a failure of that arm, so every item stays paired.
//!
//! Answers are checkpointed in chunks like a pilot's completions (`completions/00000` for the
//! base arm, `completions/00001` for the tuned arm), so a killed eval resumes; everything after
//! generation is recomputed from them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::eval::{EvalConfig, TestItem};
use crate::model::Engine;
use crate::plugin::{Prompt, ResponseRequest, Runtime, Sample, Verdict, World};
use crate::provenance::manifest::{environment, kiln_build, now, ArmRecord, FileRecord, Gate, Manifest, PluginRef, MANIFEST_VERSION};
use crate::provenance::sha256_hex;
use crate::stats::{paired, ConfidenceLevel, PairedGroup, PairedReport, PairedStats};

use super::chart::{grouped_rates_png, BarGroup, Rate};
use super::error::StageError;
use super::pilot::{append_log, load_model_spec, model_record, open_run};
use super::process::{batched, load_plugins, process, ProcessOptions, Scorer};
use super::progress::{Progress, Timings};
use super::raw::{generate_phase, GenJob, PhaseRun};
use super::records::{write_json, write_jsonl, Phase, RawCompletion};
use super::report::md_table;

/// File names inside an eval run directory.
pub mod files {
    /// Every answer, verdict and margin, and the statistics.
    pub const EVAL_JSON: &str = "eval.json";
    /// The readable report.
    pub const REPORT_MD: &str = "report.md";
    /// Pass rate per type for both arms with intervals.
    pub const CHART: &str = "pass_rates.png";
    /// Critic records (requests, log-probs, verdicts) per answer.
    pub const CRITIC: &str = "critic/shard-00000.jsonl";
}

/// Sample pairs shown per type in the report where the arms disagree.
pub const DISAGREEMENTS_SHOWN: usize = 5;

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    /// Progress bars.
    pub progress: Progress,
    /// Where the models run (recorded in the manifest).
    pub device: crate::model::DeviceSpec,
}

/// One arm's answer to one item, as judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The answer text ("" when there is none).
    pub text: String,
    /// Why generation stopped ("stop", "eos", "length"), or why there is no answer.
    pub finish_reason: String,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// The item passed in this arm.
    pub pass: bool,
    /// Mean critic margin over the verdicts (absent without verdicts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// The critic's verdicts.
    pub verdicts: Vec<Verdict>,
    /// Why the item has no answer or no verdict, when so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One test item with both arms' answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// Item id.
    pub id: String,
    /// Instruction type.
    pub instruction_type: String,
    /// The instruction.
    pub instruction: String,
    /// The base arm's answer.
    pub base: Answer,
    /// The tuned arm's answer.
    pub tuned: Answer,
}

/// The gate of an eval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalGate {
    /// Passed.
    pub pass: bool,
    /// The significance level.
    pub alpha: f64,
    /// Overall exact McNemar p.
    pub p: f64,
    /// Overall pass rates (base, tuned).
    pub base_rate: f64,
    /// Tuned pass rate.
    pub tuned_rate: f64,
    /// One sentence.
    pub reason: String,
}

/// `eval.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalFileOut {
    /// Run id.
    pub run_id: String,
    /// The gate.
    pub gate: EvalGate,
    /// The statistics per type (file order of first appearance) and overall.
    pub statistics: PairedReport,
    /// Every item.
    pub items: Vec<ItemResult>,
}

/// What a finished eval says.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The gate.
    pub gate: EvalGate,
    /// The statistics.
    pub statistics: PairedReport,
    /// Answers found on disk from an earlier invocation (base, tuned).
    pub resumed: [usize; 2],
    /// Wall time of this invocation, seconds.
    pub wall_seconds: f64,
    /// The manifest written.
    pub manifest: Manifest,
}

/// The critic's sample id of an arm's answer to an item.
fn answer_id(item: &TestItem, arm: &str) -> String {
    format!("{}@{arm}", item.id)
}

fn answer_from(c: Option<&RawCompletion>, problem: Option<String>) -> Answer {
    match c {
        Some(c) => Answer {
            text: c.text.clone(),
            finish_reason: format!("{:?}", c.finish_reason).to_lowercase(),
            completion_tokens: c.completion_tokens,
            pass: false,
            margin: None,
            verdicts: vec![],
            problem,
        },
        None => Answer {
            text: String::new(),
            finish_reason: "none".into(),
            completion_tokens: 0,
            pass: false,
            margin: None,
            verdicts: vec![],
            problem: problem.or_else(|| Some("no answer".into())),
        },
    }
}

/// The gate: overall exact McNemar p below alpha and the tuned arm ahead.
pub fn gate(overall: &PairedStats, alpha: f64) -> EvalGate {
    let n = overall.n.max(1) as f64;
    let (base_rate, tuned_rate) = (overall.base_pass as f64 / n, overall.tuned_pass as f64 / n);
    let significant = overall.mcnemar_p < alpha;
    let ahead = overall.tuned_pass > overall.base_pass;
    let pass = significant && ahead;
    let reason = if pass {
        format!("tuned passes {:.1}% vs base {:.1}% (McNemar p = {:.3e} < {alpha})", tuned_rate * 100.0, base_rate * 100.0, overall.mcnemar_p)
    } else if !ahead {
        format!(
            "tuned is not ahead: {:.1}% vs base {:.1}% (b = {}, c = {}, McNemar p = {:.3e})",
            tuned_rate * 100.0,
            base_rate * 100.0,
            overall.b,
            overall.c,
            overall.mcnemar_p
        )
    } else {
        format!(
            "tuned is ahead ({:.1}% vs {:.1}%) but not significantly: McNemar p = {:.3e} >= alpha {alpha}",
            tuned_rate * 100.0,
            base_rate * 100.0,
            overall.mcnemar_p
        )
    };
    EvalGate { pass, alpha, p: overall.mcnemar_p, base_rate, tuned_rate, reason }
}

/// The statistics of judged items: one group per instruction type (in order of first
/// appearance), BH across the types.
pub fn statistics(items: &[ItemResult], level: f64) -> Result<PairedReport, StageError> {
    let mut order: Vec<String> = Vec::new();
    let mut by_type: BTreeMap<String, (Vec<bool>, Vec<bool>)> = BTreeMap::new();
    for it in items {
        if !by_type.contains_key(&it.instruction_type) {
            order.push(it.instruction_type.clone());
        }
        let e = by_type.entry(it.instruction_type.clone()).or_default();
        e.0.push(it.base.pass);
        e.1.push(it.tuned.pass);
    }
    let groups: Vec<PairedGroup> = order
        .iter()
        .map(|t| {
            let (b, u) = by_type.remove(t).expect("every type has items");
            PairedGroup::new(t.clone(), b, u)
        })
        .collect();
    let level = ConfidenceLevel::new(level).map_err(|e| StageError::Invalid(e.to_string()))?;
    paired(&groups, level).map_err(|e| StageError::Invalid(format!("statistics: {e}")))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn interval(i: &crate::stats::Interval) -> String {
    format!("[{}, {}]", pct(i.lo), pct(i.hi))
}

fn pval(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.4}")
    } else {
        format!("{p:.2e}")
    }
}

fn excerpt(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one.chars().take(max).collect();
    if one.chars().count() > max {
        out.push('…');
    }
    out
}

/// `report.md`.
pub fn markdown(cfg_run_id: &str, arms: &[String; 2], critic: &str, stats: &PairedReport, g: &EvalGate, items: &[ItemResult]) -> String {
    let mut s = String::new();
    s.push_str(&format!("# Eval `{cfg_run_id}`\n\n"));
    s.push_str(&format!("- base arm: {}\n- tuned arm: {}\n- judge: {critic}\n", arms[0], arms[1]));
    s.push_str(&format!("- items: {}; Wilson intervals at {:.0}%; BH across {} types\n\n", stats.overall.n, stats.level.value() * 100.0, stats.groups.len()));
    s.push_str(&format!("**Gate: {}** — {}\n\n", if g.pass { "PASSED" } else { "FAILED" }, g.reason));
    let headers: Vec<String> =
        ["type", "n", "base pass", "base 95% CI", "tuned pass", "tuned 95% CI", "b", "c", "McNemar p", "BH p", "Cohen's h"]
            .iter()
            .map(|h| h.to_string())
            .collect();
    let row = |st: &PairedStats, bh: String| {
        let n = st.n.max(1) as f64;
        vec![
            st.name.clone(),
            st.n.to_string(),
            format!("{} ({})", st.base_pass, pct(st.base_pass as f64 / n)),
            interval(&st.wilson_base),
            format!("{} ({})", st.tuned_pass, pct(st.tuned_pass as f64 / n)),
            interval(&st.wilson_tuned),
            st.b.to_string(),
            st.c.to_string(),
            pval(st.mcnemar_p),
            bh,
            format!("{:+.3}", st.cohens_h),
        ]
    };
    let mut rows: Vec<Vec<String>> = stats.groups.iter().map(|st| row(st, pval(st.p_bh))).collect();
    rows.push(row(&stats.overall, "—".into()));
    s.push_str(&md_table(&headers, &rows));
    s.push_str(
        "\nb: base passes, tuned fails; c: base fails, tuned passes. McNemar p is exact (two-sided binomial on b and c).\n\n",
    );
    s.push_str("![pass rates](pass_rates.png)\n\n## Where the arms disagree\n\n");
    for st in &stats.groups {
        let dis: Vec<&ItemResult> =
            items.iter().filter(|it| it.instruction_type == st.name && it.base.pass != it.tuned.pass).take(DISAGREEMENTS_SHOWN).collect();
        s.push_str(&format!("### {} ({} of {} items disagree)\n\n", st.name, st.b + st.c, st.n));
        if dis.is_empty() {
            s.push_str("No disagreements.\n\n");
            continue;
        }
        let headers: Vec<String> = ["id", "instruction", "base answer", "base", "tuned answer", "tuned"].iter().map(|h| h.to_string()).collect();
        let verdict = |a: &Answer| {
            let m = a.margin.map(|m| format!(" ({m:+.2})")).unwrap_or_default();
            format!("{}{m}", if a.pass { "pass" } else { "fail" })
        };
        let rows: Vec<Vec<String>> = dis
            .iter()
            .map(|it| {
                vec![
                    it.id.clone(),
                    excerpt(&it.instruction, 80),
                    excerpt(&it.base.text, 120),
                    verdict(&it.base),
                    excerpt(&it.tuned.text, 120),
                    verdict(&it.tuned),
                ]
            })
            .collect();
        s.push_str(&md_table(&headers, &rows));
        s.push('\n');
    }
    s
}

/// The chart: pass rate per type and overall, both arms, Wilson intervals.
pub fn chart(stats: &PairedReport) -> Result<Vec<u8>, StageError> {
    let rate = |pass: u64, n: u64, i: &crate::stats::Interval| Rate { value: pass as f64 / n.max(1) as f64, lo: i.lo, hi: i.hi };
    let groups: Vec<BarGroup> = stats
        .groups
        .iter()
        .chain(std::iter::once(&stats.overall))
        .map(|st| BarGroup {
            label: format!("{} (n={})", st.name, st.n),
            rates: vec![rate(st.base_pass, st.n, &st.wilson_base), rate(st.tuned_pass, st.n, &st.wilson_tuned)],
        })
        .collect();
    let width = (220 * groups.len() as u32).clamp(640, 1800);
    let y = format!("pass rate (critic), {:.0}% Wilson interval", stats.level.value() * 100.0);
    grouped_rates_png("Pass rate per instruction type", &y, &["base", "tuned"], &groups, (width, 520))
        .map_err(|e| StageError::Invalid(e.to_string()))
}

/// An arm whose adapter comes from a `kiln train` run is judged on a test set that `kiln
/// testset` checked against that run's training data; anything else is refused. (An adapter
/// from elsewhere has no known training data to check against.)
fn check_pairs(cfg: &EvalConfig) -> Result<(), StageError> {
    for arm in &cfg.arms {
        let Some((dir, _)) = &arm.adapter else { continue };
        let Some(train_dir) = dir.parent() else { continue };
        let Ok(m) = Manifest::read(train_dir) else { continue };
        let Some(dataset) = m.dataset.as_ref().filter(|_| m.stage == "train") else { continue };
        let refuse = |why: String| {
            StageError::Invalid(format!(
                "{}: the {} arm's adapter was trained on {} ({}); test set \"{}\": {why}",
                cfg.file.display(),
                arm.name,
                dataset.run_id,
                dataset.run_dir.join(&dataset.file).display(),
                cfg.test_set.display()
            ))
        };
        let run = cfg.test_set_run.as_ref().ok_or_else(|| {
            refuse(format!(
                "is a plain file, never checked against that training data; make one with `kiln testset --dataset {}` and name its folder",
                dataset.run_dir.display()
            ))
        })?;
        super::testset::checked_pair(run, dataset).map_err(refuse)?;
    }
    Ok(())
}

/// Run an eval.
pub fn run(cfg: &EvalConfig, opts: &EvalOptions) -> Result<EvalOutcome, StageError> {
    let wall = Instant::now();
    let mut timings = Timings::default();
    let progress = &opts.progress;
    let file = cfg.file.display().to_string();

    check_pairs(cfg)?;

    // Plugins: the two templates, then the critic.
    let rt = Runtime::with_default_cache()?;
    let fields = [
        ("template", World::PromptTemplate, &cfg.arms[0].template),
        ("template", World::PromptTemplate, &cfg.arms[1].template),
        ("critic", World::Critic, &cfg.critic),
    ];
    let loaded = timings.time("plugin_load", || load_plugins(&rt, &file, cfg.seed, &fields, 0))?;

    // Models: the base model is the judge; an arm with a model of its own loads it once.
    let (base_engine, base_guard) = load_model_spec(&cfg.model, &cfg.file, "model", opts.device, &mut timings)?;
    let mut own: Vec<Option<(Engine, crate::model::guard::GuardReport)>> = Vec::new();
    for arm in &cfg.arms {
        let field = if arm.model.is_some() { format!("{}.model", arm.name) } else { "model".to_string() };
        let mut loaded = match &arm.model {
            Some(spec) if spec.choice != cfg.model.choice => Some(load_model_spec(spec, &cfg.file, &field, opts.device, &mut timings)?),
            // An adapter changes the weights: the arm gets its own copy of the model.
            _ if arm.adapter.is_some() => Some(load_model_spec(&cfg.arm_model(arm), &cfg.file, &field, opts.device, &mut timings)?),
            _ => None,
        };
        if let (Some((engine, _)), Some((dir, _))) = (loaded.as_mut(), &arm.adapter) {
            let adapters = crate::train::Adapters::load_peft(&engine.model.cfg, dir)
                .and_then(|a| a.attach(&mut engine.model).map(|_| a))
                .map_err(|e| StageError::Invalid(format!("{}: {}.adapter: {e}", cfg.file.display(), arm.name)))?;
            tracing::info!(arm = arm.name, adapter = %dir.display(), r = adapters.config.r, "adapter attached");
        }
        own.push(loaded);
    }
    let engine_of = |k: usize| own[k].as_ref().map_or(&base_engine, |(e, _)| e);
    let guard_of = |k: usize| own[k].as_ref().map_or(&base_guard, |(_, g)| g);

    let shas = [loaded[0].plugin.sha256.clone(), loaded[1].plugin.sha256.clone(), loaded[2].plugin.sha256.clone()];
    let models = [(engine_of(0).info.path.clone(), engine_of(0).info.sha256.clone()), (engine_of(1).info.path.clone(), engine_of(1).info.sha256.clone())];
    let resolved = cfg.resolved_toml(&shas, &models);
    let run_dir = cfg.artifacts_dir.join(&cfg.run_id);
    let (run, state) = open_run(&run_dir, &cfg.run_id, "eval", &resolved, &mut timings)?;
    let mut log = vec![format!("[{}] kiln eval --config {}: invocation started", now(), file)];

    // Each arm: prompts from its template, greedy answers from its model.
    let items: &[TestItem] = &cfg.items;
    let mut answers: Vec<BTreeMap<usize, RawCompletion>> = Vec::new();
    let mut problems: Vec<BTreeMap<usize, String>> = Vec::new();
    let mut resumed = [0usize; 2];
    let mut written = 0usize;
    for (k, arm) in cfg.arms.iter().enumerate() {
        let template = &loaded[k];
        let mut q = template.fresh_quarantine(&run)?;
        let mut w = template.plugin.worker(template.seed);
        let reqs: Vec<ResponseRequest> = items
            .iter()
            .map(|it| ResponseRequest { id: it.id.clone(), instruction_type: it.instruction_type.clone(), instruction: it.instruction.clone() })
            .collect();
        let bar = progress.bar(&format!("{} prompts", arm.name), reqs.len() as u64, 0);
        let t = Instant::now();
        let prompts: Vec<Option<Prompt>> = batched(&mut w, &mut q, &reqs, cfg.plugin_batch_size, &bar, &mut |w, b| w.response_prompts(b))?;
        bar.finish_and_clear();
        timings.add(&format!("plugin:{}", template.plugin.name), t.elapsed());
        let mut arm_problems = BTreeMap::new();
        for e in q.entries() {
            if let Some(i) = items.iter().position(|it| it.id == e.record_id) {
                arm_problems.insert(i, format!("template {} quarantined the item: {}", template.plugin.name, e.message));
            }
        }
        let jobs: Vec<GenJob> = prompts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.as_ref().map(|p| GenJob {
                    index: i,
                    id: items[i].id.clone(),
                    prompt: p.text.clone(),
                    stop: p.stop.clone(),
                    max_tokens: cfg.sampling.budget(p.max_tokens),
                    seed: 0,
                    stop_after_text: cfg.sampling.stop_after_text,
                })
            })
            .collect();
        let phase_run = PhaseRun {
            engine: engine_of(k),
            run: &run,
            shard: k as u64,
            sampling: &cfg.sampling,
            batch_size: cfg.batch_size,
            chunk_size: cfg.chunk_size,
            progress,
            written: &mut written,
        };
        let (done, r) = generate_phase(phase_run, Phase::Response, &jobs, &mut timings)?;
        resumed[k] = r;
        answers.push(done);
        problems.push(arm_problems);
    }

    // The critic judges every answer, scored on the judge (the base model).
    let critic = &loaded[2];
    let mut samples = Vec::new();
    for (k, arm) in cfg.arms.iter().enumerate() {
        for (i, it) in items.iter().enumerate() {
            if let Some(c) = answers[k].get(&i) {
                samples.push(Sample {
                    id: answer_id(it, arm.name),
                    instruction_type: it.instruction_type.clone(),
                    instruction: it.instruction.clone(),
                    response: c.text.clone(),
                    instruction_generation: Default::default(),
                    response_generation: c.generation(),
                    verdicts: vec![],
                    metadata: Default::default(),
                });
            }
        }
    }
    let mut scorer = Scorer::with_engine(&base_engine, cfg.batch_size);
    let popts = ProcessOptions { run: &run, plugin_batch: cfg.plugin_batch_size, critic_filter: false, progress };
    let processed = process(samples, &[], &[critic], &[], &mut scorer, &popts, &mut timings)?;
    let judged: BTreeMap<&str, &Sample> = processed.judged.iter().map(|s| (s.id.as_str(), s)).collect();

    let mut results = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let mut arm_answers = Vec::with_capacity(2);
        for (k, arm) in cfg.arms.iter().enumerate() {
            let mut a = answer_from(answers[k].get(&i), problems[k].get(&i).cloned());
            if answers[k].contains_key(&i) {
                match judged.get(answer_id(it, arm.name).as_str()) {
                    Some(s) => {
                        a.verdicts = s.verdicts.clone();
                        a.pass = !s.verdicts.is_empty() && s.verdicts.iter().all(|v| v.pass);
                        if !s.verdicts.is_empty() {
                            a.margin = Some(s.verdicts.iter().map(|v| v.margin).sum::<f64>() / s.verdicts.len() as f64);
                        } else {
                            a.problem = Some(format!("critic {} gave no verdict", critic.plugin.name));
                        }
                    }
                    None => a.problem = Some(format!("critic {} quarantined the answer", critic.plugin.name)),
                }
            }
            arm_answers.push(a);
        }
        let tuned = arm_answers.pop().expect("two arms");
        let base = arm_answers.pop().expect("two arms");
        results.push(ItemResult { id: it.id.clone(), instruction_type: it.instruction_type.clone(), instruction: it.instruction.clone(), base, tuned });
    }

    // Statistics, gate, reports.
    let t = Instant::now();
    let stats = statistics(&results, cfg.level)?;
    let g = gate(&stats.overall, cfg.alpha);
    let out = EvalFileOut { run_id: cfg.run_id.clone(), gate: g.clone(), statistics: stats.clone(), items: results.clone() };
    let mut out_files = BTreeMap::new();
    out_files.insert(super::pilot::files::CONFIG.to_string(), sha256_hex(resolved.as_bytes()));
    out_files.insert(files::EVAL_JSON.to_string(), write_json(&run, files::EVAL_JSON, &out)?);
    out_files.insert(files::CRITIC.to_string(), write_jsonl(&run, files::CRITIC, &processed.critic_records)?);
    let arm_desc = |k: usize| {
        let e = engine_of(k);
        format!(
            "model `{}` (sha256 {}…), template {} (sha256 {}…)",
            e.info.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            &e.info.sha256[..12],
            loaded[k].plugin.name,
            &loaded[k].plugin.sha256[..12]
        )
    };
    let critic_desc = format!("{} (sha256 {}…) on the base model", critic.plugin.name, &critic.plugin.sha256[..12]);
    let md = markdown(&cfg.run_id, &[arm_desc(0), arm_desc(1)], &critic_desc, &stats, &g, &results);
    run.write_atomic(files::REPORT_MD, md.as_bytes())?;
    out_files.insert(files::REPORT_MD.to_string(), sha256_hex(md.as_bytes()));
    let png = chart(&stats)?;
    run.write_atomic(files::CHART, &png)?;
    out_files.insert(files::CHART.to_string(), sha256_hex(&png));
    for l in &loaded {
        let bytes = run.read_optional(&l.quarantine)?.unwrap_or_default();
        out_files.insert(l.quarantine.clone(), sha256_hex(&bytes));
    }
    timings.add("io", t.elapsed());

    let build = kiln_build();
    let records: Vec<_> = loaded.iter().map(|l| l.record()).collect();
    let arms: Vec<ArmRecord> = cfg
        .arms
        .iter()
        .enumerate()
        .map(|(k, arm)| ArmRecord {
            name: arm.name.to_string(),
            model: model_record(engine_of(k)),
            guard: serde_json::to_value(guard_of(k)).expect("serialises"),
            template: PluginRef::from(&records[k]),
            adapter: arm.adapter.as_ref().map(|(dir, sha)| FileRecord { path: dir.clone(), sha256: sha.clone(), records: 1 }),
        })
        .collect();
    let mut counts = BTreeMap::new();
    counts.insert("items".to_string(), items.len() as u64);
    counts.insert("base_pass".to_string(), stats.overall.base_pass);
    counts.insert("tuned_pass".to_string(), stats.overall.tuned_pass);
    counts.insert("b".to_string(), stats.overall.b);
    counts.insert("c".to_string(), stats.overall.c);
    for (k, arm) in cfg.arms.iter().enumerate() {
        counts.insert(format!("{}_answered", arm.name), answers[k].len() as u64);
    }
    counts.insert("critic_quarantined".to_string(), processed.quarantined.values().sum::<usize>() as u64);
    let mut sampling = BTreeMap::new();
    sampling.insert("answers".to_string(), serde_json::to_value(cfg.sampling).expect("serialises"));
    let mut manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        stage: "eval".into(),
        run_id: cfg.run_id.clone(),
        status: "complete".into(),
        started_at: state.started_at.clone(),
        finished_at: String::new(),
        kiln: build.clone(),
        environment: environment(),
        config_file: cfg.file.clone(),
        config_hash: state.config_hash.clone(),
        seed: cfg.seed,
        count: items.len(),
        model: model_record(&base_engine),
        guard: serde_json::to_value(&base_guard).expect("serialises"),
        plugins: records,
        sampling,
        gate: Gate { pass: g.pass, reasons: if g.pass { vec![] } else { vec![g.reason.clone()] } },
        counts,
        files: out_files,
        source: None,
        arms,
        test_set: Some(FileRecord { path: cfg.test_set.clone(), sha256: cfg.test_set_sha256.clone(), records: items.len() }),
        dataset: None,
        training: None,
        resources: None,
        review: None,
    };
    manifest.finished_at = now();
    let wall_seconds = wall.elapsed().as_secs_f64();
    log.push(format!(
        "[{}] resumed {} base and {} tuned answers; generated {written}; gate {}; wall {wall_seconds:.1}s",
        now(),
        resumed[0],
        resumed[1],
        if g.pass { "PASSED" } else { "FAILED" }
    ));
    append_log(&run, "eval", &log)?;
    manifest.write_accounted(&run, wall.elapsed())?;
    Ok(EvalOutcome { run_dir, gate: g, statistics: stats, resumed, wall_seconds, manifest })
}
