//! `kiln review RUN [--approve|--reject --note ...]`: a review packet at a gate, and the decision.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::review::ReviewConfig;
use crate::stages::review::{decide, packet};

/// Write a review packet into a run (review.md: gate metrics against thresholds, parameters
/// changed since the previous run of the stage, a fixed-seed sample of accepted and of dropped
/// examples with reasons, the critic's margin histogram), and pipe it to the external reviewer
/// of `review.command` if one is configured (its answer lands in review_answer.md). With
/// --approve or --reject, record the decision, who made it and when in the run's manifest
/// instead; a run whose gate failed is approved only with --force.
#[derive(Debug, Args)]
pub struct ReviewCommand {
    /// The run folder.
    pub run: PathBuf,
    /// The review config ([review] by, command, timeout_s, samples); default
    /// configs/review.toml when it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Approve the run.
    #[arg(long, conflicts_with = "reject")]
    pub approve: bool,
    /// Reject the run.
    #[arg(long)]
    pub reject: bool,
    /// Why (recorded with the decision).
    #[arg(long, default_value = "")]
    pub note: String,
    /// Who decides (default: the config's review.by, else $USER).
    #[arg(long)]
    pub by: Option<String>,
    /// Approve although the run's gate failed (recorded).
    #[arg(long)]
    pub force: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

impl ReviewCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let default = PathBuf::from("configs/review.toml");
        let path = self.config.clone().or_else(|| default.is_file().then_some(default));
        let cfg = ReviewConfig::load(path.as_deref())?;
        if self.approve || self.reject {
            let by = self
                .by
                .clone()
                .or(cfg.by.clone())
                .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
                .context("who decides? give --by NAME (or review.by in the config)")?;
            anyhow::ensure!(!by.trim().is_empty() && !by.contains('\n'), "--by {by:?}: must be a name on one line");
            let d = decide(&self.run, self.approve, &self.note, &by, self.force)?;
            if self.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!(
                    "review: {} {} by {} at {}{}",
                    self.run.display(),
                    d.decision,
                    d.by,
                    d.at,
                    if d.forced { " (forced: its gate failed)" } else { "" }
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::ensure!(!self.force, "--force goes with --approve");
        let out = packet(&self.run, &cfg)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("review packet: {}", out.packet.display());
            if let Some(p) = &out.previous {
                println!("  compared with the previous run of the stage: {p}");
            }
            if let Some(m) = &out.margins {
                println!("  critic margins: {}", m.display());
            }
            if let Some(a) = &out.answer {
                println!("  reviewer's answer: {}", a.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
