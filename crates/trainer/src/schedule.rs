//! Learning-rate schedules: linear warm-up, then linear, cosine or constant.
//! Same shapes as Hugging Face's `get_linear_schedule_with_warmup` and
//! `get_cosine_schedule_with_warmup`.

use serde::{Deserialize, Serialize};

/// What happens after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Linear decay to 0 at the last step.
    #[default]
    Linear,
    /// Half a cosine wave to 0 at the last step.
    Cosine,
    /// Stay at the peak.
    Constant,
}

/// The learning rate as a function of the optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
}

impl Schedule {
    /// The multiplier of the peak rate for the update made at `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.decay {
            Decay::Linear => 1.0 - progress,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Constant => 1.0,
        }
    }

    /// The learning rate for the update made at `step`.
    pub fn lr(&self, step: usize) -> f64 {
        self.peak * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(decay: Decay) -> Schedule {
        Schedule {
            peak: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            decay,
        }
    }

    #[test]
    fn warmup_rises_linearly_from_zero() {
        let s = schedule(Decay::Linear);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn linear_and_cosine_reach_zero_at_the_end_and_meet_halfway() {
        let linear = schedule(Decay::Linear);
        let cosine = schedule(Decay::Cosine);
        assert!((linear.lr(60) - 0.5).abs() < 1e-12);
        assert!((cosine.lr(60) - 0.5).abs() < 1e-12);
        assert!(linear.lr(110).abs() < 1e-12 && cosine.lr(110).abs() < 1e-12);
        assert!(
            cosine.lr(30) > linear.lr(30),
            "cosine decays slower early on"
        );
    }

    #[test]
    fn constant_stays_at_peak_after_warmup() {
        assert_eq!(schedule(Decay::Constant).lr(100), 1.0);
    }
}
