//! `kiln slurm`: a scale as a Slurm job array (one task per shard, `SLURM_ARRAY_TASK_ID`
//! selects it) plus a merge job that runs once every task succeeded, and the state of each
//! shard afterwards.
//!
//! The scripts and the submission record live in the scale's folder: `slurm/scale.sbatch`,
//! `slurm/merge.sbatch`, `slurm/jobs.json` (every submission: job ids, the shards it covered),
//! and `slurm/logs/shard-<I>-<job>.out`, `slurm/logs/merge-<job>.out`. The scripts run this
//! kiln binary with the scale's settings written out in full, so a task does not depend on the
//! directory or the environment it starts in (the cluster's nodes must see the same paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::error::StageError;
use super::scale::{inherit, shard_done};
use crate::config::scale::{ScaleConfig, SlurmSection};
use crate::provenance::manifest::{now, Manifest};
use crate::sandbox::write_file_atomic;

/// File names inside a scale's folder.
pub mod slurm_files {
    /// The job-array script.
    pub const ARRAY: &str = "slurm/scale.sbatch";
    /// The merge script.
    pub const MERGE: &str = "slurm/merge.sbatch";
    /// Every submission.
    pub const JOBS: &str = "slurm/jobs.json";
    /// Logs.
    pub const LOGS: &str = "slurm/logs";
}

/// One submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// When.
    pub submitted_at: String,
    /// The array job's id.
    pub array_job: String,
    /// The merge job's id.
    pub merge_job: String,
    /// The shards (array indices) it ran.
    pub shards: Vec<usize>,
}

/// `slurm/jobs.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Jobs {
    /// The scale's run id.
    pub run_id: String,
    /// Shards.
    pub shards: usize,
    /// Every submission, oldest first.
    pub submissions: Vec<Submission>,
}

/// What `kiln slurm submit` asks for.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// The kiln binary the tasks run.
    pub kiln: PathBuf,
    /// The directory the tasks start in.
    pub workdir: PathBuf,
    /// The `kiln scale` arguments that select this scale (everything but `--shard`/`--merge`).
    pub scale_args: Vec<String>,
    /// Only these shards (a resubmission); None: every shard not done.
    pub only: Option<Vec<usize>>,
    /// Write the scripts, submit nothing.
    pub dry_run: bool,
    /// Resources (the config's, with the command line's over them).
    pub resources: SlurmSection,
}

/// What a submission did.
#[derive(Debug, Clone, Serialize)]
pub struct SubmitOutcome {
    /// The scale's folder.
    pub run_dir: PathBuf,
    /// The array script.
    pub array_script: PathBuf,
    /// The merge script.
    pub merge_script: PathBuf,
    /// The submission, unless a dry run (or nothing was left to run).
    pub submission: Option<Submission>,
    /// Shards already done, not submitted.
    pub done: Vec<usize>,
}

/// One shard's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardState {
    /// Shard.
    pub shard: usize,
    /// "done", "pending", "running", "failed" or "not submitted".
    pub state: String,
    /// The job id of its latest task (`ARRAY_INDEX`), if it was submitted.
    pub job: Option<String>,
    /// Its latest log.
    pub log: Option<PathBuf>,
    /// The log's last line, for a failed task.
    pub detail: Option<String>,
}

/// The state of a scale on Slurm.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The scale's folder.
    pub run_dir: PathBuf,
    /// Each shard.
    pub shards: Vec<ShardState>,
    /// The merge: "done", "waiting" (for the shards), "blocked" (a shard failed: resubmit it),
    /// "running", "failed" or "not submitted".
    pub merge: ShardState,
}

/// `s` as one word for a POSIX shell: as it is when it is safe, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+%@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn directives(res: &SlurmSection, name: &str) -> String {
    let mut d = format!("#SBATCH --job-name={}\n", shell_quote(name));
    let mut opt = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            d.push_str(&format!("#SBATCH --{k}={}\n", shell_quote(v)));
        }
    };
    opt("partition", &res.partition);
    opt("account", &res.account);
    opt("time", &res.time.clone().or(Some("04:00:00".into())));
    opt("mem", &res.mem.clone().or(Some("8G".into())));
    opt("gres", &res.gres);
    opt("cpus-per-task", &Some(res.cpus_per_task.unwrap_or(2).to_string()));
    for e in &res.extra {
        d.push_str(&format!("#SBATCH {e}\n"));
    }
    d
}

/// The two scripts: the job array (one task per shard) and the merge.
pub fn scripts(cfg: &ScaleConfig, opts: &SubmitOptions, run_dir: &Path) -> (String, String) {
    let logs = run_dir.join(slurm_files::LOGS);
    let kiln = shell_quote(&opts.kiln.display().to_string());
    let args: Vec<String> = opts.scale_args.iter().map(|a| shell_quote(a)).collect();
    let args = args.join(" ");
    let cd = shell_quote(&opts.workdir.display().to_string());
    let max = opts.resources.max_parallel.map(|k| format!("%{k}")).unwrap_or_default();
    let array = format!(
        "#!/bin/bash\n# Written by kiln: scale \"{id}\", one array task per shard (SLURM_ARRAY_TASK_ID = shard).\n# Resubmit one task: sbatch --array=I this-file (or kiln slurm submit ... --only I).\n{dir}#SBATCH --array=0-{last}{max}\n#SBATCH --output={log}/shard-%a-%A.out\nset -euo pipefail\ncd {cd}\nexec {kiln} scale {args} --quiet --shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\"\n",
        id = cfg.run_id,
        dir = directives(&opts.resources, &format!("kiln-{}", cfg.run_id)),
        last = cfg.shards - 1,
        log = shell_quote(&logs.display().to_string()),
        n = cfg.shards,
    );
    let merge = format!(
        "#!/bin/bash\n# Written by kiln: merge of scale \"{id}\", after every shard task succeeded.\n{dir}#SBATCH --output={log}/merge-%j.out\nset -euo pipefail\ncd {cd}\nexec {kiln} scale {args} --quiet --merge\n",
        id = cfg.run_id,
        dir = directives(&opts.resources, &format!("kiln-{}-merge", cfg.run_id)),
        log = shell_quote(&logs.display().to_string()),
    );
    (array, merge)
}

fn sbatch(args: &[String]) -> Result<String, StageError> {
    let out = Command::new("sbatch").args(args).output().map_err(|e| {
        StageError::Invalid(format!("cannot run sbatch ({e}): is Slurm's client installed and on PATH (Debian: slurm-client)?"))
    })?;
    if !out.status.success() {
        return Err(StageError::Invalid(format!(
            "sbatch {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // --parsable prints "jobid" or "jobid;cluster".
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(StageError::Invalid(format!("sbatch {} printed no job id: {:?}", args.join(" "), text.trim())));
    }
    Ok(id)
}

fn read_jobs(run_dir: &Path) -> Result<Option<Jobs>, StageError> {
    let path = run_dir.join(slurm_files::JOBS);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| StageError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(crate::sandbox::FsError { action: "read", path, source }.into()),
    }
}

/// Write the scripts and submit the array (the shards not done, or `only`) and the merge.
pub fn submit(cfg: &ScaleConfig, opts: &SubmitOptions) -> Result<SubmitOutcome, StageError> {
    // Refuse an unpassed pilot here, not in every task.
    inherit(cfg)?;
    let run_dir = cfg.artifacts_dir.join(&cfg.run_id);
    std::fs::create_dir_all(run_dir.join(slurm_files::LOGS))
        .map_err(|source| crate::sandbox::FsError { action: "create directory", path: run_dir.join(slurm_files::LOGS), source })?;
    let (array, merge) = scripts(cfg, opts, &run_dir);
    let array_script = run_dir.join(slurm_files::ARRAY);
    let merge_script = run_dir.join(slurm_files::MERGE);
    write_file_atomic(&array_script, array.as_bytes())?;
    write_file_atomic(&merge_script, merge.as_bytes())?;
    let done: Vec<usize> = (0..cfg.shards).filter(|&i| shard_done(&run_dir, i)).collect();
    let wanted: Vec<usize> = match &opts.only {
        Some(list) => {
            if let Some(bad) = list.iter().find(|&&i| i >= cfg.shards) {
                return Err(StageError::Invalid(format!("--only {bad}: shards are numbered 0 to {}", cfg.shards - 1)));
            }
            list.clone()
        }
        None => (0..cfg.shards).filter(|i| !done.contains(i)).collect(),
    };
    if opts.dry_run {
        return Ok(SubmitOutcome { run_dir, array_script, merge_script, submission: None, done });
    }
    let mut args = vec!["--parsable".to_string()];
    let merge_after = if wanted.is_empty() {
        None
    } else {
        let list: Vec<String> = wanted.iter().map(|i| i.to_string()).collect();
        let max = opts.resources.max_parallel.map(|k| format!("%{k}")).unwrap_or_default();
        args.push(format!("--array={}{max}", list.join(",")));
        args.push(array_script.display().to_string());
        Some(sbatch(&args)?)
    };
    // A merge still waiting on an earlier submission's tasks would wait forever for a failed
    // one: the new merge replaces it.
    let mut jobs = read_jobs(&run_dir)?.unwrap_or(Jobs { run_id: cfg.run_id.clone(), shards: cfg.shards, submissions: vec![] });
    if let Some(old) = jobs.submissions.last() {
        if !queue(std::slice::from_ref(&old.merge_job))?.is_empty() {
            let _ = Command::new("scancel").arg(&old.merge_job).status();
        }
    }
    let mut margs = vec!["--parsable".to_string()];
    if let Some(id) = &merge_after {
        margs.push(format!("--dependency=afterok:{id}"));
    }
    margs.push(merge_script.display().to_string());
    let merge_job = sbatch(&margs)?;
    let submission = Submission { submitted_at: now(), array_job: merge_after.unwrap_or_default(), merge_job, shards: wanted };
    jobs.submissions.push(submission.clone());
    let mut bytes = serde_json::to_vec_pretty(&jobs).expect("serialises");
    bytes.push(b'\n');
    write_file_atomic(&run_dir.join(slurm_files::JOBS), &bytes)?;
    Ok(SubmitOutcome { run_dir, array_script, merge_script, submission: Some(submission), done })
}

/// Job id -> Slurm state, for the jobs of `ids` still known to the controller (pending,
/// running, or just ended). Array tasks are listed as `ARRAYID_INDEX`.
fn queue(ids: &[String]) -> Result<BTreeMap<String, String>, StageError> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let o = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i %T %r", "-j", &ids.join(",")])
        .output()
        .map_err(|e| StageError::Invalid(format!("cannot run squeue ({e}): is Slurm's client installed and on PATH?")))?;
    // squeue fails for job ids the controller has forgotten: then none of them is queued.
    if o.status.success() {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let mut it = line.split_whitespace();
            if let (Some(id), Some(state)) = (it.next(), it.next()) {
                let reason = it.next().unwrap_or("");
                let state = if reason == "DependencyNeverSatisfied" { "blocked".to_string() } else { state.to_lowercase() };
                out.insert(id.to_string(), state);
            }
        }
    }
    Ok(out)
}

fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().chars().take(300).collect())
}

fn queued_state(q: &BTreeMap<String, String>, id: &str) -> Option<String> {
    q.get(id).map(|s| match s.as_str() {
        "pending" | "configuring" | "requeued" => "pending".to_string(),
        "running" | "completing" => "running".to_string(),
        other => other.to_string(),
    })
}

/// Each shard's state and the merge's, from the folder (done shards) and the controller.
pub fn status(run_dir: &Path) -> Result<Status, StageError> {
    let jobs = read_jobs(run_dir)?.ok_or_else(|| {
        StageError::Invalid(format!(
            "\"{}\" has no {}: it was never submitted with `kiln slurm submit scale`",
            run_dir.display(),
            slurm_files::JOBS
        ))
    })?;
    let logs = run_dir.join(slurm_files::LOGS);
    let mut ids: Vec<String> = jobs.submissions.iter().flat_map(|s| [s.array_job.clone(), s.merge_job.clone()]).filter(|s| !s.is_empty()).collect();
    ids.dedup();
    let q = queue(&ids)?;
    let shards = (0..jobs.shards)
        .map(|i| {
            let latest = jobs.submissions.iter().rev().find(|s| s.shards.contains(&i));
            let job = latest.map(|s| format!("{}_{i}", s.array_job));
            let log = latest.map(|s| logs.join(format!("shard-{i}-{}.out", s.array_job)));
            let (state, detail) = if shard_done(run_dir, i) {
                ("done".to_string(), None)
            } else if let Some(st) = job.as_deref().and_then(|j| queued_state(&q, j)) {
                (st, None)
            } else if job.is_some() {
                ("failed".to_string(), log.as_deref().and_then(last_line))
            } else {
                ("not submitted".to_string(), None)
            };
            ShardState { shard: i, state, job, log, detail }
        })
        .collect::<Vec<_>>();
    let latest = jobs.submissions.last();
    let merge_job = latest.map(|s| s.merge_job.clone());
    let merge_log = merge_job.as_ref().map(|j| logs.join(format!("merge-{j}.out")));
    let merge_done = Manifest::read(run_dir).is_ok_and(|m| m.stage == "scale" && m.status == "complete");
    let (state, detail) = if merge_done {
        ("done".to_string(), None)
    } else if let Some(st) = merge_job.as_deref().and_then(|j| queued_state(&q, j)) {
        // A merge held back by its dependency is pending "waiting" for the shards.
        (if st == "pending" { "waiting".to_string() } else { st }, None)
    } else if merge_job.is_some() {
        ("failed".to_string(), merge_log.as_deref().and_then(last_line))
    } else {
        ("not submitted".to_string(), None)
    };
    let merge = ShardState { shard: jobs.shards, state, job: merge_job, log: merge_log, detail };
    Ok(Status { run_dir: run_dir.to_path_buf(), shards, merge })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_words_and_protects_the_rest() {
        assert_eq!(shell_quote("/a/b-c_d.toml"), "/a/b-c_d.toml");
        assert_eq!(shell_quote("it's here"), "'it'\\''s here'");
        assert_eq!(shell_quote("sampling.response.temperature=0.8"), "sampling.response.temperature=0.8");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
