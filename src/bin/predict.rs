//! `predict`: label texts with a checkpoint (or an ensemble of several). Texts come from the
//! arguments, as JSONL with a `text` field on stdin, or from a file of the schema the checkpoint
//! was trained on (`--data`: JSONL or CSV, its text fields and filter, labels not needed); one
//! JSON line per input goes to stdout, other input fields passed through.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{Map, Value};
use wick_trainer::device::DeviceRequest;
use wick_trainer::eval::{argmax, label_probs, Predictions};
use wick_trainer::infer::Ensemble;

#[path = "../match_priors.rs"]
mod match_priors;

/// Label texts with a trained checkpoint.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A checkpoint directory (or a run directory, meaning its best/). Repeat it to predict with
    /// an ensemble: the mean of the checkpoints' class probabilities.
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// A JSONL, CSV or Parquet file (local or hf://datasets/...) of the schema the checkpoint
    /// was trained on: each kept row (the checkpoint's `data.filter` applies) is labelled, its
    /// fields passed through. A label column, if present, is not read.
    #[arg(long, conflicts_with = "texts")]
    data: Option<PathBuf>,
    /// Single-label: give no label (`"label": null`) when the top probability is below this,
    /// so that only confident predictions are acted on. Multi-label: the labels whose
    /// probability is at least this (instead of above 0.5). Train with `eval.calibrate = true`
    /// for probabilities that mean what they say.
    #[arg(long, value_name = "P", value_parser = probability)]
    min_prob: Option<f64>,
    #[command(flatten)]
    priors: match_priors::MatchPriors,
    /// Texts to label; without any (and without --data), JSONL objects with a "text" field are
    /// read from stdin.
    texts: Vec<String>,
}

/// A probability threshold strictly between 0 and 1.
fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 1.0 => Ok(p),
        _ => Err(format!(
            "expected a probability between 0 and 1, got {text:?}"
        )),
    }
}

/// Reads stdin JSONL: each line an object with a string `text`.
fn read_stdin() -> Result<Vec<Map<String, Value>>> {
    let mut rows = Vec::new();
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.with_context(|| format!("stdin line {}", number + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {}: not JSON", number + 1))?;
        let Value::Object(object) = value else {
            bail!("stdin line {}: expected a JSON object", number + 1)
        };
        if !matches!(object.get("text"), Some(Value::String(_))) {
            bail!("stdin line {}: no string field \"text\"", number + 1);
        }
        rows.push(object);
    }
    Ok(rows)
}

fn run(args: Args) -> Result<()> {
    let predictor = Ensemble::open(&args.checkpoint, args.device)?;
    let (rows, probs) = match &args.data {
        Some(path) => {
            let examples = predictor.first().read_unlabelled(path)?;
            let probs = predictor
                .predict_examples(&examples, &wick_data::Targets::None)?
                .probs;
            let rows: Vec<Map<String, Value>> = examples.into_iter().map(|e| e.fields).collect();
            (rows, probs)
        }
        None => {
            let rows: Vec<Map<String, Value>> = if args.texts.is_empty() {
                read_stdin()?
            } else {
                args.texts
                    .iter()
                    .map(|t| Map::from_iter([("text".to_string(), Value::String(t.clone()))]))
                    .collect()
            };
            let texts: Vec<&str> = rows
                .iter()
                .filter_map(|r| r.get("text").and_then(Value::as_str))
                .collect();
            let probs = predictor.predict_texts(&texts)?;
            (rows, probs)
        }
    };
    let labels = predictor.labels();
    let plain = Predictions {
        probs,
        logits: Vec::new(),
        loss: None,
    };
    let probs = match args
        .priors
        .apply(&predictor, &plain, &wick_data::Targets::None)?
    {
        None => plain.probs,
        Some((_, matched, line)) => {
            eprintln!("{line}");
            matched.predictions.probs
        }
    };
    let multi = predictor.first().checkpoint.config.data.multi_label;
    let mut out = std::io::stdout().lock();
    for ((mut row, p), best) in rows.into_iter().zip(&probs).zip(argmax(&probs)) {
        let label = if multi {
            let chosen = |q: f32| match args.min_prob {
                Some(min) => f64::from(q) >= min,
                None => q > 0.5,
            };
            Value::from(
                labels
                    .iter()
                    .zip(p)
                    .filter(|(_, &q)| chosen(q))
                    .map(|(l, _)| l.clone())
                    .collect::<Vec<_>>(),
            )
        } else if args
            .min_prob
            .is_some_and(|min| f64::from(p[best as usize]) < min)
        {
            Value::Null
        } else {
            Value::from(labels[best as usize].clone())
        };
        // An input field named like an output one is kept under `input_<name>`.
        for key in ["label", "probs"] {
            if let Some(value) = row.remove(key) {
                let mut name = format!("input_{key}");
                while row.contains_key(&name) {
                    name.insert_str(0, "input_");
                }
                row.insert(name, value);
            }
        }
        row.insert("label".into(), label);
        row.insert("probs".into(), Value::Object(label_probs(labels, p)));
        writeln!(out, "{}", Value::Object(row))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
