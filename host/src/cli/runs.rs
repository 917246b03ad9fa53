//! `kiln runs [--artifacts-dir DIR] [--cost RATE] [--json]`: every run, its lineage and cost.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::stages::runs::{list, RunRow};

/// List every run under the artifacts folder: id, stage, status, start, wall time, device and
/// device time, gate, review, key parameters and parent (pilot -> scale -> train -> eval). An
/// interrupted run shows the command that resumes it. `--cost RATE` adds the cost of each run
/// and of its whole lineage at RATE per device hour (GPU hour on a GPU; a CPU-only run counts
/// its machine's wall time).
#[derive(Debug, Args)]
pub struct RunsCommand {
    /// The artifacts folder.
    #[arg(long, default_value = "artifacts")]
    pub artifacts_dir: PathBuf,
    /// Cost per device hour (e.g. 2.50 for an H100 at $2.50/h).
    #[arg(long, value_name = "RATE_PER_GPU_HOUR")]
    pub cost: Option<f64>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

fn hms(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

fn print(rows: &[RunRow], rate: Option<f64>) {
    println!(
        "{:<22} {:<8} {:<11} {:<20} {:>8} {:<5} {:>9} {:<6} {:<20} {:<18}{}",
        "RUN",
        "STAGE",
        "STATUS",
        "STARTED",
        "WALL",
        "DEV",
        "DEV TIME",
        "GATE",
        "PARENT",
        "REVIEW",
        if rate.is_some() { format!(" {:>9} {:>9}", "COST", "LINEAGE") } else { String::new() }
    );
    for r in rows {
        let res = r.resources.as_ref();
        let gate = match r.gate {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "-",
        };
        println!(
            "{:<22} {:<8} {:<11} {:<20} {:>8} {:<5} {:>9} {:<6} {:<20} {:<18}{}",
            r.run_id,
            r.stage,
            r.status,
            r.started_at.chars().take(19).collect::<String>(),
            res.map_or("-".into(), |x| hms(x.wall_seconds)),
            res.map_or("-".into(), |x| x.device.clone()),
            res.map_or("-".into(), |x| hms(x.device_seconds)),
            gate,
            r.parent.as_deref().unwrap_or("-"),
            r.review.as_deref().unwrap_or("-"),
            match (r.cost, r.lineage_cost) {
                (Some(c), Some(l)) => format!(" {c:>9.4} {l:>9.4}"),
                _ => String::new(),
            }
        );
        if !r.params.is_empty() {
            println!("  {}  lineage: {}", r.params, r.lineage.join(" -> "));
        }
        if let Some(cmd) = &r.resume {
            println!("  resume: {cmd}");
        }
    }
    if let Some(rate) = rate {
        let total: f64 = rows.iter().filter_map(|r| r.cost).sum();
        println!("total cost at {rate} per device hour: {total:.4}");
    }
}

impl RunsCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if let Some(r) = self.cost {
            anyhow::ensure!(r.is_finite() && r >= 0.0, "--cost {r}: must be a rate of at least 0 per device hour");
        }
        let rows = list(&self.artifacts_dir, self.cost)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else if rows.is_empty() {
            println!("no runs under {}", self.artifacts_dir.display());
        } else {
            print(&rows, self.cost);
        }
        Ok(ExitCode::SUCCESS)
    }
}
