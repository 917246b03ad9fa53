#!/usr/bin/env bash
# kiln on the GPU machine (no Rust toolchain there): the CUDA build against the CPU build of
# the same binary on the same GGUF, then throughput. Made for the lent device (see
# scripts/build-cuda.sh for the binary):
#
#   here:   scripts/build-cuda.sh && strip -o /tmp/kiln target/cuda/release/kiln \
#             && xz -T2 -6 -c /tmp/kiln > .cuda-carry/kiln.xz
#           split -b 60M ~/.cache/kiln/models/gemma-3-270m-q4_k_m.gguf .gguf/part.   (then one
#           part per call: the device takes 64 MiB a call)
#   there:  bash benches/gpu/run.sh check|speed|profile|hf [batch sizes...] | pilot [devices...]
#           (pilot needs plugins/dist/*.wasm carried too)
#
# Parts are gathered into /tmp/kiln-gguf-parts (kept between calls while the machine is
# held) until the file is whole and its sha256 is the published one.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
want=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
kiln=/tmp/kiln-cuda
if [ -f .cuda-carry/kiln.xz ]; then xz -dc .cuda-carry/kiln.xz >"$kiln"; chmod +x "$kiln"; fi
store="${KILN_GGUF_STORE:-/tmp/kiln-gguf-parts}"
mkdir -p "$store"
for p in .gguf/part.*; do
    [ -f "$p" ] && cp "$p" "$store/"
done
gguf="$store/gemma-3-270m-q4_k_m.gguf"
if [ ! -f "$gguf" ]; then
    cat "$store"/part.* >"$gguf.tmp"
    if [ "$(sha256sum "$gguf.tmp" | cut -d' ' -f1)" = "$want" ]; then
        mv "$gguf.tmp" "$gguf"
    else
        rm -f "$gguf.tmp"
        echo "gpu: have parts $(ls "$store" | grep part | tr '\n' ' ')- the GGUF is not whole yet"
        exit 0
    fi
fi
eval "$(bash scripts/cuda-libs.sh)"
out="${OUT:-/tmp/gpu-out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

prompts() { # N: N prompts of mixed lengths (about 40 to 160 tokens)
    python3 - "$1" <<'PY'
import json, sys
n = int(sys.argv[1])
topics = ["the sea", "a mountain village", "the history of bread", "how bridges stand", "a letter to a friend",
          "the rules of chess", "why the sky is blue", "a recipe for soup", "the life of bees", "an old clock"]
for i in range(n):
    t = topics[i % len(topics)]
    body = " ".join(f"Sentence {k} says something about {t} and what people think of it." for k in range(2 + (i * 7) % 12))
    print(json.dumps({"id": f"r{i}", "prompt": f"Instruction: Write about {t}.\n{body}\nResponse:", "stop": [], "max_tokens": 128, "seed": i}))
PY
}

on_both() { # COMMAND NAME BATCH: `kiln model COMMAND` on $out/NAME.jsonl on the CPU and on CUDA
    for d in cpu cuda; do
        "$kiln" model "$1" --model "$gguf" --device $d --batch "$3" --input "$out/$2.jsonl" --stats >"$out/$2-$d.jsonl" 2>"$out/$2-$d.err" || { cat "$out/$2-$d.err"; exit 1; }
        tail -1 "$out/$2-$d.err"
    done
}

case "${1:-check}" in
check)
    # Greedy continuations and log-probs, CPU build path vs CUDA, same binary and file.
    prompts 12 | python3 -c 'import sys,json
for l in sys.stdin:
    r=json.loads(l); r["max_tokens"]=32; print(json.dumps(r))' >"$out/greedy.jsonl"
    on_both generate greedy 16
    python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
a = [json.loads(l) for l in open(f"{out}/greedy-cpu.jsonl")]
b = [json.loads(l) for l in open(f"{out}/greedy-cuda.jsonl")]
same = []
for x, y in zip(a, b):
    n = 0
    for s, t in zip(x["tokens"], y["tokens"]):
        if s != t: break
        n += 1
    same.append(n)
print("greedy tokens equal before the first difference, per prompt:", same, "of", [len(x["tokens"]) for x in a])
PY
    python3 - >"$out/score.jsonl" <<'PY'
import json
for i in range(64):
    q = f"Question {i}: is the following instruction clear and useful? 'Write about topic number {i} in {i % 5 + 2} sentences.'\nAnswer A for yes, B for no.\nAnswer:"
    print(json.dumps({"id": f"s{i}", "prompt": q, "candidates": [" A", " B"]}))
PY
    on_both score score 64
    python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
a = [json.loads(l) for l in open(f"{out}/score-cpu.jsonl")]
b = [json.loads(l) for l in open(f"{out}/score-cuda.jsonl")]
d = [abs(p - q) for x, y in zip(a, b) for p, q in zip(x["logprobs"], y["logprobs"])]
agree = sum((x["logprobs"][0] > x["logprobs"][1]) == (y["logprobs"][0] > y["logprobs"][1]) for x, y in zip(a, b))
print(f"A/B log-probs, CPU vs CUDA: mean |diff| {sum(d)/len(d):.4f}, max {max(d):.4f} nats; same verdict {agree}/{len(a)}")
PY
    ;;
speed)
    shift
    for b in "${@:-1 16 64 256}"; do
        n=$(( b < 4 ? 4 : b ))
        prompts "$n" >"$out/speed-$b.jsonl"
        "$kiln" model generate --model "$gguf" --device cuda --batch "$b" --temperature 0.8 --top-p 0.95 --top-k 40 --input "$out/speed-$b.jsonl" --stats >/dev/null 2>"$out/speed-$b.err" || { cat "$out/speed-$b.err"; exit 1; }
        tail -1 "$out/speed-$b.err"
    done
    # A/B scoring: 64 judging prompts of about 256 tokens, one pass.
    python3 - >"$out/score-speed.jsonl" <<'PY'
import json
for i in range(64):
    body = " ".join(f"Line {k} of sample {i} describes a step of the task in plain words." for k in range(17))
    print(json.dumps({"id": f"s{i}", "prompt": f"Instruction: {body}\nIs this response helpful? Answer A or B.\nAnswer:", "candidates": [" A", " B"]}))
PY
    "$kiln" model score --model "$gguf" --device cuda --batch 64 --input "$out/score-speed.jsonl" --stats >/dev/null 2>"$out/score-speed.err" || { cat "$out/score-speed.err"; exit 1; }
    tail -1 "$out/score-speed.err"
    ;;
profile)
    # Where the time goes, per phase (each phase waits for the device, so totals run slower).
    shift
    for b in "${@:-16 256}"; do
        prompts "$b" >"$out/prof-$b.jsonl"
        "$kiln" model generate --model "$gguf" --device cuda --batch "$b" --temperature 0.8 --top-p 0.95 --top-k 40 --input "$out/prof-$b.jsonl" --stats --profile >/dev/null 2>"$out/prof-$b.err" || { cat "$out/prof-$b.err"; exit 1; }
        tail -1 "$out/prof-$b.err"
    done
    if [ -f "$out/score-speed.jsonl" ]; then
        "$kiln" model score --model "$gguf" --device cuda --batch 64 --input "$out/score-speed.jsonl" --stats --profile >/dev/null 2>"$out/prof-score.err" || { cat "$out/prof-score.err"; exit 1; }
        tail -1 "$out/prof-score.err"
    fi
    ;;
pilot)
    # The README's pilot (configs/pilot.toml, 50 examples) end to end, the model on each
    # device given (default: cuda), the plugins (plugins/dist, carried) on the CPU.
    shift
    for d in "${@:-cuda}"; do
        rm -rf "/tmp/kiln-pilot-$d"
        code=0
        "$kiln" pilot --config configs/pilot.toml --model "$gguf" --device "$d" --artifacts-dir "/tmp/kiln-pilot-$d" --quiet >"$out/pilot-$d.txt" 2>&1 || code=$?
        echo "pilot on $d: exit $code"
        grep -E "planned|time:|gate:" "$out/pilot-$d.txt" || tail -5 "$out/pilot-$d.txt"
    done
    ;;
hf)
    shift
    python3 benches/gpu/hf_peer.py generate "${@:-1 16 64 256}"
    python3 benches/gpu/hf_peer.py score 64
    ;;
esac
