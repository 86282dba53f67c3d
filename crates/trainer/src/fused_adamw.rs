//! AdamW's update fused into three in-place passes over each parameter on the CPU.
//!
//! Written with tensor ops, one AdamW update allocates about a dozen parameter-sized temporaries
//! (for MiniLM's 22.7M parameters, over 1 GB of fresh memory per step, mostly page faults). Here
//! the moments and the parameter are updated in place: `m <- b1 m + (1 - b1) g`,
//! `v <- b2 v + (1 - b2) g^2`, `p <- p (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)`,
//! the same arithmetic as the tensor-op path in f32, vectorised and split over rayon in fixed
//! chunks. The gradient-clipping coefficient is folded into the moment passes instead of being
//! applied in a pass of its own. On CUDA the same arithmetic runs as one kernel per parameter
//! ([`wick_model::cuda::optim`]) instead of about fifteen tensor ops, and the gradient norm as one
//! kernel per gradient plus one sum. Other devices keep the tensor-op path.

use candle_core::{bail, CpuStorage, InplaceOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use wick_model::multiversion;

fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("fused AdamW: {what} is not contiguous")))?;
    match storage {
        CpuStorage::F32(values) => Ok(&values[start..end]),
        _ => bail!("fused AdamW: {what} is not f32"),
    }
}

fn slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a mut [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("fused AdamW: {what} is not contiguous")))?;
    match storage {
        CpuStorage::F32(values) => Ok(&mut values[start..end]),
        _ => bail!("fused AdamW: {what} is not f32"),
    }
}

/// `moment <- beta * moment + (1 - beta) * (s g)` (or `(s g)^2` for the second moment), where
/// the scalar `s` (the gradient-clipping coefficient) is the op's third input: it is read inside
/// the kernel like the gradient, not fetched by the training loop.
struct Moment {
    beta: f32,
    squared: bool,
}

/// Elements per parallel work item.
const CHUNK: usize = 1 << 15;

multiversion! {
    fn first_moment(moment: &mut [f32], grad: &[f32], beta: f32, grad_scale: f32) {
        let keep = 1.0 - beta;
        for (m, &g) in moment.iter_mut().zip(grad) {
            *m = beta * *m + keep * (g * grad_scale);
        }
    }
}

multiversion! {
    fn second_moment(moment: &mut [f32], grad: &[f32], beta: f32, grad_scale: f32) {
        let keep = 1.0 - beta;
        for (m, &g) in moment.iter_mut().zip(grad) {
            let g = g * grad_scale;
            *m = beta * *m + keep * (g * g);
        }
    }
}

impl InplaceOp3 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let moment = slice_mut(s1, l1, "moment")?;
        let grad = slice(s2, l2, "gradient")?;
        let &[scale] = slice(s3, l3, "gradient scale")? else {
            bail!("fused AdamW: the gradient scale must be one value")
        };
        if moment.len() != grad.len() {
            bail!(
                "fused AdamW: {} moment values, {} gradient values",
                moment.len(),
                grad.len()
            )
        }
        let beta = self.beta;
        let pass = if self.squared {
            second_moment
        } else {
            first_moment
        };
        moment
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .for_each(|(m, g)| pass(m, g, beta, scale));
        Ok(())
    }
}

struct Update {
    decay: f32,
    step: f32,
    inv_bias2_sqrt: f32,
    eps: f32,
}

multiversion! {
    fn apply_update(param: &mut [f32], m: &[f32], v: &[f32], u: &Update) {
        for ((p, &m), &v) in param.iter_mut().zip(m).zip(v) {
            *p = *p * u.decay - u.step * (m / (v.sqrt() * u.inv_bias2_sqrt + u.eps));
        }
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let param = slice_mut(s1, l1, "parameter")?;
        let (m, v) = (
            slice(s2, l2, "first moment")?,
            slice(s3, l3, "second moment")?,
        );
        if m.len() != param.len() || v.len() != param.len() {
            bail!(
                "fused AdamW: moments of {} and {} values for {} parameters",
                m.len(),
                v.len(),
                param.len()
            )
        }
        param
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((p, m), v)| apply_update(p, m, v, self));
        Ok(())
    }
}

/// Whether the fused path applies: f32 tensors on the CPU (or on CUDA in a build with the
/// feature), all contiguous.
pub fn applies(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    on_fused_device(param)
        && [param, grad, m, v]
            .iter()
            .all(|t| t.dtype() == candle_core::DType::F32 && t.is_contiguous())
}

/// One AdamW update in place. `decay = 1 - lr * wd`, `step = lr / (1 - beta1^t)`. `apply`, a
/// one-value f32 device scalar (CUDA only), skips the update where it is 0.
#[allow(clippy::too_many_arguments)]
pub fn update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    (beta1, beta2, eps): (f64, f64, f64),
    decay: f64,
    step: f64,
    bias2_sqrt: f64,
    (grad_scale, apply): (&Tensor, Option<&Tensor>),
) -> Result<()> {
    let grad_scale = grad_scale.to_dtype(candle_core::DType::F32)?;
    if param.device().is_cuda() {
        return wick_model::cuda::optim::adamw(
            param,
            grad,
            (m, v),
            (&grad_scale, apply),
            (beta1 as f32, beta2 as f32),
            decay as f32,
            step as f32,
            (1.0 / bias2_sqrt) as f32,
            eps as f32,
        );
    }
    if apply.is_some() {
        bail!("fused AdamW: a skip flag is for the CUDA kernel only")
    }
    m.inplace_op3(
        grad,
        &grad_scale,
        &Moment {
            beta: beta1 as f32,
            squared: false,
        },
    )?;
    v.inplace_op3(
        grad,
        &grad_scale,
        &Moment {
            beta: beta2 as f32,
            squared: true,
        },
    )?;
    param.inplace_op3(
        m,
        v,
        &Update {
            decay: decay as f32,
            step: step as f32,
            inv_bias2_sqrt: (1.0 / bias2_sqrt) as f32,
            eps: eps as f32,
        },
    )
}

multiversion! {
    fn chunk_sum_of_squares(xs: &[f32]) -> f32 {
        wick_model::simd::dot(xs, xs)
    }
}

/// `sum(x^2)` of an f32 CPU tensor as a scalar f32 tensor, in fixed chunks (no temporary the size
/// of the gradient, the same result for any thread count).
struct SumOfSquares;

impl candle_core::CustomOp1 for SumOfSquares {
    fn name(&self) -> &'static str {
        "sum-of-squares"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = slice(storage, layout, "gradient")?;
        let partials: Vec<f32> = xs.par_chunks(CHUNK).map(chunk_sum_of_squares).collect();
        Ok((
            CpuStorage::F32(vec![partials.iter().sum()]),
            Shape::from(()),
        ))
    }
}

/// The CPU, or a CUDA device when this build has the kernels.
fn on_fused_device(t: &Tensor) -> bool {
    t.device().is_cpu() || (cfg!(feature = "cuda") && t.device().is_cuda())
}

/// Whether [`sum_of_squares`] (and the deferred clipping scale) applies: a contiguous f32 tensor
/// on the CPU or on CUDA.
pub fn sum_of_squares_applies(t: &Tensor) -> bool {
    on_fused_device(t) && t.dtype() == candle_core::DType::F32 && t.is_contiguous()
}

/// `sum(t^2)` over all of `tensors` as a scalar tensor, for tensors where
/// [`sum_of_squares_applies`], all on one device.
pub fn sum_of_squares(tensors: &[&Tensor]) -> Result<Option<Tensor>> {
    let Some(first) = tensors.first() else {
        return Ok(None);
    };
    if first.device().is_cuda() {
        return wick_model::cuda::optim::sum_of_squares(tensors).map(Some);
    }
    let mut total: Option<Tensor> = None;
    for t in tensors {
        let sq = t.apply_op1_no_bwd(&SumOfSquares)?;
        total = Some(match total {
            Some(total) => (total + sq)?,
            None => sq,
        });
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_update_equals_the_tensor_op_update() {
        let d = &Device::Cpu;
        let (b1, b2, eps, lr, wd, t) = (0.9, 0.999, 1e-8, 1e-3, 0.01, 3);
        let (bias1, bias2_sqrt) = (1.0 - f64::powi(b1, t), (1.0 - f64::powi(b2, t)).sqrt());
        let p = Tensor::randn(0f32, 1.0, (37, 11), d).unwrap();
        let g = Tensor::randn(0f32, 1.0, (37, 11), d).unwrap();
        let m = Tensor::randn(0f32, 0.1, (37, 11), d).unwrap();
        let v = Tensor::rand(0f32, 0.1, (37, 11), d).unwrap();

        let m2 = (m.affine(b1, 0.0).unwrap() + g.affine(1.0 - b1, 0.0).unwrap()).unwrap();
        let v2 =
            (v.affine(b2, 0.0).unwrap() + g.sqr().unwrap().affine(1.0 - b2, 0.0).unwrap()).unwrap();
        let denom = v2.sqrt().unwrap().affine(1.0 / bias2_sqrt, eps).unwrap();
        let expected = (p.affine(1.0 - lr * wd, 0.0).unwrap()
            - (m2.div(&denom).unwrap() * (lr / bias1)).unwrap())
        .unwrap();

        let (p, m, v) = (p.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
        assert!(applies(&p, &g, &m, &v));
        update(
            &p,
            &g,
            &m,
            &v,
            (b1, b2, eps),
            1.0 - lr * wd,
            lr / bias1,
            bias2_sqrt,
            (&Tensor::new(1f32, d).unwrap(), None),
        )
        .unwrap();
        for (got, want) in [(&p, &expected), (&m, &m2), (&v, &v2)] {
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "fused and tensor-op AdamW differ by {diff}");
        }
    }
}
