//! Pipeline stages: each reads inputs, calls the model and the plugins in batches, writes a run
//! directory through [`crate::sandbox::RunDir`] (atomic writes only) and can be resumed.
//!
//! - [`pilot`]: completion-mode generation (instructions, then responses) through the plugins
//!   to a QC gate; the raw pool is written in chunks as it is generated, so a killed run
//!   resumes where it stopped and ends with the bytes an uninterrupted run writes.
//! - [`replay`]: another config's cleaners, critics and QC rules on a run's stored raw pool.
//! - [`compare`]: several runs' QC metrics side by side.
//! - [`scale`]: a gated pilot's recipe in shards (each a pilot-style run), merged with
//!   cross-shard dedup and QC on the whole; [`slurm`] runs the shards as a Slurm job array.
//! - [`testset`]: held-out instructions kept apart from a training dataset ([`dataset`]).
//! - [`eval`]: paired evaluation of two arms on a test set, with statistics, report and chart.
//!
//! A run directory (`artifacts/<run-id>/`):
//!
//! ```text
//! manifest.json                      written last: its presence marks a complete run
//! config.resolved.toml               the config, every default explicit, plugins pinned
//! run.json                           when the run was first started and its config hash
//! completions/00000/<phase>-NNNNN.jsonl  raw completions in chunks, as generated
//! raw/shard-00000.jsonl              the raw pool: per sample, prompts and completions
//! pilot/shard-00000.jsonl            accepted samples, each with its provenance
//! pilot/cleaned/shard-00000.jsonl    the set after the cleaners and critics (what QC judged)
//! pilot/dropped/shard-00000.jsonl    dropped samples: stage, plugin, code, detail
//! critic/shard-00000.jsonl           per sample and critic: requests, log-probs, verdicts
//! quarantine/<plugin>.jsonl          records that made a plugin fail, with the error
//! qc_report.json, qc_report.md       every metric, threshold, pass/fail and reason
//! stats/00000.json                   counts and the wall-time breakdown
//! logs/pilot.log                     what each invocation did
//! ```

pub mod chart;
pub mod compare;
pub mod dataset;
pub mod error;
pub mod eval;
pub mod pilot;
pub mod process;
pub mod parquet;
pub mod progress;
pub mod raw;
pub mod records;
pub mod replay;
pub mod report;
pub mod review;
pub mod runs;
pub mod scale;
pub mod seeds;
pub mod slurm;
pub mod testset;
pub mod train;

pub use error::StageError;

/// Exit code of a run that finished but whose gate failed (0: passed; 1: error).
pub const EXIT_GATE_FAILED: u8 = 2;

/// The shard a pilot is (a pilot is one shard).
pub const PILOT_SHARD: u64 = 0;
