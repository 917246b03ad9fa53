//! `cleaner-basic`: kiln's reference cleaner.
//!
//! In order, for every sample: whitespace and control-character normalisation; truncation of
//! instruction and response at leaked prompt markers; length bounds; repetition (repeated word
//! n-gram ratio); near-duplicates against the reference (seed) instructions and within the
//! batch (word n-gram Jaccard). Every drop carries a stable code and a detail with the values.
//!
//! The logic is plain Rust (this module) so that it can be measured natively against the
//! component; `component.rs` is the WIT glue.

use std::borrow::Cow;

use kiln_text::{chars_outside, cut_at_markers, normalized, repeated_ngram_ratio_with, GramSet, NearDupIndex, SearchScratch};
use serde::Deserialize;

#[cfg(target_arch = "wasm32")]
mod component;

/// The WIT package version this plugin is built for.
pub const WIT_VERSION: &str = "0.1.0";

/// Plugin configuration (JSON object from kiln's config; every field optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Normalise whitespace and control characters.
    pub normalize: bool,
    /// Text after any of these markers is cut off (a base model running on into the next
    /// prompt item).
    pub leak_markers: Vec<String>,
    /// Instruction length bounds, in characters (after cleaning).
    pub min_instruction_chars: usize,
    /// See `min_instruction_chars`.
    pub max_instruction_chars: usize,
    /// Response length bounds, in characters (after cleaning).
    pub min_response_chars: usize,
    /// See `min_response_chars`.
    pub max_response_chars: usize,
    /// Word n-gram size for the repetition measure.
    pub repetition_ngram: usize,
    /// Drop a response whose repeated n-gram ratio exceeds this.
    pub max_repetition: f64,
    /// Word n-gram size for near-duplicate detection.
    pub dedup_ngram: usize,
    /// Drop an instruction whose Jaccard similarity with a reference or an earlier instruction
    /// of the batch is at least this.
    pub near_duplicate_threshold: f64,
    /// Reference instructions (e.g. the seed set), compared against every instruction.
    pub reference_instructions: Vec<String>,
    /// A JSON-lines file of reference instructions (`{"instruction": ...}` per line) inside the
    /// plugin's granted data folder (e.g. "/data/seeds.jsonl").
    pub reference_file: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            normalize: true,
            leak_markers: vec![
                "Instruction:".into(),
                "Response:".into(),
                "### ".into(),
                "\nUser:".into(),
                "\nAssistant:".into(),
                "<start_of_turn>".into(),
                "<end_of_turn>".into(),
                "<|".into(),
            ],
            min_instruction_chars: 10,
            max_instruction_chars: 500,
            min_response_chars: 2,
            max_response_chars: 4000,
            repetition_ngram: 3,
            max_repetition: 0.3,
            dedup_ngram: 3,
            near_duplicate_threshold: 0.7,
            reference_instructions: Vec::new(),
            reference_file: None,
        }
    }
}

/// Parse and validate a configuration.
pub fn parse_config(json: &str) -> Result<Config, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let cfg: Config = serde_json::from_str(json).map_err(|e| format!("cleaner-basic config: {e}"))?;
    if cfg.min_instruction_chars > cfg.max_instruction_chars {
        return Err(format!(
            "cleaner-basic config: min_instruction_chars ({}) exceeds max_instruction_chars ({})",
            cfg.min_instruction_chars, cfg.max_instruction_chars
        ));
    }
    if cfg.min_response_chars > cfg.max_response_chars {
        return Err(format!(
            "cleaner-basic config: min_response_chars ({}) exceeds max_response_chars ({})",
            cfg.min_response_chars, cfg.max_response_chars
        ));
    }
    for (name, v) in [("max_repetition", cfg.max_repetition), ("near_duplicate_threshold", cfg.near_duplicate_threshold)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("cleaner-basic config: {name} must be within [0, 1], got {v}"));
        }
    }
    if cfg.repetition_ngram == 0 || cfg.dedup_ngram == 0 {
        return Err("cleaner-basic config: n-gram sizes must be at least 1".to_string());
    }
    Ok(cfg)
}

/// The texts of one sample that the cleaner looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Texts {
    /// Sample id.
    pub id: String,
    /// Instruction text.
    pub instruction: String,
    /// Response text.
    pub response: String,
}

/// What became of one sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Kept, with the cleaned texts and notes on what changed (key, value).
    Keep {
        /// The cleaned instruction, when cleaning changed it (None: the input's, unchanged).
        instruction: Option<String>,
        /// The cleaned response, when cleaning changed it (None: the input's, unchanged).
        response: Option<String>,
        /// Annotations, e.g. ("cleaner-basic.truncated-at", "Instruction:").
        notes: Vec<(String, String)>,
    },
    /// Dropped.
    Drop {
        /// Stable short code.
        code: String,
        /// The values that made it drop.
        detail: String,
    },
}

fn drop(code: &str, detail: String) -> Outcome {
    Outcome::Drop { code: code.to_string(), detail }
}

/// The drop of a text (`what`: "instruction" or "response") whose length in characters lies
/// outside `min..=max`: `<what>-too-short` or `<what>-too-long`.
fn length_drop(what: &str, text: &str, min: usize, max: usize) -> Option<Outcome> {
    let n = chars_outside(text, min, max)?;
    Some(if n < min {
        drop(&format!("{what}-too-short"), format!("{n} characters, minimum {min}"))
    } else {
        drop(&format!("{what}-too-long"), format!("{n} characters, maximum {max}"))
    })
}

/// The reference index built once per configuration.
pub fn reference_index(cfg: &Config, references: &[String]) -> NearDupIndex {
    let mut idx = NearDupIndex::new(cfg.dedup_ngram);
    for (i, r) in cfg.reference_instructions.iter().chain(references).enumerate() {
        idx.insert(format!("reference #{}", i + 1), r);
    }
    idx
}

/// Clean one batch. `reference` holds the reference instructions; near-duplicates within the
/// batch are checked against the instructions kept earlier in the same batch.
pub fn clean(cfg: &Config, reference: &NearDupIndex, batch: &[Texts]) -> Vec<Outcome> {
    let mut seen = NearDupIndex::new(cfg.dedup_ngram);
    let mut work = Work {
        max_repetition: cfg.max_repetition.to_string(),
        threshold: cfg.near_duplicate_threshold.to_string(),
        ..Work::default()
    };
    batch.iter().map(|t| clean_one(cfg, reference, &mut seen, &mut work, t)).collect()
}

/// Buffers reused from one sample to the next.
#[derive(Default)]
struct Work {
    /// The configured thresholds as the drop details print them (formatted once per batch).
    max_repetition: String,
    threshold: String,
    words: Vec<u64>,
    grams: GramSet,
    reference_grams: GramSet,
    scratch: SearchScratch,
}

fn clean_one(cfg: &Config, reference: &NearDupIndex, seen: &mut NearDupIndex, work: &mut Work, t: &Texts) -> Outcome {
    let mut notes = Vec::new();
    // Each text is borrowed from the input until a step changes it.
    let mut instruction: Cow<str> = if cfg.normalize { normalized(&t.instruction) } else { Cow::Borrowed(&t.instruction) };
    let mut response: Cow<str> = if cfg.normalize { normalized(&t.response) } else { Cow::Borrowed(&t.response) };
    let (cut, marker) = cut_at_markers(&instruction, &cfg.leak_markers);
    if let Some(m) = marker {
        notes.push(("cleaner-basic.instruction-truncated-at".to_string(), m));
        instruction = Cow::Owned(cut.trim().to_string());
    }
    let (cut, marker) = cut_at_markers(&response, &cfg.leak_markers);
    if let Some(m) = marker {
        notes.push(("cleaner-basic.response-truncated-at".to_string(), m));
        response = Cow::Owned(cut.trim().to_string());
    }
    if let Some(d) = length_drop("instruction", &instruction, cfg.min_instruction_chars, cfg.max_instruction_chars) {
        return d;
    }
    if response.is_empty() {
        return drop("empty-response", "the response is empty after cleaning".to_string());
    }
    if let Some(d) = length_drop("response", &response, cfg.min_response_chars, cfg.max_response_chars) {
        return d;
    }
    let rep = repeated_ngram_ratio_with(&response, cfg.repetition_ngram, &mut work.words);
    if rep > cfg.max_repetition {
        return drop(
            "repetitive",
            format!("repeated {}-gram ratio {rep:.3} exceeds {}", cfg.repetition_ngram, work.max_repetition),
        );
    }
    // The instruction's n-gram set, made once for both searches and the insertion.
    work.grams.fill(&instruction, seen.ngram());
    let reference_grams = if reference.ngram() == seen.ngram() {
        &work.grams
    } else {
        work.reference_grams.fill(&instruction, reference.ngram());
        &work.reference_grams
    };
    if let Some((label, sim)) = reference.most_similar_at_least(reference_grams, cfg.near_duplicate_threshold, &mut work.scratch) {
        if sim >= cfg.near_duplicate_threshold {
            return drop(
                "seed-duplicate",
                format!("Jaccard {sim:.3} with {label} (threshold {})", work.threshold),
            );
        }
    }
    if let Some((label, sim)) = seen.most_similar_at_least(&work.grams, cfg.near_duplicate_threshold, &mut work.scratch) {
        if sim >= cfg.near_duplicate_threshold {
            return drop(
                "near-duplicate",
                format!("Jaccard {sim:.3} with sample {label} (threshold {})", work.threshold),
            );
        }
    }
    seen.insert_set(t.id.clone(), &work.grams);
    // A copy that came out equal to the input is no change.
    let changed = |text: Cow<str>, input: &str| match text {
        Cow::Owned(s) if s != input => Some(s),
        _ => None,
    };
    Outcome::Keep { instruction: changed(instruction, &t.instruction), response: changed(response, &t.response), notes }
}

/// Reference instructions from JSON lines (`{"instruction": "..."}` per line; blank lines
/// skipped).
pub fn parse_reference_lines(source: &str, text: &str) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Line {
        instruction: String,
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line).map_err(|e| format!("{source} line {}: {e}", i + 1))?;
        out.push(l.instruction);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, i: &str, r: &str) -> Texts {
        Texts { id: id.into(), instruction: i.into(), response: r.into() }
    }

    #[test]
    fn drops_with_reasons() {
        let cfg = Config { reference_instructions: vec!["Write a haiku about the sea.".into()], ..Config::default() };
        let idx = reference_index(&cfg, &[]);
        let out = clean(
            &cfg,
            &idx,
            &[
                t("a", "Name three rivers in Europe.", "The Danube, the Rhine and the Seine.\nInstruction: next"),
                t("b", "Name three rivers in Europe.", "Loire, Po, Elbe."),
                t("c", "Write a haiku about the sea.", "Waves."),
                t("d", "List colours of the rainbow.", "red red red red red red red red red red"),
                t("e", "Hi", "x"),
            ],
        );
        match &out[0] {
            Outcome::Keep { response, notes, .. } => {
                assert_eq!(response.as_deref(), Some("The Danube, the Rhine and the Seine."));
                assert_eq!(notes[0].1, "Instruction:");
            }
            o => panic!("{o:?}"),
        }
        let codes: Vec<_> = out[1..]
            .iter()
            .map(|o| match o {
                Outcome::Drop { code, .. } => code.as_str(),
                _ => "keep",
            })
            .collect();
        assert_eq!(codes, ["near-duplicate", "seed-duplicate", "repetitive", "instruction-too-short"]);
    }

    #[test]
    fn rejects_bad_config() {
        assert!(parse_config(r#"{"max_repetition": 2}"#).unwrap_err().contains("max_repetition"));
        assert!(parse_config(r#"{"nope": 1}"#).unwrap_err().contains("nope"));
    }
}
