//! `kiln slurm` against a real Slurm: scripts/slurm-local.sh installs Debian's slurm-wlm and
//! munge when missing and starts slurmctld and slurmd on this host (root needed). A 4-shard
//! scale of a tiny model runs as a job array through sbatch, with a merge job after it, and
//! merges to the bytes of the same scale run locally in one process. With every task made to
//! abort, `kiln slurm status` shows the shards failed (with their logs) and the merge blocked;
//! one shard resubmitted alone runs alone; the rest resubmitted, a new merge finishes the scale.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::pilot::{pilot, Fixture, NoQc, EPOCH};
use crate::scale::merged;

fn slurm_up() {
    static UP: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = UP.get_or_init(|| {
        let o = std::process::Command::new("bash").arg(root().join("scripts/slurm-local.sh")).output().map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        }
    });
    if let Err(e) = r {
        panic!("a local Slurm is needed (scripts/slurm-local.sh, as root) and could not be started:\n{e}");
    }
}

fn kiln_out(args: &[String], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = kiln();
    c.args(args).env("SOURCE_DATE_EPOCH", EPOCH);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn status(run: &Path) -> serde_json::Value {
    let o = kiln_out(&["slurm".into(), "status".into(), run.display().to_string(), "--json".into()], &[]);
    assert!(matches!(o.status.code(), Some(0) | Some(3)), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Wait until no shard or merge is pending, waiting or running.
fn settle(run: &Path) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = status(run);
        let busy = s["shards"].as_array().unwrap().iter().chain(std::iter::once(&s["merge"])).any(|t| {
            matches!(t["state"].as_str().unwrap(), "pending" | "running" | "waiting")
        });
        if !busy {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "Slurm jobs did not finish in 10 minutes: {s}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn states(s: &serde_json::Value) -> Vec<String> {
    s["shards"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_scale_on_slurm_merges_to_the_local_bytes_and_failed_tasks_resubmit_alone() {
    slurm_up();
    let f = Fixture::new();
    let cfg = f.config("pilot.toml", "count = 12\nrun_id = \"pilot\"\ncritic_filter = false", "").replace_qc_rules();
    assert_eq!(pilot(&cfg, &[], &[]).status.code(), Some(0));
    let art = f.artifacts();
    let scale_args = |id: &str| -> Vec<String> {
        let p: PathBuf = art.join("pilot");
        ["--pilot", &p.display().to_string(), "--count", "24", "--shards", "4", "--run-id", id, "--artifacts-dir", &art.display().to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let mut local = vec!["scale".to_string(), "--quiet".into()];
    local.extend(scale_args("local"));
    let o = kiln_out(&local, &[]);
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));

    // The whole scale through sbatch.
    let submit = |id: &str, more: &[&str], env: &[(&str, &str)]| {
        let mut a = vec!["slurm".to_string(), "submit".into(), "scale".into(), "--json".into()];
        a.extend(scale_args(id));
        a.extend(more.iter().map(|s| s.to_string()));
        let o = kiln_out(&a, env);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let out = submit("cluster", &["--time", "00:10:00", "--mem", "1G", "--cpus-per-task", "1"], &[]);
    assert_eq!(out["submission"]["shards"], serde_json::json!([0, 1, 2, 3]));
    let script = std::fs::read_to_string(art.join("cluster/slurm/scale.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-3") && script.contains("SLURM_ARRAY_TASK_ID") && script.contains("#SBATCH --mem=1G"), "{script}");
    let cluster = art.join("cluster");
    let s = settle(&cluster);
    assert_eq!(states(&s), ["done"; 4], "{s}");
    assert_eq!(s["merge"]["state"], "done", "{s}");
    assert_eq!(merged(&cluster), merged(&art.join("local")), "the Slurm run merged to other bytes than the local run");

    // Every task aborts: failed shards with their logs, the merge blocked.
    submit("flaky", &["--mem", "1G", "--cpus-per-task", "1"], &[("KILN_DEBUG_ABORT_AFTER_RAW", "2")]);
    let flaky = art.join("flaky");
    let s = settle(&flaky);
    assert_eq!(states(&s), ["failed"; 4], "{s}");
    assert_eq!(s["merge"]["state"], "blocked", "{s}");
    let log = PathBuf::from(s["shards"][2]["log"].as_str().unwrap());
    assert!(std::fs::read_to_string(&log).unwrap().contains("KILN_DEBUG_ABORT_AFTER_RAW"), "{}", log.display());
    let o = kiln_out(&["slurm".into(), "status".into(), flaky.display().to_string()], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("failed"), "{}", text(&o));

    // Shard 2 alone, then the rest: each resubmission runs only what it names.
    let out = submit("flaky", &["--only", "2", "--mem", "1G", "--cpus-per-task", "1"], &[]);
    assert_eq!(out["submission"]["shards"], serde_json::json!([2]));
    let s = settle(&flaky);
    assert_eq!(states(&s), ["failed", "failed", "done", "failed"], "{s}");
    submit("flaky", &["--only", "0,1,3", "--mem", "1G", "--cpus-per-task", "1"], &[]);
    let s = settle(&flaky);
    assert_eq!(states(&s), ["done"; 4], "{s}");
    assert_eq!(s["merge"]["state"], "done", "{s}");
    assert_eq!(merged(&flaky), merged(&art.join("local")), "resumed Slurm shards merged to other bytes");
}
