//! QLoRA training speed and memory against PyTorch + peft on the same GGUF and the same
//! threads, in one run, as ratios: one training step (forward, backward, gradient clipping,
//! AdamW) on a batch of 8 sequences of 256 tokens, r = 16 on all seven projections, loss on
//! the tokens after a 32-token prompt. kiln keeps the base quantized and takes its trainer's
//! own step (activation checkpointing per block); peft trains on the f32 weights transformers
//! dequantizes from the GGUF (LoRA, not QLoRA: bitsandbytes' 4-bit layers need a GPU), once as
//! it comes and once with gradient checkpointing, each as a column with its ratio.
//!
//! Run: `cargo bench --bench train -- [--model FILE] [--threads 2] [--steps 3] [--warmup 1]
//! [--peer PYTHON] [--batch 8] [--profile]` (`--profile`: kiln's time per phase, on kiln's
//! side only).
//!
//! On a GPU (a `--features cuda` build, carried to the device: benches/gpu/run.sh train), only
//! kiln's side runs here: `--side kiln --device cuda --batch B` prints kiln's figures as JSON,
//! with `device_peak_mib`, the high-water mark of the device's used memory above what it used
//! before the model was loaded (model, activations and the allocator's pool; sampled every
//! millisecond), and benches/gpu/hf_peer.py gives peft's. The peer is `benches/train_peft.py`, run with the Python of
//! `scripts/setup-peft.sh`'s venv (`.venv-peft`, or `$KILN_PEFT_PYTHON`); without one, kiln's
//! figures are printed alone. Each side runs in a process of its own, one after the other (the
//! bench runs itself again for kiln's), so that neither shares the cores or holds memory the
//! allocator kept; peak memory is the high-water mark of resident memory during the steps
//! (reset after loading), and after loading.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use kiln::train::optim::{clip_global_norm, AdamW, AdamWConfig};
use kiln::train::rng::SplitMix;
use kiln::train::{collate, Adapters, BaseModel, Dropout, Example, LoraConfig, MODULES};

const DEFAULT_BATCH: usize = 8;
const SEQ: usize = 256;
const PROMPT: usize = 32;
const R: usize = 16;
const ALPHA: f64 = 32.0;
const DROPOUT: f64 = 0.05;
const LR: f64 = 2e-4;
const MAX_GRAD_NORM: f64 = 1.0;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// A line of /proc/self/status in MiB (VmHWM, VmRSS).
fn status_mib(key: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

/// Reset the peak resident memory to the current one (Linux).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

#[derive(serde::Deserialize, Debug)]
struct Peer {
    tokens_per_s: f64,
    step_s: Vec<f64>,
    loss: Vec<f64>,
    load_s: f64,
    load_peak_mib: f64,
    train_peak_mib: f64,
    trainable_params: u64,
    attn_implementation: Option<String>,
    torch: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Figures {
    tokens_per_s: f64,
    step_s: Vec<f64>,
    loss: Vec<f64>,
    load_s: f64,
    load_peak_mib: f64,
    train_peak_mib: f64,
    trainable_params: usize,
    #[serde(default)]
    device: String,
    #[serde(default)]
    batch: usize,
    #[serde(default)]
    device_peak_mib: Option<f64>,
    /// With `--profile`: seconds and calls per phase, over every step (each phase waits for
    /// the device, so the steps run slower).
    #[serde(default)]
    phases: serde_json::Value,
}

/// Token ids away from the special tokens at the start of the vocabulary: the same work as text.
fn batch_ids(vocab: usize, batch: usize) -> Vec<Vec<u32>> {
    let mut rng = SplitMix::new(7);
    (0..batch).map(|_| (0..SEQ).map(|_| (1000 + rng.below(vocab.min(200_000) - 1000)) as u32).collect()).collect()
}

fn kiln_steps(m: &BaseModel, t0: Instant, ids: &[Vec<u32>], warmup: usize, steps: usize, device_start: Option<usize>) -> Figures {
    let lora = LoraConfig { r: R, lora_alpha: ALPHA, lora_dropout: DROPOUT, target_modules: MODULES.iter().map(|s| s.to_string()).collect() };
    let adapters = Adapters::init(&m.cfg, &lora, 1).unwrap().to_device(m.device()).unwrap();
    let vars = adapters.vars();
    let mut opt = AdamW::new(AdamWConfig { lr: LR, weight_decay: 0.0, ..AdamWConfig::default() }, &vars);
    let load_s = t0.elapsed().as_secs_f64();
    let load_peak_mib = status_mib("VmHWM:");
    let examples: Vec<Example> =
        ids.iter().enumerate().map(|(i, s)| Example { id: i.to_string(), prompt: s[..PROMPT].to_vec(), response: s[PROMPT..].to_vec() }).collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = collate(&refs, 0);
    let targets = batch.targets();
    reset_peak();
    let watch = kiln::model::memory::MemoryWatch::start(m.device());
    let (mut step_s, mut loss) = (Vec::new(), Vec::new());
    for step in 0..warmup + steps {
        let t = Instant::now();
        let dropout = Some(Dropout { p: DROPOUT, seed: SplitMix::at(3, &[step as u64]).next_u64() });
        // The trainer's own step: activation checkpointing per block.
        let (nll, _, mut grads) = m.nll_backward(&batch, &adapters, dropout, 1.0 / targets as f64).unwrap();
        kiln::model::profile::phase(m.device(), "train:optimizer", || {
            clip_global_norm(&mut grads, MAX_GRAD_NORM);
            opt.step(&vars, &grads, LR).unwrap();
        });
        m.device().synchronize().unwrap();
        step_s.push(t.elapsed().as_secs_f64());
        loss.push(nll / targets as f64);
    }
    let measured: f64 = step_s[warmup..].iter().sum();
    let device_peak_mib = watch.map(|w| (w.finish().peak_bytes - device_start.unwrap_or(0)) as f64 / (1 << 20) as f64);
    Figures {
        tokens_per_s: (ids.len() * SEQ * steps) as f64 / measured,
        step_s,
        loss,
        load_s,
        load_peak_mib,
        train_peak_mib: status_mib("VmHWM:"),
        trainable_params: vars.iter().map(|v| v.elem_count()).sum(),
        device: format!("{:?}", m.device().location()),
        batch: ids.len(),
        device_peak_mib,
        phases: kiln::model::profile::take(),
    }
}

fn peer_steps(python: &Path, path: &Path, ids: &[Vec<u32>], threads: &str, warmup: usize, steps: usize, checkpointing: bool) -> Result<Peer, String> {
    let mut child = Command::new(python)
        .arg(root().join("benches/train_peft.py"))
        .arg(path)
        .args(["--threads", threads])
        .env("HF_HUB_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    let req = serde_json::json!({
        "ids": ids, "prompt_len": PROMPT, "r": R, "lora_alpha": ALPHA, "lora_dropout": DROPOUT,
        "lr": LR, "max_grad_norm": MAX_GRAD_NORM, "warmup": warmup, "steps": steps, "checkpointing": checkpointing,
    });
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).map_err(|e| e.to_string())?;
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(format!("train_peft.py failed ({}):\n{}", o.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("train_peft.py's answer: {e}"))
}

fn list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads").unwrap_or_else(|| "2".into());
    // Both sides get the same number of threads; kiln's come from rayon's global pool.
    std::env::set_var("RAYON_NUM_THREADS", &threads);
    let steps: usize = arg(&args, "--steps").map(|s| s.parse().unwrap()).unwrap_or(3);
    let warmup: usize = arg(&args, "--warmup").map(|s| s.parse().unwrap()).unwrap_or(1);
    let path = match arg(&args, "--model") {
        Some(m) => PathBuf::from(m),
        None => {
            let m = kiln::model::fetch::known("gemma3-270m").unwrap();
            kiln::model::fetch::ensure(&m, &kiln::model::fetch::models_dir(None)).expect("fetch model")
        }
    };
    let python = arg(&args, "--peer")
        .or_else(|| std::env::var("KILN_PEFT_PYTHON").ok())
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::var_os("KILN_PEFT_VENV").map(PathBuf::from).unwrap_or_else(|| root().join(".venv-peft")).join("bin/python"));
    let batch: usize = arg(&args, "--batch").map(|s| s.parse().unwrap()).unwrap_or(DEFAULT_BATCH);
    if arg(&args, "--side").as_deref() == Some("kiln") {
        kiln::model::profile::enable(args.iter().any(|a| a == "--profile"));
        let spec: kiln::model::DeviceSpec = arg(&args, "--device").unwrap_or_else(|| "cpu".into()).parse().unwrap();
        let device = spec.open().unwrap();
        // What the device used before the model (the CUDA context, other processes).
        let device_start = kiln::model::memory::MemoryWatch::start(&device).map(|w| w.finish().start_bytes);
        let t0 = Instant::now();
        let m = BaseModel::load_on(&path, &device).unwrap();
        let ids = batch_ids(m.cfg.vocab, batch);
        let f = kiln_steps(&m, t0, &ids, warmup, steps, device_start);
        println!("{}", serde_json::to_string(&f).unwrap());
        return;
    }
    let (_, content) = kiln::model::engine::read_gguf(&path).unwrap();
    let ids = batch_ids(kiln::model::ModelConfig::from_metadata(&content.metadata, &path).unwrap().vocab, batch);
    println!(
        "kiln QLoRA vs PyTorch peft LoRA (f32 base), {}, {threads} threads: batch {batch} x {SEQ} tokens, r = {R}, 7 projections, {warmup} warm-up + {steps} measured steps",
        path.file_name().unwrap().to_string_lossy()
    );
    let o = Command::new(std::env::current_exe().unwrap())
        .args(["--side", "kiln", "--model"])
        .arg(&path)
        .args(["--threads", &threads, "--steps", &steps.to_string(), "--warmup", &warmup.to_string(), "--batch", &batch.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(o.status.success(), "kiln's side failed: {}", o.status);
    let k: Figures = serde_json::from_slice(&o.stdout).unwrap();
    println!("kiln: load {:.1} s, trainable {}, step s [{}], loss [{}]", k.load_s, k.trainable_params, list(&k.step_s), list(&k.loss));
    // The peer runs after kiln is done, so the two never share the cores: first as it comes,
    // then with activation checkpointing as kiln's trainer uses (less memory, more compute).
    let mut peers: Vec<(&str, Option<Peer>)> = Vec::new();
    for (label, ckpt) in [("peft", false), ("peft+ckpt", true)] {
        let peer = if python.exists() {
            match peer_steps(&python, &path, &ids, &threads, warmup, steps, ckpt) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("peer ({label}): {e}");
                    None
                }
            }
        } else {
            eprintln!("no peer: {} does not exist (run scripts/setup-peft.sh or pass --peer PYTHON)", python.display());
            None
        };
        if let Some(p) = &peer {
            println!(
                "{label}: load {:.1} s, trainable {}, step s [{}], loss [{}], torch {}, attention {}",
                p.load_s,
                p.trainable_params,
                list(&p.step_s),
                list(&p.loss),
                p.torch,
                p.attn_implementation.as_deref().unwrap_or("?")
            );
        }
        peers.push((label, peer));
    }
    print!("{:<22} {:>10}", "row", "kiln");
    for (label, _) in &peers {
        print!(" {label:>10} {:>7}", "ratio");
    }
    println!();
    let rows: [(&str, fn(&Figures) -> f64, fn(&Peer) -> f64); 3] = [
        ("tokens/s", |f| f.tokens_per_s, |p| p.tokens_per_s),
        ("peak MiB, training", |f| f.train_peak_mib, |p| p.train_peak_mib),
        ("peak MiB, loading", |f| f.load_peak_mib, |p| p.load_peak_mib),
    ];
    for (name, ours, theirs) in rows {
        let kv = ours(&k);
        print!("{name:<22} {kv:>10.1}");
        for (_, p) in &peers {
            match p {
                Some(p) => print!(" {:>10.1} {:>6.2}x", theirs(p), kv / theirs(p)),
                None => print!(" {:>10} {:>7}", "-", "-"),
            }
        }
        println!();
    }
}
