//! `kiln replay RUN --config other.toml`: another config's cleaners, critics and QC rules on a
//! run's stored raw pool.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::pilot::{Overrides, PilotConfig};
use crate::stages::compare::resolve_run;
use crate::stages::progress::Progress;
use crate::stages::replay::{replay, ReplayOptions};
use crate::stages::EXIT_GATE_FAILED;

/// Re-run the cleaners, critics and QC rules of another config on RUN's raw pool (no
/// generation; the model only scores critic requests that changed), write the result as a new
/// run beside RUN, and print what changed: metric, before, after, delta, and the samples kept
/// by one side only. Exit code: 0 gate passed, 2 gate failed, 1 error.
#[derive(Debug, Args)]
pub struct ReplayCommand {
    /// The run to replay: its folder, or its id under --artifacts-dir.
    pub run: PathBuf,
    /// The config whose cleaners, critics and QC rules to use.
    #[arg(long)]
    pub config: PathBuf,
    /// The new run's id (default: `<RUN>-replay-<hash of the plugin settings>`).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Where run ids are looked up.
    #[arg(long, default_value = "artifacts")]
    pub artifacts_dir: PathBuf,
    /// Print the delta and summary as JSON (and no progress bars).
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl ReplayCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let source = resolve_run(&self.run, &self.artifacts_dir)?;
        let cfg = PilotConfig::load(&self.config, &Overrides { replay: true, ..Default::default() })?;
        let out = replay(&source, &cfg, &ReplayOptions { run_id: self.run_id.clone(), progress: Progress::new(!self.json && !self.quiet) })
            .with_context(|| format!("replay of \"{}\" failed", source.display()))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "delta": out.delta, "summary": out.summary }))?);
        } else {
            print!("{}", out.delta.table());
            println!("{}", out.summary);
        }
        Ok(if out.summary.pass { ExitCode::SUCCESS } else { ExitCode::from(EXIT_GATE_FAILED) })
    }
}
