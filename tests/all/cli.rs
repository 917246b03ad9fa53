//! The `kiln plugin` commands, run as a user would.

use crate::common::*;

fn all_reference() -> Vec<std::path::PathBuf> {
    ["template-fewshot", "cleaner-basic", "qc-gates", "critic-ab"].iter().map(|n| reference(n)).collect()
}

#[test]
fn check_lists_the_four_reference_plugins() {
    let out = kiln().args(["plugin", "check"]).args(all_reference()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for (line, world) in lines.iter().zip(["prompt-template", "cleaner", "qc-rule", "critic"]) {
        assert!(line.starts_with(world) && line.contains("wit 0.1.0"), "{line}");
    }
}

#[test]
fn check_gives_one_line_errors_for_non_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let random = dir.path().join("random.bin");
    std::fs::write(&random, b"this is not wasm at all").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = kiln()
        .args(["plugin", "check"])
        .arg(&random)
        .arg(&core)
        .arg(test_plugin("not-kiln"))
        .arg(reference("qc-gates"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].contains("random.bin") && lines[0].contains("not a WebAssembly file"));
    assert!(lines[1].contains("core.wasm") && lines[1].contains("core WebAssembly module"));
    assert!(lines[2].contains("not-kiln.wasm") && lines[2].contains("not a kiln plugin"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn hash_matches_sha256() {
    let path = reference("critic-ab");
    let out = kiln().args(["plugin", "hash"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.split_whitespace().next().unwrap(), kiln::provenance::sha256_file(&path).unwrap());
}

#[test]
fn run_cleaner_on_the_shipped_samples() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q.jsonl");
    let out = kiln()
        .args(["plugin", "run", "--world", "cleaner"])
        .arg(reference("cleaner-basic"))
        .arg("--input")
        .arg(root().join("data/samples.jsonl"))
        .arg("--quarantine")
        .arg(&q)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let input = std::fs::read_to_string(root().join("data/samples.jsonl")).unwrap();
    assert_eq!(lines.len(), input.lines().count());
    let outcome = |id: &str| lines.iter().find(|l| l["id"] == id).unwrap().clone();
    assert_eq!(outcome("s-0001")["outcome"], "keep");
    assert_eq!(outcome("s-0003")["sample"]["response"], "Positive.");
    assert_eq!(outcome("s-0004")["sample"]["response"], "I apologise, but I will be arriving late.");
    assert_eq!(outcome("s-0005")["code"], "repetitive");
    assert_eq!(outcome("s-0006")["code"], "near-duplicate");
    assert_eq!(outcome("s-0009")["code"], "empty-response");
    assert!(!q.exists() || std::fs::read_to_string(&q).unwrap().is_empty());
}

#[test]
fn run_reports_quarantine_and_captures_plugin_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = samples(4)
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            if i == 2 {
                s.instruction = format!("TRIGGER {}", s.instruction);
            }
            serde_json::to_string(&s).unwrap()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = kiln()
        .args(["plugin", "run", "--world", "cleaner"])
        .arg(test_plugin("hostile"))
        .args(["--input"])
        .arg(&input)
        .args(["--plugin-config", r#"{"mode": "panic"}"#, "--batch-size", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(v.len(), 4);
    assert_eq!(v[2]["outcome"], "quarantined");
    assert!(v[2]["error"].as_str().unwrap().contains("panicked"));
    let q = std::fs::read_to_string(dir.path().join("quarantine.jsonl")).unwrap();
    assert_eq!(q.lines().count(), 1);

    // Plugin stdout/stderr go to kiln's log (stderr), never into the data on stdout.
    let out = kiln()
        .args(["plugin", "run", "--world", "cleaner"])
        .arg(test_plugin("hostile"))
        .args(["--input"])
        .arg(&input)
        .args(["--plugin-config", r#"{"mode": "print", "always": true}"#])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hello from the plugin"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hello from the plugin on stdout") && stderr.contains("hostile"), "{stderr}");
}

#[test]
fn run_refuses_bad_inputs_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"x\", \"instruction_type\": \"t\", \"instruction\": \"i\"}\nnot json\n").unwrap();
    let out = kiln().args(["plugin", "run", "--world", "cleaner"]).arg(reference("cleaner-basic")).arg("--input").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("bad.jsonl line 2"), "{e}");

    let out = kiln()
        .args(["plugin", "run", "--world", "critic"])
        .arg(reference("cleaner-basic"))
        .arg("--input")
        .arg(root().join("data/samples.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("is a cleaner plugin") && e.contains("not a critic plugin"), "{e}");

    let out = kiln()
        .args(["plugin", "run", "--world", "cleaner", "--sha256", &"a".repeat(64)])
        .arg(reference("cleaner-basic"))
        .arg("--input")
        .arg(root().join("data/samples.jsonl"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("hash mismatch") && e.contains(&"a".repeat(64)), "{e}");
}

#[test]
fn run_critic_and_qc_and_template_from_the_command_line() {
    let samples_path = root().join("data/samples.jsonl");
    let out = kiln().args(["plugin", "run", "--world", "critic"]).arg(reference("critic-ab")).arg("--input").arg(&samples_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reqs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // 12 samples x 2 aspects x 2 letter orders.
    assert_eq!(reqs.len(), 48);
    let dir = tempfile::tempdir().unwrap();
    let scores = dir.path().join("scores.jsonl");
    let text: String = reqs
        .iter()
        .map(|r| format!("{{\"sample_id\": {}, \"aspect\": {}, \"logprob_a\": -0.5, \"logprob_b\": -1.5}}\n", r["sample_id"], r["aspect"]))
        .collect();
    std::fs::write(&scores, text).unwrap();
    let out = kiln()
        .args(["plugin", "run", "--world", "critic"])
        .arg(reference("critic-ab"))
        .arg("--input")
        .arg(&samples_path)
        .arg("--scores")
        .arg(&scores)
        .output()
        .unwrap();
    let v: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(v.len(), 24);
    assert!(v.iter().all(|j| j["verdict"]["pass"] == true && j["verdict"]["margin"] == 1.0));

    let out = kiln().args(["plugin", "run", "--world", "qc-rule"]).arg(reference("qc-gates")).arg("--input").arg(&samples_path).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["metrics"].as_array().unwrap().iter().any(|m| m["name"] == "runaway_rate"));
    // The exit code is the report's verdict: 0 passed, 2 failed (with the reasons on stderr).
    assert_eq!(out.status.code(), Some(if report["pass"] == true { 0 } else { 2 }), "{}", crate::common::text(&out));
    let strict = kiln()
        .args(["plugin", "run", "--world", "qc-rule", "--plugin-config", r#"{"max_runaway_rate": 0.0, "max_empty_rate": 0.0, "max_token_limit_rate": 0.0, "max_duplicate_rate": 0.0}"#])
        .arg(reference("qc-gates"))
        .arg("--input")
        .arg(&samples_path)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&strict.stdout).unwrap();
    let said = crate::common::text(&strict);
    assert_eq!(r["pass"], false, "{said}");
    assert_eq!(strict.status.code(), Some(2), "{said}");
    assert!(said.contains("QC report FAILED"), "{said}");

    let out = kiln()
        .args(["plugin", "run", "--world", "prompt-template", "--call", "response-prompts"])
        .arg(reference("template-fewshot"))
        .arg("--input")
        .arg(&samples_path)
        .output()
        .unwrap();
    // Samples are not response requests: the error names the file and line.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("samples.jsonl line 1"));
}

#[test]
fn the_cpu_build_says_how_to_get_a_cuda_one() {
    let o = kiln().args(["model", "device-check", "--rows", "1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no CUDA device 0") && err.contains("scripts/build-cuda.sh"), "{err}");
}
