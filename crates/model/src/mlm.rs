//! Masked-language modelling on the encoder, for adapting a pretrained encoder to a domain's or a
//! task's own texts before fine-tuning (Gururangan et al. 2020, "Don't Stop Pretraining": task-
//! and domain-adaptive pretraining).
//!
//! The head is the one BERT, RoBERTa, MPNet and DistilBERT share: a dense layer, the encoder's
//! activation, a layer norm, and the decoder tied to the word embeddings plus a bias per token
//! (`transformers`' `BertLMPredictionHead`, `RobertaLMHead`, `MPNetLMHead`). Its variables are
//! named `lm_head.dense.*`, `lm_head.LayerNorm.*` and `lm_head.bias`; a pretrained file's own
//! head (`cls.predictions.*`, `lm_head.*`, DistilBERT's `vocab_*`) fills them when it has one
//! ([`load_lm_head`]), else they start from a seeded init ([`crate::weights::init_lm_head`]):
//! sentence-transformers checkpoints ship without it. The loss is taken on the masked positions
//! only, so the vocabulary projection runs for those rows alone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::bert::BertModel;
use crate::config::{BertConfig, HiddenAct};
use crate::error::{ModelError, Result};
use crate::lora::LoraConfig;
use crate::rng::DropoutRng;
use crate::{loss, ops};

/// The prefix of the masked-LM head's variables.
pub const LM_HEAD_PREFIX: &str = "lm_head";

/// Whether a variable belongs to the masked-LM head.
pub fn is_lm_head(name: &str) -> bool {
    name.starts_with(&format!("{LM_HEAD_PREFIX}."))
}

/// The encoder with a masked-language-modelling head.
#[derive(Debug, Clone)]
pub struct MaskedLm {
    encoder: BertModel,
    dense_weight: Tensor,
    dense_bias: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    bias: Tensor,
    act: HiddenAct,
    eps: f64,
    frozen_encoder: bool,
}

impl MaskedLm {
    /// Declares the encoder (at the root of `vb`) and the head (under `lm_head`). The decoder
    /// is the word-embedding table, so the embedding width must be the hidden width (ELECTRA's
    /// discriminators are narrower below and have no such head).
    pub fn load(
        vb: VarBuilder,
        config: &BertConfig,
        dtype: DType,
        rng: Arc<DropoutRng>,
    ) -> Result<Self> {
        let h = config.hidden_size;
        if config.embedding_width() != h {
            return Err(ModelError::Unsupported(format!(
                "masked-LM adaptation ties the decoder to the word embeddings, which are {} wide \
                 where the hidden states are {h}",
                config.embedding_width()
            )));
        }
        let encoder = BertModel::load(vb.clone(), config, dtype, rng, &LoraConfig::off())?;
        let head = vb.pp(LM_HEAD_PREFIX);
        let zero = Init::Const(0.0);
        Ok(Self {
            encoder,
            dense_weight: head.get_with_hints((h, h), "dense.weight", zero)?,
            dense_bias: head.get_with_hints(h, "dense.bias", zero)?,
            norm_weight: head.get_with_hints(h, "LayerNorm.weight", Init::Const(1.0))?,
            norm_bias: head.get_with_hints(h, "LayerNorm.bias", zero)?,
            bias: head.get_with_hints(config.vocab_size, "bias", zero)?,
            act: config.hidden_act,
            eps: config.layer_norm_eps,
            frozen_encoder: false,
        })
    }

    /// Declares the model in a fresh `VarMap` of f32 variables on `device` (placeholder values:
    /// fill the encoder with [`crate::weights::load_safetensors`], the head with
    /// [`load_lm_head`] or [`crate::weights::init_lm_head`]). Dropout draws from a stream
    /// seeded by `seed`.
    pub fn build(
        config: &BertConfig,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<(VarMap, Self)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = Self::load(vb, config, dtype, Arc::new(DropoutRng::new(seed)))?;
        Ok((varmap, model))
    }

    pub fn encoder(&self) -> &BertModel {
        &self.encoder
    }

    /// With `frozen`, the encoder's output and the tied word embeddings are detached: backward
    /// reaches only the head's own variables (and does not run through the encoder at all).
    pub fn set_frozen_encoder(&mut self, frozen: bool) {
        self.frozen_encoder = frozen;
    }

    /// Vocabulary logits `(n, vocab)` of hidden states `(n, hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = ops::linear(hidden, &self.dense_weight, Some(&self.dense_bias))?;
        let x = match self.act {
            HiddenAct::Gelu => ops::gelu_erf(&x)?,
            HiddenAct::GeluApproximate => x.gelu()?,
            HiddenAct::Relu => x.relu()?,
        };
        let x = ops::layer_norm(&x, &self.norm_weight, &self.norm_bias, self.eps)?;
        let word = self.encoder.word_embeddings();
        let word = if self.frozen_encoder {
            word.detach()
        } else {
            word.clone()
        };
        Ok(ops::linear(&x, &word, Some(&self.bias))?)
    }

    /// Mean cross-entropy of the original tokens `labels (n,)` at the masked `positions (n,)`
    /// (u32 indices into the flattened `(batch * seq)` tokens) of a batch whose masked tokens
    /// were already replaced in `input_ids`. Only with `train` true does dropout apply and
    /// backward reach the encoder (otherwise its weights enter detached, as in inference).
    pub fn loss(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        positions: &Tensor,
        labels: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self
            .encoder
            .forward(input_ids, token_type_ids, attention_mask, train)?;
        let hidden = if self.frozen_encoder {
            hidden.detach()
        } else {
            hidden
        };
        let (batch, seq, width) = hidden.dims3()?;
        let chosen = hidden
            .reshape((batch * seq, width))?
            .index_select(positions, 0)?;
        let logits = self.logits(&chosen)?;
        Ok(loss::cross_entropy(&logits, labels, 0.0, None)?)
    }
}

/// The masked-LM head's names in the families' own files, to ours: BERT's
/// `cls.predictions.*`, RoBERTa's and MPNet's `lm_head.*`, DistilBERT's `vocab_*`.
const PRETRAINED_HEADS: [[(&str, &str); 5]; 3] = [
    [
        ("cls.predictions.transform.dense.weight", "dense.weight"),
        ("cls.predictions.transform.dense.bias", "dense.bias"),
        (
            "cls.predictions.transform.LayerNorm.weight",
            "LayerNorm.weight",
        ),
        ("cls.predictions.transform.LayerNorm.bias", "LayerNorm.bias"),
        ("cls.predictions.bias", "bias"),
    ],
    [
        ("lm_head.dense.weight", "dense.weight"),
        ("lm_head.dense.bias", "dense.bias"),
        ("lm_head.layer_norm.weight", "LayerNorm.weight"),
        ("lm_head.layer_norm.bias", "LayerNorm.bias"),
        ("lm_head.bias", "bias"),
    ],
    [
        ("vocab_transform.weight", "dense.weight"),
        ("vocab_transform.bias", "dense.bias"),
        ("vocab_layer_norm.weight", "LayerNorm.weight"),
        ("vocab_layer_norm.bias", "LayerNorm.bias"),
        ("vocab_projector.bias", "bias"),
    ],
];

/// Fills the masked-LM head from a pretrained file that has one, whole; `Ok(false)` (nothing
/// set) when the file has none of the known heads complete.
pub fn load_lm_head(varmap: &VarMap, path: &Path) -> Result<bool> {
    let file = candle_core::safetensors::load(path, &Device::Cpu).map_err(|cause| {
        ModelError::Weights {
            path: path.to_path_buf(),
            cause,
        }
    })?;
    // TensorFlow-era files name layer-norm parameters gamma and beta.
    let file: HashMap<String, Tensor> = file
        .into_iter()
        .map(|(k, v)| {
            let k = match (k.strip_suffix(".gamma"), k.strip_suffix(".beta")) {
                (Some(stem), _) => format!("{stem}.weight"),
                (_, Some(stem)) => format!("{stem}.bias"),
                _ => k,
            };
            (k, v)
        })
        .collect();
    let Some(head) = PRETRAINED_HEADS
        .iter()
        .find(|names| names.iter().all(|(theirs, _)| file.contains_key(*theirs)))
    else {
        return Ok(false);
    };
    let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    for (theirs, ours) in head {
        let name = format!("{LM_HEAD_PREFIX}.{ours}");
        let var = vars.get(&name).ok_or_else(|| {
            ModelError::Unsupported(format!("the model declares no variable {name}"))
        })?;
        let tensor = &file[*theirs];
        if tensor.dims() != var.dims() {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                name: theirs.to_string(),
                found: tensor.dims().to_vec(),
                expected: var.dims().to_vec(),
            });
        }
        var.set(&tensor.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::named_vars;

    /// A BERT file's `cls.predictions.*` head (TensorFlow-era `gamma`/`beta` included) fills the
    /// head; a file without one sets nothing; a head of the wrong width is refused, by name.
    #[test]
    fn a_pretrained_head_fills_the_head_by_its_own_names() {
        let config = BertConfig::tiny(50);
        let (varmap, _) = MaskedLm::build(&config, DType::F32, &Device::Cpu, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let value = |n: usize, v: f32| Tensor::full(v, n, &Device::Cpu).unwrap();
        let dense = Tensor::full(0.5f32, (32, 32), &Device::Cpu).unwrap();
        let mut file = HashMap::from([
            ("cls.predictions.transform.dense.weight".to_string(), dense),
            (
                "cls.predictions.transform.dense.bias".to_string(),
                value(32, 0.25),
            ),
            (
                "cls.predictions.transform.LayerNorm.gamma".to_string(),
                value(32, 2.0),
            ),
            (
                "cls.predictions.transform.LayerNorm.beta".to_string(),
                value(32, -1.0),
            ),
            ("cls.predictions.bias".to_string(), value(50, 3.0)),
        ]);
        let path = dir.path().join("bert.safetensors");
        candle_core::safetensors::save(&file, &path).unwrap();
        assert!(load_lm_head(&varmap, &path).unwrap());
        let vars: HashMap<String, candle_core::Var> = named_vars(&varmap).into_iter().collect();
        let first = |name: &str| {
            vars[name]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .get(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(first("lm_head.dense.weight"), 0.5);
        assert_eq!(first("lm_head.dense.bias"), 0.25);
        assert_eq!(first("lm_head.LayerNorm.weight"), 2.0);
        assert_eq!(first("lm_head.LayerNorm.bias"), -1.0);
        assert_eq!(first("lm_head.bias"), 3.0);

        let none = dir.path().join("none.safetensors");
        candle_core::safetensors::save(&HashMap::from([("x".to_string(), value(2, 1.0))]), &none)
            .unwrap();
        assert!(!load_lm_head(&varmap, &none).unwrap());

        file.insert("cls.predictions.bias".to_string(), value(49, 3.0));
        candle_core::safetensors::save(&file, &path).unwrap();
        let err = load_lm_head(&varmap, &path).unwrap_err().to_string();
        assert!(
            err.contains("cls.predictions.bias") && err.contains("[49]"),
            "{err}"
        );
    }
}
