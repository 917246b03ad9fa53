//! `kiln model ...`.

use std::process::ExitCode;

use clap::Subcommand;

mod device;
mod fetch;
mod generate;
mod guard;
mod inspect;
mod tokenize;

pub use device::DeviceCheckCommand;
pub use fetch::FetchCommand;
pub use generate::{model_file, GenerateCommand, ModelArgs, ScoreCommand};
pub use guard::GuardCommand;
pub use inspect::InspectCommand;
pub use tokenize::TokenizeCommand;

/// Model subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a known model into the cache and verify it.
    Fetch(FetchCommand),
    /// Describe a GGUF file.
    Inspect(InspectCommand),
    /// Tokenize JSON lines `{"text": ...}` from stdin into `{"ids": [...]}` lines.
    Tokenize(TokenizeCommand),
    /// Generate continuations for JSON-lines requests.
    Generate(GenerateCommand),
    /// Score candidate continuations for JSON-lines requests.
    Score(ScoreCommand),
    /// Run the contamination guard (is this a base model?).
    Guard(GuardCommand),
    /// Compare the CUDA backend's quantized products with the CPU's (a `--features cuda` build).
    DeviceCheck(DeviceCheckCommand),
}

impl ModelCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            ModelCommand::Fetch(c) => c.execute(),
            ModelCommand::Inspect(c) => c.execute(),
            ModelCommand::Tokenize(c) => c.execute(),
            ModelCommand::Generate(c) => c.execute(),
            ModelCommand::Score(c) => c.execute(),
            ModelCommand::Guard(c) => c.execute(),
            ModelCommand::DeviceCheck(c) => c.execute(),
        }
    }
}
