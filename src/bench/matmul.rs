//! Square matmul throughput: the ceiling that model MFU is measured against.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use wick_model::matmul::{self, Threads, View};

use super::timing::{time_calls, Samples, Timing};

/// Whether `device` runs a matmul in `dtype` (Candle's backends lack some dtype/op pairs).
pub fn supports(device: &Device, dtype: DType) -> bool {
    let attempt = || -> candle_core::Result<()> {
        let a = Tensor::ones((8, 8), DType::F32, device)?.to_dtype(dtype)?;
        a.matmul(&a)?;
        device.synchronize()
    };
    attempt().is_ok()
}

/// Times `(size, size) @ (size, size)` in `dtype` on `device`, inputs drawn once. f32 on the
/// CPU runs wick's own product ([`matmul::product`], what the fused kernels call; see
/// [`kernel`]), anything else Candle's matmul.
pub fn measure(device: &Device, dtype: DType, size: usize, timing: Timing) -> Result<Samples> {
    let a = Tensor::randn(0f32, 1f32, (size, size), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1f32, (size, size), device)?.to_dtype(dtype)?;
    if device.is_cpu() && dtype == DType::F32 {
        let (a, b) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
        );
        let (a, b) = (View::rows(&a, size), View::rows(&b, size));
        return time_calls(device, timing, || {
            matmul::product((size, size, size), a, b, Threads::Pool)?;
            Ok(())
        });
    }
    time_calls(device, timing, || {
        a.matmul(&b)?;
        Ok(())
    })
}

/// The kernel a square matmul of `size` runs on `device` in `dtype`: wick's CPU f32 kernel
/// (`amx` or the build's BLAS backend), else Candle's.
pub fn kernel(device: &Device, dtype: DType, size: usize) -> &'static str {
    if device.is_cpu() && dtype == DType::F32 {
        matmul::kernel((size, size, size), false)
    } else {
        "candle"
    }
}
