//! wick-model: a BERT encoder that trains, masked mean pooling and a classification head.
//!
//! Every op used in training records its backward. On any device and dtype the model runs on
//! primitive tensor ops (see [`ops`]: layer norm, softmax and the attention mask are written from
//! them instead of candle-nn's fused fast paths, which record no gradient). For f32 on the CPU a
//! transformer layer runs as three fused kernels with hand-written backward
//! ([`attention::self_attention`], [`fused::feed_forward`], [`fused::residual_layer_norm`]), built
//! on [`matmul`] and the vectorised math of [`simd`] and tested against the primitive ops. On
//! CUDA (the `cuda` feature) the layer runs wick's own kernels with their backward ([`cuda`]:
//! layer norm, attention softmax, GELU, dropout, embeddings; linear layers and the attention block
//! as one graph node each). Dropout is real and seeded (see [`rng`]), with the same masks on the
//! CPU and CUDA paths.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod amx;
pub mod attention;
pub mod bert;
pub mod classifier;
pub mod config;
pub mod cuda;
pub mod error;
pub mod fused;
pub mod lora;
pub mod loss;
pub mod matmul;
pub mod mlm;
pub mod ops;
pub mod pointwise;
pub mod rng;
pub mod simd;
pub mod weights;

/// Where a pretrained model's files come from (the `wick-hub` crate, re-exported under its old
/// path).
pub use wick_hub as hub;

pub use bert::BertModel;
pub use classifier::{Classifier, Task};
pub use config::{BertConfig, ModelType};
pub use error::{ModelError, Result};
pub use lora::{LoraConfig, LoraTarget};
pub use mlm::MaskedLm;
pub use rng::DropoutRng;

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// The largest absolute difference between two tensors of the same shape.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }
}
