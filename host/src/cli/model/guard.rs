//! `kiln model guard`.

use std::process::ExitCode;

use clap::Args;

use super::generate::ModelArgs;
use crate::model::guard;

/// Run the contamination guard on a model and print its report (JSON); exit code 3 when the
/// model looks instruction-tuned.
#[derive(Debug, Args)]
pub struct GuardCommand {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Flag threshold (mean nats per token in favour of assistant-style continuations).
    #[arg(long, default_value_t = guard::DEFAULT_THRESHOLD)]
    pub threshold: f64,
}

impl GuardCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let engine = self.model.load()?;
        let report = guard::check(&engine, self.threshold)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(if report.flagged() { ExitCode::from(3) } else { ExitCode::SUCCESS })
    }
}
