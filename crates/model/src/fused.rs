//! Fused CPU kernels with their backward: layer normalisation, the attention softmax with its
//! scale and additive mask folded in, and a linear layer with its bias (one output instead of a
//! matmul output plus a bias-add output, both of which backward would keep).
//!
//! Written from primitive ops, a layer norm keeps about eight activation-sized tensors alive for
//! backward and the attention softmax five `(batch, heads, seq, seq)` ones; these kernels keep
//! only their input and output and make one pass each way. They run on f32 CPU tensors; other
//! devices and dtypes use the primitive-op versions in [`crate::ops`], which the tests compare
//! these kernels against, forward and gradients. Reductions run in a fixed order (fixed row
//! chunks, summed in sequence), so results do not depend on thread scheduling: resumed runs stay
//! bitwise identical.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel work item: fixed, so the reduction order is too.
const CHUNK_ROWS: usize = 64;

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!("fused kernel: {what} is not contiguous"))
    })?;
    match storage {
        CpuStorage::F32(values) => Ok(&values[start..end]),
        _ => candle_core::bail!("fused kernel: {what} is not f32"),
    }
}

/// The values of a CPU tensor (these kernels only run on the CPU: no device transfer happens).
fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

thread_local! {
    static DISABLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the fused CPU kernels (here, [`crate::attention`] and [`crate::pointwise`]) apply to
/// these tensors: f32 on the CPU, unless [`without_fused`] turned them off on this thread.
pub fn applies(tensors: &[&Tensor]) -> bool {
    !DISABLED.with(|d| d.get())
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Runs `f` with the fused kernels off on this thread, so every op takes its primitive-op path:
/// the reference the kernels are tested against. Forward and backward of a graph built inside
/// `f` both run on the calling thread.
pub fn without_fused<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            DISABLED.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DISABLED.with(|d| d.replace(true)));
    f()
}

/// `y = (x - mean) / sqrt(var + eps) * w + b` over the last dimension.
struct LayerNorm {
    eps: f32,
}

/// Mean and reciprocal standard deviation of one row.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "input")?;
        let (w, b) = (contiguous(s2, l2, "weight")?, contiguous(s3, l3, "bias")?);
        let n = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(out, row)| {
                let (mean, rstd) = row_stats(row, self.eps);
                for i in 0..n {
                    out[i] = (row[i] - mean) * rstd * w[i] + b[i];
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xs, ws, gys) = (host(x)?, host(w)?, host(grad_y)?);
        let n = ws.len();
        let rows = xs.len() / n;
        let mut gx = vec![0f32; xs.len()];
        // Per chunk of rows: gx for those rows, and that chunk's partial sums of gw and gb.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = gx
            .par_chunks_mut(n * CHUNK_ROWS)
            .enumerate()
            .map(|(chunk, gx_chunk)| {
                let mut gw = vec![0f32; n];
                let mut gb = vec![0f32; n];
                let first = chunk * CHUNK_ROWS;
                for (r, gx_row) in gx_chunk.chunks_mut(n).enumerate() {
                    let at = (first + r) * n;
                    let (row, gy) = (&xs[at..at + n], &gys[at..at + n]);
                    let (mean, rstd) = row_stats(row, self.eps);
                    let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                    for i in 0..n {
                        let xhat = (row[i] - mean) * rstd;
                        let g = gy[i] * ws[i];
                        sum_g += g;
                        sum_gx += g * xhat;
                        gw[i] += gy[i] * xhat;
                        gb[i] += gy[i];
                    }
                    let (mean_g, mean_gx) = (sum_g / n as f32, sum_gx / n as f32);
                    for i in 0..n {
                        let xhat = (row[i] - mean) * rstd;
                        gx_row[i] = rstd * (gy[i] * ws[i] - mean_g - xhat * mean_gx);
                    }
                }
                (gw, gb)
            })
            .collect();
        let mut gw = vec![0f32; n];
        let mut gb = vec![0f32; n];
        for (pw, pb) in &partials {
            gw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            gb.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        debug_assert_eq!(rows.div_ceil(CHUNK_ROWS), partials.len());
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), device)?),
            Some(Tensor::from_vec(gw, w.shape(), device)?),
            Some(Tensor::from_vec(gb, w.shape(), device)?),
        ))
    }
}

/// Layer norm over the last dimension of an f32 CPU tensor.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// `softmax(scale * scores + bias)` over the last dimension; `scores` `(batch, heads, q, k)`,
/// `bias` `(batch, 1, 1, k)`.
struct AttentionSoftmax {
    scale: f32,
}

impl CustomOp2 for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "fused-attention-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous(s1, l1, "scores")?;
        let bias = contiguous(s2, l2, "attention bias")?;
        let (batch, heads, q, k) = l1.shape().dims4()?;
        if bias.len() != batch * k {
            candle_core::bail!(
                "fused attention softmax: bias has {} values for batch {batch} x {k} keys",
                bias.len()
            );
        }
        let rows_per_batch = heads * q;
        let mut probs = vec![0f32; scores.len()];
        probs
            .par_chunks_mut(k)
            .zip(scores.par_chunks(k))
            .enumerate()
            .for_each(|(r, (out, row))| {
                let b = &bias[(r / rows_per_batch) * k..][..k];
                let mut max = f32::NEG_INFINITY;
                for i in 0..k {
                    out[i] = row[i] * self.scale + b[i];
                    max = max.max(out[i]);
                }
                let mut sum = 0f32;
                for v in out.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                let inv = 1.0 / sum;
                out.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(probs), l1.shape().clone()))
    }

    fn bwd(
        &self,
        scores: &Tensor,
        _bias: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (ys, gs) = (host(probs)?, host(grad)?);
        let k = scores.dim(candle_core::D::Minus1)?;
        let mut gx = vec![0f32; ys.len()];
        gx.par_chunks_mut(k).enumerate().for_each(|(r, out)| {
            let (y, g) = (&ys[r * k..][..k], &gs[r * k..][..k]);
            let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
            for i in 0..k {
                out[i] = self.scale * y[i] * (g[i] - dot);
            }
        });
        // The bias is a constant mask: no gradient.
        Ok((
            Some(Tensor::from_vec(gx, scores.shape(), scores.device())?),
            None,
        ))
    }
}

/// `softmax(scale * scores + bias)` for f32 CPU tensors.
pub fn attention_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op2(
        &bias.contiguous()?,
        AttentionSoftmax {
            scale: scale as f32,
        },
    )
}

/// `y = x w^T + b` for `x` `(rows, in)`, `w` `(out, in)`, `b` `(out,)`.
struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, inner) = l1.shape().dims2()?;
        let (out, _) = l2.shape().dims2()?;
        // Candle's own CPU matmul, on the transposed view of the weight.
        let product = s1.matmul(s2, (1, rows, out, inner), l1, &l2.transpose(0, 1)?)?;
        let bias = contiguous(s3, l3, "bias")?;
        let CpuStorage::F32(mut values) = product else {
            candle_core::bail!("fused linear: matmul did not return f32")
        };
        values
            .par_chunks_mut(out)
            .for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
        Ok((CpuStorage::F32(values), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((
            Some(grad.matmul(w)?),
            Some(grad.t()?.matmul(x)?),
            Some(grad.sum(0)?),
        ))
    }
}

/// `xs w^T + b` for a 2-D f32 CPU `xs`.
pub fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Gradients of `sum(f(inputs) * r)` for a fixed random `r`.
    fn grads(inputs: &[&Var], out: &Tensor, r: &Tensor) -> Vec<Tensor> {
        let store = (out * r).unwrap().sum_all().unwrap().backward().unwrap();
        inputs
            .iter()
            .map(|v| store.get(v.as_tensor()).expect("a gradient").clone())
            .collect()
    }

    #[test]
    fn fused_layer_norm_matches_primitive_ops_forward_and_backward() {
        let d = &Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (7, 13, 48), d).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 48, d).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 48, d).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (7, 13, 48), d).unwrap();
        let fused = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        let plain =
            ops::layer_norm_primitive(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        assert!(
            max_diff(&fused, &plain) < 1e-5,
            "forward differs by {}",
            max_diff(&fused, &plain)
        );
        let (gf, gp) = (
            grads(&[&x, &w, &b], &fused, &r),
            grads(&[&x, &w, &b], &plain, &r),
        );
        for (name, (a, b)) in ["x", "weight", "bias"].iter().zip(gf.iter().zip(&gp)) {
            assert!(
                max_diff(a, b) < 1e-4,
                "gradient of {name} differs by {}",
                max_diff(a, b)
            );
        }
    }

    #[test]
    fn fused_linear_matches_primitive_ops_forward_and_backward() {
        let d = &Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (37, 24), d).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.2, (19, 24), d).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.2, 19, d).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (37, 19), d).unwrap();
        let fused = linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let plain = x
            .as_tensor()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert!(
            max_diff(&fused, &plain) < 1e-5,
            "forward differs by {}",
            max_diff(&fused, &plain)
        );
        let (gf, gp) = (
            grads(&[&x, &w, &b], &fused, &r),
            grads(&[&x, &w, &b], &plain, &r),
        );
        for (name, (a, b)) in ["x", "weight", "bias"].iter().zip(gf.iter().zip(&gp)) {
            assert!(
                max_diff(a, b) < 1e-4,
                "gradient of {name} differs by {}",
                max_diff(a, b)
            );
        }
    }

    #[test]
    fn fused_attention_softmax_matches_primitive_ops_forward_and_backward() {
        let d = &Device::Cpu;
        let scores = Var::from_tensor(&Tensor::randn(0f32, 3.0, (2, 3, 5, 7), d).unwrap()).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], d).unwrap();
        let bias = ops::attention_bias(&mask).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), d).unwrap();
        let fused = attention_softmax(scores.as_tensor(), &bias, 0.3).unwrap();
        let plain = ops::attention_softmax_primitive(scores.as_tensor(), &bias, 0.3).unwrap();
        assert!(
            max_diff(&fused, &plain) < 1e-6,
            "forward differs by {}",
            max_diff(&fused, &plain)
        );
        let (gf, gp) = (grads(&[&scores], &fused, &r), grads(&[&scores], &plain, &r));
        assert!(
            max_diff(&gf[0], &gp[0]) < 1e-5,
            "gradient differs by {}",
            max_diff(&gf[0], &gp[0])
        );
        let masked = fused.narrow(0, 0, 1).unwrap().narrow(3, 5, 2).unwrap();
        assert_eq!(
            masked
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0,
            "padding got attention"
        );
    }
}
