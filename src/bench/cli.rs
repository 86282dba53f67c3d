//! The command line (`Args`, as typed) and the validated plan (`Plan`): every argument and every
//! model is checked and resolved here, before the first tensor is allocated.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Parser, ValueEnum};
use wick_model::classifier::LossOptions;
use wick_model::hub::{resolve, ModelSource, DEFAULT_MODEL_ID};
use wick_model::{BertConfig, LoraConfig};
use wick_trainer::config::TrainConfig;
use wick_trainer::device::DeviceRequest;

use super::model::{ModelBench, ModelSpec};
use super::timing::Timing;

/// The built-in shape that needs no download: bert-base-uncased's config.
pub const BERT_BASE: &str = "bert-base";

/// Time matmuls and BERT training steps on a device. Results go to stdout (a table, or one JSON
/// object per measurement with --json).
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// A Hub id, a local model directory, or `bert-base` (built-in shape, random init).
    /// Repeatable. Default: sentence-transformers/all-MiniLM-L6-v2 and bert-base.
    #[arg(long = "model", value_name = "ID|DIR|bert-base")]
    models: Vec<String>,
    /// Seeded random weights instead of the pretrained ones (needs only the model's
    /// config.json); speed does not depend on the values.
    #[arg(long)]
    random_init: bool,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Which measurements, comma-separated. Default: all.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<BenchArg>,
    /// auto (Metal, else CUDA, else CPU), metal, cuda or cpu.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// Compute dtype. Default: f32 for the models; f32, bf16 and f16 (where the device has
    /// them) for matmul.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// CPU threads (sets RAYON_NUM_THREADS before any tensor work). Default: Candle's choice.
    #[arg(long)]
    threads: Option<usize>,
    /// Timed calls per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Untimed calls after the first (separately timed) call.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Square matmul sizes, comma-separated. Default: 1024,2048,4096,8192 (8192 left out on
    /// the CPU, where it takes minutes).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Seed of the random batch, random weights and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The training step's objective with the supervised contrastive term of this weight
    /// (`train.contrastive_weight`, at the default temperature), to time its cost. Default: off.
    #[arg(long, default_value_t = 0.0)]
    contrastive_weight: f64,
    /// R-Drop's `α` (`train.rdrop_weight`): the training step runs each batch twice, with
    /// independent dropout masks, to time its cost. Default: off.
    #[arg(long, default_value_t = 0.0)]
    rdrop_weight: f64,
    /// Gradient checkpointing (`train.gradient_checkpointing`) in forward_backward and
    /// train_step: each encoder layer's activations are recomputed in backward, to measure the
    /// memory it saves and the time it costs. Default: off.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// LoRA adapters of this rank (`model.lora.rank`, PEFT's defaults: alpha 8, on query and
    /// value) with the encoder frozen, in forward_backward and train_step. Default: 0 (off).
    #[arg(long, default_value_t = 0)]
    lora_rank: usize,
    /// One JSON object per measurement per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
enum BenchArg {
    Matmul,
    Forward,
    ForwardBackward,
    TrainStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl DtypeArg {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

/// What to run, validated.
#[derive(Debug)]
pub struct Plan {
    pub matmul: bool,
    pub model_benches: Vec<ModelBench>,
    pub models: Vec<ModelSpec>,
    pub batch: usize,
    pub seq: usize,
    pub device: DeviceRequest,
    /// `None`: f32, bf16 and f16 where supported.
    pub matmul_dtype: Option<DType>,
    pub model_dtype: DType,
    pub threads: Option<usize>,
    pub timing: Timing,
    sizes: Option<Vec<usize>>,
    pub seed: u64,
    /// The objective of forward_backward and train_step.
    pub loss_options: LossOptions,
    /// Gradient checkpointing in forward_backward and train_step.
    pub gradient_checkpointing: bool,
    /// LoRA adapters (rank 0: off).
    pub lora: LoraConfig,
    pub json: bool,
}

impl Plan {
    pub fn new(args: Args) -> Result<Self> {
        for (name, value) in [
            ("--batch", args.batch),
            ("--seq", args.seq),
            ("--repeats", args.repeats),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if args.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        if args.sizes.contains(&0) {
            bail!("--sizes must all be at least 1");
        }
        if !(0.0..1.0).contains(&args.contrastive_weight) {
            bail!("--contrastive-weight must be in [0, 1)");
        }
        if !(args.rdrop_weight >= 0.0 && args.rdrop_weight.is_finite()) {
            bail!("--rdrop-weight must be >= 0 and finite");
        }
        let only = if args.only.is_empty() {
            BenchArg::value_variants().to_vec()
        } else {
            args.only
        };
        let model_benches: Vec<ModelBench> = [
            (BenchArg::Forward, ModelBench::Forward),
            (BenchArg::ForwardBackward, ModelBench::ForwardBackward),
            (BenchArg::TrainStep, ModelBench::TrainStep),
        ]
        .into_iter()
        .filter(|(arg, _)| only.contains(arg))
        .map(|(_, bench)| bench)
        .collect();
        let names = if args.models.is_empty() {
            vec![DEFAULT_MODEL_ID.to_string(), BERT_BASE.to_string()]
        } else {
            args.models
        };
        let models = if model_benches.is_empty() {
            Vec::new()
        } else {
            names
                .iter()
                .map(|name| resolve_model(name, args.random_init))
                .collect::<Result<Vec<_>>>()?
        };
        for spec in &models {
            if args.seq > spec.config.max_tokens() {
                bail!(
                    "--seq {} exceeds the {} tokens {}'s position table covers",
                    args.seq,
                    spec.config.max_tokens(),
                    spec.label,
                );
            }
        }
        Ok(Self {
            matmul: only.contains(&BenchArg::Matmul),
            model_benches,
            models,
            batch: args.batch,
            seq: args.seq,
            device: args.device,
            matmul_dtype: args.dtype.map(DtypeArg::dtype),
            model_dtype: args.dtype.map_or(DType::F32, DtypeArg::dtype),
            threads: args.threads,
            timing: Timing {
                warmup: args.warmup,
                repeats: args.repeats,
            },
            sizes: (!args.sizes.is_empty()).then_some(args.sizes),
            seed: args.seed,
            loss_options: LossOptions {
                contrastive_weight: args.contrastive_weight,
                contrastive_temperature: TrainConfig::default().contrastive_temperature,
                rdrop_weight: args.rdrop_weight,
                ..LossOptions::default()
            },
            gradient_checkpointing: args.gradient_checkpointing,
            lora: LoraConfig {
                rank: args.lora_rank,
                ..LoraConfig::default()
            },
            json: args.json,
        })
    }

    /// The matmul sizes for `device`: `--sizes`, else the defaults (up to 4096 on the CPU).
    pub fn sizes(&self, device: &Device) -> Vec<usize> {
        match &self.sizes {
            Some(sizes) => sizes.clone(),
            None if device.is_cpu() => vec![1024, 2048, 4096],
            None => vec![1024, 2048, 4096, 8192],
        }
    }
}

/// `bert-base` is built in; anything else is resolved through the Hub cache or as a directory.
fn resolve_model(name: &str, random_init: bool) -> Result<ModelSpec> {
    if name == BERT_BASE {
        return Ok(ModelSpec {
            label: name.to_string(),
            config: bert_base_config(),
            weights: None,
        });
    }
    // Anything that exists or is spelled like a path is a directory, so a typo in it is reported
    // as a missing directory rather than as a malformed Hub id.
    let looks_like_path = Path::new(name).exists() || name.starts_with(['/', '.', '~']);
    let source = if looks_like_path {
        ModelSource::from_path(name)
    } else {
        ModelSource::from_id(name)
    };
    let (config_path, weights) = match resolve(&source) {
        Ok(files) => (files.config, (!random_init).then_some(files.weights)),
        Err(_) if random_init && Path::new(name).join("config.json").is_file() => {
            (Path::new(name).join("config.json"), None)
        }
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "resolving model `{name}` (for speed alone, `--model {BERT_BASE}` needs no \
                     files, and --random-init needs only a directory with config.json)"
                )
            })
        }
    };
    Ok(ModelSpec {
        label: name.to_string(),
        config: BertConfig::from_file(&config_path)?,
        weights,
    })
}

/// bert-base-uncased's `config.json`: 12 layers, hidden 768, 12 heads, intermediate 3072.
fn bert_base_config() -> BertConfig {
    BertConfig {
        hidden_size: 768,
        num_hidden_layers: 12,
        num_attention_heads: 12,
        intermediate_size: 3072,
        max_position_embeddings: 512,
        ..BertConfig::tiny(30522)
    }
}
