//! The training loop: set-up (data, model, device, optimizer, resume), then one loop that reads
//! top-down: schedule -> forward -> backward -> accumulate/clip -> step -> log -> evaluate ->
//! checkpoint. Scalars are read from the device only at logging, evaluation and checkpoint
//! boundaries; each such read is marked "sync point".

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde_json::json;
use wick_data::{
    epoch_order, read_examples, read_variants, split_folds, split_train_valid, DataSummary,
    Dataset, Example, Location, Targets, TensorBatch, TextTokenizer,
};
use wick_model::classifier::LossOptions;
use wick_model::weights::{
    init_all, init_head, init_lora, is_head, is_new, load_safetensors, named_vars,
};
use wick_model::{BertConfig, Classifier, Task};

use crate::budget::MemoryBudget;
use crate::calibration::Calibration;
use crate::checkpoint::{self, Checkpoint, Contents, Provenance, TrainState};
use crate::config::{ClassWeights, Init, Precision, RunConfig, TrainConfig, WeightRule};
use crate::device::{self, ensure_same_device, DeviceRequest};
use crate::ema::WeightAverage;
use crate::error::{Result, TrainError};
use crate::eval::{self, Predictions};
use crate::infer::Ensemble;
use crate::lr_find;
use crate::metrics::{ClassificationReport, MetricsLog};
use crate::optim::{encoder_layer, layer_lr_scale, AdamW, Gradients, ParamSpec};
use crate::scaler::LossScaler;
use crate::schedule::Schedule;
use crate::stop::StopFlag;

/// Where a run writes and what it continues from.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: DeviceRequest,
    /// The run directory (`best/`, `last/`, `metrics.jsonl`, `config.toml`, `plot.svg`).
    pub out_dir: PathBuf,
    /// A checkpoint directory (or a run directory, meaning its `last/`) to continue from.
    pub resume: Option<PathBuf>,
    /// A fresh run into a directory that holds another run (checkpoints, `metrics.jsonl`) is
    /// refused unless this is set; then that run's entries are deleted once the new run is ready
    /// to start (its data read, its model built). A run continued in its own directory keeps
    /// everything either way.
    pub overwrite: bool,
}

/// The entries of a previous run in `options.out_dir` that a fresh run replaces; an error if
/// there is one and `options.overwrite` is not set. Empty when there is none (a lone
/// `config.toml` is rewritten anyway) or the run continues a checkpoint inside that directory.
fn previous_run(options: &RunOptions) -> Result<Vec<PathBuf>> {
    if let Some(resume) = &options.resume {
        if let (Ok(from), Ok(out)) = (resume.canonicalize(), options.out_dir.canonicalize()) {
            if from.starts_with(out) {
                return Ok(Vec::new());
            }
        }
    }
    let entries = checkpoint::run_entries(&options.out_dir)?;
    let holds_run = entries
        .iter()
        .any(|path| path.file_name() != Some(checkpoint::RUN_CONFIG.as_ref()));
    if !holds_run {
        return Ok(Vec::new());
    }
    if !options.overwrite {
        let names: Vec<String> = entries
            .iter()
            .filter_map(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        return Err(TrainError::RunDir {
            path: options.out_dir.clone(),
            reason: format!(
                "holds a previous run ({}): continue it (--resume), write elsewhere (--out) \
                 or replace it (--overwrite deletes those entries)",
                names.join(", ")
            ),
        });
    }
    Ok(entries)
}

/// Deletes a previous run's entries (see [`previous_run`]).
fn clear_previous_run(entries: &[PathBuf]) -> Result<()> {
    for path in entries {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.map_err(TrainError::io(path))?;
    }
    Ok(())
}

/// What a run is about to do, reported once before the first step.
#[derive(Debug, Clone)]
pub struct Plan {
    pub device: String,
    pub device_reason: String,
    pub compiled: Vec<&'static str>,
    pub model: String,
    pub train_summary: DataSummary,
    pub valid_examples: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    pub start_step: usize,
    pub parameters: usize,
    pub trainable_parameters: usize,
    pub memory: MemoryBudget,
}

/// Progress after every optimizer step (no device reads).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub batches_in_epoch: usize,
    pub lr: f64,
}

/// Values read from the device at a logging boundary.
#[derive(Debug, Clone, Copy)]
pub struct LogRecord {
    pub step: usize,
    pub epoch: usize,
    /// Mean training loss since the previous log.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping, at this step.
    pub grad_norm: f64,
    pub examples_per_s: f64,
    pub tokens_per_s: f64,
}

/// Hooks for progress display; the library prints nothing itself. All methods default to no-ops.
pub trait Reporter {
    fn message(&mut self, _text: &str) {}
    fn start(&mut self, _plan: &Plan) {}
    fn step(&mut self, _progress: &Progress) {}
    fn log(&mut self, _record: &LogRecord) {}
    fn evaluated(&mut self, _step: usize, _report: &ClassificationReport) {}
    fn checkpoint(&mut self, _dir: &Path) {}
    fn finish(&mut self) {}
}

/// A reporter that reports nothing.
#[derive(Debug, Default)]
pub struct Silent;
impl Reporter for Silent {}

/// A reporter that writes the trainer's messages (warnings, what was loaded) to stderr, one per
/// line, and nothing else.
#[derive(Debug, Default)]
pub struct Messages;
impl Reporter for Messages {
    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub steps: usize,
    pub stopped_early: bool,
    /// Stopped on request ([`Trainer::stop_flag`]) before its last step; `last/` holds the
    /// step it stopped at, and `best/` is not filled in from `last/`.
    pub interrupted: bool,
    pub best: Option<(f64, u64)>,
    pub last_eval: Option<ClassificationReport>,
    pub run_dir: PathBuf,
}

/// A prepared run: data tokenized, model on its device, optimizer ready.
pub struct Trainer {
    config: RunConfig,
    bert: BertConfig,
    varmap: VarMap,
    model: Classifier,
    optimizer: AdamW,
    schedule: Schedule,
    train: Dataset,
    valid: Option<Dataset>,
    device: Device,
    out_dir: PathBuf,
    tokenizer_path: PathBuf,
    provenance: Provenance,
    state: TrainState,
    loss_options: LossOptions,
    /// Dynamic loss scaling, for f16 only.
    scaler: Option<LossScaler>,
    plan: Plan,
    stop: StopFlag,
    /// The temperature fitted at the latest evaluation (`eval.calibrate`), for the checkpoints
    /// of that step.
    calibration: Option<Calibration>,
    /// The moving average of the weights (`train.ema_decay`), evaluated and saved in their place.
    average: Option<WeightAverage>,
    /// The teacher's probabilities for each training row, `(rows * labels)`, when distilling.
    teacher: Option<Vec<f32>>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("out_dir", &self.out_dir)
            .field("state", &self.state)
            .finish()
    }
}

/// The files a run's model comes from: the Hub (or a local directory), or a checkpoint.
struct ModelFiles {
    bert: BertConfig,
    tokenizer: PathBuf,
    provenance: Provenance,
    weights: Option<PathBuf>,
    resume: Option<Checkpoint>,
}

fn locate_model(config: &RunConfig, resume: Option<&Path>) -> Result<ModelFiles> {
    if let Some(dir) = resume {
        let dir = if dir.join(checkpoint::STATE).exists() {
            dir.to_path_buf()
        } else {
            dir.join("last")
        };
        let ck = checkpoint::read(&dir)?;
        return Ok(ModelFiles {
            bert: ck.bert.clone(),
            tokenizer: ck.tokenizer(),
            provenance: ck.provenance.clone(),
            weights: None,
            resume: Some(ck),
        });
    }
    let resolved = wick_model::hub::resolve(&config.model.source())?;
    Ok(ModelFiles {
        bert: config.model.apply(BertConfig::from_file(&resolved.config)?),
        tokenizer: resolved.tokenizer.clone(),
        provenance: Provenance {
            model_id: resolved.id.clone(),
            revision: resolved.revision.clone(),
            commit: resolved.commit.clone(),
            wick_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        weights: Some(resolved.weights),
        resume: None,
    })
}

/// The `(train, valid)` indices into the rows of `data.train` when the run holds validation rows
/// out of it (no `data.valid`): fold `data.fold` of `data.folds` (with `data.nested_folds`, of
/// the rows a `valid_fraction` split trains on, the others in neither part), or
/// `valid_fraction` of each label; `None` when it holds nothing out. A pure function of the rows
/// and the config, so `evaluate` finds a finished run's validation rows again.
pub fn held_out(
    config: &RunConfig,
    examples: &[wick_data::Example],
) -> Option<(Vec<usize>, Vec<usize>)> {
    let data = &config.data;
    if data.valid.is_some() {
        return None;
    }
    if data.folds >= 2 && data.nested_folds {
        // The folds of the rows a `valid_fraction` split trains on, as indices into `examples`;
        // the rows it validates on are in neither part.
        let seed = config.split_seed();
        let (outer, _) = split_train_valid(examples, data.valid_fraction, seed);
        let inner: Vec<Example> = outer.iter().map(|&i| examples[i].clone()).collect();
        let (train, valid) = split_folds(&inner, data.folds, data.fold, seed);
        let to_outer = |indices: Vec<usize>| indices.into_iter().map(|i| outer[i]).collect();
        return Some((to_outer(train), to_outer(valid)));
    }
    if data.folds >= 2 {
        return Some(split_folds(
            examples,
            data.folds,
            data.fold,
            config.split_seed(),
        ));
    }
    (data.valid_fraction > 0.0)
        .then(|| split_train_valid(examples, data.valid_fraction, config.split_seed()))
}

/// Reads and tokenizes the training and validation data (a seeded stratified split of the
/// training file when no validation file is given: one fold of `folds` or `valid_fraction` of
/// it; none when `valid_fraction` is 0).
/// The training rows themselves come back too, in the training set's order, when a teacher
/// has to predict them (`train.distill_from`), and the validation rows, to see whether the
/// teachers trained on them.
fn load_data(config: &RunConfig, tokenizer: &TextTokenizer) -> Result<LoadedData> {
    let data = &config.data;
    let read = read_examples(&data.train, data)?;
    let all = Dataset::new(&read.examples, tokenizer)?;
    // `data.augment`: the variants of every row, file by file; the rows trained on bring theirs.
    let variants = data
        .augment
        .iter()
        .map(|path| {
            let rows = read_variants(path, data, &data.train, &read.examples)?;
            Ok(Dataset::new(&rows, tokenizer)?)
        })
        .collect::<Result<Vec<Dataset>>>()?;
    let with_variants = |train: Dataset, idx: &[usize]| -> Result<Dataset> {
        variants.iter().try_fold(
            train,
            |set, variants| Ok(set.concat(&variants.subset(idx))?),
        )
    };
    let every: Vec<usize> = (0..all.len()).collect();
    let mut valid_without_label = 0;
    // `train_idx`: the training rows when some are held out, else all of them.
    let distilling = !config.train.distill_from.is_empty();
    let mut valid_rows = Vec::new();
    let (train, valid, train_idx) = match &data.valid {
        Some(path) => {
            let valid = read_examples(path, data)?;
            valid_without_label = valid.without_label;
            let set = Dataset::new(&valid.examples, tokenizer)?;
            if distilling {
                valid_rows = valid.examples;
            }
            (with_variants(all, &every)?, Some(set), None)
        }
        None => match held_out(config, &read.examples) {
            Some((train_idx, valid_idx)) => {
                if distilling {
                    valid_rows = valid_idx
                        .iter()
                        .map(|&i| read.examples[i].clone())
                        .collect();
                }
                (
                    with_variants(all.subset(&train_idx), &train_idx)?,
                    Some(all.subset(&valid_idx)),
                    Some(train_idx),
                )
            }
            None => (with_variants(all, &every)?, None, None),
        },
    };
    let rows = distilling.then(|| {
        let train_rows = match &train_idx {
            Some(idx) => idx.iter().map(|&i| read.examples[i].clone()).collect(),
            None => read.examples.clone(),
        };
        DistillRows {
            train: train_rows,
            valid: valid_rows,
        }
    });
    // Under data.nested_folds the rows of neither part.
    let trained = train_idx.as_ref().map_or(read.examples.len(), Vec::len);
    let set_aside = read.examples.len()
        - trained
        - match (&data.valid, &valid) {
            (None, Some(valid)) => valid.len(),
            _ => 0,
        };
    let mut summary = DataSummary::new(&train, &data.labels, read.filtered_out)
        .with_without_label(read.without_label)
        .with_set_aside(set_aside)
        .with_variants(train.len() - trained);
    if !data.clean.is_off() {
        summary = summary.with_cleaned(read.cleaned);
    }
    Ok(LoadedData {
        train,
        valid,
        valid_without_label,
        summary,
        train_rows: rows,
    })
}

/// What [`load_data`] read.
struct LoadedData {
    train: Dataset,
    valid: Option<Dataset>,
    /// Rows of the validation file left out for holding none of `data.labels`.
    valid_without_label: usize,
    summary: DataSummary,
    /// The training and validation rows, when distilling.
    train_rows: Option<DistillRows>,
}

/// The rows a distilled run's teachers see: the training rows they label, in the training
/// set's order, and the validation rows, checked against what the teachers trained on.
struct DistillRows {
    train: Vec<Example>,
    valid: Vec<Example>,
}

/// Knowledge distillation's targets: the probabilities at `train.distill_temperature` of the
/// `train.distill_from` checkpoints for each training row, `(rows * labels)` row-major, the mean
/// over the checkpoints of `softmax(logits / T)` (each checkpoint reading the rows with its own
/// tokenizer, `max_len` and truncation; without its calibration temperature, as `T` takes that
/// role). Computed once, before training, on the run's device.
fn teacher_probs(
    config: &RunConfig,
    rows: &DistillRows,
    request: DeviceRequest,
    reporter: &mut dyn Reporter,
) -> Result<Vec<f32>> {
    let (valid, rows) = (&rows.valid, &rows.train);
    let t = &config.train;
    let key = "train.distill_from";
    for dir in &t.distill_from {
        if !dir.exists() {
            return Err(TrainError::config(
                key,
                format!("no checkpoint or run directory at {}", dir.display()),
            ));
        }
    }
    let started = Instant::now();
    let teacher = Ensemble::open(&t.distill_from, request)?;
    let first = &teacher.first().checkpoint;
    if teacher.labels() != config.data.labels.as_slice() || first.config.data.multi_label {
        return Err(TrainError::config(
            key,
            format!(
                "the teacher {} predicts {} labels {:?}; this run needs the single-label {:?} in \
                 that order",
                first.dir.display(),
                if first.config.data.multi_label {
                    "multi-label"
                } else {
                    "single-label"
                },
                teacher.labels(),
                config.data.labels
            ),
        ));
    }
    let members = teacher.members();
    let (probs, labelled_by) = teacher_targets(config, members, rows)?;
    reporter.message(&format!(
        "distillation: {} teacher checkpoint(s) ({}) predicted the {} training rows{labelled_by} \
         at temperature {} in {:.1} s",
        members.len(),
        t.distill_from
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        rows.len(),
        t.distill_temperature,
        started.elapsed().as_secs_f64()
    ));
    if !valid.is_empty() {
        match seen_by_teachers(members, valid) {
            Ok(0) => {}
            Ok(seen) => reporter.message(&format!(
                "warning: the teachers trained on {seen} of the {} validation rows (matched by \
                 text): what they learnt of those rows reaches this run through the targets of \
                 the rows beside them, so its validation scores are optimistic. Compare \
                 distilled runs on rows no teacher trained on (a test file)",
                valid.len()
            )),
            Err(e) => reporter.message(&format!(
                "note: whether the teachers trained on the validation rows is unknown: {e}"
            )),
        }
    }
    Ok(probs)
}

/// How many of `rows` some teacher trained on, matched by text (and pair).
fn seen_by_teachers(members: &[crate::infer::Predictor], rows: &[Example]) -> Result<usize> {
    let mut trained = Vec::new();
    for member in members {
        trained.extend(member.trained_rows()?);
    }
    let seen: std::collections::HashSet<_> = trained.iter().map(Example::input).collect();
    Ok(rows.iter().filter(|r| seen.contains(&r.input())).count())
}

/// [`teacher_probs`]' mean over the teachers, each row's over all of them or, under
/// `train.distill_out_of_fold`, over those whose runs did not train on it (rows matched by their
/// text, so the teachers must make a row's text as this run does); and, out of fold, a note of
/// how many teachers labelled each row.
fn teacher_targets(
    config: &RunConfig,
    members: &[crate::infer::Predictor],
    rows: &[Example],
) -> Result<(Vec<f32>, String)> {
    let out_of_fold = config.train.distill_out_of_fold;
    let key = "train.distill_out_of_fold";
    let data = &config.data;
    let width = data.labels.len();
    // Per row, the sum of the teachers' tempered probabilities and their count: over the
    // teachers that never saw its text, and apart, over those that held its own line out but
    // trained on the same text at another line (the fallback for a repeated text).
    let mut probs = vec![0f32; rows.len() * width];
    let mut count = vec![0u32; rows.len()];
    let mut repeat_probs = vec![0f32; rows.len() * width];
    let mut repeat_count = vec![0u32; rows.len()];
    for member in members {
        let (unseen, repeats) = if out_of_fold {
            unseen_rows(config, member, rows)?
        } else {
            ((0..rows.len()).collect(), Vec::new())
        };
        let wanted: Vec<usize> = unseen.iter().chain(&repeats).copied().collect();
        if wanted.is_empty() {
            continue;
        }
        let logits = if wanted.len() == rows.len() {
            member.predict_examples_uncalibrated(rows)?.logits
        } else {
            let subset: Vec<Example> = wanted.iter().map(|&i| rows[i].clone()).collect();
            member.predict_examples_uncalibrated(&subset)?.logits
        };
        let tempered = crate::calibration::scale(&logits, config.train.distill_temperature, false);
        for (k, (&i, p)) in wanted.iter().zip(&tempered).enumerate() {
            let (sums, counts) = if k < unseen.len() {
                (&mut probs, &mut count)
            } else {
                (&mut repeat_probs, &mut repeat_count)
            };
            for (sum, v) in sums[i * width..(i + 1) * width].iter_mut().zip(p) {
                *sum += v;
            }
            counts[i] += 1;
        }
    }
    // A row whose text every teacher saw, but some teacher only at another line of the file (its
    // copies fell into different folds): no teacher can label it out of fold, so it learns from
    // the teachers that held its own line out, and the note says how many rows did.
    let mut repeated = Vec::new();
    for i in 0..rows.len() {
        if count[i] == 0 && repeat_count[i] > 0 {
            probs[i * width..(i + 1) * width]
                .copy_from_slice(&repeat_probs[i * width..(i + 1) * width]);
            count[i] = repeat_count[i];
            repeated.push(&rows[i]);
        }
    }
    let unit = data.format_of(&data.train)?.unit();
    let missing: Vec<&Example> = rows
        .iter()
        .zip(&count)
        .filter(|(_, &n)| n == 0)
        .map(|(row, _)| row)
        .collect();
    if let Some(first) = missing.first() {
        let at = Location::new(&data.train, unit, first.line);
        return Err(TrainError::config(
            key,
            format!(
                "every teacher trained on {} of the {} training rows (the first at {at}): give \
                 teachers that hold each row out, such as the runs of data.folds = K with \
                 data.fold = 0..K-1 on this file",
                missing.len(),
                rows.len(),
            ),
        ));
    }
    for (row, &n) in probs.chunks_mut(width).zip(&count) {
        row.iter_mut().for_each(|p| *p /= n as f32);
    }
    if !out_of_fold {
        return Ok((probs, String::new()));
    }
    let least = count.iter().copied().min().unwrap_or(0);
    let most = count.iter().copied().max().unwrap_or(0);
    let how_many = if least == most {
        format!("{least}")
    } else {
        format!("{least} to {most}")
    };
    let mut note =
        format!(" out of fold (each by the {how_many} teacher(s) that did not train on it)");
    if let Some(first) = repeated.first() {
        note.push_str(&format!(
            "; {} of them (the first at {}) repeat the text of a row in another fold, so every \
             teacher trained on that text: they learn from the teachers that held their own line \
             out",
            repeated.len(),
            Location::new(&data.train, unit, first.line)
        ));
    }
    Ok((probs, note))
}

/// The indices of `rows` whose text is not among the rows `member`'s run trained on, and apart
/// those whose text it trained on only at other lines of the same file (a repeated text whose
/// copies fell into different folds); an error when the teacher makes a row's text otherwise
/// than this run.
fn unseen_rows(
    config: &RunConfig,
    member: &crate::infer::Predictor,
    rows: &[Example],
) -> Result<(Vec<usize>, Vec<usize>)> {
    let key = "train.distill_out_of_fold";
    let data = &config.data;
    let theirs = &member.checkpoint.config.data;
    let reads = |d: &wick_data::DataConfig| {
        (
            d.text_fields.clone(),
            d.pair_fields.clone(),
            d.text_separator.clone(),
            d.clean.clone(),
        )
    };
    if reads(theirs) != reads(data) {
        return Err(TrainError::config(
            key,
            format!(
                "the teacher {} makes a row's text from {:?} (pair: {:?}) joined by {:?} \
                 (clean: {:?}), this run from {:?} (pair: {:?}) joined by {:?} (clean: {:?}): \
                 rows are matched to the teachers' training rows by their text, so these must \
                 agree",
                member.checkpoint.dir.display(),
                theirs.text_fields,
                theirs.pair_fields,
                theirs.text_separator,
                theirs.clean,
                data.text_fields,
                data.pair_fields,
                data.text_separator,
                data.clean
            ),
        ));
    }
    let trained = member.trained_rows().map_err(|e| {
        TrainError::config(
            key,
            format!(
                "the rows the teacher {} trained on: {e}",
                member.checkpoint.dir.display()
            ),
        )
    })?;
    let seen: std::collections::HashSet<_> = trained.iter().map(Example::input).collect();
    let (unseen, seen_rows): (Vec<usize>, Vec<usize>) =
        (0..rows.len()).partition(|&i| !seen.contains(&rows[i].input()));
    // Lines identify rows only within one file.
    let repeats = if theirs.train == data.train {
        let lines: std::collections::HashSet<usize> = trained.iter().map(|r| r.line).collect();
        seen_rows
            .into_iter()
            .filter(|&i| !lines.contains(&rows[i].line))
            .collect()
    } else {
        Vec::new()
    };
    Ok((unseen, repeats))
}

/// Writes the teachers' targets as JSON lines, one per training row in the training set's order:
/// `{"line", "label", "probs": {label: p}}` (probabilities at the distillation temperature).
fn write_distill_targets(
    path: &Path,
    rows: &[Example],
    probs: &[f32],
    labels: &[String],
) -> Result<()> {
    let mut out = String::new();
    for (row, p) in rows.iter().zip(probs.chunks(labels.len())) {
        let probs: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .zip(p)
            .map(|(label, &v)| (label.clone(), serde_json::json!(v)))
            .collect();
        // Distillation is single-label only.
        let label = match row.target {
            wick_data::Target::Single(id) => labels.get(id as usize),
            _ => None,
        };
        out.push_str(
            &serde_json::json!({"line": row.line, "label": label, "probs": probs}).to_string(),
        );
        out.push('\n');
    }
    std::fs::write(path, out).map_err(TrainError::io(path))
}

fn class_weights(config: &RunConfig, train: &Dataset, device: &Device) -> Result<Option<Tensor>> {
    let labels = config.data.labels.len();
    let weights: Vec<f32> = match &config.train.class_weights {
        None => return Ok(None),
        Some(ClassWeights::Explicit(w)) => w.iter().map(|&x| x as f32).collect(),
        Some(ClassWeights::Rule(WeightRule::Balanced)) => {
            let mut counts = vec![0f64; labels];
            match train.targets() {
                wick_data::Targets::Single(ids) => {
                    ids.iter().for_each(|&i| counts[i as usize] += 1.0)
                }
                wick_data::Targets::Multi { values, num_labels } => {
                    for row in values.chunks(*num_labels) {
                        row.iter()
                            .enumerate()
                            .for_each(|(i, &v)| counts[i] += f64::from(v));
                    }
                }
                wick_data::Targets::None => {}
            }
            let n = train.len() as f64;
            counts
                .iter()
                .map(|&c| (n / (labels as f64 * c.max(1.0))) as f32)
                .collect()
        }
    };
    Ok(Some(Tensor::from_vec(weights, labels, device)?))
}

/// What the training objective is, when it is more than the plain loss.
fn describe_objective(t: &TrainConfig) -> Option<String> {
    let distilling = !t.distill_from.is_empty();
    let mut objective = if t.contrastive_weight > 0.0 {
        format!(
            "{:.2} x cross-entropy + {:.2} x supervised contrastive loss of the pooled \
             embeddings (train.contrastive_weight, temperature {})",
            1.0 - t.contrastive_weight,
            t.contrastive_weight,
            t.contrastive_temperature
        )
    } else if t.rdrop_weight > 0.0 || distilling {
        "the loss".to_string()
    } else {
        return None;
    };
    if distilling {
        objective = format!(
            "{:.2} x ({objective}) + {:.2} x T^2 KL(teacher || model) at T = {} (knowledge \
             distillation, train.distill_weight)",
            1.0 - t.distill_weight,
            t.distill_weight,
            t.distill_temperature
        );
    }
    if t.rdrop_weight > 0.0 {
        objective = format!(
            "{objective}, averaged over two passes of each batch with independent dropout \
             masks, + {} x their symmetric KL divergence (R-Drop, train.rdrop_weight {}; twice \
             the compute and activation memory per step)",
            t.rdrop_weight / 2.0,
            t.rdrop_weight
        );
    }
    Some(objective)
}

/// Builds the classifier on `device` with placeholder values.
fn build_model(
    config: &RunConfig,
    bert: &BertConfig,
    device: &Device,
) -> candle_core::Result<(VarMap, Classifier)> {
    let task = if config.data.multi_label {
        Task::MultiLabel
    } else {
        Task::SingleLabel
    };
    Classifier::build_with_lora(
        bert,
        config.data.labels.len(),
        task,
        config.model.head_dropout(bert),
        config.train.precision.dtype(),
        device,
        config.train.seed,
        &config.model.lora,
    )
}

/// One forward and backward pass of a 2-layer model of this run's shape on `device`: finds a
/// missing op before any real work starts.
fn preflight_check(
    config: &RunConfig,
    bert: &BertConfig,
    device: &Device,
) -> candle_core::Result<()> {
    let tiny = BertConfig {
        num_hidden_layers: 1,
        ..bert.clone()
    };
    let (varmap, model) = build_model(config, &tiny, device)?;
    init_all(&varmap, 0.02, 0).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let ids = Tensor::new(&[[1u32, 2, 3, 0], [1, 2, 0, 0]], device)?;
    let mask = Tensor::new(&[[1u32, 1, 1, 0], [1, 1, 0, 0]], device)?;
    let logits = model.forward(&ids, &ids.zeros_like()?, &mask, true)?;
    let loss = logits.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    // The preflight's own result read: a sync point before training starts.
    grads
        .get(varmap.all_vars()[0].as_tensor())
        .map(|g| g.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>())
        .transpose()?;
    Ok(())
}

impl Trainer {
    /// Validates the config, reads and tokenizes the data, chooses the device (with a preflight
    /// forward/backward), builds the model and optimizer, and restores a checkpoint if asked.
    pub fn new(
        config: RunConfig,
        options: &RunOptions,
        reporter: &mut dyn Reporter,
    ) -> Result<Self> {
        config.validate()?;
        let previous = previous_run(options)?;
        let files = locate_model(&config, options.resume.as_deref())?;
        config.validate_against(&files.bert)?;
        let bert = files.bert;
        let tokenizer = TextTokenizer::from_file(&files.tokenizer, config.data.max_len)?
            .with_truncation(config.data.truncation());
        crate::infer::check_pairs(&tokenizer, &files.tokenizer, &bert, &config.data)?;
        let LoadedData {
            train,
            valid,
            valid_without_label,
            summary: train_summary,
            train_rows,
        } = load_data(&config, &tokenizer)?;
        if !config.data.pair_fields.is_empty() {
            reporter.message(&format!(
                "input: text pairs, {} then {} (tokens counted below are both texts'; a long \
                 pair is cut longest first)",
                config.data.text_fields.join(" + "),
                config.data.pair_fields.join(" + ")
            ));
        }
        if let (Some(path), true) = (&config.data.valid, valid_without_label > 0) {
            reporter.message(&format!(
                "{}: {valid_without_label} rows with none of data.labels left out \
                 (data.other_labels = \"ignore\")",
                path.display()
            ));
        }

        let chosen = device::choose(options.device)?;
        let (chosen, warning) = device::preflight(chosen, options.device, |d| {
            preflight_check(&config, &bert, d)
        })?;
        if let Some(warning) = warning {
            reporter.message(&format!("warning: {warning}"));
        }
        let device = chosen.device.clone();

        let (varmap, mut model) = build_model(&config, &bert, &device)?;
        match (&files.resume, &files.weights, config.model.init) {
            (Some(ck), _, _) => ck.load_weights(&varmap)?,
            (None, Some(weights), Init::Pretrained) => {
                let report = load_safetensors(&varmap, weights, false)?;
                reporter.message(&format!(
                    "loaded {} encoder tensors from {} (unused: {})",
                    report.loaded,
                    weights.display(),
                    if report.unused.is_empty() {
                        "none".to_string()
                    } else {
                        report.unused.join(", ")
                    }
                ));
                init_head(&varmap, bert.initializer_range, config.train.seed)?;
                init_lora(&varmap, config.train.seed)?;
            }
            _ => init_all(&varmap, bert.initializer_range, config.train.seed)?,
        }
        model.set_frozen_encoder(config.train.freeze_encoder);
        model.set_gradient_checkpointing(config.train.gradient_checkpointing);
        if config.train.gradient_checkpointing && device.is_metal() {
            reporter.message(
                "gradient checkpointing on metal: the device is synchronized before each \
                 layer's forward pass and its recomputation, so that the recomputed dropout \
                 masks are the first pass's (Metal's generator reads its seed when a kernel runs)",
            );
        }

        let t = &config.train;
        let head_scale = t.head_lr.map_or(1.0, |head| head / t.lr);
        let vars = named_vars(&varmap);
        let layers = vars
            .iter()
            .filter_map(|(name, _)| encoder_layer(name))
            .max()
            .map_or(0, |top| top + 1);
        if t.layer_lr_decay < 1.0 && !t.freeze_encoder {
            reporter.message(&format!(
                "layer-wise lr decay {}: encoder layer {} at lr x 1, layer 0 at x {:.3}, embeddings at x {:.3}",
                t.layer_lr_decay,
                layers.saturating_sub(1),
                layer_lr_scale("encoder.layer.0.", layers, t.layer_lr_decay),
                layer_lr_scale("embeddings.", layers, t.layer_lr_decay),
            ));
        }
        let lora = &config.model.lora;
        if lora.enabled() {
            reporter.message(&format!(
                "LoRA: rank {} adapters (alpha {}, scale {}) on {} in every encoder layer; the \
                 encoder's own weights are frozen, the adapters and the head train",
                lora.rank,
                lora.alpha,
                lora.scale(),
                lora.target_names()
            ));
        }
        let trains = |name: &str| {
            if t.freeze_encoder {
                is_head(name)
            } else if lora.enabled() {
                is_new(name)
            } else {
                true
            }
        };
        let params: Vec<ParamSpec> = vars
            .into_iter()
            .filter(|(name, _)| trains(name))
            .map(|(name, var)| {
                let lr_scale = if is_head(&name) {
                    head_scale
                } else {
                    layer_lr_scale(&name, layers, t.layer_lr_decay)
                };
                ParamSpec::new(name, var, t.weight_decay, lr_scale)
            })
            .collect();
        let mut optimizer = AdamW::new(params, t.beta1, t.beta2, t.eps)?;
        let mut average = if t.ema_decay > 0.0 {
            let params = optimizer.params().map(|p| (p.name.clone(), p.var.clone()));
            reporter.message(&format!(
                "weight average: evaluating and saving the moving average of the weights \
                 (train.ema_decay = {}, horizon about {:.0} steps)",
                t.ema_decay,
                1.0 / (1.0 - t.ema_decay)
            ));
            Some(WeightAverage::new(params, t.ema_decay)?)
        } else {
            None
        };
        if let Some(ck) = &files.resume {
            // The checkpoint's model file holds averages exactly when its run kept them.
            if (ck.config.train.ema_decay > 0.0) != average.is_some() {
                return Err(TrainError::config(
                    "train.ema_decay",
                    format!(
                        "is {} but the checkpoint {} was trained with {}: a weight average cannot \
                         be turned on or off when resuming",
                        t.ema_decay,
                        ck.dir.display(),
                        ck.config.train.ema_decay
                    ),
                ));
            }
        }

        let batches_per_epoch = train.len().div_ceil(t.batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(t.grad_accum_steps);
        let total_steps = if t.max_steps > 0 {
            t.max_steps
        } else {
            steps_per_epoch * t.epochs
        };
        let warmup_steps = t
            .warmup_steps
            .unwrap_or((t.warmup_ratio * total_steps as f64).ceil() as usize);
        let schedule = Schedule {
            peak: t.lr,
            warmup_steps,
            total_steps,
            decay: t.decay,
        };
        let mut scaler = match config.train.precision {
            Precision::F16 => Some(LossScaler::new(&device, 65536.0, 2000)?),
            _ => None,
        };
        let state = match &files.resume {
            Some(ck) => {
                ck.load_optimizer(&mut optimizer, scaler.as_mut(), average.as_mut())?;
                reporter.message(&format!(
                    "resuming from {} at step {}",
                    ck.dir.display(),
                    ck.state.step
                ));
                ck.state.clone()
            }
            None => TrainState::default(),
        };
        if let Some(objective) = describe_objective(t) {
            reporter.message(&format!(
                "objective: {objective}; the logged training loss is this objective, \
                 evaluations report the plain loss"
            ));
        }
        let loss_options = LossOptions {
            label_smoothing: t.label_smoothing,
            class_weights: class_weights(&config, &train, &device)?,
            contrastive_weight: t.contrastive_weight,
            contrastive_temperature: t.contrastive_temperature,
            rdrop_weight: t.rdrop_weight,
            distill_weight: t.distill_weight,
            distill_temperature: t.distill_temperature,
        };
        let teacher = match &train_rows {
            Some(rows) => Some(teacher_probs(&config, rows, options.device, reporter)?),
            None => None,
        };
        let parameters = named_vars(&varmap)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum::<usize>();
        let trainable = optimizer.trainable_elements();
        let act_bytes = config.train.precision.dtype().size_in_bytes() as u64;
        let mut plan = Plan {
            device: chosen.name.clone(),
            device_reason: chosen.reason.clone(),
            compiled: device::compiled_backends(),
            model: files.provenance.model_id.clone(),
            valid_examples: valid.as_ref().map_or(0, Dataset::len),
            train_summary,
            epochs: t.epochs,
            steps_per_epoch,
            total_steps,
            start_step: state.step as usize,
            parameters,
            trainable_parameters: trainable,
            memory: MemoryBudget::estimate(
                &bert,
                parameters as u64,
                trainable as u64,
                // R-Drop's two passes hold the activations of twice the rows.
                (
                    (t.batch_size * loss_options.passes()) as u64,
                    config.data.max_len as u64,
                ),
                act_bytes,
                crate::budget::Kernels::on(&device, config.train.precision.dtype()),
                // The model's own setting, so the line says what the step will do.
                model.encoder().gradient_checkpointing(),
            ),
        };
        if average.is_some() {
            plan.memory = plan.memory.with_average(trainable as u64);
        }
        if lora.enabled() {
            plan.memory = plan
                .memory
                .with_lora(crate::budget::adapted_elements(&varmap), act_bytes);
        }
        if !previous.is_empty() {
            reporter.message(&format!(
                "overwriting the previous run in {}",
                options.out_dir.display()
            ));
        }
        clear_previous_run(&previous)?;
        std::fs::create_dir_all(&options.out_dir).map_err(TrainError::io(&options.out_dir))?;
        let resolved = options.out_dir.join(checkpoint::RUN_CONFIG);
        std::fs::write(&resolved, config.to_toml()?).map_err(TrainError::io(&resolved))?;
        if let (Some(rows), Some(probs)) = (&train_rows, &teacher) {
            let path = options.out_dir.join(checkpoint::DISTILL_TARGETS);
            write_distill_targets(&path, &rows.train, probs, &config.data.labels)?;
        }
        Ok(Self {
            config,
            bert,
            varmap,
            model,
            optimizer,
            schedule,
            train,
            valid,
            device,
            out_dir: options.out_dir.clone(),
            tokenizer_path: files.tokenizer,
            provenance: files.provenance,
            state,
            loss_options,
            scaler,
            plan,
            stop: StopFlag::new(),
            calibration: None,
            average,
            teacher,
        })
    }

    /// The run's config, as validated.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The flag that stops [`Trainer::fit`] after its current step, with that step saved.
    pub fn stop_flag(&self) -> &StopFlag {
        &self.stop
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn model(&self) -> &Classifier {
        &self.model
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn eval_batch_size(&self) -> usize {
        match self.config.eval.batch_size {
            0 => self.config.train.batch_size * 2,
            n => n,
        }
    }

    /// Scores the model on the validation split, if there is one. The loss is plain
    /// cross-entropy (or BCE), without training-time label smoothing or class weights.
    pub fn evaluate(&self) -> Result<Option<ClassificationReport>> {
        match self.predict_valid()? {
            None => Ok(None),
            Some((predictions, targets)) => Ok(Some(eval::report(
                &self.config.data.labels,
                targets,
                &predictions,
            )?)),
        }
    }

    /// The model's probabilities and plain loss on the validation split, with its targets (in
    /// the split's order), if there is one: what an ensemble averages.
    pub fn predict_valid(&self) -> Result<Option<(Predictions, &Targets)>> {
        let Some(valid) = &self.valid else {
            return Ok(None);
        };
        let predictions = device::with_autorelease_pool(|| {
            eval::predict(
                &self.model,
                valid,
                self.eval_batch_size(),
                &self.device,
                // The plain loss, as `evaluate` reports it for the same checkpoint.
                &LossOptions::default(),
            )
        })?;
        Ok(Some((predictions, valid.targets())))
    }

    /// One optimizer step over `micro_batches` (example indices), dropout seeded by the step.
    fn train_step(&mut self, micro_batches: &[Vec<usize>], lr: f64) -> Result<StepOutput> {
        self.model
            .encoder()
            .rng()
            .reseed(self.config.train.seed, self.state.step, &self.device)?;
        let mut tokens = 0;
        let batches = micro_batches
            .iter()
            .map(|indices| {
                let host = self.train.batch(indices);
                tokens += host.batch_size * host.seq_len;
                let mut batch = host.to_tensors(&self.device)?;
                if let Some(probs) = &self.teacher {
                    let width = self.config.data.labels.len();
                    let rows: Vec<f32> = host
                        .indices
                        .iter()
                        .flat_map(|&i| probs[i * width..(i + 1) * width].iter().copied())
                        .collect();
                    batch.teacher = Some(Tensor::from_vec(
                        rows,
                        (host.batch_size, width),
                        &self.device,
                    )?);
                }
                Ok(batch)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut out = optimizer_step(
            &self.model,
            &mut self.optimizer,
            &batches,
            &self.loss_options,
            self.config.train.max_grad_norm,
            lr,
            self.scaler.as_mut(),
        )?;
        out.tokens = tokens;
        Ok(out)
    }

    /// Puts the weight average (if any) into the model, for evaluation and checkpoints.
    fn use_average(&mut self) -> Result<()> {
        if let Some(average) = &mut self.average {
            average.swap_in()?;
        }
        Ok(())
    }

    /// Puts the trained weights (if averaged) back into the model, for training; true when it
    /// had to swap them.
    fn use_trained(&mut self) -> Result<bool> {
        match &mut self.average {
            Some(average) => Ok(average.swap_out()?),
            None => Ok(false),
        }
    }

    /// Writes `last/` (and `checkpoint-<step>/`, `best/` when asked) atomically, with the weight
    /// average in place of the trained weights when there is one.
    fn save_checkpoint(
        &mut self,
        metrics: Option<&ClassificationReport>,
        is_best: bool,
        reporter: &mut dyn Reporter,
    ) -> Result<()> {
        self.use_average()?;
        let last = self.out_dir.join("last");
        checkpoint::save(
            &last,
            &Contents {
                varmap: &self.varmap,
                optimizer: &self.optimizer,
                config: &self.config,
                bert: &self.bert,
                tokenizer: &self.tokenizer_path,
                state: &self.state,
                provenance: &self.provenance,
                scaler: self.scaler.as_ref(),
                average: self.average.as_ref(),
                metrics: metrics.map(ClassificationReport::to_json),
                // Only the weights it was fitted on get it.
                calibration: self
                    .calibration
                    .as_ref()
                    .filter(|c| c.step == self.state.step),
            },
        )?;
        reporter.checkpoint(&last);
        if self.config.train.keep_last > 0 {
            checkpoint::snapshot(
                &last,
                &self.out_dir.join(format!("checkpoint-{}", self.state.step)),
            )?;
            checkpoint::prune(&self.out_dir, self.config.train.keep_last)?;
        }
        if is_best {
            let best = self.out_dir.join("best");
            checkpoint::snapshot(&last, &best)?;
            reporter.checkpoint(&best);
        }
        Ok(())
    }

    /// Evaluates (the weight average, when there is one), records the result and updates the
    /// best metric; returns the report and whether it is the best so far.
    fn evaluate_and_track(
        &mut self,
        log: &mut MetricsLog,
        reporter: &mut dyn Reporter,
    ) -> Result<Option<(ClassificationReport, bool)>> {
        self.use_average()?;
        let Some((predictions, targets)) = self.predict_valid()? else {
            return Ok(None);
        };
        let report = eval::report(&self.config.data.labels, targets, &predictions)?;
        let calibration = if self.config.eval.calibrate {
            match Calibration::fit(&predictions.logits, targets, self.state.step) {
                Ok(fit) => Some(fit),
                Err(why) => {
                    reporter.message(&format!("calibration at step {}: {why}", self.state.step));
                    None
                }
            }
        } else {
            None
        };
        let metric_name = self.config.eval.metric.clone();
        let value = report.metric(&metric_name).unwrap_or(f64::NAN);
        let better = match self.state.best_metric {
            None => true,
            Some(best) if ClassificationReport::higher_is_better(&metric_name) => value > best,
            Some(best) => value < best,
        };
        if better {
            self.state.best_metric = Some(value);
            self.state.best_step = Some(self.state.step);
            self.state.evals_since_best = 0;
        } else {
            self.state.evals_since_best += 1;
        }
        let mut record =
            json!({"kind": "eval", "step": self.state.step, "epoch": self.state.epoch});
        for (key, value) in [
            ("loss", report.loss),
            ("accuracy", Some(report.accuracy)),
            ("macro_f1", Some(report.macro_f1)),
            ("ece", report.ece),
        ] {
            record[key] = json!(value);
        }
        if let Some(c) = &calibration {
            record["temperature"] = json!(c.temperature);
            record["calibrated_loss"] = json!(c.loss_after);
            record["calibrated_ece"] = json!(c.ece_after);
        }
        self.calibration = calibration;
        log.write(&record).map_err(TrainError::io(log.path()))?;
        reporter.evaluated(self.state.step as usize, &report);
        Ok(Some((report, better)))
    }

    /// The learning-rate range test ([`crate::lr_find`]): `steps` optimizer steps in the
    /// configured data order, the rate of step `i` [`lr_find::ramp`]`(min_lr, max_lr, steps, i)`
    /// (times the head's and layers' scales, as in training), and the mean training loss of each.
    /// The losses stay on the device until the last step, then come back in one read. The
    /// weights and optimizer moments are left trained by the ramp: use a trainer made for the
    /// test, and no checkpoint is written.
    pub fn lr_range_test(
        &mut self,
        min_lr: f64,
        max_lr: f64,
        steps: usize,
    ) -> Result<lr_find::LrCurve> {
        if let Some(reason) = lr_find::check_range(min_lr, max_lr, steps) {
            return Err(TrainError::config("lr_range_test", reason));
        }
        let t = self.config.train.clone();
        let lengths = self.train.lengths();
        let mut lrs = Vec::with_capacity(steps);
        let mut losses = Vec::with_capacity(steps);
        let mut epoch = 0;
        while lrs.len() < steps {
            let order = epoch_order(
                self.train.len(),
                &lengths,
                t.batch_size,
                t.seed,
                epoch,
                t.shuffle,
                self.config.data.bucket_window,
            );
            for group in order.chunks(t.grad_accum_steps) {
                if lrs.len() == steps {
                    break;
                }
                let lr = lr_find::ramp(min_lr, max_lr, steps, lrs.len());
                let out = device::with_autorelease_pool(|| self.train_step(group, lr))?;
                self.state.step += 1;
                losses.push(out.loss_sum.affine(1.0 / group.len() as f64, 0.0)?);
                lrs.push(lr);
            }
            epoch += 1;
        }
        let losses: Vec<f64> = Tensor::stack(&losses, 0)?.to_dtype(DType::F64)?.to_vec1()?;
        Ok(lr_find::LrCurve::new(lrs, losses, 0.98))
    }

    /// Runs until the configured epochs or steps are done, or early stopping triggers. With a
    /// weight average (`train.ema_decay`) the model holds the average afterwards, as `last/`
    /// does.
    pub fn fit(&mut self, reporter: &mut dyn Reporter) -> Result<Outcome> {
        self.use_trained()?;
        reporter.start(&self.plan);
        let metrics_path = self.out_dir.join(checkpoint::METRICS);
        let mut log = MetricsLog::create(&metrics_path).map_err(TrainError::io(&metrics_path))?;
        if self.config.train.tensorboard {
            let dir = self.out_dir.join(checkpoint::TENSORBOARD);
            log = log.with_tensorboard(&dir).map_err(TrainError::io(&dir))?;
        }
        let t = self.config.train.clone();
        let total_steps = self.plan.total_steps;
        let lengths = self.train.lengths();
        let mut window = LogWindow::start(&self.device)?;
        let mut last_eval = None;
        let mut stopped_early = false;
        let mut interrupted = false;
        let mut saved_at = None;
        let _running = self.stop.enter();

        'epochs: while (self.state.epoch as usize) < t.epochs.max(1) || t.max_steps > 0 {
            if self.state.step as usize >= total_steps {
                break;
            }
            let order = epoch_order(
                self.train.len(),
                &lengths,
                t.batch_size,
                t.seed,
                self.state.epoch,
                t.shuffle,
                self.config.data.bucket_window,
            );
            while self.state.batch_in_epoch < order.len() {
                let end = (self.state.batch_in_epoch + t.grad_accum_steps).min(order.len());
                let group = &order[self.state.batch_in_epoch..end];
                let lr = self.schedule.lr(self.state.step as usize);
                let out = device::with_autorelease_pool(|| self.train_step(group, lr))?;
                self.state.batch_in_epoch = end;
                self.state.step += 1;
                if let Some(average) = &mut self.average {
                    average.update(self.state.step)?;
                }
                window.add(
                    out.loss_sum,
                    group.len(),
                    group.iter().map(Vec::len).sum(),
                    out.tokens,
                )?;
                let step = self.state.step as usize;
                reporter.step(&Progress {
                    step,
                    total_steps,
                    epoch: self.state.epoch as usize,
                    batch_in_epoch: end,
                    batches_in_epoch: order.len(),
                    lr,
                });
                if step.is_multiple_of(t.log_every) || step == total_steps {
                    let record = window.read(
                        step,
                        self.state.epoch as usize,
                        lr,
                        out.grad_norm.as_ref(),
                        &self.device,
                    )?;
                    log.write(&json!({
                        "kind": "train", "step": record.step, "epoch": record.epoch, "loss": record.loss,
                        "lr": record.lr, "grad_norm": record.grad_norm, "examples_per_s": record.examples_per_s,
                        "tokens_per_s": record.tokens_per_s,
                    }))
                    .map_err(TrainError::io(&metrics_path))?;
                    reporter.log(&record);
                }
                let mut is_best = false;
                if self.config.eval.every_steps > 0
                    && step.is_multiple_of(self.config.eval.every_steps)
                {
                    if let Some((report, better)) = self.evaluate_and_track(&mut log, reporter)? {
                        is_best = better;
                        last_eval = Some(report);
                    }
                    window.restart(&self.device)?;
                }
                let epoch_done = self.state.batch_in_epoch >= order.len();
                if epoch_done {
                    self.state.epoch += 1;
                    self.state.batch_in_epoch = 0;
                    if self.config.eval.every_epoch {
                        if let Some((report, better)) =
                            self.evaluate_and_track(&mut log, reporter)?
                        {
                            is_best |= better;
                            last_eval = Some(report);
                        }
                        window.restart(&self.device)?;
                    }
                }
                let finished = step >= total_steps;
                let patience_out = self.config.eval.patience > 0
                    && self.state.evals_since_best >= self.config.eval.patience;
                let periodic = t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every);
                if periodic || epoch_done || finished || patience_out || is_best {
                    self.save_checkpoint(last_eval.as_ref(), is_best, reporter)?;
                    saved_at = Some(step);
                    window.restart(&self.device)?;
                }
                if self.use_trained()? {
                    // The swap back is no training time either.
                    window.restart(&self.device)?;
                }
                if patience_out {
                    reporter.message(&format!(
                        "early stopping: {} evaluations without improving {}",
                        self.state.evals_since_best, self.config.eval.metric
                    ));
                    stopped_early = true;
                    break 'epochs;
                }
                if self.stop.is_requested() && !finished {
                    reporter.message(&format!(
                        "stopped on request at step {step} of {total_steps}"
                    ));
                    interrupted = true;
                    break 'epochs;
                }
                if finished || epoch_done {
                    continue 'epochs;
                }
            }
        }
        if saved_at != Some(self.state.step as usize) {
            self.save_checkpoint(last_eval.as_ref(), false, reporter)?;
        }
        self.use_average()?;
        if !interrupted && !self.out_dir.join("best").exists() {
            // No validation data: the last weights are the best we know.
            checkpoint::snapshot(&self.out_dir.join("last"), &self.out_dir.join("best"))?;
        }
        let records =
            crate::metrics::read_records(&metrics_path).map_err(TrainError::io(&metrics_path))?;
        let plot = self.out_dir.join(checkpoint::PLOT);
        crate::plot::write_svg(&plot, &records).map_err(TrainError::io(&plot))?;
        reporter.finish();
        Ok(Outcome {
            steps: self.state.step as usize,
            stopped_early,
            interrupted,
            best: self.state.best_metric.zip(self.state.best_step),
            last_eval,
            run_dir: self.out_dir.clone(),
        })
    }
}

/// What one optimizer step leaves on the device.
#[derive(Debug)]
pub struct StepOutput {
    /// Sum of the micro-batches' mean losses (detached).
    pub loss_sum: Tensor,
    /// Global gradient norm before clipping.
    pub grad_norm: Option<Tensor>,
    /// Tokens processed, padding included.
    pub tokens: usize,
}

/// Forward and backward over micro-batches already on the device, gradient accumulation,
/// global-norm clipping and one AdamW update: the whole training step, with no device->host
/// read. The trainer and the benchmark both call this.
pub fn optimizer_step(
    model: &Classifier,
    optimizer: &mut AdamW,
    micro_batches: &[TensorBatch],
    loss_options: &LossOptions,
    max_grad_norm: f64,
    lr: f64,
    scaler: Option<&mut LossScaler>,
) -> Result<StepOutput> {
    let mut grads: Option<Gradients> = None;
    let mut loss_sum: Option<Tensor> = None;
    let device = model.encoder().device();
    for batch in micro_batches {
        ensure_same_device("batch input_ids", device, batch.input_ids.device())?;
        let labels = batch
            .labels
            .as_ref()
            .ok_or_else(|| TrainError::config("data.label_field", "training data has no labels"))?;
        let loss = model.train_objective(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            labels,
            batch.teacher.as_ref(),
            loss_options,
        )?;
        let mut scaled = (&loss / micro_batches.len() as f64)?;
        if let Some(scaler) = scaler.as_deref() {
            scaled = scaled.broadcast_mul(scaler.scale())?;
        }
        let step_grads = optimizer.collect(&scaled.backward()?);
        match grads.as_mut() {
            Some(g) => g.accumulate(step_grads)?,
            None => grads = Some(step_grads),
        }
        let loss = loss.detach();
        loss_sum = Some(match loss_sum {
            Some(sum) => (sum + loss)?,
            None => loss,
        });
    }
    let (Some(mut grads), Some(loss_sum)) = (grads, loss_sum) else {
        return Err(TrainError::config(
            "train.batch_size",
            "an optimizer step got no batches",
        ));
    };
    let apply = match scaler {
        Some(scaler) => Some(scaler.unscale_and_update(&mut grads)?),
        None => None,
    };
    let grad_norm = grads.clip(max_grad_norm)?;
    optimizer.step_if(&grads, lr, apply.as_ref())?;
    Ok(StepOutput {
        loss_sum,
        grad_norm,
        tokens: 0,
    })
}

/// Training loss and throughput between two logging boundaries. The loss is summed on the
/// device; the clock is read only after synchronizing, so queued work is counted.
struct LogWindow {
    loss_sum: Option<Tensor>,
    micro_batches: usize,
    examples: usize,
    tokens: usize,
    since: Instant,
}

impl LogWindow {
    fn start(device: &Device) -> Result<Self> {
        device::synchronize(device)?;
        Ok(Self {
            loss_sum: None,
            micro_batches: 0,
            examples: 0,
            tokens: 0,
            since: Instant::now(),
        })
    }

    /// Starts the clock again after work that is not training (evaluation, checkpoints).
    fn restart(&mut self, device: &Device) -> Result<()> {
        device::synchronize(device)?;
        self.since = Instant::now();
        self.examples = 0;
        self.tokens = 0;
        Ok(())
    }

    /// Adds one optimizer step: the sum of its `micro_batches` mean losses.
    fn add(
        &mut self,
        loss_sum: Tensor,
        micro_batches: usize,
        examples: usize,
        tokens: usize,
    ) -> Result<()> {
        self.micro_batches += micro_batches;
        self.examples += examples;
        self.tokens += tokens;
        self.loss_sum = Some(match self.loss_sum.take() {
            Some(sum) => (sum + loss_sum)?,
            None => loss_sum,
        });
        Ok(())
    }

    fn read(
        &mut self,
        step: usize,
        epoch: usize,
        lr: f64,
        norm: Option<&Tensor>,
        device: &Device,
    ) -> Result<LogRecord> {
        device::synchronize(device)?;
        let seconds = self.since.elapsed().as_secs_f64().max(1e-9);
        // Loss and gradient norm as f32: a device->host sync point (logging boundary).
        let loss_sum = match self.loss_sum.take() {
            Some(sum) => crate::sync::scalar(&sum)?,
            None => f64::NAN,
        };
        let grad_norm = match norm {
            Some(norm) => crate::sync::scalar(norm)?,
            None => f64::NAN,
        };
        let record = LogRecord {
            step,
            epoch,
            loss: loss_sum / self.micro_batches.max(1) as f64,
            lr,
            grad_norm,
            examples_per_s: self.examples as f64 / seconds,
            tokens_per_s: self.tokens as f64 / seconds,
        };
        self.micro_batches = 0;
        self.restart(device)?;
        Ok(record)
    }
}
