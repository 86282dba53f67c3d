//! `sweep`: a grid search over config keys, each combination trained with one or more seeds and
//! ranked by its best validation metric (the config's `eval.metric`).
//!
//! Every trial is a whole run in `<out>/<trial>/` (checkpoints, `metrics.jsonl`, `plot.svg`) plus
//! `trial.json` once it has finished. Run again with the same settings, a sweep reuses finished
//! trials, continues an unfinished one from its `last/` checkpoint, and trains the rest, so an
//! interrupted sweep continues where it stopped; a trial whose resolved config changed (another
//! `--set`, an edited config file) is trained again. Ctrl-C or SIGTERM stops the trial in progress
//! after its current step, saved in its `last/`, and ends the sweep (exit code 130).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wick_trainer::checkpoint::{OPTIMIZER, RUN_CONFIG};
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::fit::{LogRecord, Reporter, RunOptions, Trainer};
use wick_trainer::metrics::ClassificationReport;

/// Grid search: train every combination of the given values, rank by validation metric.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The base run config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// A key and the values to try: `--grid train.lr=2e-5,5e-5,1e-4` (repeatable; every
    /// combination is trained; values are TOML-typed, commas inside [] or quotes do not split).
    #[arg(long = "grid", value_name = "KEY=V1,V2,...", required = true)]
    grid: Vec<String>,
    /// Seeds for `train.seed` (comma-separated); each combination is trained once per seed and
    /// scored by the mean. The validation split follows `train.seed` unless `data.split_seed`
    /// is set. Default: the config's seed.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// K-fold cross-validation: every combination and seed is trained K times, with fold
    /// 0..K-1 of `data.train` held out for validation (`data.folds`, `data.fold`), and scored
    /// by the mean over all of them. For small datasets, where one validation split is noise.
    #[arg(long, value_name = "K")]
    folds: Option<usize>,
    /// Override a key of every trial: `--set train.epochs=3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// auto (Metal, else CUDA, else CPU), metal, cuda or cpu.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// Sweep directory (default: runs/sweep-<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the result as one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// No per-step log lines (evaluations and trial results are still printed).
    #[arg(long)]
    quiet: bool,
}

/// One grid key and its values.
#[derive(Debug, Clone)]
struct Axis {
    key: String,
    values: Vec<String>,
}

/// Splits `KEY=V1,V2,...` at the commas that are outside brackets, braces and quotes.
fn parse_axis(spec: &str) -> Result<Axis> {
    let (key, values) = spec
        .split_once('=')
        .with_context(|| format!("--grid `{spec}`: expected KEY=V1,V2,..."))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("--grid `{spec}`: empty key");
    }
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for c in values.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    let values: Vec<String> = parts.iter().map(|v| v.trim().to_string()).collect();
    if let Some(empty) = values.iter().position(String::is_empty) {
        bail!("--grid {key}: value {} is empty", empty + 1);
    }
    Ok(Axis {
        key: key.to_string(),
        values,
    })
}

/// Every combination of the axes' values, the first axis varying slowest.
fn combinations(axes: &[Axis]) -> Vec<Vec<(String, String)>> {
    axes.iter().fold(vec![Vec::new()], |acc, axis| {
        acc.into_iter()
            .flat_map(|prefix| {
                axis.values.iter().map(move |value| {
                    let mut next = prefix.clone();
                    next.push((axis.key.clone(), value.clone()));
                    next
                })
            })
            .collect()
    })
}

/// A directory name for a trial: the keys' last segments (whole keys where two axes share one)
/// and values, with characters other than letters, digits and `.+-` replaced by `_`.
fn trial_name(combo: &[(String, String)], seed: u64, fold: Option<usize>) -> String {
    let short = |key: &str| key.rsplit('.').next().unwrap_or(key).to_string();
    let mut parts = Vec::new();
    for (key, value) in combo {
        let ambiguous = combo
            .iter()
            .filter(|(other, _)| short(other) == short(key))
            .count()
            > 1;
        let name = if ambiguous { key.clone() } else { short(key) };
        parts.push(format!("{name}={value}"));
    }
    parts.push(format!("seed={seed}"));
    if let Some(fold) = fold {
        parts.push(format!("fold={fold}"));
    }
    parts
        .join(",")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "=,.+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What `trial.json` holds for a finished trial.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrialResult {
    /// The grid's `key=value` pairs of this trial.
    grid: Vec<String>,
    seed: u64,
    /// The held-out fold under `--folds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fold: Option<usize>,
    metric: String,
    /// The best validation value of the metric and the step it was reached at.
    value: f64,
    best_step: u64,
    steps: usize,
    stopped_early: bool,
    /// Wall time of the call that finished the trial (from its resume point if it continued).
    seconds: f64,
    /// The resolved config, to tell a finished trial of these settings from one of others.
    config: String,
}

const TRIAL_FILE: &str = "trial.json";

/// The finished result in `dir`, if it was trained with exactly `config`.
fn finished(dir: &Path, config: &str) -> Option<TrialResult> {
    let text = std::fs::read_to_string(dir.join(TRIAL_FILE)).ok()?;
    let result: TrialResult = serde_json::from_str(&text).ok()?;
    (result.config == config).then_some(result)
}

/// The `last/` checkpoint of an unfinished trial in `dir` trained with exactly `config`, when it
/// can be continued (it holds the optimizer moments).
fn unfinished(dir: &Path, config: &str) -> Option<PathBuf> {
    let last = dir.join("last");
    let saved = std::fs::read_to_string(last.join(RUN_CONFIG)).ok()?;
    (saved == config && last.join(OPTIMIZER).is_file()).then_some(last)
}

/// Step and evaluation lines on stderr, each led by the trial's name.
struct Lines {
    name: String,
    quiet: bool,
}

impl Reporter for Lines {
    fn message(&mut self, text: &str) {
        eprintln!("[{}] {text}", self.name);
    }
    fn log(&mut self, r: &LogRecord) {
        if !self.quiet {
            eprintln!(
                "[{}] step {} loss {:.4} lr {:.2e} {:.1} ex/s",
                self.name, r.step, r.loss, r.lr, r.examples_per_s
            );
        }
    }
    fn evaluated(&mut self, step: usize, report: &ClassificationReport) {
        eprintln!(
            "[{}] eval step {step}: macro-F1 {:.4} accuracy {:.4}",
            self.name, report.macro_f1, report.accuracy
        );
    }
}

/// One planned trial.
struct Trial {
    combo: Vec<(String, String)>,
    seed: u64,
    fold: Option<usize>,
    name: String,
    config: RunConfig,
    resolved: String,
}

/// Resolves and validates every trial before any trains, so a bad key or value in the last
/// combination fails at once instead of hours in.
fn plan(args: &Args, axes: &[Axis], seeds: &[u64]) -> Result<Vec<Trial>> {
    let folds: Vec<Option<usize>> = match args.folds {
        Some(k) => (0..k).map(Some).collect(),
        None => vec![None],
    };
    let mut trials = Vec::new();
    for combo in combinations(axes) {
        for &seed in seeds {
            for &fold in &folds {
                let mut overrides = args.overrides.clone();
                overrides.extend(combo.iter().map(|(k, v)| format!("{k}={v}")));
                overrides.push(format!("train.seed={seed}"));
                if let (Some(k), Some(fold)) = (args.folds, fold) {
                    overrides.push(format!("data.folds={k}"));
                    overrides.push(format!("data.fold={fold}"));
                }
                let config = RunConfig::load(&args.config, &overrides)?;
                config.validate()?;
                let resolved = config.to_toml()?;
                trials.push(Trial {
                    name: trial_name(&combo, seed, fold),
                    combo: combo.clone(),
                    seed,
                    fold,
                    config,
                    resolved,
                });
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for trial in &trials {
        if !names.insert(trial.name.as_str()) {
            bail!(
                "two trials would share the directory `{}`: give grid values that differ in \
                 letters, digits or `.+-`, and distinct seeds",
                trial.name
            );
        }
    }
    for trial in &trials {
        let config = &trial.config;
        if !config.data.has_validation() {
            bail!(
                "{} (trial {}): a sweep ranks trials on validation data, but there is none: set \
                 `data.valid` or `data.valid_fraction`, or give --folds",
                args.config.display(),
                trial.name
            );
        }
        if !config.eval.every_epoch && config.eval.every_steps == 0 {
            bail!(
                "{} (trial {}): a sweep ranks trials by their evaluations, but none is \
                 scheduled: set `eval.every_epoch = true` or `eval.every_steps`",
                args.config.display(),
                trial.name
            );
        }
    }
    Ok(trials)
}

/// Trains `trial` in `dir` (or reuses its finished result, or continues its unfinished run) and
/// returns the result and whether it was reused; `None` when a stop was requested mid-trial.
fn run_trial(args: &Args, trial: &Trial, dir: &Path) -> Result<Option<(TrialResult, bool)>> {
    if let Some(result) = finished(dir, &trial.resolved) {
        return Ok(Some((result, true)));
    }
    let started = Instant::now();
    let options = RunOptions {
        device: args.device,
        out_dir: dir.to_path_buf(),
        resume: unfinished(dir, &trial.resolved),
        // The directory is the sweep's own: an outdated trial there starts over.
        overwrite: true,
    };
    let mut reporter = Lines {
        name: trial.name.clone(),
        quiet: args.quiet,
    };
    // trial.json goes first, so an interrupted retrain cannot leave a stale result behind.
    let trial_file = dir.join(TRIAL_FILE);
    if trial_file.exists() {
        std::fs::remove_file(&trial_file)
            .with_context(|| format!("removing {}", trial_file.display()))?;
    }
    let mut trainer = Trainer::new(trial.config.clone(), &options, &mut reporter)?;
    wick_trainer::cli::stop_on_signal(trainer.stop_flag())
        .context("installing the Ctrl-C handler")?;
    let outcome = trainer.fit(&mut reporter)?;
    if outcome.interrupted {
        return Ok(None);
    }
    let (value, best_step) = outcome
        .best
        .with_context(|| format!("trial {}: no evaluation was made", trial.name))?;
    let result = TrialResult {
        grid: trial
            .combo
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        seed: trial.seed,
        fold: trial.fold,
        metric: trial.config.eval.metric.clone(),
        value,
        best_step,
        steps: outcome.steps,
        stopped_early: outcome.stopped_early,
        seconds: started.elapsed().as_secs_f64(),
        config: trial.resolved.clone(),
    };
    let staged = dir.join(format!(".{TRIAL_FILE}.tmp"));
    std::fs::write(&staged, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", staged.display()))?;
    std::fs::rename(&staged, &trial_file)
        .with_context(|| format!("writing {}", trial_file.display()))?;
    Ok(Some((result, false)))
}

/// A combination's results over its seeds.
struct Row {
    grid: Vec<String>,
    values: Vec<f64>,
    mean: f64,
    /// Sample standard deviation over the runs: seeds, and folds under `--folds` (None with one).
    sd: Option<f64>,
    seconds: f64,
}

fn summarize(results: &[TrialResult], higher_is_better: bool) -> Vec<Row> {
    // One row per combination, in the order the combinations first appear.
    let mut rows: Vec<Row> = Vec::new();
    for r in results {
        let at = match rows.iter().position(|row| row.grid == r.grid) {
            Some(at) => at,
            None => {
                rows.push(Row {
                    grid: r.grid.clone(),
                    values: Vec::new(),
                    mean: 0.0,
                    sd: None,
                    seconds: 0.0,
                });
                rows.len() - 1
            }
        };
        rows[at].values.push(r.value);
        rows[at].seconds += r.seconds;
    }
    for row in &mut rows {
        let n = row.values.len() as f64;
        row.mean = row.values.iter().sum::<f64>() / n;
        if row.values.len() > 1 {
            let var = row
                .values
                .iter()
                .map(|v| (v - row.mean).powi(2))
                .sum::<f64>()
                / (n - 1.0);
            row.sd = Some(var.sqrt());
        }
    }
    // Best first; a stable sort keeps grid order among ties.
    rows.sort_by(|a, b| {
        let order = a.mean.total_cmp(&b.mean);
        if higher_is_better {
            order.reverse()
        } else {
            order
        }
    });
    rows
}

fn run(args: Args) -> Result<ExitCode> {
    let axes: Vec<Axis> = args
        .grid
        .iter()
        .map(|spec| parse_axis(spec))
        .collect::<Result<_>>()?;
    for (i, axis) in axes.iter().enumerate() {
        if axes[..i].iter().any(|other| other.key == axis.key) {
            bail!("--grid {}: the key is given twice", axis.key);
        }
        if axis.key == "train.seed" {
            bail!("--grid train.seed: give seeds with --seeds");
        }
        if args.folds.is_some() && (axis.key == "data.folds" || axis.key == "data.fold") {
            bail!("--grid {}: --folds sets it for every trial", axis.key);
        }
    }
    if let Some(k) = args.folds {
        if k < 2 {
            bail!("--folds {k}: cross-validation needs at least 2 folds");
        }
        if let Some(o) = args
            .overrides
            .iter()
            .find(|o| o.starts_with("data.folds=") || o.starts_with("data.fold="))
        {
            bail!("--set {o}: --folds sets data.folds and data.fold for every trial");
        }
    }
    let base = RunConfig::load(&args.config, &args.overrides)?;
    let seeds = if args.seeds.is_empty() {
        vec![base.train.seed]
    } else {
        args.seeds.clone()
    };
    let trials = plan(&args, &axes, &seeds)?;
    let metric = base.eval.metric.clone();
    let higher = ClassificationReport::higher_is_better(&metric);
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        PathBuf::from("runs").join(format!("sweep-{stem}"))
    });
    let runs_per_combination = seeds.len() * args.folds.unwrap_or(1);
    eprintln!(
        "sweep: {} combinations x {} seeds{} = {} trials in {}, ranked by validation {metric}",
        trials.len() / runs_per_combination,
        seeds.len(),
        args.folds
            .map_or(String::new(), |k| format!(" x {k} folds")),
        trials.len(),
        out.display()
    );

    let mut results = Vec::new();
    let mut reused = 0;
    for (i, trial) in trials.iter().enumerate() {
        let dir = out.join(&trial.name);
        let Some((result, was_reused)) = run_trial(&args, trial, &dir)
            .with_context(|| format!("trial {} ({})", i + 1, trial.name))?
        else {
            eprintln!(
                "sweep stopped in trial {}/{} ({}), saved in {}: run the same command again to \
                 continue from there ({} trials finished)",
                i + 1,
                trials.len(),
                trial.name,
                dir.join("last").display(),
                results.len()
            );
            return Ok(ExitCode::from(wick_trainer::cli::INTERRUPTED));
        };
        eprintln!(
            "[{}] trial {}/{}: best {metric} {:.4} at step {}{}",
            trial.name,
            i + 1,
            trials.len(),
            result.value,
            result.best_step,
            if was_reused {
                " (finished earlier, reused)"
            } else {
                ""
            }
        );
        reused += usize::from(was_reused);
        results.push(result);
    }

    let rows = summarize(&results, higher);
    let summary = json!({
        "config": args.config,
        "metric": metric,
        "higher_is_better": higher,
        "seeds": seeds,
        "folds": args.folds,
        "reused_trials": reused,
        "ranking": rows.iter().map(|row| json!({
            "grid": row.grid,
            "mean": row.mean,
            "sd": row.sd,
            "values": row.values,
            "seconds": row.seconds,
        })).collect::<Vec<_>>(),
        "trials": results.iter().map(|r| json!({
            "grid": r.grid, "seed": r.seed, "fold": r.fold, "value": r.value, "best_step": r.best_step,
            "steps": r.steps, "stopped_early": r.stopped_early, "seconds": r.seconds,
        })).collect::<Vec<_>>(),
    });
    let summary_path = out.join("sweep.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", summary_path.display()))?;
    if args.json {
        println!("{summary}");
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows
        .iter()
        .map(|r| r.grid.join(" ").len())
        .max()
        .unwrap_or(0)
        .max(4);
    let seed_list = seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let runs = match args.folds {
        Some(k) => format!(
            "per seed and fold (seeds {seed_list}; folds 0-{} each)",
            k - 1
        ),
        None => format!("per seed ({seed_list})"),
    };
    println!("{:<width$}  {:>8}  {:>8}  {runs}", "grid", metric, "sd");
    for row in &rows {
        println!(
            "{:<width$}  {:>8.4}  {:>8}  {}",
            row.grid.join(" "),
            row.mean,
            row.sd.map_or("-".to_string(), |sd| format!("{sd:.4}")),
            row.values
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if let Some(best) = rows.first() {
        println!(
            "\nbest: {} ({metric} {:.4}); train it with: {}",
            best.grid.join(" "),
            best.mean,
            best.grid
                .iter()
                .map(|set| format!("--set {}", shell_word(set)))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "{} trials ({reused} reused) in {}; summary in {}",
        results.len(),
        out.display(),
        summary_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}

/// `word` as a shell reads it back: as it is when it holds only characters no shell treats
/// specially, else in single quotes (a `'` written `'\''`).
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-+=/:,@%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_flags_survive_the_shell() {
        assert_eq!(shell_word("train.lr=2e-5"), "train.lr=2e-5");
        assert_eq!(
            shell_word(r#"data.text_fields=["title"]"#),
            r#"'data.text_fields=["title"]'"#
        );
        assert_eq!(shell_word("a='x'"), r"'a='\''x'\'''");
    }

    #[test]
    fn grid_values_split_outside_brackets_and_quotes() {
        let axis = parse_axis(r#"data.text_fields=["title","body"],["title"]"#).unwrap();
        assert_eq!(axis.key, "data.text_fields");
        assert_eq!(axis.values, [r#"["title","body"]"#, r#"["title"]"#]);
        let axis = parse_axis(r#"data.text_separator=" , ","\n""#).unwrap();
        assert_eq!(axis.values, [r#"" , ""#, r#""\n""#]);
        assert!(parse_axis("train.lr").is_err());
        assert!(parse_axis("train.lr=1e-4,,2e-4").is_err());
        // An inline table per value moves several keys together (they merge into [data]).
        let axis = parse_axis(
            r#"data={text_fields=["title","body"],pair_fields=[]},{text_fields=["title"],pair_fields=["body"]}"#,
        )
        .unwrap();
        assert_eq!(
            axis.values,
            [
                r#"{text_fields=["title","body"],pair_fields=[]}"#,
                r#"{text_fields=["title"],pair_fields=["body"]}"#
            ]
        );
    }

    #[test]
    fn combinations_vary_the_last_axis_fastest() {
        let axes = [
            parse_axis("train.lr=1,2").unwrap(),
            parse_axis("train.epochs=3,4,5").unwrap(),
        ];
        let combos = combinations(&axes);
        assert_eq!(combos.len(), 6);
        assert_eq!(
            combos[1],
            [
                ("train.lr".to_string(), "1".to_string()),
                ("train.epochs".to_string(), "4".to_string())
            ]
        );
    }

    #[test]
    fn trial_names_are_short_unless_ambiguous() {
        let combo = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            trial_name(
                &combo(&[("train.lr", "2e-5"), ("data.max_len", "128")]),
                7,
                None
            ),
            "lr=2e-5,max_len=128,seed=7"
        );
        assert_eq!(
            trial_name(&combo(&[("a.x", "1"), ("b.x", "\"s/t\"")]), 1, Some(3)),
            "a.x=1,b.x=_s_t_,seed=1,fold=3"
        );
    }

    #[test]
    fn summary_ranks_by_mean_in_the_metrics_direction() {
        let result = |grid: &str, value: f64| TrialResult {
            grid: vec![grid.to_string()],
            seed: 0,
            fold: None,
            metric: String::new(),
            value,
            best_step: 1,
            steps: 1,
            stopped_early: false,
            seconds: 1.0,
            config: String::new(),
        };
        let results = [
            result("a", 0.5),
            result("b", 0.9),
            result("a", 0.7),
            result("b", 0.5),
        ];
        let rows = summarize(&results, true);
        assert_eq!(rows[0].grid, ["b"]);
        assert!((rows[0].mean - 0.7).abs() < 1e-12);
        assert!((rows[0].sd.unwrap() - 0.08f64.sqrt()).abs() < 1e-12);
        assert_eq!(rows[1].values, [0.5, 0.7]);
        let rows = summarize(&results, false);
        assert_eq!(rows[0].grid, ["a"]);
    }
}
