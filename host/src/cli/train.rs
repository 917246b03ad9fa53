//! `kiln train --config configs/train.toml`: QLoRA on a gated dataset.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::RunArgs;
use crate::config::train::{TrainConfig, TrainOverrides};
use crate::stages::train::{run, TrainOutcome, TrainRunOptions};
use crate::stages::EXIT_GATE_FAILED;

/// Train a LoRA adapter on the frozen quantized base: the accepted set of a finished run whose
/// gate passed, rendered with that run's template; loss on response tokens only. Writes
/// adapter/ (PEFT files), train_log.jsonl, loss.png, train.json and manifest.json; killed, the
/// same command resumes from the last checkpoint. Exit code: 0 the validation loss fell below
/// the base model's (or there is no validation split), 2 it did not, 1 error.
#[derive(Debug, Args)]
pub struct TrainCommand {
    /// The train config.
    #[arg(long, default_value = "configs/train.toml")]
    pub config: PathBuf,
    /// Run id, artifacts folder, output form.
    #[command(flatten)]
    pub run: RunArgs,
    /// The dataset: a finished run's folder; replaces the config's.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// The paired test set (a `kiln testset` run checked against the dataset); replaces the config's.
    #[arg(long)]
    pub test_set: Option<PathBuf>,
    /// Where the base and the adapters live: cpu, cuda or cuda:N (a CUDA build:
    /// scripts/build-cuda.sh). A placement, not part of the recipe: a run started on one device
    /// resumes on another; the manifest records the device of the process that finished it.
    #[arg(long, default_value = "cpu")]
    pub device: crate::model::DeviceSpec,
}

fn print(out: &TrainOutcome) {
    let r = &out.report;
    println!("train: {}", out.run_dir.display());
    println!(
        "  examples: {} train, {} validation, {} too long, {} not rendered",
        r.train_examples, r.validation_examples, out.too_long, out.unrendered
    );
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "  steps {} (resumed from {}); train loss {}; validation loss {} (base {})",
        r.steps,
        r.resumed_from,
        f(r.final_loss),
        f(r.final_val_loss),
        f(r.initial_val_loss)
    );
    let tps = if r.seconds > 0.0 { r.tokens as f64 / r.seconds } else { 0.0 };
    let rss = out.peak_rss_bytes.map_or("-".to_string(), |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64));
    println!("  {} tokens in {:.1}s ({tps:.0} tok/s), peak memory {rss}; wall {:.1}s", r.tokens, r.seconds, out.wall_seconds);
    println!("  adapter: {}", out.run_dir.join(crate::stages::train::files::ADAPTER).display());
}

impl TrainCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let ov = TrainOverrides { run_id: self.run.run_id.clone(), artifacts_dir: self.run.artifacts_dir.clone(), dataset: self.dataset.clone(), test_set: self.test_set.clone() };
        let cfg = TrainConfig::load(&self.config, &ov)?;
        let out = run(&cfg, &TrainRunOptions { progress: self.run.progress(), device: self.device }).with_context(|| format!("train \"{}\" failed", cfg.run_id))?;
        if self.run.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            print(&out);
        }
        Ok(if out.report.improved() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_GATE_FAILED) })
    }
}
