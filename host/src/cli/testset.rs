//! `kiln testset --config configs/testset.toml`: the held-out evaluation set.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::RunArgs;
use crate::config::testset::{TestsetConfig, TestsetOverrides};
use crate::stages::testset::{run, TestsetOptions, TestsetOutcome};

/// Make the held-out test set (default 5 types x 40 instructions) with the model, through the
/// training dataset's own template, cleaners and critics, with a seed of its own; refuse every
/// candidate that repeats or overlaps the training set (exact, near-duplicate, n-gram overlap)
/// and generate more until every type is full. A type that cannot be filled is an error.
/// Writes testset.jsonl (what `kiln eval` reads), contamination.json and manifest.json.
#[derive(Debug, Args)]
pub struct TestsetCommand {
    /// The test-set config.
    #[arg(long, default_value = "configs/testset.toml")]
    pub config: PathBuf,
    /// The training dataset (a finished pilot, replay or scale run); replaces the config's.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Where the model runs: cpu, cuda or cuda:N (see `kiln pilot --device`).
    #[arg(long, default_value = "cpu")]
    pub device: crate::model::DeviceSpec,
    /// Run id, artifacts folder, output form.
    #[command(flatten)]
    pub run: RunArgs,
}

fn print(out: &TestsetOutcome) {
    let c = &out.contamination;
    println!("testset: {}", out.run_dir.display());
    let types: Vec<String> = out.per_type.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  items: {} ({})", c.kept, types.join(", "));
    println!(
        "  checked against {} ({}, sha256 {}): {} candidates in {} rounds, {} refused; largest n-gram overlap kept {:.3} (limit {})",
        c.dataset.run_id,
        c.dataset.file,
        &c.dataset.sha256[..12.min(c.dataset.sha256.len())],
        c.checked,
        c.rounds,
        c.refused.len(),
        c.max_overlap_kept,
        c.max_overlap
    );
    println!("  wall {:.1}s", out.wall_seconds);
}

impl TestsetCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let ov = TestsetOverrides { run_id: self.run.run_id.clone(), artifacts_dir: self.run.artifacts_dir.clone(), dataset: self.dataset.clone() };
        let cfg = TestsetConfig::load(&self.config, &ov)?;
        let out = run(&cfg, &TestsetOptions { progress: self.run.progress(), device: self.device }).with_context(|| format!("testset \"{}\" failed", cfg.run_id))?;
        if self.run.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            print(&out);
        }
        Ok(ExitCode::SUCCESS)
    }
}
