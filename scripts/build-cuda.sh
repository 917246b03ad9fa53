#!/usr/bin/env bash
# Build kiln with candle's CUDA backend on a machine without a GPU or a CUDA install, for a
# GPU machine that has the NVIDIA driver and the CUDA 13 libraries (cuBLAS, cuRAND, NVRTC)
# but no Rust toolchain.
#
#     scripts/build-cuda.sh            # -> target/cuda/release/kiln (sm_90: H100/H200)
#     scripts/build-cuda.sh --bench    # and the training bench -> target/cuda/release/train-bench
#
# nvcc, the CUDA headers and the libraries to link against come from PyPI (nvidia-* 13.0.x
# wheels, whose PTX the 580 driver accepts) into a venv at $KILN_CUDA_VENV (default
# ~/.cache/kiln/cuda-venv). The driver library, libcuda, is not on PyPI: the link uses a stub
# generated here from cudarc's declarations (soname libcuda.so.1), and the real driver's
# library is loaded at run time. At run time the binary needs libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13 on LD_LIBRARY_PATH (on the GPU machine
# they are in PyTorch's environment: see scripts/cuda-libs.sh). The CPU build is unaffected.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${KILN_CUDA_VENV:-$HOME/.cache/kiln/cuda-venv}"
cap="${CUDA_COMPUTE_CAP:-90}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-cccl~=13.0.0" "nvidia-cuda-nvrtc==13.0.88" "nvidia-nvvm==13.0.88" \
    "nvidia-cublas~=13.0.0" "nvidia-curand~=10.4.0"
cu="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$cu/bin/nvcc" ] || { echo "build-cuda: no nvcc in $cu/bin" >&2; exit 1; }

# A CUDA root the build scripts understand: bin/, include/, nvvm/, lib64/ with link names.
cuda_root="$venv/cuda-root"
rm -rf "$cuda_root"
mkdir -p "$cuda_root/lib64"
ln -s "$cu/bin" "$cuda_root/bin"
ln -s "$cu/include" "$cuda_root/include"
ln -s "$cu/nvvm" "$cuda_root/nvvm"
for f in "$cu"/lib/*.so.*; do
    base="$(basename "$f")"
    ln -sf "$f" "$cuda_root/lib64/$base"
    ln -sf "$f" "$cuda_root/lib64/${base%%.so.*}.so"
done

# The driver stub: every cu* function cudarc declares, as an empty export.
cudarc="$(cd "$root" && cargo metadata --format-version 1 --features cuda --manifest-path host/Cargo.toml 2>/dev/null \
    | "$venv/bin/python" -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')"
grep -ohE 'fn (cu[A-Za-z0-9_]+)\(' "$cudarc/src/driver/sys/"*.rs | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
    | awk '{ printf "void %s(void) {}\n", $1 }' >"$cuda_root/libcuda_stub.c"
cc -shared -fPIC -o "$cuda_root/lib64/libcuda.so" -Wl,-soname,libcuda.so.1 "$cuda_root/libcuda_stub.c"

export CUDA_ROOT="$cuda_root" CUDA_PATH="$cuda_root" CUDA_HOME="$cuda_root"
export PATH="$cuda_root/bin:$PATH"
export CUDA_COMPUTE_CAP="$cap"
export LD_LIBRARY_PATH="$cuda_root/lib64:${LD_LIBRARY_PATH:-}"
cd "$root"
CARGO_TARGET_DIR="$root/target/cuda" cargo build --release --features cuda --bin kiln
echo "build-cuda: $root/target/cuda/release/kiln (sm_$cap)"
if [ "${1:-}" = "--bench" ]; then
    exe="$(CARGO_TARGET_DIR="$root/target/cuda" cargo bench --no-run --features cuda --bench train --message-format=json \
        | "$venv/bin/python" -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "train" and m.get("executable"):
        print(m["executable"])' | tail -1)"
    [ -n "$exe" ] || { echo "build-cuda: the training bench was not built" >&2; exit 1; }
    cp "$exe" "$root/target/cuda/release/train-bench"
    echo "build-cuda: $root/target/cuda/release/train-bench (sm_$cap)"
fi
