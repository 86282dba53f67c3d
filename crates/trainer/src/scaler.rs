//! Dynamic loss scaling for f16 training, with PyTorch `GradScaler`'s rules: the loss is
//! multiplied by `scale` before backward so small f16 gradients do not flush to zero; gradients
//! are divided by it afterwards; a step whose gradients hold inf or NaN is skipped and the scale
//! halved; after `growth_interval` clean steps in a row the scale doubles. Every decision is made
//! with tensor ops on the device: no step reads a value back.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};

use crate::optim::Gradients;

const SCALE: &str = "loss_scale";
const CLEAN: &str = "loss_scale_clean_steps";

/// The loss scale and its clean-step counter, as f32 scalars on the device.
#[derive(Debug, Clone)]
pub struct LossScaler {
    scale: Tensor,
    clean_steps: Tensor,
    growth_interval: f64,
}

impl LossScaler {
    /// PyTorch's defaults are `init_scale = 65536`, `growth_interval = 2000`.
    pub fn new(device: &Device, init_scale: f64, growth_interval: usize) -> Result<Self> {
        Ok(Self {
            scale: Tensor::new(init_scale as f32, device)?,
            clean_steps: Tensor::new(0f32, device)?,
            growth_interval: growth_interval as f64,
        })
    }

    /// The current scale (a device scalar): multiply the loss by it before backward.
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    /// Unscales `grads`, zeroes them if any is not finite, and updates the scale. Returns the
    /// `u8` device scalar that says whether the optimizer should apply this step.
    pub fn unscale_and_update(&mut self, grads: &mut Gradients) -> Result<Tensor> {
        grads.scale(&self.scale.recip()?)?;
        let finite = match grads.finite()? {
            Some(finite) => finite,
            None => Tensor::new(1u8, self.scale.device())?,
        };
        grads.zero_unless(&finite)?;
        let ok = finite.to_dtype(DType::F32)?;
        let clean = ((&self.clean_steps + 1.0)? * &ok)?;
        let grow = clean.ge(self.growth_interval)?.to_dtype(DType::F32)?;
        // finite: x1, or x2 when the interval is reached; not finite: x0.5.
        let factor = ((&ok * (&grow + 1.0)?)? + ((1.0 - &ok)? * 0.5)?)?;
        self.scale = (&self.scale * factor)?;
        self.clean_steps = (clean * (1.0 - grow)?)?;
        Ok(finite)
    }

    /// The scaler's state for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        HashMap::from([
            (SCALE.to_string(), self.scale.clone()),
            (CLEAN.to_string(), self.clean_steps.clone()),
        ])
    }

    /// Restores the state saved by [`LossScaler::state`]; the error names a missing key.
    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        let device = self.scale.device().clone();
        let get = |key: &str| {
            state
                .get(key)
                .ok_or_else(|| {
                    format!("optimizer state lacks `{key}` (a run trained in f16 saves it)")
                })
                .and_then(|t| t.to_device(&device).map_err(|e| e.to_string()))
        };
        self.scale = get(SCALE)?;
        self.clean_steps = get(CLEAN)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamW, ParamSpec};
    use candle_core::Var;

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    fn optimizer() -> (Var, AdamW) {
        let var = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let spec = ParamSpec {
            name: "w".into(),
            var: var.clone(),
            weight_decay: 0.0,
            lr_scale: 1.0,
        };
        (var, AdamW::new(vec![spec], 0.9, 0.999, 1e-8).unwrap())
    }

    #[test]
    fn an_overflowing_step_is_skipped_and_halves_the_scale() {
        let (var, mut opt) = optimizer();
        let mut scaler = LossScaler::new(&Device::Cpu, 1024.0, 2000).unwrap();
        let inf = Tensor::new(&[f32::INFINITY, 1.0, 1.0], &Device::Cpu).unwrap();
        let loss = (var.as_tensor() * inf).unwrap().sum_all().unwrap();
        let mut grads = opt.collect(&loss.backward().unwrap());
        let apply = scaler.unscale_and_update(&mut grads).unwrap();
        assert_eq!(apply.to_scalar::<u8>().unwrap(), 0);
        opt.step_if(&grads, 0.1, Some(&apply)).unwrap();
        assert_eq!(
            var.as_tensor().to_vec1::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0],
            "skipped step moved the weights"
        );
        assert_eq!(scalar(scaler.scale()), 512.0);
    }

    #[test]
    fn clean_steps_apply_unscaled_gradients_and_grow_the_scale_after_the_interval() {
        let (var, mut opt) = optimizer();
        let (reference_var, mut reference) = optimizer();
        let mut scaler = LossScaler::new(&Device::Cpu, 256.0, 2).unwrap();
        for step in 0..2 {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            let scaled = (&loss * scaler.scale()).unwrap();
            let mut grads = opt.collect(&scaled.backward().unwrap());
            let apply = scaler.unscale_and_update(&mut grads).unwrap();
            assert_eq!(apply.to_scalar::<u8>().unwrap(), 1, "step {step}");
            opt.step_if(&grads, 0.1, Some(&apply)).unwrap();
            let plain = reference_var.as_tensor().sqr().unwrap().sum_all().unwrap();
            let plain_grads = reference.collect(&plain.backward().unwrap());
            reference.step(&plain_grads, 0.1).unwrap();
        }
        let diff = (var.as_tensor() - reference_var.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(
            scalar(&diff) < 1e-5,
            "scaled and unscaled training differ by {}",
            scalar(&diff)
        );
        assert_eq!(
            scalar(scaler.scale()),
            512.0,
            "the scale doubles after 2 clean steps"
        );
    }
}
