//! Device->host reads, counted. Every scalar or vector wick reads back from the device goes
//! through here, so a benchmark can prove that a training step between logging boundaries reads
//! nothing (on an accelerator such a read stalls the queue until all queued work is done).

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Result, Tensor};

static READS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count() {
    READS.fetch_add(1, Ordering::Relaxed);
    THREAD_READS.with(|r| r.set(r.get() + 1));
}

/// Device->host reads made through this module since the process started.
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}

/// Device->host reads made through this module by the calling thread (a test can audit its own
/// steps while other tests run in parallel).
pub fn reads_on_this_thread() -> u64 {
    THREAD_READS.with(|r| r.get())
}

/// A scalar tensor as f64: one device->host read.
pub fn scalar(tensor: &Tensor) -> Result<f64> {
    count();
    Ok(f64::from(tensor.to_dtype(DType::F32)?.to_scalar::<f32>()?))
}

/// A vector (any shape, read flat) as f64: one device->host read.
pub fn vector(tensor: &Tensor) -> Result<Vec<f64>> {
    count();
    let values = tensor
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    Ok(values.into_iter().map(f64::from).collect())
}

/// A matrix as rows of f32: one device->host read.
pub fn matrix(tensor: &Tensor) -> Result<Vec<Vec<f32>>> {
    count();
    tensor.to_dtype(DType::F32)?.to_vec2::<f32>()
}
