#!/usr/bin/env python3
"""A GGUF of a larger model's shape with random weights, for throughput runs on the GPU
machine (throughput does not depend on the weights' values): gemma3-1b's shape (26 layers,
hidden 1152, 4 heads of 256, 1 KV head, FFN 6912, sliding window 512 on five layers of six,
vocabulary 262 144; about 1.0 billion parameters), its projections and embedding in Q8_0 (the
hidden size is not a multiple of 256, so K-quants do not apply), norms in F32, the tokenizer
copied from SRC (the gemma-3-270m GGUF: the same vocabulary). Needs numpy and the `gguf`
package: when it is not installed, a wheel of it in .cuda-carry/ (`pip download gguf -d
.cuda-carry`, carried to a GPU machine that has no network) is put on sys.path.

    python3 benches/gpu/random_gguf.py SRC.gguf OUT.gguf
"""
import glob
import os
import sys

try:
    import gguf
except ImportError:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    sys.path[:0] = glob.glob(os.path.join(root, ".cuda-carry", "gguf-*.whl"))
    import gguf
import numpy as np

SHAPE = dict(layers=26, hidden=1152, heads=4, kv_heads=1, head_dim=256, ffn=6912, window=512, pattern=6)


def q8_0(rows, cols, rng, std=0.02):
    """Random Q8_0 rows: per 32 values an f16 scale and 32 int8, about N(0, std) in effect."""
    assert cols % 32 == 0
    blocks = rows * cols // 32
    out = np.empty((blocks, 34), dtype=np.uint8)
    out[:, :2] = np.full(blocks, std / 73.0, dtype=np.float16).view(np.uint8).reshape(blocks, 2)
    out[:, 2:] = rng.integers(-127, 128, size=(blocks, 32), dtype=np.int8).view(np.uint8)
    return out.reshape(rows, cols // 32 * 34)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    s = SHAPE
    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst + ".tmp", "gemma3")
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        t = field.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                vals = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                vals = [field.parts[i].tolist()[0] for i in field.data]
            w.add_array(name, vals) if sub != gguf.GGUFValueType.STRING else w.add_array(name, vals)
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            w.add_key_value(name, field.parts[field.data[0]].tolist()[0], t)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    w.add_name("random gemma3-1b shape")
    w.add_context_length(32768)
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(s["window"])
    rng = np.random.default_rng(0)
    q8 = gguf.GGMLQuantizationType.Q8_0

    def norm(n):
        return np.ones(n, dtype=np.float32)

    h, q, kv = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    w.add_tensor("token_embd.weight", q8_0(vocab, h, rng), raw_dtype=q8)
    w.add_tensor("output_norm.weight", norm(h))
    for l in range(s["layers"]):
        p = f"blk.{l}."
        for n, (rows, cols) in {"attn_q": (q, h), "attn_k": (kv, h), "attn_v": (kv, h), "attn_output": (h, q),
                                "ffn_gate": (s["ffn"], h), "ffn_up": (s["ffn"], h), "ffn_down": (h, s["ffn"])}.items():
            w.add_tensor(p + n + ".weight", q8_0(rows, cols, rng), raw_dtype=q8)
        for n in ["attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm"]:
            w.add_tensor(p + n + ".weight", norm(h))
        w.add_tensor(p + "attn_q_norm.weight", norm(s["head_dim"]))
        w.add_tensor(p + "attn_k_norm.weight", norm(s["head_dim"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(dst + ".tmp", dst)
    params = vocab * h + s["layers"] * (2 * q * h + 2 * kv * h + 3 * s["ffn"] * h)
    print(f"random_gguf: {dst} ({os.path.getsize(dst) / 2**30:.2f} GiB, {params / 1e9:.2f} B parameters)")


if __name__ == "__main__":
    main()
