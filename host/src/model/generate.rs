//! Batched generation with per-sequence seeded sampling, stop sequences matched on decoded
//! text, EOS and token budgets; and batched scoring of candidate continuations.

use std::collections::VecDeque;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::error::ModelError;
use super::profile::phase;
use super::sample::Sampler;
use super::transformer::{log_softmax, SeqCache, Step, Want};

/// Sampling parameters. `temperature` 0 means greedy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f64,
    /// Nucleus mass; 1.0 = off.
    pub top_p: f64,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0 }
    }
}

impl SamplingParams {
    /// Check the values, naming the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// A stop sequence appeared (it is cut off).
    Stop,
    /// The model produced an end-of-sequence token.
    Eos,
    /// The token budget was spent.
    Length,
}

/// One thing to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenRequest {
    /// Caller's id.
    #[serde(default)]
    pub id: String,
    /// The text to continue.
    pub prompt: String,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Token budget.
    pub max_tokens: u32,
    /// The sequence's own seed: the same request and seed give the same tokens in any batch.
    #[serde(default)]
    pub seed: u64,
    /// Stop sequences count only once the completion has non-whitespace text: a stop
    /// sequence inside the completion's leading whitespace (an answer that opens with a blank
    /// line) does not end it. The leading whitespace stays in the returned text.
    #[serde(default)]
    pub stop_after_text: bool,
}

/// What came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    /// Caller's id.
    pub id: String,
    /// Completion text (stop sequence removed).
    pub text: String,
    /// Why it stopped.
    pub finish_reason: Finish,
    /// The stop sequence that fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_sequence: Option<String>,
    /// Prompt tokens (BOS included).
    pub prompt_tokens: u32,
    /// Generated tokens (up to and including the one that completed a stop sequence or EOS).
    pub completion_tokens: u32,
    /// The generated token ids.
    pub tokens: Vec<u32>,
}

/// Batching options.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Sequences decoded together.
    pub max_batch: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_batch: 16 }
    }
}

/// What the model gives the sampler for one sequence: its whole logits row, or the entries
/// of it that hold the sampler's candidates.
enum Logits {
    Row(Vec<f32>),
    Entries(Vec<(f32, u32)>),
}

struct Active {
    idx: usize,
    cache: SeqCache,
    feed: Vec<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
    prompt_len: usize,
}

/// Earliest occurrence of any stop sequence in `text` that ends after byte `ws_end` (the end
/// of the leading whitespace with `stop_after_text`, else 0): (byte offset, the sequence). A
/// stop sequence lying wholly inside the leading whitespace does not count; one that reaches
/// into the text does ("\n\nAnswer:" stops at "\nAnswer:").
fn find_stop<'a>(text: &str, ws_end: usize, stops: &'a [String]) -> Option<(usize, &'a String)> {
    let first_counting = |s: &str| {
        let mut from = 0;
        while let Some(p) = text[from..].find(s).map(|p| from + p) {
            if p + s.len() > ws_end {
                return Some(p);
            }
            // Overlapping matches: go on from the next character.
            from = p + text[p..].chars().next().map_or(1, char::len_utf8);
        }
        None
    };
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| first_counting(s).map(|p| (p, s))).min_by_key(|(p, _)| *p)
}

/// The end of the leading whitespace of `text` with `after_text` (the end of the text when
/// there is no other character yet), else 0.
fn stop_search_start(text: &str, after_text: bool) -> usize {
    if after_text {
        text.find(|c: char| !c.is_whitespace()).unwrap_or(text.len())
    } else {
        0
    }
}

impl Engine {
    /// Generate for every request, `opts.max_batch` sequences at a time (continuous
    /// batching: a finished sequence's slot goes to the next request at once). `on_done` is
    /// called as each finishes, with its index in `reqs`.
    pub fn generate(
        &self,
        reqs: &[GenRequest],
        sampling: &SamplingParams,
        opts: BatchOptions,
        on_done: &mut dyn FnMut(usize, &Generated),
    ) -> Result<Vec<Generated>, ModelError> {
        sampling.validate().map_err(ModelError::Request)?;
        let eos = self.tokenizer.eos_ids();
        let mut results: Vec<Option<Generated>> = vec![None; reqs.len()];
        let mut pending: VecDeque<usize> = (0..reqs.len()).collect();
        let mut active: Vec<Active> = Vec::new();
        let limit = self.model.max_positions();
        // With device reductions, the device sends only what the sampler needs of each row.
        let needed = if self.model.device_reductions() { sampling.candidates_needed(self.model.cfg.vocab) } else { None };
        let dev = self.model.device().clone();
        loop {
            while active.len() < opts.max_batch.max(1) {
                let Some(idx) = pending.pop_front() else { break };
                let r = &reqs[idx];
                let ids = self.prompt_ids(&r.prompt)?;
                if ids.len() + r.max_tokens as usize > limit {
                    return Err(ModelError::Request(format!(
                        "request \"{}\": {} prompt tokens + {} max tokens exceed the {limit} positions available",
                        r.id,
                        ids.len(),
                        r.max_tokens
                    )));
                }
                if r.max_tokens == 0 || ids.is_empty() {
                    let g = Generated {
                        id: r.id.clone(),
                        text: String::new(),
                        finish_reason: Finish::Length,
                        stop_sequence: None,
                        prompt_tokens: ids.len() as u32,
                        completion_tokens: 0,
                        tokens: vec![],
                    };
                    on_done(idx, &g);
                    results[idx] = Some(g);
                    continue;
                }
                active.push(Active {
                    idx,
                    cache: self.model.new_cache(),
                    prompt_len: ids.len(),
                    feed: ids,
                    generated: Vec::new(),
                    sampler: Sampler::new(r.seed, *sampling),
                });
            }
            if active.is_empty() {
                break;
            }
            let logits: Vec<Logits> = {
                let mut steps: Vec<Step<'_>> = active
                    .iter_mut()
                    .map(|a| Step { cache: &mut a.cache, tokens: &a.feed, want: Want::Last })
                    .collect();
                match needed {
                    Some(k) => self.model.forward_top(&mut steps, k)?.into_iter().map(Logits::Entries).collect(),
                    None => self.model.forward(&mut steps)?.into_iter().map(|rows| Logits::Row(rows.into_iter().next().expect("one logits row per step"))).collect(),
                }
            };
            // Sampling and the stop checks of each sequence are its own: in parallel.
            let dones: Vec<Result<Option<(String, Finish, Option<String>)>, ModelError>> = phase(&dev, "sample", || active
                .par_iter_mut()
                .zip(logits)
                .map(|(a, logits)| {
                    let tok = match &logits {
                        Logits::Row(row) => a.sampler.sample(row),
                        Logits::Entries(e) => a.sampler.sample_candidates(e),
                    };
                    let tok = tok.ok_or_else(|| {
                        ModelError::Request(format!("request \"{}\": the model gave no finite logit (all NaN or -inf) after {} generated tokens", reqs[a.idx].id, a.generated.len()))
                    })?;
                    a.generated.push(tok);
                    let r = &reqs[a.idx];
                    if eos.contains(&tok) {
                        let text = self.tokenizer.decode(&a.generated[..a.generated.len() - 1])?;
                        return Ok(Some((text, Finish::Eos, None)));
                    }
                    let text = self.tokenizer.decode(&a.generated)?;
                    Ok(if let Some((p, s)) = find_stop(&text, stop_search_start(&text, r.stop_after_text), &r.stop) {
                        Some((text[..p].to_string(), Finish::Stop, Some(s.clone())))
                    } else if a.generated.len() >= r.max_tokens as usize {
                        Some((text, Finish::Length, None))
                    } else {
                        a.feed = vec![tok];
                        None
                    })
                })
                .collect());
            let mut finished = Vec::new();
            for (slot, (a, done)) in active.iter_mut().zip(dones).enumerate() {
                let r = &reqs[a.idx];
                if let Some((text, finish_reason, stop_sequence)) = done? {
                    let g = Generated {
                        id: r.id.clone(),
                        text,
                        finish_reason,
                        stop_sequence,
                        prompt_tokens: a.prompt_len as u32,
                        completion_tokens: a.generated.len() as u32,
                        tokens: a.generated.clone(),
                    };
                    on_done(a.idx, &g);
                    results[a.idx] = Some(g);
                    finished.push(slot);
                }
            }
            for slot in finished.into_iter().rev() {
                active.swap_remove(slot);
            }
        }
        Ok(results.into_iter().map(|g| g.expect("every request finished")).collect())
    }
}

/// A prompt and the continuations to score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// Caller's id.
    #[serde(default)]
    pub id: String,
    /// The context.
    pub prompt: String,
    /// Continuations, e.g. [" A", " B"].
    pub candidates: Vec<String>,
}

/// Log-probabilities of each candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Caller's id.
    pub id: String,
    /// Sum of the candidate tokens' log-probabilities, per candidate (natural log).
    pub logprobs: Vec<f64>,
    /// Tokens per candidate.
    pub tokens: Vec<usize>,
}

impl Engine {
    /// Score candidates after prompts, `max_batch` prompts per forward pass. Single-token
    /// candidates of one prompt share one pass; longer candidates get a pass each.
    pub fn score(&self, reqs: &[ScoreRequest], opts: BatchOptions) -> Result<Vec<Scored>, ModelError> {
        struct Job {
            req: usize,
            cand: Option<usize>,
            tokens: Vec<u32>,
            want: Vec<usize>,
            targets: Vec<Vec<u32>>,
        }
        let mut jobs = Vec::new();
        let mut out: Vec<Scored> = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            if r.candidates.is_empty() {
                return Err(ModelError::Request(format!("score request \"{}\" has no candidates", r.id)));
            }
            let prompt = self.prompt_ids(&r.prompt)?;
            if prompt.is_empty() {
                return Err(ModelError::Request(format!("score request \"{}\" has an empty prompt and the model has no BOS", r.id)));
            }
            let cands: Vec<Vec<u32>> = r.candidates.iter().map(|c| self.tokenizer.encode(c)).collect::<Result<_, _>>()?;
            if let Some(k) = cands.iter().position(|c| c.is_empty()) {
                return Err(ModelError::Request(format!("score request \"{}\": candidate {k} ({:?}) has no tokens", r.id, r.candidates[k])));
            }
            out.push(Scored { id: r.id.clone(), logprobs: vec![0.0; cands.len()], tokens: cands.iter().map(Vec::len).collect() });
            if cands.iter().all(|c| c.len() == 1) {
                let n = prompt.len();
                jobs.push(Job { req: i, cand: None, tokens: prompt, want: vec![n - 1], targets: cands });
            } else {
                for (k, c) in cands.into_iter().enumerate() {
                    let mut tokens = prompt.clone();
                    tokens.extend_from_slice(&c[..c.len() - 1]);
                    let want = (prompt.len() - 1..tokens.len()).collect();
                    jobs.push(Job { req: i, cand: Some(k), tokens, want, targets: vec![c] });
                }
            }
        }
        for chunk in jobs.chunks(opts.max_batch.max(1)) {
            let mut caches: Vec<SeqCache> = chunk.iter().map(|_| self.model.new_cache()).collect();
            let mut steps: Vec<Step<'_>> = caches
                .iter_mut()
                .zip(chunk)
                .map(|(c, j)| Step { cache: c, tokens: &j.tokens, want: Want::Rows(j.want.clone()) })
                .collect();
            if self.model.device_reductions() {
                // Only the scored tokens' log-probabilities come back from the device.
                let targets: Vec<Vec<Vec<u32>>> = chunk
                    .iter()
                    .map(|job| match job.cand {
                        None => vec![job.targets.iter().map(|t| t[0]).collect()],
                        Some(_) => job.targets[0].iter().map(|&t| vec![t]).collect(),
                    })
                    .collect();
                let lps = self.model.forward_logprobs(&mut steps, &targets)?;
                for (job, rows) in chunk.iter().zip(lps) {
                    match job.cand {
                        None => out[job.req].logprobs = rows[0].clone(),
                        Some(k) => out[job.req].logprobs[k] = rows.iter().map(|r| r[0]).sum(),
                    }
                }
                continue;
            }
            let logits = self.model.forward(&mut steps)?;
            drop(steps);
            for (job, rows) in chunk.iter().zip(logits) {
                match job.cand {
                    None => {
                        let lp = log_softmax(&rows[0]);
                        for (k, t) in job.targets.iter().enumerate() {
                            out[job.req].logprobs[k] = lp[t[0] as usize];
                        }
                    }
                    Some(k) => {
                        let target = &job.targets[0];
                        out[job.req].logprobs[k] =
                            rows.iter().zip(target).map(|(row, &t)| log_softmax(row)[t as usize]).sum();
                    }
                }
            }
        }
        Ok(out)
    }

    /// The k most likely next tokens after a prompt, with log-probabilities.
    pub fn top_logprobs(&self, prompt: &str, k: usize) -> Result<Vec<(u32, f64)>, ModelError> {
        let ids = self.prompt_ids(prompt)?;
        let mut cache = self.model.new_cache();
        let rows = self.model.forward(&mut [Step { cache: &mut cache, tokens: &ids, want: Want::Last }])?;
        let lp = log_softmax(&rows[0][0]);
        let mut idx: Vec<usize> = (0..lp.len()).collect();
        idx.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
        Ok(idx.into_iter().take(k).map(|i| (i as u32, lp[i])).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_inside_leading_whitespace_wait_for_text() {
        let stops = vec!["\n\n".to_string(), "\nTask:".to_string()];
        let text = "\n\nRoses are red.\n\nTask: more";
        // Plain rule: the blank line at the start ends the completion at once.
        assert_eq!(find_stop(text, stop_search_start(text, false), &stops), Some((0, &stops[0])));
        // After text: the first stop after "Roses" fires; the leading blank line is kept.
        let from = stop_search_start(text, true);
        assert_eq!(from, 2);
        assert_eq!(find_stop(text, from, &stops), Some((16, &stops[0])));
        assert_eq!(&text[..16], "\n\nRoses are red.");
        // Only whitespace so far: nothing fires yet.
        assert_eq!(find_stop("\n\n \n", stop_search_start("\n\n \n", true), &stops), None);
        // The earliest of several stops wins.
        let t2 = "A\nTask: x\n\n";
        assert_eq!(find_stop(t2, stop_search_start(t2, true), &stops), Some((1, &stops[1])));
        // A stop that reaches from the leading whitespace into the text counts.
        let t3 = "\n\nTask: next";
        assert_eq!(find_stop(t3, stop_search_start(t3, true), &stops), Some((1, &stops[1])));
        // Overlapping occurrences: the one that reaches the text is found.
        let s4 = vec!["\n\nX".to_string()];
        assert_eq!(find_stop("\n\n\nX", stop_search_start("\n\n\nX", true), &s4), Some((1, &s4[0])));
    }
}
