//! Scoring a model on a dataset: class probabilities, loss and the classification report.
//! Results are read from the device once per call: an evaluation boundary.

use candle_core::{DType, Device, Tensor};
use wick_data::{Dataset, Targets};
use wick_model::classifier::LossOptions;
use wick_model::Classifier;

use crate::device::ensure_same_device;
use crate::error::Result;
use crate::metrics::ClassificationReport;

/// Model outputs for every example, in dataset order.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// `(examples, num_labels)` probabilities (softmax or sigmoid).
    pub probs: Vec<Vec<f32>>,
    /// Mean loss per example, when the dataset has targets.
    pub loss: Option<f64>,
}

/// Runs the model in eval mode over `dataset` in batches of similar length (less padding), and
/// returns the probabilities in the original order.
pub fn predict(
    model: &Classifier,
    dataset: &Dataset,
    batch_size: usize,
    device: &Device,
    loss_options: &LossOptions,
) -> Result<Predictions> {
    let mut order: Vec<usize> = (0..dataset.len()).collect();
    let lengths = dataset.lengths();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut chunks = Vec::new();
    let mut loss_sum: Option<Tensor> = None;
    for indices in order.chunks(batch_size.max(1)) {
        let batch = dataset.batch(indices).to_tensors(device)?;
        ensure_same_device("batch input_ids", device, batch.input_ids.device())?;
        let logits = model.forward(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            false,
        )?;
        if let Some(labels) = &batch.labels {
            let loss =
                (model.loss(&logits, labels, loss_options)?.detach() * indices.len() as f64)?;
            loss_sum = Some(match loss_sum {
                Some(sum) => (sum + loss)?,
                None => loss,
            });
        }
        // Detached: a kept output must not keep its whole forward graph alive.
        chunks.push(model.probabilities(&logits)?.detach());
    }
    let mut probs = vec![Vec::new(); dataset.len()];
    if !chunks.is_empty() {
        // Probabilities and loss as host values: an evaluation sync point.
        let all = Tensor::cat(&chunks, 0)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (row, &index) in all.into_iter().zip(&order) {
            probs[index] = row;
        }
    }
    let loss = match loss_sum {
        Some(sum) => Some(crate::sync::scalar(&sum)? / dataset.len().max(1) as f64),
        None => None,
    };
    Ok(Predictions { probs, loss })
}

/// The index of the largest probability in each row.
pub fn argmax(probs: &[Vec<f32>]) -> Vec<u32> {
    probs
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &p)| {
                    if p > best.1 {
                        (i, p)
                    } else {
                        best
                    }
                })
                .0 as u32
        })
        .collect()
}

/// Scores `model` on a labelled dataset.
pub fn evaluate(
    model: &Classifier,
    dataset: &Dataset,
    labels: &[String],
    batch_size: usize,
    device: &Device,
    loss_options: &LossOptions,
) -> Result<ClassificationReport> {
    let predictions = predict(model, dataset, batch_size, device, loss_options)?;
    Ok(match dataset.targets() {
        Targets::Multi { values, num_labels } => {
            let truth: Vec<Vec<bool>> = values
                .chunks(*num_labels)
                .map(|r| r.iter().map(|&v| v > 0.5).collect())
                .collect();
            let predicted: Vec<Vec<bool>> = predictions
                .probs
                .iter()
                .map(|r| r.iter().map(|&p| p > 0.5).collect())
                .collect();
            ClassificationReport::multi_label(labels, &truth, &predicted, predictions.loss)
        }
        Targets::Single(truth) => ClassificationReport::single_label(
            labels,
            truth,
            &argmax(&predictions.probs),
            predictions.loss,
        ),
        Targets::None => {
            return Err(crate::error::TrainError::config(
                "data",
                "evaluation needs labelled data",
            ));
        }
    })
}
