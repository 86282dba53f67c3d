//! The NLBSE'24 issue-report-classification protocol: one classifier per project, trained only on
//! that project's rows of issues_train.csv, a validation split carved from those rows for model
//! selection, then the protocol's table: precision, recall and F1 per class and averaged, per
//! project and overall (the mean of the five project scores).
//!
//!     cargo run --release --example nlbse -- [--test issues_test.csv] [--device auto]
//!         [--config configs/nlbse.toml ...] [--out runs/nlbse] [--ensemble N | --folds K]
//!         [--refit] [--match-priors] [--adapt-epochs N] [--project NAME ...]
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
//! `--config` may be given more than once: each config trains its own `--ensemble N` members
//! (seeds from its own `train.seed`) on the same rows, and the ensemble averages all of them, so
//! different encoders or ways of training vote together (say full fine-tuning and LoRA). The
//! configs must share the data and the split; each config's own ensemble is reported beside the
//! whole one. Members live under `<project>/<config file stem>-seed-<seed>`.
//!
//! `--folds K` makes the ensemble a cross-validation one: K members, member k trained with fold k
//! of the project's rows held out for its validation (`data.folds`, `data.fold`), so the members
//! together learn from every row and each row validates one member. The validation report is
//! then out-of-fold: every row scored by the member that did not train on it. With `--set
//! data.nested_folds=true` the folds are dealt from the rows a plain run of the config trains
//! on, and the report covers those: its validation rows are set aside, so that students of
//! these members (`train.distill_out_of_fold`) validate on rows no member saw.
//!
//! Each project's validation rows and the ensemble's probabilities for them are written to
//! `<out>/<project>/valid_predictions.jsonl` (`{"line", "label", "probs": {label: p}}`); with
//! `--test`, its test rows to `test_predictions.jsonl` (`refit_predictions.jsonl` for the refit
//! members): the material for error analysis, or for combining the predictions of protocol runs
//! made apart (`bench/h100/combine.py`). With
//! `eval.calibrate = true` the report of the members' uncalibrated probabilities goes beside it
//! (`test_predictions.uncalibrated.json`), to see what the temperatures did.
//!
//! `--match-priors` scores each project's validation and test rows after moving the ensemble's
//! probabilities so that their mean over those rows equals the label frequencies of the
//! project's training rows (`wick_trainer::priors`: one offset per label on the
//! log-probabilities, found by iterative proportional fitting). It assumes the scored rows have
//! the training rows' label proportions, as a split drawn like them does (the competition's
//! files have 100 issues per label and project). The report is of the matched predictions, the
//! unmatched overall scores printed and written (`"unmatched"` in `nlbse.json`) beside it; the
//! prediction files keep the ensemble's own probabilities.
//!
//! `--adapt-epochs N` first adapts the (first) config's encoder to each project's rows of
//! `data.train` with masked-language modelling (`wick_trainer::adapt`: N epochs after the
//! default head epochs; texts only, the validation rows' included, never a label), into
//! `<out>/<project>/adapted`, and every member of the project starts from it.
//!
//! `{project}` in a `--set` value stands for the project's directory name (`facebook__react`):
//! `--set model.path=adapted/{project}` starts each project from an encoder of its own, say one
//! adapted to that project's texts.
//!
//! `--project facebook/react` (repeatable) runs only the projects named, in the protocol's order;
//! the overall lines are then the mean over those projects, which the protocol score is not.
//! Projects run apart (in processes side by side, say) combine as one run does
//! (`bench/h100/combine.py`). A `{project}`-templated `--set` lets each project distill from
//! its own out-of-fold teachers: `nlbse --folds 5 --out teachers`, then `--set
//! "train.distill_from=['teachers/{project}/seed-42', ..., 'teachers/{project}/seed-46']" --set
//! train.distill_out_of_fold=true`.
//!
//! Each run of the protocol starts over: the runs it finds under `--out` from an earlier run
//! (its own project and member directories) are replaced.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use wick_data::Example;
use wick_trainer::adapt::{adapt, AdaptOptions, AdaptOutcome, AdaptRun, CHECKPOINT};
use wick_trainer::checkpoint;
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::eval;
use wick_trainer::fit::{LogRecord, Reporter, RunOptions, Trainer};
use wick_trainer::infer::Ensemble;
use wick_trainer::metrics::ClassificationReport;
use wick_trainer::priors::{self, Priors};

const PROJECTS: [&str; 5] = [
    "facebook/react",
    "tensorflow/tensorflow",
    "microsoft/vscode",
    "bitcoin/bitcoin",
    "opencv/opencv",
];

struct Args {
    /// One or more configs (`--config`, repeatable): each trains `ensemble` members per project.
    configs: Vec<PathBuf>,
    test: Option<PathBuf>,
    out: PathBuf,
    device: DeviceRequest,
    overrides: Vec<String>,
    ensemble: usize,
    /// Cross-validation members: member k holds fold k out (`--folds`).
    folds: Option<usize>,
    refit: bool,
    /// Score with the probabilities matched to the training rows' label frequencies.
    match_priors: bool,
    /// Epochs of masked-LM adaptation of the encoder to each project's rows first (0: none).
    adapt_epochs: usize,
    /// The projects to run (`--project`, repeatable; all five by default), in PROJECTS' order.
    projects: Vec<&'static str>,
    json: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        configs: Vec::new(),
        test: None,
        out: "runs/nlbse".into(),
        device: DeviceRequest::Auto,
        overrides: Vec::new(),
        ensemble: 1,
        folds: None,
        refit: false,
        match_priors: false,
        adapt_epochs: 0,
        projects: Vec::new(),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => args.configs.push(value()?.into()),
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
            "--match-priors" => args.match_priors = true,
            "--adapt-epochs" => {
                args.adapt_epochs = value()?.parse().context("--adapt-epochs takes a count")?
            }
            "--project" => {
                let name = value()?;
                let known = PROJECTS.iter().find(|p| **p == name).with_context(|| {
                    format!(
                        "--project {name}: not a project of the benchmark (they are {})",
                        PROJECTS.join(", ")
                    )
                })?;
                if args.projects.contains(known) {
                    bail!("--project {name} is given twice");
                }
                args.projects.push(known);
            }
            "--json" => args.json = true,
            other => bail!("unknown argument {other}"),
        }
    }
    if args.configs.is_empty() {
        args.configs.push("configs/nlbse.toml".into());
    }
    let mut names: Vec<String> = args.configs.iter().map(|c| config_name(c)).collect();
    names.sort();
    if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "two configs are named {}: members' directories are named after their config's \
             file name, so give the configs different names",
            twice[0]
        );
    }
    if let Some(k) = args.folds {
        if args.ensemble != 1 {
            bail!("--folds {k} trains {k} members, one per fold: leave out --ensemble");
        }
        args.ensemble = k;
    }
    if args.projects.is_empty() {
        args.projects = PROJECTS.to_vec();
    }
    args.projects
        .sort_by_key(|p| PROJECTS.iter().position(|known| known == p));
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

/// A config's name in directories and reports: its file name without `.toml`.
fn config_name(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

/// The rows a member of `config` validates on, in the order the trainer predicts them: the
/// validation file's, or the held-out part of `rows` (the project's training rows).
fn validation_rows(config: &RunConfig, rows: &[Example]) -> Result<Vec<Example>> {
    if let Some(valid) = &config.data.valid {
        return Ok(wick_data::read_examples(valid, &config.data)?.examples);
    }
    let (_, valid) = wick_trainer::fit::held_out(config, rows)
        .context("no validation rows: the protocol needs data.valid_fraction > 0 or data.valid")?;
    Ok(valid.iter().map(|&i| rows[i].clone()).collect())
}

/// The `--set` overrides for `project`, with its filter: `{project}` in a value names the
/// project's directory (facebook__react), so each project can start from weights of its own.
fn project_overrides(args: &Args, project: &str) -> Vec<String> {
    let slug = project.replace('/', "__");
    let mut overrides: Vec<String> = args
        .overrides
        .iter()
        .map(|o| o.replace("{project}", &slug))
        .collect();
    overrides.push(format!("data.filter.equals=\"{project}\""));
    overrides
}

/// Adapts the first config's encoder to the project's rows of its `data.train` (all of them,
/// validation rows included: their texts, never their labels) with masked-language modelling,
/// into `<out>/<project>/adapted`, and returns the override that starts every config there.
fn adapt_encoder(args: &Args, project: &str) -> Result<String> {
    let config = RunConfig::load(&args.configs[0], &project_overrides(args, project))?;
    let dir = args.out.join(project.replace('/', "__")).join("adapted");
    let options = AdaptOptions {
        epochs: args.adapt_epochs,
        seed: config.train.seed,
        ..AdaptOptions::default()
    };
    let mut reporter = Lines(format!("{project} adapt"));
    // A run this example left unfinished (killed) continues where its last save stands.
    let run = AdaptRun {
        resume: dir.join(CHECKPOINT).is_dir(),
        ..AdaptRun::new(args.device, &dir)
    };
    let report = match adapt(&config, &config.data.train, &options, &run, &mut reporter)? {
        AdaptOutcome::Finished(report) => report,
        AdaptOutcome::Stopped { checkpoint, .. } => {
            anyhow::bail!("adaptation stopped; {} holds it", checkpoint.display())
        }
    };
    eprintln!("[{project} adapt] {}", report.summary());
    Ok(format!("model.path=\"{}\"", dir.display()))
}

/// One config of one project, before training: the config with the `--set` overrides and the
/// project's filter, the project's rows, and the rows its members are scored on (the held-out
/// ones, or out of fold under `--folds` all of them, or with `data.nested_folds` those the folds
/// are dealt from): what configs of one ensemble must share.
struct Plan {
    path: PathBuf,
    config: RunConfig,
    rows: Vec<Example>,
    scored: Vec<Example>,
    /// Under `--folds`, the indices into `rows` of each fold's rows (member k validates on
    /// fold k), and of the scored rows: all the folds' rows, sorted.
    folds: Vec<Vec<usize>>,
    covered: Vec<usize>,
}

impl Plan {
    fn new(args: &Args, project: &str, path: &Path, extra: &[String]) -> Result<Self> {
        let mut overrides = project_overrides(args, project);
        overrides.extend_from_slice(extra);
        let config = RunConfig::load(path, &overrides)?;
        let rows = wick_data::read_examples(&config.data.train, &config.data)?.examples;
        let (scored, folds, covered) = match args.folds {
            Some(count) => {
                // The rows the trainer holds out for each member, by the same function: every
                // row in some fold, or under data.nested_folds those the folds are dealt from.
                let folds = (0..count)
                    .map(|fold| {
                        let mut member = config.clone();
                        member.data.split_seed = Some(config.split_seed());
                        (member.data.folds, member.data.fold) = (count, fold);
                        wick_trainer::fit::held_out(&member, &rows)
                            .map(|(_, valid)| valid)
                            .context("no fold")
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut covered: Vec<usize> = folds.concat();
                covered.sort_unstable();
                let scored = covered.iter().map(|&i| rows[i].clone()).collect();
                (scored, folds, covered)
            }
            None => (validation_rows(&config, &rows)?, Vec::new(), Vec::new()),
        };
        Ok(Self {
            path: path.to_path_buf(),
            config,
            rows,
            scored,
            folds,
            covered,
        })
    }

    /// Whether `other` scores the same rows with the same labels.
    fn agrees_with(&self, other: &Plan) -> bool {
        let lines = |p: &Plan| p.scored.iter().map(|e| e.line).collect::<Vec<_>>();
        lines(self) == lines(other) && self.config.data.labels == other.config.data.labels
    }
}

/// One config's members of one project: its plan, the estimate of the scored rows (the
/// members' mean, or out of fold under `--folds`), each member's own macro-F1, and the
/// checkpoints to score a test file with.
struct ConfigRun {
    plan: Plan,
    predictions: eval::Predictions,
    member_f1: Vec<f64>,
    bests: Vec<PathBuf>,
    refits: Vec<PathBuf>,
}

/// Trains and scores the members of `plan`.
fn run_config(args: &Args, project: &str, plan: Plan) -> Result<ConfigRun> {
    let slug = project.replace('/', "__");
    let base = &plan.config;
    let split_seed = base.split_seed();
    let rows = &plan.rows;
    let several = args.configs.len() > 1;
    let tag = config_name(&plan.path);
    let mut member_probs = Vec::new();
    let mut member_f1 = Vec::new();
    let mut bests = Vec::new();
    let mut refits = Vec::new();
    for k in 0..args.ensemble {
        let mut config = base.clone();
        config.train.seed = base.train.seed + k as u64;
        config.data.split_seed = Some(split_seed);
        if let Some(folds) = args.folds {
            config.data.folds = folds;
            config.data.fold = k;
        }
        let seed = config.train.seed;
        let (out_dir, name) = match (args.ensemble, several) {
            (1, false) => (args.out.join(&slug), project.to_string()),
            (1, true) => (args.out.join(&slug).join(&tag), format!("{project} {tag}")),
            (_, false) => (
                args.out.join(&slug).join(format!("seed-{seed}")),
                format!("{project} seed {seed}"),
            ),
            (_, true) => (
                args.out.join(&slug).join(format!("{tag}-seed-{seed}")),
                format!("{project} {tag} seed {seed}"),
            ),
        };
        let options = RunOptions {
            device: args.device,
            out_dir: out_dir.clone(),
            resume: None,
            overwrite: true,
        };
        let mut reporter = Lines(name.clone());
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
        eprintln!("[{name}] validation macro-F1 {:.4}", report.macro_f1);
        member_f1.push(report.macro_f1);
        member_probs.push(predictions);
        if args.refit {
            refits.push(refit(args, &trainer, &best, &out_dir)?);
        }
        bests.push(best);
    }
    let predictions = if args.folds.is_some() {
        // Out of fold: each row's probabilities from the member that held it out.
        let mut probs = vec![Vec::new(); rows.len()];
        let mut logits = vec![Vec::new(); rows.len()];
        for (indices, member) in plan.folds.iter().zip(&member_probs) {
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
        let probs: Vec<Vec<f32>> = plan.covered.iter().map(|&i| probs[i].clone()).collect();
        let logits: Vec<Vec<f32>> = plan.covered.iter().map(|&i| logits[i].clone()).collect();
        let targets = wick_data::Targets::of(&plan.scored)?;
        let loss = Some(wick_trainer::calibration::mean_loss(&logits, &targets, 1.0));
        eval::Predictions {
            probs,
            logits,
            loss,
        }
    } else {
        let targets = wick_data::Targets::of(&plan.scored)?;
        eval::average(&member_probs, &targets, base.data.multi_label)?
    };
    Ok(ConfigRun {
        plan,
        predictions,
        member_f1,
        bests,
        refits,
    })
}

/// One project's members trained and scored: the ensemble's validation (and test) reports, each
/// config's own validation report (several configs only) and each member's validation macro-F1.
fn run_project(args: &Args, project: &str) -> Result<ProjectRun> {
    let slug = project.replace('/', "__");
    let extra = match args.adapt_epochs {
        0 => Vec::new(),
        _ => vec![adapt_encoder(args, project)?],
    };
    // Before any training: every config must score the same rows with the same labels.
    let plans = args
        .configs
        .iter()
        .map(|path| Plan::new(args, project, path, &extra))
        .collect::<Result<Vec<_>>>()?;
    if let Some(other) = plans[1..].iter().find(|p| !p.agrees_with(&plans[0])) {
        bail!(
            "{project}: {} validates on other rows or labels than {}: configs of one ensemble \
             must share data.train, data.filter, the split (data.split_seed, \
             data.valid_fraction or data.folds) and data.labels",
            other.path.display(),
            plans[0].path.display()
        );
    }
    let runs = plans
        .into_iter()
        .map(|plan| run_config(args, project, plan))
        .collect::<Result<Vec<_>>>()?;
    let first = &runs[0].plan;
    let data = &first.config.data;
    let targets = wick_data::Targets::of(&first.scored)?;
    // The configs weigh equally (as their members do: each config trains as many).
    let per_config: Vec<eval::Predictions> = runs.iter().map(|r| r.predictions.clone()).collect();
    let mean = eval::average(&per_config, &targets, data.multi_label)?;
    let project_dir = args.out.join(&slug);
    write_predictions(
        &project_dir.join("valid_predictions.jsonl"),
        &data.labels,
        &data.label_field,
        &first.scored,
        &mean.probs,
    )?;
    // Under --match-priors, the label frequencies of the rows the members trained on.
    let priors = if args.match_priors {
        let scored: std::collections::HashSet<usize> =
            first.scored.iter().map(|e| e.line).collect();
        let trained: Vec<Example> = match args.folds {
            // Each row trained all members but one: the project's rows stand for them.
            Some(_) => first.rows.clone(),
            None => first
                .rows
                .iter()
                .filter(|e| !scored.contains(&e.line))
                .cloned()
                .collect(),
        };
        let source = format!(
            "label frequencies of {project}'s {} training rows",
            trained.len()
        );
        Some(Priors::of_rows(&data.labels, &trained, &source)?)
    } else {
        None
    };
    let priors = priors.as_ref();
    let mut scored = vec![score(
        project,
        "valid",
        &data.labels,
        &targets,
        &mean,
        priors,
    )?];
    let mut config_f1 = Vec::new();
    if runs.len() > 1 {
        for run in &runs {
            config_f1.push(eval::report(&data.labels, &targets, &run.predictions)?.macro_f1);
        }
    }
    if let Some(test) = &args.test {
        let bests: Vec<PathBuf> = runs.iter().flat_map(|r| r.bests.clone()).collect();
        let file = project_dir.join("test_predictions.jsonl");
        scored.push(score_test(
            project, "test", &bests, args, test, &file, priors,
        )?);
        if args.refit {
            let refits: Vec<PathBuf> = runs.iter().flat_map(|r| r.refits.clone()).collect();
            let file = project_dir.join("refit_predictions.jsonl");
            scored.push(score_test(
                project, "refit", &refits, args, test, &file, priors,
            )?);
        }
    }
    Ok(ProjectRun {
        scored,
        member_f1: runs.into_iter().flat_map(|r| r.member_f1).collect(),
        config_f1,
    })
}

/// Writes rows' line, label and probabilities, one JSON object per line:
/// `{"line", "label", "probs": {label: p}}`.
/// The label is the row's own `label_field` value.
fn write_predictions(
    path: &Path,
    labels: &[String],
    label_field: &str,
    rows: &[Example],
    probs: &[Vec<f32>],
) -> Result<()> {
    let mut lines = String::new();
    for (example, probs) in rows.iter().zip(probs) {
        let row = json!({
            "line": example.line,
            "label": example.fields.get(label_field),
            "probs": eval::label_probs(labels, probs),
        });
        lines.push_str(&format!("{row}\n"));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))
}

/// The report of one project's split: of `predictions`, or with `priors` of the predictions
/// matched to them, the unmatched macro-F1 kept beside it.
fn score(
    project: &str,
    split: &'static str,
    labels: &[String],
    targets: &wick_data::Targets,
    predictions: &eval::Predictions,
    priors: Option<&Priors>,
) -> Result<Scored> {
    let plain = eval::report(labels, targets, predictions)?;
    let Some(priors) = priors else {
        return Ok((project.to_string(), split, plain, None));
    };
    let matched = priors::match_priors(predictions, priors, targets)?;
    let rows = predictions.probs.len();
    eprintln!(
        "[{project} {split}] {}",
        priors::describe(labels, priors, &matched, rows)
    );
    let report = eval::report(labels, targets, &matched.predictions)?;
    eprintln!(
        "[{project} {split}] macro-F1 {:.4} with the priors matched, {:.4} without",
        report.macro_f1, plain.macro_f1
    );
    Ok((project.to_string(), split, report, Some(plain.macro_f1)))
}

/// Scores the checkpoints' mean probabilities on the test file's rows of their project (see
/// [`score`]) and writes those rows' line, label and probabilities to `predictions`. When the
/// members are calibrated, the report of their uncalibrated probabilities goes beside it
/// (`test_predictions.uncalibrated.json`).
fn score_test(
    project: &str,
    split: &'static str,
    checkpoints: &[PathBuf],
    args: &Args,
    test: &Path,
    predictions: &Path,
    priors: Option<&Priors>,
) -> Result<Scored> {
    let ensemble = Ensemble::open(checkpoints, args.device)?;
    let (examples, targets, predicted) = ensemble.predict_file(test)?;
    let labels = ensemble.labels();
    let scored = score(project, split, labels, &targets, &predicted, priors)?;
    let report = &scored.2;
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
    write_predictions(
        predictions,
        labels,
        label_field,
        &examples,
        &predicted.probs,
    )?;
    Ok(scored)
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

/// A report of one project on one split, and under `--match-priors` the macro-F1 of the
/// ensemble's own (unmatched) probabilities.
type Scored = (String, &'static str, ClassificationReport, Option<f64>);

/// One project's reports, its members' validation macro-F1 (config by config) and, with several
/// configs, each config's own ensemble's validation macro-F1.
struct ProjectRun {
    scored: Vec<Scored>,
    member_f1: Vec<f64>,
    config_f1: Vec<f64>,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut results: Vec<Scored> = Vec::new();
    let mut members: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut configs: Vec<(&str, Vec<f64>)> = Vec::new();
    for &project in &args.projects {
        let run = run_project(&args, project)?;
        results.extend(run.scored);
        members.push((project, run.member_f1));
        configs.push((project, run.config_f1));
    }
    let splits: Vec<&str> = match (&args.test, args.refit) {
        (None, _) => vec!["valid"],
        (Some(_), false) => vec!["valid", "test"],
        (Some(_), true) => vec!["valid", "test", "refit"],
    };
    let mut summary = serde_json::Map::new();
    let mut unmatched = serde_json::Map::new();
    println!(
        "{:<22} {:<5} {:<9} {:<7} {:<7} {:<7}",
        "project", "split", "class", "P", "R", "F1"
    );
    for (project, split, report, _) in &results {
        for row in rows(project, split, report) {
            println!("{row}");
        }
    }
    let what = match args.projects.len() {
        n if n == PROJECTS.len() => "protocol score (mean of project macro-F1)".to_string(),
        1 => format!(
            "macro-F1 of {} alone, not the protocol score",
            args.projects[0]
        ),
        n => format!("mean macro-F1 of the {n} projects run, not the protocol score"),
    };
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
            "{:<22} {split:<5} {:<9} {:>22.4}   <- {what}",
            "overall", "macro-F1", overall
        );
        summary.insert(split.to_string(), json!({
            "overall_f1": overall,
            "projects": results.iter().filter(|r| r.1 == split).map(|r| (r.0.clone(), r.2.to_json())).collect::<serde_json::Map<_, _>>(),
        }));
        if args.match_priors {
            let plain: Vec<(&String, f64)> = results
                .iter()
                .filter(|r| r.1 == split)
                .filter_map(|r| Some((&r.0, r.3?)))
                .collect();
            let overall = plain.iter().map(|p| p.1).sum::<f64>() / n;
            println!(
                "{:<22} {split:<5} {:<9} {overall:>22.4}   <- without matching the label priors",
                "overall", "macro-F1"
            );
            unmatched.insert(split.to_string(), json!({
                "overall_f1": overall,
                "projects": plain.iter().map(|(p, f1)| (p.to_string(), json!(f1))).collect::<serde_json::Map<_, _>>(),
            }));
        }
    }
    // What one member scores alone, averaged over the members: the ensemble's gain is the
    // difference to the validation protocol score above.
    let member_overall = members
        .iter()
        .map(|(_, f1)| f1.iter().sum::<f64>() / f1.len() as f64)
        .sum::<f64>()
        / members.len() as f64;
    let member_count = args.ensemble * args.configs.len();
    if member_count > 1 {
        println!(
            "{:<22} valid {:<9} {member_overall:>22.4}   <- one member alone (mean over {member_count} members)",
            "overall", "macro-F1"
        );
    }
    // With several configs, what each one's members score together without the others.
    let mut config_overall = serde_json::Map::new();
    if args.configs.len() > 1 {
        for (c, path) in args.configs.iter().enumerate() {
            let overall = configs.iter().map(|(_, f1)| f1[c]).sum::<f64>() / configs.len() as f64;
            println!(
                "{:<22} valid {:<9} {overall:>22.4}   <- {} alone ({} members)",
                "overall",
                "macro-F1",
                path.display(),
                args.ensemble
            );
            config_overall.insert(
                path.display().to_string(),
                json!({
                    "overall_f1": overall,
                    "projects": configs.iter().map(|(p, f1)| (p.to_string(), json!(f1[c]))).collect::<serde_json::Map<_, _>>(),
                }),
            );
        }
    }
    summary.insert(
        "configs".into(),
        json!(args
            .configs
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()),
    );
    if !config_overall.is_empty() {
        summary.insert("config_valid".into(), config_overall.into());
    }
    summary.insert("ensemble".into(), json!(args.ensemble));
    summary.insert("projects".into(), json!(args.projects));
    if args.match_priors {
        summary.insert("unmatched".into(), unmatched.into());
    }
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
