//! The model engine on tiny random models written by the test: batching, positions, KV cache,
//! sliding window, sampling determinism, stop sequences and finish reasons, scoring, LoRA
//! hooks, the chat-template refusal. No download.

use std::path::PathBuf;

use kiln::model::*;

use crate::tiny::{self, Tiny};

fn tiny_file(t: &Tiny, name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    tiny::write(t, &path);
    (dir, path)
}

fn load(t: &Tiny) -> (tempfile::TempDir, Engine) {
    let (d, p) = tiny_file(t, "tiny.gguf");
    let e = Engine::load(&p, &LoadOptions::default()).unwrap();
    (d, e)
}

const PROMPTS: [&str; 4] = ["the cat", "a bird sang in the tree and the sea", "instruction: write", "the dog ate the bone. the sky is"];

fn greedy(n: u32) -> Vec<GenRequest> {
    PROMPTS.iter().enumerate().map(|(i, p)| GenRequest { id: format!("g{i}"), prompt: p.to_string(), stop: vec![], max_tokens: n, seed: i as u64, stop_after_text: false }).collect()
}

fn run(e: &Engine, reqs: &[GenRequest], s: &SamplingParams, batch: usize) -> Vec<Generated> {
    e.generate(reqs, s, BatchOptions { max_batch: batch }, &mut |_, _| {}).unwrap()
}

#[test]
fn batch_composition_does_not_change_any_sequence() {
    for t in [Tiny::gemma3(), Tiny::llama()] {
        let (_d, e) = load(&t);
        let reqs = greedy(12);
        let greedy_s = SamplingParams::default();
        let alone: Vec<Generated> = reqs.iter().map(|r| run(&e, std::slice::from_ref(r), &greedy_s, 1).remove(0)).collect();
        for batch in [2, 3, 16] {
            assert_eq!(run(&e, &reqs, &greedy_s, batch), alone, "{} batch {batch}", t.arch);
        }
        let sampled = SamplingParams { temperature: 0.9, top_p: 0.9, top_k: 20 };
        let a = run(&e, &reqs, &sampled, 1);
        let b = run(&e, &reqs, &sampled, 4);
        assert_eq!(a, b, "{}: sampling depends on batch", t.arch);
        let mut reseeded = reqs.clone();
        for r in reseeded.iter_mut() {
            r.seed += 100;
        }
        let c = run(&e, &reseeded, &sampled, 4);
        assert_ne!(a.iter().map(|g| &g.tokens).collect::<Vec<_>>(), c.iter().map(|g| &g.tokens).collect::<Vec<_>>());
    }
}

/// Logits for the last position computed in one pass, and token by token through the cache.
fn last_logits_two_ways(e: &Engine, ids: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut c1 = e.model.new_cache();
    let full = e.model.forward(&mut [Step { cache: &mut c1, tokens: ids, want: Want::Last }]).unwrap().remove(0).remove(0);
    let mut c2 = e.model.new_cache();
    let mut last = Vec::new();
    for (i, t) in ids.iter().enumerate() {
        let want = if i + 1 == ids.len() { Want::Last } else { Want::Nothing };
        let mut out = e.model.forward(&mut [Step { cache: &mut c2, tokens: std::slice::from_ref(t), want }]).unwrap();
        if i + 1 == ids.len() {
            last = out.remove(0).remove(0);
        }
    }
    assert_eq!(c2.len(), ids.len());
    (full, last)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn every_weight_type_gives_batch_independent_rows() {
    // The k-quants (block 256) too: hidden 256, Q4_K / Q6_K weights.
    for dtype in [candle_core::quantized::GgmlDType::Q4K, candle_core::quantized::GgmlDType::Q6K, candle_core::quantized::GgmlDType::Q5_0] {
        let t = Tiny { hidden: 256, ffn: 256, heads: 2, kv_heads: 1, head_dim: 128, dtype, ..Tiny::gemma3() };
        let (_d, e) = load(&t);
        let reqs = greedy(6);
        let s = SamplingParams::default();
        let alone: Vec<Generated> = reqs.iter().map(|r| run(&e, std::slice::from_ref(r), &s, 1).remove(0)).collect();
        assert_eq!(run(&e, &reqs, &s, 4), alone, "{dtype:?}");
        let ids = e.prompt_ids(PROMPTS[3]).unwrap();
        let (full, stepwise) = last_logits_two_ways(&e, &ids);
        assert_eq!(full, stepwise, "{dtype:?}: one pass vs token by token");
    }
}

#[test]
fn kv_cache_matches_full_pass_past_the_sliding_window() {
    for t in [Tiny::gemma3(), Tiny::llama()] {
        let (_d, e) = load(&t);
        // 40 tokens: five times the window of 8, so sliding layers trim their caches.
        let ids: Vec<u32> = (0..40).map(|i| 260 + (i * 7 % 30) as u32).collect();
        let (full, stepwise) = last_logits_two_ways(&e, &ids);
        assert!(max_diff(&full, &stepwise) < 1e-3, "{}: {}", t.arch, max_diff(&full, &stepwise));
    }
}

#[test]
fn sliding_window_limits_what_a_position_sees() {
    // Every layer sliding with window 4 and 3 layers: position p sees back to p - 9 at most.
    let t = Tiny { sliding_window: Some(4), sliding_pattern: 0, ..Tiny::gemma3() };
    let (_d, e) = load(&t);
    let base: Vec<u32> = (0..20).map(|i| 262 + (i * 5 % 25) as u32).collect();
    let mut changed = base.clone();
    changed[1] = 300;
    let logits = |ids: &[u32]| {
        let mut c = e.model.new_cache();
        e.model.forward(&mut [Step { cache: &mut c, tokens: ids, want: Want::All }]).unwrap().remove(0)
    };
    let (a, b) = (logits(&base), logits(&changed));
    assert!(max_diff(&a[5], &b[5]) > 1e-4, "position 5 must see token 1");
    for p in 11..20 {
        assert_eq!(a[p], b[p], "position {p} must not see token 1 through a window of 4 in 3 layers");
    }
    // The same model with global attention does see it.
    let g = Tiny { sliding_window: None, ..t };
    let (_d2, e2) = load(&g);
    let logits2 = |ids: &[u32]| {
        let mut c = e2.model.new_cache();
        e2.model.forward(&mut [Step { cache: &mut c, tokens: ids, want: Want::Last }]).unwrap().remove(0).remove(0)
    };
    assert!(max_diff(&logits2(&base), &logits2(&changed)) > 1e-4);
}

#[test]
fn finish_reasons_and_stop_sequences_across_token_boundaries() {
    let (_d, e) = load(&Tiny::gemma3());
    let s = SamplingParams::default();
    let free = run(&e, &greedy(10)[..1], &s, 1).remove(0);
    assert_eq!(free.finish_reason, Finish::Length);
    assert_eq!(free.completion_tokens, 10);
    assert_eq!(free.text, e.tokenizer.decode(&free.tokens).unwrap());
    // A stop sequence that starts inside the third token's text and ends inside the fourth's.
    let text = &free.text;
    let prefix_len = |k: usize| e.tokenizer.decode(&free.tokens[..k]).unwrap().len();
    let (l2, l3) = (prefix_len(2), prefix_len(3));
    let next_boundary = |i: usize| (i + 1..=text.len()).find(|&j| text.is_char_boundary(j)).unwrap();
    let from = if l3 > l2 + 1 { next_boundary(l2) } else { l2 };
    let to = next_boundary(l3.min(text.len() - 1));
    let stop = text[from..to].to_string();
    assert!(!stop.is_empty());
    let mut r = greedy(10)[..1].to_vec();
    r[0].stop = vec!["never appears here".into(), stop.clone()];
    let g = run(&e, &r, &s, 1).remove(0);
    let cut = text.find(&stop).unwrap();
    assert_eq!(g.finish_reason, Finish::Stop, "stop {stop:?} in {text:?}");
    assert_eq!(g.stop_sequence.as_deref(), Some(stop.as_str()));
    assert_eq!(g.text, text[..cut]);
    assert!(g.completion_tokens < 10);
    // EOS: make the token greedy emits third the model's EOS.
    let t = Tiny { eos: free.tokens[2], ..Tiny::gemma3() };
    let (_d2, e2) = load(&t);
    let g = run(&e2, &greedy(10)[..1], &s, 1).remove(0);
    let first = free.tokens.iter().position(|&x| x == free.tokens[2]).unwrap();
    assert_eq!(g.finish_reason, Finish::Eos);
    assert_eq!(g.completion_tokens as usize, first + 1);
    assert_eq!(g.text, e.tokenizer.decode(&free.tokens[..first]).unwrap());
    // Zero budget.
    let mut z = greedy(0)[..1].to_vec();
    z[0].max_tokens = 0;
    let g = run(&e, &z, &s, 1).remove(0);
    assert_eq!((g.finish_reason, g.completion_tokens, g.text.as_str()), (Finish::Length, 0, ""));
}

#[test]
fn scores_agree_with_generation() {
    let (_d, e) = load(&Tiny::llama());
    let prompt = PROMPTS[1];
    let top = e.top_logprobs(prompt, 5).unwrap();
    assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
    let total: f64 = top.iter().map(|(_, lp)| lp.exp()).sum();
    assert!(total <= 1.0 + 1e-9);
    let g = run(&e, &[GenRequest { id: "x".into(), prompt: prompt.into(), stop: vec![], max_tokens: 3, seed: 0, stop_after_text: false }], &SamplingParams::default(), 1).remove(0);
    assert_eq!(g.tokens[0], top[0].0);
    // A single-token candidate's score is its log-prob after the prompt.
    let one = e.tokenizer.id_to_token(top[1].0).unwrap();
    let text_one = e.tokenizer.decode(&[top[1].0]).unwrap();
    let s = e.score(&[ScoreRequest { id: "s".into(), prompt: prompt.into(), candidates: vec![text_one.clone()] }], BatchOptions::default()).unwrap();
    if e.tokenizer.encode(&text_one).unwrap() == vec![top[1].0] {
        assert!((s[0].logprobs[0] - top[1].1).abs() < 1e-6, "{one}: {} vs {}", s[0].logprobs[0], top[1].1);
    }
    // Scoring in a batch equals scoring alone.
    let reqs: Vec<ScoreRequest> = PROMPTS
        .iter()
        .map(|p| ScoreRequest { id: p.to_string(), prompt: p.to_string(), candidates: vec![" the".into(), " sea is blue".into()] })
        .collect();
    let batched = e.score(&reqs, BatchOptions { max_batch: 8 }).unwrap();
    for (r, b) in reqs.iter().zip(&batched) {
        let alone = e.score(std::slice::from_ref(r), BatchOptions { max_batch: 1 }).unwrap().remove(0);
        assert_eq!(alone.logprobs, b.logprobs);
        assert!(b.logprobs.iter().all(|lp| *lp < 0.0 && lp.is_finite()));
        assert_eq!(b.tokens[0], e.tokenizer.encode(" the").unwrap().len());
    }
    // Errors name the request.
    let err = e.score(&[ScoreRequest { id: "bad".into(), prompt: "x".into(), candidates: vec![] }], BatchOptions::default()).unwrap_err();
    assert!(err.to_string().contains("\"bad\""));
}

#[test]
fn lora_hook_adds_the_low_rank_update() {
    let (_d, mut e) = load(&Tiny::llama());
    let ids = e.prompt_ids(PROMPTS[0]).unwrap();
    let before = last_logits_two_ways(&e, &ids).0;
    let lin = e.model.layers[0].projection_mut("q_proj").unwrap();
    let (i, o) = (lin.in_features, lin.out_features);
    let x = candle_core::Tensor::randn(0f32, 1.0, (3, i), &candle_core::Device::Cpu).unwrap();
    let base = lin.forward(&x).unwrap();
    let a = candle_core::Tensor::randn(0f32, 0.5, (4, i), &candle_core::Device::Cpu).unwrap();
    let zero_b = candle_core::Tensor::zeros((o, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    lin.adapter = Some(transformer::LoraAdapter { a: a.clone(), b: zero_b, scale: 2.0 });
    assert_eq!(lin.forward(&x).unwrap().to_vec2::<f32>().unwrap(), base.to_vec2::<f32>().unwrap(), "B = 0 adds nothing");
    let b = candle_core::Tensor::randn(0f32, 0.5, (o, 4), &candle_core::Device::Cpu).unwrap();
    lin.adapter = Some(transformer::LoraAdapter { a: a.clone(), b: b.clone(), scale: 2.0 });
    let with = lin.forward(&x).unwrap();
    let expected = (base + (x.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap() * 2.0).unwrap()).unwrap();
    let d = (with - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-4, "{d}");
    let after = last_logits_two_ways(&e, &ids).0;
    assert!(max_diff(&before, &after) > 1e-4, "an adapter in layer 0 changes the logits");
}

#[test]
fn chat_template_is_refused_unless_allowed_and_recorded() {
    let t = Tiny { chat_template: Some("{% for m in messages %}{{ m.content }}{% endfor %}".into()), ..Tiny::llama() };
    let (_d, p) = tiny_file(&t, "chat.gguf");
    let err = Engine::load(&p, &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("chat.gguf") && err.contains("chat template"), "{err}");
    let e = Engine::load(&p, &LoadOptions { allow_chat_template: true, ..Default::default() }).unwrap();
    assert!(e.info.chat_template_allowed && e.info.chat_template_chars.is_some());
    let report = guard::check(&e, guard::DEFAULT_THRESHOLD).unwrap();
    assert!(report.flagged_by_metadata && report.flagged());
    assert_eq!(report.sentinels.len(), guard::SENTINELS.len());
}

#[test]
fn bad_model_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a gguf").unwrap();
    let err = Engine::load(&junk, &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("junk.gguf") && err.contains("GGUF"), "{err}");
    let err = Engine::load(&dir.path().join("missing.gguf"), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("missing.gguf"), "{err}");
    let t = Tiny { arch: "mamba", ..Tiny::llama() };
    let (_d, p) = tiny_file(&t, "mamba.gguf");
    let err = Engine::load(&p, &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("mamba") && err.contains("not supported"), "{err}");
}

#[test]
fn inspect_describes_the_file() {
    let (_d, p) = tiny_file(&Tiny::gemma3(), "tiny.gguf");
    let out = crate::common::kiln().args(["model", "inspect"]).arg(&p).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.contains("gemma3") && s.contains("3 layers") && s.contains("sliding window 8") && s.contains("chat template no"), "{s}");
}

/// The accelerator's attention (tensor operations: rotary by per-row positions, a (heads, rows,
/// dim) cache per sequence, masks for prefill and the sliding window) run on the CPU gives the
/// logits of kiln's per-row attention, for both rotary styles, grouped-query heads, a batch of
/// different lengths, chunked prefill and decoding far past the window.
#[test]
fn tensor_attention_gives_the_per_row_logits() {
    // f32 weights: kiln's kernels quantize activations to 8 bits per row, where a last-bit
    // difference in attention can flip a rounding and move a logit by a hundredth.
    use candle_core::quantized::GgmlDType::F32;
    let cases = [
        Tiny { dtype: F32, embed_dtype: F32, ..Tiny::gemma3() },
        Tiny { dtype: F32, embed_dtype: F32, ..Tiny::llama() },
        Tiny { heads: 4, kv_heads: 2, sliding_window: Some(5), sliding_pattern: 2, dtype: F32, embed_dtype: F32, ..Tiny::gemma3() },
        Tiny { heads: 4, kv_heads: 1, dtype: F32, embed_dtype: F32, ..Tiny::llama() },
    ];
    for t in cases {
        let (_d, mut e) = load(&t);
        let seqs: Vec<Vec<u32>> = (0..3).map(|s| (0..(7 + 9 * s)).map(|i| 260 + ((i * 7 + s * 3) % 30) as u32).collect()).collect();
        // Prefill in two chunks (all rows wanted), then 30 decode steps of each sequence's own
        // tokens, all sequences in one batch.
        let run = |e: &Engine| -> Vec<Vec<Vec<f32>>> {
            let mut caches: Vec<SeqCache> = seqs.iter().map(|_| e.model.new_cache()).collect();
            let mut logits = Vec::new();
            // Per sequence, where its prompt is cut: the second pass mixes one-token steps
            // (batched) with a longer one (on its own), out of batch order.
            let cuts = [[0usize, 4, 5, usize::MAX], [0, 4, 9, usize::MAX], [0, 6, 7, usize::MAX]];
            for pass in 0..3 {
                let mut steps: Vec<Step> = caches
                    .iter_mut()
                    .zip(&seqs)
                    .zip(&cuts)
                    .map(|((c, s), cut)| Step { cache: c, tokens: &s[cut[pass].min(s.len())..cut[pass + 1].min(s.len())], want: Want::All })
                    .collect();
                logits.extend(e.model.forward(&mut steps).unwrap().into_iter().flatten());
            }
            for i in 0..30u32 {
                let toks: Vec<[u32; 1]> = (0..seqs.len()).map(|s| [262 + (i * 3 + s as u32) % 20]).collect();
                let mut steps: Vec<Step> = caches.iter_mut().zip(&toks).map(|(c, tk)| Step { cache: c, tokens: tk, want: Want::Last }).collect();
                logits.extend(e.model.forward(&mut steps).unwrap().into_iter().flatten());
            }
            vec![logits]
        };
        let rows = run(&e);
        assert!(!e.model.tensor_attention());
        e.model.set_tensor_attention(true).unwrap();
        let tensors = run(&e);
        assert_eq!(rows[0].len(), tensors[0].len());
        let worst = rows[0].iter().zip(&tensors[0]).map(|(a, b)| max_diff(a, b)).fold(0.0, f32::max);
        assert!(worst < 1e-3, "{} heads {}/{} window {:?}: max logit difference {worst}", t.arch, t.heads, t.kv_heads, t.sliding_window);
        // A cache from one path is refused by the other.
        e.model.set_tensor_attention(false).unwrap();
        let mut c = e.model.new_cache();
        e.model.forward(&mut [Step { cache: &mut c, tokens: &seqs[0], want: Want::Nothing }]).unwrap();
        e.model.set_tensor_attention(true).unwrap();
        let err = e.model.forward(&mut [Step { cache: &mut c, tokens: &seqs[0][..1], want: Want::Last }]).unwrap_err();
        assert!(err.to_string().contains("cached by per-row attention"), "{err}");
        let mut c = e.model.new_cache();
        e.model.set_tensor_attention(false).unwrap();
        let err = e.model.forward(&mut [Step { cache: &mut c, tokens: &seqs[0][..1], want: Want::Last }]).unwrap_err();
        assert!(err.to_string().contains("cached by tensor attention"), "{err}");
    }
}

/// With tensor attention the logits are reduced on the device: the sampler gets only the
/// entries that can hold its candidates, scoring only the scored tokens' log-probabilities.
/// Both give what whole rows on the host give: the same tokens for greedy and top-k sampling
/// (top-p, full sampling and a large k take whole rows), the same scores to f32 rounding.
#[test]
fn device_reductions_give_what_whole_rows_give() {
    for t in [Tiny::gemma3(), Tiny::llama()] {
        let (_d, mut e) = load(&t);
        e.model.set_tensor_attention(true).unwrap();
        let reqs: Vec<GenRequest> = ["the cat", "a bird sat", "on the", "dogs and cats and", "x"]
            .iter()
            .enumerate()
            .map(|(i, p)| GenRequest { id: i.to_string(), prompt: p.to_string(), stop: vec![], max_tokens: 12 + i as u32, seed: 40 + i as u64, stop_after_text: false })
            .collect();
        let samplings = [
            SamplingParams::default(),
            SamplingParams { temperature: 0.9, top_p: 1.0, top_k: 1 },
            SamplingParams { temperature: 0.9, top_p: 0.9, top_k: 8 },
            SamplingParams { temperature: 1.4, top_p: 1.0, top_k: 40 },
        ];
        let scores: Vec<ScoreRequest> = [("the cat", vec![" A", " B"]), ("a bird", vec![" sat on", " the", " x y z"])]
            .iter()
            .map(|(p, c)| ScoreRequest { id: p.to_string(), prompt: p.to_string(), candidates: c.iter().map(|s| s.to_string()).collect() })
            .collect();
        let mut outs = Vec::new();
        for on in [true, false] {
            e.model.set_device_reductions(on);
            assert_eq!(e.model.device_reductions(), on);
            let gens: Vec<Vec<Generated>> = samplings.iter().map(|s| e.generate(&reqs, s, BatchOptions { max_batch: 3 }, &mut |_, _| {}).unwrap()).collect();
            outs.push((gens, e.score(&scores, BatchOptions { max_batch: 2 }).unwrap()));
        }
        let ((g_on, s_on), (g_off, s_off)) = (&outs[0], &outs[1]);
        assert_eq!(g_on, g_off, "{}: generation with device reductions", t.arch);
        for (a, b) in s_on.iter().zip(s_off) {
            assert_eq!(a.tokens, b.tokens);
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{}: scores {:?} vs {:?}", t.arch, a.logprobs, b.logprobs);
            }
        }
        // The sampled runs did sample: they differ from greedy.
        assert_ne!(g_on[0], g_on[3], "{}", t.arch);
    }
}

/// `--device`: a bad name and CUDA in a CPU build are one-line errors that name the device;
/// `--stats` prints one JSON line of throughput on stderr and leaves stdout as it was.
#[test]
fn cli_device_and_stats() {
    let (d, path) = tiny_file(&Tiny::gemma3(), "tiny.gguf");
    let input = d.path().join("gen.jsonl");
    std::fs::write(&input, "{\"id\": \"a\", \"prompt\": \"the cat\", \"max_tokens\": 5, \"seed\": 1}\n{\"id\": \"b\", \"prompt\": \"a bird\", \"max_tokens\": 4, \"seed\": 2}\n").unwrap();
    let run = |extra: &[&str]| {
        let mut c = crate::common::kiln();
        c.args(["model", "generate", "--input"]).arg(&input).arg("--model").arg(&path).args(extra);
        c.output().unwrap()
    };
    let o = run(&["--device", "tpu"]);
    assert!(!o.status.success());
    assert!(crate::common::text(&o).contains("unknown device \"tpu\""), "{}", crate::common::text(&o));
    if !cfg!(feature = "cuda") {
        let o = run(&["--device", "cuda:1"]);
        assert!(!o.status.success());
        let t = crate::common::text(&o);
        assert!(t.contains("device cuda:1") && t.contains("without CUDA"), "{t}");
    }
    let plain = run(&[]);
    let stats = run(&["--stats", "--device", "cpu"]);
    assert!(plain.status.success() && stats.status.success(), "{}", crate::common::text(&stats));
    assert_eq!(plain.stdout, stats.stdout);
    let line: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&stats.stderr).lines().last().unwrap()).unwrap();
    assert_eq!((line["stats"].as_str(), line["device"].as_str(), line["sequences"].as_u64()), (Some("generate"), Some("cpu"), Some(2)));
    let out: Vec<serde_json::Value> = String::from_utf8_lossy(&plain.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let made: u64 = out.iter().map(|g| g["completion_tokens"].as_u64().unwrap()).sum();
    assert_eq!(line["new_tokens"].as_u64(), Some(made));
    // --profile adds the phases (each with its seconds and calls); same output.
    let prof = run(&["--stats", "--profile"]);
    assert_eq!(prof.stdout, plain.stdout);
    let line: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&prof.stderr).lines().last().unwrap()).unwrap();
    for phase in ["embed", "qkv", "attention", "o", "gate+up", "activation", "down", "logits", "to-host", "sample"] {
        assert!(line["phases"][phase]["calls"].as_u64().unwrap_or(0) > 0, "phase {phase}: {line}");
    }
    assert_eq!(line["phases"]["embed"]["calls"], line["phases"]["sample"]["calls"], "one embedding per step: {line}");
}
