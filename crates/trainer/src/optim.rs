//! AdamW with decoupled weight decay, parameter groups, gradient accumulation and global-norm
//! clipping, whose moments can be saved and restored (candle-nn's `AdamW` cannot, so a resumed
//! run would restart its moments from zero).
//!
//! The update is PyTorch's `torch.optim.AdamW` (non-amsgrad, non-fused):
//! <https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>. Everything stays on the
//! device: clipping uses the norm as a tensor, so no step reads a value back to the host.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

/// Whether a parameter is exempt from weight decay: biases and layer-norm weights, as in BERT's
/// original optimizer and Hugging Face's Trainer.
pub fn exempt_from_decay(name: &str) -> bool {
    name.ends_with(".bias")
        || name.contains("LayerNorm.weight")
        || name.contains("layer_norm.weight")
}

/// The encoder layer a parameter belongs to (`encoder.layer.<i>.…`); `None` for the
/// embeddings, encoder-wide tensors (MPNet's shared position bias) and the head.
pub fn encoder_layer(name: &str) -> Option<usize> {
    name.strip_prefix("encoder.layer.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The learning-rate scale of an encoder parameter under layer-wise decay `decay` in an encoder
/// of `layers` layers: `decay^(layers - 1 - i)` for layer `i` (the top layer learns at the full
/// rate), `decay^layers` for everything below the layers (embeddings, MPNet's position bias,
/// which every layer reads). With `decay` 1 every scale is 1.
pub fn layer_lr_scale(name: &str, layers: usize, decay: f64) -> f64 {
    let depth_below_top = match encoder_layer(name) {
        Some(i) => layers.saturating_sub(i + 1),
        None => layers,
    };
    decay.powi(depth_below_top as i32)
}

/// One trainable tensor and its group settings.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub var: Var,
    pub weight_decay: f64,
    /// The parameter's learning rate is the schedule's rate times this (e.g. a head learning rate).
    pub lr_scale: f64,
}

impl ParamSpec {
    /// `var` decayed by `weight_decay` unless [`exempt_from_decay`] exempts it (biases and
    /// layer norms, as Hugging Face's Trainer groups them), its rate scaled by `lr_scale`.
    pub fn new(name: String, var: Var, weight_decay: f64, lr_scale: f64) -> Self {
        let weight_decay = if exempt_from_decay(&name) {
            0.0
        } else {
            weight_decay
        };
        Self {
            name,
            var,
            weight_decay,
            lr_scale,
        }
    }
}

#[derive(Debug)]
struct Slot {
    spec: ParamSpec,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Gradients aligned with an optimizer's parameters (`None`: the parameter took no part).
#[derive(Debug, Clone)]
pub struct Gradients {
    grads: Vec<Option<Tensor>>,
    /// A scalar every gradient is still to be multiplied by (the clipping coefficient), kept
    /// aside when the fused CPU AdamW can fold it into its update instead of a pass of its own.
    factor: Option<Tensor>,
}

impl Gradients {
    fn new(grads: Vec<Option<Tensor>>) -> Self {
        Self {
            grads,
            factor: None,
        }
    }

    /// The gradients with any pending factor applied.
    fn materialize(&mut self) -> Result<()> {
        if let Some(factor) = self.factor.take() {
            for grad in self.grads.iter_mut().flatten() {
                *grad = grad.broadcast_mul(&factor.to_dtype(grad.dtype())?)?;
            }
        }
        Ok(())
    }

    /// Adds another micro-batch's gradients (gradient accumulation).
    pub fn accumulate(&mut self, mut other: Gradients) -> Result<()> {
        self.materialize()?;
        other.materialize()?;
        for (mine, theirs) in self.grads.iter_mut().zip(other.grads) {
            *mine = match (mine.take(), theirs) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            };
        }
        Ok(())
    }

    /// The global L2 norm over all gradients, as a scalar f32 tensor on the device.
    pub fn global_norm(&self) -> Result<Option<Tensor>> {
        let (fused, other): (Vec<&Tensor>, Vec<&Tensor>) = self
            .grads
            .iter()
            .flatten()
            .partition(|g| crate::fused_adamw::sum_of_squares_applies(g));
        let mut total = crate::fused_adamw::sum_of_squares(&fused)?;
        for grad in other {
            let sq = grad.to_dtype(DType::F32)?.sqr()?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + sq)?,
                None => sq,
            });
        }
        let total = match (total, &self.factor) {
            (Some(t), Some(f)) => Some(t.broadcast_mul(&f.sqr()?)?),
            (t, _) => t,
        };
        total.map(|t| t.sqrt()).transpose()
    }

    /// Multiplies every gradient by a scalar tensor (e.g. `1 / loss_scale`).
    pub fn scale(&mut self, factor: &Tensor) -> Result<()> {
        self.materialize()?;
        for grad in self.grads.iter_mut().flatten() {
            *grad = grad.broadcast_mul(&factor.to_dtype(grad.dtype())?)?;
        }
        Ok(())
    }

    /// A `u8` scalar on the device: 1 when every gradient is finite, 0 when any is inf or NaN
    /// (`x - x` is 0 exactly for finite `x` and NaN otherwise).
    pub fn finite(&self) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for grad in self.grads.iter().flatten() {
            let sum = grad.to_dtype(DType::F32)?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + sum)?,
                None => sum,
            });
        }
        #[allow(clippy::eq_op)] // x - x is the finiteness test itself
        total.map(|t| (&t - &t)?.eq(0f32)).transpose()
    }

    /// Replaces every gradient by zeros where `finite` is 0, so a skipped step computes no NaN.
    pub fn zero_unless(&mut self, finite: &Tensor) -> Result<()> {
        self.materialize()?;
        for grad in self.grads.iter_mut().flatten() {
            let mask = finite.broadcast_as(grad.shape())?;
            *grad = mask.where_cond(grad, &grad.zeros_like()?)?;
        }
        Ok(())
    }

    /// Scales all gradients by `min(1, max_norm / (norm + 1e-6))` (PyTorch's
    /// `clip_grad_norm_`) and returns the norm before clipping, on the device. When every
    /// gradient is an f32 CPU tensor the scale is kept aside for the fused AdamW to apply.
    pub fn clip(&mut self, max_norm: f64) -> Result<Option<Tensor>> {
        self.materialize()?;
        let Some(norm) = self.global_norm()? else {
            return Ok(None);
        };
        if max_norm > 0.0 {
            let coef = (norm.affine(1.0, 1e-6)?.recip()? * max_norm)?.clamp(0f32, 1f32)?;
            self.factor = Some(coef);
            let deferrable = self
                .grads
                .iter()
                .flatten()
                .all(crate::fused_adamw::sum_of_squares_applies);
            if !deferrable {
                self.materialize()?;
            }
        }
        Ok(Some(norm))
    }
}

/// AdamW over a fixed list of parameters, in a stable (name-sorted) order.
#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    steps: u64,
}

impl AdamW {
    pub fn new(params: Vec<ParamSpec>, beta1: f64, beta2: f64, eps: f64) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|spec| {
                // Two separate buffers: the CPU path updates them in place.
                let zeros = || spec.var.as_tensor().zeros_like()?.to_dtype(DType::F32);
                Ok(Slot {
                    exp_avg: zeros()?,
                    exp_avg_sq: zeros()?,
                    spec,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            beta1,
            beta2,
            eps,
            steps: 0,
        })
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Number of parameter tensors this optimizer updates.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The parameters this optimizer updates, in its (name-sorted) order.
    pub fn params(&self) -> impl Iterator<Item = &ParamSpec> {
        self.slots.iter().map(|slot| &slot.spec)
    }

    /// Number of scalar parameters this optimizer updates.
    pub fn trainable_elements(&self) -> usize {
        self.slots.iter().map(|s| s.spec.var.elem_count()).sum()
    }

    /// Picks this optimizer's parameters' gradients out of a backward pass.
    pub fn collect(&self, store: &GradStore) -> Gradients {
        Gradients::new(
            self.slots
                .iter()
                .map(|slot| store.get(slot.spec.var.as_tensor()).cloned())
                .collect(),
        )
    }

    /// One AdamW update with learning rate `lr` (times each group's `lr_scale`). Parameters
    /// without a gradient are left untouched, as PyTorch does.
    pub fn step(&mut self, grads: &Gradients, lr: f64) -> Result<()> {
        self.step_if(grads, lr, None)
    }

    /// As [`AdamW::step`], but where the `u8` scalar `apply` is 0 every parameter and moment keeps
    /// its value (a skipped step under loss scaling), decided on the device so no value is read
    /// back. Unlike PyTorch's `GradScaler`, which skips `optimizer.step()` entirely, the step
    /// count still advances on a skipped step (it lives on the host): bias correction then counts
    /// the few early skips of loss scaling as steps.
    pub fn step_if(&mut self, grads: &Gradients, lr: f64, apply: Option<&Tensor>) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        // The pending clip factor: an input of the fused CPU update, multiplied in on the
        // tensor-op path.
        let factor = grads.factor.as_ref();
        // The fused update's scale input when nothing is pending, made once.
        let mut unit: Option<Tensor> = None;
        // The skip flag as the CUDA kernel reads it (the CPU's fused passes take none).
        let apply_f32 = apply.map(|a| a.to_dtype(DType::F32)).transpose()?;
        for (slot, grad) in self.slots.iter_mut().zip(&grads.grads) {
            let Some(grad) = grad else { continue };
            let lr = lr * slot.spec.lr_scale;
            let grad = grad.to_dtype(DType::F32)?;
            let param = slot.spec.var.as_tensor();
            let decay = 1.0 - lr * slot.spec.weight_decay;
            if (apply.is_none() || param.device().is_cuda())
                && crate::fused_adamw::applies(param, &grad, &slot.exp_avg, &slot.exp_avg_sq)
            {
                let scale = match (factor, &unit) {
                    (Some(f), _) => f.clone(),
                    (None, Some(one)) => one.clone(),
                    (None, None) => unit.insert(Tensor::new(1f32, param.device())?).clone(),
                };
                crate::fused_adamw::update(
                    param,
                    &grad,
                    &slot.exp_avg,
                    &slot.exp_avg_sq,
                    (self.beta1, self.beta2, self.eps),
                    decay,
                    lr / bias1,
                    bias2_sqrt,
                    (&scale, apply_f32.as_ref()),
                )?;
                continue;
            }
            let grad = match factor {
                Some(f) => grad.broadcast_mul(f)?,
                None => grad,
            };
            let old_param = param.clone();
            let param = if slot.spec.weight_decay > 0.0 {
                param.affine(decay, 0.0)?
            } else {
                param.clone()
            };
            let exp_avg =
                (slot.exp_avg.affine(self.beta1, 0.0)? + grad.affine(1.0 - self.beta1, 0.0)?)?;
            let exp_avg_sq = (slot.exp_avg_sq.affine(self.beta2, 0.0)?
                + grad.sqr()?.affine(1.0 - self.beta2, 0.0)?)?;
            let denom = exp_avg_sq.sqrt()?.affine(1.0 / bias2_sqrt, self.eps)?;
            let updated = (param - (exp_avg.div(&denom)? * (lr / bias1))?)?;
            let keep = |new: Tensor, old: &Tensor| match apply {
                Some(apply) => apply.broadcast_as(new.shape())?.where_cond(&new, old),
                None => Ok(new),
            };
            slot.exp_avg = keep(exp_avg, &slot.exp_avg)?;
            slot.exp_avg_sq = keep(exp_avg_sq, &slot.exp_avg_sq)?;
            let updated = keep(updated, &old_param.to_dtype(DType::F32)?)?;
            slot.spec
                .var
                .set(&updated.to_dtype(slot.spec.var.dtype())?)?;
        }
        Ok(())
    }

    /// The moments by name (`exp_avg.<param>`, `exp_avg_sq.<param>`), for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut state = HashMap::new();
        for slot in &self.slots {
            state.insert(format!("exp_avg.{}", slot.spec.name), slot.exp_avg.clone());
            state.insert(
                format!("exp_avg_sq.{}", slot.spec.name),
                slot.exp_avg_sq.clone(),
            );
        }
        state
    }

    /// Restores moments saved by [`AdamW::state`] and the step count. Every parameter's moments
    /// must be present with the right shape; the error names the first that is not.
    pub fn load_state(
        &mut self,
        mut state: HashMap<String, Tensor>,
        steps: u64,
    ) -> std::result::Result<(), String> {
        for slot in &mut self.slots {
            for (key, target) in [
                (format!("exp_avg.{}", slot.spec.name), &mut slot.exp_avg),
                (
                    format!("exp_avg_sq.{}", slot.spec.name),
                    &mut slot.exp_avg_sq,
                ),
            ] {
                let tensor = state
                    .remove(&key)
                    .ok_or_else(|| format!("optimizer state lacks `{key}`"))?;
                if tensor.dims() != target.dims() {
                    return Err(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        tensor.dims(),
                        target.dims()
                    ));
                }
                *target = tensor
                    .to_dtype(DType::F32)
                    .and_then(|t| t.to_device(slot.spec.var.device()))
                    .map_err(|e| format!("optimizer state `{key}`: {e}"))?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_scales_follow_depth() {
        assert_eq!(
            encoder_layer("encoder.layer.11.attention.q.weight"),
            Some(11)
        );
        assert_eq!(
            encoder_layer("encoder.relative_attention_bias.weight"),
            None
        );
        assert_eq!(encoder_layer("embeddings.word_embeddings.weight"), None);
        assert_eq!(encoder_layer("classifier.weight"), None);
        let scale = |name| layer_lr_scale(name, 12, 0.5);
        assert_eq!(scale("encoder.layer.11.output.dense.weight"), 1.0);
        assert_eq!(scale("encoder.layer.10.output.dense.weight"), 0.5);
        assert_eq!(
            scale("encoder.layer.0.output.dense.weight"),
            0.5f64.powi(11)
        );
        assert_eq!(scale("embeddings.LayerNorm.weight"), 0.5f64.powi(12));
        assert_eq!(
            scale("encoder.relative_attention_bias.weight"),
            0.5f64.powi(12)
        );
        assert_eq!(
            layer_lr_scale("embeddings.word_embeddings.weight", 12, 1.0),
            1.0
        );
    }
}
