//! Scoring a model on a dataset: class probabilities, loss and the classification report.
//! Results are read from the device once per call: an evaluation boundary.

use candle_core::{DType, Device, Tensor};
use wick_data::{Dataset, Targets};
use wick_model::classifier::LossOptions;
use wick_model::Classifier;

use crate::device::ensure_same_device;
use crate::error::{Result, TrainError};
use crate::metrics::ClassificationReport;

/// Model outputs for every example, in dataset order.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// `(examples, num_labels)` probabilities (softmax or sigmoid).
    pub probs: Vec<Vec<f32>>,
    /// `(examples, num_labels)` scores whose softmax (sigmoid) is `probs`: the model's logits,
    /// divided by the checkpoint's temperature when it has one; for an ensemble, the log of its
    /// mean probabilities (their log-odds for multi-label).
    pub logits: Vec<Vec<f32>>,
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
    let mut logit_chunks = Vec::new();
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
        logit_chunks.push(logits.detach());
    }
    let mut probs = vec![Vec::new(); dataset.len()];
    let mut logits = vec![Vec::new(); dataset.len()];
    if !chunks.is_empty() {
        // Probabilities, logits and loss as host values: an evaluation sync point.
        for (parts, out) in [(&chunks, &mut probs), (&logit_chunks, &mut logits)] {
            let all = Tensor::cat(parts, 0)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for (row, &index) in all.into_iter().zip(&order) {
                out[index] = row;
            }
        }
    }
    let loss = match loss_sum {
        Some(sum) => Some(crate::sync::scalar(&sum)? / dataset.len().max(1) as f64),
        None => None,
    };
    Ok(Predictions {
        probs,
        logits,
        loss,
    })
}

/// Divides `predictions`' logits by `temperature` and recomputes the probabilities from them,
/// and the loss (plain cross-entropy or BCE) when `targets` has labels.
pub fn with_temperature(
    predictions: Predictions,
    temperature: f64,
    targets: &Targets,
    multi_label: bool,
) -> Predictions {
    let probs = crate::calibration::scale(&predictions.logits, temperature, multi_label);
    let logits = predictions
        .logits
        .iter()
        .map(|row| {
            row.iter()
                .map(|&z| (f64::from(z) / temperature) as f32)
                .collect()
        })
        .collect();
    let loss = match targets {
        Targets::None => predictions.loss,
        _ => Some(crate::calibration::mean_loss(
            &predictions.logits,
            targets,
            temperature,
        )),
    };
    Predictions {
        probs,
        logits,
        loss,
    }
}

/// The index of the largest probability in each row.
pub fn argmax(probs: &[Vec<f32>]) -> Vec<u32> {
    probs.iter().map(|row| top(row) as u32).collect()
}

/// The index of the largest value of `row` (the first of equal ones; 0 for none).
pub fn top(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &p)| {
            if p > best.1 {
                (i, p)
            } else {
                best
            }
        })
        .0
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
    report(labels, dataset.targets(), &predictions)
}

/// The classification report of `predictions` against `targets`: argmax for single-label data,
/// each probability above 0.5 for multi-label data; with the probabilities' calibration error.
pub fn report(
    labels: &[String],
    targets: &Targets,
    predictions: &Predictions,
) -> Result<ClassificationReport> {
    let mut report = match targets {
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
            return Err(TrainError::config("data", "evaluation needs labelled data"));
        }
    };
    report.ece = crate::calibration::expected_calibration_error(&predictions.probs, targets);
    Ok(report)
}

/// `{label: probability}` for one example's probabilities, in label order: the form `predict`,
/// `evaluate --errors` and the NLBSE example write.
pub fn label_probs(labels: &[String], probs: &[f32]) -> serde_json::Map<String, serde_json::Value> {
    labels
        .iter()
        .zip(probs)
        .map(|(label, &p)| (label.clone(), serde_json::Value::from(p)))
        .collect()
}

/// What `predict` writes and `serve` answers for one input: the input's own fields, then
/// `label` and `probs` (an input field already named so is kept as `input_<name>`). `label` is
/// the top label, or `null` when its probability is below `min_prob`; for a multi-label task, the
/// list of labels above 0.5 (at or above `min_prob` when given).
pub fn prediction_record(
    mut fields: serde_json::Map<String, serde_json::Value>,
    labels: &[String],
    probs: &[f32],
    multi_label: bool,
    min_prob: Option<f64>,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let label = if multi_label {
        let chosen = |q: f32| min_prob.map_or(q > 0.5, |min| f64::from(q) >= min);
        Value::from(
            labels
                .iter()
                .zip(probs)
                .filter(|(_, &q)| chosen(q))
                .map(|(l, _)| l.clone())
                .collect::<Vec<_>>(),
        )
    } else {
        let best = top(probs);
        if min_prob.is_some_and(|min| f64::from(probs[best]) < min) {
            Value::Null
        } else {
            Value::from(labels[best].clone())
        }
    };
    for key in ["label", "probs"] {
        if let Some(value) = fields.remove(key) {
            let mut name = format!("input_{key}");
            while fields.contains_key(&name) {
                name.insert_str(0, "input_");
            }
            fields.insert(name, value);
        }
    }
    fields.insert("label".into(), label);
    fields.insert("probs".into(), Value::Object(label_probs(labels, probs)));
    fields
}

/// An example the predictions get wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Mistake {
    /// Position of the example in the predictions (and the examples they were made for).
    pub index: usize,
    /// Label ids of the truth and of the prediction (one each for single-label targets; the
    /// labels above 0.5 for multi-label ones).
    pub truth: Vec<usize>,
    pub predicted: Vec<usize>,
    /// How sure the mistake was: the probability of the wrong predicted label (single-label), or
    /// the largest gap between a probability on the wrong side of 0.5 and its target
    /// (multi-label).
    pub confidence: f32,
}

/// The examples `predictions` get wrong against `targets`, the most confident mistakes first
/// (ties in example order): the material for reading what a classifier confuses.
pub fn mistakes(targets: &Targets, predictions: &Predictions) -> Vec<Mistake> {
    let mut out: Vec<Mistake> = match targets {
        Targets::Single(truth) => {
            let predicted = argmax(&predictions.probs);
            truth
                .iter()
                .zip(&predicted)
                .enumerate()
                .filter(|(_, (t, p))| t != p)
                .map(|(index, (&t, &p))| Mistake {
                    index,
                    truth: vec![t as usize],
                    predicted: vec![p as usize],
                    confidence: predictions.probs[index][p as usize],
                })
                .collect()
        }
        Targets::Multi { values, num_labels } => values
            .chunks(*num_labels)
            .zip(&predictions.probs)
            .enumerate()
            .filter_map(|(index, (truth, probs))| {
                let above = |row: &[f32]| -> Vec<usize> {
                    (0..row.len()).filter(|&c| row[c] > 0.5).collect()
                };
                let (truth_set, predicted) = (above(truth), above(probs));
                let confidence = truth
                    .iter()
                    .zip(probs)
                    .filter(|(&t, &p)| (t > 0.5) != (p > 0.5))
                    .map(|(&t, &p)| (t - p).abs())
                    .fold(None, |worst: Option<f32>, gap| {
                        Some(worst.map_or(gap, |w| w.max(gap)))
                    })?;
                Some(Mistake {
                    index,
                    truth: truth_set,
                    predicted,
                    confidence,
                })
            })
            .collect(),
        Targets::None => Vec::new(),
    };
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    out
}

/// Smallest probability the ensemble loss takes a logarithm of, so that one confident member
/// that is wrong gives a large finite loss instead of infinity.
const MIN_PROB: f64 = 1e-12;

/// An ensemble's prediction: the mean of its members' probabilities for the same examples.
/// Its loss, when `targets` has labels, is the plain loss of those mean probabilities:
/// cross-entropy for single-label targets, binary cross-entropy averaged over every (example,
/// label) for multi-label ones. Its logits are the log of the mean probabilities (their log-odds
/// when `multi_label`).
pub fn average(
    members: &[Predictions],
    targets: &Targets,
    multi_label: bool,
) -> Result<Predictions> {
    let Some(first) = members.first() else {
        return Err(TrainError::Ensemble("no members".into()));
    };
    let rows = first.probs.len();
    let width = first.probs.first().map_or(0, Vec::len);
    for (i, member) in members.iter().enumerate() {
        let shape_ok = member.probs.len() == rows && member.probs.iter().all(|r| r.len() == width);
        if !shape_ok {
            return Err(TrainError::Ensemble(format!(
                "member {i} predicted {} rows of {} labels, member 0 {rows} rows of {width}",
                member.probs.len(),
                member.probs.first().map_or(0, Vec::len)
            )));
        }
    }
    let labelled = match targets {
        Targets::Single(truth) => Some(truth.len()),
        Targets::Multi { values, .. } => Some(values.len() / width.max(1)),
        Targets::None => None,
    };
    if labelled.is_some_and(|n| n != rows) {
        return Err(TrainError::Ensemble(format!(
            "{rows} predictions for {} labelled examples",
            labelled.unwrap_or(0)
        )));
    }
    let n = members.len() as f32;
    let probs: Vec<Vec<f32>> = (0..rows)
        .map(|r| {
            (0..width)
                .map(|c| members.iter().map(|m| m.probs[r][c]).sum::<f32>() / n)
                .collect()
        })
        .collect();
    let nll = |p: f32| -(f64::from(p).max(MIN_PROB)).ln();
    let loss = match targets {
        Targets::Single(truth) if rows > 0 => Some(
            truth
                .iter()
                .zip(&probs)
                .map(|(&t, row)| nll(row[t as usize]))
                .sum::<f64>()
                / rows as f64,
        ),
        Targets::Multi { values, .. } if rows > 0 && width > 0 => Some(
            values
                .iter()
                .zip(probs.iter().flatten())
                .map(|(&t, &p)| f64::from(t) * nll(p) + f64::from(1.0 - t) * nll(1.0 - p))
                .sum::<f64>()
                / (rows * width) as f64,
        ),
        _ => None,
    };
    let logits = probs
        .iter()
        .map(|row| {
            row.iter()
                .map(|&p| {
                    let p = f64::from(p).clamp(MIN_PROB, 1.0 - MIN_PROB);
                    let z = if multi_label {
                        (p / (1.0 - p)).ln()
                    } else {
                        p.ln()
                    };
                    z as f32
                })
                .collect()
        })
        .collect();
    Ok(Predictions {
        probs,
        logits,
        loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(rows: &[[f32; 2]]) -> Predictions {
        Predictions {
            probs: rows.iter().map(|r| r.to_vec()).collect(),
            logits: rows.iter().map(|r| r.map(f32::ln).to_vec()).collect(),
            loss: None,
        }
    }

    #[test]
    fn mistakes_come_most_confident_first() {
        let single = Predictions {
            probs: vec![
                vec![0.6, 0.3, 0.1], // truth 1: wrong at 0.6
                vec![0.1, 0.8, 0.1], // truth 1: right
                vec![0.1, 0.1, 0.8], // truth 0: wrong at 0.8
            ],
            logits: Vec::new(), // not read by `mistakes`
            loss: None,
        };
        let found = mistakes(&Targets::Single(vec![1, 1, 0]), &single);
        let summary: Vec<(usize, Vec<usize>, Vec<usize>, f32)> = found
            .into_iter()
            .map(|m| (m.index, m.truth, m.predicted, m.confidence))
            .collect();
        assert_eq!(
            summary,
            vec![(2, vec![0], vec![2], 0.8), (0, vec![1], vec![0], 0.6)]
        );

        let multi = Targets::Multi {
            values: vec![1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
            num_labels: 2,
        };
        let found = mistakes(&multi, &probs(&[[0.9, 0.2], [0.7, 0.4], [0.1, 0.3]]));
        // Row 1 misses its second label by 0.6; rows 0 and 2 are right.
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].index, &found[0].truth, &found[0].predicted),
            (1, &vec![0, 1], &vec![0])
        );
        assert!((found[0].confidence - 0.6).abs() < 1e-6);
        assert!(mistakes(&Targets::None, &single).is_empty());
    }

    #[test]
    fn an_ensemble_is_the_mean_of_its_members_and_its_loss_is_that_of_the_mean() {
        let a = probs(&[[0.9, 0.1], [0.2, 0.8]]);
        let b = probs(&[[0.5, 0.5], [0.6, 0.4]]);
        let single = average(&[a.clone(), b.clone()], &Targets::Single(vec![0, 1]), false).unwrap();
        assert_eq!(single.probs, vec![vec![0.7, 0.3], vec![0.4, 0.6]]);
        // -(ln 0.7 + ln 0.6) / 2
        let expected = -(0.7f64.ln() + 0.6f64.ln()) / 2.0;
        assert!((single.loss.unwrap() - expected).abs() < 1e-6);
        // Its logits give its probabilities back: softmax, or a sigmoid each for multi-label.
        let back = crate::calibration::scale(&single.logits, 1.0, false);
        assert!((back[1][1] - 0.6).abs() < 1e-6, "{back:?}");

        // Multi-label: BCE over every (example, label) of the mean probabilities.
        let targets = Targets::Multi {
            values: vec![1.0, 0.0, 0.0, 1.0],
            num_labels: 2,
        };
        let multi = average(&[a.clone(), b], &targets, true).unwrap();
        let expected = -(0.7f64.ln() + 0.7f64.ln() + 0.6f64.ln() + 0.6f64.ln()) / 4.0;
        assert!((multi.loss.unwrap() - expected).abs() < 1e-6);
        let back = crate::calibration::scale(&multi.logits, 1.0, true);
        assert!((back[0][1] - 0.3).abs() < 1e-6, "{back:?}");

        // No labels, no loss; a wrong member shape is an error, not a silent truncation.
        assert_eq!(
            average(std::slice::from_ref(&a), &Targets::None, false)
                .unwrap()
                .loss,
            None
        );
        let short = probs(&[[1.0, 0.0]]);
        let err = average(&[a, short], &Targets::None, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("member 1"), "{err}");
        assert!(average(&[], &Targets::None, false).is_err());
        let err = average(&[probs(&[[0.5, 0.5]])], &Targets::Single(vec![0, 1]), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 predictions for 2 labelled"), "{err}");
    }

    #[test]
    fn a_member_certain_of_the_wrong_label_gives_a_finite_loss() {
        let wrong = probs(&[[0.0, 1.0]]);
        let loss = average(&[wrong], &Targets::Single(vec![0]), false)
            .unwrap()
            .loss
            .unwrap();
        assert!(loss.is_finite() && loss > 20.0, "{loss}");
    }
}
