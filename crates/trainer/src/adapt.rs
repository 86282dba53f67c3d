//! Masked-language-model adaptation of a pretrained encoder to a task's own texts before
//! fine-tuning (task-adaptive pretraining, Gururangan et al. 2020), what Hugging Face's
//! `run_mlm.py` does: the encoder learns the vocabulary and style of, say, a project's issues,
//! and a classifier then starts from the adapted encoder (`model.path`).
//!
//! Masking is BERT's: each text token (never `[CLS]`/`[SEP]` or padding) is chosen with
//! probability `mask_prob`; a chosen token becomes the mask token 80% of the time, a uniformly
//! random token 10%, and stays 10%; the loss is the cross-entropy of the original tokens at the
//! chosen positions. Masks are drawn anew for every batch from a seeded ChaCha stream, so a run
//! repeats (byte for byte on the CPU and on CUDA, where the integration tests check it). A head
//! that starts random (sentence-transformers checkpoints ship without one) first trains alone for
//! `head_epochs`, the encoder and the tied word embeddings frozen, so that its first, random
//! gradients do not reach the encoder; then everything trains for `epochs`. Both
//! phases use AdamW with weight decay except on biases and layer norms, global-norm clipping,
//! and a linear warm-up over the first `warmup_ratio` of the phase's steps then a linear decay.
//!
//! The output directory holds the adapted encoder as a model directory: `model.safetensors`
//! (the encoder's weights under Hugging Face names, no head), `config.json`, `tokenizer.json`,
//! and `adapt.json` (the settings, the source model and the masked-LM loss before, after the head
//! phase and at the end, each on the same fixed masking of all texts with dropout off).
//!
//! While it runs, the output directory's `checkpoint/` holds the run's state (`adapt_state.json`:
//! the position in the phases, the text order and the masking stream, beside every weight and
//! the phase's AdamW moments), saved at an epoch's end once [`AdaptRun::save_every`] has passed and
//! when [`AdaptRun::stop`] is raised (after the step in progress). Dropout is reseeded from the
//! seed and the step at every step, so a run resumed from it ([`AdaptRun::resume`]) takes the
//! steps of a run never stopped; a finished run replaces the directory, checkpoint included.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use wick_data::{Encoding, TextTokenizer};
use wick_model::mlm::{is_lm_head, load_lm_head, MaskedLm};
use wick_model::weights::{
    init_all, init_lm_head, load_safetensors, named_vars, transformers_name,
};
use wick_model::BertConfig;

use crate::budget::{Kernels, MemoryBudget};
use crate::checkpoint::{self, replace_dir, stage, sync_file, to_json, write_synced};
use crate::config::{Init, Precision, RunConfig};
use crate::device::{self, DeviceRequest};
use crate::error::{Result, TrainError};
use crate::export::{save_for_pytorch, transformers_config};
use crate::fit::{Progress, Reporter};
use crate::optim::{AdamW, ParamSpec};
use crate::schedule::{Decay, Schedule};
use crate::stop::StopFlag;

/// The settings of an adaptation run (defaults: [`AdaptOptions::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptOptions {
    /// Passes over the texts with everything training.
    pub epochs: usize,
    /// Passes with only the masked-LM head training first (0 when the file has a head of its
    /// own is a fine choice).
    pub head_epochs: usize,
    pub lr: f64,
    pub head_lr: f64,
    pub batch_size: usize,
    /// The fraction of text tokens chosen for prediction.
    pub mask_prob: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Seeds text order, masks, dropout and a fresh head's init.
    pub seed: u64,
}

impl Default for AdaptOptions {
    /// Gururangan et al.'s recipe scaled to a batch of 32 (their 100 epochs at batch 256 and
    /// lr 1e-4 are about as many tokens as 30 epochs here, in more, smaller steps).
    fn default() -> Self {
        Self {
            epochs: 30,
            head_epochs: 3,
            lr: 5e-5,
            head_lr: 1e-3,
            batch_size: 32,
            mask_prob: 0.15,
            warmup_ratio: 0.06,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            seed: 0,
        }
    }
}

impl AdaptOptions {
    fn validate(&self) -> Result<()> {
        // Named as the fields of `AdaptOptions` (the `adapt` binary's flags, with dashes).
        let bad = |key: &str, why: &str| Err(TrainError::config(key, why.to_string()));
        if self.epochs + self.head_epochs == 0 {
            return bad("adapt.epochs", "adaptation needs at least one epoch");
        }
        if self.batch_size == 0 {
            return bad("adapt.batch_size", "must be at least 1");
        }
        if !(self.mask_prob > 0.0 && self.mask_prob < 1.0) {
            return bad("adapt.mask_prob", "must lie strictly between 0 and 1");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("adapt.warmup_ratio", "must lie in [0, 1)");
        }
        if !(self.lr > 0.0 && self.head_lr > 0.0) {
            return bad("adapt.lr", "learning rates must be positive");
        }
        Ok(())
    }
}

/// What an adaptation did, as `adapt.json` records it.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptReport {
    /// The encoder adapted (a Hub id or a directory).
    pub source: String,
    pub data: PathBuf,
    pub texts: usize,
    /// Text tokens (special tokens excluded) after truncation.
    pub tokens: usize,
    pub device: String,
    pub precision: Precision,
    /// Whether the masked-LM head came from the source's file (else seeded random).
    pub head_from_file: bool,
    pub options: AdaptOptions,
    pub steps: usize,
    /// Mean masked-LM loss on the fixed masking: before, after the head phase, at the end.
    pub loss_before: f64,
    pub loss_after_head: f64,
    pub loss_after: f64,
    pub seconds: f64,
}

impl AdaptReport {
    /// One line: texts, steps, time and the three losses.
    pub fn summary(&self) -> String {
        format!(
            "{} texts, {} steps in {:.1} s: masked-LM loss {:.4} -> {:.4} (head alone) -> {:.4}",
            self.texts,
            self.steps,
            self.seconds,
            self.loss_before,
            self.loss_after_head,
            self.loss_after
        )
    }
}

/// One padded batch with its masking, on the device.
struct MaskedBatch {
    input_ids: Tensor,
    token_type_ids: Tensor,
    attention_mask: Tensor,
    positions: Tensor,
    labels: Tensor,
    chosen: usize,
}

/// The mask token of a BERT (`[MASK]`) or RoBERTa/MPNet (`<mask>`) vocabulary.
fn mask_token(tokenizer: &TextTokenizer) -> Option<u32> {
    tokenizer
        .token_id("[MASK]")
        .or_else(|| tokenizer.token_id("<mask>"))
}

/// BERT's masking of `encodings` padded to their longest: the ids with chosen tokens replaced,
/// and for each chosen token its flat position in the `(batch, width)` grid and original id.
/// The first and last token of each encoding (its special tokens) are never chosen.
pub fn mask_batch(
    encodings: &[&Encoding],
    pad_id: u32,
    mask_id: u32,
    vocab_size: usize,
    mask_prob: f64,
    rng: &mut ChaCha8Rng,
) -> (Vec<u32>, usize, Vec<u32>, Vec<u32>) {
    let width = encodings.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; encodings.len() * width];
    let (mut positions, mut labels) = (Vec::new(), Vec::new());
    for (row, encoding) in encodings.iter().enumerate() {
        let len = encoding.ids.len();
        for (col, &id) in encoding.ids.iter().enumerate() {
            let at = row * width + col;
            ids[at] = id;
            if col == 0 || col + 1 >= len || !rng.gen_bool(mask_prob) {
                continue;
            }
            positions.push(at as u32);
            labels.push(id);
            let draw: f64 = rng.gen();
            if draw < 0.8 {
                ids[at] = mask_id;
            } else if draw < 0.9 {
                ids[at] = rng.gen_range(0..vocab_size as u32);
            }
        }
    }
    (ids, width, positions, labels)
}

/// The model, its variables and what masking needs.
struct Setup<'a> {
    model: MaskedLm,
    varmap: VarMap,
    tokenizer: &'a TextTokenizer,
    encodings: &'a [Encoding],
    mask_id: u32,
    vocab_size: usize,
    device: Device,
}

/// The two phases of an adaptation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    /// The masked-LM head alone, the encoder frozen.
    Head,
    /// Everything.
    All,
}

/// Where a run stands, between two steps: what `<out>/checkpoint/adapt_state.json` holds beside
/// the weights and the phase's AdamW moments, so that a resumed run takes exactly the steps an
/// uninterrupted one would have taken (the same order, masks and dropout).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    /// What the run is: a resume must ask for the same.
    options: AdaptOptions,
    source: String,
    data: PathBuf,
    texts: usize,
    precision: Precision,
    head_from_file: bool,
    loss_before: f64,
    loss_after_head: Option<f64>,
    /// The phase in progress, its epoch (0-based) and the batches of that epoch done: the step
    /// counts follow from them ([`RunState::phase_steps`], [`RunState::steps`]).
    phase: Phase,
    epoch: usize,
    batch: usize,
    /// The phase optimizer's step count (batches with no masked token take no step).
    optimizer_steps: u64,
    /// The epoch's text order (shuffled from the previous epoch's at each epoch's start).
    order: Vec<usize>,
    /// The position of the ChaCha stream behind order and masks (a `u128`, as text).
    rng_word_pos: String,
    /// The epoch's summed batch losses and batches so far, for its mean.
    epoch_loss_sum: f64,
    epoch_batches: usize,
    /// Seconds spent before this process.
    seconds: f64,
}

impl RunState {
    /// Steps of the phase done, `per_epoch` to an epoch: its schedule's position.
    fn phase_steps(&self, per_epoch: usize) -> usize {
        self.epoch * per_epoch + self.batch
    }

    /// Steps of the run done (a step per batch, the head phase's first).
    fn steps(&self, per_epoch: usize) -> usize {
        let head = match self.phase {
            Phase::Head => 0,
            Phase::All => self.options.head_epochs * per_epoch,
        };
        head + self.phase_steps(per_epoch)
    }

    /// The first field of what a run is that differs between `self` (saved) and `other`
    /// (asked for), as `(key, saved, asked)`.
    fn difference(&self, other: &RunState) -> Option<(String, String, String)> {
        // Plain data: serializing it cannot fail.
        let as_json = |state: &RunState| {
            let mut identity = serde_json::Map::new();
            if let Ok(serde_json::Value::Object(options)) = serde_json::to_value(&state.options) {
                for (key, value) in options {
                    identity.insert(format!("adapt.{key}"), value);
                }
            }
            identity.insert("source".into(), state.source.clone().into());
            identity.insert("data".into(), state.data.display().to_string().into());
            identity.insert("texts".into(), state.texts.into());
            identity.insert(
                "train.precision".into(),
                serde_json::to_value(state.precision).unwrap_or_default(),
            );
            identity
        };
        let (saved, asked) = (as_json(self), as_json(other));
        saved.iter().find_map(|(key, value)| {
            let other = &asked[key];
            (other != value).then(|| (key.clone(), value.to_string(), other.to_string()))
        })
    }
}

/// How an adaptation runs, beside its settings (which decide its result; these do not).
#[derive(Debug, Clone)]
pub struct AdaptRun {
    pub device: DeviceRequest,
    /// Where the adapted encoder goes (replaced when the run ends); its `checkpoint/` holds the
    /// run's state while it runs.
    pub out: PathBuf,
    /// Continue from `<out>/checkpoint/` (refused when the settings differ from the saved ones).
    pub resume: bool,
    /// Save `<out>/checkpoint/` at the end of an epoch when this long has passed since the last
    /// save (`None`: only when stopped; `Some(ZERO)`: every epoch).
    pub save_every: Option<Duration>,
    /// Raised (Ctrl-C, or by a library user): save after the step in progress and stop.
    pub stop: StopFlag,
}

impl AdaptRun {
    /// On `device`, into `out`, fresh, saving every ten minutes.
    pub fn new(device: DeviceRequest, out: &Path) -> Self {
        Self {
            device,
            out: out.to_path_buf(),
            resume: false,
            save_every: Some(Duration::from_secs(600)),
            stop: StopFlag::new(),
        }
    }

    /// The directory of the run's state while it runs.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.out.join(CHECKPOINT)
    }
}

/// How an adaptation ended.
#[derive(Debug, Clone)]
pub enum AdaptOutcome {
    /// The adapted encoder is written.
    Finished(AdaptReport),
    /// Stopped on request after `steps` steps, saved in `checkpoint` for `--resume`.
    Stopped { checkpoint: PathBuf, steps: usize },
}

/// The state of a run in progress, under its output directory.
pub const CHECKPOINT: &str = "checkpoint";
const RUN_STATE: &str = "adapt_state.json";

impl Setup<'_> {
    /// Mean masked-LM loss over all texts, in order, on a masking fixed by its own seed, dropout
    /// off: the same number before and after training measures what training did. One read
    /// from the device, at the end.
    fn fixed_loss(&self, options: &AdaptOptions) -> Result<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5eed_f1c5);
        let mut total: Option<Tensor> = None;
        let mut count = 0usize;
        for chunk in self.encodings.chunks(options.batch_size) {
            let refs: Vec<&Encoding> = chunk.iter().collect();
            let batch = self.batch(&refs, options.mask_prob, &mut rng)?;
            if batch.chosen == 0 {
                continue;
            }
            // Detached: the sum would otherwise hold every batch's graph, logits included,
            // until the end.
            let loss = (self.loss(&batch, false)?.detach() * batch.chosen as f64)?;
            total = Some(match total {
                Some(t) => (t + loss)?,
                None => loss,
            });
            count += batch.chosen;
        }
        let total = total.ok_or_else(|| {
            TrainError::config(
                "data.max_len",
                "no text has a token to mask: the texts are empty or max_len is 2",
            )
        })?;
        Ok(total.to_dtype(DType::F64)?.to_scalar::<f64>()? / count as f64)
    }

    /// `encodings` padded to their longest and masked ([`mask_batch`]), on the device.
    fn batch(
        &self,
        encodings: &[&Encoding],
        mask_prob: f64,
        rng: &mut ChaCha8Rng,
    ) -> Result<MaskedBatch> {
        let (ids, width, positions, labels) = mask_batch(
            encodings,
            self.tokenizer.pad_id(),
            self.mask_id,
            self.vocab_size,
            mask_prob,
            rng,
        );
        let rows = encodings.len();
        let mut types = vec![0u32; rows * width];
        let mut mask = vec![0u32; rows * width];
        for (row, encoding) in encodings.iter().enumerate() {
            types[row * width..row * width + encoding.type_ids.len()]
                .copy_from_slice(&encoding.type_ids);
            mask[row * width..row * width + encoding.ids.len()].fill(1);
        }
        let chosen = positions.len();
        let device = &self.device;
        Ok(MaskedBatch {
            input_ids: Tensor::from_vec(ids, (rows, width), device)?,
            token_type_ids: Tensor::from_vec(types, (rows, width), device)?,
            attention_mask: Tensor::from_vec(mask, (rows, width), device)?,
            positions: Tensor::from_vec(positions, chosen, device)?,
            labels: Tensor::from_vec(labels, chosen, device)?,
            chosen,
        })
    }

    fn loss(&self, batch: &MaskedBatch, train: bool) -> Result<Tensor> {
        Ok(self.model.loss(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            &batch.positions,
            &batch.labels,
            train,
        )?)
    }

    /// Writes the run's state to `dir` atomically: every variable (the head's included), the
    /// phase optimizer's moments and `state`.
    fn save(&self, dir: &Path, optimizer: &AdamW, state: &RunState) -> Result<()> {
        let staged = stage(dir)?;
        let weights = staged.join(checkpoint::WEIGHTS);
        wick_model::weights::save_safetensors(&self.varmap, &weights)?;
        sync_file(&weights)?;
        let moments = staged.join(checkpoint::OPTIMIZER);
        candle_core::safetensors::save(&optimizer.state(), &moments)?;
        sync_file(&moments)?;
        write_synced(&staged.join(RUN_STATE), to_json(state)?.as_bytes())?;
        replace_dir(&staged, dir)
    }
}

/// The epochs of `phase`.
fn phase_epochs(phase: Phase, options: &AdaptOptions) -> usize {
    match phase {
        Phase::Head => options.head_epochs,
        Phase::All => options.epochs,
    }
}

/// Reads a run's state saved in `dir`, naming the file at fault.
fn read_state(dir: &Path) -> Result<RunState> {
    let path = dir.join(RUN_STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        TrainError::config(
            "--resume",
            format!(
                "{} holds no adaptation to resume ({}: {e})",
                dir.display(),
                path.display()
            ),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        TrainError::config(
            "--resume",
            format!("{}: not an adaptation state: {e}", path.display()),
        )
    })
}

/// Adapts the encoder of `config` (its `[model]`, `train.precision` and `data` reading and
/// tokenization settings) to the texts of `data` (read as `config.data` says, labels not needed)
/// and writes it to `run.out` as a model directory that `model.path` loads, or stops on request
/// with the run saved for `run.resume`.
pub fn adapt(
    config: &RunConfig,
    data: &Path,
    options: &AdaptOptions,
    run: &AdaptRun,
    reporter: &mut dyn Reporter,
) -> Result<AdaptOutcome> {
    options.validate()?;
    config.data.validate()?;
    if config.train.precision == Precision::F16 {
        return Err(TrainError::config(
            "train.precision",
            "adaptation runs in f32 or bf16 (f16 would need loss scaling)",
        ));
    }
    let checkpoint_dir = run.checkpoint_dir();
    checkpoint::recover(&checkpoint_dir)?;
    let saved = if run.resume {
        Some(read_state(&checkpoint_dir)?)
    } else if checkpoint_dir.exists() {
        return Err(TrainError::config(
            "--out",
            format!(
                "{} holds an unfinished adaptation: continue it with --resume, or delete that \
                 directory to start over",
                checkpoint_dir.display()
            ),
        ));
    } else {
        None
    };
    let start = Instant::now();
    let source = config.model.source();
    let resolved = wick_model::hub::resolve(&source)?;
    let bert = config.model.apply(BertConfig::from_file(&resolved.config)?);
    let tokenizer = TextTokenizer::from_file(&resolved.tokenizer, config.data.max_len)?
        .with_truncation(config.data.truncation());
    let mask_id = mask_token(&tokenizer).ok_or_else(|| {
        TrainError::config(
            "model",
            format!(
                "{} has neither [MASK] nor <mask>: masked-LM adaptation needs a mask token",
                resolved.tokenizer.display()
            ),
        )
    })?;
    // Each text of a pair (data.pair_fields) is a text of its own here: masking never
    // chooses a special token, and a pair's middle one is not at either end.
    let texts: Vec<String> = wick_data::read_unlabelled(data, &config.data)?
        .examples
        .into_iter()
        .flat_map(|e| std::iter::once(e.text).chain(e.pair))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encodings = tokenizer.encode(&refs)?;
    let tokens = encodings
        .iter()
        .map(|e| e.ids.len().saturating_sub(2))
        .sum();
    let source_name = match &resolved.commit {
        Some(commit) => format!("{} at {commit}", resolved.id),
        None => resolved.id.clone(),
    };

    let chosen = device::choose(run.device)?;
    reporter.message(&format!("device: {} ({})", chosen.name, chosen.reason));
    if config.model.lora.enabled() {
        reporter.message(
            "[model.lora] is not used here: adaptation trains the whole encoder (a LoRA run can \
             then start from the adapted encoder through model.path)",
        );
    }
    let (varmap, model) = MaskedLm::build(
        &bert,
        config.train.precision.dtype(),
        &chosen.device,
        options.seed,
    )?;
    let head_from_file = match (&saved, config.model.init) {
        (Some(saved), _) => {
            load_safetensors(&varmap, &checkpoint_dir.join(checkpoint::WEIGHTS), true)?;
            saved.head_from_file
        }
        (None, Init::Pretrained) => {
            let loaded = load_safetensors(&varmap, &resolved.weights, false)?;
            reporter.message(&format!(
                "loaded {} encoder tensors from {}",
                loaded.loaded,
                resolved.weights.display()
            ));
            let from_file = load_lm_head(&varmap, &resolved.weights)?;
            if !from_file {
                init_lm_head(&varmap, bert.initializer_range, options.seed)?;
            }
            from_file
        }
        (None, Init::Random) => {
            init_all(&varmap, bert.initializer_range, options.seed)?;
            init_lm_head(&varmap, bert.initializer_range, options.seed)?;
            false
        }
    };
    reporter.message(&format!(
        "masked-LM head {}; {} texts, {tokens} text tokens",
        if head_from_file {
            "from the file"
        } else {
            "new (seeded init)"
        },
        texts.len()
    ));
    // The full phase's step: every variable trains; the longest batch holds max_len tokens.
    let dtype = config.train.precision.dtype();
    let params: u64 = named_vars(&varmap)
        .iter()
        .map(|(_, v)| v.elem_count() as u64)
        .sum();
    let (batch, seq) = (options.batch_size as u64, config.data.max_len as u64);
    let act_bytes = dtype.size_in_bytes() as u64;
    let budget = MemoryBudget::estimate(
        &bert,
        params,
        params,
        (batch, seq),
        act_bytes,
        Kernels::on(&chosen.device, dtype),
        false,
    )
    .with_masked_lm(
        (batch as f64 * seq as f64 * options.mask_prob).ceil() as u64,
        bert.vocab_size as u64,
        bert.hidden_size as u64,
        act_bytes,
    );
    reporter.message(&format!("memory budget: {budget}"));
    let mut setup = Setup {
        model,
        varmap,
        tokenizer: &tokenizer,
        encodings: &encodings,
        mask_id,
        vocab_size: bert.vocab_size,
        device: chosen.device.clone(),
    };

    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let per_epoch = encodings.len().div_ceil(options.batch_size);
    let mut state = RunState {
        options: options.clone(),
        source: source_name,
        data: data.to_path_buf(),
        texts: texts.len(),
        precision: config.train.precision,
        head_from_file,
        loss_before: f64::NAN,
        loss_after_head: None,
        phase: Phase::Head,
        epoch: 0,
        batch: 0,
        optimizer_steps: 0,
        order: (0..encodings.len()).collect(),
        rng_word_pos: "0".into(),
        epoch_loss_sum: 0.0,
        epoch_batches: 0,
        seconds: 0.0,
    };
    match saved {
        Some(saved) => {
            if let Some((key, was, asked)) = saved.difference(&state) {
                return Err(TrainError::config(
                    "--resume",
                    format!(
                        "{} was adapting with {key} = {was}, this run asks for {asked}: resume \
                         with the same settings, or delete it to start over",
                        checkpoint_dir.display()
                    ),
                ));
            }
            let position = saved.rng_word_pos.parse::<u128>().map_err(|e| {
                TrainError::config("--resume", format!("rng_word_pos in {RUN_STATE}: {e}"))
            })?;
            rng.set_word_pos(position);
            reporter.message(&format!(
                "resuming {} at step {} ({} phase, epoch {}, batch {})",
                checkpoint_dir.display(),
                saved.steps(per_epoch),
                match saved.phase {
                    Phase::Head => "head",
                    Phase::All => "full",
                },
                saved.epoch + 1,
                saved.batch
            ));
            state = saved;
        }
        None => state.loss_before = setup.fixed_loss(options)?,
    }

    // Writes the run as it stands between two steps to the checkpoint directory.
    let save = |setup: &Setup,
                optimizer: &AdamW,
                rng: &ChaCha8Rng,
                state: &RunState,
                reporter: &mut dyn Reporter| {
        let saved = RunState {
            optimizer_steps: optimizer.steps(),
            rng_word_pos: rng.get_word_pos().to_string(),
            seconds: state.seconds + start.elapsed().as_secs_f64(),
            ..state.clone()
        };
        setup.save(&checkpoint_dir, optimizer, &saved)?;
        reporter.checkpoint(&checkpoint_dir);
        Ok::<(), TrainError>(())
    };
    let _running = run.stop.enter();
    let mut last_save = Instant::now();
    let mut moments = match run.resume {
        true => Some(candle_core::safetensors::load(
            checkpoint_dir.join(checkpoint::OPTIMIZER),
            &chosen.device,
        )?),
        false => None,
    };
    for phase in [Phase::Head, Phase::All] {
        if state.phase == Phase::All && phase == Phase::Head {
            continue;
        }
        setup.model.set_frozen_encoder(phase == Phase::Head);
        let epochs = phase_epochs(phase, options);
        let (lr, trains): (f64, fn(&str) -> bool) = match phase {
            Phase::Head => (options.head_lr, is_lm_head),
            Phase::All => (options.lr, |_| true),
        };
        let params: Vec<ParamSpec> = named_vars(&setup.varmap)
            .into_iter()
            .filter(|(name, _)| trains(name))
            .map(|(name, var)| ParamSpec::new(name, var, options.weight_decay, 1.0))
            .collect();
        let mut optimizer = AdamW::new(params, 0.9, 0.999, 1e-8)?;
        if let Some(moments) = moments.take() {
            optimizer
                .load_state(moments, state.optimizer_steps)
                .map_err(|reason| TrainError::Checkpoint {
                    path: checkpoint_dir.join(checkpoint::OPTIMIZER),
                    reason,
                })?;
        }
        let total = per_epoch * epochs;
        let schedule = Schedule {
            peak: lr,
            warmup_steps: (options.warmup_ratio * total as f64).round() as usize,
            total_steps: total,
            decay: Decay::Linear,
        };
        while state.epoch < epochs {
            if state.batch == 0 {
                state.order.shuffle(&mut rng);
            }
            let mut sum: Option<Tensor> = None;
            while state.batch < per_epoch {
                let from = state.batch * options.batch_size;
                let chunk = &state.order[from..(from + options.batch_size).min(encodings.len())];
                let refs: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
                let batch = setup.batch(&refs, options.mask_prob, &mut rng)?;
                let rate = schedule.lr(state.phase_steps(per_epoch));
                if batch.chosen > 0 {
                    setup.model.encoder().rng().reseed(
                        options.seed,
                        state.steps(per_epoch) as u64,
                        &chosen.device,
                    )?;
                    let loss = setup.loss(&batch, true)?;
                    let mut grads = optimizer.collect(&loss.backward()?);
                    grads.clip(options.max_grad_norm)?;
                    optimizer.step(&grads, rate)?;
                    let loss = loss.detach();
                    sum = Some(match sum {
                        Some(s) => (s + loss)?,
                        None => loss,
                    });
                    state.epoch_batches += 1;
                }
                state.batch += 1;
                reporter.step(&Progress {
                    step: state.steps(per_epoch),
                    total_steps: per_epoch * (options.head_epochs + options.epochs),
                    epoch: state.epoch + 1,
                    batch_in_epoch: state.batch,
                    batches_in_epoch: per_epoch,
                    lr: rate,
                });
                let more = state.batch < per_epoch
                    || state.epoch + 1 < epochs
                    || (phase == Phase::Head && options.epochs > 0);
                if run.stop.is_requested() && more {
                    // The checkpoint boundary: the epoch's loss so far is read here.
                    state.epoch_loss_sum += read_sum(sum.take())?;
                    save(&setup, &optimizer, &rng, &state, reporter)?;
                    return Ok(AdaptOutcome::Stopped {
                        checkpoint: checkpoint_dir,
                        steps: state.steps(per_epoch),
                    });
                }
            }
            // The logging boundary: one read per epoch.
            let epoch_sum = state.epoch_loss_sum + read_sum(sum)?;
            if state.epoch_batches > 0 {
                reporter.message(&format!(
                    "adapt {} epoch {}/{epochs}: masked-LM loss {:.4}",
                    match phase {
                        Phase::Head => "head",
                        Phase::All => "all",
                    },
                    state.epoch + 1,
                    epoch_sum / state.epoch_batches as f64
                ));
            }
            state.epoch += 1;
            state.batch = 0;
            state.epoch_loss_sum = 0.0;
            state.epoch_batches = 0;
            let finished = state.epoch == epochs && phase == Phase::All;
            if let Some(every) = run.save_every {
                if last_save.elapsed() >= every && !finished {
                    save(&setup, &optimizer, &rng, &state, reporter)?;
                    last_save = Instant::now();
                }
            }
        }
        if phase == Phase::Head {
            state.loss_after_head = Some(setup.fixed_loss(options)?);
            state.phase = Phase::All;
            state.epoch = 0;
            state.optimizer_steps = 0;
            state.order = (0..encodings.len()).collect();
        }
    }
    setup.model.set_frozen_encoder(false);
    let loss_after = setup.fixed_loss(options)?;
    let report = AdaptReport {
        source: state.source.clone(),
        data: data.to_path_buf(),
        texts: texts.len(),
        tokens,
        device: chosen.name.clone(),
        precision: config.train.precision,
        head_from_file,
        options: options.clone(),
        steps: state.steps(per_epoch),
        loss_before: state.loss_before,
        loss_after_head: state.loss_after_head.unwrap_or(state.loss_before),
        loss_after,
        seconds: state.seconds + start.elapsed().as_secs_f64(),
    };
    write_encoder(&run.out, &setup.varmap, &bert, &resolved.tokenizer, &report)?;
    Ok(AdaptOutcome::Finished(report))
}

/// A summed loss read from the device (0 for none).
fn read_sum(sum: Option<Tensor>) -> Result<f64> {
    Ok(match sum {
        Some(sum) => sum.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        None => 0.0,
    })
}

/// Writes the encoder's variables (not the head) as `export` writes an encoder: Hugging Face
/// names, safetensors PyTorch reads, a transformers `config.json` (which wick reads too); then
/// the tokenizer and the report; atomically (a staged directory renamed into place).
fn write_encoder(
    out: &Path,
    varmap: &VarMap,
    bert: &BertConfig,
    tokenizer: &Path,
    report: &AdaptReport,
) -> Result<()> {
    let staged = stage(out)?;
    let tensors = named_vars(varmap)
        .into_iter()
        .filter(|(name, _)| !is_lm_head(name))
        .map(|(name, var)| {
            Ok((
                transformers_name(bert.model_type, &name),
                var.as_tensor().to_dtype(DType::F32)?,
            ))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    save_for_pytorch(&tensors, &staged.join(checkpoint::WEIGHTS))?;
    let config = transformers_config(bert, &[]);
    write_synced(
        &staged.join(checkpoint::BERT_CONFIG),
        to_json(&config)?.as_bytes(),
    )?;
    let bytes = std::fs::read(tokenizer).map_err(TrainError::io(tokenizer))?;
    write_synced(&staged.join(checkpoint::TOKENIZER), &bytes)?;
    write_synced(&staged.join("adapt.json"), to_json(report)?.as_bytes())?;
    replace_dir(&staged, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding(len: usize) -> Encoding {
        Encoding {
            ids: (0..len as u32).map(|i| 100 + i).collect(),
            type_ids: vec![0; len],
            full_len: len,
        }
    }

    #[test]
    fn masking_is_berts_and_repeats_with_its_seed() {
        let texts: Vec<Encoding> = (0..400).map(|i| encoding(20 + i % 30)).collect();
        let refs: Vec<&Encoding> = texts.iter().collect();
        let draw = |seed| {
            mask_batch(
                &refs,
                1,
                4,
                1000,
                0.15,
                &mut ChaCha8Rng::seed_from_u64(seed),
            )
        };
        let (ids, width, positions, labels) = draw(3);
        assert_eq!(
            draw(3),
            (ids.clone(), width, positions.clone(), labels.clone())
        );
        assert_ne!(draw(4).2, positions, "another seed chose the same tokens");
        let text_tokens: usize = texts.iter().map(|e| e.ids.len() - 2).sum();
        let share = positions.len() as f64 / text_tokens as f64;
        assert!(
            (share - 0.15).abs() < 0.01,
            "{share} of the text tokens chosen"
        );
        let (mut masked, mut kept) = (0, 0);
        for (&at, &label) in positions.iter().zip(&labels) {
            let (row, col) = (at as usize / width, at as usize % width);
            let len = texts[row].ids.len();
            assert!(
                col > 0 && col + 1 < len,
                "special token at {col} of {len} chosen"
            );
            assert_eq!(label, texts[row].ids[col]);
            match ids[at as usize] {
                4 => masked += 1,
                id if id == label => kept += 1,
                _ => {}
            }
        }
        let n = positions.len() as f64;
        assert!(
            (masked as f64 / n - 0.8).abs() < 0.03,
            "{masked} of {n} masked"
        );
        // Kept: the 10% left alone, and the rare random draw of the token itself.
        assert!((kept as f64 / n - 0.1).abs() < 0.03, "{kept} of {n} kept");
        // Padding stays padding and is never chosen.
        for (row, e) in texts.iter().enumerate() {
            assert!(ids[row * width + e.ids.len()..(row + 1) * width]
                .iter()
                .all(|&id| id == 1));
        }
    }
}
