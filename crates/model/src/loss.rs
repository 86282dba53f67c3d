//! Classification losses, computed in f32 from logits for numerical stability.

use candle_core::{DType, Result, Tensor, D};

use crate::ops::log_softmax_last_dim;

/// Mean cross-entropy of `logits (batch, classes)` against `labels (batch,)` u32, with the
/// semantics of `torch.nn.functional.cross_entropy(logits, labels, weight, label_smoothing)`:
/// per example `(1 - s) * -log p[y] + s * mean_c(-log p[c])`, each example weighted by
/// `weight[y]` and the sum divided by the sum of those weights.
pub fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    label_smoothing: f64,
    class_weights: Option<&Tensor>,
) -> Result<Tensor> {
    let log_probs = log_softmax_last_dim(logits)?;
    let classes = log_probs.dim(D::Minus1)?;
    let labels = labels.to_dtype(DType::U32)?;
    let nll = log_probs
        .gather(&labels.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?;
    let per_example = if label_smoothing > 0.0 {
        // PyTorch weights the smoothing term per class: -sum_c w[c] log p[c] / C.
        let smooth = match class_weights {
            Some(w) => log_probs.broadcast_mul(&w.to_dtype(DType::F32)?.unsqueeze(0)?)?,
            None => log_probs.clone(),
        };
        let smooth = (smooth.sum(1)?.neg()? / classes as f64)?;
        let nll = match class_weights {
            Some(w) => (&nll * w.to_dtype(DType::F32)?.index_select(&labels, 0)?)?,
            None => nll,
        };
        ((nll * (1.0 - label_smoothing))? + (smooth * label_smoothing)?)?
    } else {
        match class_weights {
            Some(w) => (&nll * w.to_dtype(DType::F32)?.index_select(&labels, 0)?)?,
            None => nll,
        }
    };
    match class_weights {
        Some(w) => {
            let total = w
                .to_dtype(DType::F32)?
                .index_select(&labels, 0)?
                .sum_all()?;
            per_example.sum_all()?.broadcast_div(&total)
        }
        None => per_example.mean_all(),
    }
}

/// Mean binary cross-entropy with logits over `(batch, classes)` f32 0/1 targets, in the stable
/// form `max(x, 0) - x * y + log(1 + exp(-|x|))` (as `torch.nn.BCEWithLogitsLoss`); optional
/// per-class weights scale each class's term.
pub fn bce_with_logits(
    logits: &Tensor,
    targets: &Tensor,
    class_weights: Option<&Tensor>,
) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F32)?;
    let y = targets.to_dtype(DType::F32)?;
    let per_term = ((x.relu()? - (&x * &y)?)? + x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
    let per_term = match class_weights {
        Some(w) => per_term.broadcast_mul(&w.to_dtype(DType::F32)?.unsqueeze(0)?)?,
        None => per_term,
    };
    per_term.mean_all()
}
