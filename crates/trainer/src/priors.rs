//! Matching a set of predictions to known label priors: a transductive correction for
//! single-label classifiers scored on a batch of rows whose label proportions are known (or
//! assumed), such as a test set drawn like the training set.
//!
//! Each label's probabilities are scaled by one weight per label and every row renormalized,
//! with the weights chosen so that the mean predicted distribution over the rows equals the
//! priors: iterative proportional fitting (Sinkhorn's scaling of the rows x labels matrix), whose
//! solution is unique for positive probabilities. In logit terms one offset per label, the log
//! of its weight, is added to every row's scores. A model that already predicts the priors on
//! average is left as it is; one that leans towards a label on these rows is leaned back.

use std::collections::BTreeMap;

use wick_data::{Example, Targets};

use crate::error::{Result, TrainError};
use crate::eval::Predictions;

/// The smallest probability the scaling works with: a softmax that underflowed to 0 would
/// otherwise keep a label out of a row for any weight.
const MIN_PROB: f64 = 1e-12;
/// Stop when every label's mean probability is this close to its prior...
const TOLERANCE: f64 = 1e-9;
/// ...or after this many rounds (positive matrices converge in far fewer).
const MAX_ROUNDS: usize = 10_000;
/// Fewer rows than this many per label are too few to hold the priors' proportions: matching
/// still runs, with a warning.
const FEW_ROWS_PER_LABEL: usize = 10;

/// Label priors: one positive share per label, in label order, summing to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Priors {
    pub shares: Vec<f64>,
    /// Where the shares came from, for reports ("label frequencies of FILE", "given").
    pub source: String,
}

impl Priors {
    /// Positive weights per label (any scale), normalized to shares. Errors, naming `key`,
    /// when a weight is not positive and finite or the count does not match `labels`.
    pub fn new(labels: &[String], weights: &[f64], source: &str, key: &str) -> Result<Self> {
        if weights.len() != labels.len() {
            return Err(TrainError::config(
                key,
                format!("{} priors for {} labels", weights.len(), labels.len()),
            ));
        }
        if let Some((label, w)) = labels
            .iter()
            .zip(weights)
            .find(|(_, w)| !(w.is_finite() && **w > 0.0))
        {
            return Err(TrainError::config(
                key,
                format!(
                    "the prior of label {label:?} is {w}: every label needs a positive prior \
                     (a label with none could never be predicted)"
                ),
            ));
        }
        let total: f64 = weights.iter().sum();
        Ok(Self {
            shares: weights.iter().map(|w| w / total).collect(),
            source: source.to_string(),
        })
    }

    /// The label frequencies of labelled single-label `rows` (`labels` in label order).
    pub fn of_rows(labels: &[String], rows: &[Example], source: &str) -> Result<Self> {
        let key = "priors";
        let truth = match Targets::of(rows)? {
            Targets::Single(truth) => truth,
            Targets::Multi { .. } => {
                return Err(TrainError::config(
                    key,
                    "label priors are for single-label tasks; these rows are multi-label",
                ))
            }
            Targets::None => {
                return Err(TrainError::config(
                    key,
                    format!("{source}: no labelled rows to count label frequencies on"),
                ))
            }
        };
        let mut counts = vec![0.0; labels.len()];
        for &t in &truth {
            if let Some(count) = counts.get_mut(t as usize) {
                *count += 1.0;
            }
        }
        Self::new(labels, &counts, source, key)
    }

    /// Parses `label=weight,label=weight,...` (every label once, weights of any positive
    /// scale), or `uniform` for equal shares.
    pub fn parse(labels: &[String], spec: &str, key: &str) -> Result<Self> {
        if spec.trim() == "uniform" {
            return Self::new(labels, &vec![1.0; labels.len()], "uniform", key);
        }
        let mut given: BTreeMap<&str, f64> = BTreeMap::new();
        for part in spec.split(',') {
            let Some((label, weight)) = part.split_once('=') else {
                return Err(TrainError::config(
                    key,
                    format!("{part:?} is not label=weight (or give `uniform`)"),
                ));
            };
            let label = label.trim();
            if !labels.iter().any(|l| l == label) {
                return Err(TrainError::config(
                    key,
                    format!("{label:?} is not one of the labels {labels:?}"),
                ));
            }
            let weight: f64 = weight.trim().parse().map_err(|_| {
                TrainError::config(
                    key,
                    format!("the weight of {label:?}, {weight:?}, is not a number"),
                )
            })?;
            if given.insert(label, weight).is_some() {
                return Err(TrainError::config(key, format!("{label:?} is given twice")));
            }
        }
        let mut weights = Vec::with_capacity(labels.len());
        for label in labels {
            match given.get(label.as_str()) {
                Some(&w) => weights.push(w),
                None => {
                    return Err(TrainError::config(
                        key,
                        format!("no prior for label {label:?}: give every label one"),
                    ))
                }
            }
        }
        Self::new(labels, &weights, "given", key)
    }
}

/// What matching did: the predictions with their probabilities moved to the priors, and the
/// offset it added to each label's log-probabilities (centred: they sum to 0).
#[derive(Debug, Clone)]
pub struct Matched {
    pub predictions: Predictions,
    pub offsets: Vec<f64>,
    /// Each label's mean probability over the rows before matching.
    pub before: Vec<f64>,
    /// Rounds of scaling until every label's mean was within tolerance of its prior.
    pub rounds: usize,
    /// Whether they got there before the rounds ran out.
    pub converged: bool,
}

/// Moves single-label `predictions` so that their mean over the rows equals `priors`, and
/// recomputes the loss (cross-entropy of the new probabilities) when `targets` has labels. The
/// logits become the log of the new probabilities, as for an ensemble's mean.
pub fn match_priors(
    predictions: &Predictions,
    priors: &Priors,
    targets: &Targets,
) -> Result<Matched> {
    let width = priors.shares.len();
    if let Some(row) = predictions.probs.iter().find(|r| r.len() != width) {
        return Err(TrainError::config(
            "priors",
            format!("{width} priors for rows of {} probabilities", row.len()),
        ));
    }
    if matches!(targets, Targets::Multi { .. }) {
        return Err(TrainError::config(
            "priors",
            "label priors are matched for single-label tasks only",
        ));
    }
    let rows: Vec<Vec<f64>> = predictions
        .probs
        .iter()
        .map(|r| r.iter().map(|&p| f64::from(p).max(MIN_PROB)).collect())
        .collect();
    let n = rows.len();
    let mut weights = vec![1.0; width];
    let means = |weights: &[f64]| -> Vec<f64> {
        let mut sums = vec![0.0; width];
        for row in &rows {
            let z: f64 = row.iter().zip(weights).map(|(p, w)| p * w).sum();
            for (s, (p, w)) in sums.iter_mut().zip(row.iter().zip(weights)) {
                *s += p * w / z;
            }
        }
        sums.iter().map(|s| s / n.max(1) as f64).collect()
    };
    let before = means(&weights);
    let off = |current: &[f64]| {
        current
            .iter()
            .zip(&priors.shares)
            .any(|(m, p)| (m - p).abs() > TOLERANCE)
    };
    let mut rounds = 0;
    let mut converged = true;
    if n > 0 {
        let mut current = before.clone();
        while off(&current) && rounds < MAX_ROUNDS {
            for ((w, m), p) in weights.iter_mut().zip(&current).zip(&priors.shares) {
                *w *= p / m;
            }
            current = means(&weights);
            rounds += 1;
        }
        converged = !off(&current);
    }
    let logs: Vec<f64> = weights.iter().map(|w| w.ln()).collect();
    let centre = logs.iter().sum::<f64>() / width.max(1) as f64;
    let offsets: Vec<f64> = logs.iter().map(|l| l - centre).collect();
    let probs: Vec<Vec<f32>> = rows
        .iter()
        .map(|row| {
            let z: f64 = row.iter().zip(&weights).map(|(p, w)| p * w).sum();
            row.iter()
                .zip(&weights)
                .map(|(p, w)| (p * w / z) as f32)
                .collect()
        })
        .collect();
    let logits = probs
        .iter()
        .map(|r| {
            r.iter()
                .map(|&p| f64::from(p).max(MIN_PROB).ln() as f32)
                .collect()
        })
        .collect();
    let loss = match targets {
        Targets::Single(truth) if n > 0 => Some(
            truth
                .iter()
                .zip(&probs)
                .map(|(&t, r)| -f64::from(r[t as usize]).max(MIN_PROB).ln())
                .sum::<f64>()
                / n as f64,
        ),
        _ => None,
    };
    Ok(Matched {
        predictions: Predictions {
            probs,
            logits,
            loss,
        },
        offsets,
        before,
        rounds,
        converged,
    })
}

impl Matched {
    /// `{"priors": {label: share}, "source", "mean_before": {label: p}, "offsets": {label:
    /// offset}, "rounds", "converged"}`: what `evaluate --json` reports under `"match_priors"`.
    pub fn to_json(&self, labels: &[String], priors: &Priors) -> serde_json::Value {
        let by_label = |values: &[f64]| -> serde_json::Map<String, serde_json::Value> {
            labels
                .iter()
                .zip(values)
                .map(|(l, &v)| (l.clone(), serde_json::Value::from(v)))
                .collect()
        };
        serde_json::json!({
            "priors": by_label(&priors.shares),
            "source": priors.source,
            "mean_before": by_label(&self.before),
            "offsets": by_label(&self.offsets),
            "rounds": self.rounds,
            "converged": self.converged,
        })
    }
}

/// One line on what matching did: the priors and their source, the mean probabilities before,
/// the offsets and the rounds it took; with a warning when there are too few rows for the
/// priors to describe them.
pub fn describe(labels: &[String], priors: &Priors, matched: &Matched, rows: usize) -> String {
    let list = |values: &[f64], signed: bool| {
        labels
            .iter()
            .zip(values)
            .map(|(l, v)| {
                if signed {
                    format!("{l} {v:+.3}")
                } else {
                    format!("{l} {v:.3}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rounds = if matched.converged {
        format!("{} rounds", matched.rounds)
    } else {
        format!("stopped after {MAX_ROUNDS} rounds short of the priors")
    };
    let warning = if rows < FEW_ROWS_PER_LABEL * labels.len() {
        format!(
            "; warning: {rows} rows are few for matching ({} labels): it forces their predictions \
             towards the priors' proportions, which a handful of rows need not have",
            labels.len()
        )
    } else {
        String::new()
    };
    format!(
        "label priors matched over {rows} rows: priors ({}) {}; mean probabilities before {}; \
         log-probability offsets {} ({rounds}){warning}",
        priors.source,
        list(&priors.shares, false),
        list(&matched.before, false),
        list(&matched.offsets, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    fn predictions(probs: Vec<Vec<f32>>) -> Predictions {
        let logits = probs
            .iter()
            .map(|r| r.iter().map(|p| p.ln()).collect())
            .collect();
        Predictions {
            probs,
            logits,
            loss: None,
        }
    }

    fn means(probs: &[Vec<f32>]) -> Vec<f64> {
        let n = probs.len() as f64;
        (0..probs[0].len())
            .map(|c| probs.iter().map(|r| f64::from(r[c])).sum::<f64>() / n)
            .collect()
    }

    /// Rows that lean to label a: matching to equal priors moves the means to a third each,
    /// keeps every row a distribution, and adds one offset per label to every row's
    /// log-probabilities (so each row's ranking of two labels moves the same way).
    #[test]
    fn matched_means_equal_the_priors_by_one_offset_per_label() {
        let probs = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.5, 0.4, 0.1],
            vec![0.6, 0.1, 0.3],
            vec![0.4, 0.3, 0.3],
            vec![0.45, 0.1, 0.45],
            vec![0.2, 0.7, 0.1],
        ];
        let priors = Priors::parse(&labels(), "uniform", "priors").unwrap();
        let truth = Targets::Single(vec![0, 1, 2, 1, 2, 1]);
        let matched = match_priors(&predictions(probs.clone()), &priors, &truth).unwrap();
        assert!(matched.converged && matched.rounds > 0);
        for m in means(&matched.predictions.probs) {
            assert!((m - 1.0 / 3.0).abs() < 1e-6, "{m}");
        }
        for row in &matched.predictions.probs {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        for (before, after) in probs.iter().zip(&matched.predictions.probs) {
            for c in 0..3 {
                let moved = (f64::from(after[c]) / f64::from(before[c])).ln()
                    - (f64::from(after[0]) / f64::from(before[0])).ln();
                let expected = matched.offsets[c] - matched.offsets[0];
                assert!((moved - expected).abs() < 1e-5, "{moved} {expected}");
            }
        }
        // Label a was over-predicted on average: its offset is the lowest.
        assert!(matched.offsets[0] < matched.offsets[1] && matched.offsets[0] < matched.offsets[2]);
        assert!((matched.offsets.iter().sum::<f64>()).abs() < 1e-9);
        // Rows 1 and 3 (truth b) were predicted a before; the leaning back fixes at least one.
        let before = crate::eval::argmax(&probs);
        let after = crate::eval::argmax(&matched.predictions.probs);
        assert_eq!(before, vec![0, 0, 0, 0, 0, 1]);
        assert_ne!(after, before);
        let loss = matched.predictions.loss.unwrap();
        let expected = [0usize, 1, 2, 1, 2, 1]
            .iter()
            .zip(&matched.predictions.probs)
            .map(|(&t, r)| -f64::from(r[t]).ln())
            .sum::<f64>()
            / 6.0;
        assert!((loss - expected).abs() < 1e-6);
    }

    /// The report names the rounds, and warns when the rows are too few to hold the priors.
    #[test]
    fn few_rows_are_matched_with_a_warning() {
        let priors = Priors::parse(&labels(), "uniform", "priors").unwrap();
        let row = vec![0.5, 0.3, 0.2];
        for (rows, warned) in [(29, true), (30, false)] {
            let probs = predictions(vec![row.clone(); rows]);
            let matched = match_priors(&probs, &priors, &Targets::None).unwrap();
            let line = describe(&labels(), &priors, &matched, rows);
            assert!(line.contains(" rounds)"), "{line}");
            assert_eq!(line.contains("rows are few for matching"), warned, "{line}");
        }
    }

    /// Predictions whose means already equal the priors are left where they are.
    #[test]
    fn predictions_at_the_priors_stay_unchanged() {
        let probs = vec![
            vec![0.6, 0.3, 0.1],
            vec![0.1, 0.6, 0.3],
            vec![0.3, 0.1, 0.6],
        ];
        let priors = Priors::new(&labels(), &[2.0, 2.0, 2.0], "given", "priors").unwrap();
        let matched = match_priors(&predictions(probs.clone()), &priors, &Targets::None).unwrap();
        assert_eq!(matched.rounds, 0);
        for (a, b) in probs
            .iter()
            .flatten()
            .zip(matched.predictions.probs.iter().flatten())
        {
            assert!((a - b).abs() < 1e-6);
        }
    }

    /// Unequal priors are met too, and a probability that underflowed to 0 can still move.
    #[test]
    fn unequal_priors_and_zero_probabilities_are_met() {
        let probs = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.8, 0.2, 0.0],
            vec![0.5, 0.25, 0.25],
            vec![0.9, 0.05, 0.05],
        ];
        let priors = Priors::parse(&labels(), "a=2, b=1,c=1", "priors").unwrap();
        assert_eq!(priors.shares, vec![0.5, 0.25, 0.25]);
        let matched = match_priors(&predictions(probs), &priors, &Targets::None).unwrap();
        for (m, p) in means(&matched.predictions.probs).iter().zip(&priors.shares) {
            assert!((m - p).abs() < 1e-6, "{m} {p}");
        }
    }

    #[test]
    fn bad_priors_are_refused_naming_the_label() {
        let labels = labels();
        let error = |spec: &str| {
            Priors::parse(&labels, spec, "--match-priors")
                .unwrap_err()
                .to_string()
        };
        assert!(
            error("a=1,b=1").contains("no prior for label \"c\""),
            "{}",
            error("a=1,b=1")
        );
        assert!(error("a=1,b=0,c=1").contains("label \"b\" is 0"));
        assert!(error("a=1,b=1,d=1").contains("\"d\" is not one of the labels"));
        assert!(error("a=1,a=2,c=1").contains("\"a\" is given twice"));
        assert!(error("a=x,b=1,c=1").contains("is not a number"));
        assert!(error("a").contains("not label=weight"));
        assert!(error("a=1,b=1").starts_with("config key `--match-priors`"));
        let rows: Vec<Example> = ["a", "a", "b"]
            .iter()
            .enumerate()
            .map(|(i, l)| Example {
                text: "t".into(),
                pair: None,
                target: wick_data::Target::Single(if *l == "a" { 0 } else { 1 }),
                line: i + 1,
                fields: Default::default(),
            })
            .collect();
        let missing = Priors::of_rows(&labels, &rows, "f.csv")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("label \"c\" is 0"), "{missing}");
        let three = labels.iter().take(2).cloned().collect::<Vec<_>>();
        let counted = Priors::of_rows(&three, &rows, "f.csv").unwrap();
        assert!((counted.shares[0] - 2.0 / 3.0).abs() < 1e-12);
    }
}
