//! Matmul FLOPs counted from shapes, the numerator of achieved GFLOP/s and MFU. Element-wise ops
//! (layer norm, GELU, softmax, dropout) and the optimizer update are left out: they are memory
//! bound and small next to the matmuls.

use wick_model::BertConfig;

/// `2 n^3` for a square `(n, n) @ (n, n)`.
pub fn square_matmul(size: usize) -> f64 {
    2.0 * (size as f64).powi(3)
}

/// One forward pass of encoder + head on a `(batch, seq)` batch: per layer, the four `H x H`
/// projections (Q, K, V, attention output) and the two feed-forward matrices (`2 H I`) at
/// `2 B S` FLOPs per weight, plus `Q K^T` and `P V` (`4 B S^2 H`); then the head (`2 B H C`).
pub fn forward(config: &BertConfig, batch: usize, seq: usize, num_labels: usize) -> f64 {
    let (b, s) = (batch as f64, seq as f64);
    let h = config.hidden_size as f64;
    let i = config.intermediate_size as f64;
    let dense = 2.0 * b * s * (4.0 * h * h + 2.0 * h * i);
    let attention = 4.0 * b * s * s * h;
    (dense + attention) * config.num_hidden_layers as f64 + 2.0 * b * h * num_labels as f64
}

/// A backward pass costs two forwards (gradients of inputs and of weights), so forward+backward
/// and a training step are 3x the forward.
pub fn forward_backward(config: &BertConfig, batch: usize, seq: usize, num_labels: usize) -> f64 {
    3.0 * forward(config, batch, seq, num_labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bert_base_forward_is_about_700_gflop_at_32x128() {
        let config = wick_model::BertConfig {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            ..wick_model::BertConfig::tiny(30522)
        };
        let gflop = forward(&config, 32, 128, 3) / 1e9;
        assert!((gflop - 715.1).abs() < 0.5, "{gflop}");
    }
}
