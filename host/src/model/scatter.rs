//! Writing whole rows of a (rows, width) f32 tensor in place - `dst[ids[i]] = src[i]` - for
//! the tensor path's KV arena.
//!
//! candle's `scatter_set` gives each of the `width` columns one thread that walks every source
//! row in turn, so a prompt of thousands of rows is written nearly serially; here every
//! element has its own thread (on CUDA, a kernel compiled once with NVRTC).

use candle_core::{CpuStorage, InplaceOp3, Layout, Result};

/// `dst[ids[i], :] = src[i, :]` for a contiguous f32 `dst` (rows, width), `src` (n, width)
/// and u32 `ids` (n). Rows out of range are an error on the CPU and skipped on a device.
pub struct ScatterRows;

/// (dst rows, width, n, dst offset, src offset, ids offset), checking shapes and layouts.
fn geometry(dst: &Layout, src: &Layout, ids: &Layout) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (rows, width) = dst.shape().dims2()?;
    let (n, w2) = src.shape().dims2()?;
    let n3 = ids.shape().dims1()?;
    if w2 != width || n3 != n {
        candle_core::bail!("scatter rows: {n} x {w2} rows with {n3} ids into {rows} x {width}");
    }
    let offset = |l: &Layout, what: &str| -> Result<usize> {
        l.contiguous_offsets().map(|o| o.0).ok_or_else(|| candle_core::Error::Msg(format!("scatter rows: the {what} is not contiguous")))
    };
    Ok((rows, width, n, offset(dst, "destination")?, offset(src, "source")?, offset(ids, "index")?))
}

impl InplaceOp3 for ScatterRows {
    fn name(&self) -> &'static str {
        "kiln-scatter-rows"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<()> {
        let (rows, w, n, o1, o2, o3) = geometry(l1, l2, l3)?;
        let (CpuStorage::F32(dst), CpuStorage::F32(src), CpuStorage::U32(ids)) = (s1, s2, s3) else {
            candle_core::bail!("scatter rows takes f32 rows and u32 ids");
        };
        for i in 0..n {
            let r = ids[o3 + i] as usize;
            if r >= rows {
                candle_core::bail!("scatter rows: row {r} of {rows}");
            }
            dst[o1 + r * w..o1 + (r + 1) * w].copy_from_slice(&src[o2 + i * w..o2 + (i + 1) * w]);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
        let (rows, w, n, o1, o2, o3) = geometry(l1, l2, l3)?;
        if n == 0 {
            return Ok(());
        }
        let func = s1.device.get_or_load_custom_func("kiln_scatter_rows", super::kernels::MODULE, super::kernels::ptx()?)?;
        let src = s2.as_cuda_slice::<f32>()?;
        let ids = s3.as_cuda_slice::<u32>()?;
        let dst = s1.as_cuda_slice_mut::<f32>()?;
        let cfg = LaunchConfig::for_num_elems((n * w).min(1 << 30) as u32);
        let args = [o1, o2, o3, n, w, rows].map(|x| x as u64);
        let mut b = func.builder();
        b.arg(dst);
        b.arg(src);
        b.arg(ids);
        for a in &args {
            b.arg(a);
        }
        // SAFETY: the kernel reads n * w source values and n ids from their offsets and writes
        // only rows below `rows` of the destination, all checked against the layouts above.
        unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Msg(format!("kiln_scatter_rows: {e:?}")))?;
        Ok(())
    }
}
