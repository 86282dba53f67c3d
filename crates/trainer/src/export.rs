//! A checkpoint as a sentence-transformers model directory, for the Python side.
//!
//! wick's classifier is an encoder, masked mean pooling and a linear head. sentence-transformers
//! has those three as modules (`Transformer`, `Pooling` with mean tokens, `Dense` with the
//! identity activation), so an exported directory loads with `SentenceTransformer(dir)` and its
//! `encode` returns the head's logits; the encoder alone loads with transformers'
//! `AutoModel.from_pretrained(dir)`. Layout, in the classic module names that
//! sentence-transformers 3 to 6 read:
//!
//! ```text
//! config.json               the encoder's, for transformers (with id2label / label2id)
//! model.safetensors         the encoder's weights, Hugging Face key names
//! tokenizer.json            the checkpoint's tokenizer
//! tokenizer_config.json     tokenizer class, special tokens, model_max_length
//! sentence_bert_config.json max_seq_length = data.max_len
//! modules.json              0 Transformer, 1 Pooling, 2 Dense
//! 1_Pooling/config.json     mean over the attention mask
//! 2_Dense/config.json       in = hidden size, out = labels, identity activation
//! 2_Dense/model.safetensors linear.weight, linear.bias: the head (divided by the temperature)
//! wick_export.json          labels, task, how a row becomes text, what was folded in
//! README.md                 a model card: provenance, metrics, how to use it
//! ```
//!
//! A checkpoint's fitted temperature (`eval.calibrate`, `calibrate`) is folded into the Dense
//! layer (`W / T`, `b / T`), so softmax (or sigmoid) of the exported outputs gives the probabilities
//! `predict` gives. sentence-transformers' own Transformer module keeps the first tokens of a long
//! text; for a checkpoint trained with `tail` or `head_tail` truncation the export's first module
//! is `wick_transformer.WickTransformer` instead (`wick_transformer.py`, written beside the
//! model, with the rule in `sentence_bert_config.json`), which keeps the tokens wick keeps.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use wick_data::TruncationSide;
use wick_model::config::{HiddenAct, ModelType};
use wick_model::weights::{is_head, transformers_name};
use wick_model::BertConfig;

use crate::checkpoint::{self, Checkpoint};
use crate::error::{Result, TrainError};

/// The sentence-transformers modules, in order: (folder, class) in the classic names.
const MODULES: [(&str, &str); 3] = [
    ("", "sentence_transformers.models.Transformer"),
    ("1_Pooling", "sentence_transformers.models.Pooling"),
    ("2_Dense", "sentence_transformers.models.Dense"),
];
pub const EXPORT_INFO: &str = "wick_export.json";
/// The Transformer module of a checkpoint trained with `tail` or `head_tail` truncation, which
/// sentence-transformers' own module cannot do: it tokenizes whole texts and keeps the positions
/// `wick_data::kept_positions` keeps.
const TRUNCATING_MODULE: &str = include_str!("wick_transformer.py");
const TRUNCATING_MODULE_FILE: &str = "wick_transformer.py";
const TRUNCATING_MODULE_CLASS: &str = "wick_transformer.WickTransformer";

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    /// Fold the checkpoint's temperature into the Dense layer (when it has one). Off, the
    /// exported outputs are the raw logits.
    pub fold_temperature: bool,
    /// Replace an earlier export (a directory holding `wick_export.json`) at the destination.
    pub overwrite: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            fold_temperature: true,
            overwrite: false,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Export {
    pub dir: PathBuf,
    /// Files written, relative to `dir`, sorted.
    pub files: Vec<String>,
    /// Encoder tensors written.
    pub encoder_tensors: usize,
    /// The temperature folded into the Dense layer, if any.
    pub temperature: Option<f64>,
    /// Whether the Transformer module is wick's (`wick_transformer.py`), for a checkpoint that
    /// keeps the end of long texts: code in the export, so sentence-transformers loads it with
    /// `trust_remote_code=True`.
    pub truncating_module: bool,
    /// Where the exported model's outputs differ from what `predict` prints.
    pub notes: Vec<String>,
}

fn bad(dir: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes `checkpoint` as a sentence-transformers directory at `out`, atomically (built aside,
/// then renamed into place). A non-empty `out` is refused unless it is an earlier export and
/// `options.overwrite` is set.
pub fn export(checkpoint: &Checkpoint, out: &Path, options: &ExportOptions) -> Result<Export> {
    let pairs = &checkpoint.config.data.pair_fields;
    if !pairs.is_empty() {
        return Err(bad(
            &checkpoint.dir,
            format!(
                "it reads text pairs (data.pair_fields = {pairs:?}), and a sentence-transformers \
                 model encodes single texts: predict and serve take its pairs"
            ),
        ));
    }
    check_destination(checkpoint, out, options.overwrite)?;
    let (encoder, weight, bias, temperature) = read_weights(checkpoint, options.fold_temperature)?;
    let (labels, hidden) = (checkpoint.labels.len(), checkpoint.bert.hidden_size);
    let config = &checkpoint.config.data;
    // Content tokens kept from the start of a long text, the rest from its end; None for the
    // first tokens only, which sentence-transformers' own module does.
    let head_kept = match config.truncation {
        TruncationSide::Head => None,
        TruncationSide::Tail => Some(0),
        TruncationSide::HeadTail => Some(config.head_tokens),
    };
    let mut notes = Vec::new();
    if let Some(c) = checkpoint
        .calibration
        .as_ref()
        .filter(|_| !options.fold_temperature)
    {
        notes.push(format!(
            "the temperature {:.4} was not folded in: divide the outputs by it for the \
             probabilities predict gives",
            c.temperature
        ));
    }
    let lora = &checkpoint.config.model.lora;
    if lora.enabled() {
        notes.push(format!(
            "the LoRA adapters (rank {}, alpha {}, on {}) are merged into the encoder's \
             weights (W + alpha / rank * B A): the export is a plain encoder",
            lora.rank,
            lora.alpha,
            lora.target_names()
        ));
    }
    if !config.clean.is_off() {
        notes.push(format!(
            "wick cleaned every text before tokenizing it (data.clean: {}); the exported model \
             reads its input as given, so clean texts the same way before encoding them",
            config.clean.describe()
        ));
    }

    let staged = checkpoint::stage(out)?;
    let write_json = |name: &str, value: &Value| -> Result<()> {
        let path = staged.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(TrainError::io(parent))?;
        }
        let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Export {
            path: out.to_path_buf(),
            reason: format!("{name}: {e}"),
        })?;
        checkpoint::write_synced(&path, format!("{text}\n").as_bytes())
    };
    let encoder_tensors = encoder.len();
    let model_type = checkpoint.bert.model_type;
    let encoder: HashMap<String, Tensor> = encoder
        .into_iter()
        .map(|(name, tensor)| (transformers_name(model_type, &name), tensor))
        .collect();
    save_for_pytorch(&encoder, &staged.join(checkpoint::WEIGHTS))?;
    write_json(
        checkpoint::BERT_CONFIG,
        &transformers_config(&checkpoint.bert, &checkpoint.labels),
    )?;
    let tokenizer = checkpoint.tokenizer();
    fs::copy(&tokenizer, staged.join(checkpoint::TOKENIZER)).map_err(TrainError::io(&tokenizer))?;
    write_json("tokenizer_config.json", &tokenizer_config(checkpoint)?)?;
    let mut sentence_config = json!({ "max_seq_length": config.max_len, "do_lower_case": false });
    if let Some(head) = head_kept {
        sentence_config["wick_truncation"] = json!({ "max_len": config.max_len, "head": head });
        checkpoint::write_synced(
            &staged.join(TRUNCATING_MODULE_FILE),
            TRUNCATING_MODULE.as_bytes(),
        )?;
    }
    write_json("sentence_bert_config.json", &sentence_config)?;
    let modules: Vec<Value> = MODULES
        .iter()
        .enumerate()
        .map(|(idx, (path, class))| {
            let class = match head_kept {
                Some(_) if idx == 0 => TRUNCATING_MODULE_CLASS,
                _ => class,
            };
            json!({ "idx": idx, "name": idx.to_string(), "path": path, "type": class })
        })
        .collect();
    write_json("modules.json", &Value::Array(modules))?;
    write_json(
        "1_Pooling/config.json",
        &json!({
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": true,
            "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false,
        }),
    )?;
    write_json(
        "2_Dense/config.json",
        &json!({
            "in_features": hidden,
            "out_features": labels,
            "bias": true,
            "activation_function": "torch.nn.modules.linear.Identity",
        }),
    )?;
    let dense = HashMap::from([
        ("linear.weight".to_string(), weight),
        ("linear.bias".to_string(), bias),
    ]);
    save_for_pytorch(&dense, &staged.join("2_Dense/model.safetensors"))?;
    let info = export_info(checkpoint, temperature, &notes);
    write_json(EXPORT_INFO, &info)?;
    checkpoint::write_synced(
        &staged.join("README.md"),
        model_card(checkpoint, &info).as_bytes(),
    )?;
    let mut files = list_files(&staged)?;
    files.sort();
    checkpoint::replace_dir(&staged, out)?;
    Ok(Export {
        dir: out.to_path_buf(),
        files,
        encoder_tensors,
        temperature,
        truncating_module: head_kept.is_some(),
        notes,
    })
}

/// The checkpoint's encoder tensors, and its head as the Dense layer's weight and bias (divided
/// by the temperature when `fold` and the checkpoint has one, which is returned).
type ExportWeights = (HashMap<String, Tensor>, Tensor, Tensor, Option<f64>);

fn read_weights(checkpoint: &Checkpoint, fold: bool) -> Result<ExportWeights> {
    let weights_path = checkpoint.dir.join(checkpoint::WEIGHTS);
    let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
        .map_err(|e| bad(&checkpoint.dir, format!("{}: {e}", checkpoint::WEIGHTS)))?;
    let (mut encoder, mut head) = split_head(tensors);
    let lora = &checkpoint.config.model.lora;
    if lora.enabled() {
        // The exported encoder is the plain one the adapters amount to.
        wick_model::lora::merge_adapters(&mut encoder, lora.scale())
            .map_err(|e| bad(&checkpoint.dir, format!("{}: {e}", checkpoint::WEIGHTS)))?;
    }
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let key = format!("{}.{name}", wick_model::classifier::HEAD_PREFIX);
        let tensor = head.remove(&key).ok_or_else(|| {
            bad(
                &checkpoint.dir,
                format!("{}: no {key}", checkpoint::WEIGHTS),
            )
        })?;
        if tensor.dims() != shape {
            return Err(bad(
                &checkpoint.dir,
                format!("{key} has shape {:?}, expected {shape:?}", tensor.dims()),
            ));
        }
        Ok(tensor.to_dtype(DType::F32)?)
    };
    let labels = checkpoint.labels.len();
    let weight = take("weight", &[labels, checkpoint.bert.hidden_size])?;
    let bias = take("bias", &[labels])?;
    let temperature = checkpoint
        .calibration
        .as_ref()
        .filter(|_| fold)
        .map(|c| c.temperature);
    Ok(match temperature {
        Some(t) => (encoder, (weight / t)?, (bias / t)?, temperature),
        None => (encoder, weight, bias, None),
    })
}

/// Writes tensors as safetensors with the `{"format": "pt"}` header metadata that PyTorch's
/// savers write: transformers before 4.4x refuses a file without it ("'NoneType' object has no
/// attribute 'get'" in 4.40).
pub(crate) fn save_for_pytorch(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize_to_file(sorted, Some(metadata), path).map_err(|e| {
        TrainError::Export {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    checkpoint::sync_file(path)
}

/// Refuses to write into the checkpoint itself, or over a non-empty directory without
/// `overwrite`; nothing is read or written before this passes.
fn check_destination(checkpoint: &Checkpoint, out: &Path, overwrite: bool) -> Result<()> {
    let bad = |reason: &str| TrainError::Export {
        path: out.to_path_buf(),
        reason: reason.to_string(),
    };
    // Absolute, symbolic links resolved: the directory itself where it exists, else its parent.
    let resolve = |path: &Path| {
        path.canonicalize().ok().or_else(|| {
            let absolute = std::path::absolute(path).ok()?;
            Some(
                absolute
                    .parent()?
                    .canonicalize()
                    .ok()?
                    .join(absolute.file_name()?),
            )
        })
    };
    let (Some(target), Some(source)) = (resolve(out), resolve(&checkpoint.dir)) else {
        return Err(bad("cannot resolve the path"));
    };
    if source.starts_with(&target) || target.starts_with(&source) {
        return Err(bad(
            "is, holds or lies inside the checkpoint being exported: choose another --out",
        ));
    }
    if out.exists() && !out.is_dir() {
        return Err(bad("exists and is not a directory"));
    }
    let occupied = fs::read_dir(out)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if occupied && !overwrite {
        return Err(bad(
            "is not empty: choose another --out, or --overwrite to replace an earlier export",
        ));
    }
    // --overwrite deletes the directory: only an earlier export, never a folder of other files.
    if occupied && !out.join(EXPORT_INFO).is_file() {
        return Err(bad(&format!(
            "is not empty and holds no {EXPORT_INFO}, so it is not an earlier export: \
             --overwrite replaces only those; choose another --out"
        )));
    }
    Ok(())
}

/// The encoder's tensors (every name not under `classifier.`) and the head's.
fn split_head(
    tensors: HashMap<String, Tensor>,
) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    tensors.into_iter().partition(|(name, _)| !is_head(name))
}

fn truncation_words(side: TruncationSide, head_tokens: usize) -> String {
    match side {
        TruncationSide::Head => "the first tokens".to_string(),
        TruncationSide::Tail => "the last tokens".to_string(),
        TruncationSide::HeadTail => format!("the first {head_tokens} tokens and the last ones"),
    }
}

/// `config.json` for transformers' `AutoModel`: the encoder's shape under transformers' own
/// names, and the label names.
pub(crate) fn transformers_config(bert: &BertConfig, labels: &[String]) -> Value {
    let hidden_act = match bert.hidden_act {
        HiddenAct::Gelu => "gelu",
        // The tanh approximation, transformers' `NewGELUActivation`.
        HiddenAct::GeluApproximate => "gelu_new",
        HiddenAct::Relu => "relu",
    };
    let id2label: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| (i.to_string(), json!(label)))
        .collect();
    let label2id: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| (label.clone(), json!(i)))
        .collect();
    let mut config = json!({
        "vocab_size": bert.vocab_size,
        "hidden_size": bert.hidden_size,
        "num_hidden_layers": bert.num_hidden_layers,
        "num_attention_heads": bert.num_attention_heads,
        "intermediate_size": bert.intermediate_size,
        "hidden_act": hidden_act,
        "hidden_dropout_prob": bert.hidden_dropout_prob,
        "attention_probs_dropout_prob": bert.attention_probs_dropout_prob,
        "max_position_embeddings": bert.max_position_embeddings,
        "initializer_range": bert.initializer_range,
        "layer_norm_eps": bert.layer_norm_eps,
        "pad_token_id": bert.pad_token_id,
        "id2label": id2label,
        "label2id": label2id,
    });
    let (roberta_name, roberta_class) = match bert.model_type {
        ModelType::XlmRoberta => ("xlm-roberta", "XLMRobertaModel"),
        _ => ("roberta", "RobertaModel"),
    };
    let extra = match bert.model_type {
        ModelType::Bert => json!({
            "model_type": "bert",
            "architectures": ["BertModel"],
            "type_vocab_size": bert.type_vocab_size,
            "position_embedding_type": "absolute",
        }),
        ModelType::Mpnet => json!({
            "model_type": "mpnet",
            "architectures": ["MPNetModel"],
            "relative_attention_num_buckets": bert.relative_attention_num_buckets,
        }),
        ModelType::Roberta | ModelType::XlmRoberta => json!({
            "model_type": roberta_name,
            "architectures": [roberta_class],
            "type_vocab_size": bert.type_vocab_size,
            "position_embedding_type": "absolute",
        }),
        ModelType::Electra => json!({
            "model_type": "electra",
            "architectures": ["ElectraModel"],
            "type_vocab_size": bert.type_vocab_size,
            "embedding_size": bert.embedding_width(),
            "position_embedding_type": "absolute",
        }),
        ModelType::DistilBert => json!({
            "model_type": "distilbert",
            "architectures": ["DistilBertModel"],
            "sinusoidal_pos_embds": false,
        }),
    };
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
        if bert.model_type == ModelType::DistilBert {
            // DistilBERT's config speaks its own names (`dim`, `n_layers`, ...).
            for (theirs, ours) in wick_model::config::DISTILBERT_NAMES {
                if let Some(value) = config.remove(ours) {
                    config.insert(theirs.into(), value);
                }
            }
        }
    }
    config
}

/// `tokenizer_config.json`: the class transformers builds around `tokenizer.json`, and the
/// family's special tokens, each checked to be in the tokenizer's vocabulary.
fn tokenizer_config(checkpoint: &Checkpoint) -> Result<Value> {
    // The special tokens of WordPiece vocabularies (BERT, DistilBERT, ELECTRA).
    let word_piece = [
        ("cls_token", "[CLS]"),
        ("sep_token", "[SEP]"),
        ("pad_token", "[PAD]"),
        ("unk_token", "[UNK]"),
        ("mask_token", "[MASK]"),
    ];
    // RoBERTa's, which XLM-RoBERTa's SentencePiece vocabulary shares.
    let roberta = [
        ("cls_token", "<s>"),
        ("sep_token", "</s>"),
        ("pad_token", "<pad>"),
        ("unk_token", "<unk>"),
        ("mask_token", "<mask>"),
    ];
    let (class, tokens): (&str, [(&str, &str); 5]) = match checkpoint.bert.model_type {
        ModelType::Bert => ("BertTokenizer", word_piece),
        ModelType::DistilBert => ("DistilBertTokenizer", word_piece),
        ModelType::Electra => ("ElectraTokenizer", word_piece),
        ModelType::Mpnet => (
            "MPNetTokenizer",
            [
                ("cls_token", "<s>"),
                ("sep_token", "</s>"),
                ("pad_token", "<pad>"),
                ("unk_token", "[UNK]"),
                ("mask_token", "<mask>"),
            ],
        ),
        ModelType::Roberta => ("RobertaTokenizer", roberta),
        ModelType::XlmRoberta => ("XLMRobertaTokenizer", roberta),
    };
    let tokenizer = wick_data::TextTokenizer::from_file(
        &checkpoint.tokenizer(),
        checkpoint.config.data.max_len,
    )?;
    let mut config = serde_json::Map::new();
    config.insert("tokenizer_class".into(), json!(class));
    config.insert(
        "model_max_length".into(),
        json!(checkpoint.config.data.max_len),
    );
    for (key, token) in tokens {
        if tokenizer.token_id(token).is_none() {
            return Err(bad(
                &checkpoint.dir,
                format!(
                    "{}: the {} family's {key} {token:?} is not in the vocabulary",
                    checkpoint::TOKENIZER,
                    class.trim_end_matches("Tokenizer")
                ),
            ));
        }
        config.insert(key.into(), json!(token));
    }
    Ok(Value::Object(config))
}

/// `wick_export.json`: what a Python caller needs to use the outputs as wick does.
fn export_info(checkpoint: &Checkpoint, temperature: Option<f64>, notes: &[String]) -> Value {
    let data = &checkpoint.config.data;
    let provenance = &checkpoint.provenance;
    json!({
        "labels": checkpoint.labels,
        "task": if data.multi_label { "multi_label" } else { "single_label" },
        "outputs": if data.multi_label {
            "logits: sigmoid of each gives that label's probability"
        } else {
            "logits: their softmax gives the label probabilities"
        },
        "text_fields": data.text_fields,
        "text_separator": data.text_separator,
        "clean": data.clean,
        "max_len": data.max_len,
        "truncation": truncation_words(data.truncation, data.head_tokens),
        "truncation_module": data.truncation != TruncationSide::Head,
        "temperature_folded": temperature,
        "checkpoint": checkpoint.dir,
        "step": checkpoint.state.step,
        "base_model": provenance.model_id,
        "base_revision": provenance.revision,
        "base_commit": provenance.commit,
        "wick_version": provenance.wick_version,
        "metrics": checkpoint.metrics,
        "notes": notes,
    })
}

fn model_card(checkpoint: &Checkpoint, info: &Value) -> String {
    let data = &checkpoint.config.data;
    let labels = checkpoint.labels.join(", ");
    let base = &checkpoint.provenance.model_id;
    let fields = data
        .text_fields
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let to_probs = if data.multi_label {
        "probs = torch.sigmoid(logits)"
    } else {
        "probs = torch.softmax(logits, dim=-1)"
    };
    let metrics = match &checkpoint.metrics {
        Some(m) => format!(
            "Validation metrics of this checkpoint (step {}):\n\n```json\n{}\n```\n",
            checkpoint.state.step,
            serde_json::to_string_pretty(m).unwrap_or_default()
        ),
        None => "The checkpoint holds no validation metrics.\n".to_string(),
    };
    let temperature = match info["temperature_folded"].as_f64() {
        Some(t) => format!(
            "The fitted temperature T = {t:.4} is folded into the Dense layer: the outputs are \
             the logits divided by T, so their probabilities are the calibrated ones.\n"
        ),
        None => String::new(),
    };
    let truncation = if info["truncation_module"].as_bool() == Some(true) {
        format!(
            "Texts over {max_len} tokens are cut as in training ({}): the first module is \
             `wick_transformer.WickTransformer` from `wick_transformer.py` in this directory, \
             so load the model with `SentenceTransformer(path, trust_remote_code=True)` \
             (sentence-transformers 3.4.1 loads it from a local directory without).\n\n",
            info["truncation"].as_str().unwrap_or_default(),
            max_len = data.max_len
        )
    } else {
        String::new()
    };
    let notes: String = checkpoint_notes(info);
    format!(
        "---\nlibrary_name: sentence-transformers\nbase_model: {base}\npipeline_tag: \
         text-classification\ntags:\n- wick\n- text-classification\n---\n\n\
         # Text classifier ({labels})\n\n\
         Fine-tuned from `{base}` with wick (step {step} of `{dir}`): the encoder, mean pooling \
         over the attention mask, and a linear head whose outputs are the logits of the labels \
         {labels}, in that order.\n\n\
         A row becomes text as in training: its non-empty fields {fields} joined by \
         `{sep:?}`; at most {max_len} tokens.\n\n{truncation}{temperature}\n\
         ```python\nimport torch\nfrom sentence_transformers import SentenceTransformer\n\n\
         model = SentenceTransformer(\"path/to/this/directory\"{remote})\n\
         logits = model.encode([\"text to label\"], convert_to_tensor=True)\n\
         {to_probs}\nlabels = model[0].auto_model.config.id2label\n```\n\n\
         The encoder alone loads with `transformers.AutoModel.from_pretrained`.{pooler}\n\n\
         {metrics}{notes}",
        step = checkpoint.state.step,
        dir = checkpoint.dir.display(),
        remote = if info["truncation_module"].as_bool() == Some(true) {
            ", trust_remote_code=True"
        } else {
            ""
        },
        sep = data.text_separator,
        max_len = data.max_len,
        pooler = if checkpoint.bert.model_type == ModelType::DistilBert {
            ""
        } else {
            " It has no pooler weights (wick's classifier does not use them), so transformers \
             warns that the pooler is newly initialized; sentence-transformers never calls it."
        },
    )
}

fn checkpoint_notes(info: &Value) -> String {
    let notes: Vec<&str> = info["notes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if notes.is_empty() {
        return String::new();
    }
    let list: String = notes.iter().map(|n| format!("- {n}\n")).collect();
    format!("\nDifferences from the checkpoint in wick:\n\n{list}")
}

fn list_files(root: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(TrainError::io(&dir))? {
            let path = entry.map_err(TrainError::io(&dir))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                files.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_split_from_the_encoder_by_name() {
        let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let tensors = HashMap::from([
            ("classifier.weight".to_string(), t.clone()),
            ("classifier.bias".to_string(), t.clone()),
            ("encoder.layer.0.output.dense.weight".to_string(), t.clone()),
            ("embeddings.word_embeddings.weight".to_string(), t),
        ]);
        let (encoder, head) = split_head(tensors);
        let mut encoder: Vec<_> = encoder.into_keys().collect();
        let mut head: Vec<_> = head.into_keys().collect();
        encoder.sort();
        head.sort();
        assert_eq!(
            encoder,
            [
                "embeddings.word_embeddings.weight",
                "encoder.layer.0.output.dense.weight"
            ]
        );
        assert_eq!(head, ["classifier.bias", "classifier.weight"]);
    }

    /// transformers' names: the family's class and fields, its activation names, the labels.
    #[test]
    fn the_config_speaks_transformers() {
        let labels = ["bug".to_string(), "feature".to_string()];
        let mut bert = BertConfig::tiny(100);
        bert.hidden_act = HiddenAct::GeluApproximate;
        let config = transformers_config(&bert, &labels);
        assert_eq!(config["model_type"], "bert");
        assert_eq!(config["architectures"], json!(["BertModel"]));
        assert_eq!(config["hidden_act"], "gelu_new");
        assert_eq!(config["type_vocab_size"], 2);
        assert_eq!(config["id2label"], json!({"0": "bug", "1": "feature"}));
        assert_eq!(config["label2id"], json!({"bug": 0, "feature": 1}));
        assert!(config.get("relative_attention_num_buckets").is_none());
        // wick reads it back as the same encoder.
        let back: BertConfig = serde_json::from_value(config).unwrap();
        assert_eq!(back, bert);

        bert.model_type = ModelType::Mpnet;
        bert.pad_token_id = 1;
        bert.hidden_act = HiddenAct::Gelu;
        let config = transformers_config(&bert, &labels);
        assert_eq!(config["model_type"], "mpnet");
        assert_eq!(config["architectures"], json!(["MPNetModel"]));
        assert_eq!(config["hidden_act"], "gelu");
        assert_eq!(config["relative_attention_num_buckets"], 32);
        assert_eq!(config["pad_token_id"], 1);
        assert!(config.get("type_vocab_size").is_none());
        let back: BertConfig = serde_json::from_value(config).unwrap();
        assert_eq!(back.model_type, ModelType::Mpnet);
        assert_eq!(back.relative_attention_num_buckets, 32);

        bert.model_type = ModelType::Roberta;
        bert.type_vocab_size = 1;
        let config = transformers_config(&bert, &labels);
        assert_eq!(config["model_type"], "roberta");
        assert_eq!(config["architectures"], json!(["RobertaModel"]));
        assert_eq!(config["type_vocab_size"], 1);
        assert_eq!(config["pad_token_id"], 1);
        let back: BertConfig = serde_json::from_value(config).unwrap();
        assert_eq!(back.model_type, ModelType::Roberta);
        assert_eq!(back.type_vocab_size, 1);
        bert.model_type = ModelType::XlmRoberta;
        let config = transformers_config(&bert, &labels);
        assert_eq!(config["model_type"], "xlm-roberta");
        assert_eq!(config["architectures"], json!(["XLMRobertaModel"]));
        assert_eq!(BertConfig::from_json(config).unwrap(), bert);

        bert.model_type = ModelType::DistilBert;
        bert.pad_token_id = 0;
        bert.type_vocab_size = 2; // no token types: the field keeps its default
        let config = transformers_config(&bert, &labels);
        assert_eq!(config["model_type"], "distilbert");
        assert_eq!(config["architectures"], json!(["DistilBertModel"]));
        assert_eq!(
            (&config["dim"], &config["n_layers"], &config["n_heads"]),
            (&json!(32), &json!(2), &json!(4))
        );
        assert_eq!(
            (&config["hidden_dim"], &config["activation"]),
            (&json!(64), &json!("gelu"))
        );
        assert!(config.get("hidden_size").is_none());
        assert_eq!(BertConfig::from_json(config).unwrap(), bert);

        bert.model_type = ModelType::Electra;
        bert.embedding_size = Some(16);
        let config = transformers_config(&bert, &labels);
        assert_eq!(config["model_type"], "electra");
        assert_eq!(config["architectures"], json!(["ElectraModel"]));
        assert_eq!(
            (&config["embedding_size"], &config["hidden_size"]),
            (&json!(16), &json!(32))
        );
        assert_eq!(BertConfig::from_json(config).unwrap(), bert);
    }
}
