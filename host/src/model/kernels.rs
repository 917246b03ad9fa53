//! kiln's own CUDA kernels, compiled once per process with NVRTC on first use (so the build
//! needs no nvcc for them): the KV arena's row scatter (`scatter.rs`) and training's dropout
//! masks (`train::dropout`).

/// The module name the kernels are loaded under.
pub const MODULE: &str = "kiln_kernels";

/// The kernels' CUDA source.
pub const SOURCE: &str = r#"
extern "C" __global__ void kiln_scatter_rows(float *dst, const float *src, const unsigned int *ids,
    unsigned long long dst_off, unsigned long long src_off, unsigned long long ids_off,
    unsigned long long n, unsigned long long width, unsigned long long rows) {
    unsigned long long total = n * width;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < total;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long r = ids[ids_off + i / width];
        if (r < rows) dst[dst_off + r * width + i % width] = src[src_off + i];
    }
}

// Draw i of a SplitMix64 stream whose state is `state` (mix(state + i * golden), where mix
// first adds golden: train::rng), then
// 0 where its top 53 bits, as a unit value, fall below p, else `keep` (train::dropout).
extern "C" __global__ void kiln_dropout_mask(float *out, unsigned long long off, unsigned long long n,
    unsigned long long state, double p, float keep) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long z = state + i * 0x9E3779B97F4A7C15ULL + 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        double u = (double)(z >> 11) / 9007199254740992.0;
        out[off + i] = u < p ? 0.0f : keep;
    }
}
"#;

/// The kernels' PTX, compiled with NVRTC on first use.
#[cfg(feature = "cuda")]
pub fn ptx() -> candle_core::Result<&'static str> {
    use std::sync::OnceLock;
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| candle_core::cuda::cudarc::nvrtc::compile_ptx(SOURCE).map(|p| p.to_src()).map_err(|e| format!("{e:?}")))
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(format!("compiling kiln's CUDA kernels with NVRTC: {e}")))
}
