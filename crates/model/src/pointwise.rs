//! Fused element-wise kernels for f32 on the CPU, with their backward: dropout (the mask is
//! recomputed from its key, never stored) and the exact (erf) GELU. Both are compared with the
//! primitive ops in the tests, forward and gradients.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::fused::contiguous;
use crate::multiversion;
use crate::simd;

/// Elements per parallel work item.
pub(crate) const CHUNK: usize = 1 << 14;

/// `rows` copies of `row`, one after another, written by rayon's pool. Kernel outputs start
/// this way (the bias of a linear layer) or as [`zeros`]: filled on the calling thread, as
/// `vec!` and `extend_from_slice` do, the pool would wait for one core to write them.
pub(crate) fn repeat_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let n = row.len().max(1);
    filled(rows * row.len(), (CHUNK / n).max(1) * n, |chunk| {
        for dst in chunk.chunks_exact_mut(n) {
            dst.iter_mut().zip(row).for_each(|(d, &v)| {
                d.write(v);
            });
        }
    })
}

/// `len` zeros, written by rayon's pool (see [`repeat_rows`]).
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    filled(len, CHUNK, |chunk| {
        chunk.iter_mut().for_each(|d| {
            d.write(0.0);
        })
    })
}

/// A vector of `len` values whose slots `fill` writes, `step` slots per parallel call (the last
/// call may get fewer). `fill` must write every slot it is given.
fn filled(len: usize, step: usize, fill: impl Fn(&mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    filled_at(len, step, |_, chunk| fill(chunk))
}

/// [`filled`], with the index of each chunk of `step` slots passed to `fill`.
fn filled_at(
    len: usize,
    step: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(step.max(1))
        .enumerate()
        .for_each(|(i, chunk)| fill(i, chunk));
    #[allow(unsafe_code)]
    // SAFETY: the chunks cover the first `len` slots and every caller writes every slot of each
    // (repeat_rows: chunks are whole rows, `len` a whole number of rows; gelu: chunk `i` holds
    // the values of `xs[i * CHUNK..]`, which has at least as many).
    unsafe {
        out.set_len(len)
    };
    out
}

/// Inverted dropout with the mask of [`crate::rng::DropoutRng::keep_mask`] for the same key.
#[derive(Debug, Clone, Copy)]
struct Dropout(simd::Mask);

multiversion! {
    /// `out = xs * mask` for the elements starting at flat index `first` of the mask.
    pub(crate) fn masked(out: &mut [f32], xs: &[f32], first: u32, mask: simd::Mask) {
        for (i, (o, x)) in out.iter_mut().zip(xs).enumerate() {
            *o = x * mask.factor(first.wrapping_add(i as u32));
        }
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous(storage, layout, "dropout input")?;
        if xs.len() > u32::MAX as usize {
            candle_core::bail!("fused dropout: more than 2^32 elements")
        }
        let mut out = zeros(xs.len());
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (out, xs))| masked(out, xs, (c * CHUNK) as u32, self.0));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// The same mask multiplies the gradient.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(*self)?))
    }
}

/// Dropout with drop probability `p` of an f32 CPU tensor, the mask keyed by `key`.
pub fn dropout(xs: &Tensor, p: f64, key: u64) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Dropout(simd::Mask::new(p, key)))
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

multiversion! {
    /// Writes every slot of `out` (as long as `xs`).
    fn gelu_chunk(out: &mut [MaybeUninit<f32>], xs: &[f32]) {
        for (o, &x) in out.iter_mut().zip(xs) {
            o.write(0.5 * x * (1.0 + simd::erf(x * FRAC_1_SQRT_2)));
        }
    }
}

/// The exact GELU of every value, written once by rayon's pool (no fill first).
pub(crate) fn gelu_values(xs: &[f32]) -> Vec<f32> {
    filled_at(xs.len(), CHUNK, |i, out| gelu_chunk(out, &xs[i * CHUNK..]))
}

multiversion! {
    /// `grad * d/dx [x Phi(x)] = grad * (Phi(x) + x phi(x))`.
    pub(crate) fn gelu_backward_chunk(out: &mut [f32], xs: &[f32], grad: &[f32]) {
        for ((o, &x), &g) in out.iter_mut().zip(xs).zip(grad) {
            let cdf = 0.5 * (1.0 + simd::erf(x * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * simd::exp(-0.5 * x * x);
            *o = g * x.mul_add(pdf, cdf);
        }
    }
}

/// The exact GELU, `x Phi(x)` with the normal CDF from erf.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous(storage, layout, "gelu input")?;
        Ok((CpuStorage::F32(gelu_values(xs)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?,
        ))
    }
}

/// `(x, grad) -> grad * gelu'(x)`.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "fused-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous(s1, l1, "gelu backward input")?;
        let grad = contiguous(s2, l2, "gelu backward gradient")?;
        if xs.len() != grad.len() {
            candle_core::bail!(
                "fused gelu backward: {} inputs, {} gradients",
                xs.len(),
                grad.len()
            )
        }
        let mut out = zeros(xs.len());
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|((out, xs), grad)| gelu_backward_chunk(out, xs, grad));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The exact (erf) GELU of an f32 CPU tensor.
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Gelu)
}

#[cfg(test)]
mod tests {
    use crate::test_util::max_diff;
    use candle_core::{DType, Device, Var};

    use super::*;
    use crate::rng::DropoutRng;

    #[test]
    fn parallel_fills_write_every_value() {
        // Row widths that divide the chunk and that do not; row counts below, at and past one
        // chunk; the empty cases.
        for n in [1usize, 3, 384, 1000] {
            let row: Vec<f32> = (0..n).map(|j| j as f32 + 0.5).collect();
            for rows in [0usize, 1, 7, CHUNK / n, CHUNK / n + 1, 3 * CHUNK / n + 5] {
                let got = repeat_rows(&row, rows);
                assert_eq!(got, row.repeat(rows), "{rows} rows of {n}");
            }
        }
        assert!(repeat_rows(&[], 5).is_empty());
        for len in [0usize, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 3] {
            let got = zeros(len);
            assert_eq!(got.len(), len);
            assert!(got.iter().all(|&v| v == 0.0), "{len}");
        }
    }

    #[test]
    fn fused_gelu_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        // Wide enough for several parallel chunks and the saturated tails.
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (5, 7001), &dev).unwrap())).unwrap();
        let r = Tensor::randn(0f32, 1.0, (5, 7001), &dev).unwrap();
        let fused = gelu(&x).unwrap();
        let plain = x.gelu_erf().unwrap();
        assert!(
            max_diff(&fused, &plain) < 2e-6,
            "forward {}",
            max_diff(&fused, &plain)
        );
        let gf = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (gf.get(&x).unwrap(), gp.get(&x).unwrap());
        assert!(max_diff(a, b) < 2e-6, "gradient {}", max_diff(a, b));
    }

    #[test]
    fn fused_dropout_uses_the_keep_mask_of_the_same_key_forward_and_backward() {
        let dev = Device::Cpu;
        let shape = (3, 50_000);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let (a, b) = (DropoutRng::new(11), DropoutRng::new(11));
        let fused = dropout(&x, 0.1, a.draw_key()).unwrap();
        let mask = b.keep_mask(x.shape(), 0.1, &dev, DType::F32).unwrap();
        let plain = (x.as_tensor() * &mask).unwrap();
        assert_eq!(max_diff(&fused, &plain), 0.0);
        let dropped = mask
            .eq(0f32)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((dropped - 0.1).abs() < 0.005, "drop rate {dropped}");
        let gf = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(max_diff(gf.get(&x).unwrap(), gp.get(&x).unwrap()), 0.0);
    }
}
