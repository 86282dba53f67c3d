//! Fused multi-head self-attention for f32 on the CPU, forward and backward.
//!
//! `context = dropout(softmax(scale * q k^T + bias)) v` per head, reading each head straight out
//! of the `(batch * seq, hidden)` query/key/value projections and writing the context in the same
//! layout: no head split, no transposed copies, no `(batch, heads, seq, seq)` tensor kept for
//! backward. Backward recomputes the probabilities of one head at a time (a `seq x seq` scratch
//! per worker) and regenerates the dropout mask from its key (see [`crate::simd::keep_hash`]), so
//! the op keeps nothing beyond its inputs. The mask is the one [`crate::rng::DropoutRng`] draws
//! for the `(batch, heads, seq, seq)` probabilities under the same key, so this kernel and the
//! primitive-op attention in [`crate::bert`] agree exactly; the tests compare them, forward and
//! gradients. Work is split by batch row (each worker owns whole rows of every output), and each
//! element is computed by a fixed sequence of operations, so results do not depend on the thread
//! count.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::matmul::{gemm, Threads, View};
use crate::multiversion;
use crate::simd;

/// Dropout on the attention probabilities: drop probability and the mask's key.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDropout {
    pub p: f64,
    pub key: u64,
}

struct Attention {
    batch: usize,
    seq: usize,
    heads: usize,
    scale: f32,
    /// The additive mask, `batch * seq` values (0 for a real key, a large negative number for
    /// padding).
    bias: Vec<f32>,
    dropout: Option<AttentionDropout>,
}

/// The dropout applied to one head's probabilities: the mask's key, the threshold below which a
/// draw is dropped, the scale of kept values and the flat index of the head's first element.
#[derive(Clone, Copy)]
struct HeadMask {
    key: u64,
    threshold: u32,
    keep_scale: f32,
    first: u32,
}

multiversion! {
    /// Rows of `scale * scores + bias` -> softmax, in place (`k` columns per row).
    fn softmax_rows(scores: &mut [f32], k: usize, bias: &[f32], scale: f32) {
        for row in scores.chunks_exact_mut(k) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = v.mul_add(scale, *b);
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

multiversion! {
    /// `out = probs * mask` (the dropped probabilities), element by element.
    fn apply_mask(out: &mut [f32], probs: &[f32], mask: HeadMask) {
        for (i, (o, p)) in out.iter_mut().zip(probs).enumerate() {
            let draw = simd::keep_hash(mask.key, mask.first.wrapping_add(i as u32));
            *o = if draw >= mask.threshold { p * mask.keep_scale } else { 0.0 };
        }
    }
}

multiversion! {
    /// Softmax backward in place: `grad` (the gradient of the dropped probabilities) becomes the
    /// gradient of the raw scores, `scale * probs * (mask * grad - sum(probs * mask * grad))`.
    fn softmax_backward_rows(grad: &mut [f32], probs: &[f32], k: usize, scale: f32, mask: Option<HeadMask>) {
        for (r, (g, p)) in grad.chunks_exact_mut(k).zip(probs.chunks_exact(k)).enumerate() {
            if let Some(mask) = mask {
                let first = mask.first.wrapping_add((r * k) as u32);
                for (i, v) in g.iter_mut().enumerate() {
                    let draw = simd::keep_hash(mask.key, first.wrapping_add(i as u32));
                    *v = if draw >= mask.threshold { *v * mask.keep_scale } else { 0.0 };
                }
            }
            let dot = simd::dot(g, p);
            for (v, p) in g.iter_mut().zip(p) {
                *v = scale * p * (*v - dot);
            }
        }
    }
}

impl Attention {
    fn hidden(&self, values: usize) -> usize {
        values / (self.batch * self.seq)
    }

    fn head_mask(&self, b: usize, h: usize) -> Option<HeadMask> {
        self.dropout.filter(|d| d.p > 0.0).map(|d| HeadMask {
            key: d.key,
            threshold: simd::drop_threshold(d.p),
            keep_scale: (1.0 / (1.0 - d.p)) as f32,
            first: ((b * self.heads + h) * self.seq * self.seq) as u32,
        })
    }

    /// The probabilities of head `h` of batch row `b` (before dropout) into `probs`.
    fn probabilities(
        &self,
        q: &[f32],
        k: &[f32],
        b: usize,
        h: usize,
        probs: &mut [f32],
    ) -> Result<()> {
        let (seq, hidden) = (self.seq, self.hidden(q.len()));
        let dh = hidden / self.heads;
        let at = b * seq * hidden + h * dh;
        gemm(
            (seq, seq, dh),
            View::rows(&q[at..], hidden),
            View::transposed(&k[at..], hidden),
            probs,
            seq,
            0.0,
            1.0,
            Threads::Caller,
        )?;
        softmax_rows(probs, seq, &self.bias[b * seq..(b + 1) * seq], self.scale);
        Ok(())
    }

    fn check(&self, q: &Layout, k: &Layout, v: &Layout) -> Result<usize> {
        let (rows, hidden) = q.shape().dims2()?;
        if k.shape() != q.shape() || v.shape() != q.shape() {
            candle_core::bail!(
                "fused attention: query {:?}, key {:?} and value {:?} differ in shape",
                q.shape(),
                k.shape(),
                v.shape()
            )
        }
        if rows != self.batch * self.seq || hidden % self.heads != 0 {
            candle_core::bail!(
                "fused attention: {rows}x{hidden} projections for batch {} x seq {} and {} heads",
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
        if (self.batch * self.heads * self.seq * self.seq) > u32::MAX as usize {
            candle_core::bail!(
                "fused attention: more than 2^32 attention probabilities in one batch"
            )
        }
        Ok(hidden)
    }
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!("fused attention: {what} is not contiguous"))
    })?;
    match storage {
        CpuStorage::F32(values) => Ok(&values[start..end]),
        _ => candle_core::bail!("fused attention: {what} is not f32"),
    }
}

/// Runs `f` on the values of a contiguous f32 CPU tensor, without copying them.
fn with_values<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(cpu, layout, what)?),
        _ => candle_core::bail!("fused attention: {what} is not on the CPU"),
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let hidden = self.check(l1, l2, l3)?;
        let q = f32_slice(s1, l1, "query")?;
        let k = f32_slice(s2, l2, "key")?;
        let v = f32_slice(s3, l3, "value")?;
        let (seq, dh) = (self.seq, hidden / self.heads);
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(seq * hidden)
            .enumerate()
            .try_for_each(|(b, out)| -> Result<()> {
                let mut probs = vec![0f32; seq * seq];
                let mut dropped = vec![0f32; seq * seq];
                for h in 0..self.heads {
                    self.probabilities(q, k, b, h, &mut probs)?;
                    let used = match self.head_mask(b, h) {
                        Some(mask) => {
                            apply_mask(&mut dropped, &probs, mask);
                            &dropped
                        }
                        None => &probs,
                    };
                    let at = b * seq * hidden + h * dh;
                    gemm(
                        (seq, dh, seq),
                        View::rows(used, seq),
                        View::rows(&v[at..], hidden),
                        &mut out[h * dh..],
                        hidden,
                        0.0,
                        1.0,
                        Threads::Caller,
                    )?;
                }
                Ok(())
            })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (mut gq, mut gk, mut gv) = with_values(q, "query", |q| {
            with_values(k, "key", |k| {
                with_values(v, "value", |v| {
                    with_values(grad, "context gradient", |g| self.backward(q, k, v, g))
                })
            })
        })?;
        let shape = q.shape();
        let device = q.device();
        let tensor =
            |values: &mut Vec<f32>| Tensor::from_vec(std::mem::take(values), shape, device);
        Ok((
            Some(tensor(&mut gq)?),
            Some(tensor(&mut gk)?),
            Some(tensor(&mut gv)?),
        ))
    }
}

impl Attention {
    /// Gradients of query, key and value given the context gradient `g`.
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let hidden = self.hidden(q.len());
        let (seq, dh) = (self.seq, hidden / self.heads);
        let block = seq * hidden;
        let mut gq = vec![0f32; q.len()];
        let mut gk = vec![0f32; q.len()];
        let mut gv = vec![0f32; q.len()];
        gq.par_chunks_mut(block)
            .zip(gk.par_chunks_mut(block))
            .zip(gv.par_chunks_mut(block))
            .enumerate()
            .try_for_each(|(b, ((gq, gk), gv))| -> Result<()> {
                let mut probs = vec![0f32; seq * seq];
                let mut dropped = vec![0f32; seq * seq];
                let mut grad_probs = vec![0f32; seq * seq];
                for h in 0..self.heads {
                    let at = b * block + h * dh;
                    self.probabilities(q, k, b, h, &mut probs)?;
                    let mask = self.head_mask(b, h);
                    let used = match mask {
                        Some(mask) => {
                            apply_mask(&mut dropped, &probs, mask);
                            &dropped
                        }
                        None => &probs,
                    };
                    // d(value) = dropped^T g; d(dropped) = g value^T.
                    gemm(
                        (seq, dh, seq),
                        View::transposed(used, seq),
                        View::rows(&g[at..], hidden),
                        &mut gv[h * dh..],
                        hidden,
                        0.0,
                        1.0,
                        Threads::Caller,
                    )?;
                    gemm(
                        (seq, seq, dh),
                        View::rows(&g[at..], hidden),
                        View::transposed(&v[at..], hidden),
                        &mut grad_probs,
                        seq,
                        0.0,
                        1.0,
                        Threads::Caller,
                    )?;
                    softmax_backward_rows(&mut grad_probs, &probs, seq, self.scale, mask);
                    // scores = q k^T: d(query) = ds k, d(key) = ds^T q.
                    gemm(
                        (seq, dh, seq),
                        View::rows(&grad_probs, seq),
                        View::rows(&k[at..], hidden),
                        &mut gq[h * dh..],
                        hidden,
                        0.0,
                        1.0,
                        Threads::Caller,
                    )?;
                    gemm(
                        (seq, dh, seq),
                        View::transposed(&grad_probs, seq),
                        View::rows(&q[at..], hidden),
                        &mut gk[h * dh..],
                        hidden,
                        0.0,
                        1.0,
                        Threads::Caller,
                    )?;
                }
                Ok(())
            })?;
        Ok((gq, gk, gv))
    }
}

/// Multi-head attention over `(batch * seq, hidden)` f32 CPU projections -> the context in the
/// same layout. `bias` is the `(batch, 1, 1, seq)` additive mask of [`crate::ops::attention_bias`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    (batch, seq, heads): (usize, usize, usize),
    scale: f64,
    dropout: Option<AttentionDropout>,
) -> Result<Tensor> {
    if bias.dtype() != DType::F32 {
        candle_core::bail!(
            "fused attention: the mask must be f32, not {:?}",
            bias.dtype()
        )
    }
    let op = Attention {
        batch,
        seq,
        heads,
        scale: scale as f32,
        bias: bias.flatten_all()?.to_vec1::<f32>()?,
        dropout,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};

    use super::*;
    use crate::ops;
    use crate::rng::DropoutRng;

    const DIMS: (usize, usize, usize) = (3, 7, 2);
    const HIDDEN: usize = 8;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

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

    fn case(dropout_p: Option<f64>) {
        let (batch, seq, _) = DIMS;
        let dev = Device::Cpu;
        let var = || {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch * seq, HIDDEN), &dev).unwrap())
                .unwrap()
        };
        let (q, k, v) = (var(), var(), var());
        // Row 1 has its last three positions padded, row 2 its last one.
        let mut mask = vec![1f32; batch * seq];
        for j in [seq + 4, seq + 5, seq + 6, 2 * seq + 6] {
            mask[j] = 0.0;
        }
        let bias =
            ops::attention_bias(&Tensor::from_vec(mask, (batch, seq), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (batch * seq, HIDDEN), &dev).unwrap();
        let scale = 0.7;
        let (rng_fused, rng_plain) = (DropoutRng::new(5), DropoutRng::new(5));
        let fused = attention(
            &q,
            &k,
            &v,
            &bias,
            DIMS,
            scale,
            dropout_p.map(|p| AttentionDropout {
                p,
                key: rng_fused.draw_key(),
            }),
        )
        .unwrap();
        let plain = primitive(&q, &k, &v, &bias, scale, dropout_p.map(|p| (p, &rng_plain)));
        assert!(
            max_diff(&fused, &plain) < 1e-5,
            "forward differs by {}",
            max_diff(&fused, &plain)
        );
        if let Some(p) = dropout_p {
            // Dropout did drop something, and the same things.
            let zeros = |t: &Tensor| {
                t.eq(0f32)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert!(p < 0.5 && zeros(&fused) == zeros(&plain));
        }
        let grads_fused = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let grads_plain = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, x) in [("query", &q), ("key", &k), ("value", &v)] {
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
        // A padded key gets no attention, so its key and value rows get no gradient.
        let gv = grads_fused.get(&v).unwrap();
        let padded_row = gv
            .get(seq + 5)
            .unwrap()
            .abs()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(padded_row, 0.0);
    }

    #[test]
    fn fused_attention_matches_primitive_ops_forward_and_backward() {
        case(None);
    }

    #[test]
    fn fused_attention_with_dropout_matches_the_primitive_mask() {
        case(Some(0.2));
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((20, HIDDEN), DType::F32, &dev).unwrap();
        let bias = Tensor::zeros((3, 1, 1, 7), DType::F32, &dev).unwrap();
        let err = attention(&x, &x, &x, &bias, DIMS, 1.0, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch 3 x seq 7"), "{err}");
    }
}
