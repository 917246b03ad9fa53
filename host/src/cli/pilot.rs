//! `kiln pilot --config configs/pilot.toml`: generate, clean, critique and gate a pilot dataset.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::pilot::{Overrides, PilotConfig};
use crate::stages::pilot::{run, PilotOptions};
use super::RunArgs;
use crate::stages::EXIT_GATE_FAILED;

/// Run a pilot: instructions and responses from the base model in completion mode, through the
/// template, cleaners, critics and QC rules of the config, to the gate. An interrupted run is
/// finished by running the same command again. Exit code: 0 gate passed, 2 gate failed, 1 error.
#[derive(Debug, Args)]
pub struct PilotCommand {
    /// The pilot config.
    #[arg(long, default_value = "configs/pilot.toml")]
    pub config: PathBuf,
    /// Run id, artifacts folder, output form.
    #[command(flatten)]
    pub run: RunArgs,
    /// Run seed; replaces the config's.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Samples to generate; replaces the config's.
    #[arg(long)]
    pub count: Option<usize>,
    /// A GGUF file or a known model name; replaces the config's.
    #[arg(long)]
    pub model: Option<String>,
    /// Where the model runs: cpu, cuda or cuda:N (a CUDA build: scripts/build-cuda.sh). A
    /// placement, not part of the recipe: the manifest records the device of the process that
    /// finished the run.
    #[arg(long, default_value = "cpu")]
    pub device: crate::model::DeviceSpec,
}

impl PilotCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let ov = Overrides {
            run_id: self.run.run_id.clone(),
            artifacts_dir: self.run.artifacts_dir.clone(),
            seed: self.seed,
            count: self.count,
            model: self.model.clone(),
            replay: false,
        };
        let cfg = PilotConfig::load(&self.config, &ov)?;
        let out = run(&cfg, &PilotOptions { progress: self.run.progress(), device: self.device })
            .with_context(|| format!("pilot \"{}\" failed", cfg.run_id))?;
        if self.run.json {
            println!("{}", serde_json::to_string_pretty(&out.summary)?);
        } else {
            println!("{}", out.summary);
        }
        Ok(if out.summary.pass { ExitCode::SUCCESS } else { ExitCode::from(EXIT_GATE_FAILED) })
    }
}
