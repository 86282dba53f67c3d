//! `export`: write a checkpoint as a sentence-transformers model directory, so the fine-tuned
//! classifier runs in Python (`SentenceTransformer(dir).encode(texts)` gives its logits) and its
//! encoder loads with transformers' `AutoModel`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use serde_json::json;
use wick_trainer::checkpoint;
use wick_trainer::export::{export, ExportOptions};

/// Export a checkpoint for sentence-transformers and transformers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A checkpoint directory (or a run directory, meaning its best/).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The directory to write (created; a non-empty one is refused unless it is an earlier export
    /// and --overwrite is given).
    #[arg(long)]
    out: PathBuf,
    /// Replace an earlier export at --out.
    #[arg(long)]
    overwrite: bool,
    /// Export the raw logits even when the checkpoint has a fitted temperature (by default it
    /// is folded into the last layer, so the outputs give the calibrated probabilities).
    #[arg(long)]
    raw_logits: bool,
    /// Print what was written as one JSON object.
    #[arg(long)]
    json: bool,
}

fn run(args: Args) -> Result<()> {
    let checkpoint = checkpoint::read(&checkpoint::resolve(&args.checkpoint))?;
    let options = ExportOptions {
        fold_temperature: !args.raw_logits,
        overwrite: args.overwrite,
    };
    let done = export(&checkpoint, &args.out, &options)?;
    if args.json {
        println!(
            "{}",
            json!({
                "checkpoint": checkpoint.dir, "out": done.dir, "files": done.files,
                "encoder_tensors": done.encoder_tensors, "labels": checkpoint.labels,
                "temperature_folded": done.temperature, "notes": done.notes,
                "truncating_module": done.truncating_module,
            })
        );
        return Ok(());
    }
    println!(
        "exported {} (step {}, labels {}) to {}: {} encoder tensors, {} files",
        checkpoint.dir.display(),
        checkpoint.state.step,
        checkpoint.labels.join(", "),
        done.dir.display(),
        done.encoder_tensors,
        done.files.len()
    );
    if let Some(t) = done.temperature {
        println!(
            "temperature {t:.4} folded into the head: the outputs give calibrated probabilities"
        );
    }
    if done.truncating_module {
        println!(
            "long texts are cut as in training (data.truncation = {}) by wick_transformer.py, the \
             first module: load it with trust_remote_code=True",
            serde_json::to_string(&checkpoint.config.data.truncation)?
        );
    }
    for note in &done.notes {
        eprintln!("note: {note}");
    }
    println!(
        "Python: SentenceTransformer({:?}{}).encode(texts) gives the logits; {}",
        done.dir.display().to_string(),
        if done.truncating_module {
            ", trust_remote_code=True"
        } else {
            ""
        },
        if checkpoint.config.data.multi_label {
            "sigmoid of each is that label's probability"
        } else {
            "their softmax gives the probabilities"
        }
    );
    Ok(())
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
