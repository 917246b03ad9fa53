#!/usr/bin/env bash
# The Python environment of the PEFT compatibility test (tests/all/peft.rs) and of the training
# benchmark's peer (benches/train_peft.py): torch, transformers, peft and gguf, pinned in
# tests/peft/requirements.txt, in a venv at $KILN_PEFT_VENV (default .venv-peft in the
# repository root). Idempotent: a venv already made from the same requirements is left alone.
#
# torch comes from the package registry as is: its Linux wheel links the CUDA libraries (about
# 3 GiB installed) because there is no CPU-only build there; it runs on the CPU all the same.
# The requirements file pins the whole dependency closure and is installed with --no-deps, so
# that nothing the test never loads (triton, 1 GiB) is downloaded.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${KILN_PEFT_VENV:-$root/.venv-peft}"
req="$root/tests/peft/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "setup-peft: $venv is up to date"
    exit 0
fi

python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" || {
        echo "setup-peft: '$python -m venv' failed; on Debian, apt-get install python3-venv" >&2
        exit 1
    }
fi
# torch and its CUDA wheels are several GiB: no pip cache (it would double the disk used), long
# timeouts and retries per file, and the whole install tried again if the registry drops the
# connection mid-file. A failure prints pip's own last lines, which name the file and the cause.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for attempt in 1 2 3; do
    if "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-deps \
        --retries 10 --timeout 120 -r "$req" >"$log" 2>&1; then
        break
    fi
    echo "setup-peft: pip install -r $req failed (attempt $attempt of 3); its last lines:" >&2
    tail -n 15 "$log" >&2
    # A full disk does not clear up by waiting: say where and how much is free, and stop.
    if grep -q "No space left on device" "$log"; then
        echo "setup-peft: the disk is full: the venv takes about 4.6 GiB at $venv (free now: $(df -h --output=avail "$venv" | tail -n 1 | tr -d ' '); pip also unpacks each wheel in ${TMPDIR:-/tmp}: $(df -h --output=avail "${TMPDIR:-/tmp}" | tail -n 1 | tr -d ' ') free); free some space or set KILN_PEFT_VENV to a folder on a larger disk" >&2
        exit 3
    fi
    if [ "$attempt" = 3 ]; then
        exit 2
    fi
    sleep $((attempt * 20))
done
"$venv/bin/python" -c "import torch, transformers, peft, gguf"
echo "$want" >"$stamp"
echo "setup-peft: $venv is ready ($("$venv/bin/python" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")'))"
