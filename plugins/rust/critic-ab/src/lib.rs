//! `critic-ab`: single-token A/B judgments of instruction quality and response quality.
//!
//! Phase 1 writes, per sample and aspect, a judging prompt whose answer is one token: " A"
//! (good) or " B" (bad). The host scores both answers' log-probabilities; phase 2 passes a
//! sample's aspect when `logprob(A) - logprob(B) >= margin_threshold`.

use serde::Deserialize;

#[cfg(target_arch = "wasm32")]
mod component;

/// The WIT package version this plugin is built for.
pub const WIT_VERSION: &str = "0.1.0";

/// Aspects this critic can judge.
pub const ASPECTS: [&str; 2] = ["instruction", "response"];

/// Plugin configuration (JSON object; every field optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which aspects to judge ("instruction", "response").
    pub aspects: Vec<String>,
    /// Pass when logprob(A) - logprob(B) is at least this.
    pub margin_threshold: f64,
    /// The answer meaning "good".
    pub answer_good: String,
    /// The answer meaning "bad".
    pub answer_bad: String,
    /// Judging prompt for instructions; `{instruction}` is substituted.
    pub instruction_prompt: String,
    /// Judging prompt for responses; `{instruction}` and `{response}` are substituted.
    pub response_prompt: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            aspects: ASPECTS.iter().map(|s| s.to_string()).collect(),
            margin_threshold: 0.0,
            answer_good: " A".into(),
            answer_bad: " B".into(),
            instruction_prompt: "Below is a task that someone wrote for an assistant. A good task is clear, \
self-contained and possible to complete in writing.\n\nTask: {instruction}\n\nIs this a good task? \
Answer A if it is good, B if it is not.\nAnswer:"
                .into(),
            response_prompt: "Below is a task and a response to it. A good response completes the task \
correctly, helpfully and without rambling.\n\nTask: {instruction}\nResponse: {response}\n\nIs this a good \
response? Answer A if it is good, B if it is not.\nAnswer:"
                .into(),
        }
    }
}

/// Parse and validate a configuration.
pub fn parse_config(json: &str) -> Result<Config, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let cfg: Config = serde_json::from_str(json).map_err(|e| format!("critic-ab config: {e}"))?;
    for a in &cfg.aspects {
        if !ASPECTS.contains(&a.as_str()) {
            return Err(format!("critic-ab config: unknown aspect \"{a}\" (known: instruction, response)"));
        }
    }
    if cfg.answer_good.is_empty() || cfg.answer_bad.is_empty() || cfg.answer_good == cfg.answer_bad {
        return Err(format!(
            "critic-ab config: answers must be two different non-empty strings, got {:?} and {:?}",
            cfg.answer_good, cfg.answer_bad
        ));
    }
    if !cfg.margin_threshold.is_finite() {
        return Err(format!("critic-ab config: margin_threshold must be finite, got {}", cfg.margin_threshold));
    }
    Ok(cfg)
}

/// One judging request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Sample id.
    pub sample_id: String,
    /// Aspect.
    pub aspect: String,
    /// Prompt.
    pub prompt: String,
}

/// The requests for one sample.
pub fn requests(cfg: &Config, id: &str, instruction: &str, response: &str) -> Vec<Request> {
    cfg.aspects
        .iter()
        .map(|a| {
            let prompt = if a == "instruction" {
                cfg.instruction_prompt.replace("{instruction}", instruction.trim())
            } else {
                cfg.response_prompt
                    .replace("{instruction}", instruction.trim())
                    .replace("{response}", response.trim())
            };
            Request { sample_id: id.to_string(), aspect: a.clone(), prompt }
        })
        .collect()
}

/// A verdict from the two log-probabilities: (pass, margin, reason).
pub fn decide(cfg: &Config, aspect: &str, logprob_good: f64, logprob_bad: f64) -> Result<(bool, f64, String), String> {
    if !logprob_good.is_finite() || !logprob_bad.is_finite() {
        return Err(format!("non-finite log-probabilities ({logprob_good}, {logprob_bad}) for aspect {aspect}"));
    }
    let margin = logprob_good - logprob_bad;
    let pass = margin >= cfg.margin_threshold;
    let reason = format!(
        "{aspect}: logprob({:?}) - logprob({:?}) = {margin:.4} {} threshold {}",
        cfg.answer_good,
        cfg.answer_bad,
        if pass { ">=" } else { "<" },
        cfg.margin_threshold
    );
    Ok((pass, margin, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_verdicts() {
        let cfg = Config::default();
        let r = requests(&cfg, "s1", "Name a colour.", "Blue.");
        assert_eq!(r.len(), 2);
        assert!(r[1].prompt.contains("Response: Blue."));
        let (pass, m, _) = decide(&cfg, "response", -0.5, -2.0).unwrap();
        assert!(pass && (m - 1.5).abs() < 1e-12);
        assert!(!decide(&cfg, "response", -3.0, -1.0).unwrap().0);
        assert!(decide(&cfg, "response", f64::NAN, -1.0).is_err());
        assert!(parse_config(r#"{"aspects": ["tone"]}"#).is_err());
    }
}
