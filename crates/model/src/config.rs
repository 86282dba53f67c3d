//! The encoder's shape, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// Exact GELU with erf, what BERT checkpoints were trained with.
    Gelu,
    /// The tanh approximation.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluApproximate,
    Relu,
}

/// The encoder family, `model_type` in `config.json`: the layer stack is the same, the
/// embeddings, attention and variable names differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    /// BERT (and checkpoints of its shape: MiniLM, bert-base-uncased): learned absolute
    /// positions from 0 and token-type embeddings.
    #[default]
    Bert,
    /// MPNet (`sentence-transformers/all-mpnet-base-v2`): no token types, positions counted from
    /// `pad_token_id + 1` with padding at `pad_token_id`, and a learned relative position bias
    /// (T5-style buckets, shared by every layer) added to the attention scores.
    /// <https://github.com/huggingface/transformers/blob/main/src/transformers/models/mpnet/modeling_mpnet.py>
    Mpnet,
    /// RoBERTa (`roberta-base`, `distilroberta-base`, `sentence-transformers/all-distilroberta-v1`):
    /// BERT's layers and names with MPNet's positions (from `pad_token_id + 1`, padding at
    /// `pad_token_id`) and a one-row token-type table.
    /// <https://github.com/huggingface/transformers/blob/main/src/transformers/models/roberta/modeling_roberta.py>
    Roberta,
    /// XLM-RoBERTa (`xlm-roberta-base`,
    /// `sentence-transformers/paraphrase-multilingual-mpnet-base-v2`): RoBERTa's encoder under
    /// its own `model_type`, with a multilingual SentencePiece vocabulary.
    /// <https://github.com/huggingface/transformers/blob/main/src/transformers/models/xlm_roberta/modeling_xlm_roberta.py>
    #[serde(rename = "xlm-roberta")]
    XlmRoberta,
    /// DistilBERT (`distilbert-base-uncased`): BERT's positions and layers without token types
    /// and without dropout after the attention's output projection. Its own names (`dim`,
    /// `n_layers`, `q_lin`, `sa_layer_norm`, ...) are mapped to BERT's when the files are read
    /// (see [`BertConfig::from_json`] and [`crate::weights::canonical_name`]), so a checkpoint
    /// of wick names it as BERT.
    /// <https://github.com/huggingface/transformers/blob/main/src/transformers/models/distilbert/modeling_distilbert.py>
    #[serde(rename = "distilbert")]
    DistilBert,
    /// ELECTRA's discriminator (`google/electra-base-discriminator`, `-small-`): BERT's layers,
    /// names and positions, with embeddings `embedding_size` wide projected to `hidden_size` by
    /// a linear layer (`embeddings_project`) where the two differ.
    /// <https://github.com/huggingface/transformers/blob/main/src/transformers/models/electra/modeling_electra.py>
    Electra,
}

impl ModelType {
    /// Whether positions count from `pad_token_id + 1` (Hugging Face's
    /// `create_position_ids_from_input_ids`) rather than from 0.
    pub fn positions_after_padding(self) -> bool {
        matches!(
            self,
            ModelType::Mpnet | ModelType::Roberta | ModelType::XlmRoberta
        )
    }

    /// Whether the embeddings have a token-type (segment) table.
    pub fn has_token_types(self) -> bool {
        matches!(
            self,
            ModelType::Bert | ModelType::Roberta | ModelType::XlmRoberta | ModelType::Electra
        )
    }

    /// Whether dropout follows the attention's output projection (all but DistilBERT).
    pub fn dropout_after_attention(self) -> bool {
        self != ModelType::DistilBert
    }
}

/// DistilBERT's `config.json` names and BERT's, which [`BertConfig`] uses.
pub const DISTILBERT_NAMES: [(&str, &str); 7] = [
    ("dim", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("hidden_dim", "intermediate_size"),
    ("activation", "hidden_act"),
    ("dropout", "hidden_dropout_prob"),
    ("attention_dropout", "attention_probs_dropout_prob"),
];

/// BERT hyper-parameters; unknown keys of `config.json` are ignored on purpose (the file carries
/// many fields about other frameworks).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BertConfig {
    /// The encoder family; absent means BERT. Other families are refused when the file is read.
    #[serde(default)]
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: HiddenAct,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    /// MPNet's number of relative position buckets (half for keys before the query, half after).
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// ELECTRA's embedding width, projected to `hidden_size` where it differs; read for ELECTRA
    /// only (see [`BertConfig::embedding_width`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
}

fn default_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_eps() -> f64 {
    1e-12
}
fn default_buckets() -> usize {
    32
}

impl BertConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Self::from_json(value).map_err(|reason| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Reads a parsed `config.json`, DistilBERT's names included, and checks it.
    pub fn from_json(mut value: serde_json::Value) -> std::result::Result<Self, String> {
        if value.get("model_type").and_then(|t| t.as_str()) == Some("distilbert") {
            if let Some(fields) = value.as_object_mut() {
                if fields.get("sinusoidal_pos_embds") == Some(&serde_json::Value::Bool(true)) {
                    return Err("sinusoidal_pos_embds = true: wick trains learned position \
                                embeddings only"
                        .into());
                }
                for (theirs, ours) in DISTILBERT_NAMES {
                    if !fields.contains_key(ours) {
                        if let Some(v) = fields.remove(theirs) {
                            fields.insert(ours.into(), v);
                        }
                    }
                }
            }
        }
        let config: Self = serde_json::from_value(value).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// A 2-layer, 32-wide BERT for tests and smoke runs.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            model_type: ModelType::Bert,
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            hidden_act: HiddenAct::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            relative_attention_num_buckets: 32,
            embedding_size: None,
        }
    }

    /// The width of the embedding tables: ELECTRA's `embedding_size`, else `hidden_size`. Where
    /// it differs from `hidden_size`, a linear layer projects the embeddings.
    pub fn embedding_width(&self) -> usize {
        match (self.model_type, self.embedding_size) {
            (ModelType::Electra, Some(width)) => width,
            _ => self.hidden_size,
        }
    }

    /// The longest input the position table covers: `max_position_embeddings` for BERT,
    /// `pad_token_id + 1` fewer for MPNet and RoBERTa (their positions start after the padding
    /// row: 512 of 514 rows).
    pub fn max_tokens(&self) -> usize {
        if self.model_type.positions_after_padding() {
            self.max_position_embeddings
                .saturating_sub(self.pad_token_id + 1)
        } else {
            self.max_position_embeddings
        }
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.model_type == ModelType::Mpnet && self.relative_attention_num_buckets < 4 {
            return Err(format!(
                "relative_attention_num_buckets {} is below 4",
                self.relative_attention_num_buckets
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{BertConfig, ModelType};

    fn read(json: &str) -> Result<BertConfig, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).map_err(|e| e.to_string())?;
        BertConfig::from_file(&path).map_err(|e| e.to_string())
    }

    const SHAPE: &str = r#""vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 514"#;

    #[test]
    fn model_type_selects_the_family_and_its_position_budget() {
        let bert = read(&format!(r#"{{"model_type": "bert", {SHAPE}}}"#)).unwrap();
        assert_eq!((bert.model_type, bert.max_tokens()), (ModelType::Bert, 514));
        let untyped = read(&format!("{{{SHAPE}}}")).unwrap();
        assert_eq!(untyped.model_type, ModelType::Bert);
        let mpnet = read(&format!(
            r#"{{"model_type": "mpnet", "pad_token_id": 1, {SHAPE}}}"#
        ))
        .unwrap();
        assert_eq!(
            (
                mpnet.model_type,
                mpnet.max_tokens(),
                mpnet.relative_attention_num_buckets
            ),
            (ModelType::Mpnet, 512, 32)
        );
        for (name, family) in [
            ("roberta", ModelType::Roberta),
            ("xlm-roberta", ModelType::XlmRoberta),
        ] {
            let roberta = read(&format!(
                r#"{{"model_type": "{name}", "pad_token_id": 1, "type_vocab_size": 1, {SHAPE}}}"#
            ))
            .unwrap();
            assert_eq!(
                (
                    roberta.model_type,
                    roberta.max_tokens(),
                    roberta.type_vocab_size
                ),
                (family, 512, 1)
            );
        }
    }

    /// google/electra-small-discriminator's shape: 128-wide embeddings under a 256-wide encoder.
    #[test]
    fn electra_embeddings_have_their_own_width() {
        let electra = read(
            r#"{"model_type": "electra", "vocab_size": 10, "embedding_size": 128,
                "hidden_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4,
                "intermediate_size": 1024, "max_position_embeddings": 512}"#,
        )
        .unwrap();
        assert_eq!(
            (
                electra.model_type,
                electra.embedding_width(),
                electra.max_tokens()
            ),
            (ModelType::Electra, 128, 512)
        );
        let again: BertConfig =
            BertConfig::from_json(serde_json::to_value(&electra).unwrap()).unwrap();
        assert_eq!(again, electra);
        // Another family's embedding_size is not read.
        let bert = read(&format!(r#"{{"embedding_size": 4, {SHAPE}}}"#)).unwrap();
        assert_eq!(bert.embedding_width(), 8);
    }

    /// distilbert-base-uncased's config.json, its own names.
    #[test]
    fn distilbert_names_are_read_as_bert_ones() {
        let distil = read(
            r#"{"model_type": "distilbert", "vocab_size": 10, "dim": 8, "n_layers": 1,
                "n_heads": 2, "hidden_dim": 16, "activation": "gelu", "dropout": 0.1,
                "attention_dropout": 0.2, "max_position_embeddings": 512, "pad_token_id": 0,
                "sinusoidal_pos_embds": false, "qa_dropout": 0.1, "seq_classif_dropout": 0.2}"#,
        )
        .unwrap();
        assert_eq!(distil.model_type, ModelType::DistilBert);
        assert_eq!(
            (
                distil.hidden_size,
                distil.num_hidden_layers,
                distil.num_attention_heads,
                distil.intermediate_size,
                distil.attention_probs_dropout_prob,
                distil.max_tokens()
            ),
            (8, 1, 2, 16, 0.2, 512)
        );
        // wick's checkpoint writes BERT's names under the same model type: read back as is.
        let again: BertConfig =
            BertConfig::from_json(serde_json::to_value(&distil).unwrap()).unwrap();
        assert_eq!(again, distil);
        let err = read(
            r#"{"model_type": "distilbert", "vocab_size": 10, "dim": 8, "n_layers": 1,
                "n_heads": 2, "hidden_dim": 16, "max_position_embeddings": 512,
                "sinusoidal_pos_embds": true}"#,
        )
        .unwrap_err();
        assert!(err.contains("sinusoidal_pos_embds"), "{err}");
    }

    #[test]
    fn another_model_family_is_refused_naming_the_file_and_the_known_ones() {
        let err = read(&format!(r#"{{"model_type": "deberta-v2", {SHAPE}}}"#)).unwrap_err();
        for needle in [
            "config.json",
            "deberta-v2",
            "bert",
            "mpnet",
            "roberta",
            "distilbert",
            "electra",
            "xlm-roberta",
        ] {
            assert!(err.contains(needle), "{needle} not in: {err}");
        }
    }
}
