//! `lr_find`: the learning-rate range test. A short run with the rate rising exponentially, the
//! training loss of every step, and the rates it suggests (see `wick_trainer::lr_find`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::fit::{Messages, RunOptions, Trainer};

/// Learning-rate range test: which peak rates make the loss fall, and where it blows up.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The run config (TOML): its model, data, batch size and head/layer rate scales are used.
    #[arg(long)]
    config: PathBuf,
    /// Override a config key: `--set train.batch_size=32` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// auto (Metal, else CUDA, else CPU), metal, cuda or cpu.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// The rate of the first step.
    #[arg(long, default_value_t = 1e-7)]
    min_lr: f64,
    /// The rate of the last step.
    #[arg(long, default_value_t = 1.0)]
    max_lr: f64,
    /// Optimizer steps of the ramp.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Print the whole curve as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn run(args: Args) -> Result<()> {
    // Checked before the model is loaded: the trainer would refuse the range only after.
    if let Some(reason) = wick_trainer::lr_find::check_range(args.min_lr, args.max_lr, args.steps) {
        bail!("--min-lr, --max-lr, --steps: {reason}");
    }
    let config = RunConfig::load(&args.config, &args.overrides)?;
    // The trainer writes its resolved config into a run directory; the test needs none of it.
    let scratch = std::env::temp_dir().join(format!("wick-lr-find-{}", std::process::id()));
    let options = RunOptions {
        device: args.device,
        out_dir: scratch.clone(),
        resume: None,
        overwrite: true,
    };
    let result = (|| {
        let mut trainer = Trainer::new(config, &options, &mut Messages)?;
        eprintln!(
            "lr range test: {} steps from {:e} to {:e}",
            args.steps, args.min_lr, args.max_lr
        );
        trainer.lr_range_test(args.min_lr, args.max_lr, args.steps)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let curve = result?;

    if args.json {
        println!("{}", serde_json::to_string(&curve)?);
        return Ok(());
    }
    // About twenty rows of the curve, the suggestions marked.
    let every = (curve.lrs.len() / 20).max(1);
    println!("{:>10}  {:>9}  {:>9}", "lr", "loss", "smoothed");
    for (i, ((lr, loss), smooth)) in curve
        .lrs
        .iter()
        .zip(&curve.losses)
        .zip(&curve.smoothed)
        .enumerate()
    {
        let last = i + 1 == curve.lrs.len();
        if i % every == 0 || last || curve.diverged_at == Some(i) {
            let note = if curve.diverged_at == Some(i) {
                "  <- diverged"
            } else {
                ""
            };
            println!("{lr:>10.2e}  {loss:>9.4}  {smooth:>9.4}{note}");
        }
    }
    match curve.steepest {
        Some(lr) => println!("\nsteepest fall of the smoothed loss: lr {lr:.2e}"),
        None => println!("\nthe smoothed loss never fell: widen the range or add steps"),
    }
    if let Some(lr) = curve.min_over_10 {
        println!("a tenth of the rate at its minimum: lr {lr:.2e}");
    }
    match curve.diverged_at {
        Some(i) => println!("diverged from lr {:.2e} on", curve.lrs[i]),
        None => println!("no divergence up to lr {:.2e}", args.max_lr),
    }
    println!(
        "Values of `train.lr` (the head and the layers keep their configured ratios to it): a \
         starting point, to confirm with `sweep` on validation data."
    );
    Ok(())
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
