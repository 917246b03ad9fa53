//! `kiln eval --config configs/eval.toml`: paired evaluation of two arms on a test set.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::eval::{EvalConfig, EvalOverrides};
use crate::stages::eval::{run, EvalOptions, EvalOutcome};
use super::RunArgs;
use crate::stages::EXIT_GATE_FAILED;

/// Evaluate: both arms answer every test instruction greedily, the critic judges every answer,
/// and McNemar, Wilson, Cohen's h and Benjamini-Hochberg compare the paired outcomes per
/// instruction type and overall. Writes eval.json, report.md and pass_rates.png into the run.
/// Exit code: 0 gate passed (tuned ahead, overall McNemar p < alpha), 2 gate failed, 1 error.
#[derive(Debug, Args)]
pub struct EvalCommand {
    /// The eval config.
    #[arg(long, default_value = "configs/eval.toml")]
    pub config: PathBuf,
    /// Run id, artifacts folder, output form.
    #[command(flatten)]
    pub run: RunArgs,
    /// The test set (JSON lines of typed instructions); replaces the config's.
    #[arg(long)]
    pub test_set: Option<PathBuf>,
    /// The base model (a GGUF file or a known name); replaces the config's.
    #[arg(long)]
    pub model: Option<String>,
    /// Where the models run: cpu, cuda or cuda:N (see `kiln pilot --device`).
    #[arg(long, default_value = "cpu")]
    pub device: crate::model::DeviceSpec,
}

fn print(out: &EvalOutcome) {
    let s = &out.statistics;
    println!("eval: {}", out.run_dir.display());
    for st in s.groups.iter().chain(std::iter::once(&s.overall)) {
        let n = st.n.max(1) as f64;
        println!(
            "  {:<20} n {:>4}  base {:>5.1}%  tuned {:>5.1}%  b {:>3}  c {:>3}  McNemar p {:.4}  BH p {:.4}  h {:+.3}",
            st.name,
            st.n,
            st.base_pass as f64 / n * 100.0,
            st.tuned_pass as f64 / n * 100.0,
            st.b,
            st.c,
            st.mcnemar_p,
            st.p_bh,
            st.cohens_h
        );
    }
    if out.resumed.iter().any(|&r| r > 0) {
        println!("  resumed {} base and {} tuned answers from an earlier invocation", out.resumed[0], out.resumed[1]);
    }
    println!("  gate {}: {}", if out.gate.pass { "PASSED" } else { "FAILED" }, out.gate.reason);
    println!("  wall {:.1}s; report: {}", out.wall_seconds, out.run_dir.join("report.md").display());
}

impl EvalCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let ov = EvalOverrides {
            run_id: self.run.run_id.clone(),
            artifacts_dir: self.run.artifacts_dir.clone(),
            test_set: self.test_set.clone(),
            model: self.model.clone(),
        };
        let cfg = EvalConfig::load(&self.config, &ov)?;
        let out = run(&cfg, &EvalOptions { progress: self.run.progress(), device: self.device })
            .with_context(|| format!("eval \"{}\" failed", cfg.run_id))?;
        if self.run.json {
            let v = serde_json::json!({
                "run_dir": out.run_dir,
                "gate": out.gate,
                "statistics": out.statistics,
                "resumed": out.resumed,
                "wall_seconds": out.wall_seconds,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print(&out);
        }
        Ok(if out.gate.pass { ExitCode::SUCCESS } else { ExitCode::from(EXIT_GATE_FAILED) })
    }
}
