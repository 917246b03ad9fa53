//! `kiln adapter merge`: a PEFT adapter folded into its base GGUF.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::train::merge::{merge_adapter, MergedType};

/// Adapter subcommands.
#[derive(Debug, Subcommand)]
pub enum AdapterCommand {
    /// Merge a PEFT adapter into its base: a new GGUF that loads like any base model (in kiln
    /// and in llama.cpp), with the adapter's provenance in its `kiln.adapter.*` metadata.
    Merge(MergeCommand),
}

impl AdapterCommand {
    /// Run the subcommand.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            AdapterCommand::Merge(c) => c.execute(),
        }
    }
}

/// `kiln adapter merge --adapter DIR --out FILE`.
#[derive(Debug, Args)]
pub struct MergeCommand {
    /// The adapter: a folder with adapter_config.json and adapter_model.safetensors, or a
    /// training run (its `adapter/` folder).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The base GGUF the adapter was trained on (default: the default base model, fetched on
    /// first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The merged GGUF to write (atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// How the merged projections are stored; the other tensors keep their own types.
    #[arg(long, value_enum, default_value_t = MergedType::F16)]
    pub dtype: MergedType,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl MergeCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let base = crate::cli::model::model_file(self.model.as_deref())?;
        let adapter = adapter_folder(&self.adapter);
        let r = merge_adapter(&base, &adapter, &self.out, self.dtype)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!("merged   {} projections of {} into {}", r.merged, r.adapter.display(), r.out.display());
            println!("base     {} (sha256 {})", r.base.display(), r.base_sha256);
            println!("adapter  sha256 {}; largest update {:.3e}", r.adapter_sha256, r.max_update);
            println!("stored   {:?}; {} other tensors copied unchanged", r.dtype, r.copied);
            println!("out      sha256 {}", r.out_sha256);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// A training run's adapter folder, or the folder itself.
pub fn adapter_folder(dir: &std::path::Path) -> PathBuf {
    let inner = dir.join(crate::stages::train::files::ADAPTER);
    if !dir.join("adapter_config.json").exists() && inner.join("adapter_config.json").exists() {
        inner
    } else {
        dir.to_path_buf()
    }
}
