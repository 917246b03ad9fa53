//! The plugin half of a pilot, shared with replay: the cleaner chain, the critics (two phases,
//! with the host scoring every request in batches in between), the QC rules and the gate.
//! Plugin calls are batched; failing records are isolated into the quarantine.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::pilot::PluginEntry;
use crate::model::{BatchOptions, Engine};
use crate::plugin::{
    CleanOutcome, Plugin, PluginError, QcReport, Quarantine, RecordId, Runtime, Sample, Score, ScoreRequest, Supervisor, Verdict,
    Worker, World,
};
use crate::provenance::manifest::PluginRecord;
use crate::sandbox::RunDir;

use super::error::StageError;
use super::progress::{Progress, Timings};
use super::records::{CriticRecord, Dropped, ScoredRequest};
use super::seeds::derive_seed;

/// A plugin loaded for a config field, with its quarantine file.
pub struct Loaded {
    /// Its role: "template", "cleaner", "critic", "qc-rule".
    pub role: &'static str,
    /// The config field that named it.
    pub field: String,
    /// The plugin.
    pub plugin: Plugin,
    /// Its quarantine file inside the run (`quarantine/<name>.jsonl`).
    pub quarantine: String,
    /// Its worker's seed.
    pub seed: u64,
}

impl Loaded {
    /// The manifest's record of it.
    pub fn record(&self) -> PluginRecord {
        let p = &self.plugin;
        PluginRecord {
            role: self.role.to_string(),
            field: self.field.clone(),
            name: p.name.clone(),
            world: p.world.to_string(),
            version: p.version.clone(),
            wit_version: p.wit_version.clone(),
            sha256: p.sha256.clone(),
            path: p.spec.path.clone(),
        }
    }

    /// A fresh quarantine for this invocation: previous entries are cleared (plugin work is
    /// recomputed on every invocation, so a resumed run quarantines what an uninterrupted one
    /// does, once).
    pub fn fresh_quarantine(&self, run: &RunDir) -> Result<Quarantine, StageError> {
        run.write_atomic(&self.quarantine, b"")?;
        Ok(Quarantine::at(RunDir::create(run.path())?, &self.quarantine)?)
    }
}

/// Load the plugins of a config, checking each one's world against its field. Plugin `k` of
/// `entries` is the `first + k`-th of the config (template 0, then cleaners, critics, QC rules);
/// its worker's random source is seeded from that position and the run seed.
pub fn load_plugins(
    rt: &Runtime,
    file: &str,
    run_seed: u64,
    entries: &[(&'static str, World, &PluginEntry)],
    first: usize,
) -> Result<Vec<Loaded>, StageError> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (k, (role, world, e)) in entries.iter().enumerate() {
        let plugin = rt
            .load(&e.spec)
            .map_err(|source| StageError::PluginLoad { file: file.to_string(), field: e.field.clone(), error: Box::new(source) })?;
        if plugin.world != *world {
            return Err(super::error::WrongWorld {
                file: file.to_string(),
                field: e.field.clone(),
                path: e.spec.path.clone(),
                sha256: plugin.sha256.clone(),
                name: plugin.name.clone(),
                found: plugin.world.to_string(),
                expected: world.to_string(),
            }
            .into());
        }
        let n = names.entry(plugin.name.clone()).or_insert(0);
        *n += 1;
        let safe: String =
            plugin.name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
        let quarantine = if *n == 1 { format!("quarantine/{safe}.jsonl") } else { format!("quarantine/{safe}-{n}.jsonl") };
        out.push(Loaded { role, field: e.field.clone(), plugin, quarantine, seed: derive_seed(run_seed, 0, (first + k) as u64, "plugin") });
    }
    Ok(out)
}

/// Call a plugin on `items` in batches of `batch` through a supervisor; one result per item,
/// `None` for a quarantined item.
pub fn batched<I, O>(
    worker: &mut Worker<'_>,
    quarantine: &mut Quarantine,
    items: &[I],
    batch: usize,
    bar: &indicatif::ProgressBar,
    f: &mut dyn FnMut(&mut Worker<'_>, &[I]) -> Result<Vec<O>, PluginError>,
) -> Result<Vec<Option<O>>, PluginError>
where
    I: RecordId + Serialize,
{
    let mut sup = Supervisor::new(worker, quarantine);
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch.max(1)) {
        out.extend(sup.per_record(chunk, &mut |w, b| f(w, b))?);
        bar.inc(chunk.len() as u64);
    }
    Ok(out)
}

/// Log-probabilities of A/B answers: from a cache (a replayed run's stored scores) or the
/// model, loaded only if something is not in the cache.
pub struct Scorer<'e> {
    cache: HashMap<(String, String, String), (f64, f64)>,
    engine: EngineSlot<'e>,
    batch: usize,
    /// Requests answered from the cache.
    pub cached: usize,
    /// Requests scored by the model.
    pub computed: usize,
}

enum EngineSlot<'e> {
    Borrowed(&'e Engine),
    Owned(Box<Engine>),
    Lazy(Box<dyn FnOnce() -> Result<Engine, StageError> + 'e>),
    Empty,
}

impl<'e> Scorer<'e> {
    /// Score with a loaded model.
    pub fn with_engine(engine: &'e Engine, batch: usize) -> Self {
        Scorer { cache: HashMap::new(), engine: EngineSlot::Borrowed(engine), batch, cached: 0, computed: 0 }
    }

    /// Score from `cache` where possible, loading the model with `load` only when needed.
    pub fn lazy(
        cache: HashMap<(String, String, String), (f64, f64)>,
        load: Box<dyn FnOnce() -> Result<Engine, StageError> + 'e>,
        batch: usize,
    ) -> Self {
        Scorer { cache, engine: EngineSlot::Lazy(load), batch, cached: 0, computed: 0 }
    }

    fn engine(&mut self) -> Result<&Engine, StageError> {
        if matches!(self.engine, EngineSlot::Lazy(_)) {
            let EngineSlot::Lazy(load) = std::mem::replace(&mut self.engine, EngineSlot::Empty) else { unreachable!() };
            self.engine = EngineSlot::Owned(Box::new(load()?));
        }
        match &self.engine {
            EngineSlot::Borrowed(e) => Ok(e),
            EngineSlot::Owned(e) => Ok(e),
            _ => Err(StageError::Invalid("the model could not be loaded for scoring".into())),
        }
    }

    /// (logprob A, logprob B) for each request, in order.
    pub fn score(&mut self, reqs: &[&ScoreRequest], progress: &Progress, timings: &mut Timings) -> Result<Vec<(f64, f64)>, StageError> {
        let key = |r: &ScoreRequest| (r.prompt.clone(), r.answer_a.clone(), r.answer_b.clone());
        let mut missing: Vec<(String, String, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in reqs {
            let k = key(r);
            if !self.cache.contains_key(&k) && seen.insert(k.clone()) {
                missing.push(k);
            }
        }
        self.cached += reqs.len() - missing.len();
        if !missing.is_empty() {
            let batch = self.batch;
            let bar = progress.bar("scoring", missing.len() as u64, 0);
            let t_load = Instant::now();
            let engine = self.engine()?;
            let load = t_load.elapsed();
            let t = Instant::now();
            let mut results = Vec::with_capacity(missing.len());
            // A few batches per call, so the bar moves.
            for chunk in missing.chunks(batch.max(1) * 4) {
                let mreqs: Vec<crate::model::ScoreRequest> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (p, a, b))| crate::model::ScoreRequest { id: format!("r{i}"), prompt: p.clone(), candidates: vec![a.clone(), b.clone()] })
                    .collect();
                let scored = engine.score(&mreqs, BatchOptions { max_batch: batch })?;
                for s in scored {
                    results.push((s.logprobs[0], s.logprobs[1]));
                }
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            timings.add("model_load", load);
            timings.add("scoring", t.elapsed());
            self.computed += missing.len();
            for (k, v) in missing.into_iter().zip(results) {
                self.cache.insert(k, v);
            }
        }
        Ok(reqs.iter().map(|r| self.cache[&key(r)]).collect())
    }
}

/// One QC rule's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleReport {
    /// The rule's name.
    pub plugin: String,
    /// Its sha256.
    pub sha256: String,
    /// Its report.
    pub report: QcReport,
}

/// What the plugins made of a set of samples.
#[derive(Debug, Clone, Default)]
pub struct Processed {
    /// Samples the cleaner chain kept.
    pub cleaned: usize,
    /// After the cleaners and critics, with verdicts: the set QC judged.
    pub judged: Vec<Sample>,
    /// Accepted (judged, minus critic failures when filtering).
    pub accepted: Vec<Sample>,
    /// Dropped by cleaners and critics.
    pub dropped: Vec<Dropped>,
    /// Per sample and critic.
    pub critic_records: Vec<CriticRecord>,
    /// Quarantined records per plugin name.
    pub quarantined: BTreeMap<String, usize>,
    /// QC reports, one per rule.
    pub rules: Vec<RuleReport>,
    /// The gate passed.
    pub pass: bool,
    /// Why not.
    pub reasons: Vec<String>,
}

/// How to process.
pub struct ProcessOptions<'a> {
    /// The run directory (quarantine files).
    pub run: &'a RunDir,
    /// Records per plugin call.
    pub plugin_batch: usize,
    /// Drop samples that fail a critic verdict.
    pub critic_filter: bool,
    /// Bars.
    pub progress: &'a Progress,
}

fn group<T>(items: Vec<T>, ids: &[Sample], key: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let pos: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let mut per: Vec<Vec<T>> = ids.iter().map(|_| Vec::new()).collect();
    for it in items {
        if let Some(&i) = pos.get(key(&it)) {
            per[i].push(it);
        }
    }
    per
}

/// Run the cleaners, critics and QC rules on `samples`.
pub fn process(
    samples: Vec<Sample>,
    cleaners: &[&Loaded],
    critics: &[&Loaded],
    qc_rules: &[&Loaded],
    scorer: &mut Scorer<'_>,
    opts: &ProcessOptions<'_>,
    timings: &mut Timings,
) -> Result<Processed, StageError> {
    let mut out = Processed::default();
    let mut current = samples;

    for c in cleaners {
        let p = &c.plugin;
        let mut q = c.fresh_quarantine(opts.run)?;
        let mut w = p.worker(c.seed);
        let bar = opts.progress.bar(&format!("clean {}", p.name), current.len() as u64, 0);
        let t = Instant::now();
        let results = batched(&mut w, &mut q, &current, opts.plugin_batch, &bar, &mut |w, b| w.clean(b))?;
        timings.add(&format!("plugin:{}", p.name), t.elapsed());
        bar.finish_and_clear();
        let mut kept = Vec::with_capacity(current.len());
        for (s, r) in current.into_iter().zip(results) {
            match r {
                Some(CleanOutcome::Keep { sample }) => kept.push(sample),
                Some(CleanOutcome::Dropped { code, detail }) => out.dropped.push(Dropped {
                    id: s.id.clone(),
                    stage: "cleaner".into(),
                    plugin: p.name.clone(),
                    plugin_sha256: p.sha256.clone(),
                    code,
                    detail,
                    sample: Some(s),
                }),
                None => *out.quarantined.entry(p.name.clone()).or_default() += 1,
            }
        }
        current = kept;
    }

    out.cleaned = current.len();

    for c in critics {
        let p = &c.plugin;
        let mut q = c.fresh_quarantine(opts.run)?;
        let mut w = p.worker(c.seed);
        // Phase 1: what the critic wants scored.
        let bar = opts.progress.bar(&format!("{} (ask)", p.name), current.len() as u64, 0);
        let t = Instant::now();
        let asked = batched(&mut w, &mut q, &current, opts.plugin_batch, &bar, &mut |w, b| {
            Ok(group(w.score_requests(b)?, b, |r: &ScoreRequest| &r.sample_id))
        })?;
        timings.add(&format!("plugin:{}", p.name), t.elapsed());
        bar.finish_and_clear();
        let mut alive = Vec::with_capacity(current.len());
        let mut requests: Vec<Vec<ScoreRequest>> = Vec::with_capacity(current.len());
        for (s, r) in current.into_iter().zip(asked) {
            match r {
                Some(reqs) => {
                    alive.push(s);
                    requests.push(reqs);
                }
                None => *out.quarantined.entry(p.name.clone()).or_default() += 1,
            }
        }
        // The host scores every request in batches.
        let flat: Vec<&ScoreRequest> = requests.iter().flatten().collect();
        let lp = scorer.score(&flat, opts.progress, timings)?;
        let mut lp_iter = lp.into_iter();
        let scored: Vec<Vec<(ScoreRequest, (f64, f64))>> =
            requests.into_iter().map(|rs| rs.into_iter().map(|r| (r, lp_iter.next().expect("one score per request"))).collect()).collect();
        let by_id: HashMap<String, Vec<Score>> = alive
            .iter()
            .zip(&scored)
            .map(|(s, rs)| {
                (
                    s.id.clone(),
                    rs.iter()
                        .map(|(r, (a, b))| Score { sample_id: r.sample_id.clone(), aspect: r.aspect.clone(), logprob_a: *a, logprob_b: *b })
                        .collect(),
                )
            })
            .collect();
        // Phase 2: verdicts.
        let bar = opts.progress.bar(&format!("{} (decide)", p.name), alive.len() as u64, 0);
        let t = Instant::now();
        let decided = batched(&mut w, &mut q, &alive, opts.plugin_batch, &bar, &mut |w, b| {
            let scores: Vec<Score> = b.iter().flat_map(|s| by_id.get(&s.id).cloned().unwrap_or_default()).collect();
            Ok(group(w.decide(b, &scores)?, b, |j| &j.sample_id))
        })?;
        timings.add(&format!("plugin:{}", p.name), t.elapsed());
        bar.finish_and_clear();
        let mut next = Vec::with_capacity(alive.len());
        for ((mut s, rs), d) in alive.into_iter().zip(scored).zip(decided) {
            match d {
                Some(judged) => {
                    let verdicts: Vec<Verdict> = judged.into_iter().map(|j| j.verdict).collect();
                    out.critic_records.push(CriticRecord {
                        sample_id: s.id.clone(),
                        critic: p.name.clone(),
                        critic_sha256: p.sha256.clone(),
                        scores: rs
                            .into_iter()
                            .map(|(r, (a, b))| ScoredRequest {
                                aspect: r.aspect,
                                prompt: r.prompt,
                                answer_a: r.answer_a,
                                answer_b: r.answer_b,
                                logprob_a: a,
                                logprob_b: b,
                            })
                            .collect(),
                        verdicts: verdicts.clone(),
                    });
                    s.verdicts.extend(verdicts);
                    next.push(s);
                }
                None => *out.quarantined.entry(p.name.clone()).or_default() += 1,
            }
        }
        current = next;
    }

    // QC rules judge the whole set at once (their rates are over the set).
    let mut reasons = Vec::new();
    for r in qc_rules {
        let p = &r.plugin;
        let mut w = p.worker(r.seed);
        let t = Instant::now();
        let report = w.evaluate(&current)?;
        timings.add(&format!("plugin:{}", p.name), t.elapsed());
        for reason in &report.reasons {
            reasons.push(format!("{}: {reason}", p.name));
        }
        if !report.pass && report.reasons.is_empty() {
            reasons.push(format!("{}: failed (the rule gave no reason)", p.name));
        }
        out.rules.push(RuleReport { plugin: p.name.clone(), sha256: p.sha256.clone(), report });
    }
    out.pass = out.rules.iter().all(|r| r.report.pass);
    out.reasons = reasons;

    for s in &current {
        let failing: Vec<&Verdict> = s.verdicts.iter().filter(|v| !v.pass).collect();
        if opts.critic_filter && !failing.is_empty() {
            let first = failing[0];
            let sha = critics.iter().find(|c| c.plugin.name == first.critic).map(|c| c.plugin.sha256.clone()).unwrap_or_default();
            out.dropped.push(Dropped {
                id: s.id.clone(),
                stage: "critic".into(),
                plugin: first.critic.clone(),
                plugin_sha256: sha,
                code: format!("critic-{}", first.aspect),
                detail: failing.iter().map(|v| format!("{}: {}", v.critic, v.reason)).collect::<Vec<_>>().join("; "),
                sample: Some(s.clone()),
            });
        } else {
            out.accepted.push(s.clone());
        }
    }
    out.judged = current;
    Ok(out)
}
