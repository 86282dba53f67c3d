//! Fused multi-head self-attention for f32 on the CPU, forward and backward.
//!
//! One op from the hidden states to the context: the query, key and value projections as one
//! product with the stacked `(3 * hidden, hidden)` weight, then per head
//! `context = dropout(softmax(scale * q k^T + bias)) v`, reading each head straight out of the
//! `(batch * seq, 3 * hidden)` projections and writing the context as `(batch * seq, hidden)`:
//! no head split, no transposed copies, and one graph node (candle accumulates every input
//! gradient of every node into a fresh zeroed buffer). The op keeps the projections for backward
//! and nothing `(batch, heads, seq, seq)`-sized: backward recomputes the probabilities of one head
//! at a time (a `seq x seq` scratch per worker) and regenerates the dropout mask from its key (see
//! [`crate::simd::keep_hash`]). The mask is the one [`crate::rng::DropoutRng`] draws for the
//! `(batch, heads, seq, seq)` probabilities under the same key, so this kernel and the
//! primitive-op attention in [`crate::bert`] agree exactly; the tests compare them, forward and
//! gradients. MPNet's relative position bias `(heads, seq, seq)` is an input of its own op
//! ([`self_attention`] with a position bias) and gets its gradient, summed over batch rows in
//! fixed pairs and then over the pairs in order. The per-head work is split by batch row (each worker owns whole rows of every
//! output) and each element is computed by a fixed sequence of operations, so results do not
//! depend on thread scheduling.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::fused::{self, contiguous, with_values, Saved};
use crate::matmul::{gemm, Threads, View};
use crate::{multiversion, pointwise, simd};

/// Dropout on the attention probabilities: drop probability and the mask's key.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDropout {
    pub p: f64,
    pub key: u64,
}

struct SelfAttention {
    batch: usize,
    seq: usize,
    heads: usize,
    scale: f32,
    /// The additive mask, `batch * seq` values (0 for a real key, a large negative number for
    /// padding).
    bias: HostMask,
    dropout: Option<AttentionDropout>,
    /// The projections `(batch * seq, 3 * hidden)` of the forward pass, kept for backward when
    /// a gradient will be asked for.
    saved: Saved<Vec<f32>>,
    /// Whether the query, key and value weights want a gradient: under LoRA on some of them the
    /// others are frozen, and backward skips their weight products.
    weight_grads: [bool; 3],
}

/// The dropout applied to one head's probabilities: the mask, and the flat index of the head's
/// first element in the `(batch, heads, seq, seq)` mask.
#[derive(Clone, Copy)]
struct HeadMask {
    mask: simd::Mask,
    first: u32,
}

multiversion! {
    /// Rows of `scale * scores + bias (+ position)` -> softmax, in place (`k` columns per row;
    /// `position`, when given, holds one `k`-wide row per score row).
    fn softmax_rows(scores: &mut [f32], k: usize, bias: &[f32], scale: f32, position: Option<&[f32]>) {
        for (r, row) in scores.chunks_exact_mut(k).enumerate() {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = v.mul_add(scale, *b);
            }
            if let Some(position) = position {
                for (v, p) in row.iter_mut().zip(&position[r * k..(r + 1) * k]) {
                    *v += *p;
                }
            }
            let max = simd::max(row);
            for v in row.iter_mut() {
                *v = simd::exp(*v - max);
            }
            let inv = 1.0 / simd::sum(row);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// The probabilities the context uses: `probs` itself, or with the head's dropout applied into
/// `scratch`.
fn after_dropout<'a>(
    mask: Option<HeadMask>,
    probs: &'a [f32],
    scratch: &'a mut [f32],
) -> &'a [f32] {
    match mask {
        Some(head) => {
            pointwise::masked(scratch, probs, head.first, head.mask);
            scratch
        }
        None => probs,
    }
}

multiversion! {
    /// Softmax backward in place: `grad` (the gradient of the dropped probabilities) becomes the
    /// gradient of the raw scores, `scale * probs * (mask * grad - sum(probs * mask * grad))`.
    fn softmax_backward_rows(grad: &mut [f32], probs: &[f32], k: usize, scale: f32, mask: Option<HeadMask>) {
        for (r, (g, p)) in grad.chunks_exact_mut(k).zip(probs.chunks_exact(k)).enumerate() {
            if let Some(head) = mask {
                let first = head.first.wrapping_add((r * k) as u32);
                for (i, v) in g.iter_mut().enumerate() {
                    *v *= head.mask.factor(first.wrapping_add(i as u32));
                }
            }
            let dot = simd::dot(g, p);
            for (v, p) in g.iter_mut().zip(p) {
                *v = scale * p * (*v - dot);
            }
        }
    }
}

/// `c = a @ b` for one head's small product, on the calling worker (the heads of a batch row run
/// in sequence inside one rayon task).
fn head_gemm(
    dims: (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    c: &mut [f32],
    ldc: usize,
) -> Result<()> {
    scaled_head_gemm(dims, a, b, c, ldc, 1.0)
}

/// `c = alpha * a @ b`, as [`head_gemm`].
fn scaled_head_gemm(
    dims: (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
) -> Result<()> {
    gemm(dims, a, b, c, ldc, 0.0, alpha, Threads::Caller)
}

/// Batch rows whose position-bias gradients one worker sums before the partial sums are added
/// in order: a fixed grouping, so the sum does not depend on the thread count.
const POSITION_GRAD_ROWS: usize = 2;

/// Where one head of one batch row lives in the projections.
#[derive(Clone, Copy)]
struct Head {
    /// Its index among the heads.
    index: usize,
    /// Offsets of its query, key and value columns of its first row in the projections.
    q: usize,
    k: usize,
    v: usize,
    /// Offset of its context columns of its first row, within the batch row's output block.
    out: usize,
}

impl SelfAttention {
    fn head_mask(&self, b: usize, h: usize) -> Option<HeadMask> {
        self.dropout.filter(|d| d.p > 0.0).map(|d| HeadMask {
            mask: simd::Mask::new(d.p, d.key),
            first: ((b * self.heads + h) * self.seq * self.seq) as u32,
        })
    }

    fn head(&self, hidden: usize, b: usize, h: usize) -> Head {
        let dh = hidden / self.heads;
        let row = b * self.seq * 3 * hidden;
        Head {
            index: h,
            q: row + h * dh,
            k: row + hidden + h * dh,
            v: row + 2 * hidden + h * dh,
            out: h * dh,
        }
    }

    /// The probabilities of one head of batch row `b` (before dropout) into `probs`.
    fn probabilities(
        &self,
        qkv: &[f32],
        hidden: usize,
        b: usize,
        head: Head,
        position: Option<&[f32]>,
        probs: &mut [f32],
    ) -> Result<()> {
        let seq = self.seq;
        head_gemm(
            (seq, seq, hidden / self.heads),
            View::rows(&qkv[head.q..], 3 * hidden),
            View::transposed(&qkv[head.k..], 3 * hidden),
            probs,
            seq,
        )?;
        let position = position.map(|p| &p[head.index * seq * seq..(head.index + 1) * seq * seq]);
        softmax_rows(
            probs,
            seq,
            &self.bias[b * seq..(b + 1) * seq],
            self.scale,
            position,
        );
        Ok(())
    }

    /// Shapes: hidden states `(rows, hidden)`, weight `(3 hidden, hidden)`, bias `3 hidden`,
    /// position bias (if any) `heads * seq * seq` values.
    fn check(
        &self,
        x: &Shape,
        (out, inner): (usize, usize),
        bias: usize,
        position: Option<usize>,
    ) -> Result<usize> {
        let (rows, hidden) = x.dims2()?;
        if out != 3 * hidden || inner != hidden || bias != 3 * hidden {
            candle_core::bail!(
                "fused attention: hidden states {x:?}, stacked projection weight ({out}, {inner}), \
                 bias of {bias}"
            )
        }
        if rows != self.batch * self.seq || hidden % self.heads != 0 {
            candle_core::bail!(
                "fused attention: {rows}x{hidden} hidden states for batch {} x seq {} and {} heads",
                self.batch,
                self.seq,
                self.heads
            )
        }
        if self.bias.len() != rows {
            candle_core::bail!(
                "fused attention: {} mask values for {rows} rows",
                self.bias.len()
            )
        }
        if let Some(position) = position {
            if position != self.heads * self.seq * self.seq {
                candle_core::bail!(
                    "fused attention: {position} position bias values for {} heads x seq {} x seq {}",
                    self.heads,
                    self.seq,
                    self.seq
                )
            }
        }
        if (self.batch * self.heads * self.seq * self.seq) > u32::MAX as usize {
            candle_core::bail!(
                "fused attention: more than 2^32 attention probabilities in one batch"
            )
        }
        Ok(hidden)
    }

    /// The context `(rows, hidden)` from the projections.
    fn context(&self, qkv: &[f32], hidden: usize, position: Option<&[f32]>) -> Result<Vec<f32>> {
        let seq = self.seq;
        let mut out = pointwise::zeros(self.batch * seq * hidden);
        out.par_chunks_mut(seq * hidden)
            .enumerate()
            .try_for_each(|(b, out)| -> Result<()> {
                let mut probs = vec![0f32; seq * seq];
                let mut dropped = vec![0f32; seq * seq];
                for h in 0..self.heads {
                    let head = self.head(hidden, b, h);
                    self.probabilities(qkv, hidden, b, head, position, &mut probs)?;
                    let used = after_dropout(self.head_mask(b, h), &probs, &mut dropped);
                    head_gemm(
                        (seq, hidden / self.heads, seq),
                        View::rows(used, seq),
                        View::rows(&qkv[head.v..], 3 * hidden),
                        &mut out[head.out..],
                        hidden,
                    )?;
                }
                Ok(())
            })?;
        Ok(out)
    }

    /// The op's forward pass: the stacked projections of `x` (kept for backward), then the
    /// context.
    fn forward(
        &self,
        x: &[f32],
        (w, b): (&[f32], &[f32]),
        hidden: usize,
        position: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let qkv = fused::linear_forward(x, w, b, hidden, 3 * hidden)?;
        let out = self.context(&qkv, hidden, position)?;
        self.saved.put(qkv);
        Ok(out)
    }

    /// The op's backward pass from the kept projections: the gradients of the hidden states, the
    /// stacked weight and bias, and (with a position bias whose gradient is wanted) of the
    /// position bias.
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        xs: &[f32],
        w: &[f32],
        g: &[f32],
        hidden: usize,
        position: Option<(&[f32], bool)>,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>)> {
        let qkv = self.saved.take("fused attention")?;
        let (values, wanted) = position.map_or((None, false), |(p, wanted)| (Some(p), wanted));
        let (gqkv, gposition) = self.projections_backward(&qkv, g, hidden, values, wanted)?;
        drop(qkv);
        let (gx, gw, gb) =
            fused::stacked_linear_backward(xs, w, &gqkv, hidden, 3 * hidden, &self.weight_grads)?;
        Ok((gx, gw, gb, gposition))
    }

    /// The gradient of the projections `(rows, 3 hidden)` given the context gradient `g`, and
    /// with `position_grad` that of the position bias `(heads, seq, seq)` (the sum over batch
    /// rows of the gradient of the biased scores).
    fn projections_backward(
        &self,
        qkv: &[f32],
        g: &[f32],
        hidden: usize,
        position: Option<&[f32]>,
        position_grad: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let (seq, ld) = (self.seq, 3 * hidden);
        let mut gqkv = pointwise::zeros(qkv.len());
        if !position_grad {
            gqkv.par_chunks_mut(seq * ld)
                .enumerate()
                .try_for_each(|(b, gqkv)| {
                    self.row_backward(qkv, g, hidden, position, b, gqkv, None)
                })?;
            return Ok((gqkv, None));
        }
        // Each group of rows sums its own partial gradient of the position bias.
        let per_head = self.heads * seq * seq;
        let groups = self.batch.div_ceil(POSITION_GRAD_ROWS);
        let mut partial = pointwise::zeros(groups * per_head);
        gqkv.par_chunks_mut(POSITION_GRAD_ROWS * seq * ld)
            .zip(partial.par_chunks_mut(per_head))
            .enumerate()
            .try_for_each(|(group, (gqkv, partial))| -> Result<()> {
                for (i, gqkv) in gqkv.chunks_mut(seq * ld).enumerate() {
                    let b = group * POSITION_GRAD_ROWS + i;
                    self.row_backward(qkv, g, hidden, position, b, gqkv, Some(&mut *partial))?;
                }
                Ok(())
            })?;
        let mut gposition = pointwise::zeros(per_head);
        gposition
            .par_chunks_mut(pointwise::CHUNK)
            .enumerate()
            .for_each(|(c, out)| {
                let at = c * pointwise::CHUNK;
                for group in partial.chunks_exact(per_head) {
                    fused::add_rows(out, &group[at..at + out.len()]);
                }
            });
        Ok((gqkv, Some(gposition)))
    }

    /// Backward of batch row `b` into its block `gqkv` of the projections' gradient; with
    /// `position_grad`, the gradient of the biased scores of each head is added to it.
    #[allow(clippy::too_many_arguments)]
    fn row_backward(
        &self,
        qkv: &[f32],
        g: &[f32],
        hidden: usize,
        position: Option<&[f32]>,
        b: usize,
        gqkv: &mut [f32],
        mut position_grad: Option<&mut [f32]>,
    ) -> Result<()> {
        let (seq, dh, ld) = (self.seq, hidden / self.heads, 3 * hidden);
        let mut probs = vec![0f32; seq * seq];
        let mut dropped = vec![0f32; seq * seq];
        let mut grad_probs = vec![0f32; seq * seq];
        for h in 0..self.heads {
            let head = self.head(hidden, b, h);
            // Offsets within this batch row's block of the projections' gradient.
            let row = b * seq * ld;
            let (gq, gk, gv) = (head.q - row, head.k - row, head.v - row);
            let go = b * seq * hidden + head.out;
            self.probabilities(qkv, hidden, b, head, position, &mut probs)?;
            let mask = self.head_mask(b, h);
            let used = after_dropout(mask, &probs, &mut dropped);
            // d(value) = dropped^T g; d(dropped) = g value^T.
            head_gemm(
                (seq, dh, seq),
                View::transposed(used, seq),
                View::rows(&g[go..], hidden),
                &mut gqkv[gv..],
                ld,
            )?;
            head_gemm(
                (seq, seq, dh),
                View::rows(&g[go..], hidden),
                View::transposed(&qkv[head.v..], ld),
                &mut grad_probs,
                seq,
            )?;
            // The scores' gradient: scaled here, or (when the position bias wants the unscaled
            // one) scaled by the two products below.
            let scale = match position_grad.as_deref_mut() {
                Some(sums) => {
                    softmax_backward_rows(&mut grad_probs, &probs, seq, 1.0, mask);
                    fused::add_rows(&mut sums[h * seq * seq..(h + 1) * seq * seq], &grad_probs);
                    self.scale
                }
                None => {
                    softmax_backward_rows(&mut grad_probs, &probs, seq, self.scale, mask);
                    1.0
                }
            };
            // scores = q k^T: d(query) = ds k, d(key) = ds^T q.
            scaled_head_gemm(
                (seq, dh, seq),
                View::rows(&grad_probs, seq),
                View::rows(&qkv[head.k..], ld),
                &mut gqkv[gq..],
                ld,
                scale,
            )?;
            scaled_head_gemm(
                (seq, dh, seq),
                View::transposed(&grad_probs, seq),
                View::rows(&qkv[head.q..], ld),
                &mut gqkv[gk..],
                ld,
                scale,
            )?;
        }
        Ok(())
    }
}

impl CustomOp3 for SelfAttention {
    fn name(&self) -> &'static str {
        "fused-self-attention"
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
        let hidden = self.check(
            l1.shape(),
            l2.shape().dims2()?,
            l3.shape().elem_count(),
            None,
        )?;
        let x = contiguous(s1, l1, "hidden states")?;
        let w = contiguous(s2, l2, "projection weight")?;
        let b = contiguous(s3, l3, "projection bias")?;
        let out = self.forward(x, (w, b), hidden, None)?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let hidden = x.dim(1)?;
        let (gx, gw, gb, _) = with_values(x, "hidden states", |xs| {
            with_values(w, "projection weight", |ws| {
                with_values(grad, "context gradient", |g| {
                    self.backward(xs, ws, g, hidden, None)
                })
            })
        })?;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), device)?),
            Some(Tensor::from_vec(gw, w.shape(), device)?),
            Some(Tensor::from_vec(gb, 3 * hidden, device)?),
        ))
    }
}

/// The attention with a position bias that can take a gradient (MPNet's relative position
/// bias): the op's inputs are the hidden states, the stacked weight and bias packed into one
/// flat tensor (`3 hidden * hidden` then `3 hidden` values), and the bias `(heads, seq, seq)`.
struct WithPosition(SelfAttention);

impl WithPosition {
    /// The hidden size, after checking the three inputs.
    fn check(&self, x: &Shape, packed: usize, position: usize) -> Result<usize> {
        let hidden = x.dims2()?.1;
        if packed != 3 * hidden * (hidden + 1) {
            candle_core::bail!(
                "fused attention: {packed} packed projection values for hidden size {hidden}"
            )
        }
        self.0
            .check(x, (3 * hidden, hidden), 3 * hidden, Some(position))
    }
}

impl CustomOp3 for WithPosition {
    fn name(&self) -> &'static str {
        "fused-self-attention-position-bias"
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
        let hidden = self.check(l1.shape(), l2.shape().elem_count(), l3.shape().elem_count())?;
        let x = contiguous(s1, l1, "hidden states")?;
        let (w, b) =
            contiguous(s2, l2, "projection weight and bias")?.split_at(3 * hidden * hidden);
        let position = contiguous(s3, l3, "position bias")?;
        let out = self.0.forward(x, (w, b), hidden, Some(position))?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        position: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let hidden = x.dim(1)?;
        let position_grad = position.track_op();
        let (gx, gpacked, gposition) = with_values(x, "hidden states", |xs| {
            with_values(packed, "projection weight and bias", |wb| {
                with_values(position, "position bias", |p| {
                    with_values(grad, "context gradient", |g| {
                        let w = &wb[..3 * hidden * hidden];
                        let position = Some((p, position_grad));
                        let (gx, mut gw, gb, gposition) =
                            self.0.backward(xs, w, g, hidden, position)?;
                        gw.extend_from_slice(&gb);
                        Ok((gx, gw, gposition))
                    })
                })
            })
        })?;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), device)?),
            Some(Tensor::from_vec(gpacked, packed.shape(), device)?),
            gposition
                .map(|gp| Tensor::from_vec(gp, position.shape(), device))
                .transpose()?,
        ))
    }
}

/// The additive attention mask as host values, read once per forward pass and shared by every
/// layer's attention: the mask of [`crate::ops::attention_bias`], `batch * seq` values.
#[derive(Debug, Clone)]
pub struct HostMask(std::sync::Arc<[f32]>);

impl HostMask {
    /// The values of an f32 CPU tensor, row-major (a copy within host memory).
    pub fn new(bias: &Tensor) -> Result<Self> {
        if bias.dtype() != DType::F32 || !bias.device().is_cpu() {
            candle_core::bail!(
                "fused attention: the mask must be f32 on the CPU, not {:?} on {:?}",
                bias.dtype(),
                bias.device().location()
            )
        }
        Ok(Self(bias.flatten_all()?.to_vec1::<f32>()?.into()))
    }
}

impl std::ops::Deref for HostMask {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.0
    }
}

/// Multi-head self-attention of f32 CPU hidden states `(batch * seq, hidden)` -> the context in
/// the same layout. The query, key and value weights `(hidden, hidden)` and biases are stacked
/// into one projection here; `mask` is the additive mask and `position`, if any, an f32 CPU
/// additive bias of `heads * seq * seq` values on the scaled scores (MPNet's relative position
/// bias), which receives its gradient.
#[allow(clippy::too_many_arguments)]
pub fn self_attention(
    xs: &Tensor,
    (wq, wk, wv): (&Tensor, &Tensor, &Tensor),
    (bq, bk, bv): (&Tensor, &Tensor, &Tensor),
    mask: &HostMask,
    position: Option<&Tensor>,
    (batch, seq, heads): (usize, usize, usize),
    scale: f64,
    dropout: Option<AttentionDropout>,
) -> Result<Tensor> {
    let (w, b, packed) = fused::stacked_projection([wq, wk, wv], [bq, bk, bv], position.is_some())?;
    let tracked =
        [xs, &w, &b].iter().any(|t| t.track_op()) || position.is_some_and(|p| p.track_op());
    let op = SelfAttention {
        batch,
        seq,
        heads,
        scale: scale as f32,
        bias: mask.clone(),
        dropout,
        saved: Saved::new(tracked),
        weight_grads: [wq.track_op(), wk.track_op(), wv.track_op()],
    };
    match (position, packed) {
        (Some(position), Some(packed)) => {
            xs.contiguous()?
                .apply_op3(&packed, &position.contiguous()?, WithPosition(op))
        }
        _ => xs.contiguous()?.apply_op3(&w, &b, op),
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::max_diff;
    use candle_core::{Device, Var, D};

    use super::*;
    use crate::ops;
    use crate::rng::DropoutRng;

    const DIMS: (usize, usize, usize) = (3, 7, 2);
    const HIDDEN: usize = 8;

    /// The attention of `bert.rs`'s primitive-op path: split heads, matmul, softmax, dropout
    /// mask from [`DropoutRng::keep_mask`], matmul, merge heads.
    fn primitive(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        scale: f64,
        dropout: Option<(f64, &DropoutRng)>,
    ) -> Tensor {
        let (batch, seq, heads) = DIMS;
        let split = |x: &Tensor| {
            x.reshape((batch, seq, heads, HIDDEN / heads))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let scores = split(q).matmul(&split(k).t().unwrap()).unwrap();
        let mut probs = ops::attention_softmax_primitive(&scores, bias, scale).unwrap();
        if let Some((p, rng)) = dropout {
            let mask = rng
                .keep_mask(probs.shape(), p, &Device::Cpu, DType::F32)
                .unwrap();
            probs = (probs * mask).unwrap();
        }
        probs
            .matmul(&split(v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((batch * seq, HIDDEN))
            .unwrap()
    }

    fn case(dropout_p: Option<f64>, with_position: bool) {
        let (batch, seq, _) = DIMS;
        let dev = Device::Cpu;
        let var = |shape: (usize, usize)| {
            Var::from_tensor(&Tensor::randn(0f32, 0.5, shape, &dev).unwrap()).unwrap()
        };
        let xs = var((batch * seq, HIDDEN));
        let (wq, wk, wv) = (
            var((HIDDEN, HIDDEN)),
            var((HIDDEN, HIDDEN)),
            var((HIDDEN, HIDDEN)),
        );
        let bvar = || Var::from_tensor(&Tensor::randn(0f32, 0.5, HIDDEN, &dev).unwrap()).unwrap();
        let (bq, bk, bv) = (bvar(), bvar(), bvar());
        // Row 1 has its last three positions padded, row 2 its last one.
        let mut mask = vec![1f32; batch * seq];
        for j in [seq + 4, seq + 5, seq + 6, 2 * seq + 6] {
            mask[j] = 0.0;
        }
        let mask_bias =
            ops::attention_bias(&Tensor::from_vec(mask, (batch, seq), &dev).unwrap()).unwrap();
        // A bias per head, query and key (MPNet's relative position bias), with its gradient.
        let position = with_position.then(|| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, DIMS.2, seq, seq), &dev).unwrap())
                .unwrap()
        });
        let bias = match &position {
            Some(position) => mask_bias.broadcast_add(position.as_tensor()).unwrap(),
            None => mask_bias.clone(),
        };
        let r = Tensor::randn(0f32, 1.0, (batch * seq, HIDDEN), &dev).unwrap();
        let scale = 0.7;
        let (rng_fused, rng_plain) = (DropoutRng::new(5), DropoutRng::new(5));
        let fused = self_attention(
            &xs,
            (&wq, &wk, &wv),
            (&bq, &bk, &bv),
            &HostMask::new(&mask_bias).unwrap(),
            position.as_ref().map(|p| p.as_tensor()),
            DIMS,
            scale,
            dropout_p.map(|p| AttentionDropout {
                p,
                key: rng_fused.draw_key(),
            }),
        )
        .unwrap();
        let project = |w: &Var, b: &Var| {
            xs.matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap()
        };
        let plain = primitive(
            &project(&wq, &bq),
            &project(&wk, &bk),
            &project(&wv, &bv),
            &bias,
            scale,
            dropout_p.map(|p| (p, &rng_plain)),
        );
        if dropout_p.is_some() {
            // The mask did drop probabilities: the output is not the dropout-free one.
            let undropped = primitive(
                &project(&wq, &bq),
                &project(&wk, &bk),
                &project(&wv, &bv),
                &bias,
                scale,
                None,
            );
            assert!(
                max_diff(&fused, &undropped) > 1e-3,
                "dropout changed nothing"
            );
        }
        assert!(
            max_diff(&fused, &plain) < 1e-5,
            "forward differs by {}",
            max_diff(&fused, &plain)
        );
        let grads_fused = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let grads_plain = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut compared = vec![
            ("hidden states", &xs),
            ("query weight", &wq),
            ("key weight", &wk),
            ("value weight", &wv),
            ("query bias", &bq),
            ("value bias", &bv),
        ];
        compared.extend(position.as_ref().map(|p| ("position bias", p)));
        for (name, x) in compared {
            let (a, b) = (grads_fused.get(x).unwrap(), grads_plain.get(x).unwrap());
            let norm = b
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt();
            assert!(norm > 1e-3, "{name}: zero reference gradient");
            assert!(
                max_diff(a, b) < 1e-5,
                "{name} gradient differs by {}",
                max_diff(a, b)
            );
        }
        // The key bias shifts every score of a row equally: its true gradient is 0.
        let gbk = grads_fused.get(&bk).unwrap();
        assert!(
            gbk.abs()
                .unwrap()
                .max(D::Minus1)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 1e-5
        );
    }

    #[test]
    fn fused_attention_matches_primitive_ops_forward_and_backward() {
        case(None, false);
    }

    #[test]
    fn fused_attention_with_dropout_matches_the_primitive_mask() {
        case(Some(0.2), false);
    }

    #[test]
    fn fused_attention_with_a_position_bias_matches_primitive_ops_and_its_gradient() {
        case(None, true);
        case(Some(0.2), true);
    }

    /// The position bias's gradient sums over batch rows in fixed groups: a batch that is not a
    /// multiple of the group, and one of a single row, against primitive ops.
    #[test]
    fn position_bias_gradient_sums_every_batch_row() {
        let dev = Device::Cpu;
        for batch in [1usize, 2 * POSITION_GRAD_ROWS + 1] {
            let (seq, heads) = (5, 2);
            let randn = |shape: &[usize]| Tensor::randn(0f32, 0.5, shape, &dev).unwrap();
            let xs = randn(&[batch * seq, HIDDEN]);
            let (w, b) = (randn(&[HIDDEN, HIDDEN]), randn(&[HIDDEN]));
            let position = Var::from_tensor(&randn(&[1, heads, seq, seq])).unwrap();
            let mask = Tensor::ones((batch, seq), DType::F32, &dev).unwrap();
            let mask_bias = ops::attention_bias(&mask).unwrap();
            let fused = self_attention(
                &xs,
                (&w, &w, &w),
                (&b, &b, &b),
                &HostMask::new(&mask_bias).unwrap(),
                Some(position.as_tensor()),
                (batch, seq, heads),
                0.5,
                None,
            )
            .unwrap();
            let split = |x: &Tensor| {
                x.reshape((batch, seq, heads, HIDDEN / heads))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let p = xs
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let bias = mask_bias.broadcast_add(position.as_tensor()).unwrap();
            let scores = split(&p).matmul(&split(&p).t().unwrap()).unwrap();
            let plain = ops::attention_softmax_primitive(&scores, &bias, 0.5)
                .unwrap()
                .matmul(&split(&p))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((batch * seq, HIDDEN))
                .unwrap();
            let r = randn(&[batch * seq, HIDDEN]);
            let grad = |out: Tensor| {
                (out * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
                    .remove(&position)
                    .unwrap()
            };
            let (a, b) = (grad(fused), grad(plain));
            assert!(
                max_diff(&b, &b.zeros_like().unwrap()) > 1e-3,
                "zero reference gradient"
            );
            assert!(
                max_diff(&a, &b) < 1e-5,
                "batch {batch}: differs by {}",
                max_diff(&a, &b)
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((20, HIDDEN), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((HIDDEN, HIDDEN), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(HIDDEN, DType::F32, &dev).unwrap();
        let bias = Tensor::zeros((3, 1, 1, 7), DType::F32, &dev).unwrap();
        let mask = HostMask::new(&bias).unwrap();
        let err = self_attention(&x, (&w, &w, &w), (&b, &b, &b), &mask, None, DIMS, 1.0, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch 3 x seq 7"), "{err}");
        let x = Tensor::zeros((21, HIDDEN), DType::F32, &dev).unwrap();
        let position = Tensor::zeros((1, 2, 7, 6), DType::F32, &dev).unwrap();
        let err = self_attention(
            &x,
            (&w, &w, &w),
            (&b, &b, &b),
            &mask,
            Some(&position),
            DIMS,
            1.0,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("84 position bias values"), "{err}");
    }
}
