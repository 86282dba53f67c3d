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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    // Reference values from PyTorch 2.15:
    //   x = [[2, -1, 0.5], [0.1, 0.2, -3], [-50, 60, 0]]; y = [0, 2, 1]; w = [1, 2, 0.5]
    //   F.cross_entropy(x, y)                                   = 1.3689604997634888
    //   F.cross_entropy(x, y, label_smoothing=0.1)              = 3.237849235534668
    //   F.cross_entropy(x, y, weight=w)                         = 0.6211704611778259
    //   F.cross_entropy(x, y, weight=w, label_smoothing=0.2)    = 3.385014295578003
    //   t = [[1, 0, 1], [0, 0, 1], [1, 1, 0]]
    //   F.binary_cross_entropy_with_logits(x, t)                = 6.244281768798828
    //   F.binary_cross_entropy_with_logits(10 * x, t)           = 59.34889602661133
    fn inputs() -> (Tensor, Tensor, Tensor, Tensor) {
        let d = &Device::Cpu;
        let x = Tensor::new(
            &[[2f32, -1.0, 0.5], [0.1, 0.2, -3.0], [-50.0, 60.0, 0.0]],
            d,
        )
        .unwrap();
        let y = Tensor::new(&[0u32, 2, 1], d).unwrap();
        let w = Tensor::new(&[1f32, 2.0, 0.5], d).unwrap();
        let t = Tensor::new(&[[1f32, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]], d).unwrap();
        (x, y, w, t)
    }

    fn value(t: Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn cross_entropy_matches_pytorch_with_smoothing_and_weights() {
        let (x, y, w, _) = inputs();
        let cases = [
            (0.0, None, 1.3689605),
            (0.1, None, 3.2378492),
            (0.0, Some(&w), 0.6211705),
            (0.2, Some(&w), 3.3850143),
        ];
        for (smoothing, weights, expected) in cases {
            let got = value(cross_entropy(&x, &y, smoothing, weights).unwrap());
            assert!(
                (got - expected).abs() < 1e-5,
                "smoothing {smoothing}, weighted {}: {got} vs {expected}",
                weights.is_some()
            );
        }
    }

    #[test]
    fn bce_with_logits_matches_pytorch_and_stays_finite_for_large_logits() {
        let (x, _, _, t) = inputs();
        let got = value(bce_with_logits(&x, &t, None).unwrap());
        assert!((got - 6.244282).abs() < 1e-5, "{got}");
        let got = value(bce_with_logits(&(x * 10.0).unwrap(), &t, None).unwrap());
        assert!((got - 59.348896).abs() < 1e-4, "{got}");
    }
}
