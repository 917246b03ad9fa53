//! `kiln pilot`, `kiln replay` and `kiln compare`, run as a user would, on tiny random models
//! written by the test (fast), plus one run on the real base model.
//!
//! The crash tests kill the binary at several points (with the debug hooks
//! `KILN_DEBUG_ABORT_AFTER_RAW=N` / `KILN_DEBUG_ABORT_AT=<point>`, which abort like `kill -9`,
//! and with a real SIGKILL), run the same command again, and compare every output byte with an
//! uninterrupted run's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use crate::tiny::{self, Tiny};

/// A fixed clock for byte comparisons (timestamps honour SOURCE_DATE_EPOCH).
pub(crate) const EPOCH: &str = "1700000000";

pub(crate) struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let mut dir = tempfile::tempdir().unwrap();
        // KILN_TEST_KEEP=1 keeps the folder for a look afterwards.
        if std::env::var_os("KILN_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let model = dir.path().join("tiny-llama.gguf");
        tiny::write(&Tiny::llama(), &model);
        Fixture { dir, model }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn artifacts(&self) -> PathBuf {
        self.path("artifacts")
    }

    /// A pilot config on the tiny model with the reference plugins; `extra` is TOML inserted
    /// at the top level (before any table), `tail` appended at the end.
    pub(crate) fn config(&self, name: &str, extra: &str, tail: &str) -> PathBuf {
        let text = tiny_config(&self.model, &self.artifacts(), extra, tail);
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub(crate) fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Short prompts: the tiny model has 512 positions and a vocabulary of a few hundred tokens.
/// A tiny random model mostly repeats the last token of its prompt; a high temperature with
/// top-k makes about a quarter of its instructions contain letters (the template's parser
/// wants them), which is enough to exercise every stage.
fn tiny_config(model: &Path, artifacts: &Path, extra: &str, tail: &str) -> String {
    let data = root().join("data");
    // Top-level keys; a key given in `extra` replaces the default.
    let mut top = String::new();
    for line in ["run_id = \"tiny\"", "seed = 7", "count = 24", "batch_size = 4", "chunk_size = 2", "examples_per_prompt = 2"] {
        let key = line.split(' ').next().unwrap();
        if !extra.lines().any(|l| l.starts_with(&format!("{key} "))) {
            top.push_str(line);
            top.push('\n');
        }
    }
    format!(
        r#"artifacts_dir = {artifacts}
{top}{extra}

[data]
seeds = {seeds}
instruction_types = {types}

[model]
path = {model}

[sampling]
temperature = 6.0
top_p = 1.0
top_k = 40

[plugins.template]
path = {template}

[plugins.template.config]
instruction_header = "Tasks: {{description}}"
response_preamble = ""
instruction_max_tokens = 12
response_max_tokens = 12
min_instruction_words = 1
max_instruction_chars = 120

[[plugins.cleaners]]
path = {cleaner}
data_dir = {data}

[plugins.cleaners.config]
reference_file = "/data/seeds.jsonl"
min_instruction_chars = 1
min_response_chars = 1
max_repetition = 1.0

[[plugins.critics]]
path = {critic}

[plugins.critics.config]
instruction_prompt = "Task: {{instruction}}\n{{choices}} Answer:"
response_prompt = "Task: {{instruction}}\nResponse: {{response}}\n{{choices}} Answer:"

[[plugins.qc_rules]]
path = {qc}
{tail}
"#,
        artifacts = q(artifacts),
        seeds = q(&data.join("seeds.jsonl")),
        types = q(&data.join("instruction_types.json")),
        data = q(&data),
        model = q(model),
        template = q(&reference("template-fewshot")),
        cleaner = q(&reference("cleaner-basic")),
        critic = q(&reference("critic-ab")),
        qc = q(&reference("qc-gates")),
    )
}

pub(crate) fn pilot(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    stage("pilot", config, args, env, EPOCH)
}

pub(crate) fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The exit code a finished run must have: 0 when its gate passed, 2 when it failed.
fn assert_gate_code(o: &Output, run: &Path) {
    let pass = json(&run.join("qc_report.json"))["pass"].as_bool().unwrap();
    assert_eq!(o.status.code(), Some(if pass { 0 } else { 2 }), "{}", text(o));
}

/// Every file of a run that must not depend on how the run was interrupted: all but the
/// chunk files (their boundaries depend on where it stopped), the timings and the logs, and
/// the manifest without its resources (wall and CPU time).
fn outputs(run: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                if !matches!(rel.as_str(), "completions" | "stats" | "logs") {
                    walk(base, &p, out);
                }
            } else if rel == "manifest.json" {
                // What the run cost differs between runs; everything else must not.
                let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                m.as_object_mut().unwrap().remove("resources");
                out.insert(rel, serde_json::to_vec_pretty(&m).unwrap());
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(run, run, &mut out);
    out
}

fn assert_same_outputs(a: &Path, b: &Path, what: &str) {
    let (x, y) = (outputs(a), outputs(b));
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{what}: different files");
    for (k, v) in &x {
        if v != &y[k] {
            let (a, b) = (String::from_utf8_lossy(v), String::from_utf8_lossy(&y[k]));
            let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
            let first = (0..la.len().max(lb.len())).find(|&i| la.get(i) != lb.get(i)).unwrap_or(0);
            panic!(
                "{what}: {k} differs, first at line {}:\n--- uninterrupted\n{}\n--- interrupted\n{}",
                first + 1,
                la.get(first).unwrap_or(&"(none)"),
                lb.get(first).unwrap_or(&"(none)")
            );
        }
    }
}

#[test]
fn pilot_runs_end_to_end_with_provenance() {
    let f = Fixture::new();
    let cfg = f.config("pilot.toml", "", "");
    let o = pilot(&cfg, &["--json"], &[]);
    let run = f.artifacts().join("tiny");
    assert_gate_code(&o, &run);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(summary["counts"]["planned"], 24);

    for rel in [
        "manifest.json",
        "config.resolved.toml",
        "raw/shard-00000.jsonl",
        "pilot/shard-00000.jsonl",
        "pilot/cleaned/shard-00000.jsonl",
        "pilot/dropped/shard-00000.jsonl",
        "critic/shard-00000.jsonl",
        "quarantine/template-fewshot.jsonl",
        "qc_report.json",
        "qc_report.md",
        "stats/00000.json",
        "logs/pilot.log",
        "completions/00000/instruction-00000.jsonl",
    ] {
        assert!(run.join(rel).is_file(), "{rel} missing");
    }

    // The raw pool: every prompt and completion, with finish reasons and token counts.
    let raw = lines(&run.join("raw/shard-00000.jsonl"));
    assert_eq!(raw.len(), 24);
    let types: std::collections::BTreeSet<&str> = raw.iter().map(|r| r["instruction_type"].as_str().unwrap()).collect();
    assert_eq!(types.len(), 5, "the mix covers every type: {types:?}");
    for r in &raw {
        let i = &r["instruction"];
        assert!(i["prompt"].as_str().unwrap().starts_with("Tasks: "));
        assert!(["stop", "eos", "length"].contains(&i["finish_reason"].as_str().unwrap()));
        assert!(i["completion_tokens"].as_u64().unwrap() <= 12);
        assert_eq!(i["generated_at"], "2023-11-14T22:13:20Z");
    }

    // The manifest: provenance and environment.
    let m = json(&run.join("manifest.json"));
    assert_eq!(m["status"], "complete");
    assert_eq!(m["model"]["sha256"], kiln::provenance::sha256_file(&f.model).unwrap());
    assert_eq!(m["guard"]["verdict"], "base");
    assert_eq!(m["environment"]["device"], "cpu");
    assert!(m["environment"]["threads"].as_u64().unwrap() >= 1);
    assert!(m["kiln"]["git_revision"].is_string(), "kiln runs from its git checkout here: {}", m["kiln"]);
    let plugins = m["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 4);
    for (p, name) in plugins.iter().zip(["template-fewshot", "cleaner-basic", "critic-ab", "qc-gates"]) {
        assert_eq!(p["name"], name);
        assert_eq!(p["sha256"], kiln::provenance::sha256_file(&reference(name)).unwrap());
        assert!(!p["version"].as_str().unwrap().is_empty());
    }
    let resolved = std::fs::read(run.join("config.resolved.toml")).unwrap();
    assert_eq!(m["config_hash"], kiln::provenance::sha256_hex(&resolved));
    for (rel, sha) in m["files"].as_object().unwrap() {
        assert_eq!(sha, &kiln::provenance::sha256_file(&run.join(rel)).unwrap(), "{rel}");
    }

    // Accepted samples carry their provenance; every sample is accounted for.
    let accepted = lines(&run.join("pilot/shard-00000.jsonl"));
    for a in &accepted {
        let p = &a["provenance"];
        assert_eq!(p["config_hash"], m["config_hash"]);
        assert_eq!(p["model_sha256"], m["model"]["sha256"]);
        assert_eq!(p["plugins"].as_array().unwrap().len(), 4);
        assert!(p["response_seed"].as_u64().unwrap() > 0);
        assert_eq!(p["sampling"]["response"]["temperature"], 6.0);
        assert!(a["sample"]["verdicts"].as_array().unwrap().iter().all(|v| v["pass"] == true));
    }
    let dropped = lines(&run.join("pilot/dropped/shard-00000.jsonl"));
    for d in &dropped {
        assert!(!d["code"].as_str().unwrap().is_empty() && !d["plugin"].as_str().unwrap().is_empty(), "{d}");
    }
    let c = &m["counts"];
    assert_eq!(c["planned"], 24);
    assert_eq!(c["accepted"].as_u64().unwrap() as usize, accepted.len());
    assert_eq!(
        c["accepted"].as_u64().unwrap() + c["dropped"].as_u64().unwrap() + c["quarantined"].as_u64().unwrap(),
        24,
        "{c}"
    );

    // Critic records: one per judged sample, with the host's log-probabilities.
    let critic = lines(&run.join("critic/shard-00000.jsonl"));
    assert_eq!(critic.len() as u64, c["judged"].as_u64().unwrap());
    for r in &critic {
        // Two aspects, each asked in both letter orders.
        assert_eq!(r["scores"].as_array().unwrap().len(), 4);
        assert!(r["scores"][0]["logprob_a"].as_str().unwrap().parse::<f64>().unwrap() < 0.0);
    }

    // The QC report names every metric with its threshold, in JSON and Markdown.
    let qc = json(&run.join("qc_report.json"));
    let names: Vec<&str> = qc["metrics"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    for n in ["runaway_rate", "token_limit_rate"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let md = std::fs::read_to_string(run.join("qc_report.md")).unwrap();
    assert!(md.contains("| qc-gates | runaway_rate |") && md.contains("< 0.0500"), "{md}");
}

#[test]
fn exit_codes_tell_gate_failure_from_success() {
    let f = Fixture::new();
    // An impossible gate: the empty rate must be below 0.
    let failing = f.config("fail.toml", "run_id = \"fail\"", "[plugins.qc_rules.config]\nmax_empty_rate = 0.0\n");
    let o = pilot(&failing, &[], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("gate: FAILED") && stdout.contains("empty_rate"), "{stdout}");
    // No QC rule: nothing to fail.
    let none = f.config("none.toml", "run_id = \"none\"", "").replace_qc_rules();
    let o = pilot(&none, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("gate: PASSED"));
    // The CPU is the default device and is not recorded; a device this build lacks is a
    // one-line error (exit 1) that names it.
    let m = json(&f.artifacts().join("none/manifest.json"));
    assert!(m["model"].get("device").is_none(), "{m}");
    if !cfg!(feature = "cuda") {
        let o = pilot(&none, &["--device", "cuda:1", "--run-id", "gpu"], &[]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("device cuda:1: this kiln is built without CUDA"), "{}", text(&o));
    }
}

pub(crate) trait NoQc {
    fn replace_qc_rules(self) -> PathBuf;
}

impl NoQc for PathBuf {
    /// The same config without its QC rule.
    fn replace_qc_rules(self) -> PathBuf {
        let t = std::fs::read_to_string(&self).unwrap();
        let cut = t.find("[[plugins.qc_rules]]").unwrap();
        std::fs::write(&self, &t[..cut]).unwrap();
        self
    }
}

#[test]
fn resume_after_kills_writes_the_same_bytes() {
    let f = Fixture::new();
    let cfg = f.config("pilot.toml", "", "");
    let run = f.artifacts().join("tiny");
    let reference_run = f.path("uninterrupted");

    let o = pilot(&cfg, &[], &[]);
    assert_gate_code(&o, &run);
    std::fs::rename(&run, &reference_run).unwrap();

    // Kill after 1, 9 and 14 raw completions written by the process (chunks of 2: in the
    // instruction phase, then across into the response phase), then at the named points
    // after generation, then let it finish.
    let mut seen_chunks = 0;
    for n in ["1", "9", "14"] {
        let o = pilot(&cfg, &[], &[("KILN_DEBUG_ABORT_AFTER_RAW", n)]);
        let chunks = std::fs::read_dir(run.join("completions/00000")).unwrap().count();
        assert!(chunks > seen_chunks, "no progress after {n}");
        seen_chunks = chunks;
        if n != "14" {
            assert!(o.status.code().is_none(), "should have aborted after {n}: {}", text(&o));
            assert!(!run.join("manifest.json").exists());
        }
    }
    let responses = std::fs::read_dir(run.join("completions/00000")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("response-")).count();
    assert!(responses > 0, "the kills should reach the response phase");
    for point in ["after-instructions", "after-raw-pool", "before-manifest"] {
        let o = pilot(&cfg, &[], &[("KILN_DEBUG_ABORT_AT", point)]);
        assert!(o.status.code().is_none(), "should have aborted at {point}: {}", text(&o));
        assert!(!run.join("manifest.json").exists());
    }
    let o = pilot(&cfg, &["--json"], &[]);
    assert_gate_code(&o, &run);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(summary["resumed"]["instruction"].as_u64().unwrap() == 24, "{summary}");
    assert_same_outputs(&reference_run, &run, "kill and resume");

    // Each completion exactly once across the chunks: none lost, none duplicated.
    let mut ids: Vec<(String, String)> = Vec::new();
    for e in std::fs::read_dir(run.join("completions/00000")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue;
        }
        for l in lines(&p) {
            ids.push((l["phase"].as_str().unwrap().to_string(), l["id"].as_str().unwrap().to_string()));
        }
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a completion was written twice");

    // A finished run run again changes nothing but its timings and logs.
    let o = pilot(&cfg, &[], &[]);
    assert_gate_code(&o, &run);
    assert_same_outputs(&reference_run, &run, "re-run of a finished run");
}

#[test]
fn resume_after_sigkill_writes_the_same_bytes() {
    let f = Fixture::new();
    let cfg = f.config("pilot.toml", "count = 60\nrun_id = \"big\"", "");
    let run = f.artifacts().join("big");
    let reference_run = f.path("uninterrupted");
    let o = pilot(&cfg, &[], &[]);
    assert_gate_code(&o, &run);
    std::fs::rename(&run, &reference_run).unwrap();

    // SIGKILL as soon as the first chunks are on disk, twice, then finish.
    for wanted in [1usize, 6] {
        let mut child = kiln()
            .args(["pilot", "--quiet", "--config"])
            .arg(&cfg)
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        loop {
            let n = std::fs::read_dir(run.join("completions/00000")).map(|d| d.count()).unwrap_or(0);
            if n >= wanted || start.elapsed().as_secs() > 120 {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.kill().unwrap_or(());
        child.wait().unwrap();
    }
    let o = pilot(&cfg, &[], &[]);
    assert_gate_code(&o, &run);
    assert_same_outputs(&reference_run, &run, "SIGKILL and resume");
}

#[test]
fn resume_refuses_another_config() {
    let f = Fixture::new();
    let cfg = f.config("pilot.toml", "", "");
    let o = pilot(&cfg, &[], &[("KILN_DEBUG_ABORT_AFTER_RAW", "3")]);
    assert!(!o.status.success());
    let o = pilot(&cfg, &["--seed", "8"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already holds a run made with another config") && err.contains("seed: 7 -> 8"), "{err}");
}

#[test]
fn replay_with_a_stricter_cleaner_shows_the_delta_without_the_model() {
    let f = Fixture::new();
    let cfg = f.config("pilot.toml", "", "");
    let run = f.artifacts().join("tiny");
    let o = pilot(&cfg, &[], &[]);
    assert_gate_code(&o, &run);
    let before = json(&run.join("qc_report.json"));

    // The stricter cleaner keeps only responses of 12 characters or more.
    let strict = f.config("strict.toml", "", "").with_replaced("min_response_chars = 1", "min_response_chars = 12");
    // Its critic requests are a subset of the run's: no model needed (the file is gone).
    let moved = f.path("moved.gguf");
    std::fs::rename(&f.model, &moved).unwrap();
    let start = std::time::Instant::now();
    let o = kiln().args(["replay", "--quiet", "--json"]).arg(&run).arg("--config").arg(&strict).output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let d = &out["delta"];
    assert_eq!(d["scores_computed"], 0, "{d}");
    assert!(secs < 30.0, "replay took {secs:.1}s");
    let new_run = PathBuf::from(out["summary"]["run_dir"].as_str().unwrap());
    assert_eq!(new_run.parent(), run.parent());
    assert_gate_code(&o, &new_run);
    let row = |name: &str| d["rows"].as_array().unwrap().iter().find(|r| r["metric"] == name).cloned().unwrap_or_else(|| panic!("{name}: {d}"));
    let cleaned = row("cleaned");
    assert_eq!(cleaned["before"].as_f64(), before["counts"]["cleaned"].as_f64());
    assert!(cleaned["after"].as_f64().unwrap() <= cleaned["before"].as_f64().unwrap());
    assert_eq!(cleaned["delta"].as_f64().unwrap(), cleaned["after"].as_f64().unwrap() - cleaned["before"].as_f64().unwrap());
    assert!(d["kept_after_only"].as_array().unwrap().is_empty(), "{d}");
    let short = lines(&run.join("pilot/shard-00000.jsonl"))
        .iter()
        .filter(|a| a["sample"]["response"].as_str().unwrap().chars().count() < 12)
        .count();
    assert_eq!(d["kept_before_only"].as_array().unwrap().len(), short, "{d}");

    // The new run points to the raw pool it used and has no raw pool of its own.
    let m = json(&new_run.join("manifest.json"));
    assert_eq!(m["stage"], "replay");
    assert_eq!(m["source"]["run_id"], "tiny");
    assert_eq!(m["source"]["raw_pool_sha256"], kiln::provenance::sha256_file(&run.join("raw/shard-00000.jsonl")).unwrap());
    assert!(!new_run.join("raw").exists());
    let resolved = std::fs::read_to_string(new_run.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("min_response_chars = 12"), "{resolved}");

    // A replay of the replay with the original config gives the original run's numbers back,
    // from the same raw pool.
    let o = kiln().args(["replay", "--quiet", "--json", "--run-id", "back"]).arg(&new_run).arg("--config").arg(&cfg).output().unwrap();
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let back = f.artifacts().join("back");
    assert_eq!(json(&back.join("manifest.json"))["source"]["run_id"], "tiny");
    assert_eq!(json(&back.join("manifest.json"))["source"]["replayed"], new_run.file_name().unwrap().to_str().unwrap());
    assert_eq!(json(&back.join("qc_report.json"))["metrics"], before["metrics"]);
    let dropped = |r: &Path| std::fs::read_to_string(r.join("pilot/dropped/shard-00000.jsonl")).unwrap();
    assert!(dropped(&back) == dropped(&run), "dropped samples differ");
    assert_eq!(out["delta"]["scores_computed"], 0);

    // The text form is the table.
    let o = kiln().args(["replay", "--quiet"]).arg(&run).arg("--config").arg(&strict).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("metric") && stdout.contains("before") && stdout.contains("delta") && stdout.contains("kept by before only"), "{stdout}");

    // A changed critic prompt needs the model: without it, a clear error.
    let other_critic = f.config("critic.toml", "", "").with_replaced("{choices} Answer:", "{choices} Is it good? Answer:");
    let o = kiln().args(["replay", "--quiet"]).arg(&run).arg("--config").arg(&other_critic).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tiny-llama.gguf"), "{}", text(&o));
    std::fs::rename(&moved, &f.model).unwrap();
    let o = kiln().args(["replay", "--quiet", "--json"]).arg(&run).arg("--config").arg(&other_critic).output().unwrap();
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert!(out["delta"]["scores_computed"].as_u64().unwrap() > 0, "{}", out["delta"]);
}

trait Replaced {
    fn with_replaced(self, from: &str, to: &str) -> PathBuf;
}

impl Replaced for PathBuf {
    fn with_replaced(self, from: &str, to: &str) -> PathBuf {
        let t = std::fs::read_to_string(&self).unwrap();
        assert!(t.contains(from), "{from} not in config");
        std::fs::write(&self, t.replace(from, to)).unwrap();
        self
    }
}

#[test]
fn compare_shows_three_runs_side_by_side() {
    let f = Fixture::new();
    let a = f.config("a.toml", "run_id = \"pilot-1\"", "");
    let b = f.config("b.toml", "run_id = \"iteration-1\"", "").with_replaced("temperature = 6.0", "temperature = 5.0");
    let c = f.config("c.toml", "run_id = \"iteration-2\"", "").with_replaced("temperature = 6.0", "temperature = 7.0").with_replaced("top_k = 40", "top_k = 20");
    for cfg in [&a, &b, &c] {
        let o = pilot(cfg, &[], &[]);
        assert!(matches!(o.status.code(), Some(0 | 2)), "{}", text(&o));
    }
    let o = kiln()
        .args(["compare", "pilot-1", "iteration-1", "iteration-2", "--artifacts-dir"])
        .arg(f.artifacts())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    let header = s.lines().next().unwrap();
    assert!(header.contains("pilot-1") && header.contains("iteration-1") && header.contains("iteration-2"), "{s}");
    for row in ["runaway_rate", "token_limit_rate", "accepted", "gate_pass"] {
        let line = s.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no {row} row:\n{s}"));
        assert_eq!(line.split_whitespace().count(), 4, "{line}");
    }
    assert!(s.contains("iteration-1: settings that differ from pilot-1:"), "{s}");
    assert!(s.contains("sampling.response.temperature: 6.0 -> 5.0"), "{s}");
    assert!(s.contains("sampling.instruction.top_k: 40 -> 20"), "{s}");
    assert!(!s.contains("run_id:"), "{s}");

    let o = kiln().args(["compare", "--json"]).arg(f.artifacts().join("pilot-1")).arg(f.artifacts().join("iteration-2")).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);

    let o = kiln().args(["compare", "nope", "--artifacts-dir"]).arg(f.artifacts()).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("run \"nope\""), "{}", text(&o));
}

/// Run with a broken config: exit 1, one line on stderr, containing every `want`.
fn assert_config_error(f: &Fixture, name: &str, broken: &Path, want: &[&str]) {
    let o = pilot(broken, &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let errs: Vec<&str> = err.lines().filter(|l| l.starts_with("kiln: error:")).collect();
    assert_eq!(errs.len(), 1, "{name}: {err}");
    for w in want {
        assert!(errs[0].contains(w), "{name}: expected {w:?} in: {}", errs[0]);
    }
    assert!(!f.artifacts().join("tiny/manifest.json").exists(), "{name}");
}

#[test]
fn bad_configs_fail_with_one_line_errors() {
    let f = Fixture::new();
    let cfg = || f.config("bad.toml", "", "");
    assert_config_error(&f, "missing key", &cfg().with_replaced("count = 24\n", ""), &["bad.toml", "missing field `count`"]);
    assert_config_error(&f, "mistyped key", &cfg().with_replaced("seed = 7", "sed = 7"), &["bad.toml", "unknown field `sed`"]);
    assert_config_error(&f, "mistyped value", &cfg().with_replaced("count = 24", "count = \"12\""), &["bad.toml", "count = \"12\""]);
    assert_config_error(
        &f,
        "missing plugin",
        &cfg().with_replaced("cleaner-basic.wasm", "cleaner-basic-nope.wasm"),
        &["plugins.cleaners[0].path", "cleaner-basic-nope.wasm", "no such file"],
    );
    let wrong = "0".repeat(64);
    assert_config_error(
        &f,
        "wrong sha256",
        &cfg().with_replaced("[[plugins.critics]]\n", &format!("[[plugins.critics]]\nsha256 = \"{wrong}\"\n")),
        &["plugins.critics[0]", "hash mismatch", &wrong, &kiln::provenance::sha256_file(&reference("critic-ab")).unwrap()],
    );
    assert_config_error(
        &f,
        "wrong world",
        &cfg().with_replaced(&format!("[[plugins.qc_rules]]\npath = {}", q(&reference("qc-gates"))), &format!("[[plugins.qc_rules]]\npath = {}", q(&reference("critic-ab")))),
        &["plugins.qc_rules[0]", "critic-ab.wasm", "is a critic plugin", "needs a qc-rule plugin"],
    );
    assert_config_error(&f, "missing model", &cfg().with_replaced("tiny-llama.gguf", "nope.gguf"), &["model.path", "nope.gguf", "no such file"]);
    assert_config_error(&f, "unknown type", &cfg().with_replaced("[plugins.template]\n", "[mix]\nopen-qa = 1\npoetry = 2\n\n[plugins.template]\n"), &["mix.poetry = 2", "no such instruction type"]);
    // A model flagged by the contamination guard (any model is, at a threshold of -100).
    let o = pilot(&cfg().with_replaced("[model]\n", "[model]\nguard_threshold = -100.0\n"), &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("failed the contamination guard"), "{}", text(&o));
    // A model that carries a chat template is refused unless allowed.
    let chat = f.path("chat.gguf");
    tiny::write(&Tiny { chat_template: Some("{{ messages }}".into()), ..Tiny::llama() }, &chat);
    let o = pilot(&cfg().with_replaced("tiny-llama.gguf", "chat.gguf"), &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("carries a chat template"), "{}", text(&o));
    // An artifacts folder that cannot be created.
    let blocker = f.path("blocker");
    std::fs::write(&blocker, b"a file").unwrap();
    let o = kiln()
        .args(["pilot", "--quiet", "--config"])
        .arg(cfg())
        .arg("--artifacts-dir")
        .arg(blocker.join("runs"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("blocker/runs") && err.lines().count() == 1, "{err}");
}

/// The default base model through the shipped config (5 samples, to keep it minutes).
#[test]
fn real_model_pilot_with_the_shipped_config() {
    if std::env::var("KILN_SKIP_REAL_MODELS").is_ok_and(|v| v == "1") {
        eprintln!("KILN_SKIP_REAL_MODELS=1: skipping the real-model pilot");
        return;
    }
    let model = real_model("gemma3-270m");
    let dir = tempfile::tempdir().unwrap();
    let mut c: Command = kiln();
    let o = c
        .args(["pilot", "--quiet", "--json", "--count", "5", "--run-id", "real", "--config"])
        .arg(root().join("configs/pilot.toml"))
        .arg("--artifacts-dir")
        .arg(dir.path())
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    let run = dir.path().join("real");
    assert_gate_code(&o, &run);
    let m = json(&run.join("manifest.json"));
    assert_eq!(m["model"]["sha256"], "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818");
    assert_eq!(m["guard"]["verdict"], "base");
    assert_eq!(m["counts"]["planned"], 5);
    assert!(m["counts"]["instructions_parsed"].as_u64().unwrap() >= 3, "{}", m["counts"]);
}

/// A train config on a pilot run of the tiny model.
pub(crate) fn train_config(f: &Fixture, name: &str, dataset: &Path, epochs: usize) -> PathBuf {
    let text = format!(
        r#"run_id = "train"
artifacts_dir = {artifacts}
dataset = {dataset}
seed = 3
max_seq_len = 128
validation_fraction = 0.2

[lora]
r = 2
lora_dropout = 0.1

[optimizer]
lr = 5e-3

[training]
batch_size = 2
epochs = {epochs}
eval_every = 2
checkpoint_every = 1
"#,
        artifacts = q(&f.artifacts()),
        dataset = q(dataset)
    );
    let p = f.path(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn train_refuses_ungated_data_and_resumes_after_sigkill_to_the_same_adapter() {
    let f = Fixture::new();
    let cfg = f.config("pilot.toml", "count = 60\nrun_id = \"data\"\ncritic_filter = false", "").replace_qc_rules();
    let o = pilot(&cfg, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let data = f.artifacts().join("data");
    assert!(!lines(&data.join("pilot/shard-00000.jsonl")).is_empty(), "the tiny pilot accepted nothing");

    let tcfg = train_config(&f, "train.toml", &data, 12);
    let o = stage("train", &tcfg, &[], &[], EPOCH);
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    let run = f.artifacts().join("train");
    let m = json(&run.join("manifest.json"));
    assert_eq!(m["stage"], "train");
    assert_eq!(m["dataset"]["run_id"], "data");
    assert_eq!(m["training"]["options"]["lora"]["r"], 2);
    let adapter = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(json(&run.join("adapter/adapter_config.json"))["peft_type"] == "LORA");
    assert_eq!(&std::fs::read(run.join("loss.png")).unwrap()[1..4], b"PNG");
    let reference_run = f.path("uninterrupted");
    std::fs::rename(&run, &reference_run).unwrap();

    // SIGKILL once a few checkpoints are on disk, then the same command again.
    let mut child = kiln()
        .args(["train", "--quiet", "--config"])
        .arg(&tcfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        let steps = std::fs::read_to_string(run.join("train_log.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
        if steps >= 4 || start.elapsed().as_secs() > 120 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap_or(());
    child.wait().unwrap();
    let o = stage("train", &tcfg, &["--json"], &[], EPOCH);
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(out["report"]["resumed_from"].as_u64().unwrap() > 0, "the second run did not resume: {out}");
    assert_eq!(std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap(), adapter, "the resumed adapter differs");
    // A device this build lacks is an error that names it, before anything is written.
    let o = stage("train", &tcfg, &["--run-id", "gpu", "--device", "cuda:1"], &[], EPOCH);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("device cuda:1: this kiln is built without CUDA"), "{}", text(&o));
    assert!(!f.artifacts().join("gpu").join("manifest.json").exists());

    // A run whose gate failed, a dataset changed after its run, and a folder without a manifest.
    let failing = f.config("fail.toml", "run_id = \"failed\"", "[plugins.qc_rules.config]\nmax_empty_rate = 0.0\n");
    assert_eq!(pilot(&failing, &[], &[]).status.code(), Some(2));
    let cases = [
        (f.artifacts().join("failed"), "gate did not pass"),
        (f.path("nothing"), "manifest"),
    ];
    std::fs::create_dir_all(f.path("nothing")).unwrap();
    for (dataset, want) in cases {
        let c = train_config(&f, "bad.toml", &dataset, 1);
        let o = stage("train", &c, &["--run-id", "refused"], &[], EPOCH);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want) && err.contains(&dataset.display().to_string()), "{want}: {err}");
    }
    let accepted = data.join("pilot/shard-00000.jsonl");
    let mut bytes = std::fs::read(&accepted).unwrap();
    bytes.extend_from_slice(b"\n");
    std::fs::write(&accepted, bytes).unwrap();
    let o = stage("train", &tcfg, &["--run-id", "tampered"], &[], EPOCH);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pilot/shard-00000.jsonl") && err.contains("sha256"), "{err}");
}
