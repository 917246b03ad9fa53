//! `kiln stats ...`: the statistics of [`crate::stats`] as scriptable JSON-in, JSON-out commands.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::stats::PairedInput;

/// Statistics subcommands.
#[derive(Debug, Subcommand)]
pub enum StatsCommand {
    /// Paired statistics of two arms (base, tuned) per group: counts, McNemar p-values (exact
    /// and continuity-corrected chi-square), Wilson intervals, Cohen's h and Benjamini-Hochberg
    /// adjusted p-values, per group and pooled.
    ///
    /// Input (JSON, strict: unknown fields are errors):
    /// {"groups": [{"name": "...", "base": [0, 1, ...], "tuned": [1, 1, ...]}, ...], "level": 0.95}
    /// where the i-th base and tuned outcomes (1 = pass, 0 = fail) are those of the same item,
    /// and "level", the confidence level of the Wilson intervals, is optional (default 0.95).
    ///
    /// Output (JSON, pretty-printed unless --compact): {"level", "groups": [...], "overall"}, one
    /// object per group in input order and one for all items pooled, each with name, n,
    /// base_pass, tuned_pass, b (base pass, tuned fail), c (base fail, tuned pass), mcnemar_p
    /// (exact binomial), mcnemar_chi2_p (continuity-corrected), wilson_base and wilson_tuned
    /// ([lo, hi]), cohens_h (2 asin sqrt(p_tuned) - 2 asin sqrt(p_base)) and p_bh
    /// (Benjamini-Hochberg across the groups; for "overall", its own mcnemar_p).
    #[command(verbatim_doc_comment)]
    Paired(PairedCommand),
}

impl StatsCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            StatsCommand::Paired(c) => c.execute(),
        }
    }
}

/// `kiln stats paired FILE`: JSON in, JSON out (see [`StatsCommand::Paired`] for both formats).
#[derive(Debug, Args)]
pub struct PairedCommand {
    /// The input JSON file, or `-` for stdin.
    pub file: PathBuf,
    /// Print the output on one line instead of pretty-printed.
    #[arg(long)]
    pub compact: bool,
}

impl PairedCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (name, text) = if self.file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("cannot read the input from stdin")?;
            ("<stdin>".to_string(), text)
        } else {
            let name = format!("\"{}\"", self.file.display());
            let text = std::fs::read_to_string(&self.file).with_context(|| format!("cannot read {name}"))?;
            (name, text)
        };
        let input: PairedInput =
            serde_json::from_str(&text).with_context(|| format!("{name} is not valid paired input"))?;
        let report = input.analyze().with_context(|| format!("invalid paired input in {name}"))?;
        let json = if self.compact { serde_json::to_string(&report) } else { serde_json::to_string_pretty(&report) }
            .context("cannot serialize the statistics")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{json}").and_then(|()| out.flush()).context("cannot write the statistics to stdout")?;
        Ok(ExitCode::SUCCESS)
    }
}
