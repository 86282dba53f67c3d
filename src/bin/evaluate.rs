//! `evaluate`: score a checkpoint (or an ensemble of several, their probabilities averaged) on
//! its validation file or any file of the same schema.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use wick_trainer::device::DeviceRequest;
use wick_trainer::infer::Ensemble;

/// Score a checkpoint on labelled data.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A checkpoint directory (or a run directory, meaning its best/). Repeat it to score an
    /// ensemble: the mean of the checkpoints' class probabilities.
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// Labelled JSONL or CSV with the checkpoint's field mapping (default: its data.valid, else
    /// data.test).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
}

fn run(args: Args) -> Result<()> {
    let ensemble = Ensemble::open(&args.checkpoint, args.device)?;
    let first = ensemble.first();
    let data = &first.checkpoint.config.data;
    let path = args
        .data
        .clone()
        .or_else(|| data.valid.clone())
        .or_else(|| data.test.clone())
        .context("the checkpoint's config names no validation or test file: pass --data FILE")?;
    let scored = args
        .checkpoint
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let report = ensemble
        .evaluate_file(&path)
        .with_context(|| format!("evaluating {scored} on {}", path.display()))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!(
            "{scored} on {} ({}):\n{}",
            path.display(),
            first.device_name,
            report.table()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
