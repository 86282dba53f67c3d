//! `train`: fine-tune a BERT classifier from a TOML config, then report on the best checkpoint.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wick_trainer::budget::human_bytes;
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::fit::{LogRecord, Plan, Progress, Reporter, RunOptions, Trainer};
use wick_trainer::infer::Predictor;
use wick_trainer::metrics::ClassificationReport;

/// Fine-tune a pretrained BERT encoder into a text classifier.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The run config (TOML). Optional with --resume, which reuses the checkpoint's config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key: `--set train.lr=3e-5` (repeatable; dotted keys; TOML-typed values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// auto (Metal, else CUDA, else CPU), metal, cuda or cpu.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// Run directory (default: runs/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from a run directory or checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Replace a previous run in the run directory (its checkpoints, metrics and plot are
    /// deleted once the new run is ready to start); without it such a directory is refused.
    #[arg(long)]
    overwrite: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Progress bars on stderr, hidden when stderr is not a terminal or with --quiet.
struct Bars {
    multi: MultiProgress,
    bar: ProgressBar,
    last_log: Option<LogRecord>,
}

impl Bars {
    fn new(quiet: bool) -> Self {
        let multi = MultiProgress::new();
        if quiet || !std::io::stderr().is_terminal() {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self {
            bar: ProgressBar::hidden(),
            multi,
            last_log: None,
        }
    }

    /// Lines always reach stderr, bars or not.
    fn line(&self, text: &str) {
        if self.multi.is_hidden() {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }
}

impl Reporter for Bars {
    fn message(&mut self, text: &str) {
        self.line(text);
    }

    fn start(&mut self, plan: &Plan) {
        self.line(&format!(
            "device: {} ({}); built with: {}",
            plan.device,
            plan.device_reason,
            plan.compiled.join(", ")
        ));
        if plan.device == "cpu" {
            self.line(&format!(
                "cpu f32 products: {}",
                wick_model::matmul::describe()
            ));
        }
        self.line(&format!(
            "model: {}; {} parameters, {} trainable",
            plan.model, plan.parameters, plan.trainable_parameters
        ));
        self.line(&format!("train data:\n{}", plan.train_summary));
        self.line(&format!("validation examples: {}", plan.valid_examples));
        self.line(&format!("memory budget: {}", plan.memory));
        self.line(&format!(
            "{} epochs x {} steps = {} optimizer steps (starting at {})",
            plan.epochs, plan.steps_per_epoch, plan.total_steps, plan.start_step
        ));
        self.bar = self.multi.add(ProgressBar::new(plan.total_steps as u64));
        self.bar.set_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.bar.set_position(plan.start_step as u64);
    }

    fn step(&mut self, p: &Progress) {
        self.bar.set_prefix(format!(
            "epoch {} batch {}/{}",
            p.epoch + 1,
            p.batch_in_epoch,
            p.batches_in_epoch
        ));
        self.bar.set_position(p.step as u64);
        if let Some(log) = &self.last_log {
            self.bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.1} ex/s",
                log.loss, p.lr, log.examples_per_s
            ));
        }
    }

    fn log(&mut self, r: &LogRecord) {
        self.last_log = Some(*r);
        if self.multi.is_hidden() {
            eprintln!(
                "step {} epoch {} loss {:.4} lr {:.3e} grad_norm {:.3} {:.1} examples/s {:.0} tokens/s",
                r.step, r.epoch + 1, r.loss, r.lr, r.grad_norm, r.examples_per_s, r.tokens_per_s
            );
        }
    }

    fn evaluated(&mut self, step: usize, report: &ClassificationReport) {
        self.line(&format!(
            "eval at step {step}: loss {:.4} accuracy {:.4} macro_f1 {:.4}",
            report.loss.unwrap_or(f64::NAN),
            report.accuracy,
            report.macro_f1
        ));
    }

    fn checkpoint(&mut self, dir: &Path) {
        self.bar.set_message(format!("saved {}", dir.display()));
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let config_path = match (&args.config, &args.resume) {
        (Some(path), _) => path.clone(),
        (None, Some(resume)) => {
            let dir = if resume.join("last").is_dir() {
                resume.join("last")
            } else {
                resume.clone()
            };
            dir.join("config.toml")
        }
        (None, None) => anyhow::bail!("give --config FILE (or --resume DIR)"),
    };
    let config = RunConfig::load(&config_path, &args.overrides)?;
    // The test file is only scored after training: check that it reads now, so that a file of
    // another schema or label set fails in seconds rather than after the run.
    if let Some(test) = &config.data.test {
        config.data.validate()?;
        wick_data::read_examples(test, &config.data).with_context(|| {
            format!(
                "data.test {} (checked before training; it is scored after)",
                test.display()
            )
        })?;
    }
    let out_dir = match (&args.out, &args.resume) {
        (Some(out), _) => out.clone(),
        (None, Some(resume)) if resume.join("last").is_dir() => resume.clone(),
        (None, Some(resume)) => resume
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| resume.clone()),
        (None, None) => {
            let stem = config_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            PathBuf::from("runs").join(stem)
        }
    };
    let options = RunOptions {
        device: args.device,
        out_dir: out_dir.clone(),
        resume: args.resume.clone(),
        overwrite: args.overwrite,
    };
    let mut bars = Bars::new(args.quiet);
    let mut trainer = Trainer::new(config.clone(), &options, &mut bars)?;
    wick_trainer::cli::stop_on_signal(trainer.stop_flag())
        .context("installing the Ctrl-C handler")?;
    let outcome = trainer.fit(&mut bars)?;
    let train_seconds = started.elapsed().as_secs_f64();
    if outcome.interrupted {
        eprintln!(
            "stopped at step {} after {train_seconds:.1} s; {} holds that step: continue with\n  \
             train --resume {}",
            outcome.steps,
            out_dir.join("last").display(),
            out_dir.display()
        );
        return Ok(ExitCode::from(wick_trainer::cli::INTERRUPTED));
    }

    let best = out_dir.join("best");
    let predictor = Predictor::open(&best, args.device)
        .with_context(|| format!("reading {}", best.display()))?;
    println!(
        "run: {} ({} steps in {:.1} s{})",
        out_dir.display(),
        outcome.steps,
        train_seconds,
        if outcome.stopped_early {
            ", stopped early"
        } else {
            ""
        }
    );
    if let Some((value, step)) = outcome.best {
        println!(
            "best {} = {value:.4} at step {step} -> {}",
            config.eval.metric,
            best.display()
        );
    }
    if let Some(c) = &predictor.checkpoint.calibration {
        println!(
            "calibrated on the validation data: {}; the reports below use it",
            c.summary()
        );
    }
    for (name, path) in [
        ("validation", &config.data.valid),
        ("test", &config.data.test),
    ] {
        if let Some(path) = path {
            let report = predictor
                .evaluate_file(path)
                .with_context(|| format!("evaluating {}", path.display()))?;
            println!("\n{name} ({}):\n{}", path.display(), report.table());
        }
    }
    if let (Some(held_out), Some(report)) = (config.data.held_out_name(), outcome.last_eval) {
        println!(
            "\nvalidation ({held_out} of {}), last evaluation:\n{}",
            config.data.train.display(),
            report.table()
        );
    }
    let facts = wick_trainer::device::memory_facts(trainer.device());
    if let Some(peak) = facts.peak_rss_bytes {
        println!("peak process memory (RSS): {}", human_bytes(peak));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
