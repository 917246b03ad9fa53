//! `kiln scale` on a tiny random model: the gate on the pilot, shards run in one process, one
//! by one in reverse order (one of them killed and resumed) and all at once in parallel
//! processes give the same merged bytes; finished shards are skipped; overrides are explicit
//! and recorded; the merged set trains.

use std::path::Path;
use std::process::Output;

use crate::common::*;
use crate::pilot::{lines, pilot, train_config, Fixture, NoQc, EPOCH};


fn scale(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = kiln();
    c.args(["scale", "--quiet"]).args(args).env("SOURCE_DATE_EPOCH", EPOCH);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The merged dataset's files, which must not depend on how the shards were run.
pub(crate) fn merged(run: &Path) -> Vec<(String, Vec<u8>)> {
    ["dataset.jsonl", "dataset.parquet", "merge/dropped.jsonl"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(run.join(f)).unwrap_or_else(|e| panic!("{}: {e}", run.join(f).display()))))
        .collect()
}

#[test]
fn shards_in_any_order_or_in_parallel_merge_to_the_same_bytes() {
    let f = Fixture::new();
    // No QC rules: the tiny model's text fails every threshold, and this test is about sharding.
    let cfg = f.config("pilot.toml", "count = 12\nrun_id = \"pilot\"\ncritic_filter = false", "").replace_qc_rules();
    let o = pilot(&cfg, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let pilot_dir = f.artifacts().join("pilot");
    let art = f.artifacts();
    let base = |id: &str| -> Vec<String> {
        ["--pilot", &pilot_dir.display().to_string(), "--count", "40", "--shards", "4", "--run-id", id, "--artifacts-dir", &art.display().to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let args = |id: &str, more: &[&str]| -> Vec<String> { base(id).into_iter().chain(more.iter().map(|s| s.to_string())).collect() };
    let run = |a: Vec<String>, env: &[(&str, &str)]| {
        let v: Vec<&str> = a.iter().map(String::as_str).collect();
        scale(&v, env)
    };

    // One process: every shard, then the merge.
    let o = run(args("local", &["--json"]), &[]);
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["ran"], serde_json::json!([0, 1, 2, 3]));
    let local = art.join("local");
    let m = json(&local.join("manifest.json"));
    assert_eq!(m["stage"], "scale");
    assert_eq!(m["count"], 40);
    assert_eq!(m["source"]["run_id"], "pilot");
    assert_eq!(o.status.code(), Some(if m["gate"]["pass"].as_bool().unwrap() { 0 } else { 2 }));
    let report = json(&local.join("scale.json"));
    let planned: Vec<u64> = report["shard_reports"].as_array().unwrap().iter().map(|s| s["count"].as_u64().unwrap()).collect();
    assert_eq!(planned, [10, 10, 10, 10]);
    let data = lines(&local.join("dataset.jsonl"));
    assert!(!data.is_empty(), "the merged set is empty");
    assert_eq!(data.len() as u64, m["counts"]["accepted"].as_u64().unwrap());
    // Ids name their shard; no instruction appears twice; no clock readings.
    let mut seen = std::collections::HashSet::new();
    for d in &data {
        let id = d["sample"]["id"].as_str().unwrap();
        assert!(id.starts_with('s') && id.contains('-'), "{id}");
        let key = d["sample"]["instruction"].as_str().unwrap().split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        assert!(seen.insert(key), "a duplicate survived the merge: {id}");
        assert_eq!(d["provenance"]["accepted_at"], "");
    }
    // Cross-shard duplicates are dropped with the sample they repeat.
    for d in lines(&local.join("merge/dropped.jsonl")) {
        if d["stage"] == "merge" {
            assert!(["duplicate", "near-duplicate"].contains(&d["code"].as_str().unwrap()), "{d}");
        }
    }
    assert_eq!(report["duplicates"].as_u64().unwrap() + report["near_duplicates"].as_u64().unwrap(), m["counts"]["dropped_duplicate"].as_u64().unwrap() + m["counts"]["dropped_near-duplicate"].as_u64().unwrap());
    // The Parquet copy starts and ends with its magic.
    let pq = std::fs::read(local.join("dataset.parquet")).unwrap();
    assert_eq!((&pq[..4], &pq[pq.len() - 4..]), (&b"PAR1"[..], &b"PAR1"[..]));

    // Again: every shard is done, nothing runs, the merge writes the same bytes.
    let o = run(args("local", &["--json"]), &[]);
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((again["ran"].clone(), again["skipped"].clone()), (serde_json::json!([]), serde_json::json!([0, 1, 2, 3])));

    // One shard per process, in reverse order; shard 1 is killed once and resumed.
    for i in [3, 2, 1, 0] {
        let shard = format!("{i}/4");
        if i == 1 {
            let o = run(args("reversed", &["--shard", &shard]), &[("KILN_DEBUG_ABORT_AFTER_RAW", "5")]);
            assert!(o.status.code() != Some(0), "the debug abort did not happen: {}", text(&o));
            let o = run(args("reversed", &["--merge"]), &[]);
            assert_eq!(o.status.code(), Some(1), "{}", text(&o));
            assert!(text(&o).contains("2 of 4 shards are not done (0, 1)"), "{}", text(&o));
        }
        let o = run(args("reversed", &["--shard", &shard]), &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = run(args("reversed", &["--merge"]), &[]);
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    assert_eq!(merged(&art.join("reversed")), merged(&local), "reversed shards merged to other bytes");

    // Four processes at once (what a job array does), then the merge.
    let children: Vec<_> = (0..4)
        .map(|i| {
            let a = args("parallel", &["--shard", &format!("{i}/4")]);
            let mut c = kiln();
            c.arg("scale").arg("--quiet").args(&a).env("SOURCE_DATE_EPOCH", EPOCH);
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = run(args("parallel", &["--merge"]), &[]);
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    assert_eq!(merged(&art.join("parallel")), merged(&local), "parallel shards merged to other bytes");

    // The merged set trains (when its gate passed).
    if m["gate"]["pass"].as_bool().unwrap() {
        let t = train_config(&f, "train.toml", &local, 1);
        let o = stage("train", &t, &["--run-id", "train-scale"], &[], EPOCH);
        assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
        let tm = json(&art.join("train-scale/manifest.json"));
        assert_eq!(tm["dataset"]["file"], "dataset.jsonl");
    }
}

#[test]
fn scale_refuses_an_unpassed_pilot_and_records_overrides() {
    let f = Fixture::new();
    let failing = f.config("fail.toml", "count = 8\nrun_id = \"failed\"", "[plugins.qc_rules.config]\nmax_empty_rate = 0.0\n");
    assert_eq!(pilot(&failing, &[], &[]).status.code(), Some(2));
    let art = f.artifacts().display().to_string();
    let failed = f.artifacts().join("failed").display().to_string();
    let o = scale(&["--pilot", &failed, "--count", "8", "--shards", "2", "--artifacts-dir", &art], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("gate did not pass") && err.contains(&failed), "{err}");
    assert!(!f.artifacts().join("scale").exists(), "a refused scale left a folder");

    // A folder that is no run, and a pilot whose files changed after it finished.
    std::fs::create_dir_all(f.path("empty")).unwrap();
    let o = scale(&["--pilot", &f.path("empty").display().to_string(), "--artifacts-dir", &art], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("manifest"), "{}", text(&o));

    let good = f.config("good.toml", "count = 8\nrun_id = \"good\"\ncritic_filter = false", "").replace_qc_rules();
    assert_eq!(pilot(&good, &[], &[]).status.code(), Some(0));
    let good_dir = f.artifacts().join("good").display().to_string();
    // Overrides must name a parameter the pilot has, with a valid value.
    for (set, want) in [("nosuch.key=1", "no \"nosuch\""), ("sampling.response.temperature=-1", "temperature")] {
        let o = scale(&["--pilot", &good_dir, "--count", "4", "--shards", "2", "--run-id", "bad", "--artifacts-dir", &art, "--set", set], &[]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(want), "{set}: {}", text(&o));
    }
    let o = scale(
        &["--pilot", &good_dir, "--count", "4", "--shards", "2", "--run-id", "hot", "--artifacts-dir", &art, "--set", "sampling.response.temperature=2.5"],
        &[],
    );
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    let hot = f.artifacts().join("hot");
    let resolved = std::fs::read_to_string(hot.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("\"sampling.response.temperature\" = 2.5"), "{resolved}");
    assert_eq!(json(&hot.join("scale.json"))["overrides"]["sampling.response.temperature"], "2.5");
    let shard = std::fs::read_to_string(hot.join("shards/shard-00000/config.resolved.toml")).unwrap();
    assert!(shard.contains("temperature = 2.5"), "{shard}");
    // The same scale with another override is refused, naming the difference.
    let o = scale(&["--pilot", &good_dir, "--count", "4", "--shards", "2", "--run-id", "hot", "--artifacts-dir", &art], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("temperature"), "{}", text(&o));
}
