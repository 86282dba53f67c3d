//! Encoder + masked mean pooling + dropout + `Linear(hidden, num_labels)`.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::bert::{param, BertModel};
use crate::config::BertConfig;
use crate::lora::LoraConfig;
use crate::loss;
use crate::ops;
use crate::rng::DropoutRng;

/// The name prefix of the head's variables, as in Hugging Face's `BertForSequenceClassification`.
pub const HEAD_PREFIX: &str = "classifier";

/// How labels relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Exactly one label per text: softmax and cross-entropy.
    #[default]
    SingleLabel,
    /// Any subset of labels: independent sigmoids and binary cross-entropy.
    MultiLabel,
}

/// Loss options that change the objective but not the model.
#[derive(Debug, Clone, Default)]
pub struct LossOptions {
    /// Label smoothing in `[0, 1)` (single-label only), as in `torch.nn.CrossEntropyLoss`.
    pub label_smoothing: f64,
    /// Per-class weights `(num_labels,)`, as PyTorch's `weight=` (single-label) or `pos_weight`
    /// scaling of each class's term (multi-label).
    pub class_weights: Option<Tensor>,
    /// `λ` in `[0, 1)`: with `λ > 0` the training objective is `(1 - λ) * loss + λ *
    /// supervised_contrastive(pooled)` (Gunel et al. 2021; single-label only). 0: off.
    pub contrastive_weight: f64,
    /// The temperature of the contrastive term (used only when its weight is above 0).
    pub contrastive_temperature: f64,
    /// R-Drop's `α` (Liang et al. 2021), `>= 0`: with `α > 0` each training micro-batch goes
    /// through the model twice, with independent dropout masks, and the objective gains `α`
    /// times their symmetric KL divergence ([`Classifier::train_objective`]). 0: off.
    pub rdrop_weight: f64,
    /// Knowledge distillation's `λ` in `(0, 1]` (single-label only): with a teacher's
    /// probabilities given to [`Classifier::train_objective`] the objective is `(1 - λ) *
    /// objective + λ * T^2 KL(teacher || student at T)` ([`loss::distillation_kl`]). Without a
    /// teacher it does nothing.
    pub distill_weight: f64,
    /// Distillation's temperature `T`: the teacher's probabilities are taken at it, and the
    /// student's logits are divided by it in the term.
    pub distill_temperature: f64,
}

impl LossOptions {
    /// How many times each training micro-batch goes through the model: 2 with R-Drop, else 1.
    /// Training compute and activation memory scale with it.
    pub fn passes(&self) -> usize {
        if self.rdrop_weight > 0.0 {
            2
        } else {
            1
        }
    }
}

/// A BERT text classifier.
#[derive(Debug, Clone)]
pub struct Classifier {
    encoder: BertModel,
    head_weight: Tensor,
    head_bias: Tensor,
    dropout: f64,
    task: Task,
    frozen_encoder: bool,
}

impl Classifier {
    /// Declares the encoder (at the root of `vb`, with the LoRA adapters of `lora`) and the head
    /// (`classifier.weight`, `classifier.bias`). `dropout` is the rate before the head.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: VarBuilder,
        config: &BertConfig,
        num_labels: usize,
        task: Task,
        dropout: f64,
        dtype: DType,
        rng: Arc<DropoutRng>,
        lora: &LoraConfig,
    ) -> Result<Self> {
        let encoder = BertModel::load(vb.clone(), config, dtype, rng, lora)?;
        let head = vb.pp(HEAD_PREFIX);
        Ok(Self {
            encoder,
            head_weight: head.get_with_hints(
                (num_labels, config.hidden_size),
                "weight",
                Init::Const(0.0),
            )?,
            head_bias: head.get_with_hints(num_labels, "bias", Init::Const(0.0))?,
            dropout,
            task,
            frozen_encoder: false,
        })
    }

    /// Declares a classifier in a fresh `VarMap` of f32 variables on `device` (placeholder values:
    /// fill them with [`crate::weights`]). Dropout masks are drawn from a stream seeded by `seed`.
    pub fn build(
        config: &BertConfig,
        num_labels: usize,
        task: Task,
        dropout: f64,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<(VarMap, Self)> {
        Self::build_with_lora(
            config,
            num_labels,
            task,
            dropout,
            dtype,
            device,
            seed,
            &LoraConfig::off(),
        )
    }

    /// [`Self::build`] with the LoRA adapters of `lora` (off: the same as `build`).
    #[allow(clippy::too_many_arguments)]
    pub fn build_with_lora(
        config: &BertConfig,
        num_labels: usize,
        task: Task,
        dropout: f64,
        dtype: DType,
        device: &Device,
        seed: u64,
        lora: &LoraConfig,
    ) -> Result<(VarMap, Self)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let rng = Arc::new(DropoutRng::new(seed));
        let model = Self::load(vb, config, num_labels, task, dropout, dtype, rng, lora)?;
        Ok((varmap, model))
    }

    /// With `frozen`, the encoder's output is detached: backward stops at the head, so only the
    /// head gets gradients (and the encoder's backward is not computed at all).
    pub fn set_frozen_encoder(&mut self, frozen: bool) {
        self.frozen_encoder = frozen;
    }

    /// Gradient checkpointing of the encoder's layers: see
    /// [`BertModel::set_gradient_checkpointing`].
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.encoder.set_gradient_checkpointing(on);
    }

    pub fn encoder(&self) -> &BertModel {
        &self.encoder
    }

    pub fn task(&self) -> Task {
        self.task
    }

    pub fn num_labels(&self) -> usize {
        self.head_bias.dims1().unwrap_or(0)
    }

    /// Masked mean of the last hidden states: `(batch, seq)` inputs -> `(batch, hidden)` f32.
    pub fn pooled(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self
            .encoder
            .forward(input_ids, token_type_ids, attention_mask, train)?;
        ops::masked_mean(&hidden, attention_mask)
    }

    /// Logits `(batch, num_labels)` in f32.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (_, logits) =
            self.forward_with_pooled(input_ids, token_type_ids, attention_mask, train)?;
        Ok(logits)
    }

    /// The pooled embeddings `(batch, hidden)` f32 (before the head's dropout; detached with a
    /// frozen encoder) and the logits `(batch, num_labels)` f32, from one encoder pass.
    pub fn forward_with_pooled(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let pooled = self.pooled(input_ids, token_type_ids, attention_mask, train)?;
        let pooled = if self.frozen_encoder {
            pooled.detach()
        } else {
            pooled
        };
        let dropped = ops::dropout(&pooled, self.dropout, self.encoder.rng(), train)?;
        let (weight, bias) = (
            param(&self.head_weight, train),
            param(&self.head_bias, train),
        );
        let logits = ops::linear(&dropped, &weight, Some(&bias))?;
        Ok((pooled, logits))
    }

    /// Logits `(batch, num_labels)` f32 in evaluation mode, from `words` `(batch * seq, width)`
    /// f32 in place of the word embeddings of `input_ids` ([`BertModel::forward_words`]): backward
    /// from them reaches `words` when it is a variable, and no weight.
    pub fn forward_words(
        &self,
        words: &Tensor,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let hidden =
            self.encoder
                .forward_words(words, input_ids, token_type_ids, attention_mask)?;
        let pooled = ops::masked_mean(&hidden, attention_mask)?;
        let (weight, bias) = (
            param(&self.head_weight, false),
            param(&self.head_bias, false),
        );
        ops::linear(&pooled, &weight, Some(&bias))
    }

    /// The scalar training loss of `logits` against `labels`: `(batch,)` u32 class ids for
    /// single-label, `(batch, num_labels)` f32 0/1 targets for multi-label.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor, options: &LossOptions) -> Result<Tensor> {
        match self.task {
            Task::SingleLabel => loss::cross_entropy(
                logits,
                labels,
                options.label_smoothing,
                options.class_weights.as_ref(),
            ),
            Task::MultiLabel => {
                loss::bce_with_logits(logits, labels, options.class_weights.as_ref())
            }
        }
    }

    /// The training objective: [`Self::loss`], or with `options.contrastive_weight = λ > 0`
    /// `(1 - λ) * loss + λ * supervised_contrastive(pooled, labels)` over the batch's pooled
    /// embeddings (single-label only).
    pub fn objective(
        &self,
        pooled: &Tensor,
        logits: &Tensor,
        labels: &Tensor,
        options: &LossOptions,
    ) -> Result<Tensor> {
        let loss = self.loss(logits, labels, options)?;
        let weight = options.contrastive_weight;
        if weight <= 0.0 {
            return Ok(loss);
        }
        if self.task == Task::MultiLabel {
            candle_core::bail!("the contrastive term needs single-label classes, not multi-label");
        }
        let contrastive =
            loss::supervised_contrastive(pooled, labels, options.contrastive_temperature)?;
        (loss * (1.0 - weight))? + (contrastive * weight)?
    }

    /// The training objective of one micro-batch, from its inputs, with dropout on. With
    /// `options.rdrop_weight = α > 0` (R-Drop, <https://arxiv.org/abs/2106.14448>) the batch is
    /// stacked on itself and goes through the model as one batch of twice the rows, so each text
    /// has two views under independent dropout masks; the objective is [`Self::objective`] over
    /// both views (the mean loss of the two, and with the contrastive term each text's other view
    /// is one more positive, as in Khosla et al.'s two-view form) plus `α / 2` times their mean
    /// symmetric KL divergence ([`loss::symmetric_kl`], or its Bernoulli form for multi-label).
    /// Per text that is half of Liang et al.'s `CE_1 + CE_2 + α / 2 (KL(P_1 || P_2) + KL(P_2 ||
    /// P_1))`, so `α` means what it means in their paper.
    ///
    /// With `teacher`, a teacher's class probabilities at `options.distill_temperature` `(batch,
    /// num_labels)`, the objective (before R-Drop's term) is distilled: `(1 - λ) * objective +
    /// λ * T^2 KL(teacher || student)` with `λ = options.distill_weight` (Hinton et al. 2015;
    /// each view of R-Drop against the same teacher row).
    pub fn train_objective(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        teacher: Option<&Tensor>,
        options: &LossOptions,
    ) -> Result<Tensor> {
        let alpha = options.rdrop_weight;
        if alpha <= 0.0 {
            let (pooled, logits) =
                self.forward_with_pooled(input_ids, token_type_ids, attention_mask, true)?;
            let objective = self.objective(&pooled, &logits, labels, options)?;
            return self.distilled(objective, &logits, teacher, options);
        }
        let twice = |t: &Tensor| Tensor::cat(&[t, t], 0);
        let (pooled, logits) = self.forward_with_pooled(
            &twice(input_ids)?,
            &twice(token_type_ids)?,
            &twice(attention_mask)?,
            true,
        )?;
        let objective = self.objective(&pooled, &logits, &twice(labels)?, options)?;
        let objective = match teacher {
            Some(teacher) => self.distilled(objective, &logits, Some(&twice(teacher)?), options)?,
            None => objective,
        };
        let rows = input_ids.dim(0)?;
        let (first, second) = (logits.narrow(0, 0, rows)?, logits.narrow(0, rows, rows)?);
        let consistency = match self.task {
            Task::SingleLabel => loss::symmetric_kl(&first, &second)?,
            Task::MultiLabel => loss::symmetric_kl_bernoulli(&first, &second)?,
        };
        objective + (consistency * (alpha / 2.0))?
    }

    /// `objective` with the distillation term mixed in when there is a teacher.
    fn distilled(
        &self,
        objective: Tensor,
        logits: &Tensor,
        teacher: Option<&Tensor>,
        options: &LossOptions,
    ) -> Result<Tensor> {
        let Some(teacher) = teacher else {
            return Ok(objective);
        };
        if self.task == Task::MultiLabel {
            candle_core::bail!("distillation needs single-label classes, not multi-label");
        }
        let weight = options.distill_weight;
        let kd = loss::distillation_kl(logits, teacher, options.distill_temperature)?;
        (objective * (1.0 - weight))? + (kd * weight)?
    }

    /// Class probabilities `(batch, num_labels)`: softmax for single-label, sigmoid for
    /// multi-label.
    pub fn probabilities(&self, logits: &Tensor) -> Result<Tensor> {
        match self.task {
            Task::SingleLabel => ops::softmax_last_dim(logits),
            Task::MultiLabel => candle_nn::ops::sigmoid(&logits.to_dtype(DType::F32)?),
        }
    }
}
