//! The learning-rate range test (L. Smith, "Cyclical Learning Rates for Training Neural
//! Networks", 2017; fastai's `lr_find`, PyTorch Lightning's `Tuner.lr_find`): a short run whose
//! learning rate rises exponentially from a tiny to a huge value, one optimizer step each, and
//! the training loss of every step. Where the loss falls fastest is a good peak rate to start a
//! sweep from; where it blows up is too high. [`crate::fit::Trainer::lr_range_test`] runs it;
//! this module holds the rate ramp and the reading of the curve.

use serde::Serialize;

/// Why a ramp from `min` to `max` over `steps` steps cannot run, if it cannot: it needs
/// `0 < min < max` (finite) and at least two steps.
pub fn check_range(min: f64, max: f64, steps: usize) -> Option<String> {
    if !(min > 0.0 && max > min && max.is_finite()) {
        return Some(format!(
            "the rates must satisfy 0 < min < max (got {min:e} and {max:e})"
        ));
    }
    (steps < 2).then(|| format!("a ramp needs at least 2 steps (got {steps})"))
}

/// The rate of step `step` of `steps`: `min * (max / min)^(step / (steps - 1))`, so the first
/// step runs at `min` and the last at `max`.
pub fn ramp(min: f64, max: f64, steps: usize, step: usize) -> f64 {
    if steps <= 1 {
        return min;
    }
    min * (max / min).powf(step as f64 / (steps - 1) as f64)
}

/// The curve of a range test and what it suggests.
#[derive(Debug, Clone, Serialize)]
pub struct LrCurve {
    /// The learning rate of each step.
    pub lrs: Vec<f64>,
    /// The training loss of each step (the mean over its micro-batches).
    pub losses: Vec<f64>,
    /// `losses` smoothed by a bias-corrected exponential moving average (fastai's, beta 0.98 by
    /// default): one batch's loss is noisy.
    pub smoothed: Vec<f64>,
    /// Steps after which the smoothed loss exceeded four times its minimum (diverged), or the
    /// first non-finite loss; `None` when the whole ramp stayed below.
    pub diverged_at: Option<usize>,
    /// The rate where the smoothed loss falls fastest against log(lr), before divergence.
    pub steepest: Option<f64>,
    /// A tenth of the rate of the smoothed loss's minimum (fastai's older `lr_min / 10`).
    pub min_over_10: Option<f64>,
}

impl LrCurve {
    /// Reads a ramp's losses: smoothing with `beta`, divergence, suggestions.
    pub fn new(lrs: Vec<f64>, losses: Vec<f64>, beta: f64) -> Self {
        let mut smoothed = Vec::with_capacity(losses.len());
        let mut average = 0.0;
        for (i, &loss) in losses.iter().enumerate() {
            average = beta * average + (1.0 - beta) * loss;
            smoothed.push(average / (1.0 - beta.powi(i as i32 + 1)));
        }
        // Divergence: the first non-finite value, or the smoothed loss above 4x its running
        // minimum.
        let mut best = f64::INFINITY;
        let mut diverged_at = None;
        for (i, &s) in smoothed.iter().enumerate() {
            if !s.is_finite() || (i > 0 && s > 4.0 * best) {
                diverged_at = Some(i);
                break;
            }
            best = best.min(s);
        }
        let usable = diverged_at.unwrap_or(smoothed.len());
        // Slope against log(lr) between neighbouring steps; the ramp's log-lr step is constant,
        // so the steepest fall is the most negative difference.
        let steepest = (1..usable)
            .map(|i| (i, smoothed[i] - smoothed[i - 1]))
            .filter(|(_, d)| d.is_finite() && *d < 0.0)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| (lrs[i - 1] * lrs[i]).sqrt());
        let min_over_10 = (0..usable)
            .min_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b]))
            .map(|i| lrs[i] / 10.0);
        Self {
            lrs,
            losses,
            smoothed,
            diverged_at,
            steepest,
            min_over_10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_is_geometric_from_min_to_max() {
        let lrs: Vec<f64> = (0..5).map(|i| ramp(1e-6, 1e-2, 5, i)).collect();
        assert_eq!(lrs[0], 1e-6);
        assert!((lrs[4] - 1e-2).abs() < 1e-15);
        for pair in lrs.windows(2) {
            assert!((pair[1] / pair[0] - 10.0).abs() < 1e-9, "{lrs:?}");
        }
        assert_eq!(ramp(3e-4, 1.0, 1, 0), 3e-4);
        assert!(check_range(1e-7, 1.0, 100).is_none());
        assert!(check_range(0.0, 1.0, 100).is_some());
        assert!(check_range(1.0, 1.0, 100).is_some());
        assert!(check_range(1e-7, f64::INFINITY, 100).is_some());
        assert!(check_range(1e-7, 1.0, 1).is_some());
    }

    /// A curve flat at 1.0, falling fastest around 1e-3, bottoming out at 1e-2 and then
    /// exploding: the steepest point is near 1e-3, the minimum at 1e-2, and divergence is found.
    #[test]
    fn suggestions_find_the_steepest_fall_and_stop_at_divergence() {
        let steps = 121;
        let lrs: Vec<f64> = (0..steps).map(|i| ramp(1e-6, 1.0, steps, i)).collect();
        let losses: Vec<f64> = lrs
            .iter()
            .map(|&lr| {
                let x = lr.log10();
                if x < -2.0 {
                    // A logistic fall from 1.0 to 0.2 centred on 1e-3.
                    0.2 + 0.8 / (1.0 + ((x + 3.0) * 4.0).exp())
                } else {
                    0.2 * 10f64.powf(3.0 * (x + 2.0))
                }
            })
            .collect();
        let curve = LrCurve::new(lrs, losses, 0.0);
        let steepest = curve.steepest.unwrap();
        assert!(
            (steepest.log10() + 3.0).abs() < 0.06,
            "steepest at {steepest:e}"
        );
        let at_min = curve.min_over_10.unwrap() * 10.0;
        assert!((at_min.log10() + 2.0).abs() < 0.06, "minimum at {at_min:e}");
        let diverged = curve.diverged_at.unwrap();
        assert!(curve.lrs[diverged] > 1e-2 && curve.lrs[diverged] < 1e-1);
    }

    #[test]
    fn a_nan_loss_counts_as_divergence_and_smoothing_is_unbiased() {
        let curve = LrCurve::new(vec![1.0, 2.0, 4.0], vec![2.0, 1.0, f64::NAN], 0.98);
        assert!(
            (curve.smoothed[0] - 2.0).abs() < 1e-12,
            "debiased: the first value is kept"
        );
        assert_eq!(curve.diverged_at, Some(2));
        assert!(curve.steepest.is_some());
    }
}
