//! kiln's engine against llama.cpp on the real models (fetched on first use): prompt token
//! ids (exact), first-step top-5 log-probabilities and greedy continuations; and the
//! contamination guard's verdicts.
//!
//! Tolerances: these 4-bit models are chaotic at the level of activation rounding. llama.cpp
//! disagrees with itself when only its batch size changes (n_batch 1 vs 512: mean 0.025 /
//! max 0.22 nats on SmolLM2, mean 0.064 / max 0.39 on gemma3), and with itself built on another
//! machine of the same kind: llama-cpp-python 0.3.36 built from source (GGML_NATIVE) two days
//! apart, same GGUF, same settings, against expected.json gives top-5 differences of mean 0.075
//! / max 0.31 (gemma3) and 0.062 / 0.22 (SmolLM2) and greedy continuations that agree for 30+
//! tokens on 5/10 and 4/10 prompts (tests/fixtures/model/self_agreement.py measures it; prompts
//! of 4-6 tokens agree exactly, longer ones do not). An exact replica of ggml's Q4_1 x Q8_1
//! arithmetic run freely drifts by 0.03-0.06 nats after a few layers. So the test
//! asks for what is stable: identical prompt ids; the same first greedy token wherever
//! llama.cpp's top two are more than 0.3 nats apart; top-5 log-probs within a mean of 0.15 and
//! a max of 0.6 nats; and at least half of the 32-token greedy continuations matching
//! llama.cpp's for 8 tokens or more (measured: gemma3 5/10 for 8+, 4 of them fully; SmolLM2 8/10 for
//! 10+).
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
    let e = Engine::load(&path, &LoadOptions { allow_chat_template: true, ..Default::default() }).unwrap();
    let rows = expected(name);
    let reqs: Vec<GenRequest> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| GenRequest { id: i.to_string(), prompt: r.prompt.clone(), stop: vec![], max_tokens: r.greedy.len() as u32, seed: 0, stop_after_text: false })
        .collect();
    let gens = e.generate(&reqs, &SamplingParams::default(), BatchOptions { max_batch: 10 }, &mut |_, _| {}).unwrap();
    let mut diffs = Vec::new();
    let mut report = Vec::new();
    let mut clean_prefix = 0;
    for (r, g) in rows.iter().zip(&gens) {
        assert_eq!(e.prompt_ids(&r.prompt).unwrap(), r.prompt_ids, "{name}: prompt ids of {:?}", r.prompt);
        let top = e.top_logprobs(&r.prompt, 50).unwrap();
        for (tok, lp) in &r.top5 {
            let ours = top.iter().find(|(t, _)| t == tok).map(|(_, l)| *l).unwrap_or(f64::NEG_INFINITY);
            diffs.push((ours - lp).abs());
        }
        if r.top5[0].1 - r.top5[1].1 > 0.3 {
            assert_eq!(g.tokens[0], r.greedy[0], "{name}: {:?}: first greedy token", r.prompt);
        }
        let same = g.tokens.iter().zip(&r.greedy).take_while(|(a, b)| a == b).count();
        report.push(same);
        if same >= 8 || same == r.greedy.len() {
            clean_prefix += 1;
        }
    }
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    eprintln!("{name}: greedy tokens matching llama.cpp per prompt {report:?}; top-5 log-prob difference mean {mean:.4} max {max:.4}");
    assert!(mean < 0.15 && max < 0.6, "{name}: top-5 log-probs differ from llama.cpp by mean {mean:.4}, max {max:.4}");
    assert!(clean_prefix * 2 >= rows.len(), "{name}: greedy continuations diverge early: {report:?}");
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
    let e = Engine::load(&instruct, &LoadOptions { allow_chat_template: true, ..Default::default() }).unwrap();
    let r = guard::check(&e, guard::DEFAULT_THRESHOLD).unwrap();
    eprintln!("smollm2-instruct guard: preference {:.3}, wins {}/{}", r.assistant_preference, r.assistant_wins, r.sentinels.len());
    assert!(r.flagged_by_metadata);
    assert!(r.flagged_by_behaviour, "behaviour alone must flag it: {}", serde_json::to_string_pretty(&r).unwrap());
}
