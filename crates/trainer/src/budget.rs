//! The memory a training step needs, estimated from shapes: weights, gradients, optimizer
//! moments and activations. Printed before training so a run that will not fit says so first.

use wick_model::BertConfig;

/// Bytes by category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
    /// The f32 moving average of the trainable weights (`train.ema_decay`), 0 without one.
    pub average: u64,
    pub activations: u64,
    /// Whether `activations` counts gradient checkpointing's layer inputs and one layer.
    pub checkpointed: bool,
}

/// Which kernels a step runs, for what it keeps for backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fused CPU kernels (f32 on the CPU).
    FusedCpu,
    /// wick's CUDA kernels (any dtype on CUDA).
    FusedCuda,
    /// Candle's primitive ops (other devices and dtypes).
    Primitive,
}

impl Kernels {
    /// The kernels a model in `dtype` runs on `device`.
    pub fn on(device: &candle_core::Device, dtype: candle_core::DType) -> Self {
        if device.is_cpu() && dtype == candle_core::DType::F32 {
            Self::FusedCpu
        } else if device.is_cuda() {
            Self::FusedCuda
        } else {
            Self::Primitive
        }
    }
}

impl MemoryBudget {
    /// `params` f32 master weights, of which `trainable` get f32 gradients and two f32 moments;
    /// activations for a `(batch, seq)` step at `act_bytes` per element.
    ///
    /// The activation count follows what this encoder keeps for backward per layer. With the fused
    /// CPU kernels that is 7 `(batch, seq, hidden)` tensors (the layer input, the stacked
    /// query/key/value projections, the attention context, the attention output, the first layer
    /// norm's output, the feed-forward output) and 2 `(batch, seq, intermediate)` ones
    /// (pre-activation and GELU); nothing attention-sized, as the probabilities are recomputed in
    /// backward. With the CUDA kernels: 8 `(batch, seq, hidden)` tensors (the same, with the
    /// query, key and value split into heads) and 2 `(batch, seq, intermediate)` ones, plus the
    /// attention scores `(batch, heads, seq, seq)` (the probabilities are recomputed from them).
    /// With primitive ops: about 24 `(batch, seq, hidden)` tensors (projections, residuals, the
    /// composite layer norms' intermediates, dropout masks), 3 `(batch, seq, intermediate)`
    /// tensors (input, GELU, mask) and 6 `(batch, heads, seq, seq)` tensors (scores, shifted, exp,
    /// probabilities, mask, dropped), the attention-sized ones in f32 whatever the compute dtype.
    /// With gradient checkpointing (`checkpointed`), backward holds one layer's activations at a
    /// time, and the graph one `(batch, seq, hidden)` input per layer.
    ///
    /// It is an estimate: compare it with the measured peak.
    #[allow(clippy::too_many_arguments)]
    pub fn estimate(
        config: &BertConfig,
        params: u64,
        trainable: u64,
        (batch, seq): (u64, u64),
        act_bytes: u64,
        kernels: Kernels,
        checkpointed: bool,
    ) -> Self {
        let h = config.hidden_size as u64;
        let i = config.intermediate_size as u64;
        let heads = config.num_attention_heads as u64;
        let per_layer = match kernels {
            Kernels::FusedCpu => batch * seq * (7 * h + 2 * i) * act_bytes,
            Kernels::FusedCuda => {
                batch * seq * (8 * h + 2 * i) * act_bytes + batch * heads * seq * seq * act_bytes
            }
            Kernels::Primitive => {
                batch * seq * (24 * h + 3 * i) * act_bytes + batch * heads * seq * seq * 6 * 4
            }
        };
        let embeddings = batch * seq * h * 8 * 4;
        let layers = config.num_hidden_layers as u64;
        let activations = if checkpointed {
            per_layer + layers * batch * seq * h * act_bytes + embeddings
        } else {
            per_layer * layers + embeddings
        };
        Self {
            weights: params * 4,
            gradients: trainable * 4,
            optimizer: trainable * 8,
            average: 0,
            activations,
            checkpointed,
        }
    }

    /// The budget with an f32 moving average of `trainable` weights.
    pub fn with_average(self, trainable: u64) -> Self {
        Self {
            average: trainable * 4,
            ..self
        }
    }

    /// The budget of a LoRA run whose adapted layers hold `elements` weights in all: each pass
    /// keeps their merged `W + scale * B A` (f32, and a copy in the compute dtype of
    /// `act_bytes` per element when that is narrower) for backward, counted with the
    /// activations.
    pub fn with_lora(self, elements: u64, act_bytes: u64) -> Self {
        let per_element = if act_bytes < 4 { 4 + act_bytes } else { 4 };
        Self {
            activations: self.activations + elements * per_element,
            ..self
        }
    }

    /// The budget of a masked-LM step ([`crate::adapt`]) that predicts `rows` masked tokens
    /// over a vocabulary of `vocab`: the head's three hidden-wide tensors, and eight f32
    /// vocabulary-wide ones per row (the logits, the log-softmax's shifted, exponentiated and
    /// final values, and their gradients in backward), counted with the activations.
    pub fn with_masked_lm(self, rows: u64, vocab: u64, hidden: u64, act_bytes: u64) -> Self {
        Self {
            activations: self.activations + rows * (3 * hidden * act_bytes + 8 * vocab * 4),
            ..self
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.average + self.activations
    }
}

/// The weights of the layers that carry a LoRA adapter, in all (the `elements` of
/// [`MemoryBudget::with_lora`]).
pub fn adapted_elements(varmap: &candle_nn::VarMap) -> u64 {
    let suffix = format!(".{}", wick_model::lora::A_SUFFIX);
    let vars: std::collections::HashMap<String, usize> = wick_model::weights::named_vars(varmap)
        .into_iter()
        .map(|(name, var)| (name, var.elem_count()))
        .collect();
    vars.keys()
        .filter_map(|name| name.strip_suffix(&suffix))
        .filter_map(|stem| vars.get(&format!("{stem}.weight")))
        .map(|&n| n as u64)
        .sum()
}

/// `1234567` -> `"1.2 MiB"`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl std::fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weights {} + gradients {} + optimizer moments {}",
            human_bytes(self.weights),
            human_bytes(self.gradients),
            human_bytes(self.optimizer),
        )?;
        if self.average > 0 {
            write!(f, " + weight average {}", human_bytes(self.average))?;
        }
        write!(
            f,
            " + activations ~{}{} = ~{}",
            human_bytes(self.activations),
            if self.checkpointed {
                " (gradient checkpointing)"
            } else {
                ""
            },
            human_bytes(self.total())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpointing changes only the activations: a 12-layer encoder keeps one layer's worth
    /// plus a hidden state per layer, far below twelve layers' worth, and the line says so.
    #[test]
    fn checkpointing_counts_one_layer_and_the_layer_inputs() {
        let config = BertConfig {
            num_hidden_layers: 12,
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            ..BertConfig::tiny(30522)
        };
        for kernels in [Kernels::FusedCpu, Kernels::FusedCuda, Kernels::Primitive] {
            let estimate = |checkpointed| {
                MemoryBudget::estimate(
                    &config,
                    110e6 as u64,
                    110e6 as u64,
                    (16, 512),
                    2,
                    kernels,
                    checkpointed,
                )
            };
            let (plain, checkpointed) = (estimate(false), estimate(true));
            assert_eq!(
                (plain.weights, plain.gradients, plain.optimizer),
                (
                    checkpointed.weights,
                    checkpointed.gradients,
                    checkpointed.optimizer
                )
            );
            assert!(
                checkpointed.activations * 4 < plain.activations,
                "{kernels:?}: {} checkpointed, {} plain",
                checkpointed.activations,
                plain.activations
            );
            // Twelve layer inputs of 16 x 512 x 768 in bf16: 144 MiB beyond one layer.
            assert!(checkpointed.activations > 12 * 16 * 512 * 768 * 2);
            assert!(checkpointed
                .to_string()
                .contains("(gradient checkpointing)"));
            assert!(!plain.to_string().contains("checkpointing"));
        }
    }
}
