#!/usr/bin/env bash
# Print the LD_LIBRARY_PATH that lets a CUDA build of kiln (scripts/build-cuda.sh) find
# cuBLAS, cuRAND and NVRTC in this machine's Python environment (the nvidia-* wheels that
# PyTorch brings). Use: eval "$(scripts/cuda-libs.sh)"
set -euo pipefail
python="${PYTHON:-python3}"
dirs="$("$python" - <<'PY'
import glob, os
import nvidia
found = set()
for root in nvidia.__path__:
    for d in glob.glob(os.path.join(root, "**", "lib"), recursive=True):
        if glob.glob(os.path.join(d, "lib*.so*")):
            found.add(d)
print(":".join(sorted(found)))
PY
)"
[ -n "$dirs" ] || { echo "cuda-libs: no nvidia-* libraries in $python's environment" >&2; exit 1; }
echo "export LD_LIBRARY_PATH=$dirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
