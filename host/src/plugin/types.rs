//! kiln's own records (serde, JSON lines on disk) and their conversion to and from the WIT
//! records that plugins see.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bindings::{critic, qc, template, wit};

/// Why generation of a text stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop sequence fired.
    Stop,
    /// The model's end-of-sequence token.
    Eos,
    /// The token budget was spent.
    Length,
    /// Not generated, or not recorded.
    #[default]
    None,
}

/// How one text was generated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Generation {
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// The stop sequence that fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_sequence: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// The budget.
    pub max_tokens: u32,
}

/// A critic's judgment on one aspect of a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// The critic's name.
    pub critic: String,
    /// What was judged.
    pub aspect: String,
    /// Pass or fail.
    pub pass: bool,
    /// logprob(good) - logprob(bad).
    pub margin: f64,
    /// Why.
    pub reason: String,
}

/// One instruction-response pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Unique id within a run.
    pub id: String,
    /// Instruction type.
    pub instruction_type: String,
    /// The instruction.
    pub instruction: String,
    /// The response (empty before generation).
    #[serde(default)]
    pub response: String,
    /// How the instruction was generated.
    #[serde(default)]
    pub instruction_generation: Generation,
    /// How the response was generated.
    #[serde(default)]
    pub response_generation: Generation,
    /// Critic verdicts so far.
    #[serde(default)]
    pub verdicts: Vec<Verdict>,
    /// Free metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Something with a record id (what quarantine and error messages name).
pub trait RecordId {
    /// The id.
    fn record_id(&self) -> &str;
}

/// An approximate byte size of what a plugin returned, for the output cap.
pub trait WireSize {
    /// Bytes of text plus a small fixed cost per record.
    fn wire_size(&self) -> usize;
}

impl<T: WireSize> WireSize for Vec<T> {
    fn wire_size(&self) -> usize {
        self.iter().map(WireSize::wire_size).sum::<usize>() + 8
    }
}

impl<T: WireSize> WireSize for Option<T> {
    fn wire_size(&self) -> usize {
        self.as_ref().map_or(1, WireSize::wire_size)
    }
}

impl WireSize for String {
    fn wire_size(&self) -> usize {
        self.len() + 8
    }
}

impl RecordId for Sample {
    fn record_id(&self) -> &str {
        &self.id
    }
}

impl WireSize for Sample {
    fn wire_size(&self) -> usize {
        64 + self.id.len()
            + self.instruction_type.len()
            + self.instruction.len()
            + self.response.len()
            + self.verdicts.iter().map(|v| 32 + v.critic.len() + v.aspect.len() + v.reason.len()).sum::<usize>()
            + self.metadata.iter().map(|(k, v)| 16 + k.len() + v.len()).sum::<usize>()
    }
}

impl From<FinishReason> for wit::FinishReason {
    fn from(f: FinishReason) -> Self {
        match f {
            FinishReason::Stop => wit::FinishReason::Stop,
            FinishReason::Eos => wit::FinishReason::Eos,
            FinishReason::Length => wit::FinishReason::Length,
            FinishReason::None => wit::FinishReason::None,
        }
    }
}

impl From<wit::FinishReason> for FinishReason {
    fn from(f: wit::FinishReason) -> Self {
        match f {
            wit::FinishReason::Stop => FinishReason::Stop,
            wit::FinishReason::Eos => FinishReason::Eos,
            wit::FinishReason::Length => FinishReason::Length,
            wit::FinishReason::None => FinishReason::None,
        }
    }
}

impl From<&Generation> for wit::Generation {
    fn from(g: &Generation) -> Self {
        wit::Generation {
            finish_reason: g.finish_reason.into(),
            stop_sequence: g.stop_sequence.clone(),
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            max_tokens: g.max_tokens,
        }
    }
}

impl From<wit::Generation> for Generation {
    fn from(g: wit::Generation) -> Self {
        Generation {
            finish_reason: g.finish_reason.into(),
            stop_sequence: g.stop_sequence,
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            max_tokens: g.max_tokens,
        }
    }
}

impl From<&Verdict> for wit::Verdict {
    fn from(v: &Verdict) -> Self {
        wit::Verdict {
            critic: v.critic.clone(),
            aspect: v.aspect.clone(),
            pass: v.pass,
            margin: v.margin,
            reason: v.reason.clone(),
        }
    }
}

impl From<wit::Verdict> for Verdict {
    fn from(v: wit::Verdict) -> Self {
        Verdict { critic: v.critic, aspect: v.aspect, pass: v.pass, margin: v.margin, reason: v.reason }
    }
}

impl From<&Sample> for wit::Sample {
    fn from(s: &Sample) -> Self {
        wit::Sample {
            id: s.id.clone(),
            instruction_type: s.instruction_type.clone(),
            instruction: s.instruction.clone(),
            response: s.response.clone(),
            instruction_generation: (&s.instruction_generation).into(),
            response_generation: (&s.response_generation).into(),
            verdicts: s.verdicts.iter().map(Into::into).collect(),
            metadata: s.metadata.iter().map(|(k, v)| wit::Entry { key: k.clone(), value: v.clone() }).collect(),
        }
    }
}

impl From<wit::Sample> for Sample {
    fn from(s: wit::Sample) -> Self {
        Sample {
            id: s.id,
            instruction_type: s.instruction_type,
            instruction: s.instruction,
            response: s.response,
            instruction_generation: s.instruction_generation.into(),
            response_generation: s.response_generation.into(),
            verdicts: s.verdicts.into_iter().map(Into::into).collect(),
            metadata: s.metadata.into_iter().map(|e| (e.key, e.value)).collect(),
        }
    }
}

/// A completion-mode prompt from a template plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// Text for the model to continue.
    pub text: String,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Token budget.
    pub max_tokens: u32,
}

impl WireSize for Prompt {
    fn wire_size(&self) -> usize {
        16 + self.text.len() + self.stop.iter().map(|s| s.len() + 8).sum::<usize>()
    }
}

impl From<template::exports::kiln::stages::templating::Prompt> for Prompt {
    fn from(p: template::exports::kiln::stages::templating::Prompt) -> Self {
        Prompt { text: p.text, stop: p.stop, max_tokens: p.max_tokens }
    }
}

/// A request for an instruction prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionRequest {
    /// Id of the sample to be.
    pub id: String,
    /// Instruction type.
    pub instruction_type: String,
    /// Description of the type.
    #[serde(default)]
    pub type_description: String,
    /// Few-shot examples.
    pub examples: Vec<String>,
}

impl RecordId for InstructionRequest {
    fn record_id(&self) -> &str {
        &self.id
    }
}

impl From<&InstructionRequest> for template::exports::kiln::stages::templating::InstructionRequest {
    fn from(r: &InstructionRequest) -> Self {
        Self {
            id: r.id.clone(),
            instruction_type: r.instruction_type.clone(),
            type_description: r.type_description.clone(),
            examples: r.examples.clone(),
        }
    }
}

/// A request for a response prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRequest {
    /// Sample id.
    pub id: String,
    /// Instruction type.
    pub instruction_type: String,
    /// The instruction.
    pub instruction: String,
}

impl RecordId for ResponseRequest {
    fn record_id(&self) -> &str {
        &self.id
    }
}

impl From<&ResponseRequest> for template::exports::kiln::stages::templating::ResponseRequest {
    fn from(r: &ResponseRequest) -> Self {
        Self { id: r.id.clone(), instruction_type: r.instruction_type.clone(), instruction: r.instruction.clone() }
    }
}

/// A raw instruction completion to parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionCompletion {
    /// Sample id.
    pub id: String,
    /// Instruction type.
    pub instruction_type: String,
    /// The prompt that was continued.
    #[serde(default)]
    pub prompt: String,
    /// The continuation.
    pub text: String,
}

impl RecordId for InstructionCompletion {
    fn record_id(&self) -> &str {
        &self.id
    }
}

impl From<&InstructionCompletion> for template::exports::kiln::stages::templating::InstructionCompletion {
    fn from(c: &InstructionCompletion) -> Self {
        Self {
            id: c.id.clone(),
            instruction_type: c.instruction_type.clone(),
            prompt: c.prompt.clone(),
            text: c.text.clone(),
        }
    }
}

/// The instruction parsed from a completion, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parsed {
    /// The instruction.
    Instruction(String),
    /// Why it was rejected.
    Rejected(String),
}

impl WireSize for Parsed {
    fn wire_size(&self) -> usize {
        match self {
            Parsed::Instruction(s) | Parsed::Rejected(s) => 8 + s.len(),
        }
    }
}

impl From<template::exports::kiln::stages::templating::Parsed> for Parsed {
    fn from(p: template::exports::kiln::stages::templating::Parsed) -> Self {
        use template::exports::kiln::stages::templating::Parsed as P;
        match p {
            P::Instruction(s) => Parsed::Instruction(s),
            P::Rejected(s) => Parsed::Rejected(s),
        }
    }
}

/// A cleaner's decision about one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum CleanOutcome {
    /// Kept (possibly rewritten).
    Keep {
        /// The cleaned sample.
        sample: Sample,
    },
    /// Dropped with a reason.
    Dropped {
        /// Stable short code.
        code: String,
        /// Details.
        detail: String,
    },
}

impl WireSize for CleanOutcome {
    fn wire_size(&self) -> usize {
        match self {
            CleanOutcome::Keep { sample } => sample.wire_size(),
            CleanOutcome::Dropped { code, detail } => 16 + code.len() + detail.len(),
        }
    }
}

/// A cleaner's reply about one sample as it crosses the boundary: for a kept sample only what
/// changed, applied by the host to its own copy with [`CleanReply::apply`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CleanReply {
    Keep { instruction: Option<String>, response: Option<String>, notes: Vec<(String, String)> },
    Dropped { code: String, detail: String },
}

impl CleanReply {
    /// The outcome for `sample`, the sample this reply is about.
    pub(crate) fn apply(self, sample: &Sample) -> CleanOutcome {
        match self {
            CleanReply::Keep { instruction, response, notes } => {
                let mut sample = sample.clone();
                if let Some(i) = instruction {
                    sample.instruction = i;
                }
                if let Some(r) = response {
                    sample.response = r;
                }
                sample.metadata.extend(notes);
                CleanOutcome::Keep { sample }
            }
            CleanReply::Dropped { code, detail } => CleanOutcome::Dropped { code, detail },
        }
    }
}

impl WireSize for CleanReply {
    fn wire_size(&self) -> usize {
        match self {
            CleanReply::Keep { instruction, response, notes } => {
                let text = |t: &Option<String>| t.as_ref().map_or(0, |t| t.len() + 8);
                16 + text(instruction) + text(response) + notes.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>()
            }
            CleanReply::Dropped { code, detail } => 16 + code.len() + detail.len(),
        }
    }
}

impl From<super::bindings::cleaner::exports::kiln::stages::cleaning::Outcome> for CleanReply {
    fn from(o: super::bindings::cleaner::exports::kiln::stages::cleaning::Outcome) -> Self {
        use super::bindings::cleaner::exports::kiln::stages::cleaning::Outcome as O;
        match o {
            O::Keep(e) => CleanReply::Keep {
                instruction: e.instruction,
                response: e.response,
                notes: e.notes.into_iter().map(|n| (n.key, n.value)).collect(),
            },
            O::Dropped(d) => CleanReply::Dropped { code: d.code, detail: d.detail },
        }
    }
}

/// How a QC metric passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Comparison {
    /// value < threshold.
    LessThan,
    /// value <= threshold.
    AtMost,
    /// value > threshold.
    GreaterThan,
    /// value >= threshold.
    AtLeast,
    /// Never fails.
    ReportOnly,
}

/// One QC metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Name.
    pub name: String,
    /// Value.
    pub value: f64,
    /// Threshold.
    pub threshold: Option<f64>,
    /// Comparison.
    pub comparison: Comparison,
    /// Pass.
    pub pass: bool,
}

/// A QC rule's report over a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcReport {
    /// Metrics.
    pub metrics: Vec<Metric>,
    /// Pass.
    pub pass: bool,
    /// Reasons for failure.
    pub reasons: Vec<String>,
}

impl WireSize for QcReport {
    fn wire_size(&self) -> usize {
        self.metrics.iter().map(|m| 32 + m.name.len()).sum::<usize>()
            + self.reasons.iter().map(|r| 8 + r.len()).sum::<usize>()
    }
}

impl From<qc::exports::kiln::stages::checking::Report> for QcReport {
    fn from(r: qc::exports::kiln::stages::checking::Report) -> Self {
        use qc::exports::kiln::stages::checking::Comparison as C;
        QcReport {
            metrics: r
                .metrics
                .into_iter()
                .map(|m| Metric {
                    name: m.name,
                    value: m.value,
                    threshold: m.threshold,
                    comparison: match m.comparison {
                        C::LessThan => Comparison::LessThan,
                        C::AtMost => Comparison::AtMost,
                        C::GreaterThan => Comparison::GreaterThan,
                        C::AtLeast => Comparison::AtLeast,
                        C::ReportOnly => Comparison::ReportOnly,
                    },
                    pass: m.pass,
                })
                .collect(),
            pass: r.pass,
            reasons: r.reasons,
        }
    }
}

/// A critic's request to score a judging prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    /// Sample id.
    pub sample_id: String,
    /// Aspect.
    pub aspect: String,
    /// Judging prompt.
    pub prompt: String,
    /// First answer (e.g. " A").
    pub answer_a: String,
    /// Second answer (e.g. " B").
    pub answer_b: String,
}

impl WireSize for ScoreRequest {
    fn wire_size(&self) -> usize {
        40 + self.sample_id.len() + self.aspect.len() + self.prompt.len() + self.answer_a.len() + self.answer_b.len()
    }
}

impl From<critic::exports::kiln::stages::judging::ScoreRequest> for ScoreRequest {
    fn from(r: critic::exports::kiln::stages::judging::ScoreRequest) -> Self {
        ScoreRequest { sample_id: r.sample_id, aspect: r.aspect, prompt: r.prompt, answer_a: r.answer_a, answer_b: r.answer_b }
    }
}

/// The host's scores for a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Score {
    /// Sample id.
    pub sample_id: String,
    /// Aspect.
    pub aspect: String,
    /// log-prob of answer A.
    pub logprob_a: f64,
    /// log-prob of answer B.
    pub logprob_b: f64,
}

impl From<&Score> for critic::exports::kiln::stages::judging::Score {
    fn from(s: &Score) -> Self {
        Self { sample_id: s.sample_id.clone(), aspect: s.aspect.clone(), logprob_a: s.logprob_a, logprob_b: s.logprob_b }
    }
}

/// A critic's verdict about one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    /// Sample id.
    pub sample_id: String,
    /// Verdict.
    pub verdict: Verdict,
}

impl WireSize for Judged {
    fn wire_size(&self) -> usize {
        48 + self.sample_id.len() + self.verdict.critic.len() + self.verdict.aspect.len() + self.verdict.reason.len()
    }
}

impl From<critic::exports::kiln::stages::judging::Judged> for Judged {
    fn from(j: critic::exports::kiln::stages::judging::Judged) -> Self {
        Judged { sample_id: j.sample_id, verdict: j.verdict.into() }
    }
}
