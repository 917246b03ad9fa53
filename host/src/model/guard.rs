//! The contamination guard ("clean model loader"): kiln works from *base* models and never
//! applies a chat template. A file carrying a chat template is refused at load unless allowed
//! (and then recorded); sentinel prompts measure how strongly the model prefers
//! assistant-style continuations over plain-text ones, and a threshold flags
//! instruction-tuned models. The report goes into every run's manifest.

use serde::Serialize;

use super::engine::Engine;
use super::error::ModelError;
use super::generate::{BatchOptions, ScoreRequest};

/// A sentinel: a prompt, an assistant-style continuation and a plain-text one.
#[derive(Debug, Clone, Copy)]
pub struct Sentinel {
    /// Short name.
    pub name: &'static str,
    /// The prompt.
    pub prompt: &'static str,
    /// What a chat assistant would say.
    pub assistant: &'static str,
    /// What plain web text would continue with.
    pub plain: &'static str,
}

/// The sentinel set. Each pair is scored by mean log-probability per token, so the lengths of
/// the two continuations do not decide.
pub const SENTINELS: [Sentinel; 8] = [
    Sentinel {
        name: "greeting",
        prompt: "Hello",
        assistant: "! How can I help you today?",
        plain: ", my name is Anna and I live in Berlin.",
    },
    Sentinel {
        name: "question-answer",
        prompt: "What is the capital of France?",
        assistant: " The capital of France is Paris. Let me know if you have any other questions!",
        plain: " What is the capital of Spain? What is the capital of Italy?",
    },
    Sentinel {
        name: "self-description",
        prompt: "Tell me about yourself.",
        assistant: " I am an AI language model created to help answer your questions.",
        plain: " I grew up in a small town near the coast and studied history.",
    },
    Sentinel {
        name: "as-an-ai",
        prompt: "Do you have feelings?",
        assistant: " As an AI, I don't have feelings or emotions.",
        plain: " Do you ever cry at the end of a sad film?",
    },
    Sentinel {
        name: "task-request",
        prompt: "Write a short poem about the sea.",
        assistant: "\n\nSure! Here's a short poem about the sea:",
        plain: "\n\nWrite a short poem about the mountains.",
    },
    Sentinel {
        name: "turn-markers",
        prompt: "User: Can you help me plan a trip to Rome?\n",
        assistant: "Assistant: Of course! I'd be happy to help you plan your trip to Rome.",
        plain: "User: I want to go in May and stay for a week.",
    },
    Sentinel {
        name: "thanks",
        prompt: "Thank you for your help!",
        assistant: " You're welcome! If you have any more questions, feel free to ask.",
        plain: " The staff at the library were very kind to us.",
    },
    Sentinel {
        name: "instruction-follow",
        prompt: "Translate 'good morning' into French.",
        assistant: " \"Good morning\" in French is \"Bonjour\".",
        plain: " Translate 'good night' into French.",
    },
];

/// Behaviour above this (mean nats per token in favour of the assistant continuation) flags
/// a model as instruction-tuned.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// One sentinel's result.
#[derive(Debug, Clone, Serialize)]
pub struct SentinelScore {
    /// Sentinel name.
    pub name: String,
    /// Mean log-prob per token of the assistant continuation.
    pub assistant: f64,
    /// Mean log-prob per token of the plain continuation.
    pub plain: f64,
    /// assistant - plain.
    pub preference: f64,
}

/// The guard's verdict on a model.
#[derive(Debug, Clone, Serialize)]
pub struct GuardReport {
    /// The model's sha256.
    pub model_sha256: String,
    /// The file carries tokenizer.chat_template.
    pub chat_template_in_metadata: bool,
    /// It was loaded anyway (config allowed it).
    pub chat_template_allowed: bool,
    /// Per-sentinel scores.
    pub sentinels: Vec<SentinelScore>,
    /// Mean preference for assistant-style continuations (nats per token).
    pub assistant_preference: f64,
    /// Sentinels where the assistant continuation won.
    pub assistant_wins: usize,
    /// The threshold applied.
    pub threshold: f64,
    /// Flagged by metadata.
    pub flagged_by_metadata: bool,
    /// Flagged by behaviour.
    pub flagged_by_behaviour: bool,
    /// "base" or "instruction-tuned".
    pub verdict: String,
}

impl GuardReport {
    /// True when the model looks instruction-tuned by either test.
    pub fn flagged(&self) -> bool {
        self.flagged_by_metadata || self.flagged_by_behaviour
    }
}

/// Run the sentinels on a loaded model.
pub fn check(engine: &Engine, threshold: f64) -> Result<GuardReport, ModelError> {
    let reqs: Vec<ScoreRequest> = SENTINELS
        .iter()
        .map(|s| ScoreRequest { id: s.name.to_string(), prompt: s.prompt.to_string(), candidates: vec![s.assistant.to_string(), s.plain.to_string()] })
        .collect();
    let scored = engine.score(&reqs, BatchOptions { max_batch: 16 })?;
    let sentinels: Vec<SentinelScore> = scored
        .iter()
        .map(|s| {
            let a = s.logprobs[0] / s.tokens[0] as f64;
            let p = s.logprobs[1] / s.tokens[1] as f64;
            SentinelScore { name: s.id.clone(), assistant: a, plain: p, preference: a - p }
        })
        .collect();
    let mean = sentinels.iter().map(|s| s.preference).sum::<f64>() / sentinels.len() as f64;
    let wins = sentinels.iter().filter(|s| s.preference > 0.0).count();
    let by_meta = engine.info.chat_template_chars.is_some();
    let by_behaviour = mean > threshold;
    Ok(GuardReport {
        model_sha256: engine.info.sha256.clone(),
        chat_template_in_metadata: by_meta,
        chat_template_allowed: engine.info.chat_template_allowed,
        sentinels,
        assistant_preference: mean,
        assistant_wins: wins,
        threshold,
        flagged_by_metadata: by_meta,
        flagged_by_behaviour: by_behaviour,
        verdict: if by_meta || by_behaviour { "instruction-tuned" } else { "base" }.to_string(),
    })
}
