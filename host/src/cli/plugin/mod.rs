//! `kiln plugin ...`.

use std::process::ExitCode;

use clap::Subcommand;

mod build;
mod check;
mod hash;
mod new;
mod run;

pub use build::BuildCommand;
pub use check::CheckCommand;
pub use hash::HashCommand;
pub use new::NewCommand;
pub use run::RunCommand;

/// Plugin subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Build a plugin folder (Rust, Python or JavaScript) or a cargo workspace of plugins into
    /// components.
    Build(BuildCommand),
    /// Say what each file is: world, name, version, WIT version, sha256.
    Check(CheckCommand),
    /// Print each file's sha256 (for pinning in config).
    Hash(HashCommand),
    /// Write a ready-to-build plugin folder for a world in Rust, Python or JavaScript.
    New(NewCommand),
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
            PluginCommand::New(c) => c.execute(),
            PluginCommand::Run(c) => c.execute(),
        }
    }
}
