//! Model throughput: forward (eval mode), forward+backward, and the trainer's own training step
//! (`wick_trainer::fit::optimizer_step`: forward, backward, clipping, AdamW) on a seeded random
//! batch of exactly `batch x seq` tokens.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use wick_data::TensorBatch;
use wick_model::classifier::LossOptions;
use wick_model::rng::mix_seed;
use wick_model::weights::{init_all, init_head, init_lora, is_new, load_safetensors, named_vars};
use wick_model::{BertConfig, Classifier, LoraConfig, Task};
use wick_trainer::fit::optimizer_step;
use wick_trainer::optim::{AdamW, ParamSpec};

use super::timing::{time_calls, Samples, Timing};

/// Labels of the benchmark head, as the PyTorch reference's `nn.Linear(hidden, 3)`.
pub const NUM_LABELS: usize = 3;
/// The training-step settings the brief fixes (and the PyTorch reference uses).
const LR: f64 = 2e-5;
const WEIGHT_DECAY: f64 = 0.01;
const MAX_GRAD_NORM: f64 = 1.0;
/// `torch.optim.AdamW` defaults.
const BETAS: (f64, f64) = (0.9, 0.999);
const EPS: f64 = 1e-8;

/// The three model measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelBench {
    /// `forward(train = false)`. Candle has no no-grad mode: this is the forward the evaluator
    /// runs, with the output dropped.
    Forward,
    /// Forward in train mode (dropout on), cross-entropy loss, backward; gradients dropped.
    ForwardBackward,
    /// `optimizer_step`: forward, backward, global-norm clip 1.0, AdamW (lr 2e-5, wd 0.01).
    TrainStep,
}

impl ModelBench {
    pub fn name(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::ForwardBackward => "forward_backward",
            Self::TrainStep => "train_step",
        }
    }
}

/// A model to time: its shape and, unless randomly initialised, its pretrained encoder weights.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// What the user asked for (`bert-base`, a Hub id or a directory), used in the output.
    pub label: String,
    pub config: BertConfig,
    /// `None`: seeded random init (speed does not depend on the values).
    pub weights: Option<PathBuf>,
}

/// A classifier and one batch on the device, ready to be timed.
pub struct Harness {
    varmap: VarMap,
    model: Classifier,
    batch: TensorBatch,
    device: Device,
    seed: u64,
    loss_options: LossOptions,
    /// LoRA: only the adapters and the head train.
    lora: bool,
}

impl Harness {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        spec: &ModelSpec,
        dtype: DType,
        device: &Device,
        batch: usize,
        seq: usize,
        seed: u64,
        loss_options: &LossOptions,
        lora: &LoraConfig,
    ) -> Result<Self> {
        let config = &spec.config;
        let (varmap, model) = Classifier::build_with_lora(
            config,
            NUM_LABELS,
            Task::SingleLabel,
            config.hidden_dropout_prob,
            dtype,
            device,
            seed,
            lora,
        )?;
        match &spec.weights {
            Some(path) => {
                load_safetensors(&varmap, path, false)
                    .with_context(|| format!("loading {}", path.display()))?;
                init_head(&varmap, config.initializer_range, seed)?;
                init_lora(&varmap, seed)?;
            }
            None => init_all(&varmap, config.initializer_range, seed)?,
        }
        let batch = random_batch(config.vocab_size, batch, seq, seed, device)?;
        Ok(Self {
            varmap,
            model,
            batch,
            device: device.clone(),
            seed,
            loss_options: loss_options.clone(),
            lora: lora.enabled(),
        })
    }

    /// Gradient checkpointing of the encoder's layers in the training measurements.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.model.set_gradient_checkpointing(on);
    }

    /// Scalar parameters of the model (encoder and head).
    pub fn params(&self) -> u64 {
        named_vars(&self.varmap)
            .iter()
            .map(|(_, var)| var.elem_count() as u64)
            .sum()
    }

    /// Scalar parameters the training step updates (with LoRA the adapters and the head), and
    /// the weights of the layers with an adapter.
    pub fn trainable(&self) -> (u64, u64) {
        let trainable = named_vars(&self.varmap)
            .iter()
            .filter(|(name, _)| !self.lora || is_new(name))
            .map(|(_, var)| var.elem_count() as u64)
            .sum();
        (
            trainable,
            wick_trainer::budget::adapted_elements(&self.varmap),
        )
    }

    pub fn measure(&self, bench: ModelBench, timing: Timing) -> Result<Samples> {
        match bench {
            ModelBench::Forward => time_calls(&self.device, timing, || self.forward()),
            ModelBench::ForwardBackward => {
                let mut step = 0;
                time_calls(&self.device, timing, || {
                    step += 1;
                    self.forward_backward(step)
                })
            }
            ModelBench::TrainStep => {
                let mut optimizer = self.optimizer()?;
                let mut step = 0;
                time_calls(&self.device, timing, || {
                    step += 1;
                    self.train_step(&mut optimizer, step)
                })
            }
        }
    }

    fn forward(&self) -> Result<()> {
        let b = &self.batch;
        self.model
            .forward(&b.input_ids, &b.token_type_ids, &b.attention_mask, false)?;
        Ok(())
    }

    fn forward_backward(&self, step: u64) -> Result<()> {
        // The trainer reseeds dropout every step; so does the benchmark, to time the same work.
        self.model
            .encoder()
            .rng()
            .reseed(self.seed, step, &self.device)?;
        let b = &self.batch;
        let labels = b.labels.as_ref().context("benchmark batch has no labels")?;
        self.model
            .train_objective(
                &b.input_ids,
                &b.token_type_ids,
                &b.attention_mask,
                labels,
                None,
                &self.loss_options,
            )?
            .backward()?;
        Ok(())
    }

    fn train_step(&self, optimizer: &mut AdamW, step: u64) -> Result<()> {
        self.model
            .encoder()
            .rng()
            .reseed(self.seed, step, &self.device)?;
        // f16 trains with loss scaling, as `train` does; a fresh scaler per step costs the same.
        let mut scaler = match self.model.encoder().dtype() {
            candle_core::DType::F16 => Some(wick_trainer::scaler::LossScaler::new(
                &self.device,
                65536.0,
                2000,
            )?),
            _ => None,
        };
        optimizer_step(
            &self.model,
            optimizer,
            std::slice::from_ref(&self.batch),
            &self.loss_options,
            MAX_GRAD_NORM,
            LR,
            scaler.as_mut(),
        )?;
        Ok(())
    }

    /// AdamW over every trainable variable (with LoRA the adapters and the head), biases and
    /// layer-norm weights exempt from decay, as `train`.
    fn optimizer(&self) -> Result<AdamW> {
        let params = named_vars(&self.varmap)
            .into_iter()
            .filter(|(name, _)| !self.lora || is_new(name))
            .map(|(name, var)| ParamSpec::new(name, var, WEIGHT_DECAY, 1.0))
            .collect();
        Ok(AdamW::new(params, BETAS.0, BETAS.1, EPS)?)
    }
}

/// `batch` rows of `seq` seeded random token ids, token type 0, every position real (so the
/// shapes are exactly `batch x seq` with no padding), and seeded labels.
fn random_batch(
    vocab: usize,
    batch: usize,
    seq: usize,
    seed: u64,
    device: &Device,
) -> Result<TensorBatch> {
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| (mix_seed(seed, i as u64) % vocab as u64) as u32)
        .collect();
    let labels: Vec<u32> = (0..batch)
        .map(|i| (mix_seed(seed ^ 1, i as u64) % NUM_LABELS as u64) as u32)
        .collect();
    let shape = (batch, seq);
    Ok(TensorBatch {
        input_ids: Tensor::from_vec(ids, shape, device)?,
        attention_mask: Tensor::ones(shape, DType::U32, device)?,
        token_type_ids: Tensor::zeros(shape, DType::U32, device)?,
        labels: Some(Tensor::from_vec(labels, batch, device)?),
        teacher: None,
    })
}
