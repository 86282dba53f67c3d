//! `evaluate`: score a checkpoint (or an ensemble of several, their probabilities averaged) on
//! its validation file or any file of the same schema.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::infer::Ensemble;
use wick_trainer::{calibration, eval};

#[path = "../match_priors.rs"]
mod match_priors;

/// Score a checkpoint on labelled data.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A checkpoint directory (or a run directory, meaning its best/). Repeat it to score an
    /// ensemble: the mean of the checkpoints' class probabilities.
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// Labelled JSONL, CSV or Parquet with the checkpoint's field mapping, local or
    /// hf://datasets/{org}/{name}[@{revision}]/{file} (default: its run's validation data, a
    /// data.valid file or the rows it held out of data.train, else data.test).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also list the N most confident mistakes (file line or row, truth, prediction,
    /// probabilities, the start of the text); in JSON under "errors".
    #[arg(long, value_name = "N", default_value_t = 0)]
    errors: usize,
    #[command(flatten)]
    priors: match_priors::MatchPriors,
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
}

/// The thresholds of the selective-prediction table: predicting only where the top probability
/// reaches each.
const THRESHOLDS: [f64; 7] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99];

/// Errors unless the members held out the same rows of their training files (data.train,
/// valid_fraction, folds, fold, split seed): scored on the first one's, another would be scored
/// on rows it trained on.
fn check_same_held_out(dirs: &[PathBuf], ensemble: &Ensemble) -> Result<()> {
    let split = |c: &RunConfig| {
        let d = &c.data;
        let fraction = d.valid_fraction.to_bits();
        (d.train.clone(), fraction, d.folds, d.fold, c.split_seed())
    };
    let first = &ensemble.first().checkpoint.config;
    for (dir, member) in dirs.iter().zip(ensemble.members()).skip(1) {
        if split(&member.checkpoint.config) != split(first) {
            bail!(
                "{} held out other rows of its training data than {} (data.train, \
                 valid_fraction, folds, fold or split seed differ): pass --data FILE",
                dir.display(),
                dirs[0].display()
            );
        }
    }
    Ok(())
}

fn run(args: Args) -> Result<()> {
    let ensemble = Ensemble::open(&args.checkpoint, args.device)?;
    let first = ensemble.first();
    let data = &first.checkpoint.config.data;
    let scored = args
        .checkpoint
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let read = |path: &PathBuf| -> Result<(String, Vec<wick_data::Example>, PathBuf)> {
        let rows = wick_data::read_examples(path, data)
            .with_context(|| format!("evaluating {scored} on {}", path.display()))?;
        if rows.without_label > 0 {
            eprintln!(
                "{}: {} rows with none of data.labels left out (data.other_labels = \"ignore\")",
                path.display(),
                rows.without_label
            );
        }
        Ok((path.display().to_string(), rows.examples, path.clone()))
    };
    // --data, else the run's validation: its file, or the rows it held out of data.train; else
    // its test file. `source` is the file the rows' numbers point into.
    let (what, examples, source) = match &args.data {
        Some(path) => read(path)?,
        None => {
            if data.valid.is_none() {
                check_same_held_out(&args.checkpoint, &ensemble)?;
            }
            let validation = first
                .validation_rows()
                .with_context(|| format!("evaluating {scored} on its run's validation data"))?;
            match validation {
                Some((what, rows)) => {
                    let file = data.valid.as_ref().unwrap_or(&data.train);
                    (what, rows, file.clone())
                }
                None => read(data.test.as_ref().context(
                    "the checkpoint's run had no validation data and names no test file: pass \
                     --data FILE",
                )?)?,
            }
        }
    };
    let context = || format!("evaluating {scored} on {what}");
    let targets = wick_data::Targets::of(&examples).with_context(context)?;
    let mut predictions = ensemble
        .predict_examples(&examples, &targets)
        .with_context(context)?;
    let labels = ensemble.labels();
    // Under --match-priors: what matching did, and the macro-F1 of the predictions before it.
    let mut matched = None;
    let applied = args
        .priors
        .apply(&ensemble, &predictions, &targets)
        .with_context(context)?;
    if let Some((priors, result, line)) = applied {
        let before = eval::report(labels, &targets, &predictions).with_context(context)?;
        let mut json = result.to_json(labels, &priors);
        json["unmatched_macro_f1"] = json!(before.macro_f1);
        predictions = result.predictions;
        matched = Some((line, before.macro_f1, json));
    }
    let report = eval::report(labels, &targets, &predictions).with_context(context)?;
    let mistakes = eval::mistakes(&targets, &predictions);
    let selective = match &targets {
        wick_data::Targets::Single(truth) => {
            calibration::selective_accuracy(&predictions.probs, truth, &THRESHOLDS)
        }
        _ => Vec::new(),
    };
    let temperatures: Vec<Option<f64>> = ensemble
        .members()
        .iter()
        .map(|m| m.checkpoint.calibration.as_ref().map(|c| c.temperature))
        .collect();
    let shown = &mistakes[..args.errors.min(mistakes.len())];
    // A single-label task names one label, a multi-label one a list.
    let names = |ids: &[usize]| match (data.multi_label, ids) {
        (false, [id]) => json!(labels[*id]),
        _ => json!(ids.iter().map(|&id| &labels[id]).collect::<Vec<_>>()),
    };
    if args.json {
        let mut out = report.to_json();
        out["temperature"] = json!(temperatures);
        if let Some((_, _, json)) = &matched {
            out["match_priors"] = json.clone();
        }
        if !selective.is_empty() {
            out["selective"] = selective
                .iter()
                .map(|&(threshold, coverage, accuracy)| {
                    json!({"threshold": threshold, "coverage": coverage, "accuracy": accuracy})
                })
                .collect();
        }
        if args.errors > 0 {
            out["errors"] = shown
                .iter()
                .map(|m| {
                    let example = &examples[m.index];
                    let probs = eval::label_probs(labels, &predictions.probs[m.index]);
                    let mut error = json!({
                        "line": example.line, "label": names(&m.truth),
                        "predicted": names(&m.predicted), "confidence": m.confidence,
                        "probs": probs, "text": example.text,
                    });
                    if let Some(pair) = &example.pair {
                        error["text_pair"] = json!(pair);
                    }
                    error
                })
                .collect();
        }
        println!("{out}");
        return Ok(());
    }
    println!(
        "{scored} on {what} ({}):\n{}",
        first.device_name,
        report.table()
    );
    if let Some((line, before, _)) = &matched {
        println!("{line}; macro-F1 {before:.4} before matching");
    }
    for (dir, member) in args.checkpoint.iter().zip(ensemble.members()) {
        match &member.checkpoint.calibration {
            Some(c) => println!(
                "{}: probabilities calibrated, {}",
                dir.display(),
                c.summary()
            ),
            None => println!(
                "{}: probabilities not calibrated (train with eval.calibrate = true)",
                dir.display()
            ),
        }
        let decay = member.checkpoint.config.train.ema_decay;
        if decay > 0.0 {
            println!(
                "{}: weights are the moving average of training (train.ema_decay = {decay})",
                dir.display()
            );
        }
    }
    if !selective.is_empty() {
        println!("\npredicting only where the top probability reaches a threshold:");
        println!("{:>9}  {:>8}  {:>8}", "threshold", "coverage", "accuracy");
        for (threshold, coverage, accuracy) in &selective {
            println!(
                "{threshold:>9.2}  {:>7.1}%  {:>8}",
                coverage * 100.0,
                accuracy.map_or("-".to_string(), |a| format!("{a:.4}"))
            );
        }
    }
    if args.errors > 0 {
        println!(
            "\nmost confident mistakes ({} of {}):",
            shown.len(),
            mistakes.len()
        );
        let unit = data.format_of(&source)?.unit();
        for m in shown {
            let example = &examples[m.index];
            let mut words: Vec<&str> = example.text.split_whitespace().collect();
            if let Some(pair) = &example.pair {
                words.push("|");
                words.extend(pair.split_whitespace());
            }
            let mut start = words.join(" ");
            if let Some((cut, _)) = start.char_indices().nth(100) {
                start.truncate(cut);
                start.push_str("...");
            }
            let plain = |ids: &[usize]| match names(ids) {
                serde_json::Value::String(name) => name,
                list => list.to_string(),
            };
            println!(
                "  {unit} {}: {} predicted as {} ({:.3})  {start}",
                example.line,
                plain(&m.truth),
                plain(&m.predicted),
                m.confidence
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
