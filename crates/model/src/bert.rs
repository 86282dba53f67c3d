//! The BERT encoder, ported from Hugging Face's `modeling_bert.py`:
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/modeling_bert.py>
//! and its MPNet variant (`modeling_mpnet.py`: the same layer stack with other embeddings, a
//! relative position bias in attention and other variable names; see [`ModelType::Mpnet`]) and
//! RoBERTa and XLM-RoBERTa (`modeling_roberta.py`: BERT with MPNet's positions; see
//! [`ModelType::Roberta`]) and
//! DistilBERT (`modeling_distilbert.py`: no token types, other names; see
//! [`ModelType::DistilBert`]) and ELECTRA (`modeling_electra.py`: narrower embeddings projected
//! to the hidden width; see [`ModelType::Electra`]).
//!
//! Variable names match the Hugging Face checkpoint keys without the `bert.` (`mpnet.`,
//! `roberta.`) prefix (`encoder.layer.0.attention.self.query.weight`), so a `VarMap` of this model saves to
//! a file that Hugging Face tools read. Unlike candle-transformers' port, dropout is real and every op
//! records its backward (see [`crate::ops`]).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::attention::{self, AttentionDropout, HostMask};
use crate::config::{BertConfig, HiddenAct, ModelType};
use crate::lora::{Adapter, LoraConfig, LoraTarget};
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
    /// A LoRA adapter on this layer's weight.
    adapter: Option<Adapter>,
}

impl Linear {
    fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((out_dim, in_dim), "weight", PLACEHOLDER)?,
            bias: vb.get_with_hints(out_dim, "bias", PLACEHOLDER)?,
            adapter: None,
        })
    }

    /// The layer with a LoRA adapter when `lora` adapts `target`.
    fn load_adapted(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        lora: &LoraConfig,
        target: LoraTarget,
    ) -> Result<Self> {
        let mut linear = Self::load(vb.clone(), in_dim, out_dim)?;
        if lora.adapts(target) {
            linear.adapter = Some(Adapter::load(vb, in_dim, out_dim, lora)?);
        }
        Ok(linear)
    }

    /// The weight of one pass: the variable, plus the adapter's `scale * B A` where there is one.
    fn weight(&self, train: bool) -> Result<Tensor> {
        let weight = param(&self.weight, train);
        match &self.adapter {
            Some(adapter) => adapter.merged(&weight, train),
            None => Ok(weight),
        }
    }

    fn bias(&self, train: bool) -> Tensor {
        param(&self.bias, train)
    }

    /// Detaches the weight and bias from their variables (LoRA's frozen base; the adapter
    /// stays trainable). The values stay shared, so a later load still fills them.
    fn freeze(&mut self) {
        self.weight = self.weight.detach();
        self.bias = self.bias.detach();
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        ops::linear(xs, &self.weight(train)?, Some(&self.bias(train)))
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

    fn freeze(&mut self) {
        self.weight = self.weight.detach();
        self.bias = self.bias.detach();
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
    /// BERT's segment table; MPNet has none.
    token_type: Option<Tensor>,
    layer_norm: LayerNorm,
    model_type: ModelType,
    pad_token_id: usize,
}

impl Embeddings {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.embedding_width();
        Ok(Self {
            word: vb.get_with_hints((cfg.vocab_size, h), "word_embeddings.weight", PLACEHOLDER)?,
            position: vb.get_with_hints(
                (cfg.max_position_embeddings, h),
                "position_embeddings.weight",
                PLACEHOLDER,
            )?,
            token_type: if cfg.model_type.has_token_types() {
                Some(vb.get_with_hints(
                    (cfg.type_vocab_size, h),
                    "token_type_embeddings.weight",
                    PLACEHOLDER,
                )?)
            } else {
                None
            },
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            model_type: cfg.model_type,
            pad_token_id: cfg.pad_token_id,
        })
    }

    fn freeze(&mut self) {
        self.word = self.word.detach();
        self.position = self.position.detach();
        self.token_type = self.token_type.as_ref().map(Tensor::detach);
        self.layer_norm.freeze();
    }

    /// `(batch, seq)` u32 position ids: `0..seq` for BERT; for MPNet and RoBERTa, Hugging
    /// Face's `create_position_ids_from_input_ids`: `pad + cumsum(ids != pad)` on real tokens,
    /// `pad` on padding.
    fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        if !self.model_type.positions_after_padding() {
            return Tensor::arange(0u32, seq as u32, input_ids.device())?
                .unsqueeze(0)?
                .repeat((batch, 1));
        }
        let pad = Tensor::new(self.pad_token_id as u32, input_ids.device())?;
        // Counts below 2^24 are exact in f32.
        let real = input_ids.broadcast_ne(&pad)?.to_dtype(DType::F32)?;
        let counts = (real.cumsum(1)? * &real)?;
        (counts + self.pad_token_id as f64)?.to_dtype(DType::U32)
    }

    /// `(batch, seq)` ids -> `(batch * seq, hidden)` in f32, before dropout. With `words`, the
    /// `(batch * seq, width)` f32 rows stand in for the word-embedding lookup of `input_ids`
    /// (which still give the positions): an attribution interpolates them, and backward reaches
    /// them.
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        words: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let gather = |table: &Tensor, ids: &Tensor| table.index_select(&ids.flatten_all()?, 0);
        let position_ids = self.position_ids(input_ids)?;
        let (word, position) = (param(&self.word, train), param(&self.position, train));
        let token_type = self.token_type.as_ref().map(|t| param(t, train));
        let summed = if words.is_none()
            && cuda::applies(&[&word, &position])
            && token_type.as_ref().is_none_or(|t| cuda::applies(&[t]))
            && self.word.dim(1)? <= cuda::MAX_ROW
        {
            // MPNet has no segment table: the kernel sums three tables, so it gets a constant row
            // of zeros (no variable, so no gradient) and all-zero ids.
            let (token_type, type_ids) = match token_type {
                Some(table) => (table, token_type_ids.clone()),
                None => (
                    Tensor::zeros((1, word.dim(1)?), word.dtype(), word.device())?,
                    input_ids.zeros_like()?,
                ),
            };
            cuda::embeddings(
                [&word, &position, &token_type],
                [input_ids, &position_ids, &type_ids],
            )?
        } else {
            let words = match words {
                Some(rows) => rows.clone(),
                None => gather(&word, input_ids)?,
            };
            let summed = (words + gather(&position, &position_ids)?)?;
            match token_type {
                Some(table) => (summed + gather(&table, token_type_ids)?)?,
                None => summed,
            }
        };
        self.layer_norm.forward(&summed, train)
    }
}

/// The attention mask of one forward pass: the f32 additive bias `(batch, 1, 1, seq)` of
/// [`ops::attention_bias`] and, where the fused CPU kernels run, its host values, read once and
/// shared by every layer; for MPNet also the relative position bias `(1, heads, seq, seq)` in
/// the compute dtype, contiguous, shared by every layer too.
#[derive(Clone)]
struct Mask {
    bias: Tensor,
    /// The mask's values for the fused CPU attention kernel, where it applies.
    host: Option<HostMask>,
    position: Option<Tensor>,
}

/// T5's bucket of the relative position `key - query`, as MPNet computes it
/// (`MPNetEncoder.relative_position_bucket`, `max_distance` 128): half the buckets for keys
/// after the query, half for keys before; within each half, exact distances below a quarter of
/// the buckets and logarithmically wider ones up to `max_distance`. The logarithm is taken in f32
/// and truncated, as PyTorch does, so the buckets agree at every distance.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let n = -relative;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.unsigned_abs() as usize;
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        let ratio = (n as f32 / max_exact as f32).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32);
        let large = max_exact + (ratio * (half - max_exact) as f32) as usize;
        large.min(half - 1)
    };
    bucket
}

/// MPNet's relative position bias: the learned `(buckets, heads)` table, and the bucket ids of
/// the (query, key) pairs on the table's device.
#[derive(Debug, Clone)]
struct RelativeBias {
    table: Tensor,
    /// Bucket ids `(n, n)` u32 for the longest sequence so far, and `0..buckets` as `(1,
    /// buckets)`: uploaded once, not at every step. A shorter sequence's ids are the top-left
    /// block, since a pair's bucket depends only on `key - query`.
    ids: Arc<std::sync::Mutex<Option<(Tensor, Tensor)>>>,
}

impl RelativeBias {
    fn new(table: Tensor) -> Self {
        Self {
            table,
            ids: Arc::default(),
        }
    }

    /// The `(seq * seq, 1)` bucket ids and the `(1, buckets)` bucket numbers on the device.
    fn ids(&self, seq: usize) -> Result<(Tensor, Tensor)> {
        let mut cached = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let (ids, numbers) = match cached.as_ref() {
            Some((ids, numbers)) if ids.dim(0)? >= seq => (ids.clone(), numbers.clone()),
            _ => {
                let buckets = self.table.dim(0)?;
                let device = self.table.device();
                // One bucket per distance `k - q` in `-(seq - 1)..seq`, then one per pair.
                let by_distance: Vec<u32> = (1 - seq as i64..seq as i64)
                    .map(|relative| relative_position_bucket(relative, buckets, 128) as u32)
                    .collect();
                let ids: Vec<u32> = (0..seq)
                    .flat_map(|q| by_distance[seq - 1 - q..2 * seq - 1 - q].iter().copied())
                    .collect();
                let built = (
                    Tensor::from_vec(ids, (seq, seq), device)?,
                    Tensor::arange(0u32, buckets as u32, device)?.unsqueeze(0)?,
                );
                *cached = Some(built.clone());
                built
            }
        };
        let block = ids.narrow(0, 0, seq)?.narrow(1, 0, seq)?.contiguous()?;
        Ok((block.reshape((seq * seq, 1))?, numbers))
    }

    /// The table looked up at the bucket of every (query, key) pair, as `(1, heads, seq, seq)`.
    /// The lookup is a product with a one-hot matrix built on the device, so its backward is a
    /// product too (an `index_add` over `seq * seq` ids would serialise on CUDA).
    fn forward(&self, seq: usize, train: bool) -> Result<Tensor> {
        let table = param(&self.table, train);
        let heads = table.dim(1)?;
        let (ids, numbers) = self.ids(seq)?;
        ids.broadcast_eq(&numbers)?
            .to_dtype(table.dtype())?
            .matmul(&table)?
            .reshape((seq, seq, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: usize,
    head_size: usize,
}

/// The variable names of one layer's attention block, by encoder family: query, key, value,
/// output projection, layer norm.
fn attention_names(model_type: ModelType) -> [&'static str; 5] {
    match model_type {
        // DistilBERT's names are mapped to BERT's when its files are read.
        ModelType::Bert
        | ModelType::Roberta
        | ModelType::XlmRoberta
        | ModelType::DistilBert
        | ModelType::Electra => [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
        ],
        ModelType::Mpnet => [
            "attention.attn.q",
            "attention.attn.k",
            "attention.attn.v",
            "attention.attn.o",
            "attention.LayerNorm",
        ],
    }
}

impl SelfAttention {
    /// `vb` is the layer's builder.
    fn load(vb: VarBuilder, cfg: &BertConfig, lora: &LoraConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let [query, key, value, ..] = attention_names(cfg.model_type);
        let linear = |name: &str, target| Linear::load_adapted(vb.pp(name), h, h, lora, target);
        Ok(Self {
            query: linear(query, LoraTarget::Query)?,
            key: linear(key, LoraTarget::Key)?,
            value: linear(value, LoraTarget::Value)?,
            heads: cfg.num_attention_heads,
            head_size: cfg.head_size(),
        })
    }

    fn freeze(&mut self) {
        for linear in [&mut self.query, &mut self.key, &mut self.value] {
            linear.freeze();
        }
    }

    /// `(batch * seq, hidden)` -> `(batch, heads, seq, head_size)`.
    fn split_heads(&self, xs: &Tensor, (batch, seq): (usize, usize)) -> Result<Tensor> {
        xs.reshape((batch, seq, self.heads, self.head_size))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Scaled dot-product attention over `(batch * seq, hidden)` hidden states: the fused kernel
    /// of [`crate::attention`] for f32 on the CPU, [`cuda::self_attention`] on CUDA (both take
    /// MPNet's position bias and return its gradient), primitive ops elsewhere.
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
                    &self.query.weight(train)?,
                    &self.key.weight(train)?,
                    &self.value.weight(train)?,
                ),
                (
                    &self.query.bias(train),
                    &self.key.bias(train),
                    &self.value.bias(train),
                ),
                host,
                mask.position.as_ref(),
                (batch, seq, self.heads),
                scale,
                dropout,
            );
        }
        let (wq, wk, wv) = (
            self.query.weight(train)?,
            self.key.weight(train)?,
            self.value.weight(train)?,
        );
        let (bq, bk, bv) = (
            self.query.bias(train),
            self.key.bias(train),
            self.value.bias(train),
        );
        if cuda::applies(&[xs, &wq, &wk, &wv, &bq, &bk, &bv, &mask.bias])
            && mask.position.as_ref().is_none_or(|p| cuda::applies(&[p]))
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
                mask.position.as_ref(),
                self.heads,
                scale,
                dropout,
            );
        }
        let dims = (batch, seq);
        let project = |w: &Tensor, b: &Tensor| ops::linear(xs, w, Some(b));
        let q = self.split_heads(&project(&wq, &bq)?, dims)?;
        let k = self.split_heads(&project(&wk, &bk)?, dims)?;
        let v = self.split_heads(&project(&wv, &bv)?, dims)?;
        let scores = q.matmul(&k.t()?)?;
        let probs = match &mask.position {
            // MPNet: `scores * scale + position`, then the padding mask, softmax and dropout.
            Some(position) => {
                let scores = (scores * scale)?.broadcast_add(position)?;
                ops::attention_probs(&scores, &mask.bias, 1.0, p, rng, train)?
            }
            None => ops::attention_probs(&scores, &mask.bias, scale, p, rng, train)?,
        };
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
    /// Dropout after the attention's output projection: `hidden_p`, 0 for DistilBERT.
    attention_out_p: f64,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &BertConfig, lora: &LoraConfig) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let [.., out, norm] = attention_names(cfg.model_type);
        let linear = |name: &str, (in_dim, out_dim), target| {
            Linear::load_adapted(vb.pp(name), in_dim, out_dim, lora, target)
        };
        Ok(Self {
            attention: SelfAttention::load(vb.clone(), cfg, lora)?,
            attention_out: linear(out, (h, h), LoraTarget::AttentionOutput)?,
            attention_norm: LayerNorm::load(vb.pp(norm), h, eps)?,
            intermediate: linear("intermediate.dense", (h, i), LoraTarget::Intermediate)?,
            output: linear("output.dense", (i, h), LoraTarget::Output)?,
            output_norm: LayerNorm::load(vb.pp("output.LayerNorm"), h, eps)?,
            act: cfg.hidden_act,
            hidden_p: cfg.hidden_dropout_prob,
            attention_p: cfg.attention_probs_dropout_prob,
            attention_out_p: if cfg.model_type.dropout_after_attention() {
                cfg.hidden_dropout_prob
            } else {
                0.0
            },
        })
    }

    fn freeze(&mut self) {
        self.attention.freeze();
        for linear in [
            &mut self.attention_out,
            &mut self.intermediate,
            &mut self.output,
        ] {
            linear.freeze();
        }
        self.attention_norm.freeze();
        self.output_norm.freeze();
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
        let xs = self.attention_norm.forward_residual(
            &attended,
            xs,
            self.attention_out_p,
            rng,
            train,
        )?;
        let ffn = (
            self.intermediate.weight(train)?,
            self.intermediate.bias(train),
            self.output.weight(train)?,
            self.output.bias(train),
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
        let inner = ops::linear(&xs, &ffn.0, Some(&ffn.1))?;
        let inner = match self.act {
            HiddenAct::Gelu => ops::gelu_erf(&inner)?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        let out = ops::linear(&inner, &ffn.2, Some(&ffn.3))?;
        self.output_norm
            .forward_residual(&out, &xs, self.hidden_p, rng, train)
    }
}

/// The BERT encoder: embeddings and a stack of transformer layers.
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// MPNet's relative position bias.
    relative_bias: Option<RelativeBias>,
    /// ELECTRA's projection of narrower embeddings to the hidden width.
    project: Option<Linear>,
    config: BertConfig,
    dtype: DType,
    rng: Arc<DropoutRng>,
    /// Gradient checkpointing: in training, each layer is a segment recomputed in backward.
    checkpoint_layers: bool,
}

/// `layer` as a checkpointed segment ([`Tensor::checkpoint`]): the graph keeps the layer's input
/// (and MPNet's position bias, an input too, as its gradient flows on to the bias table) and
/// frees the layer's activations; backward recomputes them, drawing the same dropout masks.
fn checkpointed_layer(
    layer: &Layer,
    xs: &Tensor,
    mask: &Mask,
    rng: &Arc<DropoutRng>,
    dims: (usize, usize),
) -> Result<Tensor> {
    let replay = rng.checkpoint(xs.device())?;
    let (layer, rng) = (layer.clone(), Arc::clone(rng));
    let (bias, host) = (mask.bias.clone(), mask.host.clone());
    let first = std::sync::atomic::AtomicBool::new(true);
    let mut inputs = vec![xs.clone()];
    inputs.extend(mask.position.iter().cloned());
    Tensor::checkpoint(&inputs, move |inputs| {
        let mask = Mask {
            bias: bias.clone(),
            host: host.clone(),
            position: inputs.get(1).cloned(),
        };
        let run = || layer.forward(&inputs[0], &mask, &rng, true, dims);
        if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
            run()
        } else {
            rng.replay(&replay, run)
        }
    })
}

impl BertModel {
    /// Declares the encoder's variables under `vb` (Hugging Face names, no `bert.` prefix).
    /// `dtype` is the compute dtype of activations; variables keep the builder's dtype. With
    /// `lora` on, the layers it targets get adapters ([`crate::lora`]) and every other variable
    /// of the encoder is frozen: backward reaches only the adapters.
    pub fn load(
        vb: VarBuilder,
        config: &BertConfig,
        dtype: DType,
        rng: Arc<DropoutRng>,
        lora: &LoraConfig,
    ) -> Result<Self> {
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config, lora))
            .collect::<Result<Vec<_>>>()?;
        let relative_bias = match config.model_type {
            ModelType::Bert
            | ModelType::Roberta
            | ModelType::XlmRoberta
            | ModelType::DistilBert
            | ModelType::Electra => None,
            ModelType::Mpnet => Some(RelativeBias::new(vb.get_with_hints(
                (
                    config.relative_attention_num_buckets,
                    config.num_attention_heads,
                ),
                "encoder.relative_attention_bias.weight",
                PLACEHOLDER,
            )?)),
        };
        let width = config.embedding_width();
        let project = if width != config.hidden_size {
            Some(Linear::load(
                vb.pp("embeddings_project"),
                width,
                config.hidden_size,
            )?)
        } else {
            None
        };
        let mut model = Self {
            embeddings: Embeddings::load(vb.pp("embeddings"), config)?,
            layers,
            relative_bias,
            project,
            config: config.clone(),
            dtype,
            rng,
            checkpoint_layers: false,
        };
        if lora.enabled() {
            model.freeze_base();
        }
        Ok(model)
    }

    /// Detaches every encoder weight but the LoRA adapters from its variable.
    fn freeze_base(&mut self) {
        self.embeddings.freeze();
        for layer in &mut self.layers {
            layer.freeze();
        }
        if let Some(relative) = &mut self.relative_bias {
            relative.table = relative.table.detach();
        }
        if let Some(project) = &mut self.project {
            project.freeze();
        }
    }

    /// Gradient checkpointing (Hugging Face's `gradient_checkpointing_enable`): training keeps
    /// each layer's input instead of its activations and recomputes them in backward, about one
    /// more forward pass of compute for activation memory of one layer plus one hidden state per
    /// layer. The gradients are those of a run without it. So are the dropout masks on the CPU
    /// and in wick's CUDA kernels (keyed by host draws, replayed); masks drawn by an
    /// accelerator's own generator (Metal; candle's primitive ops on CUDA) come from a generator
    /// reseeded at each layer (on Metal after synchronizing the device), so they differ from a
    /// run without checkpointing, and backward replays them exactly.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpoint_layers = on;
    }

    pub fn gradient_checkpointing(&self) -> bool {
        self.checkpoint_layers
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The device the variables live on.
    pub fn device(&self) -> &candle_core::Device {
        self.embeddings.word.device()
    }

    /// The word-embedding table `(vocab, width)`, the variable itself (a masked-LM decoder tied
    /// to it trains it through both uses).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.embeddings.word
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
        self.forward_inner(input_ids, token_type_ids, None, attention_mask, train)
    }

    /// [`Self::forward`] in evaluation mode (no dropout, no weight gradients) with `words`, f32
    /// `(batch * seq, width)`, in place of the word embeddings of `input_ids` (which still give
    /// the positions and the padding): the input of an attribution such as integrated
    /// gradients, whose gradient backward computes when `words` is a variable.
    pub fn forward_words(
        &self,
        words: &Tensor,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let width = self.config.embedding_width();
        if words.dims() != [batch * seq, width] {
            candle_core::bail!(
                "word rows {:?} for ids ({batch}, {seq}): expected ({}, {width})",
                words.dims(),
                batch * seq
            )
        }
        self.forward_inner(
            input_ids,
            token_type_ids,
            Some(words),
            attention_mask,
            false,
        )
    }

    fn forward_inner(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        words: Option<&Tensor>,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hidden_p = self.config.hidden_dropout_prob;
        let (batch, seq) = input_ids.dims2()?;
        // Hidden states stay `(batch * seq, hidden)` through the stack: no reshape nodes, whose
        // gradients candle would accumulate into fresh buffers in backward.
        let xs = self
            .embeddings
            .forward(input_ids, token_type_ids, words, train)?
            .to_dtype(self.dtype)?;
        let mut xs = ops::dropout(&xs, hidden_p, &self.rng, train)?;
        if let Some(project) = &self.project {
            xs = project.forward(&xs, train)?;
        }
        let bias = ops::attention_bias(attention_mask)?;
        // The fused CPU attention kernel reads the mask from the host; MPNet's position bias is
        // one contiguous tensor shared by every layer (and the gradients of all layers).
        let host = fused::applies(&[&bias])
            .then(|| HostMask::new(&bias))
            .transpose()?;
        let position = match &self.relative_bias {
            Some(relative) => Some(
                relative
                    .forward(seq, train)?
                    .to_dtype(self.dtype)?
                    .contiguous()?,
            ),
            None => None,
        };
        let mask = Mask {
            bias,
            host,
            position,
        };
        for layer in &self.layers {
            xs = if train && self.checkpoint_layers {
                checkpointed_layer(layer, &xs, &mask, &self.rng, (batch, seq))?
            } else {
                layer.forward(&xs, &mask, &self.rng, train, (batch, seq))?
            };
        }
        xs.reshape((batch, seq, self.config.hidden_size))
    }
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket;

    /// Buckets of `key - query` from PyTorch (transformers' `MPNetEncoder.relative_position_bucket`,
    /// 32 buckets, max distance 128), at every boundary of the exact and logarithmic ranges.
    #[test]
    fn relative_position_buckets_match_pytorch() {
        let expected = [
            (-129, 15),
            (-128, 15),
            (-127, 15),
            (-64, 14),
            (-16, 10),
            (-9, 8),
            (-8, 8),
            (-7, 7),
            (0, 0),
            (7, 23),
            (8, 24),
            (9, 24),
            (15, 25),
            (16, 26),
            (17, 26),
            (31, 27),
            (32, 28),
            (33, 28),
            (63, 29),
            (64, 30),
            (65, 30),
            (127, 31),
            (128, 31),
            (129, 31),
            (300, 31),
        ];
        for (relative, bucket) in expected {
            assert_eq!(
                relative_position_bucket(relative, 32, 128),
                bucket,
                "relative position {relative}"
            );
        }
    }
}
