//! Fused CPU kernels with their backward, for f32 tensors: a transformer block's feed-forward part
//! ([`feed_forward`]), dropout + residual + layer norm ([`residual_layer_norm`]), layer norm and a
//! linear layer with its bias. The attention kernel is in [`crate::attention`], dropout and GELU
//! on their own in [`crate::pointwise`]; this module also holds the switch that turns them all off
//! ([`without_fused`]).
//!
//! Candle's backward accumulates the gradient of every input of every graph node into a freshly
//! zeroed buffer, so each activation-sized node costs an allocation, a memset and an add pass in
//! backward; written from primitive ops, a layer norm alone is about eight such nodes. These
//! kernels are one node each and keep only what their backward needs. CUDA has its own kernels
//! ([`crate::cuda`]); other devices and dtypes use the primitive-op versions in [`crate::ops`],
//! which the tests compare these kernels
//! against, forward and gradients. Reductions run in a fixed order (fixed row chunks, summed in
//! sequence), so results do not depend on thread scheduling: resumed runs stay bitwise identical.

use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use crate::matmul::{biased_product, product, Threads, View};
use crate::{multiversion, pointwise, simd};

/// Rows per parallel work item: fixed, so the reduction order is too.
const CHUNK_ROWS: usize = 64;

pub(crate) fn contiguous<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!("fused kernel: {what} is not contiguous"))
    })?;
    match storage {
        CpuStorage::F32(values) => Ok(&values[start..end]),
        _ => candle_core::bail!("fused kernel: {what} is not f32"),
    }
}

/// Runs `f` on the values of an f32 CPU tensor, without copying them (a non-contiguous tensor
/// is made contiguous first).
pub(crate) fn with_values<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(contiguous(cpu, layout, what)?),
        _ => candle_core::bail!("fused kernel: {what} is not on the CPU"),
    }
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

/// Whether [`without_fused`] is in force on this thread (it turns the CUDA kernels of
/// [`crate::cuda`] off too).
pub fn disabled() -> bool {
    DISABLED.with(|d| d.get())
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
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = simd::sum(row) / n;
    let var = simd::sum_squared_deviation(row, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

multiversion! {
    /// Layer norm of each `w.len()`-wide row of `xs` into `out`.
    fn layer_norm_rows(out: &mut [f32], xs: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let n = w.len();
        for (o, row) in out.chunks_exact_mut(n).zip(xs.chunks_exact(n)) {
            let (mean, rstd) = row_stats(row, eps);
            for i in 0..n {
                o[i] = ((row[i] - mean) * rstd).mul_add(w[i], b[i]);
            }
        }
    }
}

multiversion! {
    /// Backward of [`layer_norm_rows`] for a chunk of rows: the input gradient into `gx`, and
    /// this chunk's sums of the weight and bias gradients added to `gw` and `gb`.
    fn layer_norm_backward_rows(
        gx: &mut [f32],
        gw: &mut [f32],
        gb: &mut [f32],
        xs: &[f32],
        gys: &[f32],
        w: &[f32],
        eps: f32,
    ) {
        let n = w.len();
        for ((gx_row, row), gy) in gx.chunks_exact_mut(n).zip(xs.chunks_exact(n)).zip(gys.chunks_exact(n)) {
            let (mean, rstd) = row_stats(row, eps);
            // gx_row holds xhat first, then the gradient.
            for i in 0..n {
                gx_row[i] = (row[i] - mean) * rstd;
                gw[i] = gy[i].mul_add(gx_row[i], gw[i]);
                gb[i] += gy[i];
            }
            let mean_g = simd::dot(gy, w) / n as f32;
            let mean_gx = simd::dot3(gy, w, gx_row) / n as f32;
            for i in 0..n {
                gx_row[i] = rstd * (gy[i] * w[i] - mean_g - gx_row[i] * mean_gx);
            }
        }
    }
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
        if b.len() != n || n == 0 || x.len() % n != 0 {
            candle_core::bail!(
                "fused layer norm: input {:?}, weight {n}, bias {}",
                l1.shape(),
                b.len()
            )
        }
        let mut y = pointwise::zeros(x.len());
        y.par_chunks_mut(n * CHUNK_ROWS)
            .zip(x.par_chunks(n * CHUNK_ROWS))
            .for_each(|(out, rows)| layer_norm_rows(out, rows, w, b, self.eps));
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
        let (gx, gw, gb) = with_values(x, "input", |xs| {
            with_values(w, "weight", |ws| {
                with_values(grad_y, "output gradient", |gys| {
                    let n = ws.len();
                    let mut gx = pointwise::zeros(xs.len());
                    // Per chunk of rows: gx for those rows, and that chunk's partial sums of gw
                    // and gb, added up in chunk order below.
                    let partials: Vec<(Vec<f32>, Vec<f32>)> = gx
                        .par_chunks_mut(n * CHUNK_ROWS)
                        .zip(xs.par_chunks(n * CHUNK_ROWS))
                        .zip(gys.par_chunks(n * CHUNK_ROWS))
                        .map(|((gx, xs), gys)| {
                            let (mut gw, mut gb) = (vec![0f32; n], vec![0f32; n]);
                            layer_norm_backward_rows(gx, &mut gw, &mut gb, xs, gys, ws, self.eps);
                            (gw, gb)
                        })
                        .collect();
                    let (mut gw, mut gb) = (vec![0f32; n], vec![0f32; n]);
                    for (pw, pb) in &partials {
                        gw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
                        gb.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
                    }
                    Ok((gx, gw, gb))
                })
            })
        })?;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), device)?),
            Some(Tensor::from_vec(gw, w.shape(), device)?),
            Some(Tensor::from_vec(gb, w.shape(), device)?),
        ))
    }
}

/// `y = layer_norm(dropout(a) + x)`: the residual connection of a transformer block, with the
/// layer norm's weight and bias stacked as `wb` `(2, hidden)`. One node in the graph instead of
/// three (dropout, add, layer norm), each of whose input gradients candle would accumulate into a
/// fresh zeroed buffer; backward recomputes `dropout(a) + x` (and the mask) instead of keeping it.
struct ResidualLayerNorm {
    eps: f32,
    dropout: Option<simd::Mask>,
}

multiversion! {
    /// `sum = dropout(a) + x` for the rows starting at flat index `first`.
    fn residual_rows(sum: &mut [f32], a: &[f32], x: &[f32], first: u32, dropout: Option<simd::Mask>) {
        match dropout {
            Some(mask) => {
                for (i, ((s, a), x)) in sum.iter_mut().zip(a).zip(x).enumerate() {
                    *s = a.mul_add(mask.factor(first.wrapping_add(i as u32)), *x);
                }
            }
            None => {
                for ((s, a), x) in sum.iter_mut().zip(a).zip(x) {
                    *s = a + x;
                }
            }
        }
    }
}

impl CustomOp3 for ResidualLayerNorm {
    fn name(&self) -> &'static str {
        "fused-residual-layer-norm"
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
        let a = contiguous(s1, l1, "block output")?;
        let x = contiguous(s2, l2, "residual")?;
        let wb = contiguous(s3, l3, "weight and bias")?;
        let n = self.check(a.len(), x.len(), wb.len())?;
        let (w, b) = wb.split_at(n);
        let step = n * CHUNK_ROWS;
        let mut y = pointwise::zeros(a.len());
        y.par_chunks_mut(step)
            .zip(a.par_chunks(step))
            .zip(x.par_chunks(step))
            .enumerate()
            .for_each(|(c, ((out, a), x))| {
                let mut sum = vec![0f32; a.len()];
                residual_rows(&mut sum, a, x, (c * step) as u32, self.dropout);
                layer_norm_rows(out, &sum, w, b, self.eps);
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        x: &Tensor,
        wb: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (ga, gx, gwb) = with_values(a, "block output", |a| {
            with_values(x, "residual", |x| {
                with_values(wb, "weight and bias", |wb| {
                    with_values(grad_y, "output gradient", |gys| {
                        self.backward(a, x, wb, gys)
                    })
                })
            })
        })?;
        let device = a.device();
        let gx = Tensor::from_vec(gx, x.shape(), device)?;
        let ga = match ga {
            Some(ga) => Tensor::from_vec(ga, a.shape(), device)?,
            None => gx.clone(),
        };
        Ok((
            Some(ga),
            Some(gx),
            Some(Tensor::from_vec(gwb, wb.shape(), device)?),
        ))
    }
}

impl ResidualLayerNorm {
    fn check(&self, a: usize, x: usize, wb: usize) -> Result<usize> {
        let n = wb / 2;
        if !wb.is_multiple_of(2)
            || n == 0
            || a != x
            || !a.is_multiple_of(n)
            || a > u32::MAX as usize
        {
            candle_core::bail!(
                "fused residual layer norm: {a} block values, {x} residual values, {wb} weight and bias values"
            )
        }
        Ok(n)
    }

    /// Gradients of the block output (None: equal to the residual's, no dropout), the residual,
    /// and the stacked weight and bias.
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        a: &[f32],
        x: &[f32],
        wb: &[f32],
        gys: &[f32],
    ) -> Result<(Option<Vec<f32>>, Vec<f32>, Vec<f32>)> {
        let n = self.check(a.len(), x.len(), wb.len())?;
        let w = &wb[..n];
        let step = n * CHUNK_ROWS;
        let mut gx = pointwise::zeros(a.len());
        let partials: Vec<(Vec<f32>, Vec<f32>)> = gx
            .par_chunks_mut(step)
            .zip(a.par_chunks(step))
            .zip(x.par_chunks(step))
            .zip(gys.par_chunks(step))
            .enumerate()
            .map(|(c, (((gx, a), x), gys))| {
                let mut sum = vec![0f32; a.len()];
                residual_rows(&mut sum, a, x, (c * step) as u32, self.dropout);
                let (mut gw, mut gb) = (vec![0f32; n], vec![0f32; n]);
                layer_norm_backward_rows(gx, &mut gw, &mut gb, &sum, gys, w, self.eps);
                (gw, gb)
            })
            .collect();
        let mut gwb = vec![0f32; 2 * n];
        for (pw, pb) in &partials {
            gwb[..n].iter_mut().zip(pw).for_each(|(t, v)| *t += v);
            gwb[n..].iter_mut().zip(pb).for_each(|(t, v)| *t += v);
        }
        let ga = self.dropout.map(|mask| {
            let mut ga = pointwise::zeros(gx.len());
            ga.par_chunks_mut(step)
                .zip(gx.par_chunks(step))
                .enumerate()
                .for_each(|(c, (out, g))| pointwise::masked(out, g, (c * step) as u32, mask));
            ga
        });
        Ok((ga, gx, gwb))
    }
}

/// `layer_norm(dropout(a) + x)` over the last dimension for f32 CPU tensors, the dropout mask
/// keyed by `dropout`'s key (see [`crate::rng::DropoutRng::keep_mask`]).
pub fn residual_layer_norm(
    a: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    let wb = Tensor::stack(&[weight, bias], 0)?;
    a.contiguous()?.apply_op3(
        &x.contiguous()?,
        &wb,
        ResidualLayerNorm {
            eps: eps as f32,
            dropout: dropout
                .filter(|(p, _)| *p > 0.0)
                .map(|(p, key)| simd::Mask::new(p, key)),
        },
    )
}

/// The query, key and value projections stacked into one: the weight `(3 hidden, hidden)` and
/// the bias `3 hidden`, and with `flat` both in one flat tensor too (weight then bias: the
/// second input of an attention op that also takes a position bias), the weight and bias then
/// views of it. Either way the parameters are copied once.
pub(crate) fn stacked_projection(
    weights: [&Tensor; 3],
    biases: [&Tensor; 3],
    flat: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    if !flat {
        return Ok((Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?, None));
    }
    let (out, inner) = weights[0].dims2()?;
    let (rows, size) = (3 * out, 3 * out * inner);
    let parts = [
        weights[0].flatten_all()?,
        weights[1].flatten_all()?,
        weights[2].flatten_all()?,
        biases[0].flatten_all()?,
        biases[1].flatten_all()?,
        biases[2].flatten_all()?,
    ];
    let packed = Tensor::cat(&parts, 0)?;
    let w = packed.narrow(0, 0, size)?.reshape((rows, inner))?;
    let b = packed.narrow(0, size, rows)?;
    Ok((w, b, Some(packed)))
}

/// What a fused op keeps from its forward pass for its backward: nothing unless a gradient can be
/// asked for (an input tracks the graph). Backward takes it, freeing it as soon as the op's
/// backward is done; a second backward through the same graph is an error, as in PyTorch without
/// `retain_graph`.
pub(crate) struct Saved<T>(Option<Mutex<Option<T>>>);

impl<T> Saved<T> {
    pub(crate) fn new(tracked: bool) -> Self {
        Self(tracked.then(|| Mutex::new(None)))
    }

    pub(crate) fn put(&self, value: T) {
        if let Some(slot) = &self.0 {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        }
    }

    pub(crate) fn take(&self, op: &str) -> Result<T> {
        let value = self
            .0
            .as_ref()
            .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        value.ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{op}: a second backward through the same graph (the fused kernels free what \
                 they saved for backward after the first, as PyTorch does without retain_graph; \
                 run the forward again)"
            ))
        })
    }
}

/// A transformer block's feed-forward part, `gelu(x w1^T + b1) w2^T + b2` with the exact GELU,
/// as one graph node: the two products, the activation and their backward, with the four
/// parameters packed into one flat tensor. The pre-activation and the activation are kept inside
/// the op for backward (the graph kept both before); no gradient of either goes through candle's
/// accumulation into fresh zeroed buffers.
struct FeedForward {
    hidden: usize,
    inter: usize,
    saved: Saved<Activations>,
}

/// What the feed-forward op keeps for backward: the pre-activation and the activation.
struct Activations {
    pre: Vec<f32>,
    act: Vec<f32>,
}

/// The feed-forward parameters in their packed order.
struct FeedForwardParams<'a> {
    w1: &'a [f32],
    b1: &'a [f32],
    w2: &'a [f32],
    b2: &'a [f32],
}

impl FeedForward {
    fn params<'a>(&self, p: &'a [f32]) -> Result<FeedForwardParams<'a>> {
        let (h, i) = (self.hidden, self.inter);
        if p.len() != 2 * h * i + h + i {
            candle_core::bail!(
                "fused feed-forward: {} parameters for hidden {h}, intermediate {i}",
                p.len()
            )
        }
        let (w1, rest) = p.split_at(i * h);
        let (b1, rest) = rest.split_at(i);
        let (w2, b2) = rest.split_at(h * i);
        Ok(FeedForwardParams { w1, b1, w2, b2 })
    }
}

impl CustomOp2 for FeedForward {
    fn name(&self) -> &'static str {
        "fused-feed-forward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "input")?;
        let FeedForwardParams { w1, b1, w2, b2 } =
            self.params(contiguous(s2, l2, "parameters")?)?;
        if l1.dims().last() != Some(&self.hidden) {
            candle_core::bail!(
                "fused feed-forward: input {:?} for hidden {}",
                l1.shape(),
                self.hidden
            )
        }
        let pre = linear_forward(x, w1, b1, self.hidden, self.inter)?;
        let act = pointwise::gelu_values(&pre);
        let out = linear_forward(&act, w2, b2, self.inter, self.hidden)?;
        self.saved.put(Activations { pre, act });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Activations { pre, act } = self.saved.take("fused feed-forward")?;
        // Frozen parameters (LoRA's base, not adapted here) get no gradient: their two products
        // with the activations are skipped.
        let wanted = params.track_op();
        let (gx, gp) = with_values(x, "input", |xs| {
            with_values(params, "parameters", |p| {
                with_values(grad, "output gradient", |g| {
                    let FeedForwardParams { w1, w2, .. } = self.params(p)?;
                    let (g_act, g2) = if wanted {
                        let (g_act, gw2, gb2) =
                            linear_backward(&act, w2, g, self.inter, self.hidden)?;
                        (g_act, Some((gw2, gb2)))
                    } else {
                        (input_gradient(w2, g, self.inter, self.hidden)?, None)
                    };
                    drop(act);
                    let mut g_pre = pointwise::zeros(pre.len());
                    g_pre
                        .par_chunks_mut(pointwise::CHUNK)
                        .zip(pre.par_chunks(pointwise::CHUNK))
                        .zip(g_act.par_chunks(pointwise::CHUNK))
                        .for_each(|((o, x), g)| pointwise::gelu_backward_chunk(o, x, g));
                    drop((pre, g_act));
                    let Some((gw2, gb2)) = g2 else {
                        return Ok((input_gradient(w1, &g_pre, self.hidden, self.inter)?, None));
                    };
                    let (gx, gw1, gb1) = linear_backward(xs, w1, &g_pre, self.hidden, self.inter)?;
                    let mut gp = Vec::with_capacity(p.len());
                    for part in [&gw1, &gb1, &gw2, &gb2] {
                        gp.extend_from_slice(part);
                    }
                    Ok((gx, Some(gp)))
                })
            })
        })?;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), device)?),
            gp.map(|gp| Tensor::from_vec(gp, params.shape(), device))
                .transpose()?,
        ))
    }
}

/// `gelu(x w1^T + b1) w2^T + b2` (exact GELU) for f32 CPU tensors, `x` `(rows, hidden)`, `w1`
/// `(inter, hidden)`, `w2` `(hidden, inter)`.
pub fn feed_forward(
    x: &Tensor,
    (w1, b1): (&Tensor, &Tensor),
    (w2, b2): (&Tensor, &Tensor),
) -> Result<Tensor> {
    let (inter, hidden) = w1.dims2()?;
    let params = Tensor::cat(&[&w1.flatten_all()?, b1, &w2.flatten_all()?, b2], 0)?;
    let tracked = x.track_op() || params.track_op();
    x.contiguous()?.apply_op2(
        &params,
        FeedForward {
            hidden,
            inter,
            saved: Saved::new(tracked),
        },
    )
}

/// Layer norm over the last dimension of an f32 CPU tensor.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
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
        let (out, weight_inner) = l2.shape().dims2()?;
        let x = contiguous(s1, l1, "input")?;
        let w = contiguous(s2, l2, "weight")?;
        let bias = contiguous(s3, l3, "bias")?;
        if weight_inner != inner || bias.len() != out {
            candle_core::bail!(
                "fused linear: input {rows}x{inner}, weight {out}x{weight_inner}, bias {}",
                bias.len()
            )
        }
        let y = linear_forward(x, w, bias, inner, out)?;
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, inner) = x.dims2()?;
        let out = w.dim(0)?;
        let device = x.device();
        if !w.track_op() && !b.track_op() {
            // Frozen (LoRA's base): the input's gradient only.
            let gx = with_values(w, "weight", |ws| {
                with_values(grad, "output gradient", |gs| {
                    input_gradient(ws, gs, inner, out)
                })
            })?;
            return Ok((Some(Tensor::from_vec(gx, x.shape(), device)?), None, None));
        }
        let (gx, gw, gb) = with_values(x, "input", |xs| {
            with_values(w, "weight", |ws| {
                with_values(grad, "output gradient", |gs| {
                    linear_backward(xs, ws, gs, inner, out)
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), device)?),
            Some(Tensor::from_vec(gw, w.shape(), device)?),
            Some(Tensor::from_vec(gb, out, device)?),
        ))
    }
}

/// `x w^T + b` for row-major `x` `(rows, inner)`, `w` `(out, inner)`, `b` `(out,)`.
pub(crate) fn linear_forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    inner: usize,
    out: usize,
) -> Result<Vec<f32>> {
    let rows = x.len() / inner.max(1);
    biased_product(
        (rows, out, inner),
        View::rows(x, inner),
        View::transposed(w, inner),
        b,
        Threads::Pool,
    )
}

/// The input's gradient of [`linear_forward`] alone, `g w`, given the output gradient `g`.
pub(crate) fn input_gradient(w: &[f32], g: &[f32], inner: usize, out: usize) -> Result<Vec<f32>> {
    let rows = g.len() / out.max(1);
    product(
        (rows, inner, out),
        View::rows(g, out),
        View::rows(w, inner),
        Threads::Pool,
    )
}

/// Gradients of input, weight and bias of [`linear_forward`] given the output gradient `g`.
#[allow(clippy::type_complexity)]
pub(crate) fn linear_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    inner: usize,
    out: usize,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let rows = x.len() / inner.max(1);
    let gx = input_gradient(w, g, inner, out)?;
    let gw = product(
        (out, inner, rows),
        View::transposed(g, out),
        View::rows(x, inner),
        Threads::Pool,
    )?;
    Ok((gx, gw, column_sums(g, out)))
}

/// [`linear_backward`] of stacked projections: the output's columns are `wanted.len()` equal
/// blocks (query, key and value), and the weight's gradient is computed only for the blocks
/// whose weight wants one (LoRA's frozen bases do not), zeros elsewhere. The input's and the
/// bias's gradients are whole.
#[allow(clippy::type_complexity)]
pub(crate) fn stacked_linear_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    inner: usize,
    out: usize,
    wanted: &[bool],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    if wanted.iter().all(|&want| want) || !out.is_multiple_of(wanted.len()) {
        return linear_backward(x, w, g, inner, out);
    }
    let rows = x.len() / inner.max(1);
    let block = out / wanted.len();
    let gx = input_gradient(w, g, inner, out)?;
    let mut gw = vec![0f32; out * inner];
    for (j, _) in wanted.iter().enumerate().filter(|(_, &want)| want) {
        let part = product(
            (block, inner, rows),
            View::transposed(&g[j * block..], out),
            View::rows(x, inner),
            Threads::Pool,
        )?;
        gw[j * block * inner..(j + 1) * block * inner].copy_from_slice(&part);
    }
    Ok((gx, gw, column_sums(g, out)))
}

multiversion! {
    pub(crate) fn add_rows(acc: &mut [f32], rows: &[f32]) {
        for row in rows.chunks_exact(acc.len()) {
            acc.iter_mut().zip(row).for_each(|(a, r)| *a += r);
        }
    }
}

/// Sums of the `cols`-wide rows of `values`: per fixed chunk of rows in parallel, then the chunks
/// in order (the same result for any thread count).
fn column_sums(values: &[f32], cols: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = values
        .par_chunks(cols * CHUNK_ROWS)
        .map(|rows| {
            let mut acc = vec![0f32; cols];
            add_rows(&mut acc, rows);
            acc
        })
        .collect();
    let mut total = vec![0f32; cols];
    for p in &partials {
        add_rows(&mut total, p);
    }
    total
}

/// `xs w^T + b` for a 2-D f32 CPU `xs`.
pub fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

#[cfg(test)]
mod tests {
    use crate::test_util::max_diff;
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops;

    /// Asserts that `fused` and `plain` agree in value (1e-5) and in the gradient of
    /// `sum(out * r)` with respect to each of `vars` (1e-4), naming the input that differs.
    fn assert_same(fused: &Tensor, plain: &Tensor, vars: &[(&str, &Var)], r: &Tensor) {
        let diff = max_diff(fused, plain);
        assert!(diff < 1e-5, "forward differs by {diff}");
        let inputs: Vec<&Var> = vars.iter().map(|(_, v)| *v).collect();
        let (gf, gp) = (grads(&inputs, fused, r), grads(&inputs, plain, r));
        for ((name, _), (a, b)) in vars.iter().zip(gf.iter().zip(&gp)) {
            let diff = max_diff(a, b);
            assert!(diff < 1e-4, "gradient of {name} differs by {diff}");
        }
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
        assert_same(
            &fused,
            &plain,
            &[("x", &x), ("weight", &w), ("bias", &b)],
            &r,
        );
    }

    #[test]
    fn fused_residual_layer_norm_matches_primitive_ops_with_and_without_dropout() {
        use crate::rng::DropoutRng;
        let d = &Device::Cpu;
        // 150 rows of 48: more than two parallel chunks of rows.
        let var = |shape: (usize, usize), mean: f32| {
            Var::from_tensor(&Tensor::randn(mean, 1.0, shape, d).unwrap()).unwrap()
        };
        let (a, x) = (var((150, 48), 0.3), var((150, 48), -0.2));
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 48, d).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 48, d).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (150, 48), d).unwrap();
        for p in [0.0, 0.25] {
            let (rng_fused, rng_plain) = (DropoutRng::new(9), DropoutRng::new(9));
            let fused = residual_layer_norm(
                a.as_tensor(),
                x.as_tensor(),
                w.as_tensor(),
                b.as_tensor(),
                1e-12,
                Some((p, rng_fused.draw_key())),
            )
            .unwrap();
            let dropped = if p > 0.0 {
                let mask = rng_plain.keep_mask(a.shape(), p, d, DType::F32).unwrap();
                (a.as_tensor() * mask).unwrap()
            } else {
                a.as_tensor().clone()
            };
            let plain = ops::layer_norm_primitive(
                &(dropped + x.as_tensor()).unwrap(),
                w.as_tensor(),
                b.as_tensor(),
                1e-12,
            )
            .unwrap();
            assert!(
                max_diff(&fused, &plain) < 1e-5,
                "p {p}: forward differs by {}",
                max_diff(&fused, &plain)
            );
            let vars = [&a, &x, &w, &b];
            let (gf, gp) = (grads(&vars, &fused, &r), grads(&vars, &plain, &r));
            for (name, (f, q)) in ["a", "x", "weight", "bias"].iter().zip(gf.iter().zip(&gp)) {
                assert!(
                    max_diff(f, q) < 1e-4,
                    "p {p}: gradient of {name} differs by {}",
                    max_diff(f, q)
                );
            }
            if p > 0.0 {
                assert!(
                    max_diff(&gf[0], &gf[1]) > 0.1,
                    "dropout must mask a's gradient"
                );
            }
        }
    }

    #[test]
    fn fused_feed_forward_matches_primitive_ops_forward_and_backward() {
        let d = &Device::Cpu;
        let var = |shape: &[usize], std: f32| {
            Var::from_tensor(&Tensor::randn(0f32, std, shape, d).unwrap()).unwrap()
        };
        let (rows, hidden, inter) = (70, 24, 40);
        let x = var(&[rows, hidden], 1.0);
        let (w1, b1) = (var(&[inter, hidden], 0.3), var(&[inter], 0.3));
        let (w2, b2) = (var(&[hidden, inter], 0.3), var(&[hidden], 0.3));
        let r = Tensor::randn(0f32, 1.0, (rows, hidden), d).unwrap();
        let fused = feed_forward(&x, (&w1, &b1), (&w2, &b2)).unwrap();
        let pre = x
            .matmul(&w1.t().unwrap())
            .unwrap()
            .broadcast_add(&b1)
            .unwrap();
        let plain = pre
            .gelu_erf()
            .unwrap()
            .matmul(&w2.t().unwrap())
            .unwrap()
            .broadcast_add(&b2)
            .unwrap();
        assert_same(
            &fused,
            &plain,
            &[
                ("x", &x),
                ("w1", &w1),
                ("b1", &b1),
                ("w2", &w2),
                ("b2", &b2),
            ],
            &r,
        );
    }

    #[test]
    fn stacked_backward_skips_only_the_frozen_blocks_weight_products() {
        let values =
            |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * f).sin()).collect() };
        let (rows, inner, block) = (13, 8, 6);
        let (x, w, g) = (
            values(rows * inner, 0.37),
            values(3 * block * inner, 0.11),
            values(rows * 3 * block, 0.23),
        );
        let (gx, gw, gb) = linear_backward(&x, &w, &g, inner, 3 * block).unwrap();
        let (sx, sw, sb) =
            stacked_linear_backward(&x, &w, &g, inner, 3 * block, &[true, false, true]).unwrap();
        assert_eq!((sx, sb), (gx, gb));
        let size = block * inner;
        for (j, wanted) in [true, false, true].into_iter().enumerate() {
            let (ours, full) = (&sw[j * size..(j + 1) * size], &gw[j * size..(j + 1) * size]);
            if wanted {
                let gap = ours
                    .iter()
                    .zip(full)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(gap < 1e-5, "block {j}: {gap}");
            } else {
                assert!(ours.iter().all(|&v| v == 0.0), "block {j} was computed");
            }
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
        assert_same(
            &fused,
            &plain,
            &[("x", &x), ("weight", &w), ("bias", &b)],
            &r,
        );
    }
}
