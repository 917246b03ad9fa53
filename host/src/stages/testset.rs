//! `kiln testset`: the held-out evaluation set, kept apart from a training dataset.
//!
//! The instructions come from the model, through the dataset's own recipe (model, template,
//! cleaners, critics and sampling of the pilot config that made the dataset), with the test
//! set's own seed. They are generated in rounds (`rounds/round-NN/`, pilot-style run folders,
//! seeded from (seed, 1_000_000 + round, index)): each round asks for the missing items of each
//! type, times `oversample`. Every accepted candidate is checked against the training set: an
//! exact repeat of a training instruction, a near-duplicate of one (word n-gram Jaccard, the
//! cleaner's measure), or a share of its word n-grams found in the training instructions or
//! responses at or above `max_overlap` is refused, as is a repeat of an earlier test item. A
//! type that cannot be filled within `max_rounds` is an error, never a silent shortfall.
//!
//! Outputs: `testset.jsonl` ({id, instruction_type, instruction}, the form `kiln eval` reads),
//! `contamination.json` (the check: settings, every refused candidate and why), and
//! `manifest.json`, whose `dataset` names the training set it was checked against. Finished
//! rounds are kept, so an interrupted or failed run resumes where it stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::dataset::{open_gated, GatedRun};
use super::error::StageError;
use super::pilot::{self, append_log, files, run_slice, PilotOptions, Slice};
use super::progress::{Progress, Timings};
use super::scale::exact_key;
use super::records::{write_json, write_jsonl, Accepted};
use crate::config::eval::TestItem;
use crate::config::pilot::{Overrides, PilotConfig};
use crate::config::testset::TestsetConfig;
use crate::provenance::manifest::{environment, kiln_build, now, DatasetRecord, FileRecord, Gate, Manifest, MANIFEST_VERSION};
use crate::provenance::sha256_hex;

/// File names inside a test-set run.
pub mod testset_files {
    /// The test items.
    pub const TESTSET: &str = "testset.jsonl";
    /// The contamination check.
    pub const CONTAMINATION: &str = "contamination.json";
    /// The generation rounds.
    pub const ROUNDS: &str = "rounds";
}

/// Seeds of round `r` use shard number `ROUND_SHARD_BASE + r`, apart from any pilot or scale.
pub const ROUND_SHARD_BASE: u64 = 1_000_000;

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct TestsetOptions {
    /// Progress bars.
    pub progress: Progress,
    /// Where the model runs (a placement, not part of the recipe).
    pub device: crate::model::DeviceSpec,
}

/// A candidate the check refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    /// The candidate's id.
    pub id: String,
    /// Its type.
    pub instruction_type: String,
    /// Its instruction.
    pub instruction: String,
    /// "exact", "near-duplicate", "ngram-overlap" or "repeat-in-test-set".
    pub reason: String,
    /// The evidence.
    pub detail: String,
}

/// `contamination.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContaminationReport {
    /// The training set checked against.
    pub dataset: DatasetRecord,
    /// Overlap n-gram size.
    pub ngram: usize,
    /// Overlap share at which a candidate is refused.
    pub max_overlap: f64,
    /// Near-duplicate n-gram size.
    pub near_ngram: usize,
    /// Near-duplicate threshold.
    pub near_threshold: f64,
    /// Candidates checked.
    pub checked: usize,
    /// Items kept.
    pub kept: usize,
    /// The largest overlap share among the kept items.
    pub max_overlap_kept: f64,
    /// Refused candidates.
    pub refused: Vec<Refused>,
    /// Rounds of generation used.
    pub rounds: usize,
}

/// What a finished test set reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestsetOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Items per type.
    pub per_type: BTreeMap<String, usize>,
    /// The check.
    pub contamination: ContaminationReport,
    /// Wall time.
    pub wall_seconds: f64,
}

/// The training set's text, indexed for the check.
struct TrainingIndex {
    exact: HashMap<String, String>,
    near: kiln_text::NearDupIndex,
    grams: HashSet<u64>,
}

impl TrainingIndex {
    fn new(samples: &[Accepted], ngram: usize, near_ngram: usize) -> TrainingIndex {
        let mut exact = HashMap::new();
        let mut near = kiln_text::NearDupIndex::new(near_ngram);
        let mut grams = HashSet::new();
        for a in samples {
            let s = &a.sample;
            exact.entry(exact_key(&s.instruction)).or_insert_with(|| s.id.clone());
            near.insert(s.id.clone(), &s.instruction);
            for text in [&s.instruction, &s.response] {
                grams.extend(kiln_text::GramSet::of(text, ngram).hashes().iter().copied());
            }
        }
        TrainingIndex { exact, near, grams }
    }
}

/// The check of one candidate against the training set and the items kept so far: None when
/// clean, else (reason, detail); with the candidate's overlap share.
fn check(
    instruction: &str,
    train: &TrainingIndex,
    kept_exact: &HashMap<String, String>,
    kept_near: &kiln_text::NearDupIndex,
    c: &crate::config::testset::Contamination,
    scratch: &mut kiln_text::SearchScratch,
) -> (Option<(&'static str, String)>, f64) {
    let key = exact_key(instruction);
    let set = kiln_text::GramSet::of(instruction, c.ngram);
    let found = set.hashes().iter().filter(|h| train.grams.contains(h)).count();
    let share = if set.is_empty() { 0.0 } else { found as f64 / set.len() as f64 };
    if let Some(id) = train.exact.get(&key) {
        return (Some(("exact", format!("the same instruction as training sample {id}"))), share);
    }
    let near_set = kiln_text::GramSet::of(instruction, c.near_ngram);
    if let Some((id, sim)) = train.near.most_similar_at_least(&near_set, c.near_threshold, scratch) {
        if sim >= c.near_threshold {
            return (Some(("near-duplicate", format!("Jaccard {sim:.3} with training sample {id} (threshold {})", c.near_threshold))), share);
        }
    }
    if share >= c.max_overlap {
        return (
            Some(("ngram-overlap", format!("{found} of its {} word {}-grams are in the training set (share {share:.3}, limit {})", set.len(), c.ngram, c.max_overlap))),
            share,
        );
    }
    if let Some(id) = kept_exact.get(&key) {
        return (Some(("repeat-in-test-set", format!("the same instruction as test item {id}"))), share);
    }
    if let Some((id, sim)) = kept_near.most_similar_at_least(&near_set, c.near_threshold, scratch) {
        if sim >= c.near_threshold {
            return (Some(("repeat-in-test-set", format!("Jaccard {sim:.3} with test item {id} (threshold {})", c.near_threshold))), share);
        }
    }
    (None, share)
}

/// The pilot config the dataset was made with.
fn recipe(cfg: &TestsetConfig, train: &GatedRun) -> Result<PilotConfig, StageError> {
    let text = toml::to_string(&train.recipe).expect("serialises");
    PilotConfig::from_str(&text, &train.recipe_path, &Overrides::default())
        .map_err(|e| StageError::Invalid(format!("{}: dataset \"{}\": its recipe: {e}", cfg.file.display(), cfg.dataset.display())))
}

/// Make the test set.
pub fn run(cfg: &TestsetConfig, opts: &TestsetOptions) -> Result<TestsetOutcome, StageError> {
    let wall = Instant::now();
    let mut timings = Timings::default();
    let refuse = |what: String| StageError::Invalid(format!("{}: dataset \"{}\": {what}", cfg.file.display(), cfg.dataset.display()));
    let train = open_gated(&cfg.dataset).map_err(refuse)?;
    if train.manifest.seed == cfg.seed {
        return Err(StageError::Invalid(format!(
            "{}: seed {} is the dataset's own seed; a test set needs a seed of its own",
            cfg.file.display(),
            cfg.seed
        )));
    }
    let base = recipe(cfg, &train)?;
    let names: Vec<String> = match &cfg.types {
        Some(t) => t.clone(),
        None => base.types.iter().map(|t| t.name.clone()).collect(),
    };
    for n in &names {
        if !base.types.iter().any(|t| &t.name == n) {
            let known: Vec<&str> = base.types.iter().map(|t| t.name.as_str()).collect();
            return Err(StageError::Invalid(format!(
                "{}: types: \"{n}\" is not an instruction type of the dataset's recipe ({})",
                cfg.file.display(),
                known.join(", ")
            )));
        }
    }
    let resolved = cfg.resolved_toml(&names, &train.sha256);
    let run_dir = cfg.artifacts_dir.join(&cfg.run_id);
    let (run, state) = pilot::open_run(&run_dir, &cfg.run_id, "testset", &resolved, &mut timings)?;
    let c = cfg.contamination;
    let index = timings.time("index", || TrainingIndex::new(&train.samples, c.ngram, c.near_ngram));

    let mut kept: BTreeMap<String, Vec<TestItem>> = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    let mut kept_exact: HashMap<String, String> = HashMap::new();
    let mut kept_near = kiln_text::NearDupIndex::new(c.near_ngram);
    let mut scratch = kiln_text::SearchScratch::default();
    let mut refused = Vec::new();
    let (mut checked, mut max_overlap_kept, mut rounds) = (0usize, 0f64, 0usize);
    let mut first_round: Option<Manifest> = None;
    for round in 0..cfg.max_rounds {
        let missing: Vec<(String, usize)> =
            names.iter().map(|n| (n.clone(), cfg.per_type - kept[n].len())).filter(|(_, m)| *m > 0).collect();
        if missing.is_empty() {
            break;
        }
        rounds = round + 1;
        let mut rc = base.clone();
        rc.seed = cfg.seed;
        rc.qc_rules.clear();
        rc.types = base
            .types
            .iter()
            .filter_map(|t| missing.iter().find(|(n, _)| n == &t.name).map(|(_, m)| crate::config::pilot::InstructionType { weight: *m as f64, ..t.clone() }))
            .collect();
        let want: usize = missing.iter().map(|(_, m)| m).sum();
        rc.count = ((want as f64 * cfg.oversample).ceil() as usize).max(want);
        rc.run_id = format!("round-{round:02}");
        rc.artifacts_dir = run_dir.join(testset_files::ROUNDS);
        let slice = Slice {
            stage: "testset-round",
            run_id: rc.run_id.clone(),
            run_dir: rc.artifacts_dir.join(&rc.run_id),
            shard: ROUND_SHARD_BASE + round as u64,
            count: rc.count,
            id_prefix: format!("t{round:02}-"),
            resolved_extra: format!("# test set round {round}: {} candidates for {want} missing items\n", rc.count),
            portable: true,
        };
        let m = match Manifest::read(&slice.run_dir) {
            Ok(m) if m.status == "complete" => m,
            _ => run_slice(&rc, &slice, &PilotOptions { progress: opts.progress, device: opts.device })?.manifest,
        };
        first_round.get_or_insert(m);
        let accepted: Vec<Accepted> = crate::sandbox::read_jsonl(&slice.run_dir.join(files::ACCEPTED))?;
        for a in accepted {
            let s = a.sample;
            let Some(list) = kept.get(&s.instruction_type) else { continue };
            if list.len() >= cfg.per_type {
                continue;
            }
            checked += 1;
            match check(&s.instruction, &index, &kept_exact, &kept_near, &c, &mut scratch) {
                (Some((reason, detail)), _) => refused.push(Refused {
                    id: s.id,
                    instruction_type: s.instruction_type,
                    instruction: s.instruction,
                    reason: reason.into(),
                    detail,
                }),
                (None, share) => {
                    max_overlap_kept = max_overlap_kept.max(share);
                    kept_exact.insert(exact_key(&s.instruction), s.id.clone());
                    kept_near.insert(s.id.clone(), &s.instruction);
                    kept.get_mut(&s.instruction_type).expect("checked above").push(TestItem {
                        id: s.id,
                        instruction_type: s.instruction_type,
                        instruction: s.instruction,
                    });
                }
            }
        }
    }
    let short: Vec<String> = names
        .iter()
        .filter(|n| kept[*n].len() < cfg.per_type)
        .map(|n| format!("{n}: {} of {}", kept[n].len(), cfg.per_type))
        .collect();
    let report = ContaminationReport {
        dataset: train.record(),
        ngram: c.ngram,
        max_overlap: c.max_overlap,
        near_ngram: c.near_ngram,
        near_threshold: c.near_threshold,
        checked,
        kept: kept.values().map(Vec::len).sum(),
        max_overlap_kept,
        refused,
        rounds,
    };
    let contamination_sha = write_json(&run, testset_files::CONTAMINATION, &report)?;
    if !short.is_empty() {
        let by_reason = report.refused.iter().fold(BTreeMap::<&str, usize>::new(), |mut m, r| {
            *m.entry(r.reason.as_str()).or_default() += 1;
            m
        });
        let reasons: Vec<String> = by_reason.iter().map(|(k, v)| format!("{v} {k}")).collect();
        return Err(StageError::Invalid(format!(
            "test set \"{}\" cannot be filled after {} rounds ({}); candidates refused: {}; see {}. Raise max_rounds or oversample, or lower per_type",
            cfg.run_id,
            rounds,
            short.join(", "),
            if reasons.is_empty() { "none".into() } else { reasons.join(", ") },
            run.join(testset_files::CONTAMINATION).display()
        )));
    }
    let items: Vec<TestItem> = names.iter().flat_map(|n| kept[n].iter().cloned()).collect();
    let mut out_files = BTreeMap::new();
    out_files.insert(files::CONFIG.to_string(), sha256_hex(resolved.as_bytes()));
    let test_sha = write_jsonl(&run, testset_files::TESTSET, &items)?;
    out_files.insert(testset_files::TESTSET.to_string(), test_sha.clone());
    out_files.insert(testset_files::CONTAMINATION.to_string(), contamination_sha);
    let per_type: BTreeMap<String, usize> = kept.iter().map(|(k, v)| (k.clone(), v.len())).collect();
    let mut counts: BTreeMap<String, u64> = per_type.iter().map(|(k, v)| (format!("items_{k}"), *v as u64)).collect();
    counts.insert("items".into(), items.len() as u64);
    counts.insert("checked".into(), checked as u64);
    counts.insert("refused".into(), report.refused.len() as u64);
    counts.insert("rounds".into(), rounds as u64);
    let r0 = first_round.expect("at least one round ran");
    let mut manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        stage: "testset".into(),
        run_id: cfg.run_id.clone(),
        status: "complete".into(),
        started_at: state.started_at.clone(),
        finished_at: now(),
        kiln: kiln_build().clone(),
        environment: environment(),
        config_file: cfg.file.clone(),
        config_hash: state.config_hash.clone(),
        seed: cfg.seed,
        count: items.len(),
        model: r0.model,
        guard: r0.guard,
        plugins: r0.plugins,
        sampling: r0.sampling,
        gate: Gate { pass: true, reasons: vec![] },
        counts,
        files: out_files,
        source: None,
        arms: vec![],
        test_set: Some(FileRecord { path: run.join(testset_files::TESTSET), sha256: test_sha, records: items.len() }),
        dataset: Some(train.record()),
        training: None,
        resources: None,
        review: None,
    };
    append_log(
        &run,
        "testset",
        &[format!(
            "[{}] {} items in {} rounds; {} candidates checked against {} ({}), {} refused",
            now(),
            items.len(),
            rounds,
            checked,
            train.manifest.run_id,
            &train.sha256[..12],
            report.refused.len()
        )],
    )?;
    manifest.write_accounted(&run, wall.elapsed())?;
    Ok(TestsetOutcome { run_dir, per_type, contamination: report, wall_seconds: wall.elapsed().as_secs_f64() })
}

/// Check that the test set in `dir` (a `kiln testset` run) was checked against `dataset` and
/// passed; returns its file record. The error says why the pair may not be used.
pub fn checked_pair(dir: &Path, dataset: &DatasetRecord) -> Result<FileRecord, String> {
    let m = Manifest::read(dir).map_err(|e| format!("{e}; a test set paired with training data must be a `kiln testset` run"))?;
    if m.stage != "testset" {
        return Err(format!("is a {} run, not a `kiln testset` run, so it was never checked against the training data", m.stage));
    }
    if m.status != "complete" || !m.gate.pass {
        return Err("its run did not finish".into());
    }
    m.verify_files(dir).map_err(|e| e.to_string())?;
    let against = m.dataset.as_ref().ok_or("its manifest names no training set it was checked against")?;
    if against.sha256 != dataset.sha256 {
        return Err(format!(
            "it was checked against other data: {} ({} in {}, sha256 {}), not the training data {} ({} in {}, sha256 {}); run `kiln testset --dataset {}`",
            against.run_id,
            against.file,
            against.run_dir.display(),
            &against.sha256[..12.min(against.sha256.len())],
            dataset.run_id,
            dataset.file,
            dataset.run_dir.display(),
            &dataset.sha256[..12.min(dataset.sha256.len())],
            dataset.run_dir.display()
        ));
    }
    let rel = testset_files::TESTSET;
    let sha256 = m.files.get(rel).cloned().ok_or_else(|| format!("its manifest lists no {rel}"))?;
    Ok(FileRecord { path: dir.join(rel), sha256, records: m.count })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testset::Contamination;

    fn accepted(id: &str, instruction: &str, response: &str) -> Accepted {
        let line = format!(
            r#"{{"sample":{{"id":"{id}","instruction_type":"t","instruction":"{instruction}","response":"{response}"}},"provenance":{{"run_id":"r","kiln_revision":null,"kiln_dirty":null,"kiln_version":"0","model_sha256":"m","plugins":[],"config_hash":"h","run_seed":1,"instruction_seed":1,"response_seed":1,"sampling":{{}},"instruction_generated_at":"","response_generated_at":"","accepted_at":""}}}}"#
        );
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn exact_near_overlap_and_repeats_are_refused() {
        let train = [
            accepted("a", "Write a haiku about autumn leaves falling.", "Red leaves drift slowly down to the quiet cold ground below."),
            accepted("b", "Explain how a rainbow forms.", "Sunlight bends inside raindrops and splits into its colours."),
        ];
        let c = Contamination { ngram: 4, max_overlap: 0.5, near_ngram: 3, near_threshold: 0.7 };
        let index = TrainingIndex::new(&train, c.ngram, c.near_ngram);
        let mut kept_exact = HashMap::new();
        let mut kept_near = kiln_text::NearDupIndex::new(c.near_ngram);
        let mut scratch = kiln_text::SearchScratch::default();
        let mut verdict = |s: &str| check(s, &index, &kept_exact, &kept_near, &c, &mut scratch).0.map(|(r, _)| r);
        assert_eq!(verdict("write a haiku  about autumn leaves falling."), Some("exact"));
        assert_eq!(verdict("Write a haiku about autumn leaves falling down."), Some("near-duplicate"));
        // Copied from a training response: most of its 4-grams are there.
        assert_eq!(verdict("Describe: red leaves drift slowly down to the quiet cold ground"), Some("ngram-overlap"));
        assert_eq!(verdict("Name three rivers in Africa."), None);
        kept_exact.insert(exact_key("Name three rivers in Africa."), "t1".to_string());
        kept_near.insert("t1", "Name three rivers in Africa.");
        let r = check("Name three rivers in Africa.", &index, &kept_exact, &kept_near, &c, &mut scratch).0.unwrap();
        assert_eq!(r.0, "repeat-in-test-set");
        assert!(r.1.contains("t1"));
    }
}
