//! Honest timing: the first call is timed on its own (allocation, kernel selection, CUDA PTX JIT),
//! then warm-up calls, then `repeats` timed calls. The device is synchronized before every clock
//! read, since accelerator ops return before they finish.

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use wick_trainer::device::synchronize;
use wick_trainer::sync;

/// How many untimed and timed calls each measurement makes.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Untimed calls after the first-use call.
    pub warmup: usize,
    /// Timed calls; at least 1.
    pub repeats: usize,
}

/// The clock readings of one measurement.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Seconds of the very first call.
    pub first_use: f64,
    /// Seconds of each timed call, sorted ascending (never empty).
    pub seconds: Vec<f64>,
    /// Device->host reads made through `wick_trainer::sync` during the timed calls.
    pub reads: u64,
}

impl Samples {
    pub fn median(&self) -> f64 {
        let n = self.seconds.len();
        if n % 2 == 1 {
            self.seconds[n / 2]
        } else {
            (self.seconds[n / 2 - 1] + self.seconds[n / 2]) / 2.0
        }
    }

    pub fn min(&self) -> f64 {
        self.seconds[0]
    }

    pub fn max(&self) -> f64 {
        self.seconds[self.seconds.len() - 1]
    }

    /// Reads per timed call.
    pub fn reads_per_call(&self) -> f64 {
        self.reads as f64 / self.seconds.len() as f64
    }
}

/// Times `call` as described in the module docs.
pub fn time_calls(
    device: &Device,
    timing: Timing,
    mut call: impl FnMut() -> Result<()>,
) -> Result<Samples> {
    let first_use = timed(device, &mut call)?;
    for _ in 0..timing.warmup {
        call()?;
    }
    let reads_before = sync::reads();
    let mut seconds = (0..timing.repeats.max(1))
        .map(|_| timed(device, &mut call))
        .collect::<Result<Vec<f64>>>()?;
    let reads = sync::reads() - reads_before;
    seconds.sort_by(f64::total_cmp);
    Ok(Samples {
        first_use,
        seconds,
        reads,
    })
}

fn timed(device: &Device, call: &mut impl FnMut() -> Result<()>) -> Result<f64> {
    synchronize(device)?;
    let start = Instant::now();
    call()?;
    synchronize(device)?;
    Ok(start.elapsed().as_secs_f64())
}
