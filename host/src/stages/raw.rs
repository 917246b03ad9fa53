//! The raw pool as it is generated: completions are written in chunk files
//! (`completions/<shard>/<phase>-NNNNN.jsonl`, each written atomically) as sequences finish,
//! so a kill loses at most the completions of one unwritten chunk. On resume the chunks are
//! read back, checked against the plan, and only the missing completions are generated; since
//! each sequence is seeded on its own and its logits do not depend on its batch, they come out
//! as they would have.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::config::pilot::PhaseSampling;
use crate::model::{BatchOptions, Engine, Finish, GenRequest};
use crate::plugin::FinishReason;
use crate::provenance::manifest::now;
use crate::sandbox::RunDir;

use super::error::StageError;
use super::progress::{Progress, Timings};
use super::records::{jsonl, Phase, RawCompletion};

/// Something to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenJob {
    /// Sample index.
    pub index: usize,
    /// Sample id.
    pub id: String,
    /// Prompt text.
    pub prompt: String,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Token budget.
    pub max_tokens: u32,
    /// Sampler seed.
    pub seed: u64,
    /// Stop sequences count only after the first non-whitespace text.
    pub stop_after_text: bool,
}

/// Debug hook for crash tests: `KILN_DEBUG_ABORT_AFTER_RAW=N` aborts the process (no cleanup,
/// like `kill -9`) as soon as N raw completions have been written by this process.
pub const ABORT_AFTER_RAW_ENV: &str = "KILN_DEBUG_ABORT_AFTER_RAW";

/// Debug hook for crash tests: `KILN_DEBUG_ABORT_AT=<point>` aborts the process at a named
/// point ("after-instructions", "after-raw-pool", "before-manifest").
pub const ABORT_AT_ENV: &str = "KILN_DEBUG_ABORT_AT";

/// Abort here if `KILN_DEBUG_ABORT_AT` names this point.
pub fn abort_point(point: &str) {
    if std::env::var(ABORT_AT_ENV).is_ok_and(|p| p == point) {
        eprintln!("kiln: {ABORT_AT_ENV}={point}: aborting");
        std::process::abort();
    }
}

fn abort_after_raw() -> Option<usize> {
    std::env::var(ABORT_AFTER_RAW_ENV).ok().and_then(|v| v.trim().parse().ok())
}

fn chunk_dir(shard: u64) -> String {
    format!("completions/{shard:05}")
}

/// The chunk files of a phase that exist, sorted by number.
fn chunk_files(run: &Path, shard: u64, phase: Phase) -> Result<Vec<(u32, String)>, StageError> {
    let dir = run.join(chunk_dir(shard));
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => return Err(crate::sandbox::FsError { action: "list", path: dir, source }.into()),
    };
    let prefix = format!("{}-", phase.name());
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(num) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".jsonl")) else { continue };
        if let Ok(n) = num.parse::<u32>() {
            out.push((n, format!("{}/{name}", chunk_dir(shard))));
        }
    }
    out.sort();
    Ok(out)
}

/// Read every completion of a phase already on disk.
pub fn read_chunks(run: &RunDir, shard: u64, phase: Phase) -> Result<(Vec<RawCompletion>, u32), StageError> {
    let files = chunk_files(run.path(), shard, phase)?;
    let next = files.last().map_or(0, |(n, _)| n + 1);
    let mut out = Vec::new();
    for (_, rel) in files {
        let bytes = run.read_optional(&rel)?.unwrap_or_default();
        for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let c: RawCompletion = serde_json::from_str(line).map_err(|e| StageError::Corrupt {
                dir: run.path().to_path_buf(),
                what: format!("{rel} line {}: not a raw completion: {e}", i + 1),
            })?;
            out.push(c);
        }
    }
    Ok((out, next))
}

fn finish(f: Finish) -> FinishReason {
    match f {
        Finish::Stop => FinishReason::Stop,
        Finish::Eos => FinishReason::Eos,
        Finish::Length => FinishReason::Length,
    }
}

/// What a generation phase needs besides its jobs.
pub struct PhaseRun<'a> {
    /// The model.
    pub engine: &'a Engine,
    /// The run directory.
    pub run: &'a RunDir,
    /// The shard.
    pub shard: u64,
    /// Sampling.
    pub sampling: &'a PhaseSampling,
    /// Sequences decoded together.
    pub batch_size: usize,
    /// Completions per chunk file.
    pub chunk_size: usize,
    /// Bars.
    pub progress: &'a Progress,
    /// Raw completions written by this process so far (for the crash-test hook).
    pub written: &'a mut usize,
}

/// Generate every job of a phase that is not on disk yet, writing chunks as sequences finish.
/// Returns every completion of the phase by sample index, and how many were already there.
pub fn generate_phase(
    p: PhaseRun<'_>,
    phase: Phase,
    jobs: &[GenJob],
    timings: &mut Timings,
) -> Result<(BTreeMap<usize, RawCompletion>, usize), StageError> {
    let t_io = Instant::now();
    let (existing, mut next_chunk) = read_chunks(p.run, p.shard, phase)?;
    timings.add("io", t_io.elapsed());
    let by_index: BTreeMap<usize, &GenJob> = jobs.iter().map(|j| (j.index, j)).collect();
    let mut done: BTreeMap<usize, RawCompletion> = BTreeMap::new();
    for c in existing {
        let Some(job) = by_index.get(&c.index) else {
            return Err(StageError::Corrupt {
                dir: p.run.path().to_path_buf(),
                what: format!("{} completion of sample {} (index {}) is not part of this run's plan", phase.name(), c.id, c.index),
            });
        };
        if c.id != job.id || c.prompt != job.prompt || c.seed != job.seed || c.stop != job.stop || c.max_tokens != job.max_tokens {
            return Err(StageError::Corrupt {
                dir: p.run.path().to_path_buf(),
                what: format!(
                    "the stored {} completion of sample {} was made from another prompt, seed or budget than this run's plan; \
                     the run folder was changed by something other than this config",
                    phase.name(),
                    c.id
                ),
            });
        }
        // A duplicate (the same completion written twice) is identical by construction; keep one.
        done.entry(c.index).or_insert(c);
    }
    let resumed = done.len();
    let todo: Vec<&GenJob> = jobs.iter().filter(|j| !done.contains_key(&j.index)).collect();
    let label = match phase {
        Phase::Instruction => "instructions",
        Phase::Response => "responses",
    };
    if resumed > 0 {
        tracing::info!("{label}: {resumed} of {} already generated; generating the other {}", jobs.len(), todo.len());
    }
    if todo.is_empty() {
        return Ok((done, resumed));
    }
    let reqs: Vec<GenRequest> = todo
        .iter()
        .map(|j| GenRequest {
            id: j.id.clone(),
            prompt: j.prompt.clone(),
            stop: j.stop.clone(),
            max_tokens: j.max_tokens,
            seed: j.seed,
            stop_after_text: j.stop_after_text,
        })
        .collect();
    let bar = p.progress.bar(label, jobs.len() as u64, resumed as u64);
    let abort_after = abort_after_raw();
    let mut buffer: Vec<RawCompletion> = Vec::new();
    let mut failure: Option<StageError> = None;
    let mut io = std::time::Duration::ZERO;
    let written = p.written;
    let run = p.run;
    let shard = p.shard;
    let chunk_size = p.chunk_size;
    let mut flush = |buffer: &mut Vec<RawCompletion>, failure: &mut Option<StageError>, io: &mut std::time::Duration| {
        if buffer.is_empty() || failure.is_some() {
            return;
        }
        let t = Instant::now();
        let rel = format!("{}/{}-{next_chunk:05}.jsonl", chunk_dir(shard), phase.name());
        match run.write_atomic(&rel, &jsonl(buffer)) {
            Ok(()) => {
                next_chunk += 1;
                *written += buffer.len();
                buffer.clear();
                if abort_after.is_some_and(|n| *written >= n) {
                    eprintln!("kiln: {ABORT_AFTER_RAW_ENV}: {written} raw completions written; aborting");
                    std::process::abort();
                }
            }
            Err(e) => *failure = Some(e.into()),
        }
        *io += t.elapsed();
    };
    let t_gen = Instant::now();
    let result = p.engine.generate(&reqs, &p.sampling.params, BatchOptions { max_batch: p.batch_size }, &mut |i, g| {
        let job = todo[i];
        buffer.push(RawCompletion {
            id: job.id.clone(),
            index: job.index,
            phase,
            seed: job.seed,
            prompt: job.prompt.clone(),
            stop: job.stop.clone(),
            max_tokens: job.max_tokens,
            text: g.text.clone(),
            finish_reason: finish(g.finish_reason),
            stop_sequence: g.stop_sequence.clone(),
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            generated_at: now(),
        });
        bar.inc(1);
        if buffer.len() >= chunk_size {
            flush(&mut buffer, &mut failure, &mut io);
        }
    });
    flush(&mut buffer, &mut failure, &mut io);
    bar.finish_and_clear();
    let total = t_gen.elapsed();
    timings.add(&format!("generate_{}s", phase.name()), total.saturating_sub(io));
    timings.add("io", io);
    result?;
    if let Some(e) = failure {
        return Err(e);
    }
    let (all, _) = read_chunks(run, shard, phase)?;
    for c in all {
        done.entry(c.index).or_insert(c);
    }
    if done.len() != jobs.len() {
        return Err(StageError::Corrupt {
            dir: run.path().to_path_buf(),
            what: format!("{} of {} {label} are on disk after generation", done.len(), jobs.len()),
        });
    }
    Ok((done, resumed))
}
