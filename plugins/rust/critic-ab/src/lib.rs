//! `critic-ab`: single-token A/B judgments of instruction quality and response quality.
//!
//! Phase 1 writes, per sample and aspect, a judging prompt whose answer is one token: " A"
//! (good) or " B" (bad). The host scores both answers' log-probabilities; phase 2 passes a
//! sample's aspect when its margin, `logprob(good) - logprob(bad)`, is at least
//! `margin_threshold`.
//!
//! Small base models prefer one letter whatever the text (position and letter bias). With
//! `order = "both"` (the default) each aspect is asked twice: once with A meaning good and once
//! with A meaning bad (aspect `<aspect>/swapped`), A named first both times (`choices_good_first`
//! and `choices_bad_first`). The margin is the mean of the two, so a constant preference for
//! one letter, or for the option named first, cancels out and only what depends on the text
//! remains.
//! Half the difference of the two margins, the letter bias, is given in the verdict's reason.

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
    /// "both": ask each aspect in both letter orders and average (cancels letter bias);
    /// "fixed": ask once, `answer_good` meaning good.
    pub order: String,
    /// Pass when logprob(A) - logprob(B) is at least this.
    pub margin_threshold: f64,
    /// The answer meaning "good".
    pub answer_good: String,
    /// The answer meaning "bad".
    pub answer_bad: String,
    /// How the answers are offered when the good one is named first; `{good}` and `{bad}` are
    /// the answers, trimmed.
    pub choices_good_first: String,
    /// How the answers are offered when the bad one is named first (the swapped order).
    pub choices_bad_first: String,
    /// Judging prompt for instructions; `{instruction}` and `{choices}` are substituted.
    pub instruction_prompt: String,
    /// Judging prompt for responses; `{instruction}`, `{response}` and `{choices}` are
    /// substituted.
    pub response_prompt: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            aspects: ASPECTS.iter().map(|s| s.to_string()).collect(),
            order: "both".into(),
            margin_threshold: 0.0,
            answer_good: " A".into(),
            answer_bad: " B".into(),
            choices_good_first: "Answer {good} if it is good, {bad} if it is not.".into(),
            choices_bad_first: "Answer {bad} if it is not good, {good} if it is.".into(),
            instruction_prompt: "Below is a task that someone wrote for an assistant. A good task is clear, \
self-contained and possible to complete in writing.\n\nTask: {instruction}\n\nIs this a good task? \
{choices}\nAnswer:"
                .into(),
            response_prompt: "Below is a task and a response to it. A good response completes the task \
correctly, helpfully and without rambling.\n\nTask: {instruction}\nResponse: {response}\n\nIs this a good \
response? {choices}\nAnswer:"
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
    if cfg.order != "both" && cfg.order != "fixed" {
        return Err(format!("critic-ab config: order must be \"both\" or \"fixed\", got \"{}\"", cfg.order));
    }
    for (name, p) in [("instruction_prompt", &cfg.instruction_prompt), ("response_prompt", &cfg.response_prompt)] {
        if !p.contains("{choices}") {
            return Err(format!("critic-ab config: {name} must offer the answers with {{choices}}, got {p:?}"));
        }
    }
    for (name, c) in [("choices_good_first", &cfg.choices_good_first), ("choices_bad_first", &cfg.choices_bad_first)] {
        if !c.contains("{good}") || !c.contains("{bad}") {
            return Err(format!("critic-ab config: {name} must name both answers with {{good}} and {{bad}}, got {c:?}"));
        }
    }
    if !cfg.margin_threshold.is_finite() {
        return Err(format!("critic-ab config: margin_threshold must be finite, got {}", cfg.margin_threshold));
    }
    Ok(cfg)
}

/// Suffix of the aspect name of the letter-swapped request.
pub const SWAPPED: &str = "/swapped";

/// One judging request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Sample id.
    pub sample_id: String,
    /// Aspect (`<aspect>/swapped` for the swapped order).
    pub aspect: String,
    /// Prompt.
    pub prompt: String,
    /// The answer that means good in this prompt (scored as the host's answer A).
    pub answer_good: String,
    /// The answer that means bad in this prompt (the host's answer B).
    pub answer_bad: String,
}

/// The requests for one sample: per aspect, one (order "fixed") or two (order "both").
pub fn requests(cfg: &Config, id: &str, instruction: &str, response: &str) -> Vec<Request> {
    let orders: &[bool] = if cfg.order == "both" { &[false, true] } else { &[false] };
    let mut out = Vec::new();
    for a in &cfg.aspects {
        let template = if a == "instruction" { &cfg.instruction_prompt } else { &cfg.response_prompt };
        for &swapped in orders {
            // The first answer is named first in both orders: good first, then bad first.
            let (good, bad, choices) = if swapped {
                (&cfg.answer_bad, &cfg.answer_good, &cfg.choices_bad_first)
            } else {
                (&cfg.answer_good, &cfg.answer_bad, &cfg.choices_good_first)
            };
            let choices = choices.replace("{good}", good.trim()).replace("{bad}", bad.trim());
            let prompt = template
                .replace("{choices}", &choices)
                .replace("{instruction}", instruction.trim())
                .replace("{response}", response.trim());
            out.push(Request {
                sample_id: id.to_string(),
                aspect: if swapped { format!("{a}{SWAPPED}") } else { a.clone() },
                prompt,
                answer_good: good.clone(),
                answer_bad: bad.clone(),
            });
        }
    }
    out
}

/// A verdict from the log-probabilities `(good, bad)` of each order asked (one or two):
/// (pass, margin, reason). The margin is the mean over the orders.
pub fn decide(cfg: &Config, aspect: &str, orders: &[(f64, f64)]) -> Result<(bool, f64, String), String> {
    if orders.is_empty() {
        return Err(format!("no scores for aspect {aspect}"));
    }
    for (g, b) in orders {
        if !g.is_finite() || !b.is_finite() {
            return Err(format!("non-finite log-probabilities ({g}, {b}) for aspect {aspect}"));
        }
    }
    let margins: Vec<f64> = orders.iter().map(|(g, b)| g - b).collect();
    let margin = margins.iter().sum::<f64>() / margins.len() as f64;
    let pass = margin >= cfg.margin_threshold;
    let how = if margins.len() == 2 {
        format!(
            "mean of both letter orders ({:.4}, {:.4}; letter bias {:.4})",
            margins[0],
            margins[1],
            (margins[0] - margins[1]) / 2.0
        )
    } else {
        format!("logprob({:?}) - logprob({:?})", cfg.answer_good, cfg.answer_bad)
    };
    let reason = format!(
        "{aspect}: {how} = {margin:.4} {} threshold {}",
        if pass { ">=" } else { "<" },
        cfg.margin_threshold
    );
    Ok((pass, margin, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_orders_cancel_a_constant_letter_bias() {
        let cfg = Config::default();
        let r = requests(&cfg, "s1", "Name a colour.", "Blue.");
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].aspect, "instruction");
        assert_eq!(r[1].aspect, "instruction/swapped");
        assert!(r[0].prompt.contains("Answer A if it is good, B if it is not."));
        // A is named first in both; it means bad in the swapped order.
        assert!(r[1].prompt.contains("Answer A if it is not good, B if it is."));
        assert_eq!((r[1].answer_good.as_str(), r[1].answer_bad.as_str()), (" B", " A"));
        assert!(r[3].prompt.contains("Response: Blue."));
        // A model that adds +2 nats to " A" whatever the prompt, and sees a good text
        // (true margin 0.5): fixed order 2.5, swapped order 0.5 - 2 = -1.5, mean 0.5.
        let (pass, m, reason) = decide(&cfg, "response", &[(-1.0 + 2.5, -1.0), (-2.5, -1.0)]).unwrap();
        assert!(pass && (m - 0.5).abs() < 1e-12, "{m}");
        assert!(reason.contains("letter bias 2.0000"), "{reason}");
        assert!(!decide(&cfg, "response", &[(-3.0, -1.0), (-3.0, -1.0)]).unwrap().0);
        assert!(decide(&cfg, "response", &[(f64::NAN, -1.0)]).is_err());
        assert!(decide(&cfg, "response", &[]).is_err());
    }

    #[test]
    fn fixed_order_and_config_errors() {
        let cfg = parse_config(r#"{"order": "fixed", "margin_threshold": 0.5}"#).unwrap();
        let r = requests(&cfg, "s1", "Name a colour.", "Blue.");
        assert_eq!(r.len(), 2);
        let (pass, m, _) = decide(&cfg, "response", &[(-0.5, -2.0)]).unwrap();
        assert!(pass && (m - 1.5).abs() < 1e-12);
        assert!(parse_config(r#"{"aspects": ["tone"]}"#).is_err());
        assert!(parse_config(r#"{"order": "random"}"#).unwrap_err().contains("random"));
        assert!(parse_config(r#"{"response_prompt": "Is it good? Answer A or B:"}"#).unwrap_err().contains("{choices}"));
        assert!(parse_config(r#"{"choices_bad_first": "A or B"}"#).unwrap_err().contains("{good}"));
    }
}
