//! `kiln plugin hash FILE...`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

/// Print each file's sha256, `sha256sum` style.
#[derive(Debug, Args)]
pub struct HashCommand {
    /// Component files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

impl HashCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        for f in &self.files {
            let h = crate::provenance::sha256_file(f).with_context(|| format!("cannot read \"{}\"", f.display()))?;
            println!("{h}  {}", f.display());
        }
        Ok(ExitCode::SUCCESS)
    }
}
