//! The records a run writes (JSON lines), and how to write and read them.

use serde::{Deserialize, Serialize};

use crate::plugin::{FinishReason, Generation, Parsed, Sample, Verdict};
use crate::provenance::manifest::SampleProvenance;
use crate::sandbox::{FsError, RunDir};

/// A generation phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Instructions from few-shot prompts.
    Instruction,
    /// Responses to instructions.
    Response,
}

impl Phase {
    /// The name used in file names and seeds.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Instruction => "instruction",
            Phase::Response => "response",
        }
    }
}

/// One raw completion exactly as the model produced it, before any plugin touched it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompletion {
    /// Sample id.
    pub id: String,
    /// Sample index in the shard.
    pub index: usize,
    /// Phase.
    pub phase: Phase,
    /// The sampler's seed.
    pub seed: u64,
    /// The prompt continued.
    pub prompt: String,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Token budget.
    pub max_tokens: u32,
    /// The continuation (stop sequence cut off).
    pub text: String,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// The stop sequence that fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequence: Option<String>,
    /// Prompt tokens (BOS included).
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// When it was generated.
    pub generated_at: String,
}

impl RawCompletion {
    /// The generation record plugins see.
    pub fn generation(&self) -> Generation {
        Generation {
            finish_reason: self.finish_reason,
            stop_sequence: self.stop_sequence.clone(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            max_tokens: self.max_tokens,
        }
    }
}

/// One sample of the raw pool: its plan, its completions and the template's parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecord {
    /// Sample id.
    pub id: String,
    /// Index in the shard.
    pub index: usize,
    /// Instruction type.
    pub instruction_type: String,
    /// The few-shot examples shown.
    pub examples: Vec<String>,
    /// The instruction completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<RawCompletion>,
    /// The template's parse of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parsed: Option<Parsed>,
    /// The response completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<RawCompletion>,
    /// The template quarantined this sample (plugin and error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
}

impl RawRecord {
    /// The sample to clean, when the record has an instruction and a response.
    pub fn sample(&self) -> Option<Sample> {
        let (Some(i), Some(Parsed::Instruction(text)), Some(r)) = (&self.instruction, &self.parsed, &self.response) else {
            return None;
        };
        Some(Sample {
            id: self.id.clone(),
            instruction_type: self.instruction_type.clone(),
            instruction: text.clone(),
            response: r.text.clone(),
            instruction_generation: i.generation(),
            response_generation: r.generation(),
            verdicts: vec![],
            metadata: Default::default(),
        })
    }
}

/// A dropped sample and who dropped it why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropped {
    /// Sample id.
    pub id: String,
    /// The stage: "template" (unparseable instruction), "cleaner", "critic".
    pub stage: String,
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's sha256.
    pub plugin_sha256: String,
    /// Stable short code ("too-short", "critic-response", ...).
    pub code: String,
    /// Details with the values.
    pub detail: String,
    /// The sample as the plugin saw it (absent for instructions that never parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Sample>,
}

/// A scoring request and its log-probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoredRequest {
    /// What was judged.
    pub aspect: String,
    /// The judging prompt.
    pub prompt: String,
    /// First answer.
    pub answer_a: String,
    /// Second answer.
    pub answer_b: String,
    /// log-prob of answer A after the prompt (written as a string: exact when read back).
    #[serde(with = "exact_f64")]
    pub logprob_a: f64,
    /// log-prob of answer B.
    #[serde(with = "exact_f64")]
    pub logprob_b: f64,
}

/// An f64 written as its shortest exact decimal string and read back bit for bit (serde_json
/// reads numbers to within an ulp or so, and a replay's stored scores must equal the computed
/// ones exactly). Plain JSON numbers are accepted too.
pub mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Write.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    /// Read.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(f64),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(n),
            Either::Text(t) => t.parse().map_err(|e| serde::de::Error::custom(format!("not a number: {t:?}: {e}"))),
        }
    }
}

/// One critic's work on one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticRecord {
    /// Sample id.
    pub sample_id: String,
    /// The critic's name.
    pub critic: String,
    /// The critic's sha256.
    pub critic_sha256: String,
    /// Its requests and their scores.
    pub scores: Vec<ScoredRequest>,
    /// Its verdicts.
    pub verdicts: Vec<Verdict>,
}

/// An accepted sample with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    /// The sample.
    pub sample: Sample,
    /// Where it came from.
    pub provenance: SampleProvenance,
}

#[cfg(test)]
mod tests {
    #[test]
    fn scores_round_trip_exactly() {
        let r = super::ScoredRequest {
            aspect: "response".into(),
            prompt: "p".into(),
            answer_a: " A".into(),
            answer_b: " B".into(),
            logprob_a: -5.123_456_789_012_345_6,
            logprob_b: -0.675_683_498_382_568_4,
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: super::ScoredRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.logprob_a.to_bits(), r.logprob_a.to_bits());
        assert_eq!(back.logprob_b.to_bits(), r.logprob_b.to_bits());
    }
}

/// JSON lines of `items`.
pub fn jsonl<T: Serialize>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for it in items {
        serde_json::to_writer(&mut out, it).expect("records serialise");
        out.push(b'\n');
    }
    out
}

/// Write `items` as JSON lines to `rel`, atomically; returns the file's sha256.
pub fn write_jsonl<T: Serialize>(dir: &RunDir, rel: &str, items: &[T]) -> Result<String, FsError> {
    let bytes = jsonl(items);
    dir.write_atomic(rel, &bytes)?;
    Ok(crate::provenance::sha256_hex(&bytes))
}

/// Write pretty JSON to `rel`, atomically; returns the file's sha256.
pub fn write_json<T: Serialize>(dir: &RunDir, rel: &str, value: &T) -> Result<String, FsError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("records serialise");
    bytes.push(b'\n');
    dir.write_atomic(rel, &bytes)?;
    Ok(crate::provenance::sha256_hex(&bytes))
}
