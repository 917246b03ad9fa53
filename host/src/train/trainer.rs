//! The training loop: micro-batches with gradient accumulation, global-norm clipping, AdamW
//! on the warmup-cosine schedule, a validation loss every N steps, JSON-lines logs, and
//! atomic checkpoints from which the same command resumes to the same adapter bytes.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::sandbox::RunDir;

use super::data::{collate, plan, Example};
use super::error::TrainError;
use super::lora::{safetensors_bytes, Adapters, LoraConfig};
use super::model::{BaseModel, Dropout};
use super::optim::{clip_global_norm, lr_at, AdamW, AdamWConfig};
use super::rng::SplitMix;

/// Everything that decides the trained bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Adapter shape.
    pub lora: LoraConfig,
    /// Optimizer.
    pub optimizer: AdamWConfig,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Passes over the training examples.
    pub epochs: usize,
    /// Optimizer steps of linear warmup.
    pub warmup_steps: usize,
    /// Global gradient-norm limit (0: no clipping).
    pub max_grad_norm: f64,
    /// Validation loss every this many steps (and at the end).
    pub eval_every: usize,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
}

/// One line of the training log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Optimizer step (1-based) the line is about.
    pub step: usize,
    /// Mean training loss (nats per response token) of the step, if a training step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Validation loss, if measured at this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Learning rate used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Gradient norm before clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Tokens (padding included) processed in the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    /// Seconds since the run (or its resumption) started.
    pub elapsed_s: f64,
}

/// What a finished training run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Optimizer steps in all.
    pub steps: usize,
    /// The step this invocation started from (0, or a checkpoint's).
    pub resumed_from: usize,
    /// Training examples and validation examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub validation_examples: usize,
    /// Tokens processed by this invocation (padding included).
    pub tokens: usize,
    /// Seconds this invocation took.
    pub seconds: f64,
    /// Last training loss.
    pub final_loss: Option<f64>,
    /// Last validation loss.
    pub final_val_loss: Option<f64>,
    /// Validation loss before any training (the base model's).
    pub initial_val_loss: Option<f64>,
}

impl Report {
    /// True when the validation loss fell below the base model's (or there is no validation).
    pub fn improved(&self) -> bool {
        match (self.initial_val_loss, self.final_val_loss) {
            (Some(a), Some(b)) => b < a,
            _ => true,
        }
    }
}

/// Files the trainer keeps in its run folder.
pub mod files {
    /// The checkpoint (adapter, optimizer, step), replaced atomically.
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// JSON lines, one per step and one per validation.
    pub const LOG: &str = "train_log.jsonl";
}

/// A digest of the options and data that decide the result; a checkpoint made under others
/// is refused.
fn fingerprint(opts: &TrainOptions, train: &[Example], validation: &[Example]) -> String {
    let text = serde_json::to_string(&(opts, train, validation)).expect("serialisable");
    crate::provenance::sha256_hex(text.as_bytes())
}

/// Mean loss over `examples` (no dropout, no gradient), batched.
pub fn mean_loss(model: &BaseModel, adapters: Option<&Adapters>, examples: &[Example], batch: usize, pad: u32) -> Result<f64, TrainError> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].len(), i));
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in order.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
        let b = collate(&refs, pad);
        let (nll, k) = model.nll_value(&b, adapters)?;
        sum += nll;
        n += k;
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

struct Checkpoint {
    step: usize,
    adapters: Adapters,
    optimizer: AdamW,
}

fn save_checkpoint(dir: &RunDir, fp: &str, step: usize, adapters: &Adapters, opt: &AdamW) -> Result<(), TrainError> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (i, v) in adapters.vars().into_iter().enumerate() {
        tensors.push((format!("param.{i:05}"), v.as_tensor().clone()));
        tensors.push((format!("adam_m.{i:05}"), Tensor::from_slice(&opt.m[i], v.shape(), &Device::Cpu)?));
        tensors.push((format!("adam_v.{i:05}"), Tensor::from_slice(&opt.v[i], v.shape(), &Device::Cpu)?));
    }
    let meta = HashMap::from([
        ("kiln".to_string(), "train-checkpoint".to_string()),
        ("step".to_string(), step.to_string()),
        ("adam_steps".to_string(), opt.steps.to_string()),
        ("fingerprint".to_string(), fp.to_string()),
    ]);
    dir.write_atomic(files::CHECKPOINT, &safetensors_bytes(&tensors, Some(meta))?)?;
    Ok(())
}

fn load_checkpoint(dir: &RunDir, fp: &str, fresh: &Adapters, config: &AdamWConfig) -> Result<Option<Checkpoint>, TrainError> {
    let Some(bytes) = dir.read_optional(files::CHECKPOINT)? else { return Ok(None) };
    let path = dir.join(files::CHECKPOINT);
    let bad = |what: String| TrainError::Checkpoint { path: path.clone(), what };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("fingerprint").map(String::as_str) != Some(fp) {
        return Err(bad(
            "it was made with other training settings or data; use a new run folder, or delete the checkpoint to start over".into(),
        ));
    }
    let num = |k: &str| -> Result<u64, TrainError> {
        meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| bad(format!("metadata {k} is missing or not a number")))
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let read = |name: String, n: usize| -> Result<Vec<f32>, TrainError> {
        let t = st.tensor(&name).map_err(|_| bad(format!("missing tensor {name}")))?;
        let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if v.len() != n {
            return Err(bad(format!("{name} has {} values, expected {n}", v.len())));
        }
        Ok(v)
    };
    let adapters = fresh.clone();
    let vars = adapters.vars();
    let mut opt = AdamW::new(config.clone(), &vars);
    opt.steps = num("adam_steps")?;
    for (i, v) in vars.iter().enumerate() {
        let n = v.elem_count();
        v.set(&Tensor::from_vec(read(format!("param.{i:05}"), n)?, v.shape(), v.device())?)?;
        opt.m[i] = read(format!("adam_m.{i:05}"), n)?;
        opt.v[i] = read(format!("adam_v.{i:05}"), n)?;
    }
    Ok(Some(Checkpoint { step: num("step")? as usize, adapters, optimizer: opt }))
}

/// Read the log, keeping the lines of steps up to `step` (later ones belong to work lost to
/// an interruption and will be redone).
fn log_up_to(dir: &RunDir, step: usize) -> Result<Vec<LogLine>, TrainError> {
    let Some(bytes) = dir.read_optional(files::LOG)? else { return Ok(Vec::new()) };
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.lines().filter_map(|l| serde_json::from_str::<LogLine>(l).ok()).filter(|l| l.step <= step).collect())
}

fn write_log(dir: &RunDir, lines: &[LogLine]) -> Result<(), TrainError> {
    let mut s = String::new();
    for l in lines {
        s.push_str(&serde_json::to_string(l).expect("json"));
        s.push('\n');
    }
    dir.write_atomic(files::LOG, s.as_bytes())?;
    Ok(())
}

/// Progress callbacks: (steps done, steps in all, tokens per second).
pub type Progress<'a> = &'a dyn Fn(usize, usize, f64);

/// Train adapters on `train` (validation loss on `validation`), checkpointing into `dir`;
/// resumes from `dir`'s checkpoint when there is one. Returns the trained adapters, the log
/// and the report.
pub fn train(
    model: &BaseModel,
    train: &[Example],
    validation: &[Example],
    opts: &TrainOptions,
    pad: u32,
    dir: &RunDir,
    progress: Progress<'_>,
) -> Result<(Adapters, Vec<LogLine>, Report), TrainError> {
    if train.is_empty() {
        return Err(TrainError::Config("no training examples are left after the split and the length limit".into()));
    }
    let started = Instant::now();
    let fp = fingerprint(opts, train, validation);
    let fresh = Adapters::init(&model.cfg, &opts.lora, opts.seed)?.to_device(model.device())?;
    let (start, adapters, mut opt) = match load_checkpoint(dir, &fp, &fresh, &opts.optimizer)? {
        Some(c) => (c.step, c.adapters, c.optimizer),
        None => {
            let opt = AdamW::new(opts.optimizer.clone(), &fresh.vars());
            (0, fresh, opt)
        }
    };
    let micro = plan(train, opts.batch_size, opts.epochs, opts.seed);
    let steps: Vec<&[Vec<usize>]> = micro.chunks(opts.grad_accum.max(1)).collect();
    let total = steps.len();
    let mut log = log_up_to(dir, start)?;
    let initial_val_loss = match log.iter().find(|l| l.step == 0).and_then(|l| l.val_loss) {
        Some(v) => Some(v),
        None if !validation.is_empty() && start == 0 => {
            let v = mean_loss(model, None, validation, opts.batch_size, pad)?;
            log.push(LogLine { step: 0, loss: None, val_loss: Some(v), lr: None, grad_norm: None, tokens: None, elapsed_s: 0.0 });
            Some(v)
        }
        None => None,
    };
    let vars = adapters.vars();
    let mut tokens_done = 0usize;
    for (s, group) in steps.iter().enumerate().skip(start) {
        let step = s + 1;
        let targets: usize = group.iter().flat_map(|b| b.iter()).map(|&i| train[i].response.len()).sum();
        let mut grads: Vec<Vec<f32>> = vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        let (mut loss_sum, mut tokens) = (0f64, 0usize);
        for (k, b) in group.iter().enumerate() {
            let refs: Vec<&Example> = b.iter().map(|&i| &train[i]).collect();
            let batch = collate(&refs, pad);
            tokens += batch.ids.len();
            let dropout = (opts.lora.lora_dropout > 0.0)
                .then(|| Dropout { p: opts.lora.lora_dropout, seed: SplitMix::at(opts.seed, &[0xD80, step as u64, k as u64]).next_u64() });
            let (nll, _, g) = model.nll_backward(&batch, &adapters, dropout, 1.0 / targets.max(1) as f64)?;
            loss_sum += nll;
            for (acc, part) in grads.iter_mut().zip(g) {
                for (a, b) in acc.iter_mut().zip(part) {
                    *a += b;
                }
            }
        }
        let loss = loss_sum / targets.max(1) as f64;
        if !loss.is_finite() {
            return Err(TrainError::Diverged { step, what: format!("loss {loss}") });
        }
        let grad_norm = clip_global_norm(&mut grads, opts.max_grad_norm);
        if !grad_norm.is_finite() {
            return Err(TrainError::Diverged { step, what: format!("gradient norm {grad_norm}") });
        }
        let lr = lr_at(opts.optimizer.lr, s, opts.warmup_steps, total);
        opt.step(&vars, &grads, lr)?;
        tokens_done += tokens;
        let elapsed = started.elapsed().as_secs_f64();
        log.push(LogLine { step, loss: Some(loss), val_loss: None, lr: Some(lr), grad_norm: Some(grad_norm), tokens: Some(tokens), elapsed_s: elapsed });
        if !validation.is_empty() && (step % opts.eval_every.max(1) == 0 || step == total) {
            let v = mean_loss(model, Some(&adapters), validation, opts.batch_size, pad)?;
            log.push(LogLine { step, loss: None, val_loss: Some(v), lr: None, grad_norm: None, tokens: None, elapsed_s: started.elapsed().as_secs_f64() });
        }
        if step % opts.checkpoint_every.max(1) == 0 || step == total {
            // The log first: a kill between the two leaves a log ahead of the checkpoint,
            // which resuming trims.
            write_log(dir, &log)?;
            save_checkpoint(dir, &fp, step, &adapters, &opt)?;
        }
        progress(step, total, tokens_done as f64 / elapsed.max(1e-9));
    }
    if start >= total {
        write_log(dir, &log)?;
    }
    let report = Report {
        steps: total,
        resumed_from: start,
        train_examples: train.len(),
        validation_examples: validation.len(),
        tokens: tokens_done,
        seconds: started.elapsed().as_secs_f64(),
        final_loss: log.iter().rev().find_map(|l| l.loss),
        final_val_loss: log.iter().rev().find_map(|l| l.val_loss),
        initial_val_loss,
    };
    Ok((adapters, log, report))
}
