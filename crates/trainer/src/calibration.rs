//! Calibration: whether predicted probabilities mean what they say, and temperature scaling to
//! make them (Guo et al. 2017, "On Calibration of Modern Neural Networks").
//!
//! Fine-tuned classifiers are overconfident: of the texts predicted at 0.99, far fewer than 99%
//! are right. A triage bot that labels only above a probability threshold needs probabilities it
//! can trust. Temperature scaling divides every logit by one number `T`, fitted on validation
//! data to minimize the loss; the argmax, so accuracy and F1, does not change.

use serde::{Deserialize, Serialize};
use wick_data::Targets;

/// Equal-width confidence bins of the expected calibration error (Guo et al. use 15).
pub const ECE_BINS: usize = 15;

/// The temperature search interval, `ln T` in `[ln 1/20, ln 20]`: wide enough for any
/// fine-tuned classifier (fits land near 1 to 3), narrow enough to stay finite.
const LN_T_RANGE: (f64, f64) = (-2.995_732_273_553_991, 2.995_732_273_553_991);

/// Golden-section steps: the bracket shrinks by 0.618 a step, so 80 steps pin `ln T` to 1e-15
/// of the interval, below f64 noise in the loss.
const SEARCH_STEPS: usize = 80;

/// A temperature fitted on one evaluation, and what it did there. A checkpoint written at that
/// evaluation's step carries it; `evaluate` and `predict` then divide the logits by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Logits are divided by this before softmax (or sigmoid).
    pub temperature: f64,
    /// The optimizer step of the weights it was fitted for.
    pub step: u64,
    /// Validation examples it was fitted on.
    pub examples: usize,
    /// Plain cross-entropy (BCE for multi-label) on those examples at `T = 1` and at `T`.
    pub loss_before: f64,
    pub loss_after: f64,
    /// Expected calibration error on those examples at `T = 1` and at `T`.
    pub ece_before: f64,
    pub ece_after: f64,
}

impl Calibration {
    /// One line for the commands to print: `temperature 1.246 (step 146, 248 examples: loss
    /// 0.0509 -> 0.0477, ECE 0.0122 -> 0.0115)`.
    pub fn summary(&self) -> String {
        format!(
            "temperature {:.3} (step {}, {} examples: loss {:.4} -> {:.4}, ECE {:.4} -> {:.4})",
            self.temperature,
            self.step,
            self.examples,
            self.loss_before,
            self.loss_after,
            self.ece_before,
            self.ece_after
        )
    }

    /// Fits the temperature of `logits` (one row per example) against `targets`: the `T` in
    /// `[1/20, 20]` that minimizes the mean loss of `logits / T`. An error without labelled
    /// rows, and when the minimum is the interval's lower end: then every example is on the
    /// right side of every decision, the loss keeps falling as `T` shrinks toward 0, and the
    /// data cannot say how sharp the probabilities should be (a fit there would make the model
    /// as overconfident as the search allows).
    ///
    /// The loss of `logits * b` is convex in `b = 1/T` (a log-sum-exp of linear functions minus
    /// a linear one), so it has one minimum along `ln T` and a golden-section search finds it.
    pub fn fit(logits: &[Vec<f32>], targets: &Targets, step: u64) -> Result<Self, NoFit> {
        let examples = labelled_rows(targets, logits).ok_or(NoFit::NoLabels)?;
        let loss = |ln_t: f64| mean_loss(logits, targets, ln_t.exp());
        let (mut lo, mut hi) = LN_T_RANGE;
        let ratio = (5f64.sqrt() - 1.0) / 2.0;
        let mut a = hi - ratio * (hi - lo);
        let mut b = lo + ratio * (hi - lo);
        let (mut fa, mut fb) = (loss(a), loss(b));
        for _ in 0..SEARCH_STEPS {
            if fa <= fb {
                hi = b;
                (b, fb) = (a, fa);
                a = hi - ratio * (hi - lo);
                fa = loss(a);
            } else {
                lo = a;
                (a, fa) = (b, fb);
                b = lo + ratio * (hi - lo);
                fb = loss(b);
            }
        }
        let ln_t = (lo + hi) / 2.0;
        if ln_t - LN_T_RANGE.0 < 1e-9 * (LN_T_RANGE.1 - LN_T_RANGE.0) {
            return Err(NoFit::Separable {
                examples,
                bound: LN_T_RANGE.0.exp(),
            });
        }
        let temperature = ln_t.exp();
        Ok(Self {
            temperature,
            step,
            examples,
            loss_before: mean_loss(logits, targets, 1.0),
            loss_after: mean_loss(logits, targets, temperature),
            ece_before: expected_calibration_error(&probabilities(logits, targets, 1.0), targets)
                .ok_or(NoFit::NoLabels)?,
            ece_after: expected_calibration_error(
                &probabilities(logits, targets, temperature),
                targets,
            )
            .ok_or(NoFit::NoLabels)?,
        })
    }
}

/// Why [`Calibration::fit`] fitted no temperature.
#[derive(Debug, Clone, PartialEq)]
pub enum NoFit {
    /// No labelled rows (or not one per row of logits).
    NoLabels,
    /// Every example is predicted right with room to spare: the loss falls without end as `T`
    /// shrinks, and the search ended at its lower bound.
    Separable { examples: usize, bound: f64 },
}

impl std::fmt::Display for NoFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoLabels => write!(f, "no labelled rows to fit a temperature on"),
            Self::Separable { examples, bound } => write!(
                f,
                "no temperature fitted: every one of the {examples} examples is on the right side \
                 of every decision, so the loss keeps falling as T shrinks toward 0 (the search \
                 ended at its bound T = {bound:.2}) and they cannot say how sharp the probabilities \
                 should be; the probabilities stay as the model gives them (T = 1)"
            ),
        }
    }
}

/// The number of rows when `targets` are labels for every row of `logits`.
fn labelled_rows(targets: &Targets, logits: &[Vec<f32>]) -> Option<usize> {
    let rows = match targets {
        Targets::Single(truth) => truth.len(),
        Targets::Multi { values, num_labels } => values.len() / (*num_labels).max(1),
        Targets::None => return None,
    };
    (rows > 0 && rows == logits.len()).then_some(rows)
}

/// Probabilities of `logits / temperature`: softmax per row, or a sigmoid per value when
/// `multi_label`.
pub fn scale(logits: &[Vec<f32>], temperature: f64, multi_label: bool) -> Vec<Vec<f32>> {
    logits
        .iter()
        .map(|row| {
            let scaled: Vec<f64> = row.iter().map(|&z| f64::from(z) / temperature).collect();
            if multi_label {
                scaled.iter().map(|&z| sigmoid(z) as f32).collect()
            } else {
                softmax(&scaled).into_iter().map(|p| p as f32).collect()
            }
        })
        .collect()
}

fn probabilities(logits: &[Vec<f32>], targets: &Targets, temperature: f64) -> Vec<Vec<f32>> {
    scale(
        logits,
        temperature,
        matches!(targets, Targets::Multi { .. }),
    )
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = z.iter().map(|&v| (v - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Mean cross-entropy of `logits / temperature` against single-label targets, or mean binary
/// cross-entropy over every (example, label) against multi-label ones; computed from the logits
/// in f64 (log-sum-exp, softplus) so confident rows stay exact.
pub fn mean_loss(logits: &[Vec<f32>], targets: &Targets, temperature: f64) -> f64 {
    match targets {
        Targets::Single(truth) => {
            let total: f64 = logits
                .iter()
                .zip(truth)
                .map(|(row, &t)| {
                    let z: Vec<f64> = row.iter().map(|&v| f64::from(v) / temperature).collect();
                    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let lse = max + z.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
                    lse - z[t as usize]
                })
                .sum();
            total / truth.len().max(1) as f64
        }
        Targets::Multi { values, .. } => {
            // BCE of sigmoid(z) against y: softplus(z) - y z, with softplus(z) = max(z, 0) +
            // ln(1 + e^-|z|).
            let total: f64 = logits
                .iter()
                .flatten()
                .zip(values)
                .map(|(&v, &y)| {
                    let z = f64::from(v) / temperature;
                    z.max(0.0) + (-z.abs()).exp().ln_1p() - f64::from(y) * z
                })
                .sum();
            total / values.len().max(1) as f64
        }
        Targets::None => f64::NAN,
    }
}

/// Expected calibration error: predictions are put in [`ECE_BINS`] equal-width bins of
/// confidence, and the gaps between each bin's accuracy and mean confidence are averaged,
/// weighted by the bin's share of predictions. Single-label: the confidence is the top
/// probability and a prediction is right when its argmax is the truth. Multi-label: every
/// (example, label) is a binary prediction, confident `max(p, 1 - p)` and right when `p > 0.5`
/// agrees with the target. `None` without labels or rows.
pub fn expected_calibration_error(probs: &[Vec<f32>], targets: &Targets) -> Option<f64> {
    // (confidence, right) of every prediction.
    let predictions: Vec<(f64, bool)> = match targets {
        Targets::Single(truth) => probs
            .iter()
            .zip(truth)
            .map(|(row, &t)| {
                let top = crate::eval::argmax(std::slice::from_ref(row))[0];
                (f64::from(row[top as usize]), top == t)
            })
            .collect(),
        Targets::Multi { values, .. } => probs
            .iter()
            .flatten()
            .zip(values)
            .map(|(&p, &y)| {
                let p = f64::from(p);
                (p.max(1.0 - p), (p > 0.5) == (y > 0.5))
            })
            .collect(),
        Targets::None => return None,
    };
    if predictions.is_empty() {
        return None;
    }
    // Per bin: count, summed confidence, right predictions. Bin b holds (b/B, (b+1)/B]; a
    // confidence of exactly 0 (impossible for a top probability) joins the first.
    let mut bins = [(0usize, 0f64, 0usize); ECE_BINS];
    for &(confidence, right) in &predictions {
        let b = ((confidence * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        bins[b].0 += 1;
        bins[b].1 += confidence;
        bins[b].2 += usize::from(right);
    }
    let n = predictions.len() as f64;
    Some(
        bins.iter()
            .filter(|(count, _, _)| *count > 0)
            .map(|&(count, confidence, right)| {
                let count_f = count as f64;
                (count_f / n) * (right as f64 / count_f - confidence / count_f).abs()
            })
            .sum(),
    )
}

/// The `(threshold, coverage, accuracy)` of predicting only where the top probability reaches
/// each threshold, for single-label data: coverage is the share of examples predicted, accuracy
/// is measured on those (`None` when none is). What a bot that abstains below a threshold gets.
pub fn selective_accuracy(
    probs: &[Vec<f32>],
    truth: &[u32],
    thresholds: &[f64],
) -> Vec<(f64, f64, Option<f64>)> {
    let predicted = crate::eval::argmax(probs);
    thresholds
        .iter()
        .map(|&threshold| {
            let kept: Vec<bool> = probs
                .iter()
                .zip(&predicted)
                .zip(truth)
                .filter(|((row, &p), _)| f64::from(row[p as usize]) >= threshold)
                .map(|((_, &p), &t)| p == t)
                .collect();
            let coverage = kept.len() as f64 / truth.len().max(1) as f64;
            let accuracy = (!kept.is_empty())
                .then(|| kept.iter().filter(|&&r| r).count() as f64 / kept.len() as f64);
            (threshold, coverage, accuracy)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits of a model that is right with probability softmax(z)[truth] at temperature
    /// `true_t`, then sharpened by it: the fit must find `true_t` back.
    #[test]
    fn the_fit_recovers_the_temperature_of_overconfident_logits() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let true_t = 2.5;
        let (mut logits, mut truth) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let z: Vec<f64> = (0..3).map(|_| rng.gen_range(-3.0..3.0)).collect();
            // Draw the label from the calibrated probabilities softmax(z)...
            let p = softmax(&z);
            let u: f64 = rng.gen();
            let label = if u < p[0] {
                0
            } else if u < p[0] + p[1] {
                1
            } else {
                2
            };
            // ...and report logits sharpened by true_t, as an overconfident model would.
            logits.push(z.iter().map(|&v| (v * true_t) as f32).collect());
            truth.push(label);
        }
        let targets = Targets::Single(truth);
        let fit = Calibration::fit(&logits, &targets, 7).unwrap();
        assert!(
            (fit.temperature - true_t).abs() < 0.1,
            "fitted {}",
            fit.temperature
        );
        assert_eq!((fit.step, fit.examples), (7, 20_000));
        assert!(fit.loss_after < fit.loss_before);
        assert!(fit.ece_after < fit.ece_before / 3.0, "{fit:?}");
        // The minimum: the loss rises on both sides of the fitted temperature.
        let at = |t: f64| mean_loss(&logits, &targets, t);
        assert!(at(fit.temperature) <= at(fit.temperature * 1.01));
        assert!(at(fit.temperature) <= at(fit.temperature / 1.01));
    }

    #[test]
    fn multi_label_fits_one_temperature_for_every_sigmoid() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (mut logits, mut values) = (Vec::new(), Vec::new());
        for _ in 0..10_000 {
            let z: Vec<f64> = (0..2).map(|_| rng.gen_range(-4.0..4.0)).collect();
            for &v in &z {
                values.push(if rng.gen::<f64>() < sigmoid(v) {
                    1.0
                } else {
                    0.0
                });
            }
            // Underconfident this time: logits shrunk by half.
            logits.push(z.iter().map(|&v| (v * 0.5) as f32).collect());
        }
        let targets = Targets::Multi {
            values,
            num_labels: 2,
        };
        let fit = Calibration::fit(&logits, &targets, 0).unwrap();
        assert!(
            (fit.temperature - 0.5).abs() < 0.03,
            "fitted {}",
            fit.temperature
        );
    }

    /// Rows all predicted right leave the loss falling toward T = 0: no fit, rather than one at
    /// the search's bound that would make every prediction nearly certain. One row predicted
    /// wrong gives the loss a minimum inside the interval again.
    #[test]
    fn separable_rows_fit_no_temperature() {
        let mut logits = vec![
            vec![3.0f32, 0.0, -1.0],
            vec![0.0, 2.0, 0.5],
            vec![-1.0, 0.0, 0.4],
        ];
        let targets = Targets::Single(vec![0, 1, 2]);
        match Calibration::fit(&logits, &targets, 0) {
            Err(NoFit::Separable { examples: 3, bound }) => assert!((bound - 0.05).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        let multi = Targets::Multi {
            values: vec![1.0, 0.0, 0.0, 1.0],
            num_labels: 2,
        };
        let two = vec![vec![2.0f32, -1.0], vec![-0.5, 0.3]];
        assert!(matches!(
            Calibration::fit(&two, &multi, 0),
            Err(NoFit::Separable { examples: 2, .. })
        ));
        logits.push(vec![1.0, 0.0, 0.0]);
        let targets = Targets::Single(vec![0, 1, 2, 1]);
        let fit = Calibration::fit(&logits, &targets, 0).unwrap();
        assert!(
            fit.temperature > 0.06 && fit.loss_after < fit.loss_before,
            "{fit:?}"
        );
    }

    #[test]
    fn losses_match_their_definitions() {
        let logits = vec![vec![2.0f32, 0.0, -1.0], vec![0.5, 0.5, 3.0]];
        let targets = Targets::Single(vec![0, 1]);
        let p = |row: &[f64], t: usize| softmax(row)[t];
        let expected = -(p(&[1.0, 0.0, -0.5], 0).ln() + p(&[0.25, 0.25, 1.5], 1).ln()) / 2.0;
        assert!((mean_loss(&logits, &targets, 2.0) - expected).abs() < 1e-12);

        let multi = Targets::Multi {
            values: vec![1.0, 0.0],
            num_labels: 2,
        };
        let logits = vec![vec![30.0f32, -1.0]];
        let expected = -(sigmoid(15.0).ln() + (1.0 - sigmoid(-0.5)).ln()) / 2.0;
        assert!((mean_loss(&logits, &multi, 2.0) - expected).abs() < 1e-12);
        let probs = scale(&logits, 2.0, true);
        assert!((f64::from(probs[0][1]) - sigmoid(-0.5)).abs() < 1e-7);
        assert_eq!(
            Calibration::fit(&logits, &Targets::None, 0),
            Err(NoFit::NoLabels)
        );
    }

    #[test]
    fn ece_by_hand() {
        // Bins of width 1/15: 0.95 and 0.97 share the last bin (mean confidence 0.96, one of two
        // right: gap 0.46); 0.6 is alone in bin 9 (right: gap 0.4). ECE = 2/3 * 0.46 + 1/3 * 0.4.
        let probs = vec![vec![0.95f32, 0.05], vec![0.03, 0.97], vec![0.6, 0.4]];
        let ece = expected_calibration_error(&probs, &Targets::Single(vec![0, 0, 0])).unwrap();
        let expected = 2.0 / 3.0 * 0.46 + 1.0 / 3.0 * 0.4;
        assert!((ece - expected).abs() < 1e-6, "{ece} vs {expected}");
        // Multi-label: p = 0.8 for a positive (right, conf 0.8) and 0.3 for a negative (right,
        // conf 0.7): gaps 0.2 and 0.3 in two bins, half the predictions each.
        let multi = Targets::Multi {
            values: vec![1.0, 0.0],
            num_labels: 2,
        };
        let ece = expected_calibration_error(&[vec![0.8, 0.3]], &multi).unwrap();
        assert!((ece - 0.25).abs() < 1e-6, "{ece}");
        assert_eq!(
            expected_calibration_error(&[], &Targets::Single(vec![])),
            None
        );
    }

    #[test]
    fn selective_accuracy_counts_what_clears_the_threshold() {
        let probs = vec![
            vec![0.95f32, 0.05], // right
            vec![0.1, 0.9],      // wrong
            vec![0.6, 0.4],      // right
            vec![0.45, 0.55],    // right
        ];
        let rows = selective_accuracy(&probs, &[0, 0, 0, 1], &[0.5, 0.7, 0.92, 0.99]);
        assert_eq!(rows[0], (0.5, 1.0, Some(0.75)));
        assert_eq!(rows[1], (0.7, 0.5, Some(0.5)));
        assert_eq!(rows[2], (0.92, 0.25, Some(1.0)));
        assert_eq!(rows[3], (0.99, 0.0, None));
    }
}
