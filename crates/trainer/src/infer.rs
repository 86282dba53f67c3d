//! Using a checkpoint: load it on a device, predict texts, score a labelled file.

use std::path::Path;

use candle_core::Device;
use wick_data::{read_examples, read_unlabelled, Dataset, TextTokenizer};
use wick_model::classifier::LossOptions;
use wick_model::{Classifier, Task};

use crate::checkpoint::{self, Checkpoint};
use crate::device::{self, DeviceRequest};
use crate::error::Result;
use crate::eval::{self, Predictions};
use crate::metrics::ClassificationReport;

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
        let dir = if dir.join(checkpoint::STATE).exists() || !dir.join("best").exists() {
            dir.to_path_buf()
        } else {
            dir.join("best")
        };
        let checkpoint = checkpoint::read(&dir)?;
        let chosen = device::choose(request)?;
        let config = &checkpoint.config;
        let task = if config.data.multi_label {
            Task::MultiLabel
        } else {
            Task::SingleLabel
        };
        let (varmap, model) = Classifier::build(
            &checkpoint.bert,
            checkpoint.labels.len(),
            task,
            0.0,
            config.train.precision.dtype(),
            &chosen.device,
            config.train.seed,
        )?;
        checkpoint.load_weights(&varmap)?;
        let tokenizer = TextTokenizer::from_file(&checkpoint.tokenizer(), config.data.max_len)?;
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

    /// Class probabilities for raw texts, in input order.
    pub fn predict_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let examples: Vec<wick_data::Example> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| wick_data::Example {
                text: (*text).to_string(),
                target: wick_data::Target::None,
                line: i + 1,
                fields: Default::default(),
            })
            .collect();
        let dataset = Dataset::new(&examples, &self.tokenizer)?;
        Ok(self.predict_dataset(&dataset)?.probs)
    }

    fn predict_dataset(&self, dataset: &Dataset) -> Result<Predictions> {
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

    /// Reads an unlabelled file with the checkpoint's field mapping.
    pub fn read_unlabelled(&self, path: &Path) -> Result<Vec<wick_data::Example>> {
        Ok(read_unlabelled(path, &self.checkpoint.config.data)?.examples)
    }

    /// Scores a labelled file of the schema the checkpoint was trained on (same fields, labels,
    /// filter). Loss is plain cross-entropy (or BCE), without training-time smoothing or weights.
    pub fn evaluate_file(&self, path: &Path) -> Result<ClassificationReport> {
        let read = read_examples(path, &self.checkpoint.config.data)?;
        let dataset = Dataset::new(&read.examples, &self.tokenizer)?;
        device::with_autorelease_pool(|| {
            eval::evaluate(
                &self.model,
                &dataset,
                self.labels(),
                self.batch_size(),
                &self.device,
                &LossOptions::default(),
            )
        })
    }
}
