"""The peer of benches/gpu/run.sh: Hugging Face transformers on the same GPU, gemma-3-270m's
shape (Gemma3TextConfig as in the GGUF: 18 layers, hidden 640, 4 heads of 256, 1 KV head,
FFN 2048, vocabulary 262 144, sliding window 512 on five layers of six; with KILN_SHAPE=1b
gemma3-1b's: 26 layers, hidden 1152, FFN 6912) in bf16 with random weights (throughput does
not depend on the weights' values).

    python3 benches/gpu/hf_peer.py generate 1 16 64 256   # 128-token prompts, 128 sampled tokens
    python3 benches/gpu/hf_peer.py score 64               # one forward of 64 x 256 tokens
    python3 benches/gpu/hf_peer.py train 8 32             # peft LoRA steps, batch x 256 tokens

train: LoRA through peft (r 16, alpha 32, dropout 0.05, all seven projections) on the bf16
base (bitsandbytes is not on the device, so LoRA, not 4-bit QLoRA), the work of one kiln
training step - forward, loss on the tokens after a 32-token prompt, backward, gradient-norm
clipping at 1.0, AdamW - once as it comes and once with gradient checkpointing (kiln's
trainer checkpoints every block). Peak memory is torch's high-water mark of allocated
tensors and of reserved memory (allocated plus its cache), from after loading.

Prints one JSON line per measurement, as kiln's --stats does.
"""
import json
import os
import sys
import time

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig


# KILN_SHAPE (run.sh): 270m, or 1b - gemma3-1b's shape, as benches/gpu/random_gguf.py writes it.
SHAPES = {"270m": dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18),
          "1b": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26)}


def model():
    shape = SHAPES[os.environ.get("KILN_SHAPE", "270m")]
    layers = shape["num_hidden_layers"]
    cfg = Gemma3TextConfig(
        vocab_size=262144, num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
        rope_theta=1_000_000.0, max_position_embeddings=32768, query_pre_attn_scalar=256,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)],
        **shape,
    )
    torch.manual_seed(0)
    m = Gemma3ForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    return m


def generate(m, batch, prompt=128, new=128):
    g = torch.Generator(device="cuda").manual_seed(batch)
    ids = torch.randint(10, 262000, (batch, prompt), device="cuda", generator=g)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=0.8, top_p=0.95, top_k=40, pad_token_id=0)
    with torch.inference_mode():
        m.generate(ids[:, :16], max_new_tokens=4, do_sample=True, pad_token_id=0)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = m.generate(ids, **kw)
        torch.cuda.synchronize()
        secs = time.perf_counter() - t
    made = (out.shape[1] - prompt) * batch
    print(json.dumps({"stats": "hf-generate", "batch": batch, "sequences": batch, "prompt_tokens": prompt * batch,
                      "new_tokens": made, "seconds": secs, "new_tokens_per_second": made / secs}), flush=True)


def score(m, batch, length=256, reps=10):
    ids = torch.randint(10, 262000, (batch, length), device="cuda")
    with torch.inference_mode():
        for _ in range(2):
            m(ids).logits[:, -1, :2].float().log_softmax(-1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            m(ids, logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
        torch.cuda.synchronize()
        secs = (time.perf_counter() - t) / reps
    print(json.dumps({"stats": "hf-score", "batch": batch, "sequences": batch, "prompt_tokens": batch * length,
                      "seconds": secs, "sequences_per_second": batch / secs}), flush=True)


def train(batch, checkpointing, seq=256, prompt=32, warmup=2, steps=5):
    from peft import LoraConfig, get_peft_model
    m = model().train()
    m.config.use_cache = False
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    m = get_peft_model(m, cfg)
    if checkpointing:
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.enable_input_require_grads()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    g = torch.Generator(device="cuda").manual_seed(7)
    ids = torch.randint(1000, 200000, (batch, seq), device="cuda", generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(warmup + steps):
        t = time.perf_counter()
        loss = m(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    secs = sum(times[warmup:])
    print(json.dumps({"stats": "hf-train", "batch": batch, "seq": seq, "checkpointing": checkpointing,
                      "tokens_per_second": batch * seq * steps / secs, "step_s": times, "loss": losses,
                      "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                      "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
                      "trainable_params": sum(p.numel() for p in params),
                      "adapter_dtype": str(params[0].dtype), "attn_implementation": m.config._attn_implementation}), flush=True)
    del m, opt
    torch.cuda.empty_cache()


if __name__ == "__main__":
    what, sizes = sys.argv[1], [int(x) for x in sys.argv[2:]]
    if what == "train":
        for b in sizes:
            for ckpt in (False, True):
                train(b, ckpt)
        sys.exit(0)
    m = model()
    for b in sizes:
        (generate if what == "generate" else score)(m, b)
