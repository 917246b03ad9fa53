//! kiln's own [`Sample`] lowered into a guest by reference: the WIT `sample` record made of
//! borrowed fields, so that a call copies each text once, straight into the guest's memory,
//! instead of first cloning every sample into a generated `wit::Sample`.
//!
//! The field names and order are those of `record sample` (and its parts) in `wit/`; wasmtime
//! checks them against the component's function type when the function is looked up, so a
//! mismatch is an error at the first call, never a silent misreading.

use wasmtime::component::{ComponentType, Lower};

use super::bindings::wit;
use super::types::{Generation, Sample, Verdict};

/// `record generation`, borrowed.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub(crate) struct GenerationRef<'a> {
    #[component(name = "finish-reason")]
    finish_reason: wit::FinishReason,
    #[component(name = "stop-sequence")]
    stop_sequence: Option<&'a str>,
    #[component(name = "prompt-tokens")]
    prompt_tokens: u32,
    #[component(name = "completion-tokens")]
    completion_tokens: u32,
    #[component(name = "max-tokens")]
    max_tokens: u32,
}

/// `record verdict`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct VerdictRef<'a> {
    critic: &'a str,
    aspect: &'a str,
    pass: bool,
    margin: f64,
    reason: &'a str,
}

/// `record entry`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct EntryRef<'a> {
    key: &'a str,
    value: &'a str,
}

/// `record sample`, borrowed from a [`Sample`].
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct SampleRef<'a> {
    id: &'a str,
    #[component(name = "instruction-type")]
    instruction_type: &'a str,
    instruction: &'a str,
    response: &'a str,
    #[component(name = "instruction-generation")]
    instruction_generation: GenerationRef<'a>,
    #[component(name = "response-generation")]
    response_generation: GenerationRef<'a>,
    verdicts: Vec<VerdictRef<'a>>,
    metadata: Vec<EntryRef<'a>>,
}

impl<'a> From<&'a Generation> for GenerationRef<'a> {
    fn from(g: &'a Generation) -> Self {
        GenerationRef {
            finish_reason: g.finish_reason.into(),
            stop_sequence: g.stop_sequence.as_deref(),
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            max_tokens: g.max_tokens,
        }
    }
}

impl<'a> From<&'a Verdict> for VerdictRef<'a> {
    fn from(v: &'a Verdict) -> Self {
        VerdictRef { critic: &v.critic, aspect: &v.aspect, pass: v.pass, margin: v.margin, reason: &v.reason }
    }
}

impl<'a> From<&'a Sample> for SampleRef<'a> {
    fn from(s: &'a Sample) -> Self {
        SampleRef {
            id: &s.id,
            instruction_type: &s.instruction_type,
            instruction: &s.instruction,
            response: &s.response,
            instruction_generation: (&s.instruction_generation).into(),
            response_generation: (&s.response_generation).into(),
            // Empty vectors do not allocate: a sample without verdicts or metadata costs nothing here.
            verdicts: s.verdicts.iter().map(Into::into).collect(),
            metadata: s.metadata.iter().map(|(key, value)| EntryRef { key, value }).collect(),
        }
    }
}

/// The borrowed form of a batch of samples.
pub(crate) fn sample_refs(samples: &[Sample]) -> Vec<SampleRef<'_>> {
    samples.iter().map(Into::into).collect()
}
