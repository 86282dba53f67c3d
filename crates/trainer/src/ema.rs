//! An exponential moving average of the trained weights (Polyak averaging; `train.ema_decay`),
//! the weights that are evaluated and saved when it is on.
//!
//! After optimizer step `n` (1, 2, ...) each average moves toward its parameter:
//!
//! ```text
//! average += (param - average) * (1 - decay) / (1 - decay^n)
//! ```
//!
//! which is Adam's bias-corrected moving average: at step `n` it weighs the weights after step
//! `k <= n` by `decay^(n - k)`, normalized to sum to one. The first step sets the average to the
//! weights, so the starting point (the pretrained encoder, the fresh head) carries no weight, as
//! it would in a plain average started from it: a short run's average is of trained weights.
//! Everything stays on the device; the averages are f32 whatever the parameters' dtype.
//!
//! Evaluation and checkpoints use the averages: [`WeightAverage::swap`] exchanges the contents
//! of the parameters and the averages (copies inside each variable's storage, so the optimizer
//! keeps updating the same buffers), and a second swap puts the trained weights back. While
//! swapped, the averages hold the trained weights: that is what a checkpoint saves beside the
//! optimizer moments (`online.<name>`) so that a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};

/// An f32 copy of a variable's value that records no op (see [`WeightAverage::update`]).
fn untracked_copy(var: &Var) -> Result<Tensor> {
    var.as_tensor().detach().to_dtype(DType::F32)?.copy()
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    /// The average while not swapped; the trained weights while swapped.
    other: Tensor,
}

/// The moving averages of a list of parameters.
#[derive(Debug)]
pub struct WeightAverage {
    decay: f64,
    slots: Vec<Slot>,
    /// Whether the variables hold the averages now.
    swapped: bool,
}

/// The prefix of a trained weight in a checkpoint's optimizer state, saved while the
/// checkpoint's model file holds the averages.
const ONLINE: &str = "online.";

impl WeightAverage {
    /// Averages of `params` (name, variable), starting as copies of their current values.
    pub fn new(params: impl IntoIterator<Item = (String, Var)>, decay: f64) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let other = untracked_copy(&var)?;
                Ok(Slot { name, var, other })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            decay,
            slots,
            swapped: false,
        })
    }

    /// The weight the parameters get at update `step` (1-based): `(1 - d) / (1 - d^step)`.
    pub fn rate(&self, step: u64) -> f64 {
        let d = self.decay;
        (1.0 - d) / (1.0 - d.powi(step.clamp(1, i32::MAX as u64) as i32))
    }

    /// Moves every average toward its parameter after optimizer step `step` (1-based). The
    /// variables must hold the trained weights (not swapped).
    pub fn update(&mut self, step: u64) -> Result<()> {
        if self.swapped {
            candle_core::bail!("weight average: update while the averages are swapped in");
        }
        let rate = self.rate(step);
        for slot in &mut self.slots {
            // Detached: an op on a variable is recorded for backward, and each average would
            // then hold the one before it, every step's copy alive until the next swap.
            let param = slot.var.as_tensor().detach().to_dtype(DType::F32)?;
            slot.other = (&slot.other + ((param - &slot.other)? * rate)?)?;
        }
        Ok(())
    }

    /// Whether the variables hold the averages.
    pub fn is_swapped(&self) -> bool {
        self.swapped
    }

    /// Exchanges the variables' contents with the averages.
    pub fn swap(&mut self) -> Result<()> {
        for slot in &mut self.slots {
            let held = untracked_copy(&slot.var)?;
            slot.var.set(&slot.other.to_dtype(slot.var.dtype())?)?;
            slot.other = held;
        }
        self.swapped = !self.swapped;
        Ok(())
    }

    /// Puts the averages into the variables (no-op when they are there).
    pub fn swap_in(&mut self) -> Result<()> {
        if !self.swapped {
            self.swap()?;
        }
        Ok(())
    }

    /// Puts the trained weights back into the variables (no-op when they are there); true when
    /// it had to swap them.
    pub fn swap_out(&mut self) -> Result<bool> {
        let swapping = self.swapped;
        if swapping {
            self.swap()?;
        }
        Ok(swapping)
    }

    /// The trained weights by name (`online.<param>`), for a checkpoint whose model file holds
    /// the averages: callable only while swapped in.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        if !self.swapped {
            candle_core::bail!("weight average: state() needs the averages swapped in");
        }
        Ok(self
            .slots
            .iter()
            .map(|s| (format!("{ONLINE}{}", s.name), s.other.clone()))
            .collect())
    }

    /// Restores a checkpoint's state: its model file (already in the variables) holds the
    /// averages, `state` the trained weights. Leaves the averages swapped in. The error names the
    /// first missing or misshapen entry.
    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        for slot in &mut self.slots {
            let key = format!("{ONLINE}{}", slot.name);
            let tensor = state.get(&key).ok_or_else(|| {
                format!("optimizer state lacks `{key}`, the trained weight of a run with train.ema_decay")
            })?;
            if tensor.dims() != slot.var.dims() {
                return Err(format!(
                    "optimizer state `{key}` has shape {:?}, expected {:?}",
                    tensor.dims(),
                    slot.var.dims()
                ));
            }
            slot.other = tensor
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(slot.var.device()))
                .map_err(|e| format!("optimizer state `{key}`: {e}"))?;
        }
        self.swapped = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn average_is_the_normalized_exponential_weighting() {
        let var = Var::new(&[0f32, 10.0], &Device::Cpu).unwrap();
        let decay = 0.5;
        let mut avg = WeightAverage::new([("w".to_string(), var.clone())], decay).unwrap();
        let steps = [[1f32, 2.0], [3.0, 4.0], [5.0, -6.0]];
        for (i, w) in steps.iter().enumerate() {
            var.set(&Tensor::new(w, &Device::Cpu).unwrap()).unwrap();
            avg.update(i as u64 + 1).unwrap();
        }
        // Weights 0.25, 0.5, 1 for steps 1, 2, 3, over their sum 1.75; the initial value
        // (0, 10) has no weight.
        let expect =
            |j: usize| (0.25 * steps[0][j] + 0.5 * steps[1][j] + steps[2][j]) as f64 / 1.75;
        avg.swap_in().unwrap();
        let got = values(var.as_tensor());
        for j in 0..2 {
            assert!((got[j] as f64 - expect(j)).abs() < 1e-6, "{got:?}");
        }
        // The trained weights come back exactly.
        let state = avg.state().unwrap();
        assert_eq!(values(&state["online.w"]), vec![5.0, -6.0]);
        avg.swap_out().unwrap();
        assert_eq!(values(var.as_tensor()), vec![5.0, -6.0]);
        assert!(avg.update(4).is_ok());
        // Nothing kept is part of a backward graph: each step's average would keep the last.
        assert!(avg.slots.iter().all(|s| !s.other.track_op()));
        avg.swap().unwrap();
        assert!(avg.slots.iter().all(|s| !s.other.track_op()));
        avg.swap().unwrap();
        avg.swap_in().unwrap();
        assert!(avg.update(5).is_err(), "update while swapped must fail");
    }

    #[test]
    fn first_update_copies_the_weights() {
        let var = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let mut avg = WeightAverage::new([("w".to_string(), var.clone())], 0.999).unwrap();
        var.set(&Tensor::new(&[7f32, 8.0, 9.0], &Device::Cpu).unwrap())
            .unwrap();
        avg.update(1).unwrap();
        avg.swap_in().unwrap();
        assert_eq!(values(var.as_tensor()), vec![7.0, 8.0, 9.0]);
    }

    #[test]
    fn load_state_restores_and_names_missing_keys() {
        let var = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let mut avg = WeightAverage::new([("w".to_string(), var.clone())], 0.9).unwrap();
        let err = avg.load_state(&HashMap::new()).unwrap_err();
        assert!(err.contains("online.w"), "{err}");
        let bad = HashMap::from([(
            "online.w".to_string(),
            Tensor::new(&[1f32], &Device::Cpu).unwrap(),
        )]);
        assert!(avg.load_state(&bad).unwrap_err().contains("shape"));
        let good = HashMap::from([(
            "online.w".to_string(),
            Tensor::new(&[4f32, 5.0], &Device::Cpu).unwrap(),
        )]);
        avg.load_state(&good).unwrap();
        assert!(avg.is_swapped());
        avg.swap_out().unwrap();
        assert_eq!(values(var.as_tensor()), vec![4.0, 5.0]);
    }
}
