#!/usr/bin/env bash
# How the wall time of a fixed-size scale falls with concurrent shard processes on this machine.
#
#     benches/scale_concurrency.sh [PILOT_DIR] [COUNT] [SHARDS]
#
# Runs the same scale (COUNT samples in SHARDS shards, default 24 in 4, from PILOT_DIR, default
# artifacts/pilot, whose gate must have passed) three times in fresh run folders under
# target/bench-scale: shards one after another in one process (1), and as separate processes
# two at a time (2) and all at once (SHARDS); then merges each and checks that the three merged
# datasets are byte-identical. Prints wall times, samples per minute in all and per process.
# Uses the release binary (cargo build --release first).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kiln="$root/target/release/kiln"
pilot="$(realpath "${1:-$root/artifacts/pilot}")"
count="${2:-24}"
shards="${3:-4}"
out="$root/target/bench-scale"
rm -rf "$out"
mkdir -p "$out"
[ -x "$kiln" ] || { echo "build first: cargo build --release" >&2; exit 1; }

run_shards() { # run_id concurrency
    local id="$1" k="$2" i
    local pids=()
    for ((i = 0; i < shards; i++)); do
        "$kiln" scale --quiet --pilot "$pilot" --count "$count" --shards "$shards" --run-id "$id" \
            --artifacts-dir "$out" --shard "$i/$shards" >"$out/$id-$i.log" 2>&1 &
        pids+=($!)
        if (( ${#pids[@]} >= k )); then
            wait "${pids[0]}"
            pids=("${pids[@]:1}")
        fi
    done
    for p in "${pids[@]}"; do wait "$p"; done
}

declare -A wall
for k in 1 2 "$shards"; do
    id="c$k"
    start=$(date +%s.%N)
    if [ "$k" = 1 ]; then
        "$kiln" scale --quiet --pilot "$pilot" --count "$count" --shards "$shards" --run-id "$id" --artifacts-dir "$out" >"$out/$id.log" 2>&1 || true
    else
        run_shards "$id" "$k"
        "$kiln" scale --quiet --pilot "$pilot" --count "$count" --shards "$shards" --run-id "$id" --artifacts-dir "$out" --merge >"$out/$id.log" 2>&1 || true
    fi
    end=$(date +%s.%N)
    wall[$k]=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
    [ -f "$out/$id/manifest.json" ] || { echo "scale $id did not finish: see $out/$id*.log" >&2; exit 1; }
done
for k in 2 "$shards"; do
    cmp -s "$out/c1/dataset.jsonl" "$out/c$k/dataset.jsonl" || { echo "merged datasets differ (1 vs $k processes)" >&2; exit 1; }
done
echo "scale of $count samples in $shards shards from $pilot ($(nproc) CPUs)"
printf "%-22s %10s %14s %22s\n" "shard processes" "wall s" "samples/min" "samples/min/process"
for k in 1 2 "$shards"; do
    w="${wall[$k]}"
    awk -v k="$k" -v w="$w" -v n="$count" 'BEGIN { printf "%-22s %10.1f %14.2f %22.2f\n", k " at a time", w, n * 60 / w, n * 60 / w / k }'
done
echo "merged datasets byte-identical across the three runs"
