//! `kiln scale --pilot RUN [--count N] [--shards S] [--shard I/S]`: the pilot's recipe at scale.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::RunArgs;
use crate::config::scale::{ScaleConfig, ScaleOverrides};
use crate::stages::scale::{run, ScaleOptions, ScaleOutcome};
use crate::stages::EXIT_GATE_FAILED;

/// Generate a dataset at scale with a gated pilot's recipe, in shards, and merge it. Refuses a
/// pilot whose gate did not pass. Inherits its model, plugins (by sha256), sampling, mix, seed
/// and QC rules; `--set KEY=VALUE` (or `[overrides]` in the config) changes one, recorded.
/// Without `--shard`, runs every shard not done in this process and merges; with
/// `--shard I/S`, runs only shard I (0-based) of S, one process per shard (a Slurm array task);
/// `--merge` only merges. Finished shards are skipped; an interrupted one resumes. Exit code
/// after a merge: 0 the merged set passed the QC rules, 2 it did not, 1 error; after a shard: 0.
#[derive(Debug, Args)]
pub struct ScaleCommand {
    /// Which scale.
    #[command(flatten)]
    pub scale: ScaleArgs,
    /// Run only shard I of S (0-based), e.g. 3/10.
    #[arg(long, value_name = "I/S", conflicts_with = "merge")]
    pub shard: Option<String>,
    /// Only merge the finished shards.
    #[arg(long)]
    pub merge: bool,
    /// Where the model runs: cpu, cuda or cuda:N (see `kiln pilot --device`).
    #[arg(long, default_value = "cpu")]
    pub device: crate::model::DeviceSpec,
    /// Run id, artifacts folder, output form.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The arguments that select a scale (shared by `kiln scale` and `kiln slurm submit scale`).
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// A scale config (configs/scale.toml); optional when --pilot is given.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The pilot run folder (its gate must have passed); replaces the config's.
    #[arg(long)]
    pub pilot: Option<PathBuf>,
    /// Samples in all (default 15000); replaces the config's.
    #[arg(long)]
    pub count: Option<usize>,
    /// Shards (default 10); replaces the config's.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Change an inherited pilot parameter by its dotted name in the pilot's
    /// config.resolved.toml (e.g. sampling.response.temperature=0.8); repeatable; recorded.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ScaleArgs {
    /// The validated config, with the run id and artifacts folder of the command line.
    pub fn load(&self, run_id: Option<String>, artifacts_dir: Option<PathBuf>, shards: Option<usize>) -> anyhow::Result<ScaleConfig> {
        let ov = ScaleOverrides {
            run_id,
            artifacts_dir,
            pilot: self.pilot.clone(),
            count: self.count,
            shards: shards.or(self.shards),
            set: self.set.clone(),
        };
        Ok(ScaleConfig::load(self.config.as_deref(), &ov)?)
    }
}

/// `I/S` -> (I, S).
pub fn parse_shard(s: &str) -> anyhow::Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--shard \"{s}\": expected I/S with 0 <= I < S, e.g. 3/10");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn print(out: &ScaleOutcome) {
    println!("scale: {}", out.run_dir.display());
    let list = |v: &[usize]| if v.is_empty() { "none".to_string() } else { v.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ") };
    println!("  shards run now: {}; already done: {}", list(&out.ran), list(&out.skipped));
    if let Some((r, m)) = &out.merged {
        for s in &r.shard_reports {
            let acc = s.counts.get("accepted").copied().unwrap_or(0);
            println!("  shard {:>3}: {} planned, {acc} accepted, gate {}", s.shard, s.count, if s.pass { "passed" } else { "FAILED" });
        }
        println!(
            "  merged: {} judged, {} exact and {} near duplicates across shards, {} in the dataset",
            r.judged, r.duplicates, r.near_duplicates, r.accepted
        );
        println!("  gate: {}", if m.gate.pass { "PASSED".to_string() } else { format!("FAILED ({})", m.gate.reasons.join("; ")) });
    }
    println!("  wall {:.1}s", out.wall_seconds);
}

impl ScaleCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let shard = self.shard.as_deref().map(parse_shard).transpose()?;
        let shards = match (self.scale.shards, shard) {
            (Some(s), Some((i, n))) if s != n => anyhow::bail!("--shard {i}/{n} and --shards {s} disagree"),
            (s, sh) => s.or(sh.map(|(_, n)| n)),
        };
        let cfg = self.scale.load(self.run.run_id.clone(), self.run.artifacts_dir.clone(), shards)?;
        if let Some((i, n)) = shard {
            if n != cfg.shards {
                anyhow::bail!("--shard {i}/{n}: the scale has {} shards ({})", cfg.shards, cfg.file.display());
            }
        }
        let opts = ScaleOptions { shard: shard.map(|(i, _)| i), merge_only: self.merge, progress: self.run.progress(), device: self.device };
        let out = run(&cfg, &opts).with_context(|| format!("scale \"{}\" failed", cfg.run_id))?;
        if self.run.json {
            let v = serde_json::json!({
                "run_dir": out.run_dir,
                "ran": out.ran,
                "skipped": out.skipped,
                "merged": out.merged.as_ref().map(|(r, _)| r),
                "pass": out.merged.as_ref().map(|(_, m)| m.gate.pass),
                "wall_seconds": out.wall_seconds,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print(&out);
        }
        Ok(match &out.merged {
            Some((_, m)) if !m.gate.pass => ExitCode::from(EXIT_GATE_FAILED),
            _ => ExitCode::SUCCESS,
        })
    }
}
