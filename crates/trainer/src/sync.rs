//! Device->host reads, counted. Every scalar or vector wick reads back from the device goes
//! through here, so a benchmark can prove that a training step between logging boundaries reads
//! nothing (on an accelerator such a read stalls the queue until all queued work is done).

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Result, Tensor};

static READS: AtomicU64 = AtomicU64::new(0);

/// Device->host reads made through this module since the process started.
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}

/// A scalar tensor as f64: one device->host read.
pub fn scalar(tensor: &Tensor) -> Result<f64> {
    READS.fetch_add(1, Ordering::Relaxed);
    Ok(f64::from(tensor.to_dtype(DType::F32)?.to_scalar::<f32>()?))
}

/// A matrix as rows of f32: one device->host read.
pub fn matrix(tensor: &Tensor) -> Result<Vec<Vec<f32>>> {
    READS.fetch_add(1, Ordering::Relaxed);
    tensor.to_dtype(DType::F32)?.to_vec2::<f32>()
}
