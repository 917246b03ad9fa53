//! The command line: one file per subcommand, each with `execute(self)`.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::stages::progress::Progress;

pub mod adapter;
pub mod compare;
pub mod eval;
pub mod train;
pub mod model;
pub mod pilot;
pub mod plugin;
pub mod replay;
pub mod review;
pub mod runs;
pub mod scale;
pub mod slurm;
pub mod stats;
pub mod testset;

/// kiln: turn a base language model into an instruction follower, without a chat template.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// kiln's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate, clean, critique and gate a pilot dataset on the base model.
    Pilot(pilot::PilotCommand),
    /// Re-run cleaners, critics and QC rules of another config on a run's stored raw pool.
    Replay(replay::ReplayCommand),
    /// Show the QC metrics of several runs side by side.
    Compare(compare::CompareCommand),
    /// A gated pilot's recipe at scale: sharded, resumable generation merged into one dataset.
    Scale(scale::ScaleCommand),
    /// Run a scale on a Slurm cluster (job array + merge job) and follow it.
    #[command(subcommand)]
    Slurm(slurm::SlurmCommand),
    /// The held-out test set, generated with its own seed and checked against a training set.
    Testset(testset::TestsetCommand),
    /// Paired evaluation of two arms (base and tuned) on a test set, judged by a critic.
    Eval(eval::EvalCommand),
    /// QLoRA training on a gated dataset: a PEFT-format adapter, resumable.
    Train(train::TrainCommand),
    /// Work with trained adapters: merge one into its base model.
    #[command(subcommand)]
    Adapter(adapter::AdapterCommand),
    /// A review packet at a gate (and an external reviewer), or the decision on a run.
    Review(review::ReviewCommand),
    /// Every run under the artifacts folder: stage, status, times, gate, lineage, cost.
    Runs(runs::RunsCommand),
    /// Work with models: fetch, inspect, tokenize, generate, score.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Work with plugins: new, build, check, hash, run.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Paired statistics (McNemar, Wilson, Cohen's h, Benjamini-Hochberg) on JSON.
    #[command(subcommand)]
    Stats(stats::StatsCommand),
}

impl Cli {
    /// Run the command; the exit code says whether it succeeded.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Pilot(c) => c.execute(),
            Command::Replay(c) => c.execute(),
            Command::Compare(c) => c.execute(),
            Command::Scale(c) => c.execute(),
            Command::Slurm(c) => c.execute(),
            Command::Testset(c) => c.execute(),
            Command::Eval(c) => c.execute(),
            Command::Train(c) => c.execute(),
            Command::Adapter(c) => c.execute(),
            Command::Review(c) => c.execute(),
            Command::Runs(c) => c.execute(),
            Command::Model(c) => c.execute(),
            Command::Plugin(c) => c.execute(),
            Command::Stats(c) => c.execute(),
        }
    }
}

/// Options every stage command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Run id (the run's folder under the artifacts folder); replaces the config's.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Where runs go; replaces the config's.
    #[arg(long)]
    pub artifacts_dir: Option<PathBuf>,
    /// Print the outcome as JSON (and no progress bars).
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// Progress bars unless `--json` or `--quiet`.
    pub fn progress(&self) -> Progress {
        Progress::new(!self.json && !self.quiet)
    }
}

/// Log to stderr; `KILN_LOG` sets the filter (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
