//! Loading: hash pins, worlds, WIT versions, non-components, the precompile cache.

use kiln::plugin::*;
use serde_json::json;

use crate::common::*;

#[test]
fn hash_pin_mismatch_names_both_hashes() {
    let path = reference("cleaner-basic");
    let real = kiln::provenance::sha256_file(&path).unwrap();
    let mut s = PluginSpec::new(&path);
    s.sha256 = Some("0".repeat(64));
    let err = runtime().load(&s).err().unwrap().to_string();
    assert!(err.contains(&real) && err.contains(&"0".repeat(64)) && err.contains("hash mismatch"), "{err}");
    s.sha256 = Some(real.to_uppercase());
    assert!(runtime().load(&s).is_ok());
}

#[test]
fn not_a_plugin_is_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let random = dir.path().join("random.wasm");
    std::fs::write(&random, (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    let err = runtime().load(&PluginSpec::new(&random)).err().unwrap().to_string();
    assert!(err.contains("random.wasm") && err.contains("not a WebAssembly file"), "{err}");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = runtime().load(&PluginSpec::new(&core)).err().unwrap().to_string();
    assert!(err.contains("core WebAssembly module, not a component"), "{err}");

    let err = runtime().load(&PluginSpec::new(test_plugin("not-kiln"))).err().unwrap().to_string();
    assert!(err.contains("not a kiln plugin") && err.contains("wasi:cli/run"), "{err}");

    let err = runtime().load(&PluginSpec::new(test_plugin("future-wit"))).err().unwrap().to_string();
    assert!(err.contains("kiln:stages@0.2.0") && err.contains("kiln:stages@0.1.0"), "{err}");

    let missing = dir.path().join("missing.wasm");
    let err = runtime().load(&PluginSpec::new(&missing)).err().unwrap().to_string();
    assert!(err.contains("missing.wasm"), "{err}");
}

#[test]
fn wrong_world_call_is_refused() {
    let p = runtime().load(&spec(reference("qc-gates"), json!({}))).unwrap();
    let err = p.worker(0).clean(&samples(1)).unwrap_err().to_string();
    assert!(err.contains("qc-rule") && err.contains("cleaner"), "{err}");
}

#[test]
fn precompiled_cache_is_used_and_survives_corruption() {
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
    let path = reference("critic-ab");
    let sha = kiln::provenance::sha256_file(&path).unwrap();
    rt.load(&PluginSpec::new(&path)).unwrap();
    let files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&sha) && name.ends_with(".cwasm"), "{name}");
    // Loading again uses the cache (the file is not rewritten).
    let before = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    rt.load(&PluginSpec::new(&path)).unwrap();
    assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), before);
    // A corrupted entry is recompiled, not trusted.
    std::fs::write(&files[0], b"garbage").unwrap();
    let p = rt.load(&PluginSpec::new(&path)).unwrap();
    assert_eq!(p.name, "critic-ab");
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 1000);
}

#[test]
fn config_rejection_names_the_plugin() {
    let err = runtime().load(&spec(test_plugin("hostile"), json!({"mode": "reject-config"}))).err().unwrap().to_string();
    assert!(err.contains("\"hostile\"") && err.contains("rejected its configuration") && err.contains("refuses"), "{err}");
}

/// Every field of kiln's samples reaches the guest as kiln holds it: empty and non-ASCII texts,
/// stop sequences present or not, every finish reason, verdicts and metadata present or not
/// (the hostile plugin's "echo" mode returns what it received as JSON).
#[test]
fn samples_reach_the_guest_field_for_field() {
    let p = runtime().load(&spec(test_plugin("hostile"), json!({ "mode": "echo", "always": true }))).unwrap();
    let mut batch = samples(5);
    batch[0].response = String::new();
    batch[0].instruction_generation.stop_sequence = Some(String::new());
    batch[1].instruction = "Übersetze: «naïve café» — 日本語 👩‍💻".into();
    batch[1].response_generation = Generation { finish_reason: FinishReason::Length, stop_sequence: None, prompt_tokens: 7, completion_tokens: 256, max_tokens: 256 };
    batch[2].instruction_generation = Generation { finish_reason: FinishReason::Eos, stop_sequence: Some("###".into()), prompt_tokens: u32::MAX, completion_tokens: 0, max_tokens: 1 };
    batch[2].verdicts = vec![
        Verdict { critic: "critic-ab".into(), aspect: "instruction".into(), pass: true, margin: 1.25, reason: "A over B".into() },
        Verdict { critic: "critic-ab".into(), aspect: "response".into(), pass: false, margin: -0.5, reason: String::new() },
    ];
    batch[3].metadata.insert("source".into(), "seed 3".into());
    batch[3].metadata.insert(String::new(), "ключ".into());
    batch[4].id = String::new();
    batch[4].instruction_type = "brainstorming".into();
    let out = p.worker(0).clean(&batch).unwrap();
    for (s, o) in batch.iter().zip(&out) {
        let CleanOutcome::Keep { sample } = o else { panic!("{o:?}") };
        let reason = |r: FinishReason| match r {
            FinishReason::Stop => "stop",
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::None => "none",
        };
        let generation = |g: &Generation| json!([reason(g.finish_reason), g.stop_sequence, g.prompt_tokens, g.completion_tokens, g.max_tokens]);
        let want = json!({
            "id": s.id,
            "instruction_type": s.instruction_type,
            "instruction": s.instruction,
            "response": s.response,
            "generations": [generation(&s.instruction_generation), generation(&s.response_generation)],
            "verdicts": s.verdicts.iter().map(|v| json!([v.critic, v.aspect, v.pass, v.margin, v.reason])).collect::<Vec<_>>(),
            "metadata": s.metadata.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        });
        let got: serde_json::Value = serde_json::from_str(&sample.metadata["echo"]).unwrap();
        assert_eq!(got, want, "sample {:?}", s.id);
    }
}
