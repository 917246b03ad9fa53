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
#           | train [batch sizes...] | reference [scale count]
#           (KILN_SHAPE=1b before any of check|speed|profile|hf|train: gemma3-1b's shape, random)
#           (pilot needs plugins/dist/*.wasm carried too; train needs the training bench built
#           for CUDA: scripts/build-cuda.sh --bench, carried as .cuda-carry/train-bench.xz)
#
# Parts are gathered into /tmp/kiln-gguf-parts (kept between calls while the machine is
# held) until the file is whole and its sha256 is the published one.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
want=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
kiln=/tmp/kiln-cuda
if [ -f .cuda-carry/kiln.xz ]; then xz -dc .cuda-carry/kiln.xz >"$kiln"; chmod +x "$kiln"; fi
bench=/tmp/kiln-train-bench
if [ -f .cuda-carry/train-bench.xz ]; then xz -dc .cuda-carry/train-bench.xz >"$bench"; chmod +x "$bench"; fi
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
# KILN_SHAPE=1b: the same runs on gemma3-1b's shape with random weights (random_gguf.py; the
# peer builds the same shape), kept in the store while the machine is held.
if [ "${KILN_SHAPE:-270m}" = 1b ]; then
    big="$store/gemma3-1b-random-q8_0.gguf"
    [ -f "$big" ] || python3 benches/gpu/random_gguf.py "$gguf" "$big"
    gguf="$big"
fi
export KILN_SHAPE="${KILN_SHAPE:-270m}"
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
train)
    # QLoRA steps (benches/train.rs, kiln's side) against peft LoRA on the bf16 base
    # (hf_peer.py train), batch x 256 tokens, r 16 on all seven projections.
    shift
    sizes="${*:-8 32}"
    for b in $sizes; do
        "$bench" --side kiln --device cuda --model "$gguf" --batch "$b" --steps 5 --warmup 2 >"$out/train-kiln-$b.json"
        cat "$out/train-kiln-$b.json"
    done
    # Where a step's time goes (each phase waits for the device), at the first batch size.
    "$bench" --side kiln --device cuda --model "$gguf" --batch "${sizes%% *}" --steps 2 --warmup 1 --profile \
        | python3 -c 'import json, sys; f = json.load(sys.stdin); print(json.dumps({"profile_batch": f["batch"], "step_s": f["step_s"], "phases": {k: round(v["seconds"], 4) for k, v in f["phases"].items()}}))'
    python3 benches/gpu/hf_peer.py train $sizes | tee "$out/train-hf.jsonl"
    python3 - "$out" $sizes <<'PY'
import json, sys
out, sizes = sys.argv[1], [int(x) for x in sys.argv[2:]]
hf = [json.loads(l) for l in open(f"{out}/train-hf.jsonl")]
print(f"{'batch':>5} {'peer':>10} {'kiln tok/s':>11} {'peer tok/s':>11} {'ratio':>6} {'kiln MiB':>9} {'peer alloc':>10} {'peer resv':>10} {'mem ratio':>9}")
for b in sizes:
    k = json.load(open(f"{out}/train-kiln-{b}.json"))
    for p in (x for x in hf if x["batch"] == b):
        name = "peft+ckpt" if p["checkpointing"] else "peft"
        print(f"{b:>5} {name:>10} {k['tokens_per_s']:>11.0f} {p['tokens_per_second']:>11.0f} {k['tokens_per_s']/p['tokens_per_second']:>5.2f}x"
              f" {k['device_peak_mib']:>9.0f} {p['peak_allocated_mib']:>10.0f} {p['peak_reserved_mib']:>10.0f} {k['device_peak_mib']/p['peak_allocated_mib']:>8.2f}x")
PY
    ;;
reference)
    # The reference workload, every stage's model on the GPU, timed: the 50-example pilot, a
    # scale slice of COUNT examples (default 1000; the note extrapolates to 15 000), the
    # 200-item test set, QLoRA SFT on the slice (configs/train.toml) and the paired eval of the
    # base against the adapter (configs/eval-adapter.toml). Plugins (plugins/dist, carried) run
    # on the CPU.
    count="${2:-1000}"
    export KILN_MODEL_DIR="$store"
    # The cache's marker (sha256 and size), so that the configs' model name finds the file.
    echo "$want $(stat -c %s "$gguf")" >"$gguf.sha256"
    for r in pilot scale testset train eval-adapter; do rm -rf "artifacts/$r"; done
    stage() { # NAME COMMAND...: run, time, keep the summary
        local name="$1"; shift
        local t0="$EPOCHREALTIME" code=0
        "$kiln" "$@" --quiet >"$out/ref-$name.txt" 2>&1 || code=$?
        printf '%-8s exit %s  %7.1f s\n' "$name" "$code" "$(awk "BEGIN { print $EPOCHREALTIME - $t0 }")"
        grep -E "planned|time:|gate:|examples:|steps|tok/s|accepted|items|verdict|p =|p-value|wins" "$out/ref-$name.txt" | head -12 || true
        if [ "$code" = 1 ]; then tail -20 "$out/ref-$name.txt"; exit 1; fi
    }
    stage pilot pilot --config configs/pilot.toml --device cuda
    stage scale scale --config configs/scale.toml --count "$count" --shards 1 --device cuda
    stage testset testset --config configs/testset.toml --dataset artifacts/scale --device cuda
    stage train train --config configs/train.toml --dataset artifacts/scale --test-set artifacts/testset --device cuda
    stage eval eval --config configs/eval-adapter.toml --device cuda
    python3 - <<'PY'
import json
for r in ["pilot", "scale", "testset", "train", "eval-adapter"]:
    try:
        m = json.load(open(f"artifacts/{r}/manifest.json"))
    except OSError:
        continue
    print(r, "counts", m.get("counts"), "gate", m.get("gate", {}).get("pass"))
t = json.load(open("artifacts/train/train.json"))
print("train report", json.dumps(t["report"]), "device_memory", t.get("device_memory"))
PY
    ;;
hf)
    shift
    python3 benches/gpu/hf_peer.py generate "${@:-1 16 64 256}"
    python3 benches/gpu/hf_peer.py score 64
    ;;
esac
