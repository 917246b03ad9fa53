//! QLoRA training on tiny random models written by the tests: the training forward pass
//! against the engine's, LoRA gradients against finite differences, loss masking, PEFT's
//! initialisation leaving the base unchanged, the loss falling, and resuming to the same bytes.

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use kiln::model::{Engine, LoadOptions, SeqCache, Step, Want};
use kiln::train::*;

use crate::common::example;
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
    (0..sentences.len())
        .map(|i| {
            let (prompt, response) = (format!("instruction: {}.\nresponse:", sentences[i]), format!(" {}.", sentences[(i + 1) % sentences.len()]));
            example(e, format!("x-{i:03}"), &prompt, &response)
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
fn tensor_operations_give_the_cpu_operations_loss_and_gradients() {
    // The path every non-CPU device takes (projections as matmuls on the dequantized weight,
    // the head's loss and gradient tile by tile), run here on the CPU against kiln's CPU
    // operations: same loss, same gradients, with and without activation checkpointing.
    for t in [Tiny::gemma3(), Tiny::llama()] {
        let (_d, path) = tiny_file(&t);
        let e = Engine::load(&path, &LoadOptions::default()).unwrap();
        let custom = BaseModel::load(&path).unwrap();
        let mut tensor = BaseModel::load(&path).unwrap();
        assert!(!custom.tensor_ops());
        tensor.use_tensor_ops(true).unwrap();
        assert!(tensor.tensor_ops());
        let exs = examples(&e);
        let b = collate(&[&exs[0], &exs[1], &exs[3]], 0);
        let a = perturbed(&custom.cfg, &lora(2, 0.1), 5);
        let close = |x: f64, y: f64, what: &str| assert!((x - y).abs() <= 1e-5 + 1e-4 * y.abs(), "{}: {what}: {x} vs {y}", t.arch);
        let (l1, g1) = loss_and_grads(&custom, &a, &b);
        let (l2, g2) = loss_and_grads(&tensor, &a, &b);
        close(l2, l1, "loss");
        for (x, y) in g2.iter().flatten().zip(g1.iter().flatten()) {
            close(*x as f64, *y as f64, "gradient");
        }
        let dropout = Some(Dropout { p: 0.1, seed: 11 });
        let (c1, n1, k1) = custom.nll_backward(&b, &a, dropout, 0.5).unwrap();
        let (c2, n2, k2) = tensor.nll_backward(&b, &a, dropout, 0.5).unwrap();
        assert_eq!((n1, n2), (b.targets(), b.targets()));
        close(c2, c1, "checkpointed loss");
        assert!(k1.iter().flatten().any(|g| *g != 0.0), "{}: the gradients are all zero", t.arch);
        for (x, y) in k2.iter().flatten().zip(k1.iter().flatten()) {
            close(*x as f64, *y as f64, "checkpointed gradient");
        }
        let (v, n) = tensor.nll_value(&b, Some(&a)).unwrap();
        assert_eq!(n, b.targets());
        close(v, l1, "loss without gradient");
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

/// Every tensor of a GGUF, by name: (type, bytes).
fn gguf_tensors(path: &Path) -> std::collections::BTreeMap<String, (GgmlDType, Vec<u8>)> {
    let mut f = std::fs::File::open(path).unwrap();
    let c = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let names: Vec<String> = c.tensor_infos.keys().cloned().collect();
    names
        .into_iter()
        .map(|n| {
            let q = c.tensor(&mut f, &n, &Device::Cpu).unwrap();
            (n, (q.dtype(), q.data().unwrap().to_vec()))
        })
        .collect()
}

#[test]
fn a_merged_adapter_gives_the_unmerged_log_probs() {
    use kiln::train::merge::{merge_adapter, MergedType};
    for t in [Tiny { dtype: GgmlDType::F32, embed_dtype: GgmlDType::F32, ..Tiny::gemma3() }, Tiny { dtype: GgmlDType::F32, embed_dtype: GgmlDType::F32, ..Tiny::llama() }, Tiny::llama()] {
        let (d, path) = tiny_file(&t);
        let m = BaseModel::load(&path).unwrap();
        // Not every projection: the others must come through byte for byte.
        let mut l = lora(4, 0.0);
        l.target_modules = vec!["q_proj".into(), "k_proj".into(), "o_proj".into(), "down_proj".into()];
        let a = perturbed(&m.cfg, &l, 5);
        let dir = d.path().join("adapter");
        a.save_peft(&m.cfg, &dir, "tiny").unwrap();

        // The reference: the adapter applied unmerged to the same weights in f32. On a quantized
        // base those are its dequantized weights, i.e. a merge of a zero adapter (PEFT's fresh
        // one, B = 0) - the quantized engine itself also rounds its activations, which a float
        // merge does not.
        let weights = if t.dtype == GgmlDType::F32 {
            path.clone()
        } else {
            let zero = d.path().join("zero");
            Adapters::init(&m.cfg, &l, 1).unwrap().save_peft(&m.cfg, &zero, "tiny").unwrap();
            let p = d.path().join("dequantized.gguf");
            merge_adapter(&path, &zero, &p, MergedType::F32).unwrap();
            p
        };
        let mut unmerged = Engine::load(&weights, &LoadOptions::default()).unwrap();
        let base = Engine::load(&weights, &LoadOptions::default()).unwrap();
        Adapters::load_peft(&unmerged.model.cfg, &dir).unwrap().attach(&mut unmerged.model).unwrap();
        let ids = unmerged.prompt_ids("instruction: name three rivers.\nresponse: the").unwrap();
        let want = engine_log_probs(&unmerged, &ids);
        let base = engine_log_probs(&base, &ids);
        let diff = |x: &[Vec<f32>], y: &[Vec<f32>]| x.iter().flatten().zip(y.iter().flatten()).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);

        for (dtype, tol) in [(MergedType::F32, 1e-4f32), (MergedType::F16, 6e-2), (MergedType::Q8_0, 0.2)] {
            let out = d.path().join(format!("merged-{dtype:?}.gguf"));
            let r = merge_adapter(&path, &dir, &out, dtype).unwrap();
            assert_eq!((r.merged, r.copied), (4 * m.cfg.layers, gguf_tensors(&path).len() - 4 * m.cfg.layers));
            assert!(r.max_update > 0.0);
            let merged = Engine::load(&out, &LoadOptions::default()).unwrap();
            let got = engine_log_probs(&merged, &ids);
            assert!(diff(&got, &want) < tol, "{} {dtype:?}: merged vs unmerged {}", t.arch, diff(&got, &want));
            eprintln!("{} {dtype:?}: merged vs unmerged {:.2e}, adapter's effect {:.2e}", t.arch, diff(&got, &want), diff(&want, &base));
            assert!(diff(&want, &base) > 5.0 * diff(&got, &want), "{} {dtype:?}: the merge is no closer to the adapter than the base is", t.arch);
            // Untargeted tensors are copied unchanged; targeted ones change type; provenance.
            let (before, after) = (gguf_tensors(&path), gguf_tensors(&out));
            assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
            for (name, (ty, bytes)) in &before {
                let targeted = ["attn_q", "attn_k", "attn_output", "ffn_down"].iter().any(|p| name.ends_with(&format!(".{p}.weight")));
                if targeted {
                    assert_eq!(after[name].0, match dtype { MergedType::F32 => GgmlDType::F32, MergedType::F16 => GgmlDType::F16, MergedType::Q8_0 => GgmlDType::Q8_0 }, "{name}");
                } else {
                    assert_eq!(&after[name], &(*ty, bytes.clone()), "{name} changed");
                }
            }
            let mut f = std::fs::File::open(&out).unwrap();
            let md = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap().metadata;
            assert_eq!(md["kiln.adapter.sha256"].to_string().unwrap(), &r.adapter_sha256);
            assert_eq!(md["kiln.adapter.r"].to_u32().unwrap(), 4);
        }
    }
}

#[test]
fn merge_refuses_bad_inputs_and_leaves_no_file() {
    use kiln::train::merge::{merge_adapter, MergedType};
    let (d, path) = tiny_file(&Tiny::gemma3());
    let m = BaseModel::load(&path).unwrap();
    let dir = d.path().join("adapter");
    perturbed(&m.cfg, &lora(2, 0.0), 3).save_peft(&m.cfg, &dir, "tiny").unwrap();
    let out = d.path().join("merged.gguf");
    // The base would be overwritten.
    let err = merge_adapter(&path, &dir, &path, MergedType::F16).unwrap_err().to_string();
    assert!(err.contains("overwrite"), "{err}");
    // An adapter made for a deeper model.
    let (d2, other) = tiny_file(&Tiny { layers: m.cfg.layers + 2, ..Tiny::gemma3() });
    let m2 = BaseModel::load(&other).unwrap();
    let dir2 = d2.path().join("adapter");
    perturbed(&m2.cfg, &lora(2, 0.0), 3).save_peft(&m2.cfg, &dir2, "tiny").unwrap();
    let err = merge_adapter(&path, &dir2, &out, MergedType::F16).unwrap_err().to_string();
    assert!(err.contains("adapter_model.safetensors") && err.contains("LoRA tensors"), "{err}");
    // Not a GGUF; no adapter.
    let err = merge_adapter(&dir.join("adapter_config.json"), &dir, &out, MergedType::F16).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json") && err.contains("GGUF"), "{err}");
    let err = merge_adapter(&path, d.path(), &out, MergedType::F16).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json"), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(d.path()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains("tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn cli_merge_and_unmerged_adapter_score_alike() {
    let exact = Tiny { dtype: GgmlDType::F32, embed_dtype: GgmlDType::F32, ..Tiny::gemma3() };
    let (d, path) = tiny_file(&exact);
    let m = BaseModel::load(&path).unwrap();
    // A training run's folder holds the adapter in `adapter/`: the commands take either.
    let run = d.path().join("run");
    perturbed(&m.cfg, &lora(4, 0.0), 9).save_peft(&m.cfg, &run.join("adapter"), "tiny").unwrap();
    let merged = d.path().join("merged.gguf");
    let o = crate::common::kiln().args(["adapter", "merge", "--json", "--dtype", "f32", "--model"]).arg(&path).arg("--adapter").arg(&run).arg("--out").arg(&merged).output().unwrap();
    assert!(o.status.success(), "{}", crate::common::text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["merged"], 7 * m.cfg.layers);
    assert_eq!(report["out_sha256"], kiln::provenance::sha256_file(&merged).unwrap());
    let input = d.path().join("score.jsonl");
    std::fs::write(&input, "{\"id\": \"a\", \"prompt\": \"instruction: name a river.\\nresponse:\", \"candidates\": [\" the\", \" a river\"]}\n").unwrap();
    let score = |model: &Path, adapter: Option<&Path>| -> Vec<f64> {
        let mut c = crate::common::kiln();
        c.args(["model", "score", "--input"]).arg(&input).arg("--model").arg(model);
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", crate::common::text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (unmerged, via_merge, base) = (score(&path, Some(&run)), score(&merged, None), score(&path, None));
    for k in 0..2 {
        assert!((unmerged[k] - via_merge[k]).abs() < 1e-4, "{unmerged:?} vs {via_merge:?}");
    }
    assert!((unmerged[0] - base[0]).abs() > 1e-3, "the adapter changed nothing: {unmerged:?} vs {base:?}");
    // A wrong adapter folder is named.
    let o = crate::common::kiln().args(["adapter", "merge", "--model"]).arg(&path).arg("--adapter").arg(d.path().join("nope")).arg("--out").arg(d.path().join("x.gguf")).output().unwrap();
    assert!(!o.status.success());
    assert!(crate::common::text(&o).contains("nope"), "{}", crate::common::text(&o));
}
