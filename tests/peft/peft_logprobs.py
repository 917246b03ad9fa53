"""Next-token log-probabilities from Hugging Face transformers + peft, the reference client of
kiln's PEFT adapters.

    python tests/peft/peft_logprobs.py MODEL.gguf [--adapter NAME=DIR ...] [--top-k K] < request.json

The request is {"sequences": [[token ids], ...]}. transformers dequantizes the GGUF to f32 (and
undoes llama.cpp's reordering of llama's q/k rows); peft loads each adapter folder, as written
by kiln's `save_peft`, under its NAME. The arms are "base" (every adapter switched off) and one
per adapter. At every position of every sequence the answer reports one set of tokens - each
arm's top-k next tokens and the token that follows in the sequence - with every arm's
log-probability of each, so that two arms can be compared token by token:

    {"arms": ["base", NAME, ...],
     "sequences": [[{"tokens": [id, ...], "lp": {"base": [lp, ...], NAME: [...]}}, ...], ...]}

All arms come from one process: loading and dequantizing the GGUF is most of the run time.
"""

import argparse
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM


def log_probs(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", help="the base model's GGUF file")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="a PEFT adapter folder and the arm's name")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seqs = json.load(sys.stdin)["sequences"]
    adapters = [a.split("=", 1) for a in args.adapter]
    if any(len(a) != 2 or a[0] == "base" for a in adapters):
        ap.error("--adapter takes NAME=DIR, with a NAME other than base")
    path = os.path.abspath(args.gguf)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    model.eval()
    arms = {}
    if adapters:
        from peft import PeftModel

        (first, first_dir), rest = adapters[0], adapters[1:]
        model = PeftModel.from_pretrained(model, first_dir, adapter_name=first)
        for name, folder in rest:
            model.load_adapter(folder, adapter_name=name)
        model.eval()
        for name, _ in adapters:
            model.set_adapter(name)
            arms[name] = [log_probs(model, s) for s in seqs]
        with model.disable_adapter():
            arms["base"] = [log_probs(model, s) for s in seqs]
    else:
        arms["base"] = [log_probs(model, s) for s in seqs]
    names = ["base"] + [n for n, _ in adapters]
    out = []
    for i, ids in enumerate(seqs):
        rows = []
        for p in range(len(ids)):
            tokens = set()
            for n in names:
                tokens.update(arms[n][i][p].topk(args.top_k).indices.tolist())
            if p + 1 < len(ids):
                tokens.add(ids[p + 1])
            tokens = sorted(tokens)
            rows.append({"tokens": tokens, "lp": {n: arms[n][i][p, tokens].tolist() for n in names}})
        out.append(rows)
    json.dump({"arms": names, "sequences": out}, sys.stdout)


if __name__ == "__main__":
    main()
