//! `predict`: label texts with a checkpoint (or an ensemble of several). Texts come from the
//! arguments (each with its `--pair` for a checkpoint of text pairs), as JSONL on stdin (a `text`
//! field, or the checkpoint's text fields; `text_pair` or its pair fields), or from a file of the
//! schema the checkpoint was trained on (`--data`: JSONL, CSV or Parquet, its fields and filter,
//! labels not needed); one JSON line per input goes to stdout, other input fields passed through.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use serde_json::Value;
use wick_trainer::device::DeviceRequest;
use wick_trainer::eval::prediction_record;
use wick_trainer::infer::Ensemble;

#[path = "../inputs.rs"]
mod inputs;
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
    #[arg(long, value_name = "P", value_parser = wick_trainer::cli::probability)]
    min_prob: Option<f64>,
    #[command(flatten)]
    priors: match_priors::MatchPriors,
    /// Texts to label; without any (and without --data), JSONL objects are read from stdin, each
    /// labelled by its string field "text" or else by the checkpoint's text fields (an issue's
    /// "title" and "body" for an NLBSE checkpoint), joined as in training.
    texts: Vec<String>,
    /// For a checkpoint of text pairs (`data.pair_fields`): the second text of each text, in
    /// order (repeat it once per text).
    #[arg(long = "pair", value_name = "TEXT", conflicts_with = "data")]
    pairs: Vec<String>,
}

fn run(args: Args) -> Result<()> {
    let predictor = Ensemble::open(&args.checkpoint, args.device)?;
    let data = &predictor.first().checkpoint.config.data;
    let examples = inputs::read(&predictor, &args.texts, &args.pairs, args.data.as_deref())?;
    let plain = predictor.predict_examples(&examples, &wick_data::Targets::None)?;
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
    let (labels, multi) = (predictor.labels(), data.multi_label);
    let mut out = std::io::stdout().lock();
    for (example, p) in examples.into_iter().zip(&probs) {
        let record = prediction_record(example.fields, labels, p, multi, args.min_prob);
        writeln!(out, "{}", Value::Object(record))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
