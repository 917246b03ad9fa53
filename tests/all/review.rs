//! `kiln review` and `kiln runs` on tiny-model runs: a packet with the gate's metrics, the
//! parameters changed since the previous pilot, sampled examples with reasons and the critic's
//! margin histogram; an external reviewer script's answer kept with its provenance, a failing
//! or hanging one a one-line error; decisions recorded (a failed gate only with --force);
//! `require_review` holding back a scale until the pilot is approved; `kiln runs` showing a
//! pilot, a replay and a scale with their lineage, an interrupted run with its resume command,
//! and costs that add up along the lineage.

use std::path::Path;

use crate::common::*;
use crate::pilot::{pilot, q, Fixture, NoQc, EPOCH};

fn review(args: &[&str]) -> std::process::Output {
    kiln().arg("review").args(args).env("SOURCE_DATE_EPOCH", EPOCH).output().unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn review_packets_decisions_require_review_and_the_run_list() {
    let f = Fixture::new();
    let art = f.artifacts();
    let c1 = f.config("p1.toml", "count = 20\nrun_id = \"p1\"\ncritic_filter = false", "").replace_qc_rules();
    assert_eq!(pilot(&c1, &[], &[]).status.code(), Some(0));
    // 24 samples of the tiny model give both accepted and dropped examples for the packet.
    let c2 = f.config("p2.toml", "count = 24\nrun_id = \"p2\"\ncritic_filter = false", "").replace_qc_rules();
    // A later start time, so that p1 is p2's previous iteration.
    assert_eq!(crate::common::stage("pilot", &c2, &[], &[], "1700000100").status.code(), Some(0));
    let (p1, p2) = (art.join("p1"), art.join("p2"));

    // The packet.
    let o = review(&[&s(&p2)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let md = std::fs::read_to_string(p2.join("review.md")).unwrap();
    for want in ["# Review packet: p2 (pilot)", "## Gate metrics", "Compared with `p1`", "`count`: 20 -> 24", "accepted examples (fixed seed)", "dropped or quarantined examples", "Why: "] {
        assert!(md.contains(want), "{want} not in the packet:\n{md}");
    }
    assert_eq!(&std::fs::read(p2.join("review_margins.png")).unwrap()[1..4], b"PNG");
    // The same packet again: same bytes (fixed seed).
    assert_eq!(review(&[&s(&p2)]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(p2.join("review.md")).unwrap(), md);

    // An external reviewer: a script reading the packet on stdin.
    let script = f.path("reviewer.sh");
    std::fs::write(&script, "#!/bin/sh\nlines=$(wc -l)\necho \"LGTM: read $lines lines\"\n").unwrap();
    let cfg = f.path("review.toml");
    std::fs::write(&cfg, format!("[review]\nby = \"ci\"\ncommand = \"sh {}\"\ntimeout_s = 30\n", s(&script))).unwrap();
    let o = review(&[&s(&p2), "--config", &s(&cfg)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let answer = std::fs::read_to_string(p2.join("review_answer.md")).unwrap();
    assert_eq!(answer.trim(), format!("LGTM: read {} lines", md.lines().count()));
    let rec = json(&p2.join("review.json"));
    assert!(rec["command"].as_str().unwrap().contains("reviewer.sh"));
    // A reviewer that fails, one that hangs: one-line errors, the packet still whole.
    for (cmd, want) in [("echo broken >&2; exit 3", "failed"), ("sleep 5", "timed out after 1 s")] {
        std::fs::write(&cfg, format!("[review]\ncommand = {cmd:?}\ntimeout_s = 1\n")).unwrap();
        let o = review(&[&s(&p2), "--config", &s(&cfg)]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want) && err.trim().lines().count() == 1, "{cmd}: {err}");
        assert!(std::fs::read_to_string(p2.join("review.md")).unwrap().ends_with("`--reject --note \"...\"`.\n"));
    }

    // require_review holds the scale back until the pilot is approved.
    let scale_cfg = f.path("scale.toml");
    std::fs::write(&scale_cfg, format!("run_id = \"s\"\nartifacts_dir = {}\npilot = {}\ncount = 4\nshards = 2\nrequire_review = true\n", q(&art), q(&p2))).unwrap();
    let o = kiln().args(["scale", "--quiet", "--config"]).arg(&scale_cfg).env("SOURCE_DATE_EPOCH", "1700000200").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no approved review"), "{}", text(&o));
    let o = review(&[&s(&p2), "--approve", "--note", "metrics fine", "--by", "tester"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = json(&p2.join("manifest.json"));
    assert_eq!((m["review"]["decision"].as_str(), m["review"]["by"].as_str()), (Some("approved"), Some("tester")));
    assert_eq!(m["review"]["packet_sha256"].as_str().map(str::len), Some(64));
    let o = kiln().args(["scale", "--quiet", "--config"]).arg(&scale_cfg).env("SOURCE_DATE_EPOCH", "1700000200").output().unwrap();
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));

    // Bad decisions: no such run; a failed gate without --force; with it, recorded.
    let o = review(&[&s(&art.join("nope")), "--approve", "--by", "t"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"), "{}", text(&o));
    let failing = f.config("fail.toml", "count = 6\nrun_id = \"failed\"", "[plugins.qc_rules.config]\nmax_empty_rate = 0.0\n");
    assert_eq!(crate::common::stage("pilot", &failing, &[], &[], "1700000300").status.code(), Some(2));
    let failed = art.join("failed");
    let o = review(&[&s(&failed), "--approve", "--by", "t"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"), "{}", text(&o));
    let o = review(&[&s(&failed), "--approve", "--by", "t", "--force", "--note", "known issue"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(json(&failed.join("manifest.json"))["review"]["forced"], true);

    // A replay of p1, and a pilot killed before its manifest.
    let o = kiln().args(["replay", "--quiet", "--run-id", "p1-replay"]).arg(&p1).arg("--config").arg(&c1).env("SOURCE_DATE_EPOCH", "1700000400").output().unwrap();
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    let c3 = f.config("p3.toml", "count = 6\nrun_id = \"p3\"", "").replace_qc_rules();
    let o = crate::common::stage("pilot", &c3, &[], &[("KILN_DEBUG_ABORT_AT", "before-manifest")], "1700000500");
    assert!(o.status.code() != Some(0));

    let o = kiln().args(["runs", "--json", "--cost", "2.5", "--artifacts-dir"]).arg(&art).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let row = |id: &str| rows.iter().find(|r| r["run_id"] == id).unwrap_or_else(|| panic!("{id} not listed: {rows:?}")).clone();
    assert_eq!(row("p1-replay")["stage"], "replay");
    assert_eq!(row("p1-replay")["parent"], "p1");
    let scale = row("s");
    assert_eq!(scale["parent"], "p2");
    assert_eq!(scale["lineage"], serde_json::json!(["p2", "s"]));
    let lineage = scale["lineage_cost"].as_f64().unwrap();
    let sum = scale["cost"].as_f64().unwrap() + row("p2")["cost"].as_f64().unwrap();
    assert!((lineage - sum).abs() < 1e-9 && lineage > 0.0, "{lineage} vs {sum}");
    // The scale's time includes its shards'.
    assert!(scale["resources"]["invocations"].as_u64().unwrap() >= 3, "{scale}");
    assert_eq!(row("p2")["review"], "approved by tester");
    let p3 = row("p3");
    assert_eq!(p3["status"], "interrupted");
    let resume = p3["resume"].as_str().unwrap();
    assert!(resume.contains("pilot") && resume.contains("p3.toml"), "{resume}");
    let o = kiln().args(["runs", "--cost", "2.5", "--artifacts-dir"]).arg(&art).output().unwrap();
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("interrupted") && table.contains("resume: ") && table.contains("total cost"), "{table}");
}
