#!/usr/bin/env python3
"""PyTorch + peft peer for kiln's training benchmark (benches/train.rs).

LoRA training steps on the CPU, on the model transformers loads from the same GGUF
(dequantized to f32): adapters on the seven projections, AdamW, gradient clipping, loss on the
positions after the prompt only - the work of one kiln training step, on the batch the bench
sends. The request on stdin:

    {"ids": [[token ids] x batch], "prompt_len": P, "r": 16, "lora_alpha": 32,
     "lora_dropout": 0.05, "lr": 2e-4, "max_grad_norm": 1.0, "warmup": 1, "steps": 3}

Prints one JSON object: tokens/s over the measured steps (after the warm-up ones), each
step's seconds and loss, and peak resident memory (getrusage) after loading and during
training; the high-water mark is reset between the two (/proc/self/clear_refs), so the second
is training's own.

Usage: train_peft.py MODEL.gguf [--threads 2] < request.json
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak():
    # Linux: "5" resets the process's peak resident set size to the current one.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    req = json.load(sys.stdin)
    path = os.path.abspath(args.gguf)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    model.config.use_cache = False
    config = LoraConfig(
        r=req["r"],
        lora_alpha=req["lora_alpha"],
        lora_dropout=req["lora_dropout"],
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if req.get("checkpointing"):
        # Activation checkpointing, as kiln's trainer does: recompute each layer in backward.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    load_s = time.perf_counter() - t0
    load_peak = peak_mib()

    ids = torch.tensor(req["ids"], dtype=torch.long)
    labels = ids.clone()
    labels[:, : req["prompt_len"]] = -100
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=req["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    reset_peak()
    times, losses = [], []
    for step in range(req["warmup"] + req["steps"]):
        t = time.perf_counter()
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, req["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(float(out.loss))
    measured = times[req["warmup"]:]
    tokens = ids.numel() * len(measured)
    json.dump(
        {
            "tokens_per_s": tokens / sum(measured),
            "step_s": times,
            "loss": losses,
            "load_s": load_s,
            "load_peak_mib": load_peak,
            "train_peak_mib": peak_mib(),
            "trainable_params": sum(p.numel() for p in params),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "checkpointing": bool(req.get("checkpointing")),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
