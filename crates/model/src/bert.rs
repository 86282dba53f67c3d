//! The BERT encoder, ported from Hugging Face's `modeling_bert.py`:
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/modeling_bert.py>
//!
//! Variable names match the Hugging Face checkpoint keys without the `bert.` prefix
//! (`encoder.layer.0.attention.self.query.weight`), so a `VarMap` of this model saves to a file
//! that Hugging Face tools read. Unlike candle-transformers' port, dropout is real and every op
//! records its backward (see [`crate::ops`]).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::attention::{self, AttentionDropout, HostMask};
use crate::config::{BertConfig, HiddenAct};
use crate::rng::DropoutRng;
use crate::{cuda, fused, ops};

/// The variable itself in training (so backward reaches it), a detached view otherwise: ops on
/// detached inputs record no graph, so an evaluation frees each intermediate as soon as it is
/// used instead of keeping the whole forward alive until the output is dropped.
pub(crate) fn param(var: &Tensor, train: bool) -> Tensor {
    if train {
        var.clone()
    } else {
        var.detach()
    }
}

/// Placeholder initialisation: every variable is overwritten by pretrained or seeded random values
/// (see [`crate::weights`]), so only the shape matters here.
const PLACEHOLDER: Init = Init::Const(0.0);

#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((out_dim, in_dim), "weight", PLACEHOLDER)?,
            bias: vb.get_with_hints(out_dim, "bias", PLACEHOLDER)?,
        })
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        ops::linear(
            xs,
            &param(&self.weight, train),
            Some(&param(&self.bias, train)),
        )
    }
}

#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", PLACEHOLDER)?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        ops::layer_norm(
            xs,
            &param(&self.weight, train),
            &param(&self.bias, train),
            self.eps,
        )
    }

    /// `layer_norm(dropout(a) + x)`: one fused kernel for f32 on the CPU.
    fn forward_residual(
        &self,
        a: &Tensor,
        x: &Tensor,
        p: f64,
        rng: &DropoutRng,
        train: bool,
    ) -> Result<Tensor> {
        let (weight, bias) = (param(&self.weight, train), param(&self.bias, train));
        if fused::applies(&[a, x, &weight, &bias]) {
            let dropout = (train && p > 0.0).then(|| (p, rng.draw_key()));
            return fused::residual_layer_norm(a, x, &weight, &bias, self.eps, dropout);
        }
        if cuda::applies(&[a, x, &weight, &bias]) && a.dim(D::Minus1)? <= cuda::MAX_ROW {
            let dropout = (train && p > 0.0).then(|| (p, rng.draw_key()));
            return cuda::residual_layer_norm(a, Some(x), &weight, &bias, self.eps, dropout);
        }
        let a = ops::dropout(a, p, rng, train)?;
        ops::layer_norm(&(a + x)?, &weight, &bias, self.eps)
    }
}

#[derive(Debug, Clone)]
struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    layer_norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word: vb.get_with_hints((cfg.vocab_size, h), "word_embeddings.weight", PLACEHOLDER)?,
            position: vb.get_with_hints(
                (cfg.max_position_embeddings, h),
                "position_embeddings.weight",
                PLACEHOLDER,
            )?,
            token_type: vb.get_with_hints(
                (cfg.type_vocab_size, h),
                "token_type_embeddings.weight",
                PLACEHOLDER,
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
        })
    }

    /// `(batch, seq)` ids -> `(batch * seq, hidden)` in f32, before dropout.
    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, train: bool) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let gather = |table: &Tensor, ids: &Tensor| table.index_select(&ids.flatten_all()?, 0);
        let position_ids = Tensor::arange(0u32, seq as u32, input_ids.device())?
            .unsqueeze(0)?
            .repeat((batch, 1))?;
        let tables = [&self.word, &self.position, &self.token_type].map(|t| param(t, train));
        let summed = if cuda::applies(&[&tables[0], &tables[1], &tables[2]])
            && self.word.dim(1)? <= cuda::MAX_ROW
        {
            cuda::embeddings(
                [&tables[0], &tables[1], &tables[2]],
                [input_ids, &position_ids, token_type_ids],
            )?
        } else {
            let words = gather(&tables[0], input_ids)?;
            let types = gather(&tables[2], token_type_ids)?;
            let positions = gather(&tables[1], &position_ids)?;
            ((words + types)? + positions)?
        };
        self.layer_norm.forward(&summed, train)
    }
}

/// The attention mask of one forward pass: the f32 additive bias `(batch, 1, 1, seq)` of
/// [`ops::attention_bias`] and, where the fused CPU kernels run, its host values, read once and
/// shared by every layer.
struct Mask {
    bias: Tensor,
    host: Option<HostMask>,
}

#[derive(Debug, Clone)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: usize,
    head_size: usize,
}

impl SelfAttention {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            query: Linear::load(vb.pp("query"), h, h)?,
            key: Linear::load(vb.pp("key"), h, h)?,
            value: Linear::load(vb.pp("value"), h, h)?,
            heads: cfg.num_attention_heads,
            head_size: cfg.head_size(),
        })
    }

    /// `(batch * seq, hidden)` -> `(batch, heads, seq, head_size)`.
    fn split_heads(&self, xs: &Tensor, (batch, seq): (usize, usize)) -> Result<Tensor> {
        xs.reshape((batch, seq, self.heads, self.head_size))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Scaled dot-product attention over `(batch * seq, hidden)` hidden states. The fused kernel
    /// of [`crate::attention`] for f32 on the CPU, [`cuda::self_attention`] on CUDA, primitive
    /// ops elsewhere.
    fn forward(
        &self,
        xs: &Tensor,
        mask: &Mask,
        p: f64,
        rng: &DropoutRng,
        train: bool,
        (batch, seq): (usize, usize),
    ) -> Result<Tensor> {
        let hidden = xs.dim(1)?;
        let scale = 1.0 / (self.head_size as f64).sqrt();
        if let Some(host) = mask.host.as_ref().filter(|_| fused::applies(&[xs])) {
            let dropout = (train && p > 0.0).then(|| AttentionDropout {
                p,
                key: rng.draw_key(),
            });
            return attention::self_attention(
                xs,
                (
                    &param(&self.query.weight, train),
                    &param(&self.key.weight, train),
                    &param(&self.value.weight, train),
                ),
                (
                    &param(&self.query.bias, train),
                    &param(&self.key.bias, train),
                    &param(&self.value.bias, train),
                ),
                host,
                (batch, seq, self.heads),
                scale,
                dropout,
            );
        }
        let (wq, wk, wv) = (
            param(&self.query.weight, train),
            param(&self.key.weight, train),
            param(&self.value.weight, train),
        );
        let (bq, bk, bv) = (
            param(&self.query.bias, train),
            param(&self.key.bias, train),
            param(&self.value.bias, train),
        );
        if cuda::applies(&[xs, &wq, &wk, &wv, &bq, &bk, &bv, &mask.bias])
            && [&bq, &bk, &bv, &mask.bias]
                .iter()
                .all(|t| t.dtype() == DType::F32)
            && seq <= cuda::MAX_ROW
        {
            let dropout = (train && p > 0.0).then(|| (p, rng.draw_key()));
            return cuda::self_attention(
                xs,
                [&wq, &wk, &wv],
                [&bq, &bk, &bv],
                &mask.bias,
                self.heads,
                scale,
                dropout,
            );
        }
        let dims = (batch, seq);
        let q = self.split_heads(&self.query.forward(xs, train)?, dims)?;
        let k = self.split_heads(&self.key.forward(xs, train)?, dims)?;
        let v = self.split_heads(&self.value.forward(xs, train)?, dims)?;
        let probs = ops::attention_probs(&q.matmul(&k.t()?)?, &mask.bias, scale, p, rng, train)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch * seq, hidden))
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attention: SelfAttention,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    act: HiddenAct,
    hidden_p: f64,
    attention_p: f64,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(Self {
            attention: SelfAttention::load(vb.pp("attention.self"), cfg)?,
            attention_out: Linear::load(vb.pp("attention.output.dense"), h, h)?,
            attention_norm: LayerNorm::load(vb.pp("attention.output.LayerNorm"), h, eps)?,
            intermediate: Linear::load(vb.pp("intermediate.dense"), h, i)?,
            output: Linear::load(vb.pp("output.dense"), i, h)?,
            output_norm: LayerNorm::load(vb.pp("output.LayerNorm"), h, eps)?,
            act: cfg.hidden_act,
            hidden_p: cfg.hidden_dropout_prob,
            attention_p: cfg.attention_probs_dropout_prob,
        })
    }

    /// `(batch * seq, hidden)` -> `(batch * seq, hidden)`.
    fn forward(
        &self,
        xs: &Tensor,
        mask: &Mask,
        rng: &DropoutRng,
        train: bool,
        dims: (usize, usize),
    ) -> Result<Tensor> {
        let attended = self
            .attention
            .forward(xs, mask, self.attention_p, rng, train, dims)?;
        let attended = self.attention_out.forward(&attended, train)?;
        let xs = self
            .attention_norm
            .forward_residual(&attended, xs, self.hidden_p, rng, train)?;
        let ffn = (
            param(&self.intermediate.weight, train),
            param(&self.intermediate.bias, train),
            param(&self.output.weight, train),
            param(&self.output.bias, train),
        );
        if self.act == HiddenAct::Gelu && fused::applies(&[&xs, &ffn.0, &ffn.1, &ffn.2, &ffn.3]) {
            let out = fused::feed_forward(&xs, (&ffn.0, &ffn.1), (&ffn.2, &ffn.3))?;
            return self
                .output_norm
                .forward_residual(&out, &xs, self.hidden_p, rng, train);
        }
        if self.act == HiddenAct::Gelu
            && cuda::applies(&[&xs, &ffn.0, &ffn.1, &ffn.2, &ffn.3])
            && ffn.1.dtype() == DType::F32
            && ffn.3.dtype() == DType::F32
        {
            let inner = cuda::linear(&xs, &ffn.0, &ffn.1, true)?;
            let out = cuda::linear(&inner, &ffn.2, &ffn.3, false)?;
            return self
                .output_norm
                .forward_residual(&out, &xs, self.hidden_p, rng, train);
        }
        let inner = self.intermediate.forward(&xs, train)?;
        let inner = match self.act {
            HiddenAct::Gelu => ops::gelu_erf(&inner)?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        let out = self.output.forward(&inner, train)?;
        self.output_norm
            .forward_residual(&out, &xs, self.hidden_p, rng, train)
    }
}

/// The BERT encoder: embeddings and a stack of transformer layers.
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    config: BertConfig,
    dtype: DType,
    rng: Arc<DropoutRng>,
}

impl BertModel {
    /// Declares the encoder's variables under `vb` (Hugging Face names, no `bert.` prefix).
    /// `dtype` is the compute dtype of activations; variables keep the builder's dtype.
    pub fn load(
        vb: VarBuilder,
        config: &BertConfig,
        dtype: DType,
        rng: Arc<DropoutRng>,
    ) -> Result<Self> {
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::load(vb.pp("embeddings"), config)?,
            layers,
            config: config.clone(),
            dtype,
            rng,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The device the variables live on.
    pub fn device(&self) -> &candle_core::Device {
        self.embeddings.word.device()
    }

    /// The compute dtype of activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dropout randomness shared by this model's layers.
    pub fn rng(&self) -> &Arc<DropoutRng> {
        &self.rng
    }

    /// `(batch, seq)` u32 ids, token types and attention mask -> `(batch, seq, hidden)` hidden
    /// states in the compute dtype. Dropout applies only when `train` is true.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hidden_p = self.config.hidden_dropout_prob;
        let (batch, seq) = input_ids.dims2()?;
        // Hidden states stay `(batch * seq, hidden)` through the stack: no reshape nodes, whose
        // gradients candle would accumulate into fresh buffers in backward.
        let xs = self
            .embeddings
            .forward(input_ids, token_type_ids, train)?
            .to_dtype(self.dtype)?;
        let mut xs = ops::dropout(&xs, hidden_p, &self.rng, train)?;
        let bias = ops::attention_bias(attention_mask)?;
        let host = if fused::applies(&[&bias]) {
            Some(HostMask::new(&bias)?)
        } else {
            None
        };
        let mask = Mask { bias, host };
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask, &self.rng, train, (batch, seq))?;
        }
        xs.reshape((batch, seq, self.config.hidden_size))
    }
}
