//! Seeded randomness for dropout.
//!
//! Candle cannot seed its CPU generator, so on the CPU the keep-masks come from a ChaCha stream
//! owned here: each mask is keyed by one draw from it, and element `i` of the mask is a hash of
//! `(key, i)` ([`crate::simd::keep_hash`]), which the fused kernels recompute in backward. On an accelerator the masks are drawn on the device (drawing tens of millions of
//! numbers on the host every step would stall it) after seeding the device generator. Both are
//! reseeded from `(seed, step)` at every step, so the state is a pure function of the step and a
//! resumed run draws the same masks as an uninterrupted one without saving any generator state.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::simd;

/// Mask elements drawn per parallel work item.
const MASK_CHUNK: usize = 1 << 16;

/// Seeds an accelerator's generator for a checkpointed segment. Metal keeps its generator's seed
/// in a device buffer that queued kernels read when they run, not when they are queued, so the
/// device is synchronized first: otherwise draws queued before the new seed could read it, and
/// a recomputed segment would not draw its first pass's masks. That is two waits per layer per
/// training step on Metal (`train` says so).
fn seed_device(device: &Device, seed: u64) -> Result<()> {
    if device.is_metal() {
        device.synchronize()?;
    }
    device.set_seed(seed)
}

/// The state of the dropout streams at the start of a checkpointed segment: see
/// [`DropoutRng::checkpoint`].
#[derive(Debug, Clone)]
pub struct Replay {
    host: ChaCha8Rng,
    /// The accelerator and the seed its generator was given at the checkpoint.
    device: Option<(Device, u64)>,
}

/// The source of dropout masks for one model.
#[derive(Debug)]
pub struct DropoutRng {
    host: Mutex<ChaCha8Rng>,
}

/// Mixes a run seed and a step into one 64-bit seed (splitmix64 finaliser).
pub fn mix_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self {
            host: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// Resets the streams to the state for `step` of a run seeded with `seed`.
    pub fn reseed(&self, seed: u64, step: u64, device: &Device) -> Result<()> {
        let mixed = mix_seed(seed, step);
        *self.lock() = ChaCha8Rng::seed_from_u64(mixed);
        if !device.is_cpu() {
            device.set_seed(mixed)?;
        }
        Ok(())
    }

    /// The key of the next CPU mask: one draw from the run's stream.
    pub fn draw_key(&self) -> u64 {
        self.lock().next_u64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChaCha8Rng> {
        // A poisoned lock only means another thread panicked mid-draw; the stream is still valid.
        self.host.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the streams stand at the start of a checkpointed segment (gradient checkpointing),
    /// for [`DropoutRng::replay`] to draw the same masks when backward recomputes it. The host
    /// stream is copied; an accelerator's generator cannot be read, so it is reseeded here with
    /// a seed derived from the host stream's position (which this does not advance), and again
    /// with the same seed on replay ([`seed_device`]).
    pub fn checkpoint(&self, device: &Device) -> Result<Replay> {
        let host = self.lock().clone();
        let device_seed = if device.is_cpu() {
            None
        } else {
            let seed = host.get_seed();
            let seed = u64::from_le_bytes(seed[..8].try_into().expect("8 of 32 seed bytes"));
            let seed = mix_seed(seed, host.get_word_pos() as u64);
            seed_device(device, seed)?;
            Some(seed)
        };
        Ok(Replay {
            host,
            device: device_seed.map(|seed| (device.clone(), seed)),
        })
    }

    /// Runs `f` with the streams as they stood at `replay`'s checkpoint, then puts the host
    /// stream back where it was, so a recomputation draws the masks of the first pass and moves
    /// no later draw.
    pub fn replay<T>(&self, replay: &Replay, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let resume = std::mem::replace(&mut *self.lock(), replay.host.clone());
        let out = match &replay.device {
            Some((device, seed)) => seed_device(device, *seed).and_then(|()| f()),
            None => f(),
        };
        *self.lock() = resume;
        out
    }

    /// A mask of `0` (dropped, probability `p`) and `1 / (1 - p)` (kept), of `shape` and `dtype`.
    pub fn keep_mask(
        &self,
        shape: &Shape,
        p: f64,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        let scale = 1.0 / (1.0 - p);
        if device.is_cpu() {
            // Counter-based draws keyed by one draw from the run's stream: the same mask whatever
            // the thread count, and the one the fused CPU kernels regenerate from the key.
            let key = self.draw_key();
            let threshold = simd::drop_threshold(p);
            let count = u32::try_from(shape.elem_count()).map_err(|_| {
                candle_core::Error::Msg(format!("dropout mask of {shape:?}: over 2^32 elements"))
            })?;
            let mut values = vec![0f32; count as usize];
            values
                .par_chunks_mut(MASK_CHUNK)
                .enumerate()
                .for_each(|(c, chunk)| {
                    let first = (c * MASK_CHUNK) as u32;
                    for (i, v) in chunk.iter_mut().enumerate() {
                        let draw = simd::keep_hash(key, first + i as u32);
                        *v = if draw >= threshold { scale as f32 } else { 0.0 };
                    }
                });
            Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
        } else {
            let uniform = Tensor::rand(0f32, 1f32, shape, device)?;
            (uniform.ge(p)?.to_dtype(DType::F32)? * scale)?.to_dtype(dtype)
        }
    }
}
