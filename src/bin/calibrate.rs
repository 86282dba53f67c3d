//! `calibrate`: fit the temperature of an existing checkpoint (temperature scaling, as
//! `eval.calibrate = true` does during training) on labelled data, and store it in the
//! checkpoint so that `evaluate` and `predict` give calibrated probabilities. Or remove it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use wick_trainer::calibration::Calibration;
use wick_trainer::checkpoint;
use wick_trainer::device::DeviceRequest;
use wick_trainer::infer::Predictor;

/// Fit a checkpoint's temperature on labelled data and store it in the checkpoint.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A checkpoint directory (or a run directory, meaning its best/).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Labelled JSONL, CSV or Parquet with the checkpoint's field mapping, local or
    /// hf://datasets/... (default: its run's validation data, a data.valid file or the rows it
    /// held out of data.train). Not the test set you report on: the temperature is fitted to
    /// this data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Remove the checkpoint's temperature instead (its raw probabilities again).
    #[arg(long, conflicts_with = "data")]
    remove: bool,
    /// Print the fit as one JSON object.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
}

fn run(args: Args) -> Result<()> {
    let predictor = Predictor::open(&args.checkpoint, args.device)?;
    let dir = predictor.checkpoint.dir.clone();
    if args.remove {
        checkpoint::set_calibration(&dir, None)?;
        println!("{}: temperature removed", dir.display());
        return Ok(());
    }
    let (what, examples) = match &args.data {
        Some(path) => (
            path.display().to_string(),
            wick_data::read_examples(path, &predictor.checkpoint.config.data)?.examples,
        ),
        None => predictor.validation_rows()?.context(
            "the checkpoint's run had no validation data to fit a temperature on: pass --data \
             FILE",
        )?,
    };
    let targets = wick_data::Targets::of(&examples)?;
    let logits = predictor
        .predict_examples_uncalibrated(&examples)
        .with_context(|| format!("predicting {what}"))?
        .logits;
    let step = predictor.checkpoint.state.step;
    let fit = match Calibration::fit(&logits, &targets, step) {
        Ok(fit) => fit,
        Err(why) => bail!("{what}: {why}; {} is unchanged", dir.display()),
    };
    checkpoint::set_calibration(&dir, Some(&fit))?;
    if args.json {
        println!(
            "{}",
            json!({
                "checkpoint": dir, "data": what, "temperature": fit.temperature,
                "examples": fit.examples, "loss_before": fit.loss_before,
                "loss_after": fit.loss_after, "ece_before": fit.ece_before,
                "ece_after": fit.ece_after,
            })
        );
    } else {
        println!(
            "{}: fitted on {what}: {}; evaluate and predict now use it",
            dir.display(),
            fit.summary()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
