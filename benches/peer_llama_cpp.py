#!/usr/bin/env python3
"""llama.cpp peer for kiln's engine benchmark (benches/engine.rs).

Measures, through llama-cpp-python's low-level API on the same GGUF and the same thread
count: prompt processing of 128 and 512 tokens, greedy decode at batch 1, aggregate decode
at batch 16 and 64 (one llama_decode per step with one token for each of N sequences),
and single-token A/B scoring of 64 judging prompts (prompt prefill, last-token logits).
The workload mirrors engine.rs: same texts, same token counts, same step counts.

Prints one JSON object (tokens/s; score = prompts/s).
Usage: peer_llama_cpp.py MODEL.gguf [--threads 2]
"""
import ctypes
import json
import sys
import time

import llama_cpp as L
import numpy as np


def text(i):
    topics = ["rivers of Europe", "the history of bread", "how bridges stand", "birds that migrate",
              "the first computers", "tides and the moon", "coffee farming", "glass making"]
    t = (f"Chapter {i}. This chapter is about {topics[i % len(topics)]}. It begins with a short account of where the idea came from, who worked on it, "
         "and why it mattered to the people of the time. Then it turns to the details: the materials, the methods, the mistakes and "
         "the lessons that were learned along the way. Finally it asks what remains to be discovered, and why the question is still "
         "worth asking today, in a world that has changed so much since the story began. ")
    return t * 4


def main():
    path = sys.argv[1]
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(path.encode(), mp)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    cp = L.llama_context_default_params()
    cp.n_ctx = 8192
    cp.n_batch = 2048
    cp.n_ubatch = 512
    cp.n_seq_max = 64
    cp.n_threads = threads
    cp.n_threads_batch = threads
    cp.kv_unified = True
    ctx = L.llama_init_from_model(model, cp)
    mem = L.llama_get_memory(ctx)
    add_bos = bool(L.llama_vocab_get_add_bos(vocab))

    def tok(s):
        b = s.encode()
        buf = (L.llama_token * (len(b) + 8))()
        n = L.llama_tokenize(vocab, b, len(b), buf, len(buf), add_bos, False)
        return list(buf[:n])

    batch = L.llama_batch_init(4096, 0, 64)

    def decode(items):
        """items: list of (seq, pos0, tokens, want_last); returns the batch index of each
        wanted row (what llama_get_logits_ith takes)."""
        batch.n_tokens = 0
        rows = []
        for seq, pos0, toks, want in items:
            for j, t in enumerate(toks):
                k = batch.n_tokens
                batch.token[k] = t
                batch.pos[k] = pos0 + j
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = seq
                batch.logits[k] = 1 if (want and j == len(toks) - 1) else 0
                if batch.logits[k]:
                    rows.append(k)
                batch.n_tokens += 1
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return rows

    def last_logits(i):
        p = L.llama_get_logits_ith(ctx, i)
        return np.ctypeslib.as_array(p, shape=(n_vocab,))

    out = {}
    for n, key in [(128, "prompt_128"), (512, "prompt_512")]:
        ids = tok(text(0))[:n]
        best = 1e9
        for _ in range(3):
            L.llama_memory_clear(mem, True)
            t = time.perf_counter()
            decode([(0, 0, ids, True)])
            best = min(best, time.perf_counter() - t)
        out[key] = len(ids) / best

    for nb, steps, key in [(1, 64, "decode_1"), (16, 32, "decode_16"), (64, 16, "decode_64")]:
        L.llama_memory_clear(mem, True)
        prompts = [tok(text(i))[:32] for i in range(nb)]
        rows = decode([(i, 0, p, True) for i, p in enumerate(prompts)])
        last = [int(np.argmax(last_logits(r))) for r in rows]
        pos = [len(p) for p in prompts]
        t = time.perf_counter()
        for _ in range(steps):
            rows = decode([(i, pos[i], [last[i]], True) for i in range(nb)])
            last = [int(np.argmax(last_logits(r))) for r in rows]
            pos = [p + 1 for p in pos]
        out[key] = nb * steps / (time.perf_counter() - t)

    judge = [tok(text(i)[:300] + "\nIs the text above well written? Answer A for yes or B for no.\nAnswer:") for i in range(64)]
    L.llama_memory_clear(mem, True)
    t = time.perf_counter()
    for start in range(0, 64, 16):
        L.llama_memory_clear(mem, True)
        group = judge[start:start + 16]
        rows = decode([(i, 0, p, True) for i, p in enumerate(group)])
        for r in rows:
            _ = last_logits(r)
    out["score_64"] = 64 / (time.perf_counter() - t)

    L.llama_batch_free(batch)
    L.llama_free(ctx)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
