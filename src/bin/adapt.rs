//! `adapt`: continue the pretraining of a run config's encoder with masked-language modelling on
//! unlabelled texts (say the training texts of the task, or a project's issues), and write the
//! adapted encoder as a model directory for `model.path` (`wick_trainer::adapt`).
//!
//!     cargo run --release --bin adapt -- --config configs/nlbse-mpnet.toml --out runs/adapted \
//!         [--data FILE] [--set key=value ...] [--epochs 30] [--head-epochs 3] [--lr 5e-5]
//!         [--head-lr 1e-3] [--batch-size 32] [--mask-prob 0.15] [--seed 0] [--device auto]
//!         [--save-minutes 10] [--resume]
//!
//! Then: `train --config ... --set model.path=\"runs/adapted\"`. While it runs, `<out>/checkpoint/`
//! holds its state (saved every `--save-minutes` at an epoch's end, and on Ctrl-C after the
//! step in progress); the same command with `--resume` continues it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use wick_trainer::adapt::{adapt, AdaptOptions, AdaptOutcome, AdaptRun};
use wick_trainer::budget::human_bytes;
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::fit::Messages;

/// Adapt an encoder to unlabelled texts with masked-language modelling.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The run config (TOML): its [model], train.precision and the [data] keys that read and
    /// tokenize texts (text_fields, filter, max_len, truncation).
    #[arg(long)]
    config: PathBuf,
    /// Override a config key: `--set data.filter.equals="bitcoin/bitcoin"` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// The texts (default: the config's data.train). Labels are not read.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the adapted encoder goes (replaced if it exists); `<out>/checkpoint/` holds the
    /// run's state until it ends.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run saved in `<out>/checkpoint/` (give the same settings).
    #[arg(long)]
    resume: bool,
    /// Save the run's state at the end of an epoch when this many minutes have passed since the
    /// last save (0: every epoch). Ctrl-C always saves, after the step in progress.
    #[arg(long, value_name = "MINUTES", default_value_t = 10.0)]
    save_minutes: f64,
    /// Epochs with everything training.
    #[arg(long, default_value_t = AdaptOptions::default().epochs)]
    epochs: usize,
    /// Epochs of the masked-LM head alone first.
    #[arg(long, default_value_t = AdaptOptions::default().head_epochs)]
    head_epochs: usize,
    #[arg(long, default_value_t = AdaptOptions::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = AdaptOptions::default().head_lr)]
    head_lr: f64,
    #[arg(long, default_value_t = AdaptOptions::default().batch_size)]
    batch_size: usize,
    /// The fraction of text tokens chosen for prediction.
    #[arg(long, default_value_t = AdaptOptions::default().mask_prob)]
    mask_prob: f64,
    #[arg(long, default_value_t = AdaptOptions::default().seed)]
    seed: u64,
    /// auto (Metal, else CUDA, else CPU), metal, cuda or cpu.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
}

fn run(args: Args) -> Result<ExitCode> {
    let config = RunConfig::load(&args.config, &args.overrides)?;
    let data = args.data.unwrap_or_else(|| config.data.train.clone());
    let options = AdaptOptions {
        epochs: args.epochs,
        head_epochs: args.head_epochs,
        lr: args.lr,
        head_lr: args.head_lr,
        batch_size: args.batch_size,
        mask_prob: args.mask_prob,
        seed: args.seed,
        ..AdaptOptions::default()
    };
    let save_every = Duration::try_from_secs_f64(args.save_minutes * 60.0).map_err(|_| {
        anyhow::anyhow!(
            "--save-minutes must be a number of minutes, 0 or more, got {}",
            args.save_minutes
        )
    })?;
    let run = AdaptRun {
        resume: args.resume,
        save_every: Some(save_every),
        ..AdaptRun::new(args.device, &args.out)
    };
    wick_trainer::cli::stop_on_signal(&run.stop).context("installing the Ctrl-C handler")?;
    let report = match adapt(&config, &data, &options, &run, &mut Messages)? {
        AdaptOutcome::Finished(report) => report,
        AdaptOutcome::Stopped { checkpoint, steps } => {
            eprintln!(
                "stopped after step {steps}; {} holds it: continue with the same command and \
                 --resume",
                checkpoint.display()
            );
            return Ok(ExitCode::from(wick_trainer::cli::INTERRUPTED));
        }
    };
    println!("{}: {}", args.out.display(), report.summary());
    // Host memory: the device argument only adds accelerator facts, not needed here.
    let host = wick_trainer::device::memory_facts(&candle_core::Device::Cpu);
    if let Some(peak) = host.peak_rss_bytes {
        println!("peak process memory (RSS): {}", human_bytes(peak));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
