//! The reference plugins, run through the host.

use kiln::plugin::*;
use serde_json::json;

use crate::common::*;

#[test]
fn template_renders_few_shot_prompts_and_parses() {
    let p = runtime().load(&spec(reference("template-fewshot"), json!({}))).unwrap();
    assert_eq!((p.world, p.name.as_str(), p.wit_version.as_str()), (World::PromptTemplate, "template-fewshot", "0.1.0"));
    let mut w = p.worker(1);
    let prompts = w
        .instruction_prompts(&[InstructionRequest {
            id: "i-1".into(),
            instruction_type: "open-qa".into(),
            type_description: "A factual question.".into(),
            examples: vec!["Why is the sky blue?".into(), "What is the largest planet?".into(), "Who wrote Emma?".into()],
        }])
        .unwrap();
    assert_eq!(prompts.len(), 1);
    assert!(prompts[0].text.contains("A factual question."));
    assert!(prompts[0].text.ends_with("1. Why is the sky blue?\n2. What is the largest planet?\n3. Who wrote Emma?\n4."));
    assert!(prompts[0].stop.contains(&"\n".to_string()));
    assert_eq!(prompts[0].max_tokens, 64);

    let r = w
        .response_prompts(&[ResponseRequest { id: "i-1".into(), instruction_type: "open-qa".into(), instruction: " Why is grass green? ".into() }])
        .unwrap();
    assert!(r[0].text.ends_with("Instruction: Why is grass green?\nResponse:"), "{}", r[0].text);
    assert!(r[0].stop.iter().any(|s| s.contains("Instruction:")));

    let parsed = w
        .parse_instructions(&[
            InstructionCompletion { id: "a".into(), instruction_type: "open-qa".into(), prompt: String::new(), text: " What is the tallest mountain in Africa?".into() },
            InstructionCompletion { id: "b".into(), instruction_type: "open-qa".into(), prompt: String::new(), text: "  ".into() },
        ])
        .unwrap();
    assert_eq!(parsed[0], Parsed::Instruction("What is the tallest mountain in Africa?".into()));
    assert!(matches!(&parsed[1], Parsed::Rejected(why) if why.contains("empty")));

    // Configuration changes behaviour: a larger budget.
    let p2 = runtime().load(&spec(reference("template-fewshot"), json!({"response_max_tokens": 512}))).unwrap();
    let r2 = p2.worker(0).response_prompts(&[ResponseRequest { id: "x".into(), instruction_type: "t".into(), instruction: "Do it.".into() }]).unwrap();
    assert_eq!(r2[0].max_tokens, 512);
}

#[test]
fn template_refuses_request_without_examples() {
    let p = runtime().load(&spec(reference("template-fewshot"), json!({}))).unwrap();
    let mut w = p.worker(0);
    let err = w
        .instruction_prompts(&[InstructionRequest { id: "i-9".into(), instruction_type: "open-qa".into(), type_description: String::new(), examples: vec![] }])
        .unwrap_err()
        .to_string();
    assert!(err.contains("template-fewshot") && err.contains("i-9") && err.contains("no example"), "{err}");
}

#[test]
fn cleaner_cleans_and_drops_with_reasons() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("seeds.jsonl"), "{\"instruction\": \"Write a haiku about the sea.\"}\n").unwrap();
    let mut s = spec(reference("cleaner-basic"), json!({"reference_file": "/data/seeds.jsonl"}));
    s.data_dir = Some(data.path().to_path_buf());
    let p = runtime().load(&s).unwrap();
    assert_eq!(p.world, World::Cleaner);
    let mut w = p.worker(0);
    let batch = vec![
        sample("a", "  Name three rivers\tin Europe. ", "The Danube, the Rhine and the Seine.\n\nInstruction: Name more."),
        sample("b", "Name three rivers in Europe.", "Loire, Po and Elbe."),
        sample("c", "Write a haiku about the sea.", "Grey waves fold and break."),
        sample("d", "List the colours of the rainbow.", "red red red red red red red red red red red red"),
        sample("e", "Hi", "Hello."),
        sample("f", "Describe a quiet morning in a village.", ""),
    ];
    let out = w.clean(&batch).unwrap();
    assert_eq!(out.len(), 6);
    match &out[0] {
        CleanOutcome::Keep { sample } => {
            assert_eq!(sample.instruction, "Name three rivers in Europe.");
            assert_eq!(sample.response, "The Danube, the Rhine and the Seine.");
            assert_eq!(sample.metadata.get("cleaner-basic.response-truncated-at").map(String::as_str), Some("Instruction:"));
        }
        o => panic!("{o:?}"),
    }
    let codes: Vec<String> = out[1..]
        .iter()
        .map(|o| match o {
            CleanOutcome::Dropped { code, .. } => code.clone(),
            CleanOutcome::Keep { .. } => "keep".into(),
        })
        .collect();
    assert_eq!(codes, ["near-duplicate", "seed-duplicate", "repetitive", "instruction-too-short", "empty-response"]);
    if let CleanOutcome::Dropped { detail, .. } = &out[2] {
        assert!(detail.contains("Jaccard 1.000"), "{detail}");
    }
}

#[test]
fn cleaner_thresholds_come_from_config() {
    let strict = runtime().load(&spec(reference("cleaner-basic"), json!({"min_response_chars": 50}))).unwrap();
    let out = strict.worker(0).clean(&[sample("a", "Name three rivers in Europe.", "Loire, Po and Elbe.")]).unwrap();
    assert!(matches!(&out[0], CleanOutcome::Dropped { code, detail } if code == "response-too-short" && detail.contains("minimum 50")));
    let err = runtime().load(&spec(reference("cleaner-basic"), json!({"max_repetition": 7}))).err().unwrap().to_string();
    assert!(err.contains("cleaner-basic") && err.contains("max_repetition") && err.contains('7'), "{err}");
    let err = runtime().load(&spec(reference("cleaner-basic"), json!({"reference_file": "/data/none.jsonl"}))).err().unwrap().to_string();
    assert!(err.contains("reference_file") && err.contains("/data/none.jsonl"), "{err}");
}

fn qc_items(n: usize, runaway: usize, limit: usize) -> Vec<Sample> {
    let mut s = samples(n);
    for x in s.iter_mut().take(runaway) {
        x.response = "and then and then and then and then and then and then and then".into();
        x.response_generation.finish_reason = FinishReason::Length;
    }
    for x in s.iter_mut().skip(runaway).take(limit) {
        x.response_generation.finish_reason = FinishReason::Length;
    }
    s
}

#[test]
fn qc_gate_passes_and_fails_on_the_reference_thresholds() {
    let p = runtime().load(&spec(reference("qc-gates"), json!({}))).unwrap();
    let mut w = p.worker(0);
    let ok = w.evaluate(&qc_items(100, 4, 5)).unwrap();
    assert!(ok.pass, "{ok:?}");
    let m = |r: &QcReport, name: &str| r.metrics.iter().find(|m| m.name == name).cloned().unwrap();
    assert_eq!(m(&ok, "runaway_rate").value, 0.04);
    assert_eq!(m(&ok, "token_limit_rate").value, 0.09);
    assert_eq!(m(&ok, "runaway_rate").comparison, Comparison::LessThan);

    let bad = w.evaluate(&qc_items(100, 5, 5)).unwrap();
    assert!(!bad.pass);
    assert!(!m(&bad, "runaway_rate").pass && !m(&bad, "token_limit_rate").pass);
    assert_eq!(bad.reasons.len(), 2, "{:?}", bad.reasons);
    assert!(bad.reasons[0].contains("runaway_rate") && bad.reasons[0].contains("5 of 100"));

    // Thresholds from config.
    let lax = runtime().load(&spec(reference("qc-gates"), json!({"max_runaway_rate": 0.2, "max_token_limit_rate": 0.2}))).unwrap();
    assert!(lax.worker(0).evaluate(&qc_items(100, 5, 5)).unwrap().pass);

    // Critic pass rate is gated once verdicts exist.
    let mut judged = samples(10);
    for (i, s) in judged.iter_mut().enumerate() {
        s.verdicts.push(Verdict { critic: "c".into(), aspect: "response".into(), pass: i < 4, margin: 0.0, reason: String::new() });
    }
    let r = w.evaluate(&judged).unwrap();
    assert_eq!(m(&r, "critic_pass_rate").value, 0.4);
    assert!(!r.pass);
    // An empty set cannot pass.
    let empty = w.evaluate(&[]).unwrap();
    assert!(!empty.pass && empty.reasons[0].contains("empty"));
}

#[test]
fn critic_requests_then_decides_from_host_scores() {
    let p = runtime().load(&spec(reference("critic-ab"), json!({"margin_threshold": 0.5}))).unwrap();
    assert_eq!(p.world, World::Critic);
    let mut w = p.worker(0);
    let batch = samples(3);
    let reqs = w.score_requests(&batch).unwrap();
    // Two aspects, each in both letter orders.
    assert_eq!(reqs.len(), 12);
    assert_eq!((reqs[0].answer_a.as_str(), reqs[0].answer_b.as_str()), (" A", " B"));
    assert_eq!((reqs[1].aspect.as_str(), reqs[1].answer_a.as_str(), reqs[1].answer_b.as_str()), ("instruction/swapped", " B", " A"));
    assert!(reqs[3].prompt.contains(&batch[0].response));
    let margins = [1.0, 0.2, -3.0];
    let scores: Vec<Score> = reqs
        .iter()
        .map(|r| {
            let i = batch.iter().position(|s| s.id == r.sample_id).unwrap();
            Score { sample_id: r.sample_id.clone(), aspect: r.aspect.clone(), logprob_a: -1.0 + margins[i], logprob_b: -1.0 }
        })
        .collect();
    let verdicts = w.decide(&batch, &scores).unwrap();
    assert_eq!(verdicts.len(), 6);
    let pass: Vec<bool> = verdicts.iter().filter(|j| j.verdict.aspect == "response").map(|j| j.verdict.pass).collect();
    assert_eq!(pass, [true, false, false]);
    assert!((verdicts[0].verdict.margin - 1.0).abs() < 1e-12);

    // A missing score is the plugin's considered error; under a supervisor only that sample is
    // quarantined.
    let mut q = Quarantine::in_memory();
    let mut sup = Supervisor::new(&mut w, &mut q);
    let partial: Vec<Score> = scores.iter().filter(|s| s.sample_id != batch[1].id).cloned().collect();
    let out = sup.per_record(&batch, &mut |w, b| {
        let v = w.decide(b, &partial)?;
        Ok(b.iter().map(|s| v.iter().filter(|j| j.sample_id == s.id).count()).collect())
    })
    .unwrap();
    assert_eq!(out, vec![Some(2), None, Some(2)]);
    assert_eq!(q.entries().len(), 1);
    assert_eq!(q.entries()[0].error.kind, FailureKind::PluginError);
    assert!(q.entries()[0].message.contains("no score"), "{}", q.entries()[0].message);
}
