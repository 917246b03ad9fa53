//! `kiln model generate` and `kiln model score`: JSON lines in, JSON lines out.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::model::{BatchOptions, Engine, GenRequest, LoadOptions, SamplingParams, ScoreRequest};
use crate::sandbox::read_jsonl;

/// Model selection shared by the model commands.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// A GGUF file (default: the default base model, fetched on first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Load a model that carries a chat template (it is recorded; kiln never applies it).
    #[arg(long)]
    pub allow_chat_template: bool,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// A PEFT adapter applied unmerged (a folder with adapter_config.json and
    /// adapter_model.safetensors, or a training run).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Where the model runs: cpu, cuda or cuda:N (CUDA needs a build by scripts/build-cuda.sh).
    #[arg(long, default_value = "cpu")]
    pub device: crate::model::DeviceSpec,
}

/// The GGUF a model command works on: the one given, or the default base model (fetched on
/// first use).
pub fn model_file(model: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    Ok(match model {
        Some(p) => p.to_path_buf(),
        None => crate::model::fetch::ensure(&crate::model::fetch::GEMMA3_270M, &crate::model::fetch::models_dir(None))?,
    })
}

impl ModelArgs {
    /// Load the model.
    pub fn load(&self) -> anyhow::Result<Engine> {
        let path = model_file(self.model.as_deref())?;
        let mut engine = Engine::load(&path, &LoadOptions { allow_chat_template: self.allow_chat_template, device: self.device })?;
        if let Some(dir) = &self.adapter {
            let dir = crate::cli::adapter::adapter_folder(dir);
            crate::train::Adapters::load_peft(&engine.model.cfg, &dir)?.attach(&mut engine.model)?;
        }
        Ok(engine)
    }
}

/// Generate: reads `{"id", "prompt", "stop": [...], "max_tokens", "seed"}` lines (FILE or `-`),
/// writes `{"id", "text", "finish_reason", "stop_sequence", "prompt_tokens",
/// "completion_tokens", "tokens"}` lines in input order.
#[derive(Debug, Args)]
pub struct GenerateCommand {
    /// Requests, JSON lines.
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Print the generation's throughput on stderr (one JSON line: sequences, prompt and
    /// generated tokens, seconds, tokens per second), timed after one short warm-up request;
    /// the model load excluded.
    #[arg(long)]
    pub stats: bool,
    /// With --stats, also the time of each phase of the passes (embedding, plan, projections,
    /// attention, feed-forward, logits, transfer, sampling) in the stats line; each phase
    /// waits for the device, so the total runs slower.
    #[arg(long, requires = "stats")]
    pub profile: bool,
}

/// One JSON line on stderr: what a command computed and how fast (model load excluded).
fn print_stats(what: &str, device: crate::model::DeviceSpec, batch: usize, sequences: usize, prompt_tokens: usize, new_tokens: usize, secs: f64) {
    let line = serde_json::json!({
        "stats": what, "device": device.to_string(), "batch": batch, "sequences": sequences,
        "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "seconds": secs,
        "new_tokens_per_second": new_tokens as f64 / secs.max(1e-9),
        "sequences_per_second": sequences as f64 / secs.max(1e-9),
        "phases": crate::model::profile::take(),
    });
    eprintln!("{line}");
}

impl GenerateCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let reqs: Vec<GenRequest> = read_jsonl(&self.input)?;
        let engine = self.model.load()?;
        let sampling = SamplingParams { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k };
        crate::model::profile::enable(self.profile);
        if self.stats {
            // One short request first, so that one-time costs (an accelerator's kernel loads,
            // its library handles) stay out of the figure.
            if let Some(r) = reqs.first() {
                let warm = GenRequest { max_tokens: r.max_tokens.min(2), ..r.clone() };
                engine.generate(std::slice::from_ref(&warm), &sampling, BatchOptions { max_batch: 1 }, &mut |_, _| {})?;
            }
            crate::model::profile::take();
        }
        let t = std::time::Instant::now();
        let out = engine.generate(&reqs, &sampling, BatchOptions { max_batch: self.model.batch }, &mut |_, _| {})?;
        if self.stats {
            let prompt: usize = out.iter().map(|g| g.prompt_tokens as usize).sum();
            let new: usize = out.iter().map(|g| g.completion_tokens as usize).sum();
            print_stats("generate", self.model.device, self.model.batch, out.len(), prompt, new, t.elapsed().as_secs_f64());
        }
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        for g in out {
            writeln!(w, "{}", serde_json::to_string(&g)?)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Score: reads `{"id", "prompt", "candidates": [...]}` lines, writes `{"id", "logprobs",
/// "tokens"}` lines (natural-log probability of each candidate's tokens after the prompt).
#[derive(Debug, Args)]
pub struct ScoreCommand {
    /// Requests, JSON lines.
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the scoring throughput on stderr (see `kiln model generate --stats`).
    #[arg(long)]
    pub stats: bool,
    /// With --stats, also the time of each phase (see `kiln model generate --profile`).
    #[arg(long, requires = "stats")]
    pub profile: bool,
}

impl ScoreCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let reqs: Vec<ScoreRequest> = read_jsonl(&self.input)?;
        let engine = self.model.load()?;
        crate::model::profile::enable(self.profile);
        if self.stats {
            // As for generate: one request first, out of the figure.
            engine.score(&reqs[..reqs.len().min(1)], BatchOptions { max_batch: 1 })?;
            crate::model::profile::take();
        }
        let t = std::time::Instant::now();
        let out = engine.score(&reqs, BatchOptions { max_batch: self.model.batch })?;
        if self.stats {
            print_stats("score", self.model.device, self.model.batch, out.len(), 0, 0, t.elapsed().as_secs_f64());
        }
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        for s in out {
            writeln!(w, "{}", serde_json::to_string(&s)?)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
