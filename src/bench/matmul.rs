//! Square matmul throughput: the ceiling that model MFU is measured against.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

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

/// Times `(size, size) @ (size, size)` in `dtype` on `device`, inputs drawn once.
pub fn measure(device: &Device, dtype: DType, size: usize, timing: Timing) -> Result<Samples> {
    let a = Tensor::randn(0f32, 1f32, (size, size), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1f32, (size, size), device)?.to_dtype(dtype)?;
    time_calls(device, timing, || {
        a.matmul(&b)?;
        Ok(())
    })
}
