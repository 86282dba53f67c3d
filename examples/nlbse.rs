//! The NLBSE'24 issue-report-classification protocol: one classifier per project, trained only on
//! that project's rows of issues_train.csv, a validation split carved from those rows for model
//! selection, then the protocol's table: precision, recall and F1 per class and averaged, per
//! project and overall (the mean of the five project scores).
//!
//!     cargo run --release --example nlbse -- [--test issues_test.csv] [--device auto]
//!         [--config configs/nlbse.toml] [--out runs/nlbse] [--ensemble N | --folds K] [--refit]
//!         [--set key=value ...] [--json]
//!
//! Without --test it reports on each project's own validation split; with it, also on that
//! project's rows of the test file (any CSV of the competition's schema). `--ensemble N` trains
//! N classifiers per project on the same split (`data.split_seed`), seeds `train.seed`,
//! `train.seed + 1`, ..., and scores the mean of their probabilities; each member's own
//! validation macro-F1 is reported beside it. `--refit` (with `--test`) also trains each member
//! again on all of the project's rows, with its seed, for as many epochs as its best
//! validation checkpoint had, and scores the test file with those too (split `refit` in the
//! table, beside `test` for the members that held rows out): the protocol allows every training
//! row, and validation can only choose the epochs.
//!
//! `--folds K` makes the ensemble a cross-validation one: K members, member k trained with fold k
//! of the project's rows held out for its validation (`data.folds`, `data.fold`), so the members
//! together learn from every row and each row validates one member. The validation report is
//! then out-of-fold: every row scored by the member that did not train on it.
//!
//! With `--test`, each project's test rows and the ensemble's probabilities for them are also
//! written to `<out>/<project>/test_predictions.jsonl` (`{"line", "label", "probs": {label: p}}`,
//! `refit_predictions.jsonl` for the refit members): the material for error analysis, or for
//! combining the predictions of two protocol runs (other encoders, other settings). With
//! `eval.calibrate = true` the report of the members' uncalibrated probabilities goes beside it
//! (`test_predictions.uncalibrated.json`), to see what the temperatures did.
//!
//! Each run of the protocol starts over: the runs it finds under `--out` from an earlier run
//! (its own project and member directories) are replaced.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use wick_trainer::checkpoint;
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::eval;
use wick_trainer::fit::{LogRecord, Reporter, RunOptions, Trainer};
use wick_trainer::infer::Ensemble;
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
    ensemble: usize,
    /// Cross-validation members: member k holds fold k out (`--folds`).
    folds: Option<usize>,
    refit: bool,
    json: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        config: "configs/nlbse.toml".into(),
        test: None,
        out: "runs/nlbse".into(),
        device: DeviceRequest::Auto,
        overrides: Vec::new(),
        ensemble: 1,
        folds: None,
        refit: false,
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
            "--ensemble" => {
                args.ensemble = value()?.parse().context("--ensemble takes a count")?;
                if args.ensemble == 0 {
                    bail!("--ensemble needs at least 1 member");
                }
            }
            "--folds" => {
                let k: usize = value()?.parse().context("--folds takes a count")?;
                if k < 2 {
                    bail!("--folds needs at least 2 folds, got {k}");
                }
                args.folds = Some(k);
            }
            "--refit" => args.refit = true,
            "--json" => args.json = true,
            other => bail!("unknown argument {other}"),
        }
    }
    if let Some(k) = args.folds {
        if args.ensemble != 1 {
            bail!("--folds {k} trains {k} members, one per fold: leave out --ensemble");
        }
        args.ensemble = k;
    }
    if args.refit && args.test.is_none() {
        bail!("--refit trains on the validation rows too: it needs --test to score anything");
    }
    Ok(args)
}

/// One line per logging boundary, and the trainer's messages (warnings, weights loaded, learning
/// rates), on stderr.
struct Lines(String);
impl Reporter for Lines {
    fn message(&mut self, text: &str) {
        eprintln!("[{}] {text}", self.0);
    }
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

/// One project's members trained and scored: the ensemble's validation (and test) reports and
/// each member's own validation macro-F1.
fn run_project(args: &Args, project: &str) -> Result<(Vec<Scored>, Vec<f64>)> {
    let slug = project.replace('/', "__");
    let mut overrides = args.overrides.clone();
    overrides.push(format!("data.filter.equals=\"{project}\""));
    let base = RunConfig::load(&args.config, &overrides)?;
    let split_seed = base.split_seed();
    let mut member_probs = Vec::new();
    let mut member_f1 = Vec::new();
    let mut bests = Vec::new();
    let mut refits = Vec::new();
    let mut targets = None;
    // Under --folds, the project's rows and which of them each member validated on.
    let rows = match args.folds {
        Some(_) => Some(wick_data::read_examples(&base.data.train, &base.data)?.examples),
        None => None,
    };
    let mut held_out = Vec::new();
    for k in 0..args.ensemble {
        let mut config = base.clone();
        config.train.seed = base.train.seed + k as u64;
        config.data.split_seed = Some(split_seed);
        if let (Some(folds), Some(rows)) = (args.folds, &rows) {
            config.data.folds = folds;
            config.data.fold = k;
            // The rows the trainer holds out for this member, by the same function.
            let (_, valid) = wick_trainer::fit::held_out(&config, rows).context("no fold")?;
            held_out.push(valid);
        }
        let (out_dir, name) = if args.ensemble == 1 {
            (args.out.join(&slug), project.to_string())
        } else {
            let seed = config.train.seed;
            (
                args.out.join(&slug).join(format!("seed-{seed}")),
                format!("{project} seed {seed}"),
            )
        };
        let options = RunOptions {
            device: args.device,
            out_dir: out_dir.clone(),
            resume: None,
            overwrite: true,
        };
        let mut reporter = Lines(name);
        let mut trainer = Trainer::new(config, &options, &mut reporter)?;
        trainer.fit(&mut reporter)?;
        // Score best/ (not the last weights) on the validation split.
        let best = out_dir.join("best");
        let saved = checkpoint::read(&best)?;
        saved.load_weights(trainer.varmap())?;
        let (mut predictions, valid_targets) =
            trainer.predict_valid()?.context("no validation split")?;
        // With eval.calibrate, as `evaluate` would score best/: its temperature applied.
        if let Some(c) = &saved.calibration {
            predictions = eval::with_temperature(
                predictions,
                c.temperature,
                valid_targets,
                base.data.multi_label,
            );
        }
        let report = eval::report(&base.data.labels, valid_targets, &predictions)?;
        eprintln!(
            "[{project}] member {k}: validation macro-F1 {:.4}",
            report.macro_f1
        );
        member_f1.push(report.macro_f1);
        member_probs.push(predictions);
        targets = Some(valid_targets.clone());
        if args.refit {
            refits.push(refit(args, &trainer, &best, &out_dir)?);
        }
        bests.push(best);
    }
    let (targets, mean) = match &rows {
        // Out of fold: each row's probabilities from the member that held it out.
        Some(rows) => {
            let targets = wick_data::Targets::of(rows)?;
            let mut probs = vec![Vec::new(); rows.len()];
            let mut logits = vec![Vec::new(); rows.len()];
            for (indices, member) in held_out.iter().zip(&member_probs) {
                if indices.len() != member.probs.len() {
                    bail!(
                        "{project}: a member predicted {} validation rows, its fold has {}",
                        member.probs.len(),
                        indices.len()
                    );
                }
                for ((&i, p), z) in indices.iter().zip(&member.probs).zip(&member.logits) {
                    probs[i] = p.clone();
                    logits[i] = z.clone();
                }
            }
            let loss = Some(wick_trainer::calibration::mean_loss(&logits, &targets, 1.0));
            let oof = eval::Predictions {
                probs,
                logits,
                loss,
            };
            (targets, oof)
        }
        None => {
            let targets = targets.context("no members")?;
            let mean = eval::average(&member_probs, &targets, base.data.multi_label)?;
            (targets, mean)
        }
    };
    let mut scored = vec![(
        project.to_string(),
        "valid",
        eval::report(&base.data.labels, &targets, &mean)?,
    )];
    if let Some(test) = &args.test {
        let project_dir = args.out.join(&slug);
        let report = score_test(
            &bests,
            args,
            test,
            &project_dir.join("test_predictions.jsonl"),
        )?;
        scored.push((project.to_string(), "test", report));
        if args.refit {
            let file = project_dir.join("refit_predictions.jsonl");
            let report = score_test(&refits, args, test, &file)?;
            scored.push((project.to_string(), "refit", report));
        }
    }
    Ok((scored, member_f1))
}

/// Scores the checkpoints' mean probabilities on the test file's rows of their project and writes
/// those rows' line, label and probabilities to `predictions`. When the members are calibrated,
/// the report of their uncalibrated probabilities goes beside it
/// (`test_predictions.uncalibrated.json`).
fn score_test(
    checkpoints: &[PathBuf],
    args: &Args,
    test: &Path,
    predictions: &Path,
) -> Result<ClassificationReport> {
    let ensemble = Ensemble::open(checkpoints, args.device)?;
    let (examples, targets, predicted) = ensemble.predict_file(test)?;
    let labels = ensemble.labels();
    let report = eval::report(labels, &targets, &predicted)?;
    let calibrated = ensemble
        .members()
        .iter()
        .any(|m| m.checkpoint.calibration.is_some());
    if calibrated {
        // What the temperatures did: the same members' own probabilities beside them.
        let raw = ensemble
            .members()
            .iter()
            .map(|m| m.predict_examples_uncalibrated(&examples))
            .collect::<wick_trainer::error::Result<Vec<_>>>()?;
        let multi_label = ensemble.first().checkpoint.config.data.multi_label;
        let raw = eval::report(
            labels,
            &targets,
            &eval::average(&raw, &targets, multi_label)?,
        )?;
        let number = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        eprintln!(
            "{}: test macro-F1 {:.4} / loss {} / ECE {} calibrated, {:.4} / {} / {} without the \
             temperatures",
            predictions.display(),
            report.macro_f1,
            number(report.loss),
            number(report.ece),
            raw.macro_f1,
            number(raw.loss),
            number(raw.ece)
        );
        let path = predictions.with_extension("uncalibrated.json");
        std::fs::write(&path, raw.to_json().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let label_field = &ensemble.first().checkpoint.config.data.label_field;
    let mut lines = String::new();
    for (example, probs) in examples.iter().zip(&predicted.probs) {
        let probs = eval::label_probs(labels, probs);
        let row = json!({
            "line": example.line,
            "label": example.fields.get(label_field),
            "probs": probs,
        });
        lines.push_str(&format!("{row}\n"));
    }
    std::fs::write(predictions, lines)
        .with_context(|| format!("writing {}", predictions.display()))?;
    Ok(report)
}

/// Trains `trainer`'s config again on every row (no validation split) for the epochs its `best`
/// checkpoint had completed; returns the new run's checkpoint.
fn refit(args: &Args, trainer: &Trainer, best: &Path, out_dir: &Path) -> Result<PathBuf> {
    let state = checkpoint::read(best)?.state;
    let epochs = state.epoch as usize + usize::from(state.batch_in_epoch > 0);
    let mut config = trainer.config().clone();
    config.data.valid_fraction = 0.0;
    config.train.epochs = epochs.max(1);
    // No validation rows to fit a temperature on: refit members give raw probabilities.
    config.eval.calibrate = false;
    let out = out_dir.with_file_name(format!(
        "{}-refit",
        out_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("run")
    ));
    let options = RunOptions {
        device: args.device,
        out_dir: out.clone(),
        resume: None,
        overwrite: true,
    };
    let mut reporter = Lines(format!(
        "{} refit on all rows, {epochs} epochs",
        out.display()
    ));
    Trainer::new(config, &options, &mut reporter)?.fit(&mut reporter)?;
    Ok(out.join("best"))
}

/// A report of one project on one split.
type Scored = (String, &'static str, ClassificationReport);

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut results: Vec<Scored> = Vec::new();
    let mut members: Vec<(&str, Vec<f64>)> = Vec::new();
    for project in PROJECTS {
        let (scored, member_f1) = run_project(&args, project)?;
        results.extend(scored);
        members.push((project, member_f1));
    }
    let splits: Vec<&str> = match (&args.test, args.refit) {
        (None, _) => vec!["valid"],
        (Some(_), false) => vec!["valid", "test"],
        (Some(_), true) => vec!["valid", "test", "refit"],
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
    // What one member scores alone, averaged over the members: the ensemble's gain is the
    // difference to the validation protocol score above.
    let member_overall = members
        .iter()
        .map(|(_, f1)| f1.iter().sum::<f64>() / f1.len() as f64)
        .sum::<f64>()
        / members.len() as f64;
    if args.ensemble > 1 {
        println!(
            "{:<22} valid {:<9} {member_overall:>22.4}   <- one member alone (mean over {} members)",
            "overall", "macro-F1", args.ensemble
        );
    }
    summary.insert("ensemble".into(), json!(args.ensemble));
    summary.insert(
        "member_valid_f1".into(),
        members
            .iter()
            .map(|(p, f1)| (p.to_string(), json!(f1)))
            .collect(),
    );
    summary.insert("member_mean_overall_f1".into(), json!(member_overall));
    if args.json {
        let path = args.out.join("nlbse.json");
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
