//! Tensor functions whose backward candle records.
//!
//! candle-nn's `LayerNorm` fast path, `ops::softmax_last_dim` and `RmsNorm` are fused kernels
//! with no backward: a model built on them trains only the weights above the first such op. These
//! versions are written from primitive ops, each of which has a gradient in candle's autograd.
//! Statistics (mean, variance, softmax normaliser) are taken in f32 whatever the input dtype.

use candle_core::{DType, Result, Tensor, D};

use crate::rng::DropoutRng;
use crate::{cuda, fused, pointwise};

/// Layer normalisation over the last dimension, `(..., hidden)` -> `(..., hidden)`: the fused
/// kernel for f32 on the CPU, [`layer_norm_primitive`] elsewhere.
/// <https://pytorch.org/docs/stable/generated/torch.nn.LayerNorm.html>
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::applies(&[xs, weight, bias]) {
        return fused::layer_norm(xs, weight, bias, eps);
    }
    if cuda::applies(&[xs, weight, bias]) && xs.dim(D::Minus1)? <= cuda::MAX_ROW {
        return cuda::residual_layer_norm(xs, None, weight, bias, eps, None);
    }
    layer_norm_primitive(xs, weight, bias, eps)
}

/// Layer normalisation from primitive ops (any device and dtype; statistics in f32).
pub fn layer_norm_primitive(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(DType::F32)?;
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centred = xs.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .broadcast_mul(&weight.to_dtype(DType::F32)?)?
        .broadcast_add(&bias.to_dtype(DType::F32)?)?
        .to_dtype(dtype)
}

/// Softmax over the last dimension, computed in f32 and returned in f32.
///
/// The row maximum is subtracted for stability and detached: softmax is shift-invariant, so the
/// true gradient through the shift is zero.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let xs = xs.to_dtype(DType::F32)?;
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// The attention probabilities `softmax(scale * scores + bias)` in f32, for `scores`
/// `(batch, heads, q, k)` in any dtype and the f32 `bias` of [`attention_bias`], from primitive
/// ops (on f32 CPU tensors the whole attention is one fused kernel: [`crate::attention`]).
pub fn attention_softmax_primitive(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    softmax_last_dim(&(scores.to_dtype(DType::F32)? * scale)?.broadcast_add(bias)?)
}

/// The attention probabilities `dropout(softmax(scale * scores + bias))` in the dtype of the
/// `(batch, heads, q, k)` scores: one kernel forward and one backward on CUDA, primitive ops
/// ([`attention_softmax_primitive`] and [`dropout`]) elsewhere.
pub fn attention_probs(
    scores: &Tensor,
    bias: &Tensor,
    scale: f64,
    p: f64,
    rng: &DropoutRng,
    train: bool,
) -> Result<Tensor> {
    if cuda::applies(&[scores, bias])
        && bias.dtype() == DType::F32
        && scores.dim(D::Minus1)? <= cuda::MAX_ROW
    {
        let dropout = (train && p > 0.0).then(|| (p, rng.draw_key()));
        return cuda::attention_probs(scores, bias, scale, dropout);
    }
    let probs = attention_softmax_primitive(scores, bias, scale)?.to_dtype(scores.dtype())?;
    dropout(&probs, p, rng, train)
}

/// Log-softmax over the last dimension in f32: `x - max - log(sum(exp(x - max)))`.
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let xs = xs.to_dtype(DType::F32)?;
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// `xs @ weight^T + bias` for `xs` of shape `(..., in)` and `weight` of shape `(out, in)`.
/// The weight is cast to the activations' dtype, so f32 master weights serve f16/bf16 compute.
pub fn linear(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dtype = xs.dtype();
    if xs.rank() == 2 {
        // Already `(rows, in)`: no reshape nodes in the graph.
        if let Some(bias) = bias.filter(|b| fused::applies(&[xs, weight, b])) {
            return fused::linear(xs, weight, bias);
        }
        if let Some(bias) =
            bias.filter(|b| b.dtype() == DType::F32 && cuda::applies(&[xs, weight, b]))
        {
            return cuda::linear(xs, weight, bias, false);
        }
    }
    let mut dims = xs.dims().to_vec();
    let in_features = dims.pop().unwrap_or(0);
    let rows = xs.elem_count() / in_features.max(1);
    let flat = xs.reshape((rows, in_features))?;
    dims.push(weight.dim(0)?);
    if let Some(bias) = bias.filter(|b| fused::applies(&[&flat, weight, b])) {
        return fused::linear(&flat, weight, bias)?.reshape(dims);
    }
    let weight = weight.to_dtype(dtype)?;
    let ys = flat.matmul(&weight.t()?)?;
    let ys = match bias {
        Some(bias) => ys.broadcast_add(&bias.to_dtype(dtype)?)?,
        None => ys,
    };
    ys.reshape(dims)
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales the rest by
/// `1 / (1 - p)`; the identity otherwise.
pub fn dropout(xs: &Tensor, p: f64, rng: &DropoutRng, train: bool) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(xs.clone());
    }
    if fused::applies(&[xs]) {
        return pointwise::dropout(xs, p, rng.draw_key());
    }
    if cuda::applies(&[xs]) {
        return cuda::dropout(xs, p, rng.draw_key());
    }
    let mask = rng.keep_mask(xs.shape(), p, xs.device(), xs.dtype())?;
    xs * mask
}

/// The exact GELU, `x * Phi(x)` with the normal CDF from erf: the fused kernel for f32 on the
/// CPU, candle's `gelu_erf` elsewhere.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if fused::applies(&[xs]) {
        return pointwise::gelu(xs);
    }
    if cuda::applies(&[xs]) {
        return cuda::gelu(xs);
    }
    xs.gelu_erf()
}

/// Mean of the hidden states over the positions where `mask` is 1:
/// `(batch, seq, hidden)`, `(batch, seq)` -> `(batch, hidden)`. Padding contributes nothing.
/// <https://github.com/UKPLab/sentence-transformers/blob/master/sentence_transformers/models/Pooling.py>
pub fn masked_mean(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let summed = hidden.to_dtype(DType::F32)?.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    summed.broadcast_div(&counts)
}

/// The additive attention bias `(batch, 1, 1, seq)` in f32: 0 where `mask` is 1 and -1e9 where
/// it is 0. Kept in f32 and finite, unlike `(1 - mask) * f32::MIN` cast to f16/bf16 (which is
/// `-inf`, and `0 * -inf` turns every score into NaN).
pub fn attention_bias(mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?;
    ((mask - 1.0)? * 1e9)?.unsqueeze(1)?.unsqueeze(1)
}
