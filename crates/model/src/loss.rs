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

/// Supervised contrastive loss (Khosla et al. 2020, the `L_out` form, as added to cross-entropy
/// for fine-tuning by Gunel et al. 2021) of `embeddings (batch, dim)` with class ids `labels
/// (batch,)`. The embeddings are L2-normalised (as `torch.nn.functional.normalize`); for an
/// anchor `i` with positives `P(i)` (the other examples of its class),
/// `l_i = -mean_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )`,
/// and the loss is the mean of `l_i` over the anchors that have a positive: 0 (with a zero
/// gradient) when none has, as in a batch of distinct classes. All on the device: no host read.
/// <https://arxiv.org/abs/2004.11362>, <https://arxiv.org/abs/2011.01403>
pub fn supervised_contrastive(
    embeddings: &Tensor,
    labels: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let z = embeddings.to_dtype(DType::F32)?;
    let (batch, _) = z.dims2()?;
    let device = z.device();
    let norm = z.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12f64)?;
    let z = z.broadcast_div(&norm)?;
    let sim = (z.matmul(&z.t()?)? / temperature)?;
    // The anchor with itself is left out of the denominator: its entry is pushed far below the
    // others (finite, so that no 0 * inf appears) and its exp is 0. The maximum over the others
    // (detached: the log-sum-exp does not depend on it) is subtracted, so every exp is at most 1
    // and the largest is 1: the sum cannot underflow to 0 at any temperature. A micro-batch of
    // one text has no other: its row sums to exp(0), and with no positive it counts for nothing.
    let eye = Tensor::eye(batch, DType::F32, device)?;
    let others = (Tensor::ones((batch, batch), DType::F32, device)? - &eye)?;
    let masked = (sim - (eye * 1e30)?)?;
    let max = masked.max_keepdim(1)?.detach();
    let shifted = masked.broadcast_sub(&max)?;
    let log_denominator = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_prob = shifted.broadcast_sub(&log_denominator)?;
    let labels = labels.to_dtype(DType::F32)?;
    let positives = (labels
        .unsqueeze(1)?
        .broadcast_eq(&labels.unsqueeze(0)?)?
        .to_dtype(DType::F32)?
        * &others)?;
    let count = positives.sum(1)?;
    // An anchor without a positive has an all-zero row here, so it adds 0 to the sum.
    let per_anchor = ((&positives * &log_prob)?.sum(1)? / count.maximum(1f64)?)?;
    let anchors = count
        .gt(0f64)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .maximum(1f64)?;
    per_anchor.sum_all()?.neg()?.broadcast_div(&anchors)
}

/// R-Drop's consistency term (Liang et al. 2021) between two sets of logits `(batch, classes)`
/// for the same examples under different dropout masks: the mean over examples of the symmetric
/// Kullback-Leibler divergence `(KL(p || q) + KL(q || p)) / 2` of their softmax distributions.
/// Per example, `KL(p || q) + KL(q || p) = sum_c (p_c - q_c)(log p_c - log q_c)`, and the
/// log-normalisers cancel in the sum (the `p - q` sum to 0), so it is `sum_c (p_c - q_c)(a_c -
/// b_c)` on the logits themselves: no log of a probability, finite for any logits.
/// <https://arxiv.org/abs/2106.14448>
pub fn symmetric_kl(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let p = log_softmax_last_dim(&a)?.exp()?;
    let q = log_softmax_last_dim(&b)?.exp()?;
    ((p - q)? * (a - b)?)?.sum(D::Minus1)?.mean_all()? * 0.5
}

/// [`symmetric_kl`] for multi-label logits: each label is its own Bernoulli distribution, and
/// the symmetric divergences of the labels are summed per example. For one label, `KL(p || q) +
/// KL(q || p) = (p - q)(logit p - logit q)`, so it is `sum_c (sigmoid(a_c) - sigmoid(b_c))(a_c -
/// b_c)` on the logits.
pub fn symmetric_kl_bernoulli(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let sigmoid = |x: &Tensor| x.neg()?.exp()?.affine(1.0, 1.0)?.recip();
    ((sigmoid(&a)? - sigmoid(&b)?)? * (a - b)?)?
        .sum(D::Minus1)?
        .mean_all()?
        * 0.5
}

/// The knowledge-distillation term of Hinton et al. 2015 between a student's logits `(batch,
/// classes)` and a teacher's class probabilities at the same temperature `(batch, classes)`:
/// `T^2 * KL(teacher || softmax(logits / T))`, averaged over examples, as PyTorch's
/// `F.kl_div(F.log_softmax(logits / T, -1), teacher, reduction="batchmean") * T * T`. The `T^2`
/// keeps its gradients on the scale of the cross-entropy's whatever the temperature. A teacher
/// probability of 0 adds 0 (`0 log 0 = 0`). <https://arxiv.org/abs/1503.02531>
pub fn distillation_kl(logits: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let logits = (logits.to_dtype(DType::F32)? / temperature)?;
    let teacher = teacher.to_dtype(DType::F32)?;
    let student = log_softmax_last_dim(&logits)?;
    let log_teacher = teacher.maximum(f32::MIN_POSITIVE as f64)?.log()?;
    let kl = (&teacher * (log_teacher - student)?)?.sum(D::Minus1)?;
    kl.mean_all()? * (temperature * temperature)
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

    // Reference values from PyTorch 2.15, printed by `tests/reference/make_reference.py --supcon`
    // (`supervised_contrastive` there: F.normalize, then log-softmax over the other examples with
    // torch.logsumexp and a -inf diagonal, anchors without a positive left out of the mean):
    //   e = [[1, 2, -0.5], [0.9, 1.5, 0], [0.3, -1, 2], [-2, 0.1, 0.4], [0, -0.7, 1.1]]
    //   y = [0, 1, 1, 2, 0]  (example 3 has no positive)
    const SUPCON_EMBEDDINGS: [[f32; 3]; 5] = [
        [1.0, 2.0, -0.5],
        [0.9, 1.5, 0.0],
        [0.3, -1.0, 2.0],
        [-2.0, 0.1, 0.4],
        [0.0, -0.7, 1.1],
    ];
    const SUPCON_CASES: [(f64, f32, [f32; 15]); 2] = [
        (
            0.3,
            4.916_652_7,
            [
                -0.143_602_25,
                -0.016_546_547,
                -0.353_391_1,
                -0.336_575_27,
                0.201_945_07,
                -1.029_343_7,
                -0.507_590_2,
                -0.589_901_2,
                -0.218_812_11,
                0.005_739_555_7,
                -0.012_907_34,
                0.031_924_61,
                -0.425_645_26,
                -0.551_359_9,
                -0.350_865_36,
            ],
        ),
        (
            0.07,
            20.880_52,
            [
                -0.608_017_56,
                -0.077_009_68,
                -1.524_076_1,
                -1.459_794_8,
                0.875_876_9,
                -4.510_830_4,
                -2.175_150_2,
                -2.593_763_4,
                -0.970_609_2,
                1.606_879_6e-6,
                -6.099_611e-6,
                9.559_3e-6,
                -1.662_485_6,
                -2.390_729,
                -1.521_372_3,
            ],
        ),
    ];

    #[test]
    fn supervised_contrastive_loss_and_gradient_match_pytorch() {
        let d = &Device::Cpu;
        let labels = Tensor::new(&[0u32, 1, 1, 2, 0], d).unwrap();
        for (temperature, expected, expected_grad) in SUPCON_CASES {
            let e = candle_core::Var::new(&SUPCON_EMBEDDINGS, d).unwrap();
            let loss = supervised_contrastive(e.as_tensor(), &labels, temperature).unwrap();
            let got = loss.to_scalar::<f32>().unwrap();
            assert!(
                (got - expected).abs() < 1e-5 * expected,
                "temperature {temperature}: {got} vs {expected}"
            );
            let grads = loss.backward().unwrap();
            let grad = grads.get(&e).unwrap().flatten_all().unwrap();
            for (i, (g, want)) in grad
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .zip(expected_grad)
                .enumerate()
            {
                assert!(
                    (g - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "temperature {temperature}, gradient [{i}]: {g} vs {want}"
                );
            }
        }
    }

    /// A low temperature spreads the logits over hundreds (the old form, which took the row
    /// maximum over the anchor itself, underflowed to log 0 here), and a micro-batch of one text
    /// (the last of an epoch, say) has no other text at all: both stay finite.
    #[test]
    fn supervised_contrastive_stays_finite_at_low_temperature_and_for_one_text() {
        let d = &Device::Cpu;
        let labels = Tensor::new(&[0u32, 1, 1, 2, 0], d).unwrap();
        let e = candle_core::Var::new(&SUPCON_EMBEDDINGS, d).unwrap();
        // PyTorch 2.15 (`make_reference.py --supcon`, t = 0.01): 146.16364; gradient [0..3] below.
        let loss = supervised_contrastive(e.as_tensor(), &labels, 0.01).unwrap();
        let got = value(loss.clone());
        assert!((got - 146.163_64).abs() < 1e-5 * 146.2, "{got}");
        let grad = loss
            .backward()
            .unwrap()
            .get(&e)
            .unwrap()
            .flatten_all()
            .unwrap();
        let grad = grad.to_vec1::<f32>().unwrap();
        for (g, want) in grad
            .iter()
            .zip([-4.256_123_5f32, -0.539_068_2, -10.668_531])
        {
            assert!(
                (g - want).abs() < 1e-5 * (1.0 + want.abs()),
                "{g} vs {want}"
            );
        }
        assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");

        let one = candle_core::Var::new(&[SUPCON_EMBEDDINGS[0]], d).unwrap();
        let loss = supervised_contrastive(one.as_tensor(), &Tensor::new(&[0u32], d).unwrap(), 0.3)
            .unwrap();
        assert_eq!(value(loss.clone()), 0.0);
        let grads = loss.backward().unwrap();
        if let Some(g) = grads.get(&one) {
            let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(g.iter().all(|v| *v == 0.0), "{g:?}");
        }
    }

    #[test]
    fn supervised_contrastive_is_zero_when_no_example_shares_a_class() {
        let d = &Device::Cpu;
        let e = Tensor::new(&SUPCON_EMBEDDINGS, d).unwrap();
        let labels = Tensor::new(&[0u32, 1, 2, 3, 4], d).unwrap();
        let loss = supervised_contrastive(&e, &labels, 0.3).unwrap();
        assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
        // Scaling an embedding does not change the loss: it sees directions only.
        let labels = Tensor::new(&[0u32, 1, 1, 2, 0], d).unwrap();
        let scaled = (e.clone() * 7.5).unwrap();
        let a = value(supervised_contrastive(&e, &labels, 0.3).unwrap());
        let b = value(supervised_contrastive(&scaled, &labels, 0.3).unwrap());
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    #[test]
    fn bce_with_logits_matches_pytorch_and_stays_finite_for_large_logits() {
        let (x, _, _, t) = inputs();
        let got = value(bce_with_logits(&x, &t, None).unwrap());
        assert!((got - 6.244282).abs() < 1e-5, "{got}");
        let got = value(bce_with_logits(&(x * 10.0).unwrap(), &t, None).unwrap());
        assert!((got - 59.348896).abs() < 1e-4, "{got}");
    }

    // Reference values from PyTorch 2.15, printed by `tests/reference/make_reference.py --rdrop`
    // (the softmax form from torch's own `F.kl_div` both ways, the Bernoulli form from
    // log-sigmoids): a is `inputs()`'s x, b below; the loss, then the gradients of a and b.
    const RDROP_B: [[f32; 3]; 3] = [[1.5, -0.5, 0.0], [0.3, -0.4, -2.0], [-40.0, 55.0, 3.0]];
    type RdropCase = (f32, [f32; 9], [f32; 9]);
    const RDROP_SOFTMAX: RdropCase = (
        0.042_729_966,
        [
            0.013_366_506,
            -0.016_348_977,
            0.002_982_471,
            -0.057_433_44,
            0.068_576_6,
            -0.011_143_165,
            0.0,
            0.0,
            0.0,
        ],
        [
            -0.020_467_96,
            0.025_034_979,
            -0.004_567_02,
            0.047_584_77,
            -0.065_006_36,
            0.017_421_588,
            0.0,
            0.0,
            0.0,
        ],
    );
    const RDROP_BERNOULLI: RdropCase = (
        0.279_274_25,
        [
            0.019_286_567,
            -0.034_484_208,
            0.039_993_532,
            -0.016_556_423,
            0.049_505_26,
            -0.019_492_287,
            0.0,
            0.0,
            -0.200_429_02,
        ],
        [
            -0.022_965_973,
            0.037_683_52,
            -0.041_243_225,
            0.016_392_495,
            -0.048_779_674,
            0.029_461_775,
            0.0,
            0.0,
            0.098_017_36,
        ],
    );

    #[test]
    fn symmetric_kl_and_its_gradients_match_pytorch() {
        let d = &Device::Cpu;
        let (x, _, _, _) = inputs();
        type Kl = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let cases: [(&str, Kl, RdropCase); 2] = [
            ("softmax", symmetric_kl, RDROP_SOFTMAX),
            ("bernoulli", symmetric_kl_bernoulli, RDROP_BERNOULLI),
        ];
        for (name, kl, (expected, grad_a, grad_b)) in cases {
            let a = candle_core::Var::from_tensor(&x).unwrap();
            let b = candle_core::Var::new(&RDROP_B, d).unwrap();
            let loss = kl(a.as_tensor(), b.as_tensor()).unwrap();
            let got = value(loss.clone());
            assert!(
                (got - expected).abs() < 1e-5 * expected,
                "{name}: {got} vs {expected}"
            );
            let grads = loss.backward().unwrap();
            for (var, want, which) in [(&a, grad_a, "a"), (&b, grad_b, "b")] {
                let g = grads.get(var).unwrap().flatten_all().unwrap();
                for (i, (g, w)) in g.to_vec1::<f32>().unwrap().iter().zip(want).enumerate() {
                    assert!(
                        (g - w).abs() < 1e-6 + 1e-5 * w.abs(),
                        "{name}, gradient of {which} [{i}]: {g} vs {w}"
                    );
                }
            }
            // The same logits agree with themselves: 0, and symmetric in its two arguments.
            assert_eq!(value(kl(&x, &x).unwrap()), 0.0, "{name}");
            let swapped = value(kl(b.as_tensor(), a.as_tensor()).unwrap());
            assert!((swapped - got).abs() < 1e-7, "{name}: {swapped} vs {got}");
        }
    }

    // Reference values from PyTorch 2.15 (float64): x as above, teacher logits
    //   t = [[1, 0, -1], [0, 3, 0.5], [-2, 40, 1]], p = F.softmax(t / T, -1),
    //   kd = F.kl_div(F.log_softmax(x / T, -1), p, reduction="batchmean") * T * T,
    //   and torch.autograd.grad(kd, x).
    #[test]
    #[allow(clippy::excessive_precision)] // PyTorch's digits as printed
    fn distillation_kl_and_its_gradient_match_pytorch() {
        let (x, _, _, _) = inputs();
        let t = Tensor::new(
            &[[1f32, 0.0, -1.0], [0.0, 3.0, 0.5], [-2.0, 40.0, 1.0]],
            &Device::Cpu,
        )
        .unwrap();
        let cases: [(f64, f32, [f32; 6]); 3] = [
            (
                1.0,
                0.24768282,
                [
                    0.040118693,
                    -0.068538633,
                    0.02841994,
                    0.140360728,
                    -0.12317057,
                    -0.017190158,
                ],
            ),
            (
                2.0,
                0.42064335,
                [
                    0.055544848,
                    -0.117062826,
                    0.061517977,
                    0.195990607,
                    -0.131980519,
                    -0.064010088,
                ],
            ),
            (
                4.0,
                0.52035579,
                [
                    0.058410387,
                    -0.143697022,
                    0.085286634,
                    0.222618211,
                    -0.114223597,
                    -0.108394613,
                ],
            ),
        ];
        for (temperature, expected, grad_rows) in cases {
            let teacher = candle_nn::ops::softmax_last_dim(&(&t / temperature).unwrap()).unwrap();
            let var = candle_core::Var::from_tensor(&x).unwrap();
            let kd = distillation_kl(var.as_tensor(), &teacher, temperature).unwrap();
            let got = kd.to_scalar::<f32>().unwrap();
            assert!(
                (got - expected).abs() < 1e-5,
                "T {temperature}: {got} vs {expected}"
            );
            let grad = kd
                .backward()
                .unwrap()
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap();
            let grad = grad.to_vec1::<f32>().unwrap();
            // The third row's student is as sure as its teacher: a gradient of about 0.
            for (i, (g, e)) in grad
                .iter()
                .zip(grad_rows.iter().chain(&[0.0; 3]))
                .enumerate()
            {
                assert!(
                    (g - e).abs() < 2e-4,
                    "T {temperature}, entry {i}: {g} vs {e}"
                );
            }
        }
        // A student that equals its teacher has nothing to learn.
        let teacher = candle_nn::ops::softmax_last_dim(&(&x / 2.0).unwrap()).unwrap();
        let same = distillation_kl(&x, &teacher, 2.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(same.abs() < 1e-6, "{same}");
    }
}
