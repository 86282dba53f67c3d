//! The NLBSE'24 issue-report-classification protocol: one classifier per project, trained only on
//! that project's rows of issues_train.csv, a validation split carved from those rows for model
//! selection, then the protocol's table: precision, recall and F1 per class and averaged, per
//! project and overall (the mean of the five project scores).
//!
//!     cargo run --release --example nlbse -- [--test issues_test.csv] [--device auto]
//!         [--config configs/nlbse.toml] [--out runs/nlbse] [--set key=value ...] [--json]
//!
//! Without --test it reports on each project's own validation split; with it, also on that
//! project's rows of the test file (any CSV of the competition's schema).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;
use wick_trainer::checkpoint;
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::fit::{LogRecord, Reporter, RunOptions, Trainer};
use wick_trainer::infer::Predictor;
use wick_trainer::metrics::ClassificationReport;

const PROJECTS: [&str; 5] = [
    "facebook/react",
    "tensorflow/tensorflow",
    "microsoft/vscode",
    "bitcoin/bitcoin",
    "opencv/opencv",
];

struct Args {
    config: PathBuf,
    test: Option<PathBuf>,
    out: PathBuf,
    device: DeviceRequest,
    overrides: Vec<String>,
    json: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        config: "configs/nlbse.toml".into(),
        test: None,
        out: "runs/nlbse".into(),
        device: DeviceRequest::Auto,
        overrides: Vec::new(),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => args.config = value()?.into(),
            "--test" => args.test = Some(value()?.into()),
            "--out" => args.out = value()?.into(),
            "--device" => args.device = value()?.parse()?,
            "--set" => args.overrides.push(value()?),
            "--json" => args.json = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// One line per logging boundary on stderr.
struct Lines(String);
impl Reporter for Lines {
    fn log(&mut self, r: &LogRecord) {
        eprintln!(
            "[{}] step {} loss {:.4} {:.1} ex/s",
            self.0, r.step, r.loss, r.examples_per_s
        );
    }
    fn evaluated(&mut self, step: usize, report: &ClassificationReport) {
        eprintln!(
            "[{}] eval step {step}: macro-F1 {:.4}",
            self.0, report.macro_f1
        );
    }
}

/// Per-class and averaged P/R/F1 of a report, as one table row per class.
fn rows(project: &str, split: &str, report: &ClassificationReport) -> Vec<String> {
    let mut out: Vec<String> = report
        .labels
        .iter()
        .zip(&report.per_class)
        .map(|(label, c)| {
            format!(
                "{project:<22} {split:<5} {label:<9} {:.4}  {:.4}  {:.4}",
                c.precision, c.recall, c.f1
            )
        })
        .collect();
    let n = report.per_class.len() as f64;
    let mean = |f: fn(&wick_trainer::metrics::ClassStats) -> f64| {
        report.per_class.iter().map(f).sum::<f64>() / n
    };
    out.push(format!(
        "{project:<22} {split:<5} {:<9} {:.4}  {:.4}  {:.4}",
        "average",
        mean(|c| c.precision),
        mean(|c| c.recall),
        report.macro_f1
    ));
    out
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut results: Vec<(String, &str, ClassificationReport)> = Vec::new();
    for project in PROJECTS {
        let slug = project.replace('/', "__");
        let mut overrides = args.overrides.clone();
        overrides.push(format!("data.filter.equals=\"{project}\""));
        let config = RunConfig::load(&args.config, &overrides)?;
        let out_dir = args.out.join(&slug);
        let options = RunOptions {
            device: args.device,
            out_dir: out_dir.clone(),
            resume: None,
        };
        let mut reporter = Lines(project.to_string());
        let mut trainer = Trainer::new(config, &options, &mut reporter)?;
        trainer.fit(&mut reporter)?;
        // Score best/ (not the last weights) on the validation split.
        let best = out_dir.join("best");
        checkpoint::read(&best)?.load_weights(trainer.varmap())?;
        let valid = trainer.evaluate()?.context("no validation split")?;
        results.push((project.to_string(), "valid", valid));
        if let Some(test) = &args.test {
            let report = Predictor::open(&best, args.device)?.evaluate_file(test)?;
            results.push((project.to_string(), "test", report));
        }
    }
    let splits: Vec<&str> = if args.test.is_some() {
        vec!["valid", "test"]
    } else {
        vec!["valid"]
    };
    let mut summary = serde_json::Map::new();
    println!(
        "{:<22} {:<5} {:<9} {:<7} {:<7} {:<7}",
        "project", "split", "class", "P", "R", "F1"
    );
    for (project, split, report) in &results {
        for row in rows(project, split, report) {
            println!("{row}");
        }
    }
    for split in splits {
        let reports: Vec<&ClassificationReport> = results
            .iter()
            .filter(|r| r.1 == split)
            .map(|r| &r.2)
            .collect();
        let n = reports.len() as f64;
        let labels = &reports[0].labels;
        for (i, label) in labels.iter().enumerate() {
            let mean = |f: fn(&wick_trainer::metrics::ClassStats) -> f64| {
                reports.iter().map(|r| f(&r.per_class[i])).sum::<f64>() / n
            };
            println!(
                "{:<22} {split:<5} {label:<9} {:.4}  {:.4}  {:.4}",
                "overall",
                mean(|c| c.precision),
                mean(|c| c.recall),
                mean(|c| c.f1)
            );
        }
        let overall = reports.iter().map(|r| r.macro_f1).sum::<f64>() / n;
        println!(
            "{:<22} {split:<5} {:<9} {:>22.4}   <- protocol score (mean of project macro-F1)",
            "overall", "macro-F1", overall
        );
        summary.insert(split.to_string(), json!({
            "overall_f1": overall,
            "projects": results.iter().filter(|r| r.1 == split).map(|r| (r.0.clone(), r.2.to_json())).collect::<serde_json::Map<_, _>>(),
        }));
    }
    if args.json {
        let path = args.out.join("nlbse.json");
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
