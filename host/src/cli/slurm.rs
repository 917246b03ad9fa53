//! `kiln slurm submit scale ...` and `kiln slurm status RUN`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::pilot::absolute;
use super::scale::ScaleArgs;
use crate::stages::slurm::{status, submit, Status, SubmitOptions};

/// Run stages on a Slurm cluster.
#[derive(Debug, Subcommand)]
pub enum SlurmCommand {
    /// Submit a job array and a merge job; prints the job ids.
    #[command(subcommand)]
    Submit(SubmitWhat),
    /// Each shard's state (done, pending, running, failed, not submitted) with its log.
    Status(StatusArgs),
}

/// What to submit.
#[derive(Debug, Subcommand)]
pub enum SubmitWhat {
    /// A scale: one array task per shard (SLURM_ARRAY_TASK_ID = shard), then the merge.
    Scale(SubmitScale),
}

/// `kiln slurm submit scale`.
#[derive(Debug, Args)]
pub struct SubmitScale {
    /// Which scale.
    #[command(flatten)]
    pub scale: ScaleArgs,
    /// Run id (the scale's folder).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Where runs go.
    #[arg(long)]
    pub artifacts_dir: Option<PathBuf>,
    /// Only these shards, e.g. 3 or 3,7 (resubmit failed tasks); default: every shard not done.
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<usize>>,
    /// Slurm partition (over the config's [slurm]).
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit per task, e.g. 04:00:00.
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs per task.
    #[arg(long)]
    pub cpus_per_task: Option<usize>,
    /// Memory per task, e.g. 8G.
    #[arg(long)]
    pub mem: Option<String>,
    /// Generic resources per task, e.g. gpu:1.
    #[arg(long)]
    pub gres: Option<String>,
    /// Account.
    #[arg(long)]
    pub account: Option<String>,
    /// Tasks running at once.
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// The kiln binary the tasks run (default: this one; the nodes must see the same path).
    #[arg(long)]
    pub kiln: Option<PathBuf>,
    /// Write the scripts, submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kiln slurm status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The scale's folder.
    pub run: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

fn print_status(s: &Status) {
    println!("slurm: {}", s.run_dir.display());
    let rows = s.shards.iter().map(|st| (format!("shard {}", st.shard), st)).chain(std::iter::once(("merge".to_string(), &s.merge)));
    for (name, st) in rows {
        let job = st.job.as_deref().unwrap_or("-");
        let log = st.log.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
        println!("  {name:>9}: {:<13} job {job:<12} log {log}", st.state);
        if let Some(d) = &st.detail {
            println!("             {d}");
        }
    }
}

impl SlurmCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            SlurmCommand::Submit(SubmitWhat::Scale(a)) => a.execute(),
            SlurmCommand::Status(a) => {
                let s = status(&a.run)?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print_status(&s);
                }
                let failed = s.shards.iter().chain(std::iter::once(&s.merge)).any(|st| st.state == "failed" || st.state == "blocked");
                Ok(if failed { ExitCode::from(3) } else { ExitCode::SUCCESS })
            }
        }
    }
}

impl SubmitScale {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let cfg = self.scale.load(self.run_id.clone(), self.artifacts_dir.clone(), None)?;
        // The task's command line: this scale, every setting written out.
        let mut args = Vec::new();
        if let Some(c) = &self.scale.config {
            args.extend(["--config".to_string(), absolute(c).display().to_string()]);
        }
        args.extend([
            "--pilot".to_string(),
            cfg.pilot.display().to_string(),
            "--count".into(),
            cfg.count.to_string(),
            "--shards".into(),
            cfg.shards.to_string(),
            "--run-id".into(),
            cfg.run_id.clone(),
            "--artifacts-dir".into(),
            cfg.artifacts_dir.display().to_string(),
        ]);
        for s in &self.scale.set {
            args.extend(["--set".to_string(), s.clone()]);
        }
        let mut res = cfg.slurm.clone();
        let pick = |cli: &Option<String>, file: &mut Option<String>| {
            if cli.is_some() {
                *file = cli.clone();
            }
        };
        pick(&self.partition, &mut res.partition);
        pick(&self.time, &mut res.time);
        pick(&self.mem, &mut res.mem);
        pick(&self.gres, &mut res.gres);
        pick(&self.account, &mut res.account);
        if self.cpus_per_task.is_some() {
            res.cpus_per_task = self.cpus_per_task;
        }
        if let Some(k) = self.max_parallel {
            anyhow::ensure!(k > 0, "--max-parallel 0: must be at least 1");
            res.max_parallel = Some(k);
        }
        let kiln = match &self.kiln {
            Some(k) => absolute(k),
            None => std::env::current_exe().context("cannot find this kiln binary; give --kiln")?,
        };
        let opts = SubmitOptions {
            kiln,
            workdir: absolute(std::path::Path::new(".")),
            scale_args: args,
            only: self.only.clone(),
            dry_run: self.dry_run,
            resources: res,
        };
        let out = submit(&cfg, &opts).with_context(|| format!("slurm submit of scale \"{}\" failed", cfg.run_id))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("slurm: {}", out.run_dir.display());
            println!("  scripts: {} and {}", out.array_script.display(), out.merge_script.display());
            match &out.submission {
                Some(s) => {
                    let shards: Vec<String> = s.shards.iter().map(|i| i.to_string()).collect();
                    if !s.array_job.is_empty() {
                        println!("  array job {} (shards {})", s.array_job, shards.join(","));
                    }
                    println!("  merge job {}{}", s.merge_job, if s.array_job.is_empty() { "" } else { " (after every task succeeds)" });
                    println!("  follow with: kiln slurm status {}", out.run_dir.display());
                }
                None => println!("  dry run: nothing submitted"),
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
