//! `template-fewshot`: kiln's reference prompt template.
//!
//! Instruction prompts are numbered few-shot lists of one instruction type that a base model
//! continues with one more item; response prompts are plain "Instruction: / Response:" text.
//! Stop sequences keep a base model from running on into the next list item or the next
//! "Instruction:".

use serde::Deserialize;

#[cfg(target_arch = "wasm32")]
mod component;

/// The WIT package version this plugin is built for.
pub const WIT_VERSION: &str = "0.1.0";

/// Plugin configuration (JSON object from kiln's config; every field optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// First line of an instruction prompt; `{type}` and `{description}` are substituted.
    pub instruction_header: String,
    /// Token budget for a new instruction.
    pub instruction_max_tokens: u32,
    /// Text before the instruction in a response prompt.
    pub response_preamble: String,
    /// Token budget for a response.
    pub response_max_tokens: u32,
    /// Extra stop sequences for responses.
    pub extra_response_stops: Vec<String>,
    /// Parsed instructions with fewer words are rejected.
    pub min_instruction_words: usize,
    /// Parsed instructions with more characters are rejected.
    pub max_instruction_chars: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instruction_header: "Below is a numbered list of tasks that a person might ask an assistant to do. \
Every task in the list is of the same kind: {description}"
                .to_string(),
            instruction_max_tokens: 64,
            response_preamble: "Below is an instruction that describes a task. The response that follows \
completes the task helpfully, accurately and concisely."
                .to_string(),
            response_max_tokens: 256,
            extra_response_stops: Vec::new(),
            min_instruction_words: 3,
            max_instruction_chars: 400,
        }
    }
}

/// A prompt for the model to continue.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The text to continue.
    pub text: String,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Token budget.
    pub max_tokens: u32,
}

/// Parse and validate a configuration.
pub fn parse_config(json: &str) -> Result<Config, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let cfg: Config = serde_json::from_str(json).map_err(|e| format!("template-fewshot config: {e}"))?;
    if cfg.instruction_max_tokens == 0 || cfg.response_max_tokens == 0 {
        return Err(format!(
            "template-fewshot config: token budgets must be positive (instruction_max_tokens = {}, response_max_tokens = {})",
            cfg.instruction_max_tokens, cfg.response_max_tokens
        ));
    }
    Ok(cfg)
}

/// The few-shot instruction prompt: the header, the examples as a numbered list, and the next
/// number for the model to continue.
pub fn instruction_prompt(cfg: &Config, instruction_type: &str, description: &str, examples: &[String]) -> Result<Prompt, String> {
    if examples.is_empty() {
        return Err(format!("no example instructions given for instruction type \"{instruction_type}\""));
    }
    let mut text = cfg
        .instruction_header
        .replace("{type}", instruction_type)
        .replace("{description}", description.trim());
    text.push_str("\n\n");
    for (i, ex) in examples.iter().enumerate() {
        let one_line = ex.split_whitespace().collect::<Vec<_>>().join(" ");
        text.push_str(&format!("{}. {}\n", i + 1, one_line));
    }
    let next = examples.len() + 1;
    text.push_str(&format!("{next}."));
    Ok(Prompt {
        text,
        // One instruction per line: the newline ends it, whatever the model does next.
        stop: vec!["\n".to_string(), format!("{}.", next + 1)],
        max_tokens: cfg.instruction_max_tokens,
    })
}

/// The response prompt for one instruction.
pub fn response_prompt(cfg: &Config, instruction: &str) -> Prompt {
    let mut text = String::new();
    if !cfg.response_preamble.is_empty() {
        text.push_str(&cfg.response_preamble);
        text.push_str("\n\n");
    }
    text.push_str("Instruction: ");
    text.push_str(instruction.trim());
    text.push_str("\nResponse:");
    let mut stop = vec![
        "\nInstruction:".to_string(),
        "Instruction:".to_string(),
        "\nResponse:".to_string(),
        "\n\n\n".to_string(),
    ];
    stop.extend(cfg.extra_response_stops.iter().cloned());
    Prompt { text, stop, max_tokens: cfg.response_max_tokens }
}

/// Parse a raw instruction completion into an instruction, or say why it is unusable.
pub fn parse_instruction(cfg: &Config, text: &str) -> Result<String, String> {
    let first = text.trim().lines().next().unwrap_or("").trim();
    // The prompt ends with "N." so the model usually writes " instruction"; it may also
    // restate a number or a bullet.
    let mut s = first;
    let digits = s.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 && s[digits..].starts_with('.') {
        s = s[digits + 1..].trim_start();
    }
    let s = s.trim_start_matches(['-', '*', '•']).trim();
    let s = s.trim_matches('"').trim();
    if s.is_empty() {
        return Err("empty completion".to_string());
    }
    let words = s.split_whitespace().count();
    if words < cfg.min_instruction_words {
        return Err(format!("only {words} words (minimum {})", cfg.min_instruction_words));
    }
    if s.chars().count() > cfg.max_instruction_chars {
        return Err(format!("{} characters (maximum {})", s.chars().count(), cfg.max_instruction_chars));
    }
    if !s.chars().any(|c| c.is_alphabetic()) {
        return Err("no letters".to_string());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_prompt_is_a_numbered_list() {
        let cfg = Config::default();
        let p = instruction_prompt(&cfg, "open-qa", "A question.", &["Why?  Really\nwhy".into(), "How?".into()]).unwrap();
        assert!(p.text.ends_with("1. Why? Really why\n2. How?\n3."), "{}", p.text);
        assert_eq!(p.stop, vec!["\n".to_string(), "4.".to_string()]);
    }

    #[test]
    fn parses_and_rejects() {
        let cfg = Config::default();
        assert_eq!(parse_instruction(&cfg, " Name three rivers in Europe.\n4. x").unwrap(), "Name three rivers in Europe.");
        assert_eq!(parse_instruction(&cfg, "7. \"List two colours please\"").unwrap(), "List two colours please");
        assert!(parse_instruction(&cfg, "  ").is_err());
        assert!(parse_instruction(&cfg, "Hi there").is_err());
    }
}
