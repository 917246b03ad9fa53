//! `kiln plugin ...`.

use std::process::ExitCode;

use clap::Subcommand;

mod build;
mod check;
mod hash;
mod run;

pub use build::BuildCommand;
pub use check::CheckCommand;
pub use hash::HashCommand;
pub use run::RunCommand;

/// Plugin subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Build a plugin workspace for wasm32-wasip2 into its dist folder.
    Build(BuildCommand),
    /// Say what each file is: world, name, version, WIT version, sha256.
    Check(CheckCommand),
    /// Print each file's sha256 (for pinning in config).
    Hash(HashCommand),
    /// Run a plugin on JSON-lines input and print its output as JSON lines.
    Run(RunCommand),
}

impl PluginCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            PluginCommand::Build(c) => c.execute(),
            PluginCommand::Check(c) => c.execute(),
            PluginCommand::Hash(c) => c.execute(),
            PluginCommand::Run(c) => c.execute(),
        }
    }
}
