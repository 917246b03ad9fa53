//! The Python and JavaScript reference plugins (componentize-py and componentize-js builds),
//! run through the host exactly like the Rust ones: same answers as the Rust reference plugins
//! they port, same limits, pins and errors, and in a real pilot and replay.

use std::path::PathBuf;

use kiln::plugin::*;
use serde_json::json;

use crate::common::*;
use crate::pilot::{lines, pilot, Fixture};

fn shipped_samples() -> Vec<Sample> {
    let text = std::fs::read_to_string(root().join("data/samples.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The shipped samples, a generated set, and copies that make near-duplicates, leaked markers,
/// repetitions, odd whitespace and non-ASCII text.
fn workload() -> Vec<Sample> {
    let mut all = shipped_samples();
    all.extend(samples(60));
    let n = all.len();
    for i in 0..n {
        let mut s = all[i].clone();
        s.id = format!("{}-v", s.id);
        match i % 6 {
            0 => s.instruction = format!("  {}\t\u{200B}", s.instruction),
            1 => s.response = format!("{}\n\nResponse: and more", s.response),
            2 => s.response = "again and again ".repeat(12),
            3 => s.instruction = format!("Écris: {} — ça va?", s.instruction),
            4 => s.response = format!("{}\r\n\r\n\r\n  end  ", s.response),
            _ => {}
        }
        all.push(s);
    }
    all
}

/// Outcomes as JSON with the plugin's name in its notes replaced by `as_name`.
fn normalised(out: &[CleanOutcome], name: &str, as_name: &str) -> Vec<String> {
    out.iter().map(|o| serde_json::to_string(o).unwrap().replace(name, as_name)).collect()
}

fn cleaner_config() -> serde_json::Value {
    json!({ "reference_file": "/data/seeds.jsonl", "near_duplicate_threshold": 0.6, "max_repetition": 0.4 })
}

fn load(path: PathBuf, config: serde_json::Value, data: bool) -> Plugin {
    let mut s = spec(path, config);
    if data {
        s.data_dir = Some(root().join("data"));
    }
    runtime().load(&s).unwrap()
}

#[test]
fn python_cleaner_decides_as_cleaner_basic() {
    let py = load(reference_src("python/cleaner-py"), cleaner_config(), true);
    assert_eq!((py.world, py.name.as_str(), py.wit_version.as_str()), (World::Cleaner, "cleaner-py", "0.1.0"));
    let rust = load(reference("cleaner-basic"), cleaner_config(), true);
    let data = workload();
    let (a, b) = (py.worker(0).clean(&data).unwrap(), rust.worker(0).clean(&data).unwrap());
    assert_eq!(normalised(&a, "cleaner-py", "X"), normalised(&b, "cleaner-basic", "X"));
    let kept = a.iter().filter(|o| matches!(o, CleanOutcome::Keep { .. })).count();
    assert!(kept > 10 && kept < data.len(), "{kept} of {} kept", data.len());
}

#[test]
fn javascript_cleaner_decides_as_cleaner_basic() {
    let config = json!({ "near_duplicate_threshold": 0.6, "max_repetition": 0.4, "reference_instructions": ["What is the capital city of Australia?"] });
    let js = load(reference_src("js/cleaner-js"), config.clone(), false);
    assert_eq!((js.world, js.name.as_str()), (World::Cleaner, "cleaner-js"));
    let rust = load(reference("cleaner-basic"), config, false);
    let data = workload();
    let (a, b) = (js.worker(0).clean(&data).unwrap(), rust.worker(0).clean(&data).unwrap());
    assert_eq!(normalised(&a, "cleaner-js", "X"), normalised(&b, "cleaner-basic", "X"));
}

#[test]
fn python_qc_rule_reports_as_qc_gates() {
    let config = json!({ "max_runaway_rate": 0.2 });
    let py = load(reference_src("python/qc-gates-py"), config.clone(), false);
    let rust = load(reference("qc-gates"), config, false);
    let mut data = workload();
    for (i, s) in data.iter_mut().enumerate() {
        if i % 7 == 0 {
            s.response_generation.finish_reason = FinishReason::Length;
        }
    }
    for set in [&data[..], &data[..5], &[]] {
        let (a, b) = (py.worker(0).evaluate(set).unwrap(), rust.worker(0).evaluate(set).unwrap());
        assert_eq!(a, b, "{} samples", set.len());
    }
    // Bad configuration is refused with the key named, as qc-gates does.
    let mut s = spec(reference_src("python/qc-gates-py"), json!({ "max_runaway_rate": 2 }));
    s.limits.fuel = 20_000_000_000;
    let Err(err) = runtime().load(&s).and_then(|p| p.worker(0).ready()) else { panic!("a bad config was accepted") };
    let err = err.to_string();
    assert!(err.contains("max_runaway_rate") && err.contains("qc-gates-py"), "{err}");
}

fn hostile_py(mode: &str, limits: Limits) -> Plugin {
    let path = {
        static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        BUILT
            .get_or_init(|| {
                let dist = root().join("target/test-plugins");
                kiln::plugin::source::build_plugin(&root().join("tests/plugins/python/hostile-py"), &dist).unwrap().path
            })
            .clone()
    };
    let mut s = spec(path, json!({ "mode": mode }));
    s.limits = limits;
    runtime().load(&s).unwrap()
}

/// Sample 2 of 5 triggers the misbehaviour: it is quarantined with an error naming the plugin,
/// its sha256, the call and the record; the others come back; the worker serves the next call.
fn isolated(mode: &str, limits: Limits, kinds: &[FailureKind]) -> String {
    let p = hostile_py(mode, limits);
    let mut w = p.worker(0);
    let mut batch = samples(5);
    batch[2].instruction = format!("TRIGGER {}", batch[2].instruction);
    let mut q = Quarantine::in_memory();
    let out = Supervisor::new(&mut w, &mut q).per_record(&batch, &mut |w, b| w.clean(b)).unwrap();
    let kept: Vec<bool> = out.iter().map(|o| o.is_some()).collect();
    assert_eq!(kept, [true, true, false, true, true], "{mode}");
    let e = &q.entries()[0];
    assert_eq!((q.entries().len(), e.record_id.as_str()), (1, batch[2].id.as_str()), "{mode}: {}", e.message);
    assert!(kinds.contains(&e.error.kind), "{mode}: {:?}: {}", e.error.kind, e.message);
    assert!(e.message.contains("plugin \"hostile-py\"") && e.message.contains(&p.sha256[..12]) && e.message.contains("`clean`"), "{}", e.message);
    assert_eq!(w.clean(&samples(3)).unwrap().len(), 3, "{mode}: the worker goes on");
    e.message.clone()
}

#[test]
fn python_plugins_run_under_the_same_limits_and_errors() {
    let small = Limits { fuel: 2_000_000_000, memory_bytes: 96 << 20, ..Limits::default() };
    let m = isolated("loop", small.clone(), &[FailureKind::OutOfFuel]);
    assert!(m.contains("2000000000 fuel"), "{m}");
    isolated("memory", Limits { fuel: 200_000_000_000, ..small.clone() }, &[FailureKind::OutOfMemory]);
    let m = isolated("raise", small.clone(), &[FailureKind::Panic, FailureKind::Trap]);
    assert!(m.contains("hostile-py cannot stand"), "the Python traceback reaches the message: {m}");
    let m = isolated("error", small.clone(), &[FailureKind::PluginError]);
    assert!(m.contains("[refused]"), "{m}");

    // No file outside a granted folder, no environment.
    let p = hostile_py("escape", small);
    let mut batch = samples(1);
    batch[0].instruction = "TRIGGER".into();
    let out = p.worker(0).clean(&batch).unwrap();
    let CleanOutcome::Keep { sample } = &out[0] else { panic!("{out:?}") };
    assert!(!sample.response.contains("/etc/passwd: 1") && sample.response.contains("env: 0"), "{}", sample.response);
    assert!(sample.response.contains("/etc/passwd: FileNotFoundError") || sample.response.contains("/etc/passwd: PermissionError"), "{}", sample.response);

    // The sha256 pin is checked before anything runs.
    let mut s = spec(reference_src("python/cleaner-py"), json!({}));
    s.sha256 = Some("0".repeat(64));
    let Err(err) = runtime().load(&s) else { panic!("a wrong pin loaded") };
    let err = err.to_string();
    assert!(err.contains(&"0".repeat(64)) && err.contains(&kiln::provenance::sha256_file(&s.path).unwrap()), "{err}");
}

#[test]
fn python_and_javascript_cleaners_run_in_a_pilot_and_in_replay() {
    let f = Fixture::new();
    let py = reference_src("python/cleaner-py");
    let js = reference_src("js/cleaner-js");
    let cfg = f.config("pilot.toml", "", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let basic = format!("{:?}", reference("cleaner-basic").display().to_string());
    assert!(text.contains(&basic));
    // cleaner-py takes cleaner-basic's place (and its config); cleaner-js runs after it.
    let text = text.replace(&basic, &format!("{:?}", py.display().to_string()))
        + &format!("\n[[plugins.cleaners]]\npath = {:?}\n\n[plugins.cleaners.config]\nmin_instruction_chars = 1\nmin_response_chars = 1\nmax_repetition = 1.0\n", js.display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let run = f.artifacts().join("tiny");
    let o = pilot(&cfg, &[], &[]);
    let code = o.status.code();
    assert!(code == Some(0) || code == Some(2), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    let names = manifest.to_string();
    assert!(names.contains("cleaner-py") && names.contains("cleaner-js") && !names.contains("cleaner-basic"), "{names}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("qc_report.json")).unwrap()).unwrap();
    assert!(report["counts"]["cleaned"].as_u64().unwrap() > 0, "{report}");
    let drops = run.join("pilot/dropped/shard-00000.jsonl");
    if drops.exists() {
        for d in lines(&drops) {
            let by = d.to_string();
            assert!(!by.contains("cleaner-basic"), "{by}");
        }
    }

    // A replay with the same config gives the same numbers from the same raw pool.
    let o = kiln().args(["replay", "--quiet", "--json"]).arg(&run).arg("--config").arg(&cfg).output().unwrap();
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    let rows = out["delta"]["rows"].as_array().unwrap();
    let cleaned = rows.iter().find(|r| r["metric"] == "cleaned").unwrap();
    assert_eq!(cleaned["before"], cleaned["after"], "{rows:?}");
    assert_eq!(cleaned["before"].as_f64(), report["counts"]["cleaned"].as_f64());
}
