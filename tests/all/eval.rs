//! `kiln eval` on a tiny random model written by the test: the three report files, statistics
//! that agree with `kiln stats paired` on the same outcomes, the gate as the exit code, resume
//! after a kill with the same bytes, and one-line errors for bad test sets.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;
use crate::tiny::{self, Tiny};

const EPOCH: &str = "1700000000";

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        tiny::write(&Tiny::llama(), &dir.path().join("tiny.gguf"));
        let mut lines = String::new();
        let instructions = [
            ("open-qa", "What is the capital of France?"),
            ("open-qa", "How many legs does a spider have?"),
            ("open-qa", "Which planet is closest to the sun?"),
            ("open-qa", "What colour is the sky on a clear day?"),
            ("open-qa", "Who painted the Mona Lisa?"),
            ("open-qa", "What is two plus two?"),
            ("rewriting", "Rewrite politely: give me that."),
            ("rewriting", "Make shorter: it is the case that we went."),
            ("rewriting", "Rewrite in the past tense: she runs."),
            ("rewriting", "Turn into a question: the shop opens at nine."),
            ("rewriting", "Rewrite formally: hey, what's up?"),
            ("rewriting", "Rewrite for a child: the sun is a star."),
        ];
        for (i, (t, x)) in instructions.iter().enumerate() {
            lines.push_str(&serde_json::json!({"id": format!("{t}-{i}"), "instruction_type": t, "instruction": x}).to_string());
            lines.push('\n');
        }
        std::fs::write(dir.path().join("test.jsonl"), lines).unwrap();
        Fixture { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// An eval config on the tiny model; the tuned arm's template differs in its preamble and
    /// budget. `extra` goes at the top level.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let text = format!(
            r#"run_id = "tiny-eval"
artifacts_dir = {artifacts}
seed = 3
test_set = {test}
batch_size = 4
chunk_size = 2
alpha = 0.05
{extra}

[model]
path = {model}

[base.template]
path = {template}

[base.template.config]
response_preamble = "Answer:"
response_max_tokens = 6

[tuned.template]
path = {template}

[tuned.template.config]
response_preamble = "Reply well:"
response_max_tokens = 3

[critic]
path = {critic}

[critic.config]
aspects = ["response"]
response_prompt = "Task: {{instruction}}\nResponse: {{response}}\n{{choices}} Answer:"
"#,
            artifacts = q(&self.path("artifacts")),
            test = q(&self.path("test.jsonl")),
            model = q(&self.path("tiny.gguf")),
            template = q(&reference("template-fewshot")),
            critic = q(&reference("critic-ab")),
        );
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn eval(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    stage("eval", config, args, env, EPOCH)
}

#[test]
fn eval_writes_its_reports_and_the_statistics_agree_with_kiln_stats() {
    let f = Fixture::new();
    let cfg = f.config("eval.toml", "");
    let o = eval(&cfg, &[], &[]);
    let run = f.path("artifacts/tiny-eval");
    let out = json(&run.join("eval.json"));
    let pass = out["gate"]["pass"].as_bool().unwrap();
    assert_eq!(o.status.code(), Some(if pass { 0 } else { 2 }), "{}", text(&o));

    // Every item has both answers, judged.
    let items = out["items"].as_array().unwrap();
    assert_eq!(items.len(), 12);
    for it in items {
        for arm in ["base", "tuned"] {
            let a = &it[arm];
            assert!(a["problem"].is_null(), "{it}");
            assert_eq!(a["verdicts"].as_array().unwrap().len(), 1, "{it}");
            let v = &a["verdicts"][0];
            assert_eq!(v["aspect"], "response");
            assert_eq!(a["pass"], v["pass"]);
            assert!(v["reason"].as_str().unwrap().contains("both letter orders"), "{v}");
        }
        // The tuned arm's budget is 3 tokens.
        assert!(it["tuned"]["completion_tokens"].as_u64().unwrap() <= 3, "{it}");
    }

    // The same outcomes through `kiln stats paired` give the same figures.
    let mut groups: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    for it in items {
        let t = it["instruction_type"].as_str().unwrap().to_string();
        if groups.last().map(|g| g.0 != t).unwrap_or(true) {
            groups.push((t, vec![], vec![]));
        }
        let g = groups.last_mut().unwrap();
        g.1.push(it["base"]["pass"].as_bool().unwrap() as u8);
        g.2.push(it["tuned"]["pass"].as_bool().unwrap() as u8);
    }
    let input = serde_json::json!({"groups": groups.iter().map(|(n, b, t)| serde_json::json!({"name": n, "base": b, "tuned": t})).collect::<Vec<_>>()});
    let input_path = f.path("paired.json");
    std::fs::write(&input_path, input.to_string()).unwrap();
    let s = kiln().args(["stats", "paired"]).arg(&input_path).output().unwrap();
    assert!(s.status.success(), "{}", text(&s));
    let stats: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(stats["groups"], out["statistics"]["groups"]);
    assert_eq!(stats["overall"], out["statistics"]["overall"]);
    // The gate follows from the overall figures.
    let o_ = &stats["overall"];
    let expect = o_["mcnemar_p"].as_f64().unwrap() < 0.05 && o_["tuned_pass"].as_u64() > o_["base_pass"].as_u64();
    assert_eq!(pass, expect);

    // report.md: a row per type and overall, the gate, disagreements per type.
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    for needle in ["| type ", "| open-qa ", "| rewriting ", "| overall ", "McNemar p", "BH p", "Cohen's h", "Gate:", "### open-qa", "pass_rates.png"] {
        assert!(md.contains(needle), "{needle} not in report.md:\n{md}");
    }

    // The chart is a PNG of the promised size with both arms' colours.
    let bytes = std::fs::read(run.join("pass_rates.png")).unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes)).read_info().unwrap();
    let mut img = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut img).unwrap();
    assert_eq!(info.height, 520);
    assert!(info.width >= 640);

    // The manifest: both arms, the critic, the test set's hash, every output file's hash.
    let m = json(&run.join("manifest.json"));
    assert_eq!(m["stage"], "eval");
    assert_eq!(m["arms"].as_array().unwrap().len(), 2);
    assert_eq!(m["arms"][0]["name"], "base");
    assert_eq!(m["arms"][1]["template"]["name"], "template-fewshot");
    let test_sha = kiln::provenance::sha256_hex(&std::fs::read(f.path("test.jsonl")).unwrap());
    assert_eq!(m["test_set"]["sha256"], test_sha.as_str());
    assert_eq!(m["test_set"]["records"], 12);
    assert!(m["plugins"].as_array().unwrap().iter().any(|p| p["role"] == "critic"));
    for file in ["eval.json", "report.md", "pass_rates.png", "critic/shard-00000.jsonl"] {
        let sha = kiln::provenance::sha256_hex(&std::fs::read(run.join(file)).unwrap());
        assert_eq!(m["files"][file], sha.as_str(), "{file}");
    }
}

#[test]
fn a_killed_eval_resumes_to_the_same_bytes() {
    let f = Fixture::new();
    let whole = f.config("whole.toml", "");
    let o = eval(&whole, &[], &[]);
    assert!(matches!(o.status.code(), Some(0 | 2)), "{}", text(&o));
    let a = f.path("artifacts/tiny-eval");

    let killed = f.config("killed.toml", "");
    let other = f.path("other");
    let other_arg = other.to_str().unwrap();
    let o = eval(&killed, &["--artifacts-dir", other_arg], &[("KILN_DEBUG_ABORT_AFTER_RAW", "5")]);
    assert!(!o.status.success() && o.status.code() != Some(2), "{}", text(&o));
    let b = other.join("tiny-eval");
    assert!(!b.join("manifest.json").exists());
    let o = eval(&killed, &["--artifacts-dir", other_arg, "--json"], &[]);
    assert!(matches!(o.status.code(), Some(0 | 2)), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // At least the 5 answers written before the kill come back (chunks of 2), not all 24.
    let resumed = v["resumed"][0].as_u64().unwrap() + v["resumed"][1].as_u64().unwrap();
    assert!((5..24).contains(&resumed), "{v}");
    for file in ["eval.json", "report.md", "pass_rates.png", "critic/shard-00000.jsonl"] {
        assert!(std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(), "{file} differs after resume");
    }
}

#[test]
fn bad_test_sets_and_configs_get_one_line_errors() {
    let f = Fixture::new();
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("dup.jsonl", "{\"id\": \"a\", \"instruction_type\": \"t\", \"instruction\": \"x y\"}\n{\"id\": \"a\", \"instruction_type\": \"t\", \"instruction\": \"z\"}\n", vec!["line 2", "\"a\"", "twice"]),
        ("empty.jsonl", "\n", vec!["no test items"]),
        ("bad.jsonl", "{\"instruction\": \"x\"}\n", vec!["line 1", "instruction_type"]),
        ("blank.jsonl", "{\"instruction_type\": \"t\", \"instruction\": \"  \"}\n", vec!["line 1", "empty instruction"]),
    ];
    let cfg = f.config("eval.toml", "");
    for (name, body, needles) in cases {
        let p = f.path(name);
        std::fs::write(&p, body).unwrap();
        let o = eval(&cfg, &["--test-set", p.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(name), "{e}");
        for n in needles {
            assert!(e.contains(n), "{n} not in: {e}");
        }
    }
    // Config values.
    let o = eval(&f.config("alpha.toml", "level = 1.5"), &[], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("level = 1.5"), "{}", text(&o));
    let o = eval(&f.config("unknown.toml", "adapter = \"x\""), &[], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("adapter"), "{}", text(&o));
    // The critic must be a critic.
    let wrong = f.config("wrong.toml", "");
    let t = std::fs::read_to_string(&wrong).unwrap();
    let critic_line = format!("path = {}", q(&reference("critic-ab")));
    std::fs::write(&wrong, t.replace(&critic_line, &format!("path = {}", q(&reference("cleaner-basic"))))).unwrap();
    let o = eval(&wrong, &[], &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("critic") && e.contains("cleaner"), "{e}");
    // A missing model file names the field.
    let o = eval(&cfg, &["--model", f.path("nope.gguf").to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.gguf"), "{}", text(&o));
}
