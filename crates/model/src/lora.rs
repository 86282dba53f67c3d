//! LoRA, low-rank adaptation (Hu et al. 2021, <https://arxiv.org/abs/2106.09685>), as Hugging
//! Face's PEFT applies it to an encoder's linear layers (`peft/tuners/lora/layer.py`,
//! `Linear.forward`): the pretrained weight `W` stays frozen and each adapted layer gains two
//! trainable matrices, `A` `(rank, in)` and `B` `(out, rank)`, so that the layer computes
//! `x (W + (alpha / rank) B A)^T + b`. PEFT adds `(alpha / rank) (x A^T) B^T` to `x W^T + b`
//! instead; the two are the same map (PEFT's own `merge` folds `B A` into `W` the same way).
//!
//! wick forms the sum `W + (alpha / rank) B A` once per layer and pass and hands it to the layer's
//! kernels (fused on the CPU and CUDA), so backward reaches `A` and `B` through one small product.
//! The rest of the encoder (embeddings, layer norms, biases and every weight that is not adapted)
//! is frozen too, as PEFT's default `bias = "none"` leaves it; only the adapters and the head
//! train. Variable names follow PEFT's saved adapters without the `base_model.model.` prefix:
//! `encoder.layer.0.attention.self.query.lora_A.weight`.
//!
//! Not here: PEFT's `lora_dropout` (dropout on the adapter's input only, which the summed weight
//! cannot express; its default, 0, is what wick computes).

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::bert::param;

/// A linear layer of the encoder that can carry an adapter, named by its role, whatever the
/// family calls it (BERT's `attention.self.query` is MPNet's `attention.attn.q`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    Query,
    Key,
    Value,
    /// The attention block's output projection.
    AttentionOutput,
    /// The feed-forward block's first layer.
    Intermediate,
    /// The feed-forward block's second layer.
    Output,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 6] = [
        Self::Query,
        Self::Key,
        Self::Value,
        Self::AttentionOutput,
        Self::Intermediate,
        Self::Output,
    ];

    /// The name in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Key => "key",
            Self::Value => "value",
            Self::AttentionOutput => "attention_output",
            Self::Intermediate => "intermediate",
            Self::Output => "output",
        }
    }
}

/// `[model.lora]`: which layers get adapters, of what rank and scale. Rank 0 turns LoRA off.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// `r`: the adapters' inner width (0: no LoRA, the whole encoder trains).
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by `alpha / rank` (PEFT's default, 8).
    pub alpha: f64,
    /// The layers adapted in every encoder layer (PEFT's default for BERT-family models:
    /// query and value).
    pub targets: Vec<LoraTarget>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 0,
            alpha: 8.0,
            targets: vec![LoraTarget::Query, LoraTarget::Value],
        }
    }
}

impl LoraConfig {
    /// Off: no adapters, no frozen weights.
    pub fn off() -> Self {
        Self::default()
    }

    pub fn enabled(&self) -> bool {
        self.rank > 0
    }

    /// `alpha / rank`, the factor of `B A`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }

    /// The targets' config names, comma-separated.
    pub fn target_names(&self) -> String {
        self.targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `target` gets an adapter.
    pub fn adapts(&self, target: LoraTarget) -> bool {
        self.enabled() && self.targets.contains(&target)
    }
}

/// The suffixes of an adapter's two variables, after the adapted layer's name.
pub const A_SUFFIX: &str = "lora_A.weight";
pub const B_SUFFIX: &str = "lora_B.weight";

/// Whether a variable is a LoRA matrix.
pub fn is_lora(name: &str) -> bool {
    name.ends_with(&format!(".{A_SUFFIX}")) || name.ends_with(&format!(".{B_SUFFIX}"))
}

/// One layer's adapter: `A` `(rank, in)`, `B` `(out, rank)` and the scale `alpha / rank`.
#[derive(Debug, Clone)]
pub(crate) struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl Adapter {
    /// Declares `lora_A.weight` and `lora_B.weight` under the adapted layer's builder. The
    /// values are filled later ([`crate::weights`]: PEFT's init, or a checkpoint).
    pub(crate) fn load(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        config: &LoraConfig,
    ) -> Result<Self> {
        Ok(Self {
            a: vb.get_with_hints((config.rank, in_dim), A_SUFFIX, Init::Const(0.0))?,
            b: vb.get_with_hints((out_dim, config.rank), B_SUFFIX, Init::Const(0.0))?,
            scale: config.scale(),
        })
    }

    /// `weight + scale * B A` (f32, contiguous): the adapted layer's weight for one pass.
    pub(crate) fn merged(&self, weight: &Tensor, train: bool) -> Result<Tensor> {
        let delta = param(&self.b, train).matmul(&param(&self.a, train))?;
        weight + (delta * self.scale)?
    }
}

/// Folds every adapter among `tensors` (named as the model's variables) into the weight it
/// adapts, `W + scale * B A` in f32, and removes the adapter's matrices: the plain encoder a run
/// with LoRA amounts to, which any BERT reader loads. Returns how many layers were merged.
pub fn merge_adapters(tensors: &mut HashMap<String, Tensor>, scale: f64) -> Result<usize> {
    let suffix_a = format!(".{A_SUFFIX}");
    let mut stems: Vec<String> = tensors
        .keys()
        .filter_map(|name| name.strip_suffix(&suffix_a).map(str::to_string))
        .collect();
    stems.sort();
    for stem in &stems {
        let take = |tensors: &mut HashMap<String, Tensor>, name: String| {
            tensors
                .remove(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("LoRA: no `{name}` to merge with")))
        };
        let a = take(tensors, format!("{stem}.{A_SUFFIX}"))?;
        let b = take(tensors, format!("{stem}.{B_SUFFIX}"))?;
        let weight_name = format!("{stem}.weight");
        let weight = take(tensors, weight_name.clone())?;
        let dtype = weight.dtype();
        let f32 = candle_core::DType::F32;
        let delta = b.to_dtype(f32)?.matmul(&a.to_dtype(f32)?)?;
        let merged = (weight.to_dtype(f32)? + (delta * scale)?)?.to_dtype(dtype)?;
        tensors.insert(weight_name, merged);
    }
    Ok(stems.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_and_scale() {
        assert!(is_lora(
            "encoder.layer.0.attention.self.query.lora_A.weight"
        ));
        assert!(is_lora("encoder.layer.3.attention.attn.v.lora_B.weight"));
        assert!(!is_lora("encoder.layer.0.attention.self.query.weight"));
        assert!(!is_lora("classifier.weight"));
        let config = LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        };
        assert_eq!(config.scale(), 2.0);
        assert!(config.adapts(LoraTarget::Query) && !config.adapts(LoraTarget::Key));
        assert!(!LoraConfig::off().adapts(LoraTarget::Query));
    }

    /// Merging folds `scale * B A` into the weight and leaves no adapter behind; other tensors
    /// are untouched.
    #[test]
    fn merging_adds_the_scaled_product_and_drops_the_adapter() {
        let dev = Device::Cpu;
        let weight = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
        let a = Tensor::new(&[[1f32, 0., -1.]], &dev).unwrap();
        let b = Tensor::new(&[[2f32], [0.5]], &dev).unwrap();
        let bias = Tensor::new(&[7f32, 8.], &dev).unwrap();
        let mut tensors = HashMap::from([
            ("l.query.weight".to_string(), weight),
            ("l.query.bias".to_string(), bias.clone()),
            ("l.query.lora_A.weight".to_string(), a),
            ("l.query.lora_B.weight".to_string(), b),
        ]);
        assert_eq!(merge_adapters(&mut tensors, 0.5).unwrap(), 1);
        let mut names: Vec<_> = tensors.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["l.query.bias", "l.query.weight"]);
        // B A = [[2, 0, -2], [0.5, 0, -0.5]], times 0.5.
        assert_eq!(
            tensors["l.query.weight"].to_vec2::<f32>().unwrap(),
            [[2.0, 2.0, 2.0], [4.25, 5.0, 5.75]]
        );
        assert_eq!(
            tensors["l.query.bias"].to_vec1::<f32>().unwrap(),
            [7.0, 8.0]
        );
        // An adapter without its weight is an error, not a silent skip.
        let mut broken = HashMap::from([
            (
                "x.lora_A.weight".to_string(),
                Tensor::zeros((1, 3), candle_core::DType::F32, &dev).unwrap(),
            ),
            (
                "x.lora_B.weight".to_string(),
                Tensor::zeros((2, 1), candle_core::DType::F32, &dev).unwrap(),
            ),
        ]);
        assert!(merge_adapters(&mut broken, 1.0).is_err());
    }
}
