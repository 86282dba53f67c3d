//! Library use: build a run from a config, train it through the trainer API with a custom
//! progress reporter, then score the best checkpoint.
//!
//!     cargo run --release --example custom_training -- configs/tiny.toml

use std::path::PathBuf;

use anyhow::Result;
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::fit::{LogRecord, Plan, Reporter, RunOptions, Trainer};
use wick_trainer::infer::Predictor;
use wick_trainer::metrics::ClassificationReport;

/// Prints one compact line per logging boundary and keeps the loss curve.
#[derive(Default)]
struct CurveReporter {
    losses: Vec<(usize, f64)>,
}

impl Reporter for CurveReporter {
    fn start(&mut self, plan: &Plan) {
        println!(
            "training {} on {} for {} steps",
            plan.model, plan.device, plan.total_steps
        );
    }

    fn log(&mut self, record: &LogRecord) {
        self.losses.push((record.step, record.loss));
        println!(
            "  step {:>4}  loss {:.4}  ({:.0} examples/s)",
            record.step, record.loss, record.examples_per_s
        );
    }

    fn evaluated(&mut self, step: usize, report: &ClassificationReport) {
        println!("  eval @ {step}: macro-F1 {:.3}", report.macro_f1);
    }
}

fn main() -> Result<()> {
    let config_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "configs/tiny.toml".to_string());
    let config = RunConfig::load(config_path.as_ref(), &["train.epochs=6".to_string()])?;
    let out_dir = std::env::temp_dir().join(format!("wick-example-{}", std::process::id()));
    let options = RunOptions {
        device: DeviceRequest::Auto,
        out_dir: out_dir.clone(),
        resume: None,
        overwrite: false,
    };

    let mut reporter = CurveReporter::default();
    let mut trainer = Trainer::new(config, &options, &mut reporter)?;
    let outcome = trainer.fit(&mut reporter)?;
    let (first, last) = (
        reporter.losses.first().copied(),
        reporter.losses.last().copied(),
    );
    println!(
        "{} steps; loss {:?} -> {:?}",
        outcome.steps,
        first.map(|l| l.1),
        last.map(|l| l.1)
    );

    let predictor = Predictor::open(&PathBuf::from(&out_dir).join("best"), DeviceRequest::Auto)?;
    let probs =
        predictor.predict_texts(&["please add a test for the parser", "ptal, rebased on main"])?;
    for (text, p) in ["please add a test for the parser", "ptal, rebased on main"]
        .iter()
        .zip(probs)
    {
        println!(
            "{text:?} -> {:?}",
            predictor.labels().iter().zip(p).collect::<Vec<_>>()
        );
    }
    std::fs::remove_dir_all(&out_dir)?;
    Ok(())
}
