//! The run configuration: one TOML file deserialized into one struct tree, with `--set` overrides,
//! unknown keys rejected by name and every value validated before a tensor is allocated.
//! The resolved config is written into the run directory and every checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wick_data::DataConfig;
use wick_model::hub::ModelSource;
use wick_model::{BertConfig, LoraConfig};

use crate::error::{Result, TrainError};
use crate::schedule::Decay;

/// The whole run: `[data]`, `[model]`, `[train]`, `[eval]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

/// How the encoder's variables start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// The model's pretrained weights (the point of fine-tuning).
    #[default]
    Pretrained,
    /// Seeded random weights of the model's shape (speed runs, tests).
    Random,
}

/// `[model]`: which encoder, and the classifier around it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Hugging Face Hub id, e.g. `sentence-transformers/all-MiniLM-L6-v2` (or use `path`).
    #[serde(default)]
    pub id: Option<String>,
    /// Hub branch, tag or commit.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// A local directory with config.json, tokenizer.json and model.safetensors (takes
    /// precedence over `id`).
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    #[serde(default)]
    pub init: Init,
    /// Overrides the checkpoint's `hidden_dropout_prob`.
    #[serde(default)]
    pub hidden_dropout: Option<f64>,
    /// Overrides the checkpoint's `attention_probs_dropout_prob`.
    #[serde(default)]
    pub attention_dropout: Option<f64>,
    /// Dropout before the head; defaults to the hidden dropout.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Shape overrides for `init = "random"` (tiny test models, speed runs): layers, width,
    /// heads and feed-forward width. The tokenizer and vocabulary stay the model's.
    #[serde(default)]
    pub layers: Option<usize>,
    #[serde(default)]
    pub hidden_size: Option<usize>,
    #[serde(default)]
    pub heads: Option<usize>,
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// LoRA adapters (`[model.lora]`, rank 0: off): the encoder stays frozen and only the
    /// adapters and the head train.
    #[serde(default)]
    pub lora: LoraConfig,
}

fn default_revision() -> String {
    "main".to_string()
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            id: Some(wick_model::hub::DEFAULT_MODEL_ID.to_string()),
            revision: default_revision(),
            path: None,
            init: Init::default(),
            hidden_dropout: None,
            attention_dropout: None,
            classifier_dropout: None,
            layers: None,
            hidden_size: None,
            heads: None,
            intermediate_size: None,
            lora: LoraConfig::default(),
        }
    }
}

impl ModelConfig {
    /// Where the encoder comes from; a local `path` takes precedence over `id`, so
    /// `--set model.path=DIR` works on any config.
    pub fn source(&self) -> ModelSource {
        ModelSource {
            id: if self.path.is_some() {
                None
            } else {
                self.id.clone()
            },
            revision: self.revision.clone(),
            path: self.path.clone(),
        }
    }

    /// The encoder config with this section's dropout and shape overrides applied.
    pub fn apply(&self, mut bert: BertConfig) -> BertConfig {
        bert.num_hidden_layers = self.layers.unwrap_or(bert.num_hidden_layers);
        bert.hidden_size = self.hidden_size.unwrap_or(bert.hidden_size);
        bert.num_attention_heads = self.heads.unwrap_or(bert.num_attention_heads);
        bert.intermediate_size = self.intermediate_size.unwrap_or(bert.intermediate_size);
        if let Some(p) = self.hidden_dropout {
            bert.hidden_dropout_prob = p;
        }
        if let Some(p) = self.attention_dropout {
            bert.attention_probs_dropout_prob = p;
        }
        bert
    }

    pub fn head_dropout(&self, bert: &BertConfig) -> f64 {
        self.classifier_dropout.unwrap_or(bert.hidden_dropout_prob)
    }
}

/// Numeric precision of the forward and backward passes (master weights stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
            Self::F16 => candle_core::DType::F16,
        }
    }
}

/// Per-class loss weights: explicit numbers in label order, or `"balanced"`
/// (`n_examples / (n_classes * count[c])`, scikit-learn's rule).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ClassWeights {
    Explicit(Vec<f64>),
    Rule(WeightRule),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightRule {
    Balanced,
}

/// `[train]`: optimisation and the loop.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Stop after this many optimizer steps (0: run all epochs).
    pub max_steps: usize,
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum_steps: usize,
    /// Peak learning rate of the encoder (and of the head unless `head_lr` is set).
    pub lr: f64,
    pub head_lr: Option<f64>,
    /// Layer-wise learning-rate decay (ELECTRA's, ULMFiT's discriminative rates): the top
    /// encoder layer learns at `lr`, each layer below at this factor times the one above, the
    /// embeddings (and MPNet's shared position bias) one step below the lowest layer. 1: off.
    pub layer_lr_decay: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Fraction of all optimizer steps spent warming up (ignored when `warmup_steps` is set).
    pub warmup_ratio: f64,
    pub warmup_steps: Option<usize>,
    pub decay: Decay,
    /// Global gradient-norm clipping threshold (0: off).
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Train only the head.
    pub freeze_encoder: bool,
    pub label_smoothing: f64,
    /// Exponential moving average of the weights ([`crate::ema`]): evaluation and checkpoints
    /// use the average, with this decay per optimizer step (0: off).
    pub ema_decay: f64,
    /// `λ` of the supervised contrastive term on the pooled embeddings: the objective becomes
    /// `(1 - λ) * cross_entropy + λ * supcon` (0: off; single-label only).
    pub contrastive_weight: f64,
    /// Temperature of the contrastive term.
    pub contrastive_temperature: f64,
    /// R-Drop's `α`: each micro-batch goes through the model twice with independent dropout
    /// masks, and `α / 2` times the symmetric KL divergence of the two predictions joins the
    /// objective (0: off; needs dropout; twice the compute and activation memory per step).
    pub rdrop_weight: f64,
    /// Knowledge distillation (Hinton et al. 2015): checkpoints (run directories or checkpoint
    /// directories, any encoder, averaged as an ensemble) whose probabilities on the training
    /// rows, at `distill_temperature`, the model also learns: the objective becomes `(1 - λ) *
    /// objective + λ * T^2 KL(teacher || student)`. Empty: off. Single-label only.
    pub distill_from: Vec<PathBuf>,
    /// `λ` of the distillation term, in `(0, 1]` (1: the teacher's probabilities alone).
    pub distill_weight: f64,
    /// `T` of the distillation term: teacher and student probabilities are taken at it.
    pub distill_temperature: f64,
    /// Each training row is labelled only by the teachers that did not train on it (found again
    /// from each teacher's config and seeded split, as `evaluate` finds its validation rows):
    /// with the K runs of `data.folds = K`, `data.fold = 0..K-1` as teachers, every row gets the
    /// probabilities of the one run that held it out, not the near one-hot ones of runs that
    /// learnt it. A row that every teacher trained on is an error.
    pub distill_out_of_fold: bool,
    /// Gradient checkpointing: keep each encoder layer's input instead of its activations and
    /// recompute them in backward (Hugging Face's `gradient_checkpointing`): activation memory
    /// of about one layer, for about one more forward pass of compute per step.
    pub gradient_checkpointing: bool,
    pub class_weights: Option<ClassWeights>,
    /// Read loss and grad norm from the device every this many optimizer steps.
    pub log_every: usize,
    /// Write `last/` every this many optimizer steps (0: only at the end of each epoch).
    pub checkpoint_every: usize,
    /// How many `checkpoint-<step>/` directories to keep besides `last/` and `best/` (0: none).
    pub keep_last: usize,
    /// Write the AdamW moments (twice the weights' size) into every checkpoint, so a run can
    /// resume from it. false: weights only (Hugging Face's `save_only_model`), for evaluation,
    /// prediction and ensembles of large models; resuming from such a checkpoint is refused.
    pub save_optimizer: bool,
    pub precision: Precision,
    /// Shuffle the training order every epoch (seeded).
    pub shuffle: bool,
    /// Also write the metrics as TensorBoard event files in `<run>/tensorboard/`
    /// (`tensorboard --logdir runs/`).
    pub tensorboard: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            max_steps: 0,
            batch_size: 16,
            grad_accum_steps: 1,
            lr: 5e-5,
            head_lr: None,
            layer_lr_decay: 1.0,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_ratio: 0.1,
            warmup_steps: None,
            decay: Decay::Linear,
            max_grad_norm: 1.0,
            seed: 42,
            freeze_encoder: false,
            label_smoothing: 0.0,
            ema_decay: 0.0,
            contrastive_weight: 0.0,
            contrastive_temperature: 0.3,
            rdrop_weight: 0.0,
            distill_from: Vec::new(),
            distill_weight: 0.5,
            distill_temperature: 2.0,
            distill_out_of_fold: false,
            gradient_checkpointing: false,
            class_weights: None,
            log_every: 10,
            checkpoint_every: 0,
            keep_last: 1,
            save_optimizer: true,
            precision: Precision::F32,
            shuffle: true,
            tensorboard: false,
        }
    }
}

/// `[eval]`: when and how the validation split is scored.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many optimizer steps (0: off).
    pub every_steps: usize,
    /// Evaluate at the end of every epoch.
    pub every_epoch: bool,
    /// The metric that picks `best/` and drives early stopping: `macro_f1`, `accuracy`, `loss`
    /// or `f1:<label>`.
    pub metric: String,
    /// Stop after this many evaluations without improvement (0: never stop early).
    pub patience: usize,
    /// Evaluation batch size (0: twice the training batch).
    pub batch_size: usize,
    /// Fit a temperature to the validation predictions at every evaluation (temperature
    /// scaling) and store it in the checkpoints of that step, so `evaluate` and `predict` give
    /// calibrated probabilities. Accuracy and F1 do not change.
    pub calibrate: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every_steps: 0,
            every_epoch: true,
            metric: "macro_f1".to_string(),
            patience: 0,
            batch_size: 0,
            calibrate: false,
        }
    }
}

impl RunConfig {
    /// The seed of the held-out validation split: `data.split_seed`, else `train.seed`.
    pub fn split_seed(&self) -> u64 {
        self.data.split_seed.unwrap_or(self.train.seed)
    }

    /// Reads a TOML config, applies `key=value` overrides (dotted keys, TOML-typed values; a
    /// value that is not valid TOML is taken as a string) and deserializes it.
    ///
    /// A config may start from another: `extends = "base.toml"` (relative to the file that
    /// names it) reads that file first, then this one's keys over it, table by table, so a
    /// variant states only what it changes. Bases may extend further; a cycle is an error.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let mut chain = Vec::new();
        let mut bases = Vec::new();
        let table = read_extended(path, &mut chain, &mut bases)?;
        // A key's error may come from a base: name them all.
        let origin = if bases.is_empty() {
            path.display().to_string()
        } else {
            let bases: Vec<String> = bases.iter().map(|b| b.display().to_string()).collect();
            format!("{} (extending {})", path.display(), bases.join(", then "))
        };
        Self::from_table(table, &origin, overrides)
    }

    /// As [`RunConfig::load`], from text; `origin` names the source in errors. `extends` needs
    /// a file to be relative to, so it is refused here.
    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).map_err(|e| TrainError::ConfigFile {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        if table.contains_key(EXTENDS) {
            return Err(TrainError::ConfigFile {
                path: origin.to_string(),
                reason: format!("`{EXTENDS}` is only read from a config file (RunConfig::load)"),
            });
        }
        Self::from_table(table, origin, overrides)
    }

    fn from_table(mut table: toml::Table, origin: &str, overrides: &[String]) -> Result<Self> {
        let file_error = |reason: String| TrainError::ConfigFile {
            path: origin.to_string(),
            reason,
        };
        for spec in overrides {
            apply_override(&mut table, spec)?;
        }
        // Round-trip through text so errors carry toml's key path and position.
        let merged = toml::to_string(&table).map_err(|e| file_error(e.to_string()))?;
        let origin = if overrides.is_empty() {
            origin.to_string()
        } else {
            format!("{origin} (with --set {})", overrides.join(", "))
        };
        toml::from_str(&merged).map_err(|e| TrainError::ConfigFile {
            path: origin,
            reason: e.to_string(),
        })
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| TrainError::config("(whole config)", e.to_string()))
    }

    /// Checks every value that can be checked without the model's files.
    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        let t = &self.train;
        let positive = |key: &str, ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(TrainError::config(key, what.to_string()))
            }
        };
        positive("train.batch_size", t.batch_size > 0, "must be > 0")?;
        positive(
            "train.grad_accum_steps",
            t.grad_accum_steps > 0,
            "must be > 0",
        )?;
        positive(
            "train.epochs",
            t.epochs > 0 || t.max_steps > 0,
            "train.epochs or train.max_steps must be > 0",
        )?;
        positive(
            "train.lr",
            t.lr > 0.0 && t.lr.is_finite(),
            "must be a positive number",
        )?;
        if let Some(lr) = t.head_lr {
            positive(
                "train.head_lr",
                lr > 0.0 && lr.is_finite(),
                "must be a positive number",
            )?;
        }
        positive(
            "train.layer_lr_decay",
            t.layer_lr_decay > 0.0 && t.layer_lr_decay <= 1.0,
            "must be in (0, 1] (1 turns it off)",
        )?;
        positive("train.weight_decay", t.weight_decay >= 0.0, "must be >= 0")?;
        positive(
            "train.beta1",
            (0.0..1.0).contains(&t.beta1),
            "must be in [0, 1)",
        )?;
        positive(
            "train.beta2",
            (0.0..1.0).contains(&t.beta2),
            "must be in [0, 1)",
        )?;
        positive("train.eps", t.eps > 0.0, "must be > 0")?;
        positive(
            "train.warmup_ratio",
            (0.0..=1.0).contains(&t.warmup_ratio),
            "must be in [0, 1]",
        )?;
        positive(
            "train.max_grad_norm",
            t.max_grad_norm >= 0.0,
            "must be >= 0 (0 turns clipping off)",
        )?;
        positive(
            "train.label_smoothing",
            (0.0..1.0).contains(&t.label_smoothing),
            "must be in [0, 1)",
        )?;
        positive(
            "train.ema_decay",
            (0.0..1.0).contains(&t.ema_decay),
            "must be in [0, 1) (0 turns the weight average off)",
        )?;
        positive(
            "train.contrastive_weight",
            (0.0..1.0).contains(&t.contrastive_weight),
            "must be in [0, 1) (0 turns the contrastive term off)",
        )?;
        positive(
            "train.contrastive_temperature",
            t.contrastive_temperature > 0.0 && t.contrastive_temperature.is_finite(),
            "must be > 0",
        )?;
        positive(
            "train.rdrop_weight",
            t.rdrop_weight >= 0.0 && t.rdrop_weight.is_finite(),
            "must be >= 0 (0 turns R-Drop off)",
        )?;
        positive("train.log_every", t.log_every > 0, "must be > 0")?;
        if !t.distill_from.is_empty() {
            positive(
                "train.distill_weight",
                t.distill_weight > 0.0 && t.distill_weight <= 1.0,
                "must be in (0, 1] (an empty train.distill_from turns distillation off)",
            )?;
            positive(
                "train.distill_temperature",
                t.distill_temperature > 0.0 && t.distill_temperature.is_finite(),
                "must be > 0",
            )?;
            positive(
                "train.distill_from",
                !self.data.multi_label,
                "applies to single-label data only",
            )?;
            positive(
                "train.distill_from",
                self.data.augment.is_empty(),
                "is not taken with data.augment: the teachers label the training file's rows, \
                 not the variants of them",
            )?;
        } else if t.distill_out_of_fold {
            return Err(TrainError::config(
                "train.distill_out_of_fold",
                "needs teachers in train.distill_from",
            ));
        }
        if t.label_smoothing > 0.0 && self.data.multi_label {
            return Err(TrainError::config(
                "train.label_smoothing",
                "applies to single-label data only",
            ));
        }
        if t.contrastive_weight > 0.0 {
            let refuse = |why: &str| Err(TrainError::config("train.contrastive_weight", why));
            if self.data.multi_label {
                return refuse(
                    "applies to single-label data only \
                     (its positives are the examples of the same class)",
                );
            }
            if t.freeze_encoder {
                return refuse(
                    "needs the encoder to train: with train.freeze_encoder \
                     the pooled embeddings it acts on are fixed",
                );
            }
            if t.batch_size < 2 {
                return refuse(
                    "needs train.batch_size >= 2: it compares the examples of each micro-batch",
                );
            }
        }
        if t.gradient_checkpointing && t.freeze_encoder {
            return Err(TrainError::config(
                "train.gradient_checkpointing",
                "recomputes the encoder's activations for its backward pass, and with \
                 train.freeze_encoder there is none",
            ));
        }
        let lora = &self.model.lora;
        if lora.enabled() {
            positive(
                "model.lora.alpha",
                lora.alpha > 0.0 && lora.alpha.is_finite(),
                "must be > 0",
            )?;
            if lora.targets.is_empty() {
                return Err(TrainError::config(
                    "model.lora.targets",
                    format!(
                        "is empty: name at least one of {}",
                        wick_model::LoraTarget::ALL.map(|t| t.name()).join(", ")
                    ),
                ));
            }
            if let Some(twice) = lora
                .targets
                .iter()
                .enumerate()
                .find(|(i, t)| lora.targets[..*i].contains(t))
            {
                return Err(TrainError::config(
                    "model.lora.targets",
                    format!("names `{}` twice", twice.1.name()),
                ));
            }
            if t.freeze_encoder {
                return Err(TrainError::config(
                    "model.lora.rank",
                    "trains adapters inside the encoder, and train.freeze_encoder stops \
                     backward before the encoder: use one or the other",
                ));
            }
        }
        if let Some(ClassWeights::Explicit(weights)) = &t.class_weights {
            if weights.len() != self.data.labels.len() {
                return Err(TrainError::config(
                    "train.class_weights",
                    format!(
                        "has {} weights for {} labels",
                        weights.len(),
                        self.data.labels.len()
                    ),
                ));
            }
            positive(
                "train.class_weights",
                weights.iter().all(|w| *w > 0.0),
                "weights must be > 0",
            )?;
        }
        for (key, p) in [
            ("model.hidden_dropout", self.model.hidden_dropout),
            ("model.attention_dropout", self.model.attention_dropout),
            ("model.classifier_dropout", self.model.classifier_dropout),
        ] {
            if let Some(p) = p {
                positive(key, (0.0..1.0).contains(&p), "must be in [0, 1)")?;
            }
        }
        let metric = self.eval.metric.as_str();
        let known_metric = matches!(metric, "macro_f1" | "accuracy" | "loss")
            || metric
                .strip_prefix("f1:")
                .is_some_and(|label| self.data.labels.iter().any(|l| l == label));
        if !known_metric {
            return Err(TrainError::config(
                "eval.metric",
                format!(
                    "`{metric}` is not one of macro_f1, accuracy, loss, f1:<label> (labels: {})",
                    self.data.labels.join(", ")
                ),
            ));
        }
        if self.eval.calibrate && !self.data.has_validation() {
            return Err(TrainError::config(
                "eval.calibrate",
                "fits a temperature on validation data, but the run has none: set data.valid, \
                 data.valid_fraction above 0 or data.folds",
            ));
        }
        let m = &self.model;
        let shaped = m
            .layers
            .or(m.hidden_size)
            .or(m.heads)
            .or(m.intermediate_size)
            .is_some();
        if shaped && m.init != Init::Random {
            return Err(TrainError::config(
                "model.layers/hidden_size/heads/intermediate_size",
                "shape overrides need model.init = \"random\" (pretrained weights have a fixed shape)",
            ));
        }
        if let (Some(h), Some(n)) = (m.hidden_size, m.heads) {
            positive(
                "model.heads",
                n > 0 && h % n == 0,
                "must divide model.hidden_size",
            )?;
        }
        self.model.source().validate()?;
        Ok(())
    }

    /// Checks the values that depend on the encoder's `config.json`.
    pub fn validate_against(&self, bert: &BertConfig) -> Result<()> {
        if self.data.max_len > bert.max_tokens() {
            return Err(TrainError::config(
                "data.max_len",
                format!(
                    "{} exceeds the {} tokens the model's position table covers \
                     (max_position_embeddings {})",
                    self.data.max_len,
                    bert.max_tokens(),
                    bert.max_position_embeddings
                ),
            ));
        }
        let no_dropout = bert.hidden_dropout_prob == 0.0
            && bert.attention_probs_dropout_prob == 0.0
            && self.model.head_dropout(bert) == 0.0;
        if self.train.rdrop_weight > 0.0 && no_dropout {
            return Err(TrainError::config(
                "train.rdrop_weight",
                "needs dropout, and this model has none: the hidden, attention and head \
                 dropout (model.hidden_dropout, model.attention_dropout, \
                 model.classifier_dropout) are all 0, so its two passes would be identical",
            ));
        }
        Ok(())
    }
}

/// The key by which a config file names the config it starts from.
const EXTENDS: &str = "extends";

/// Reads a config file as a table, with its `extends` chain merged under it. `chain` holds the
/// files being read, outermost first, to refuse a cycle; `bases` gets every base read, nearest
/// first.
fn read_extended(
    path: &Path,
    chain: &mut Vec<PathBuf>,
    bases: &mut Vec<PathBuf>,
) -> Result<toml::Table> {
    let file_error = |reason: String| TrainError::ConfigFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
    let Some(base) = table.remove(EXTENDS) else {
        return Ok(table);
    };
    let base = base.as_str().ok_or_else(|| {
        file_error(format!(
            "`{EXTENDS}` must be a string: the path of the config this one starts from"
        ))
    })?;
    let base_path = path.parent().unwrap_or(Path::new("")).join(base);
    // Compare files, not spellings: `a.toml` and `./a.toml` are one file.
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if chain.contains(&key) {
        let names: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
        return Err(file_error(format!(
            "`{EXTENDS}` forms a cycle: {} -> {}",
            names.join(" -> "),
            key.display()
        )));
    }
    chain.push(key);
    if !base_path.is_file() {
        return Err(file_error(format!(
            "`{EXTENDS} = \"{base}\"`: no file {}",
            base_path.display()
        )));
    }
    bases.push(base_path.clone());
    let mut merged = read_extended(&base_path, chain, bases)?;
    chain.pop();
    merge_into(&mut merged, table);
    Ok(merged)
}

/// Puts `over`'s keys into `base`: tables merge key by key, any other value (arrays included)
/// replaces the base's.
fn merge_into(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge_into(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets `a.b.c = value` in a TOML table. The value is parsed as TOML (`3`, `2e-5`, `true`,
/// `"text"`, `[1, 2]`); anything that does not parse is taken as a bare string, so
/// `data.train=data/x.jsonl` works without quotes. An inline table merges into the table there,
/// key by key, as `extends` merges: `data={text_fields=["title"], pair_fields=["body"]}` sets two
/// keys of `[data]` and keeps the others (so one sweep axis can move keys together).
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| TrainError::config(spec, "an override must look like key=value"))?;
    let key = key.trim();
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut parsed) => parsed
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::config(key, "empty segment in dotted key"));
    }
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| TrainError::config(key, "empty key"))?;
    let mut node = table;
    for part in parents {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| TrainError::config(key, format!("`{part}` is not a table")))?;
    }
    match (node.get_mut(*last), value) {
        (Some(toml::Value::Table(there)), toml::Value::Table(over)) => merge_into(there, over),
        (_, value) => {
            node.insert(last.to_string(), value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[data]
train = "data/train.jsonl"
labels = ["a", "b"]
"#;

    #[test]
    fn an_inline_table_merges_into_the_table_it_names() {
        let overrides = vec![
            r#"data={text_fields=["title"], pair_fields=["body"]}"#.to_string(),
            "train={epochs=4}".to_string(),
        ];
        let config = RunConfig::from_toml(BASE, "base.toml", &overrides).unwrap();
        assert_eq!(config.data.text_fields, ["title"]);
        assert_eq!(config.data.pair_fields, ["body"]);
        assert_eq!(
            config.data.train,
            Path::new("data/train.jsonl"),
            "other keys stay"
        );
        assert_eq!(config.data.labels, ["a", "b"]);
        assert_eq!(config.train.epochs, 4);
        // Not a table there: the value replaces it (and is checked as usual).
        let err = RunConfig::from_toml(BASE, "base.toml", &["data.labels={a=1}".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("labels"), "{err}");
    }

    #[test]
    fn overrides_are_typed_and_dotted() {
        let overrides = vec![
            "train.epochs=7".to_string(),
            "train.lr=2e-5".to_string(),
            "train.freeze_encoder=true".to_string(),
            "data.valid=data/valid.jsonl".to_string(),
            "model.id=\"org/model\"".to_string(),
        ];
        let config = RunConfig::from_toml(BASE, "base.toml", &overrides).unwrap();
        assert_eq!(config.train.epochs, 7);
        assert_eq!(config.train.lr, 2e-5);
        assert!(config.train.freeze_encoder);
        assert_eq!(
            config.data.valid.as_deref(),
            Some(Path::new("data/valid.jsonl"))
        );
        assert_eq!(config.model.id.as_deref(), Some("org/model"));
    }

    #[test]
    fn the_split_follows_train_seed_unless_split_seed_is_set() {
        let config = RunConfig::from_toml(BASE, "base.toml", &["train.seed=3".into()]).unwrap();
        assert_eq!(config.split_seed(), 3);
        let overrides = ["train.seed=3".to_string(), "data.split_seed=11".to_string()];
        let config = RunConfig::from_toml(BASE, "base.toml", &overrides).unwrap();
        assert_eq!((config.train.seed, config.split_seed()), (3, 11));
    }

    #[test]
    fn unknown_key_is_rejected_by_name_with_the_valid_ones() {
        let err = RunConfig::from_toml(BASE, "base.toml", &["train.epoch=3".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch") && err.contains("epochs"), "{err}");
    }

    #[test]
    fn wrong_value_type_names_the_key() {
        let err = RunConfig::from_toml(BASE, "base.toml", &["train.batch_size=many".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let config =
            RunConfig::from_toml(BASE, "base.toml", &["train.batch_size=0".to_string()]).unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("train.batch_size"));
        let config =
            RunConfig::from_toml(BASE, "base.toml", &["eval.metric=f1:zzz".to_string()]).unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("eval.metric"));
        let config = RunConfig::from_toml(
            BASE,
            "base.toml",
            &["train.class_weights=[1.0]".to_string()],
        )
        .unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("train.class_weights"));
    }

    #[test]
    fn max_len_beyond_model_positions_is_rejected() {
        let config =
            RunConfig::from_toml(BASE, "base.toml", &["data.max_len=600".to_string()]).unwrap();
        let err = config
            .validate_against(&BertConfig::tiny(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.max_len") && err.contains("512"), "{err}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let config = RunConfig::from_toml(
            BASE,
            "base.toml",
            &["train.class_weights=\"balanced\"".to_string()],
        )
        .unwrap();
        let again = RunConfig::from_toml(&config.to_toml().unwrap(), "resolved", &[]).unwrap();
        assert_eq!(
            again.train.class_weights,
            Some(ClassWeights::Rule(WeightRule::Balanced))
        );
        assert_eq!(again.data.labels, config.data.labels);
    }

    #[test]
    fn a_config_extends_another_and_states_only_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "base.toml",
            &format!("{BASE}\n[train]\nepochs = 4\nlr = 1e-4\nbatch_size = 8\n"),
        );
        std::fs::create_dir(dir.path().join("variants")).unwrap();
        write(
            "variants/lora.toml",
            "extends = \"../base.toml\"\n[model.lora]\nrank = 4\n[train]\nlr = 1e-3\n",
        );
        let path = dir.path().join("variants/lora.toml");
        let config = RunConfig::load(&path, &["train.epochs=6".into()]).unwrap();
        // The variant's keys over the base's, table by table; overrides over both.
        assert_eq!(config.train.lr, 1e-3);
        assert_eq!(config.train.batch_size, 8);
        assert_eq!(config.train.epochs, 6);
        assert_eq!(config.model.lora.rank, 4);
        assert_eq!(config.data.labels, ["a", "b"]);
        // The resolved config names no base: checkpoints stand alone.
        assert!(!config.to_toml().unwrap().contains("extends"));

        // A chain of two, then a cycle, a missing base, a non-string and text without a file.
        write(
            "chain.toml",
            "extends = \"variants/lora.toml\"\n[train]\nbatch_size = 2\n",
        );
        let chained = RunConfig::load(&dir.path().join("chain.toml"), &[]).unwrap();
        assert_eq!((chained.train.batch_size, chained.train.lr), (2, 1e-3));
        write("a.toml", "extends = \"b.toml\"\n");
        write("b.toml", "extends = \"./a.toml\"\n");
        let err = RunConfig::load(&dir.path().join("a.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cycle") && err.contains("a.toml"), "{err}");
        write("orphan.toml", "extends = \"gone.toml\"\n");
        let err = RunConfig::load(&dir.path().join("orphan.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("orphan.toml") && err.contains("gone.toml"),
            "{err}"
        );
        write("number.toml", "extends = 3\n");
        let err = RunConfig::load(&dir.path().join("number.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("number.toml") && err.contains("must be a string"),
            "{err}"
        );
        // A bad key in a base names the file loaded and the base.
        write("typo.toml", "[train]\nepoch = 3\n");
        write("on_typo.toml", "extends = \"typo.toml\"\n");
        let err = RunConfig::load(&dir.path().join("on_typo.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("on_typo.toml (extending")
                && err.contains("/typo.toml)")
                && err.contains("epoch"),
            "{err}"
        );
        let err = RunConfig::from_toml("extends = \"base.toml\"\n", "text", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("extends"), "{err}");
    }
}
