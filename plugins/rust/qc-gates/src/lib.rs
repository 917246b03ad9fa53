//! `qc-gates`: the reference run's quality gate.
//!
//! Metrics over a whole set of samples: runaway rate (< 5 %), token-limit rate (< 10 %), empty
//! rate, exact-duplicate instruction rate and critic pass rate; every threshold in config.

use std::collections::HashSet;

use serde::Deserialize;

#[cfg(target_arch = "wasm32")]
mod component;

/// The WIT package version this plugin is built for.
pub const WIT_VERSION: &str = "0.1.0";

/// Plugin configuration (JSON object; every field optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Gate: runaway rate must be below this.
    pub max_runaway_rate: f64,
    /// Gate: token-limit rate must be below this.
    pub max_token_limit_rate: f64,
    /// Gate: empty rate must be below this.
    pub max_empty_rate: f64,
    /// Gate: duplicate-instruction rate must be below this.
    pub max_duplicate_rate: f64,
    /// Gate: critic pass rate must be at least this (only when verdicts exist).
    pub min_critic_pass_rate: f64,
    /// A length-limited response whose repeated word n-gram ratio exceeds this is a runaway.
    pub runaway_repetition: f64,
    /// Word n-gram size of the repetition measure.
    pub repetition_ngram: usize,
    /// Text that should have stopped generation; a response containing one ran away.
    pub runaway_markers: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_runaway_rate: 0.05,
            max_token_limit_rate: 0.10,
            max_empty_rate: 0.05,
            max_duplicate_rate: 0.10,
            min_critic_pass_rate: 0.5,
            runaway_repetition: 0.2,
            repetition_ngram: 3,
            runaway_markers: vec!["Instruction:".into(), "\nResponse:".into()],
        }
    }
}

/// Parse and validate a configuration.
pub fn parse_config(json: &str) -> Result<Config, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let cfg: Config = serde_json::from_str(json).map_err(|e| format!("qc-gates config: {e}"))?;
    for (name, v) in [
        ("max_runaway_rate", cfg.max_runaway_rate),
        ("max_token_limit_rate", cfg.max_token_limit_rate),
        ("max_empty_rate", cfg.max_empty_rate),
        ("max_duplicate_rate", cfg.max_duplicate_rate),
        ("min_critic_pass_rate", cfg.min_critic_pass_rate),
        ("runaway_repetition", cfg.runaway_repetition),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("qc-gates config: {name} must be within [0, 1], got {v}"));
        }
    }
    Ok(cfg)
}

/// What the gate needs of one sample.
#[derive(Debug, Clone)]
pub struct Item {
    /// Instruction text.
    pub instruction: String,
    /// Response text.
    pub response: String,
    /// The response generation hit its token limit.
    pub response_hit_limit: bool,
    /// The instruction generation hit its token limit.
    pub instruction_hit_limit: bool,
    /// Critic verdicts: pass or fail, one per verdict.
    pub verdicts: Vec<bool>,
}

/// How a metric passes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cmp {
    /// value < threshold.
    Below,
    /// value >= threshold.
    AtLeast,
    /// Never fails.
    Report,
}

/// One metric of the report.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Name, e.g. "runaway_rate".
    pub name: String,
    /// Value.
    pub value: f64,
    /// Threshold (None for report-only).
    pub threshold: Option<f64>,
    /// Comparison.
    pub cmp: Cmp,
    /// Pass.
    pub pass: bool,
}

/// The gate's report.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every metric.
    pub metrics: Vec<Metric>,
    /// All gated metrics pass (and the set is not empty).
    pub pass: bool,
    /// One sentence per failure.
    pub reasons: Vec<String>,
}

/// True when a sample ran away: its response kept going where a stop should have fired (it
/// contains a runaway marker), or it hit the token limit while repeating itself.
pub fn is_runaway(cfg: &Config, item: &Item) -> bool {
    let leaked = cfg.runaway_markers.iter().any(|m| !m.is_empty() && item.response.contains(m.as_str()));
    let looping = item.response_hit_limit
        && kiln_text::repeated_ngram_ratio(&item.response, cfg.repetition_ngram) > cfg.runaway_repetition;
    leaked || looping
}

/// Evaluate the gate over a set.
pub fn evaluate(cfg: &Config, items: &[Item]) -> Report {
    let n = items.len();
    let mut metrics = Vec::new();
    let mut reasons = Vec::new();
    metrics.push(Metric { name: "samples".into(), value: n as f64, threshold: None, cmp: Cmp::Report, pass: true });
    if n == 0 {
        return Report { metrics, pass: false, reasons: vec!["no samples to judge: the set is empty".to_string()] };
    }
    let rate = |count: usize| count as f64 / n as f64;
    let runaway = items.iter().filter(|i| is_runaway(cfg, i)).count();
    let limit = items.iter().filter(|i| i.response_hit_limit || i.instruction_hit_limit).count();
    let empty = items.iter().filter(|i| i.instruction.trim().is_empty() || i.response.trim().is_empty()).count();
    let mut seen = HashSet::new();
    let dups = items
        .iter()
        .filter(|i| !seen.insert(kiln_text::words(&i.instruction).join(" ")))
        .count();
    let mut add = |name: &str, value: f64, threshold: f64, cmp: Cmp, what: &str| {
        let pass = match cmp {
            Cmp::Below => value < threshold,
            Cmp::AtLeast => value >= threshold,
            Cmp::Report => true,
        };
        if !pass {
            let rel = if cmp == Cmp::Below { "below" } else { "at least" };
            reasons.push(format!("{name} is {value:.4} ({what}); it must be {rel} {threshold}"));
        }
        metrics.push(Metric { name: name.into(), value, threshold: Some(threshold), cmp, pass });
    };
    add("runaway_rate", rate(runaway), cfg.max_runaway_rate, Cmp::Below, &format!("{runaway} of {n} samples"));
    add("token_limit_rate", rate(limit), cfg.max_token_limit_rate, Cmp::Below, &format!("{limit} of {n} samples"));
    add("empty_rate", rate(empty), cfg.max_empty_rate, Cmp::Below, &format!("{empty} of {n} samples"));
    add("duplicate_rate", rate(dups), cfg.max_duplicate_rate, Cmp::Below, &format!("{dups} of {n} samples"));
    let verdicts: Vec<bool> = items.iter().flat_map(|i| i.verdicts.iter().copied()).collect();
    if verdicts.is_empty() {
        metrics.push(Metric { name: "critic_verdicts".into(), value: 0.0, threshold: None, cmp: Cmp::Report, pass: true });
    } else {
        let passed = verdicts.iter().filter(|v| **v).count();
        let v = passed as f64 / verdicts.len() as f64;
        add(
            "critic_pass_rate",
            v,
            cfg.min_critic_pass_rate,
            Cmp::AtLeast,
            &format!("{passed} of {} verdicts", verdicts.len()),
        );
    }
    let pass = metrics.iter().all(|m| m.pass);
    Report { metrics, pass, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: &str, r: &str, limit: bool) -> Item {
        Item { instruction: i.into(), response: r.into(), response_hit_limit: limit, instruction_hit_limit: false, verdicts: vec![] }
    }

    #[test]
    fn gate_fails_on_runaways() {
        let cfg = Config::default();
        let mut items: Vec<Item> = (0..19).map(|k| item(&format!("task number {k}"), "fine answer", false)).collect();
        items.push(item("task x", "a b c a b c a b c a b c", true));
        let r = evaluate(&cfg, &items);
        let runaway = r.metrics.iter().find(|m| m.name == "runaway_rate").unwrap();
        assert_eq!(runaway.value, 0.05);
        assert!(!runaway.pass && !r.pass);
        assert!(r.reasons[0].contains("1 of 20"), "{:?}", r.reasons);
    }

    #[test]
    fn empty_set_fails() {
        assert!(!evaluate(&Config::default(), &[]).pass);
    }
}
