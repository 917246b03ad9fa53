//! `kiln compare RUN...`: QC metrics of several runs side by side.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::stages::compare::{compare, resolve_run};

/// Show the QC metrics and counts of several runs side by side, and each run's settings that
/// differ from the first run's.
#[derive(Debug, Args)]
pub struct CompareCommand {
    /// Runs: folders, or ids under --artifacts-dir.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where run ids are looked up.
    #[arg(long, default_value = "artifacts")]
    pub artifacts_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl CompareCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let dirs = self.runs.iter().map(|r| resolve_run(r, &self.artifacts_dir)).collect::<Result<Vec<_>, _>>()?;
        let c = compare(&dirs)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&c)?);
        } else {
            print!("{}", c.text());
        }
        Ok(ExitCode::SUCCESS)
    }
}
