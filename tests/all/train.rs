//! QLoRA training on tiny random models written by the tests: the training forward pass
//! against the engine's, LoRA gradients against finite differences, loss masking, PEFT's
//! initialisation leaving the base unchanged, the loss falling, and resuming to the same bytes.

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use kiln::model::{Engine, LoadOptions, SeqCache, Step, Want};
use kiln::train::*;

use crate::tiny::{self, Tiny};

fn tiny_file(t: &Tiny) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny::write(t, &path);
    (dir, path)
}

fn lora(r: usize, dropout: f64) -> LoraConfig {
    LoraConfig { r, lora_alpha: 2.0 * r as f64, lora_dropout: dropout, target_modules: MODULES.iter().map(|m| m.to_string()).collect() }
}

/// Examples from the tiny corpus: a prompt and a response per sentence pair.
fn examples(e: &Engine) -> Vec<Example> {
    let sentences: Vec<&str> = tiny::CORPUS.split(". ").collect();
    let eos = e.tokenizer.eos_ids()[0];
    (0..sentences.len())
        .map(|i| {
            let prompt = e.prompt_ids(&format!("instruction: {}.\nresponse:", sentences[i])).unwrap();
            let mut response = e.tokenizer.encode(&format!(" {}.", sentences[(i + 1) % sentences.len()])).unwrap();
            response.push(eos);
            Example { id: format!("x-{i:03}"), prompt, response }
        })
        .collect()
}

/// Adapters with B moved off zero, so that every adapter changes the output.
fn perturbed(cfg: &kiln::model::ModelConfig, l: &LoraConfig, seed: u64) -> Adapters {
    let a = Adapters::init(cfg, l, seed).unwrap();
    for (i, p) in a.pairs.values().enumerate() {
        let shape = p.b.shape().clone();
        let n = shape.elem_count();
        let v: Vec<f32> = (0..n).map(|k| (((k * 7 + i * 13) % 17) as f32 - 8.0) * 0.01).collect();
        p.b.set(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap();
    }
    a
}

fn engine_log_probs(e: &Engine, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache: SeqCache = e.model.new_cache();
    let mut steps = [Step { cache: &mut cache, tokens: ids, want: Want::All }];
    let logits = e.model.forward(&mut steps).unwrap().remove(0);
    logits.iter().map(|row| kiln::model::transformer::log_softmax(row).into_iter().map(|x| x as f32).collect()).collect()
}

#[test]
fn training_forward_matches_the_engine_and_fresh_adapters_change_nothing() {
    // Unquantized, the two forward passes must agree to rounding; quantized, the engine's
    // kernels round activations to 8 bits where training's head is exact f32.
    let exact = |t: Tiny| Tiny { dtype: GgmlDType::F32, embed_dtype: GgmlDType::F32, ..t };
    for (t, tolerance) in [(exact(Tiny::gemma3()), 1e-3), (exact(Tiny::llama()), 1e-3), (Tiny::gemma3(), 0.15), (Tiny::llama(), 0.15)] {
        let (_d, path) = tiny_file(&t);
        let e = Engine::load(&path, &LoadOptions::default()).unwrap();
        let m = BaseModel::load(&path).unwrap();
        let ex = &examples(&e)[1];
        let b = collate(&[ex], 0);
        // Longer than gemma's window of 8, so the sliding-window mask is exercised.
        assert!(b.len > 8);
        let base = m.log_probs(&b, None).unwrap().to_vec2::<f32>().unwrap();
        let fresh = Adapters::init(&m.cfg, &lora(4, 0.0), 9).unwrap();
        let with = m.log_probs(&b, Some(&fresh)).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(base, with, "{}: B = 0 adapters must leave the output unchanged", t.arch);
        let reference = engine_log_probs(&e, &b.ids);
        let worst = base.iter().flatten().zip(reference.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < tolerance, "{} ({:?}): training and engine log-probs differ by {worst}", t.arch, t.dtype);
        let adapted = m.log_probs(&b, Some(&perturbed(&m.cfg, &lora(4, 0.0), 9))).unwrap().to_vec2::<f32>().unwrap();
        assert_ne!(base, adapted, "{}: a non-zero adapter must change the output", t.arch);
    }
}

/// Loss and the gradients of every adapter tensor, flattened.
fn loss_and_grads(m: &BaseModel, a: &Adapters, b: &Batch) -> (f64, Vec<Vec<f32>>) {
    let (nll, _) = m.nll(b, Some(a), None).unwrap();
    let grads = nll.backward().unwrap();
    let g = a.vars().iter().map(|v| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
    (nll.to_scalar::<f32>().unwrap() as f64, g)
}

#[test]
fn lora_gradients_match_finite_differences() {
    for mut t in [Tiny::gemma3(), Tiny::llama()] {
        // Unquantized projections: the activations are not rounded, so the loss is smooth.
        t.dtype = GgmlDType::F32;
        let (_d, path) = tiny_file(&t);
        let e = Engine::load(&path, &LoadOptions::default()).unwrap();
        let m = BaseModel::load(&path).unwrap();
        let exs = examples(&e);
        let b = collate(&[&exs[0], &exs[2]], 0);
        let a = perturbed(&m.cfg, &lora(2, 0.0), 3);
        let (loss, grads) = loss_and_grads(&m, &a, &b);
        // Activation checkpointing (what training uses) gives the same loss and gradients.
        let (ck_loss, n, ck) = m.nll_backward(&b, &a, None, 1.0).unwrap();
        assert_eq!(n, b.targets());
        assert!((ck_loss - loss).abs() < 1e-4 * loss.abs(), "{}: checkpointed loss {ck_loss} vs {loss}", t.arch);
        for (x, y) in ck.iter().flatten().zip(grads.iter().flatten()) {
            assert!((x - y).abs() <= 1e-4 + 1e-3 * y.abs(), "{}: checkpointed gradient {x} vs {y}", t.arch);
        }
        let vars = a.vars();
        let mut checked = 0;
        for (vi, v) in vars.iter().enumerate() {
            // A few coordinates of every tensor.
            let n = v.elem_count();
            for k in [0, n / 3, n - 1] {
                let orig = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let at = |delta: f32| {
                    let mut w = orig.clone();
                    w[k] += delta;
                    v.set(&Tensor::from_vec(w, v.shape(), &Device::Cpu).unwrap()).unwrap();
                    let (nll, _) = m.nll(&b, Some(&a), None).unwrap();
                    nll.to_scalar::<f32>().unwrap() as f64
                };
                let h = 1e-2f32;
                let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                v.set(&Tensor::from_vec(orig, v.shape(), &Device::Cpu).unwrap()).unwrap();
                let g = grads[vi][k] as f64;
                assert!((fd - g).abs() <= 2e-3 + 0.03 * g.abs().max(fd.abs()), "{} tensor {vi} [{k}]: analytic {g}, finite difference {fd}", t.arch);
                checked += 1;
            }
        }
        assert!(checked >= 3 * 2 * 7 * t.layers);
    }
}

#[test]
fn only_response_tokens_carry_loss_and_gradient() {
    let t = Tiny::gemma3();
    let (_d, path) = tiny_file(&t);
    let e = Engine::load(&path, &LoadOptions::default()).unwrap();
    let m = BaseModel::load(&path).unwrap();
    let exs = examples(&e);
    let a = perturbed(&m.cfg, &lora(2, 0.0), 5);
    // Two examples of different lengths: the shorter one is padded.
    let b1 = collate(&[&exs[0], &exs[3]], 0);
    let b2 = collate(&[&exs[0], &exs[3]], 7);
    assert_ne!(b1.ids, b2.ids, "the padding differs");
    let (l1, g1) = loss_and_grads(&m, &a, &b1);
    let (l2, g2) = loss_and_grads(&m, &a, &b2);
    assert_eq!(l1, l2, "the padding token changed the loss");
    assert_eq!(g1, g2, "the padding token changed the gradients");
    // The loss is the response tokens' negative log-likelihood, read from the full log-probs.
    let lp = m.log_probs(&b1, Some(&a)).unwrap().to_vec2::<f32>().unwrap();
    let mut expect = 0f64;
    let mut counted = 0;
    for (row, ex) in [&exs[0], &exs[3]].iter().enumerate() {
        for (j, &tok) in ex.response.iter().enumerate() {
            let pos = row * b1.len + ex.prompt.len() + j - 1;
            expect -= lp[pos][tok as usize] as f64;
            counted += 1;
        }
    }
    assert_eq!(counted, b1.targets());
    assert!((l1 - expect).abs() < 1e-3 * expect.abs(), "loss {l1}, response-token NLL {expect}");
    // A different prompt token changes the loss (the test can fail), a different masked label cannot exist.
    let mut ex0 = exs[0].clone();
    ex0.response[0] = (ex0.response[0] + 1) % m.cfg.vocab as u32;
    let (l3, _) = loss_and_grads(&m, &a, &collate(&[&ex0, &exs[3]], 0));
    assert_ne!(l1, l3);
}

fn options(steps_epochs: usize) -> TrainOptions {
    TrainOptions {
        lora: lora(4, 0.1),
        optimizer: AdamWConfig { lr: 1e-2, weight_decay: 0.01, ..AdamWConfig::default() },
        batch_size: 2,
        grad_accum: 2,
        epochs: steps_epochs,
        warmup_steps: 2,
        max_grad_norm: 1.0,
        eval_every: 3,
        checkpoint_every: 2,
        seed: 11,
    }
}

fn adapter_bytes(m: &BaseModel, a: &Adapters) -> Vec<u8> {
    kiln::train::lora::safetensors_bytes(&a.peft_tensors(&m.cfg).unwrap(), None).unwrap()
}

fn run_dir(p: &Path) -> kiln::sandbox::RunDir {
    kiln::sandbox::RunDir::create(p).unwrap()
}

#[test]
fn loss_falls_and_an_interrupted_run_resumes_to_the_same_bytes() {
    let t = Tiny::llama();
    let (d, path) = tiny_file(&t);
    let e = Engine::load(&path, &LoadOptions::default()).unwrap();
    let m = BaseModel::load(&path).unwrap();
    let exs = examples(&e);
    let s = split(exs, 0.25, 64, 1);
    assert!(!s.validation.is_empty() && s.train.len() >= 4);
    let opts = options(6);
    let whole = run_dir(&d.path().join("whole"));
    let (a1, log, report) = train(&m, &s.train, &s.validation, &opts, 0, &whole, &|_, _, _| {}).unwrap();
    let losses: Vec<f64> = log.iter().filter_map(|l| l.loss).collect();
    let first = losses[..2].iter().sum::<f64>() / 2.0;
    let last = losses[losses.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(last < 0.7 * first, "training loss went from {first} to {last}");
    assert!(report.final_val_loss.is_some() && report.initial_val_loss.is_some());
    assert!(report.steps >= 6);

    // The same run killed after step 5 (its last checkpoint at step 4), then run again.
    let cut = run_dir(&d.path().join("cut"));
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(&m, &s.train, &s.validation, &opts, 0, &cut, &|step, _, _| {
            if step == 5 {
                panic!("killed");
            }
        })
    }));
    assert!(killed.is_err());
    let (a2, log2, report2) = train(&m, &s.train, &s.validation, &opts, 0, &cut, &|_, _, _| {}).unwrap();
    assert_eq!(report2.resumed_from, 4);
    assert_eq!(adapter_bytes(&m, &a1), adapter_bytes(&m, &a2), "resumed adapter differs from the uninterrupted one");
    let strip = |l: &[LogLine]| l.iter().map(|x| (x.step, x.loss, x.val_loss, x.lr, x.grad_norm)).collect::<Vec<_>>();
    assert_eq!(strip(&log), strip(&log2));

    // Other settings in the same folder are refused, naming the checkpoint.
    let mut other = opts.clone();
    other.seed = 12;
    let err = train(&m, &s.train, &s.validation, &other, 0, &cut, &|_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("checkpoint.safetensors") && err.contains("other training settings"), "{err}");
}

#[test]
fn peft_files_round_trip_with_hugging_face_row_order() {
    for t in [Tiny::gemma3(), Tiny::llama()] {
        let (d, path) = tiny_file(&t);
        let m = BaseModel::load(&path).unwrap();
        let a = perturbed(&m.cfg, &lora(4, 0.05), 2);
        let out = d.path().join("adapter");
        a.save_peft(&m.cfg, &out, "tiny").unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["r"], 4);
        assert_eq!(cfg["bias"], "none");
        assert_eq!(cfg["task_type"], "CAUSAL_LM");
        let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let q = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
        assert_eq!(q.shape(), [m.cfg.heads * m.cfg.head_dim, 4]);
        let down = st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").unwrap();
        assert_eq!(down.shape(), [4, m.cfg.ffn]);
        let back = Adapters::load_peft(&m.cfg, &out).unwrap();
        assert_eq!(adapter_bytes(&m, &a), adapter_bytes(&m, &back));
        // The q rows are in Hugging Face's order: for llama, GGUF row 1 (head 0, pair 0, second
        // half) is Hugging Face row head_dim / 2.
        let file_b: Vec<f32> = q.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let ours = a.get(0, "q_proj").unwrap().b.as_tensor().to_vec2::<f32>().unwrap();
        let hf_row = if t.arch == "llama" { m.cfg.head_dim / 2 } else { 1 };
        assert_eq!(&file_b[hf_row * 4..hf_row * 4 + 4], &ours[1][..], "{}", t.arch);
        // A damaged file is refused with its name.
        std::fs::write(out.join("adapter_model.safetensors"), b"not safetensors").unwrap();
        let err = Adapters::load_peft(&m.cfg, &out).unwrap_err().to_string();
        assert!(err.contains("adapter_model.safetensors"), "{err}");
    }
}

#[test]
fn attached_adapters_give_the_engine_the_training_log_probs() {
    let exact = Tiny { dtype: GgmlDType::F32, embed_dtype: GgmlDType::F32, ..Tiny::llama() };
    let (_d, path) = tiny_file(&exact);
    let mut e = Engine::load(&path, &LoadOptions::default()).unwrap();
    let m = BaseModel::load(&path).unwrap();
    let a = perturbed(&m.cfg, &lora(4, 0.0), 21);
    let ex = &examples(&e)[2];
    let b = collate(&[ex], 0);
    let trained = m.log_probs(&b, Some(&a)).unwrap().to_vec2::<f32>().unwrap();
    let before = engine_log_probs(&e, &b.ids);
    a.attach(&mut e.model).unwrap();
    let after = engine_log_probs(&e, &b.ids);
    let diff = |x: &[Vec<f32>], y: &[Vec<f32>]| x.iter().flatten().zip(y.iter().flatten()).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(diff(&trained, &after) < 1e-3, "engine with adapter vs training: {}", diff(&trained, &after));
    assert!(diff(&before, &after) > 1e-2, "the adapter changed nothing in the engine");
}
