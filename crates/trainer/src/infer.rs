//! Using a checkpoint: load it on a device, predict texts, score a labelled file.

use std::path::Path;

use candle_core::{DType, Device};
use wick_data::{read_examples, read_unlabelled, Dataset, TextTokenizer};
use wick_model::classifier::LossOptions;
use wick_model::{Classifier, Task};

use crate::checkpoint::{self, Checkpoint};
use crate::device::{self, DeviceRequest};
use crate::error::{Result, TrainError};
use crate::eval::{self, Predictions};
use crate::metrics::ClassificationReport;
use crate::priors::Priors;

/// Indices of a run's training and validation rows in its `data.train`.
type TrainValid = (Vec<usize>, Vec<usize>);

/// A trained classifier ready to score text.
pub struct Predictor {
    pub checkpoint: Checkpoint,
    pub model: Classifier,
    pub tokenizer: TextTokenizer,
    pub device: Device,
    pub device_name: String,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor")
            .field("checkpoint", &self.checkpoint.dir)
            .field("device", &self.device_name)
            .finish()
    }
}

impl Predictor {
    /// Loads the checkpoint at `dir` (a run directory means its `best/`) on the requested device.
    pub fn open(dir: &Path, request: DeviceRequest) -> Result<Self> {
        Self::open_as(dir, request, None)
    }

    /// [`Self::open`], computing in `dtype` instead of the run's `train.precision` when given
    /// (f32 for attributions, whose gradients half precision would blur).
    pub fn open_as(dir: &Path, request: DeviceRequest, dtype: Option<DType>) -> Result<Self> {
        let checkpoint = checkpoint::read(&checkpoint::resolve(dir))?;
        let chosen = device::choose(request)?;
        let config = &checkpoint.config;
        let task = if config.data.multi_label {
            Task::MultiLabel
        } else {
            Task::SingleLabel
        };
        let (varmap, model) = Classifier::build_with_lora(
            &checkpoint.bert,
            checkpoint.labels.len(),
            task,
            0.0,
            dtype.unwrap_or_else(|| config.train.precision.dtype()),
            &chosen.device,
            config.train.seed,
            &config.model.lora,
        )?;
        checkpoint.load_weights(&varmap)?;
        let tokenizer = TextTokenizer::from_file(&checkpoint.tokenizer(), config.data.max_len)?
            .with_truncation(config.data.truncation());
        check_pairs(
            &tokenizer,
            &checkpoint.tokenizer(),
            &checkpoint.bert,
            &config.data,
        )?;
        Ok(Self {
            checkpoint,
            model,
            tokenizer,
            device: chosen.device,
            device_name: chosen.name,
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.checkpoint.labels
    }

    fn batch_size(&self) -> usize {
        let c = &self.checkpoint.config;
        if c.eval.batch_size > 0 {
            c.eval.batch_size
        } else {
            c.train.batch_size * 2
        }
    }

    /// Class probabilities for raw texts, in input order (`data.clean`ed as in training). A
    /// checkpoint of text pairs is refused: give it [`Self::predict_examples`] with
    /// [`wick_data::Example::pair`] set.
    pub fn predict_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let examples = text_examples(texts, &self.checkpoint)?;
        Ok(self.predict_examples(&examples)?.probs)
    }

    /// Probabilities (and, for labelled examples, the plain loss) for examples read with this
    /// checkpoint's field mapping, tokenized by its own tokenizer, `max_len` and truncation;
    /// calibrated by the checkpoint's temperature when it has one.
    pub fn predict_examples(&self, examples: &[wick_data::Example]) -> Result<Predictions> {
        let dataset = Dataset::new(examples, &self.tokenizer)?;
        self.predict_dataset(&dataset)
    }

    /// As [`Self::predict_examples`], without the checkpoint's temperature: the model's own
    /// probabilities, to compare with the calibrated ones.
    pub fn predict_examples_uncalibrated(
        &self,
        examples: &[wick_data::Example],
    ) -> Result<Predictions> {
        let dataset = Dataset::new(examples, &self.tokenizer)?;
        self.predict_raw(&dataset)
    }

    fn predict_raw(&self, dataset: &Dataset) -> Result<Predictions> {
        device::with_autorelease_pool(|| {
            eval::predict(
                &self.model,
                dataset,
                self.batch_size(),
                &self.device,
                &LossOptions::default(),
            )
        })
    }

    fn predict_dataset(&self, dataset: &Dataset) -> Result<Predictions> {
        let predictions = self.predict_raw(dataset)?;
        Ok(match &self.checkpoint.calibration {
            Some(calibration) => eval::with_temperature(
                predictions,
                calibration.temperature,
                dataset.targets(),
                self.checkpoint.config.data.multi_label,
            ),
            None => predictions,
        })
    }

    /// The validation rows this checkpoint's run held out of its training file (`valid_fraction`
    /// or a fold of `folds`), found again by the same seeded split ([`crate::fit::held_out`]),
    /// and a description of them; `None` when the run had a `data.valid` file or held nothing
    /// out. Errors when the file no longer gives as many rows as the run evaluated: it changed
    /// since training, and the split would not be the run's.
    pub fn held_out_rows(&self) -> Result<Option<(String, Vec<wick_data::Example>)>> {
        let config = &self.checkpoint.config;
        let Some(name) = config.data.held_out_name() else {
            return Ok(None);
        };
        let (rows, split) = self.split_training_file("pass --data FILE")?;
        let Some((_, valid)) = split else {
            return Ok(None);
        };
        let what = format!(
            "the {name} of {} (split seed {})",
            config.data.train.display(),
            config.split_seed()
        );
        Ok(Some((
            what,
            valid.iter().map(|&i| rows[i].clone()).collect(),
        )))
    }

    /// The rows of its `data.train` this checkpoint's run trained on: all of them, or those its
    /// seeded split did not hold out, checked as [`Self::held_out_rows`] checks its rows.
    pub fn trained_rows(&self) -> Result<Vec<wick_data::Example>> {
        let (rows, split) = self.split_training_file("")?;
        Ok(match split {
            Some((train, _)) => train.iter().map(|&i| rows[i].clone()).collect(),
            None => rows,
        })
    }

    /// The rows of the run's `data.train` and its `(train, valid)` split of them, if it held rows
    /// out; an error (ending with `hint`) when the held-out part is not the size the run
    /// evaluated.
    fn split_training_file(
        &self,
        hint: &str,
    ) -> Result<(Vec<wick_data::Example>, Option<TrainValid>)> {
        let config = &self.checkpoint.config;
        let data = &config.data;
        let rows = read_examples(&data.train, data)?.examples;
        let split = crate::fit::held_out(config, &rows);
        let evaluated = self
            .checkpoint
            .metrics
            .as_ref()
            .and_then(|m| m["examples"].as_u64());
        if let (Some((_, valid)), Some(n), Some(name)) = (&split, evaluated, data.held_out_name()) {
            if n != valid.len() as u64 {
                return Err(TrainError::Checkpoint {
                    path: self.checkpoint.dir.clone(),
                    reason: format!(
                        "{} now gives {} rows for the run's {name}, but the run evaluated {n}: \
                         the file changed since training{}",
                        data.train.display(),
                        valid.len(),
                        if hint.is_empty() {
                            String::new()
                        } else {
                            format!("; {hint}")
                        }
                    ),
                });
            }
        }
        Ok((rows, split))
    }

    /// The rows this checkpoint's run validated on, and what they are: its `data.valid` file, or
    /// the rows it held out of `data.train` ([`Self::held_out_rows`]); `None` when it had none.
    pub fn validation_rows(&self) -> Result<Option<(String, Vec<wick_data::Example>)>> {
        let data = &self.checkpoint.config.data;
        match &data.valid {
            Some(path) => Ok(Some((
                path.display().to_string(),
                read_examples(path, data)?.examples,
            ))),
            None => self.held_out_rows(),
        }
    }

    /// Reads an unlabelled file with the checkpoint's field mapping.
    pub fn read_unlabelled(&self, path: &Path) -> Result<Vec<wick_data::Example>> {
        Ok(read_unlabelled(path, &self.checkpoint.config.data)?.examples)
    }

    /// Scores a labelled file of the schema the checkpoint was trained on (same fields, labels,
    /// filter). Loss is plain cross-entropy (or BCE), without training-time smoothing or weights.
    pub fn evaluate_file(&self, path: &Path) -> Result<ClassificationReport> {
        let read = read_examples(path, &self.checkpoint.config.data)?;
        let dataset = Dataset::new(&read.examples, &self.tokenizer)?;
        let predictions = self.predict_dataset(&dataset)?;
        eval::report(self.labels(), dataset.targets(), &predictions)
    }
}

/// Under `data.pair_fields`, checks that the tokenizer encodes pairs and gives segment ids the
/// model has rows for: a tokenizer that numbered a pair's second text 1 for a model with one
/// segment (RoBERTa's `type_vocab_size` is 1) would index past the table.
pub fn check_pairs(
    tokenizer: &TextTokenizer,
    path: &Path,
    bert: &wick_model::BertConfig,
    data: &wick_data::DataConfig,
) -> Result<()> {
    if data.pair_fields.is_empty() {
        return Ok(());
    }
    let encoding = tokenizer
        .encode_pairs(&[("a", Some("b"))])
        .map_err(|e| {
            TrainError::config(
                "data.pair_fields",
                format!("the tokenizer cannot encode a pair: {e}"),
            )
        })?
        .remove(0);
    if !bert.model_type.has_token_types() {
        // No segment table: the ids are not read.
        return Ok(());
    }
    match encoding.type_ids.iter().max() {
        Some(&top) if top as usize >= bert.type_vocab_size => Err(TrainError::config(
            "data.pair_fields",
            format!(
                "{} numbers a pair's texts up to segment {top}, but the model has {} segment \
                 row(s) (type_vocab_size in its config.json)",
                path.display(),
                bert.type_vocab_size
            ),
        )),
        _ => Ok(()),
    }
}

/// Unlabelled examples holding `texts` after the checkpoint's `data.clean`, numbered from line
/// 1; an error for a checkpoint that reads text pairs, which single texts would feed wrongly.
fn text_examples(texts: &[&str], checkpoint: &Checkpoint) -> Result<Vec<wick_data::Example>> {
    let data = &checkpoint.config.data;
    if !data.pair_fields.is_empty() {
        return Err(TrainError::Checkpoint {
            path: checkpoint.dir.clone(),
            reason: format!(
                "it reads text pairs (data.pair_fields = {:?}), and single texts were given: \
                 give examples with their pair (records with `text` and `text_pair`)",
                data.pair_fields
            ),
        });
    }
    Ok(texts
        .iter()
        .enumerate()
        .map(|(i, text)| wick_data::Example {
            text: data.clean.apply(text).into_owned(),
            pair: None,
            target: wick_data::Target::None,
            line: i + 1,
            fields: Default::default(),
        })
        .collect())
}

/// Several checkpoints of one task voting together: their class probabilities are averaged.
/// Members may differ in anything but the task (labels, multi-label or not) and the way a row
/// becomes text (text fields, separator, `data.clean`, label field); each tokenizes with its own
/// tokenizer, `max_len` and truncation. One member behaves exactly like its [`Predictor`].
#[derive(Debug)]
pub struct Ensemble {
    members: Vec<Predictor>,
}

impl Ensemble {
    /// Opens every checkpoint in `dirs` (run directories mean their `best/`) on one device.
    pub fn open(dirs: &[impl AsRef<Path>], request: DeviceRequest) -> Result<Self> {
        Self::open_as(dirs, request, None)
    }

    /// [`Self::open`] with every member computing in `dtype` when given
    /// ([`Predictor::open_as`]).
    pub fn open_as(
        dirs: &[impl AsRef<Path>],
        request: DeviceRequest,
        dtype: Option<DType>,
    ) -> Result<Self> {
        let mut members: Vec<Predictor> = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let member = Predictor::open_as(dir.as_ref(), request, dtype)?;
            if let Some(first) = members.first() {
                check_compatible(first, &member)?;
            }
            members.push(member);
        }
        if members.is_empty() {
            return Err(TrainError::Ensemble("no checkpoints given".into()));
        }
        Ok(Self { members })
    }

    pub fn members(&self) -> &[Predictor] {
        &self.members
    }

    /// The first member: its labels, data mapping and device stand for the ensemble's.
    pub fn first(&self) -> &Predictor {
        &self.members[0]
    }

    pub fn labels(&self) -> &[String] {
        self.first().labels()
    }

    /// The label priors `spec` names for [`crate::priors::match_priors`]: `train`, the label
    /// frequencies of the rows the first member's run trained on (found again as
    /// [`Predictor::trained_rows`] finds them); `uniform`; or `label=weight,...`. Errors for a
    /// multi-label task, naming the member.
    pub fn priors(&self, spec: &str) -> Result<Priors> {
        let key = "--match-priors";
        let first = self.first();
        if first.checkpoint.config.data.multi_label {
            return Err(TrainError::config(
                key,
                format!(
                    "label priors are matched for single-label tasks; {} is multi-label",
                    first.checkpoint.dir.display()
                ),
            ));
        }
        if spec.trim() != "train" {
            return Priors::parse(self.labels(), spec, key);
        }
        let rows = first.trained_rows()?;
        let source = format!(
            "label frequencies of the {} rows of {} that {} trained on",
            rows.len(),
            first.checkpoint.config.data.train.display(),
            first.checkpoint.dir.display()
        );
        Priors::of_rows(self.labels(), &rows, &source)
    }

    /// Mean class probabilities of the members for raw texts, in input order (`data.clean`ed
    /// as in training; the members share that). Members of text pairs are refused, as by
    /// [`Predictor::predict_texts`].
    pub fn predict_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let examples = text_examples(texts, &self.first().checkpoint)?;
        Ok(self
            .predict_examples(&examples, &wick_data::Targets::None)?
            .probs)
    }

    /// The members' mean probabilities for `examples`, and the loss of those means against
    /// `targets` (the examples' own, in order; `Targets::None` for no loss).
    pub fn predict_examples(
        &self,
        examples: &[wick_data::Example],
        targets: &wick_data::Targets,
    ) -> Result<Predictions> {
        if let [only] = self.members.as_slice() {
            return only.predict_examples(examples);
        }
        let each = self
            .members
            .iter()
            .map(|m| m.predict_examples(examples))
            .collect::<Result<Vec<_>>>()?;
        eval::average(
            &each,
            targets,
            self.first().checkpoint.config.data.multi_label,
        )
    }

    /// Scores a labelled file (the first member's field mapping and filter) with the mean
    /// probabilities of the members.
    pub fn evaluate_file(&self, path: &Path) -> Result<ClassificationReport> {
        if let [only] = self.members.as_slice() {
            return only.evaluate_file(path);
        }
        let (_, targets, predictions) = self.predict_file(path)?;
        eval::report(self.labels(), &targets, &predictions)
    }

    /// The rows of a labelled file that the first member's filter keeps (in file order), their
    /// targets, and the members' mean probabilities for them with the loss of those means.
    pub fn predict_file(
        &self,
        path: &Path,
    ) -> Result<(Vec<wick_data::Example>, wick_data::Targets, Predictions)> {
        let read = read_examples(path, &self.first().checkpoint.config.data)?;
        let targets = wick_data::Targets::of(&read.examples)?;
        let predictions = self.predict_examples(&read.examples, &targets)?;
        Ok((read.examples, targets, predictions))
    }
}

/// Errors unless `other` solves the same task as `first` and reads rows the same way.
fn check_compatible(first: &Predictor, other: &Predictor) -> Result<()> {
    let (a, b) = (&first.checkpoint.config.data, &other.checkpoint.config.data);
    let keys = [
        (
            "labels",
            format!("{:?}", b.labels),
            format!("{:?}", a.labels),
        ),
        (
            "multi_label",
            b.multi_label.to_string(),
            a.multi_label.to_string(),
        ),
        (
            "text_fields",
            format!("{:?}", b.text_fields),
            format!("{:?}", a.text_fields),
        ),
        (
            "text_separator",
            format!("{:?}", b.text_separator),
            format!("{:?}", a.text_separator),
        ),
        (
            "pair_fields",
            format!("{:?}", b.pair_fields),
            format!("{:?}", a.pair_fields),
        ),
        (
            "label_field",
            format!("{:?}", b.label_field),
            format!("{:?}", a.label_field),
        ),
        ("clean", b.clean.describe(), a.clean.describe()),
    ];
    match keys.into_iter().find(|(_, theirs, ours)| theirs != ours) {
        None => Ok(()),
        Some((key, theirs, ours)) => Err(TrainError::Checkpoint {
            path: other.checkpoint.dir.clone(),
            reason: format!(
                "data.{key} is {theirs} but {ours} in {}, the ensemble's first member",
                first.checkpoint.dir.display()
            ),
        }),
    }
}
