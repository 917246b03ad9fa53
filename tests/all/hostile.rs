//! Hostile plugins: each is stopped with an error naming it, the host survives and goes on with
//! the next call, and no record is lost.

use kiln::plugin::*;
use serde_json::json;

use crate::common::*;

fn hostile(mode: &str, limits: Limits) -> Plugin {
    let mut s = spec(test_plugin("hostile"), json!({ "mode": mode }));
    s.limits = limits;
    runtime().load(&s).unwrap()
}

fn small() -> Limits {
    Limits { fuel: 200_000_000, memory_bytes: 64 << 20, max_output_bytes: 16 << 20, ..Limits::default() }
}

/// A batch of 8 where sample 5 triggers the misbehaviour: under a supervisor, exactly that
/// sample is quarantined with the expected failure, the others come back, and the worker
/// keeps serving calls afterwards.
fn isolates(mode: &str, limits: Limits, kind: FailureKind, detail: &str) {
    let p = hostile(mode, limits);
    let mut w = p.worker(0);
    let mut batch = samples(8);
    batch[5].instruction = format!("TRIGGER {}", batch[5].instruction);
    let mut q = Quarantine::in_memory();
    let out = Supervisor::new(&mut w, &mut q).per_record(&batch, &mut |w, b| w.clean(b)).unwrap();
    assert_eq!(out.len(), 8);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.is_none(), i == 5, "{mode}: record {i}: {o:?}");
    }
    let e = &q.entries()[0];
    assert_eq!(q.entries().len(), 1);
    assert_eq!(e.record_id, batch[5].id);
    assert_eq!(e.error.kind, kind, "{mode}: {}", e.message);
    assert!(e.message.contains("plugin \"hostile\"") && e.message.contains(&p.sha256[..12]), "{}", e.message);
    assert!(e.message.contains(&batch[5].id) && e.message.contains("`clean`"), "{}", e.message);
    assert!(e.message.contains(detail), "{mode}: {}", e.message);
    assert_eq!(e.record["instruction"], batch[5].instruction.as_str());
    // The host goes on: the next call on the same worker works.
    let again = w.clean(&samples(3)).unwrap();
    assert_eq!(again.len(), 3);
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    isolates("loop", small(), FailureKind::OutOfFuel, "200000000 fuel");
}

#[test]
fn unbounded_memory_hits_the_cap() {
    isolates("memory", small(), FailureKind::OutOfMemory, "cap of 67108864 bytes");
}

#[test]
fn deep_recursion_overflows_the_stack() {
    isolates("stack", small(), FailureKind::StackOverflow, "stack overflow");
}

#[test]
fn panic_message_is_captured_from_stderr() {
    isolates("panic", small(), FailureKind::Panic, "panics on purpose on s-00005");
}

#[test]
fn huge_output_is_refused() {
    let limits = Limits { fuel: 20_000_000_000, memory_bytes: 1 << 30, max_output_bytes: 16 << 20, ..Limits::default() };
    isolates("output", limits, FailureKind::OutputTooLarge, "over the cap of 16777216 bytes");
}

#[test]
fn wrong_result_count_breaks_the_contract() {
    isolates("wrong-count", small(), FailureKind::Contract, "returned 0 results for 1 inputs");
}

/// A plugin that asked for more memory than its cap in an earlier call and went on without it
/// is reported for what ends a later call (a panic, the fuel), not as out of memory.
#[test]
fn a_refused_growth_in_an_earlier_call_does_not_explain_a_later_failure() {
    let trigger = || {
        let mut batch = samples(1);
        batch[0].instruction = format!("TRIGGER {}", batch[0].instruction);
        batch
    };
    for (mode, kind) in [("reserve", FailureKind::Panic), ("reserve-loop", FailureKind::OutOfFuel)] {
        let p = hostile(mode, small());
        let mut w = p.worker(0);
        // Every sample asks for 1 GiB and goes on without it.
        assert_eq!(w.clean(&samples(3)).unwrap().len(), 3);
        let PluginError::Call(e) = w.clean(&trigger()).unwrap_err() else { panic!("{mode}: not a call error") };
        assert_eq!(e.kind, kind, "{mode}: {}", e.detail);
    }
}

#[test]
fn a_result_text_outside_the_plugins_memory_is_refused() {
    isolates("bad-pointer", small(), FailureKind::Trap, "string pointer/length out of bounds of memory");
}

#[test]
fn a_result_text_that_is_not_utf8_is_refused() {
    isolates("bad-utf8", small(), FailureKind::Trap, "invalid utf-8");
}

#[test]
fn plugin_error_value_is_isolated_too() {
    isolates("refuse", small(), FailureKind::PluginError, "refusing s-00005");
}

fn probe(mode: &str, data: Option<&std::path::Path>, seed: u64) -> Sample {
    let mut s = spec(test_plugin("hostile"), json!({ "mode": mode, "always": true }));
    s.data_dir = data.map(|d| d.to_path_buf());
    let p = runtime().load(&s).unwrap();
    match p.worker(seed).clean(&samples(1)).unwrap().remove(0) {
        CleanOutcome::Keep { sample } => sample,
        o => panic!("{o:?}"),
    }
}

#[test]
fn filesystem_is_closed_except_the_granted_folder_read_only() {
    let s = probe("fs", None, 0);
    for key in ["fs./etc/passwd", "fs./data/../../etc/passwd", "fs./data/allowed.txt"] {
        assert!(s.metadata[key].starts_with("denied"), "{key}: {}", s.metadata[key]);
    }
    assert!(s.metadata["fs.../"].starts_with("Err"), "{}", s.metadata["fs.../"]);

    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("allowed.txt"), "granted content").unwrap();
    let s = probe("fs", Some(data.path()), 0);
    assert_eq!(s.metadata["fs./data/allowed.txt"], "read 15 bytes: granted content");
    assert!(s.metadata["fs./etc/passwd"].starts_with("denied"));
    assert!(s.metadata["fs./data/../../etc/passwd"].starts_with("denied"), "{}", s.metadata["fs./data/../../etc/passwd"]);
    assert!(s.metadata["fs.write"].starts_with("Err"), "{}", s.metadata["fs.write"]);
    assert!(!data.path().join("written.txt").exists());
}

#[test]
fn environment_and_arguments_are_empty() {
    std::env::var("PATH").expect("the host itself has PATH");
    let s = probe("env", None, 0);
    assert_eq!(s.metadata["env.count"], "0");
    assert_eq!(s.metadata["env.HOME"], "None");
    assert_eq!(s.metadata["env.args"], "0");
}

#[test]
fn clock_is_virtual_randomness_seeded_network_closed() {
    let a = probe("probe", None, 7);
    let b = probe("probe", None, 7);
    let c = probe("probe", None, 8);
    assert_eq!(a.metadata["clock.wall"], "Ok(946684800)");
    assert_eq!(a.metadata["random.hash"], b.metadata["random.hash"]);
    assert_ne!(a.metadata["random.hash"], c.metadata["random.hash"]);
    assert!(a.metadata["net"].starts_with("Err"), "{}", a.metadata["net"]);
}

#[test]
fn failure_budget_stops_the_run_cleanly_and_keeps_the_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(test_plugin("hostile"), json!({ "mode": "panic", "always": true }));
    s.limits.max_failures = 2;
    let p = runtime().load(&s).unwrap();
    let mut w = p.worker(0);
    let mut q = Quarantine::at(kiln::sandbox::RunDir::create(dir.path()).unwrap(), "quarantine/hostile.jsonl").unwrap();
    let err = Supervisor::new(&mut w, &mut q).per_record(&samples(10), &mut |w, b| w.clean(b)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"hostile\"") && msg.contains("failed 3 times") && msg.contains("budget of 2"), "{msg}");
    let text = std::fs::read_to_string(dir.path().join("quarantine/hostile.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["record_id"], "s-00000");
    assert_eq!(lines[0]["error"]["kind"], "panic");
    assert_eq!(lines[0]["record"]["id"], "s-00000");
    // A second supervisor over the same file appends, never loses earlier entries.
    let mut q2 = Quarantine::at(kiln::sandbox::RunDir::create(dir.path()).unwrap(), "quarantine/hostile.jsonl").unwrap();
    let _ = Supervisor::new(&mut w, &mut q2).per_record(&samples(1), &mut |w, b| w.clean(b));
    let text = std::fs::read_to_string(dir.path().join("quarantine/hostile.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 4);
}

#[test]
fn a_plugin_that_logs_on_every_call_keeps_running_on_a_small_log_budget() {
    // Each call prints about 60 bytes to each stream; 400 calls print far more than the 4 KiB
    // budget, which holds per call: the worker renews the instance before writes would fail.
    let mut s = spec(test_plugin("hostile"), json!({ "mode": "print", "always": true }));
    s.limits = Limits { max_log_bytes: 4096, ..small() };
    let p = runtime().load(&s).unwrap();
    let mut w = p.worker(0);
    for i in 0..400 {
        let out = w.clean(&samples(1)).unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(out.len(), 1);
    }
    assert!(w.instantiations() > 5, "{} instances", w.instantiations());
}
