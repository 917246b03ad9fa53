//! kiln's engine against llama.cpp on the real models (fetched on first use): prompt token
//! ids, first-step top-5 log-probabilities within 0.05 nats, 32-token greedy continuations;
//! and the contamination guard's verdicts.
//!
//! Expectations: tests/fixtures/model/expected.json, made by
//! `python tests/fixtures/model/make_expectations.py MODEL_DIR > tests/fixtures/model/expected.json`
//! with llama-cpp-python 0.3.36 built from source (GGML_NATIVE=ON), 2 threads.

use kiln::model::*;

use crate::common::*;

#[derive(serde::Deserialize)]
struct Row {
    prompt: String,
    prompt_ids: Vec<u32>,
    top5: Vec<(u32, f64)>,
    greedy: Vec<u32>,
}

fn expected(model: &str) -> Vec<Row> {
    let text = std::fs::read_to_string(root().join("tests/fixtures/model/expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(v["models"][model].clone()).unwrap()
}

fn parity(name: &str) {
    let path = real_model(name);
    let e = Engine::load(&path, &LoadOptions { allow_chat_template: true }).unwrap();
    let rows = expected(name);
    let reqs: Vec<GenRequest> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| GenRequest { id: i.to_string(), prompt: r.prompt.clone(), stop: vec![], max_tokens: r.greedy.len() as u32, seed: 0 })
        .collect();
    let gens = e.generate(&reqs, &SamplingParams::default(), BatchOptions { max_batch: 10 }, &mut |_, _| {}).unwrap();
    let mut full = 0;
    let mut worst_lp: f64 = 0.0;
    let mut report = Vec::new();
    for (r, g) in rows.iter().zip(&gens) {
        assert_eq!(e.prompt_ids(&r.prompt).unwrap(), r.prompt_ids, "{name}: prompt ids of {:?}", r.prompt);
        let top = e.top_logprobs(&r.prompt, 50).unwrap();
        for (tok, lp) in &r.top5 {
            let ours = top.iter().find(|(t, _)| t == tok).map(|(_, l)| *l).unwrap_or(f64::NEG_INFINITY);
            worst_lp = worst_lp.max((ours - lp).abs());
            assert!((ours - lp).abs() < 0.05, "{name}: {:?}: token {tok}: kiln {ours} vs llama.cpp {lp}", r.prompt);
        }
        let same = g.tokens.iter().zip(&r.greedy).take_while(|(a, b)| a == b).count();
        report.push(same);
        if same == r.greedy.len() {
            full += 1;
        }
    }
    eprintln!("{name}: greedy tokens matching llama.cpp per prompt {report:?}; worst top-5 log-prob difference {worst_lp:.4}");
    assert!(full * 10 >= rows.len() * 7, "{name}: only {full} of {} greedy continuations match llama.cpp fully: {report:?}", rows.len());
}

#[test]
fn gemma3_matches_llama_cpp() {
    parity("gemma3-270m");
}

#[test]
fn smollm2_matches_llama_cpp() {
    parity("smollm2-instruct");
}

#[test]
fn guard_passes_the_base_model_and_flags_the_instruct_model() {
    let base = Engine::load(&real_model("gemma3-270m"), &LoadOptions::default()).unwrap();
    let r = guard::check(&base, guard::DEFAULT_THRESHOLD).unwrap();
    eprintln!("gemma3-270m guard: preference {:.3}, wins {}/{}", r.assistant_preference, r.assistant_wins, r.sentinels.len());
    assert!(!r.flagged(), "{}", serde_json::to_string_pretty(&r).unwrap());

    let instruct = real_model("smollm2-instruct");
    let err = Engine::load(&instruct, &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("chat template"), "{err}");
    let e = Engine::load(&instruct, &LoadOptions { allow_chat_template: true }).unwrap();
    let r = guard::check(&e, guard::DEFAULT_THRESHOLD).unwrap();
    eprintln!("smollm2-instruct guard: preference {:.3}, wins {}/{}", r.assistant_preference, r.assistant_wins, r.sentinels.len());
    assert!(r.flagged_by_metadata);
    assert!(r.flagged_by_behaviour, "behaviour alone must flag it: {}", serde_json::to_string_pretty(&r).unwrap());
}
