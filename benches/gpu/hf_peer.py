"""The peer of benches/gpu/run.sh: Hugging Face transformers on the same GPU, gemma-3-270m's
shape (Gemma3TextConfig as in the GGUF: 18 layers, hidden 640, 4 heads of 256, 1 KV head,
FFN 2048, vocabulary 262 144, sliding window 512 on five layers of six) in bf16 with random
weights (throughput does not depend on the weights' values).

    python3 benches/gpu/hf_peer.py generate 1 16 64 256   # 128-token prompts, 128 sampled tokens
    python3 benches/gpu/hf_peer.py score 64               # one forward of 64 x 256 tokens

Prints one JSON line per measurement, as kiln's --stats does.
"""
import json
import sys
import time

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig


def model():
    cfg = Gemma3TextConfig(
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
        rope_theta=1_000_000.0, max_position_embeddings=32768, query_pre_attn_scalar=256,
        layer_types=["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 5 + ["full_attention"]
        + ["sliding_attention"] * 5 + ["full_attention"],
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


if __name__ == "__main__":
    what, sizes = sys.argv[1], [int(x) for x in sys.argv[2:]]
    m = model()
    for b in sizes:
        (generate if what == "generate" else score)(m, b)
