//! The binaries end to end on the tiny config: training, evaluation, prediction, exact resume
//! after SIGKILL and after Ctrl-C, and clean errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::common::{
    argmax, assert_fails_naming, assert_loss_falls, assert_ok, command, load_tensors, macro_f1,
    max_gap, path_str, predicted_probs, repo_root, run_bin, run_with_stdin, same_last_files, text,
    tiny_without_valid, train_losses, train_tiny, values, TINY,
};

/// The tiny config's validation file.
const TINY_VALID: &str = "tests/fixtures/tiny/valid.jsonl";
const TINY_TRAIN: &str = "tests/fixtures/tiny/train.jsonl";

#[test]
fn tiny_config_trains_and_the_loss_falls() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = train_tiny(&run, &["train.epochs=15", "train.log_every=4"]);
    assert_ok(&output, "train");
    let losses = train_losses(&run);
    assert!(losses.len() >= 5, "too few loss records: {losses:?}");
    assert_loss_falls(&losses, 0.8, "tiny config");
    for file in [
        "best/model.safetensors",
        "last/model.safetensors",
        "last/optimizer.safetensors",
        "last/config.toml",
        "last/tokenizer.json",
        "config.toml",
        "plot.svg",
    ] {
        assert!(run.join(file).is_file(), "missing {file}");
    }
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("macro avg") && stdout.contains("needs_review"),
        "no report on stdout:\n{stdout}"
    );
}

#[test]
fn evaluate_json_has_the_documented_schema_and_predict_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &[]), "train");

    let output = run_bin(
        "evaluate",
        &["--checkpoint", path_str(&run.join("best")), "--json"],
    );
    assert_ok(&output, "evaluate");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    for key in [
        "labels",
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion",
        "loss",
        "examples",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    assert_eq!(json["examples"], 9);
    for label in ["needs_docs", "needs_test", "needs_review"] {
        let class = &json["per_class"][label];
        for key in ["precision", "recall", "f1", "support"] {
            assert!(class.get(key).is_some(), "per_class.{label} lacks {key}");
        }
    }

    // --errors: the mistakes, most confident first, each one a row of the file as it reads.
    let best = run.join("best");
    let checkpoint = path_str(&best);
    let output = run_bin(
        "evaluate",
        &["--checkpoint", checkpoint, "--json", "--errors", "3"],
    );
    assert_ok(&output, "evaluate --errors");
    let with_errors: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(with_errors["accuracy"], json["accuracy"]);
    let wrong = (9.0 * (1.0 - json["accuracy"].as_f64().unwrap())).round() as usize;
    assert!(
        wrong > 0,
        "the tiny model makes no mistake: nothing to list"
    );
    let errors = with_errors["errors"].as_array().unwrap();
    assert_eq!(errors.len(), wrong.min(3));
    let valid = std::fs::read_to_string(super::common::repo_root().join(TINY_VALID)).unwrap();
    let rows: Vec<serde_json::Value> = valid
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut previous = f64::INFINITY;
    for error in errors {
        let row = &rows[error["line"].as_u64().unwrap() as usize - 1];
        assert_eq!(error["label"], row["label"], "{error}");
        assert_eq!(error["text"], row["text"], "{error}");
        let predicted = error["predicted"].as_str().unwrap();
        assert_ne!(error["label"], predicted);
        let confidence = error["confidence"].as_f64().unwrap();
        assert_eq!(confidence, error["probs"][predicted].as_f64().unwrap());
        let top = error["probs"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_f64().unwrap());
        assert_eq!(
            top.fold(0.0, f64::max),
            confidence,
            "not the argmax: {error}"
        );
        assert!(confidence <= previous, "not most confident first");
        previous = confidence;
    }
    let output = run_bin("evaluate", &["--checkpoint", checkpoint, "--errors", "3"]);
    assert_ok(&output, "evaluate --errors (table)");
    let table = text(&output.stdout);
    assert!(
        table.contains(&format!(
            "most confident mistakes ({} of {wrong})",
            wrong.min(3)
        )),
        "{table}"
    );

    let texts = [
        "please add a regression test",
        "the README is wrong",
        "ptal",
    ];
    let mut args = vec!["--checkpoint", path_str(&run)];
    args.extend(texts);
    let first = run_bin("predict", &args);
    assert_ok(&first, "predict");
    let second = run_bin("predict", &args);
    assert_eq!(first.stdout, second.stdout, "predict is not deterministic");
    let lines: Vec<serde_json::Value> = text(&first.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len());
    for (line, input) in lines.iter().zip(texts) {
        assert_eq!(line["text"], input);
        let total: f64 = line["probs"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
        assert!(line["probs"].get(line["label"].as_str().unwrap()).is_some());
    }

    // JSONL on stdin, other fields passed through.
    let out = run_with_stdin(
        env!("CARGO_BIN_EXE_predict"),
        &["--checkpoint", path_str(&run)],
        b"{\"text\": \"ptal\", \"id\": 42}\n",
    );
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row["id"], 42);
    assert!(row.get("label").is_some());
}

/// `predict --data`: a file of the training schema (here CSV, a quoted multi-line text) is
/// labelled row by row with the probabilities the same texts get as arguments; other columns pass
/// through, and the file's own label is kept beside the prediction. A row without the text
/// field is refused naming the file and line.
#[test]
fn predict_labels_a_file_of_the_training_schema() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &[]), "train");
    let texts = ["please add a test\nfor the parser", "ptal"];
    let csv = dir.path().join("rows.csv");
    std::fs::write(
        &csv,
        format!(
            "id,text,label\n7,\"{}\",needs_test\n8,{},needs_review\n",
            texts[0], texts[1]
        ),
    )
    .unwrap();
    let from_file = run_bin(
        "predict",
        &["--checkpoint", path_str(&run), "--data", path_str(&csv)],
    );
    assert_ok(&from_file, "predict --data");
    let mut args = vec!["--checkpoint", path_str(&run)];
    args.extend(texts);
    let from_args = run_bin("predict", &args);
    assert_ok(&from_args, "predict");
    assert_eq!(predicted_probs(&from_file), predicted_probs(&from_args));
    let rows: Vec<serde_json::Value> = text(&from_file.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for (row, (id, label)) in rows
        .iter()
        .zip([("7", "needs_test"), ("8", "needs_review")])
    {
        assert_eq!(row["id"], id);
        assert_eq!(row["input_label"], label);
        assert!(row["probs"].get(row["label"].as_str().unwrap()).is_some());
    }

    let jsonl = dir.path().join("rows.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{\"title\": \"no text\"}\n").unwrap();
    let output = run_bin(
        "predict",
        &["--checkpoint", path_str(&run), "--data", path_str(&jsonl)],
    );
    assert_fails_naming(&output, &["rows.jsonl:2", "missing field `text`"]);
}

/// The tiny data as Hugging Face `datasets` writes it (`Dataset.to_parquet`, labels a
/// ClassLabel whose names are in another order than the config's): training on it logs the
/// same losses and evaluations as on the JSONL, and `evaluate` and `predict` read it as they
/// read the JSONL.
#[test]
fn a_run_on_parquet_files_equals_the_run_on_their_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, parquet) = (dir.path().join("jsonl"), dir.path().join("parquet"));
    let train_parquet = TINY_TRAIN.replace(".jsonl", ".parquet");
    let valid_parquet = TINY_VALID.replace(".jsonl", ".parquet");
    assert_ok(&train_tiny(&jsonl, &[]), "train on JSONL");
    assert_ok(
        &train_tiny(
            &parquet,
            &[
                &format!("data.train={train_parquet}"),
                &format!("data.valid={valid_parquet}"),
            ],
        ),
        "train on Parquet",
    );
    let records = |run: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            // Wall-clock fields differ between any two runs.
            .map(|mut r| {
                let fields = r.as_object_mut().unwrap();
                fields.retain(|k, _| !k.contains("time") && !k.contains("per_s"));
                r
            })
            .collect()
    };
    let logged = records(&parquet);
    assert!(logged.iter().any(|r| r["kind"] == "eval"), "{logged:?}");
    assert_eq!(logged, records(&jsonl));

    let best = path_str(&parquet.join("best")).to_owned();
    let evaluate = |data: &str| {
        let output = run_bin(
            "evaluate",
            &["--checkpoint", &best, "--data", data, "--json"],
        );
        assert_ok(&output, "evaluate");
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let scored = evaluate(&valid_parquet);
    assert_eq!(scored["examples"], 9);
    assert_eq!(scored, evaluate(TINY_VALID));
    let predict = |data: &str| {
        let output = run_bin("predict", &["--checkpoint", &best, "--data", data]);
        assert_ok(&output, "predict");
        text(&output.stdout)
    };
    let predicted = predict(&valid_parquet);
    assert_eq!(predicted, predict(TINY_VALID));
    // The ClassLabel ids come back as the names the JSONL holds.
    let first: serde_json::Value = serde_json::from_str(predicted.lines().next().unwrap()).unwrap();
    assert!(first["input_label"].as_str().unwrap().starts_with("needs_"));
}

#[test]
fn an_ensemble_predicts_the_mean_of_its_members_and_refuses_another_task() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert_ok(&train_tiny(&a, &["train.seed=1"]), "train a");
    assert_ok(&train_tiny(&b, &["train.seed=2"]), "train b");
    let texts = [
        "please add a regression test",
        "the README is wrong",
        "ptal",
    ];
    let predict = |checkpoints: &[&Path]| {
        let mut args = Vec::new();
        for c in checkpoints {
            args.extend(["--checkpoint", path_str(c)]);
        }
        args.extend(texts);
        let output = run_bin("predict", &args);
        assert_ok(&output, "predict");
        predicted_probs(&output)
    };
    let (pa, pb, both) = (predict(&[&a]), predict(&[&b]), predict(&[&a, &b]));
    assert_ne!(pa, pb, "two seeds gave the same model");
    for ((ra, rb), rm) in pa.iter().zip(&pb).zip(&both) {
        for ((x, y), m) in ra.iter().zip(rb).zip(rm) {
            assert!(
                (m - (x + y) / 2.0).abs() < 1e-6,
                "{m} is not the mean of {x} and {y}"
            );
        }
    }
    let output = run_bin(
        "evaluate",
        &[
            "--checkpoint",
            path_str(&a),
            "--checkpoint",
            path_str(&b),
            "--json",
        ],
    );
    assert_ok(&output, "evaluate ensemble");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["examples"], 9);
    assert!(json["loss"].as_f64().unwrap().is_finite());

    // A checkpoint of another label order is another task: refused, naming it and the key.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    for entry in std::fs::read_dir(b.join("best")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), other.join(entry.file_name())).unwrap();
    }
    for file in ["config.toml", "trainer_state.json"] {
        let path = other.join(file);
        let swapped = std::fs::read_to_string(&path)
            .unwrap()
            .replace("needs_docs", "SWAP")
            .replace("needs_test", "needs_docs")
            .replace("SWAP", "needs_test");
        std::fs::write(&path, swapped).unwrap();
    }
    let output = run_bin(
        "evaluate",
        &[
            "--checkpoint",
            path_str(&a),
            "--checkpoint",
            path_str(&other),
        ],
    );
    assert_fails_naming(&output, &["other", "data.labels"]);
}

/// A run that held a fraction of its training file out: `evaluate` with no `--data` finds those
/// rows again and scores the checkpoint as training did; once the file has changed it refuses,
/// and an ensemble whose members held out other rows is refused too.
#[test]
fn evaluate_finds_the_rows_a_run_held_out() {
    let dir = tempfile::tempdir().unwrap();
    let train_file = dir.path().join("train.jsonl");
    let rows = std::fs::read_to_string(super::common::repo_root().join(TINY_TRAIN)).unwrap();
    std::fs::write(&train_file, &rows).unwrap();
    let config = tiny_without_valid(dir.path(), "valid_fraction = 0.3");
    let train_at = format!("data.train=\"{}\"", path_str(&train_file));
    let run = dir.path().join("run");
    let train = |out: &Path, extra: &str| {
        let output = run_bin(
            "train",
            &[
                "--config",
                path_str(&config),
                "--out",
                path_str(out),
                "--quiet",
                "--set",
                &train_at,
                "--set",
                extra,
            ],
        );
        assert_ok(&output, "train");
    };
    train(&run, "train.seed=7");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("best/trainer_state.json")).unwrap(),
    )
    .unwrap();
    let output = run_bin("evaluate", &["--checkpoint", path_str(&run), "--json"]);
    assert_ok(&output, "evaluate");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in ["examples", "accuracy", "macro_f1", "confusion"] {
        assert_eq!(report[key], state["metrics"][key], "{key}");
    }
    // 30% of each label: 3 of 11, 3 of 10, 2 of 6.
    assert_eq!(report["examples"], 8);
    let output = run_bin("evaluate", &["--checkpoint", path_str(&run)]);
    assert!(
        text(&output.stdout).contains("held-out 30% of"),
        "{}",
        text(&output.stdout)
    );

    // Another seed holds other rows out: not one ensemble's validation.
    let other = dir.path().join("other");
    train(&other, "train.seed=8");
    let output = run_bin(
        "evaluate",
        &[
            "--checkpoint",
            path_str(&run),
            "--checkpoint",
            path_str(&other),
        ],
    );
    assert_fails_naming(&output, &["other", "held out other rows", "--data"]);

    // Three rows fewer: the split is not the run's any more.
    let fewer: Vec<&str> = rows.lines().skip(3).collect();
    std::fs::write(&train_file, fewer.join("\n")).unwrap();
    let output = run_bin("evaluate", &["--checkpoint", path_str(&run)]);
    assert_fails_naming(
        &output,
        &["train.jsonl", "changed since training", "--data"],
    );
}

/// The test file is scored after training, but read before it: one of another label set fails
/// at once, naming the key, the file and the line, and no run directory is made.
#[test]
fn a_test_file_that_cannot_be_scored_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("test.jsonl");
    std::fs::write(
        &test,
        "{\"text\": \"fine\", \"label\": \"needs_docs\"}\n{\"text\": \"x\", \"label\": \"bug\"}\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    let output = train_tiny(&run, &[&format!("data.test='{}'", path_str(&test))]);
    assert_fails_naming(
        &output,
        &[
            "data.test",
            "checked before training",
            &format!("{}:2: unknown label \"bug\"", test.display()),
        ],
    );
    assert!(!run.exists(), "a refused run made {}", run.display());
}

#[test]
fn valid_fraction_zero_trains_on_every_row_without_validation() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_without_valid(dir.path(), "valid_fraction = 0.0");
    let run = dir.path().join("run");
    let output = run_bin(
        "train",
        &[
            "--config",
            path_str(&path),
            "--out",
            path_str(&run),
            "--quiet",
        ],
    );
    assert_ok(&output, "train");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records.iter().all(|r| r["kind"] != "eval"),
        "an evaluation ran"
    );
    // 27 training texts in batches of 8: 4 steps an epoch, 3 epochs.
    let last_step = records.iter().filter_map(|r| r["step"].as_u64()).max();
    assert_eq!(last_step, Some(12));
    assert!(run.join("best/model.safetensors").is_file());
}

/// A slower shape of the tiny config, so a kill can land mid-run.
const SLOW: [&str; 6] = [
    "train.epochs=30",
    "train.checkpoint_every=5",
    "model.layers=3",
    "model.hidden_size=96",
    "model.intermediate_size=192",
    "train.keep_last=0",
];

fn step_of(run: &Path) -> Option<u64> {
    let state = std::fs::read_to_string(run.join("last/trainer_state.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&state).ok()?;
    json["state"]["step"].as_u64()
}

#[test]
#[allow(clippy::zombie_processes)] // every path kills and waits; a failed unwrap aborts the test anyway
fn resume_after_sigkill_ends_with_bitwise_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    assert_ok(&train_tiny(&straight, &SLOW), "uninterrupted train");
    let total = step_of(&straight).expect("uninterrupted run saved last/");

    let killed = dir.path().join("killed");
    let mut args = vec!["--config", TINY, "--out", path_str(&killed), "--quiet"];
    for set in SLOW {
        args.extend(["--set", set]);
    }
    let mut child = command(env!("CARGO_BIN_EXE_train"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed_at = loop {
        let step = step_of(&killed).filter(|&s| s >= 10);
        let late = Instant::now() > deadline;
        if step.is_some() || late {
            let running = child.try_wait().unwrap().is_none();
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            assert!(!late, "no checkpoint within 120 s");
            assert!(running, "run finished before it could be killed");
            break step.unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        killed_at < total,
        "killed at {killed_at} of {total}: nothing left to resume"
    );

    let output = run_bin("train", &["--resume", path_str(&killed), "--quiet"]);
    assert_ok(&output, "resumed train");
    assert_eq!(step_of(&killed), Some(total));
    same_last_files(&straight, &killed);
}

/// The tiny config one example per step (27 a epoch, 270 in all) with a checkpoint only at each
/// epoch's end, so a stop lands between checkpoints.
const STEPWISE: [&str; 7] = [
    "train.epochs=10",
    "train.batch_size=1",
    "train.checkpoint_every=0",
    "model.layers=3",
    "model.hidden_size=96",
    "model.intermediate_size=192",
    "train.keep_last=0",
];

/// The highest training step logged in `metrics` so far (a partly written line is skipped).
fn logged_step(metrics: &Path) -> u64 {
    std::fs::read_to_string(metrics)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "train")
        .filter_map(|r| r["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Runs `bin` with `args`, sends it SIGINT (Ctrl-C) once `metrics` logs step 10, and returns its
/// exit code, its stderr and the step it says it stopped at.
#[allow(clippy::zombie_processes)] // every path waits; a failed unwrap aborts the test anyway
fn interrupt(bin: &str, args: &[&str], metrics: &Path) -> (Option<i32>, String, u64) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = command(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.reopen().unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while logged_step(metrics) < 10 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{bin} ended before step 10"
        );
        assert!(Instant::now() < deadline, "{bin}: no step 10 within 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let code = child.wait().unwrap().code();
    let stderr = std::fs::read_to_string(log.path()).unwrap();
    let stopped_at = stderr
        .split("stopped on request at step ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stop reported by {bin}:\n{stderr}"));
    (code, stderr, stopped_at)
}

/// Ctrl-C saves the step in progress (with the optimizer moments) and exits with 130; `train
/// --resume` and a rerun of the same `sweep` both continue from that step and end with bitwise
/// the weights and moments of a run that was never stopped.
#[test]
fn ctrl_c_saves_the_step_in_progress_and_both_train_and_sweep_continue_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    assert_ok(&train_tiny(&straight, &STEPWISE), "uninterrupted train");
    let total = step_of(&straight).expect("uninterrupted run saved last/");
    assert_eq!(total, 270);

    let stopped = dir.path().join("stopped");
    let mut args = vec!["--config", TINY, "--out", path_str(&stopped), "--quiet"];
    for set in STEPWISE {
        args.extend(["--set", set]);
    }
    let (code, stderr, at) = interrupt(
        env!("CARGO_BIN_EXE_train"),
        &args,
        &stopped.join("metrics.jsonl"),
    );
    assert_eq!(code, Some(130), "{stderr}");
    assert!((10..total).contains(&at), "stopped at {at}");
    assert_eq!(
        step_of(&stopped),
        Some(at),
        "last/ does not hold the stop step"
    );
    assert!(
        stderr.contains(&format!("train --resume {}", stopped.display())),
        "{stderr}"
    );
    let output = run_bin("train", &["--resume", path_str(&stopped), "--quiet"]);
    assert_ok(&output, "resumed train");
    assert_eq!(step_of(&stopped), Some(total));
    same_last_files(&straight, &stopped);

    // A sweep of one trial with the same settings: train.lr and train.seed are tiny.toml's own.
    let out = dir.path().join("sweep");
    let mut args = vec![
        "--config",
        TINY,
        "--out",
        path_str(&out),
        "--quiet",
        "--json",
    ];
    args.extend(["--grid", "train.lr=1e-3", "--seeds", "7"]);
    for set in STEPWISE {
        args.extend(["--set", set]);
    }
    let trial = out.join("lr=1e-3,seed=7");
    let (code, stderr, at) = interrupt(
        env!("CARGO_BIN_EXE_sweep"),
        &args,
        &trial.join("metrics.jsonl"),
    );
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("sweep stopped in trial 1/1"), "{stderr}");
    assert_eq!(step_of(&trial), Some(at));
    assert!(
        !trial.join("trial.json").exists(),
        "an unfinished trial has a result"
    );
    let output = run_bin("sweep", &args);
    assert_ok(&output, "sweep run again");
    assert!(
        text(&output.stderr).contains(&format!("at step {at}")),
        "the trial did not continue from step {at}: {}",
        text(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&text(&output.stdout)).unwrap();
    assert_eq!(summary["trials"][0]["steps"], total);
    same_last_files(&straight, &trial);
}

/// A checkpoint keeps its `data.truncation`, and `predict` cuts long texts the way training did:
/// under "tail" a long text scores as its last tokens alone, under "head_tail" as its first and
/// last (every word here is one token of MiniLM's vocabulary).
#[test]
fn predict_truncates_long_texts_as_the_checkpoint_was_trained() {
    let dir = tempfile::tempdir().unwrap();
    let long = "one two three four five six seven eight nine ten eleven twelve";
    for (truncation, kept) in [
        ("\"head\"", "one two three four five six"),
        ("\"tail\"", "seven eight nine ten eleven twelve"),
        ("\"head_tail\"", "one two nine ten eleven twelve"),
    ] {
        let run = dir.path().join(truncation.trim_matches('"'));
        let set = format!("data.truncation={truncation}");
        let output = train_tiny(
            &run,
            &[
                &set,
                "data.head_tokens=2",
                "data.max_len=8",
                "train.epochs=1",
            ],
        );
        assert_ok(&output, "train");
        let config = std::fs::read_to_string(run.join("best/config.toml")).unwrap();
        assert!(
            config.contains(&format!("truncation = {truncation}")),
            "{config}"
        );
        let other = "seven one two three nine twelve";
        let output = run_bin(
            "predict",
            &["--checkpoint", path_str(&run), long, kept, other],
        );
        assert_ok(&output, "predict");
        let probs = predicted_probs(&output);
        assert!(
            max_gap(&probs[0], &probs[1]) < 1e-6,
            "{truncation}: the long text is not read as {kept:?}: {probs:?}"
        );
        assert!(
            max_gap(&probs[0], &probs[2]) > 1e-4,
            "{truncation}: the model cannot tell texts apart: {probs:?}"
        );
    }
}

/// `[data.clean]`: training says what it cut, the checkpoint keeps the options, and `predict`
/// cleans raw texts the same way (a hidden comment and the middle of a long code block change
/// nothing); an ensemble of a cleaned and an uncleaned checkpoint and an unknown option are
/// refused, naming the key.
#[test]
fn cleaned_checkpoints_clean_the_texts_they_predict() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("clean");
    // The tiny training file with a comment in its first text: cleaning gives the same texts
    // back, and train counts what it cut.
    let rows = std::fs::read_to_string(super::common::repo_root().join(TINY_TRAIN)).unwrap();
    let commented = rows.replacen("python 3.7", "python 3.7<!-- 0123456789 -->", 1);
    assert_ne!(commented, rows);
    let train_file = dir.path().join("train.jsonl");
    std::fs::write(&train_file, commented).unwrap();
    let set_train = format!("data.train={}", path_str(&train_file));
    let output = train_tiny(
        &run,
        &[
            &set_train,
            "data.clean.html_comments=true",
            "data.clean.code_lines=2",
            "train.epochs=2",
        ],
    );
    assert_ok(&output, "train");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cleaned    1 of 27 texts shortened"),
        "{stderr}"
    );
    let config = std::fs::read_to_string(run.join("best/config.toml")).unwrap();
    assert!(
        config.contains("[data.clean]") && config.contains("code_lines = 2"),
        "{config}"
    );

    let texts = [
        "please add a test <!-- the README is wrong -->",
        "please add a test ",
        "please add a test the README is wrong",
        "fix:\n```\nadd\na\nregression\ntest\n```",
        "fix:\n```\nadd\nthe\nREADME\ntest\n```",
        "fix:\n```\nadd\na\nregression\ntest\n```\n<!--",
        "fix:\n```\nREADME\na\nregression\ntest\n```",
    ];
    let mut args = vec!["--checkpoint", path_str(&run)];
    args.extend(texts);
    let output = run_bin("predict", &args);
    assert_ok(&output, "predict");
    let probs = predicted_probs(&output);
    assert!(
        max_gap(&probs[0], &probs[1]) < 1e-6,
        "comment read: {probs:?}"
    );
    assert!(
        max_gap(&probs[1], &probs[2]) > 1e-4,
        "the model cannot tell the texts apart: {probs:?}"
    );
    assert!(
        max_gap(&probs[3], &probs[4]) < 1e-6,
        "code block whole: {probs:?}"
    );
    assert!(
        max_gap(&probs[3], &probs[6]) > 1e-4,
        "the model cannot tell the code blocks apart: {probs:?}"
    );
    assert!(
        max_gap(&probs[3], &probs[5]) < 1e-6,
        "unclosed comment read: {probs:?}"
    );

    // An export lists the cleaning for its caller to apply, and says so.
    let exported = dir.path().join("export");
    let output = run_bin(
        "export",
        &["--checkpoint", path_str(&run), "--out", path_str(&exported)],
    );
    assert_ok(&output, "export");
    assert!(
        text(&output.stderr).contains("data.clean: html_comments, code_lines = 2"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(
        json_file(&exported.join("wick_export.json"))["clean"],
        serde_json::json!({"html_comments": true, "details": false, "code_lines": 2})
    );

    // Another way of turning rows into text is another task for an ensemble.
    let plain = dir.path().join("plain");
    assert_ok(&train_tiny(&plain, &["train.epochs=1"]), "train plain");
    let output = run_bin(
        "predict",
        &[
            "--checkpoint",
            path_str(&run),
            "--checkpoint",
            path_str(&plain),
            "x",
        ],
    );
    assert_fails_naming(
        &output,
        &[
            "plain",
            "data.clean is off but html_comments, code_lines = 2",
        ],
    );

    let output = train_tiny(&dir.path().join("bad"), &["data.clean.comments=true"]);
    assert_fails_naming(&output, &["comments", "html_comments", "code_lines"]);
}

/// `eval.calibrate`: every checkpoint written at an evaluation carries the temperature fitted on
/// that evaluation; `predict` divides the logits by it and `evaluate` scores the calibrated
/// probabilities: the same argmax, a loss no higher on the data it was fitted on. `predict
/// --min-prob` leaves the label out below the threshold.
#[test]
fn calibrated_checkpoints_temper_their_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &["eval.calibrate=true"]), "train");
    let best = run.join("best");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("trainer_state.json")).unwrap())
            .unwrap();
    let calibration = &state["calibration"];
    let temperature = calibration["temperature"].as_f64().unwrap();
    assert!(temperature > 0.0 && temperature != 1.0, "{calibration}");
    assert_eq!(calibration["step"], state["state"]["step"]);
    assert_eq!(calibration["examples"], 9);
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "eval")
        .collect();
    assert_eq!(evals.len(), 3, "one evaluation an epoch");
    let at_best = evals
        .iter()
        .find(|r| r["step"] == state["state"]["step"])
        .unwrap();
    assert_eq!(at_best["temperature"], calibration["temperature"]);
    assert!(evals.iter().all(|r| r["ece"].as_f64().is_some()));

    // The same checkpoint without its temperature: the raw probabilities.
    let raw = dir.path().join("raw");
    std::fs::create_dir(&raw).unwrap();
    for entry in std::fs::read_dir(&best).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), raw.join(entry.file_name())).unwrap();
    }
    let mut uncalibrated = state.clone();
    uncalibrated.as_object_mut().unwrap().remove("calibration");
    std::fs::write(raw.join("trainer_state.json"), uncalibrated.to_string()).unwrap();

    let texts = ["the README is wrong", "add a test for the parser", "ptal"];
    let predict = |checkpoint: &Path, extra: &[&str]| {
        let output = run_bin(
            "predict",
            &[&["--checkpoint", path_str(checkpoint)], extra, &texts[..]].concat(),
        );
        assert_ok(&output, "predict");
        output
    };
    let raw_probs = predicted_probs(&predict(&raw, &[]));
    let calibrated = predicted_probs(&predict(&best, &[]));
    for (p, q) in raw_probs.iter().zip(&calibrated) {
        // softmax(logits / T) from the raw probabilities: ln p is the logits plus a constant.
        let scaled: Vec<f64> = p.iter().map(|v| (v.ln() / temperature).exp()).collect();
        let sum: f64 = scaled.iter().sum();
        for (expected, got) in scaled.iter().map(|v| v / sum).zip(q) {
            assert!((expected - got).abs() < 1e-5, "{expected} vs {got}");
        }
    }

    let evaluate = |checkpoint: &Path| -> serde_json::Value {
        let output = run_bin(
            "evaluate",
            &["--checkpoint", path_str(checkpoint), "--json"],
        );
        assert_ok(&output, "evaluate");
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let (before, after) = (evaluate(&raw), evaluate(&best));
    assert_eq!(before["confusion"], after["confusion"]);
    assert_eq!(before["temperature"], serde_json::json!([null]));
    assert_eq!(after["temperature"][0], calibration["temperature"]);
    let loss = |r: &serde_json::Value| r["loss"].as_f64().unwrap();
    assert!(loss(&after) <= loss(&before) + 1e-6, "{after} vs {before}");
    assert!(
        (loss(&after) - calibration["loss_after"].as_f64().unwrap()).abs() < 1e-5,
        "{after} vs {calibration}"
    );
    let selective = after["selective"].as_array().unwrap();
    assert_eq!(selective[0]["threshold"], 0.5);
    let coverage: Vec<f64> = selective
        .iter()
        .map(|r| r["coverage"].as_f64().unwrap())
        .collect();
    assert!(coverage.windows(2).all(|w| w[0] >= w[1]), "{coverage:?}");

    // --min-prob: no label where the top probability is below it.
    let threshold = calibrated
        .iter()
        .map(|p| p.iter().copied().fold(0.0, f64::max))
        .sum::<f64>()
        / 3.0;
    let output = predict(&best, &["--min-prob", &threshold.to_string()]);
    let mut abstained = 0;
    for (line, p) in text(&output.stdout).lines().zip(&calibrated) {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let top = p.iter().copied().fold(0.0, f64::max);
        if top < threshold {
            assert!(row["label"].is_null(), "{row}");
            abstained += 1;
        } else {
            assert!(row["label"].is_string(), "{row}");
        }
    }
    assert!((1..3).contains(&abstained), "{threshold}: {abstained} of 3");
    let output = run_bin(
        "predict",
        &["--checkpoint", path_str(&best), "--min-prob", "1.5", "x"],
    );
    assert_fails_naming(&output, &["--min-prob", "between 0 and 1"]);

    // A temperature that is no number of the kind is named with its file.
    let mut broken = state.clone();
    broken["calibration"]["temperature"] = serde_json::json!(-1.0);
    std::fs::write(raw.join("trainer_state.json"), broken.to_string()).unwrap();
    let output = run_bin("evaluate", &["--checkpoint", path_str(&raw)]);
    assert_fails_naming(&output, &["trainer_state.json", "calibration.temperature"]);

    // Nothing to fit on: refused before training, naming the key.
    let config = tiny_without_valid(dir.path(), "valid_fraction = 0.0");
    let output = run_bin(
        "train",
        &[
            "--config",
            path_str(&config),
            "--out",
            path_str(&dir.path().join("none")),
            "--set",
            "eval.calibrate=true",
        ],
    );
    assert_fails_naming(&output, &["eval.calibrate", "validation"]);
}

/// `calibrate` fits an existing checkpoint's temperature: on the run's validation file it finds
/// the temperature training fitted there. `--remove` takes it out again without touching the
/// checkpoint that shares the directory's files (`last/` and `checkpoint-12/`, one step).
#[test]
fn calibrate_fits_the_temperature_training_would() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert_ok(
        &train_tiny(&run, &["eval.calibrate=true", "eval.patience=0"]),
        "train",
    );
    let state = |checkpoint: &str| -> serde_json::Value {
        let path = run.join(checkpoint).join("trainer_state.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let trained = state("best")["calibration"].clone();
    let shared = run.join("checkpoint-12/trainer_state.json");
    let before = std::fs::read_to_string(&shared).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        let links = std::fs::metadata(&shared).unwrap().nlink();
        assert!(links >= 2, "last/ and checkpoint-12/ do not share the file");
    }
    assert!(state("last").get("calibration").is_some());
    let output = run_bin(
        "calibrate",
        &["--checkpoint", path_str(&run.join("last")), "--remove"],
    );
    assert_ok(&output, "calibrate --remove");
    assert!(state("last").get("calibration").is_none());
    assert_eq!(
        std::fs::read_to_string(&shared).unwrap(),
        before,
        "checkpoint-12/ changed with last/"
    );

    let output = run_bin(
        "calibrate",
        &["--checkpoint", path_str(&run.join("best")), "--remove"],
    );
    assert_ok(&output, "calibrate --remove");
    assert!(state("best").get("calibration").is_none());

    let output = run_bin("calibrate", &["--checkpoint", path_str(&run), "--json"]);
    assert_ok(&output, "calibrate");
    let fit: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(fit["examples"], 9);
    assert!(fit["data"].as_str().unwrap().ends_with(TINY_VALID), "{fit}");
    let refitted = state("best")["calibration"].clone();
    assert_eq!(refitted["step"], trained["step"]);
    let (a, b) = (
        refitted["temperature"].as_f64().unwrap(),
        trained["temperature"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    assert_eq!(fit["temperature"].as_f64(), Some(a));

    let output = run_bin(
        "calibrate",
        &["--checkpoint", path_str(&run), "--data", "no/such.jsonl"],
    );
    assert_fails_naming(&output, &["no/such.jsonl"]);
}

/// `--match-priors`: `predict` returns, and `evaluate` scores, the probabilities moved so that
/// their mean over the rows equals the priors, by one factor per label; `train` (no value)
/// takes the label frequencies of the rows the run trained on; bad priors are named.
#[test]
fn matching_label_priors_moves_the_mean_prediction_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &[]), "train");
    let labels = ["needs_docs", "needs_test", "needs_review"];
    let truth: Vec<usize> = std::fs::read_to_string(repo_root().join(TINY_VALID))
        .unwrap()
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            labels.iter().position(|&x| x == row["label"]).unwrap()
        })
        .collect();
    let predict = |extra: &[&str]| {
        let args = [
            &["--checkpoint", path_str(&run), "--data", TINY_VALID],
            extra,
        ]
        .concat();
        let output = run_bin("predict", &args);
        assert_ok(&output, "predict");
        output
    };
    let column_means = |probs: &[Vec<f64>]| -> Vec<f64> {
        (0..3)
            .map(|c| probs.iter().map(|r| r[c]).sum::<f64>() / probs.len() as f64)
            .collect()
    };
    let plain = predicted_probs(&predict(&[]));
    let matched_output = predict(&["--match-priors=uniform"]);
    let matched = predicted_probs(&matched_output);
    let before = column_means(&plain);
    assert!(
        before.iter().any(|m| (m - 1.0 / 3.0).abs() > 0.01),
        "the tiny model already predicts a third of each label: {before:?}"
    );
    for m in column_means(&matched) {
        assert!((m - 1.0 / 3.0).abs() < 1e-5, "{m}");
    }
    // One factor per label: every row's ratio matched / plain of two labels is the same.
    let ratio = |row: usize, c: usize| {
        (matched[row][c] / plain[row][c]) / (matched[row][0] / plain[row][0])
    };
    for row in 1..plain.len() {
        for c in 1..3 {
            assert!(
                (ratio(row, c) / ratio(0, c) - 1.0).abs() < 1e-3,
                "row {row} label {c}"
            );
        }
    }
    let log = text(&matched_output.stderr);
    assert!(
        log.contains("label priors matched over 9 rows: priors (uniform) needs_docs 0.333")
            && log.contains("warning: 9 rows are few for matching (3 labels)"),
        "{log}"
    );

    // evaluate scores the matched probabilities, the plain score beside them.
    let evaluate = |extra: &[&str]| -> serde_json::Value {
        let args = [&["--checkpoint", path_str(&run), "--json"], extra].concat();
        let output = run_bin("evaluate", &args);
        assert_ok(&output, "evaluate");
        serde_json::from_str(&text(&output.stdout)).unwrap()
    };
    let scored = |probs: &[Vec<f64>]| {
        let pairs: Vec<(usize, usize)> = truth
            .iter()
            .zip(probs)
            .map(|(&t, p)| (t, argmax(p)))
            .collect();
        macro_f1(&pairs, 3)
    };
    let plain_report = evaluate(&[]);
    let report = evaluate(&["--match-priors=uniform"]);
    let f1 = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!((f1(&plain_report["macro_f1"]) - scored(&plain)).abs() < 1e-9);
    assert!((f1(&report["macro_f1"]) - scored(&matched)).abs() < 1e-9);
    assert_eq!(
        report["match_priors"]["unmatched_macro_f1"],
        plain_report["macro_f1"]
    );
    let offsets: f64 = labels
        .iter()
        .map(|l| f1(&report["match_priors"]["offsets"][l]))
        .sum();
    assert!(offsets.abs() < 1e-5, "{report}");

    // The run's own training rows: 11, 10 and 6 of 27.
    let report = evaluate(&["--match-priors"]);
    let priors = &report["match_priors"];
    for (label, count) in labels.iter().zip([11.0, 10.0, 6.0]) {
        assert!(
            (f1(&priors["priors"][label]) - count / 27.0).abs() < 1e-6,
            "{priors}"
        );
    }
    assert!(priors["rounds"].as_u64().unwrap() > 0, "{priors}");
    assert_eq!(priors["converged"], true, "{priors}");
    let mean_before: f64 = labels.iter().map(|l| f1(&priors["mean_before"][l])).sum();
    assert!((mean_before - 1.0).abs() < 1e-5, "{priors}");
    let source = priors["source"].as_str().unwrap();
    assert!(
        source.contains("the 27 rows of tests/fixtures/tiny/train.jsonl that")
            && source.ends_with("trained on"),
        "{source}"
    );

    let output = run_bin(
        "evaluate",
        &[
            "--checkpoint",
            path_str(&run),
            "--match-priors=needs_docs=1,needs_test=2",
        ],
    );
    assert_fails_naming(
        &output,
        &["--match-priors", "no prior for label \"needs_review\""],
    );
}

/// Validation rows the model gets all right (here its own training texts, learnt) leave the
/// loss falling toward T = 0: `train` fits no temperature there and says why, the checkpoint
/// stays uncalibrated, and `calibrate` refuses, leaving it as it was. (A fit at the search's
/// bound, T = 0.05, once gave a fold run a test loss of 2.0 against 0.11 uncalibrated.)
#[test]
fn a_validation_set_predicted_all_right_fits_no_temperature() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = train_tiny(
        &run,
        &[
            "data.valid='tests/fixtures/tiny/train.jsonl'",
            "eval.calibrate=true",
            "train.epochs=20",
            "train.lr=3e-3",
        ],
    );
    assert_ok(&output, "train");
    let log = text(&output.stderr);
    assert!(
        log.contains("no temperature fitted: every one of the 27 examples is on the right side")
            && log.contains("T = 0.05)"),
        "{log}"
    );
    let state_path = run.join("best/trainer_state.json");
    let state = std::fs::read_to_string(&state_path).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert!(parsed.get("calibration").is_none(), "{parsed}");
    let output = run_bin("calibrate", &["--checkpoint", path_str(&run)]);
    assert_fails_naming(&output, &["no temperature fitted", "is unchanged"]);
    assert_eq!(std::fs::read_to_string(&state_path).unwrap(), state);
}

#[test]
fn a_misspelled_config_key_is_named_with_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let output = train_tiny(&dir.path().join("run"), &["train.epoch=3"]);
    assert_fails_naming(&output, &["epoch", "epochs", "batch_size"]);
}

#[test]
fn a_value_of_the_wrong_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = train_tiny(&dir.path().join("run"), &["train.batch_size=\"eight\""]);
    assert_fails_naming(&output, &["batch_size"]);
}

#[test]
fn a_missing_data_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = train_tiny(&dir.path().join("run"), &["data.train=no/such/file.jsonl"]);
    assert_fails_naming(&output, &["no/such/file.jsonl"]);
}

#[test]
fn an_unknown_label_names_file_line_and_label() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"a\", \"label\": \"needs_docs\"}\n{\"text\": \"b\", \"label\": \"wontfix\"}\n",
    )
    .unwrap();
    let set = format!("data.train={}", path_str(&data));
    let output = train_tiny(&dir.path().join("run"), &[&set]);
    assert_fails_naming(&output, &["bad.jsonl", "2", "wontfix", "needs_review"]);
}

#[test]
fn a_corrupt_checkpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &["train.epochs=1"]), "train");
    let best = run.join("best");
    std::fs::write(best.join("model.safetensors"), b"not safetensors").unwrap();
    let output = run_bin("evaluate", &["--checkpoint", path_str(&best)]);
    // The file and the reader's reason, once.
    assert_fails_naming(&output, &["model.safetensors: header too large"]);
    let stderr = text(&output.stderr);
    assert_eq!(stderr.matches("header too large").count(), 1, "{stderr}");
    let output = run_bin(
        "predict",
        &["--checkpoint", path_str(&dir.path().join("nowhere")), "x"],
    );
    assert_fails_naming(&output, &["nowhere"]);
}

#[test]
fn an_invalid_value_is_rejected_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let output = train_tiny(&dir.path().join("run"), &["data.max_len=4096"]);
    assert_fails_naming(&output, &["data.max_len", "512"]);
}

#[test]
fn f16_training_with_loss_scaling_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = train_tiny(
        &run,
        &[
            "train.precision=\"f16\"",
            "train.epochs=15",
            "train.log_every=4",
        ],
    );
    assert_ok(&output, "train f16");
    let losses = train_losses(&run);
    assert!(
        losses.iter().all(|l| l.is_finite()),
        "non-finite loss: {losses:?}"
    );
    assert_loss_falls(&losses, 0.9, "f16");
    let state = candle_core::safetensors::load(
        run.join("last/optimizer.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(
        state.contains_key("loss_scale"),
        "the loss scale is not checkpointed"
    );
}

#[test]
fn the_logged_loss_is_a_mean_over_micro_batches_with_gradient_accumulation() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = train_tiny(
        &run,
        &[
            "train.grad_accum_steps=2",
            "train.batch_size=4",
            "train.log_every=1",
            "train.epochs=1",
        ],
    );
    assert_ok(&output, "train with accumulation");
    // An untrained 3-way classifier starts near ln 3 = 1.0986, whatever the accumulation.
    let first = train_losses(&run)[0];
    assert!(
        (first - 3f64.ln()).abs() < 0.2,
        "first logged loss {first}, expected about ln 3"
    );
}

/// Trains the tiny config in `dir` with the `common` settings, plainly and with `extra` ones that
/// change the training objective. The run with them says `says` on stderr, logs finite losses
/// whose first differs from the plain run's by more than `min_first_diff`, trains (its loss
/// falls), and its `last/` checkpoint evaluates and predicts.
fn a_changed_objective_trains(
    dir: &Path,
    common: &[&str],
    extra: &[&str],
    says: &str,
    min_first_diff: f64,
    what: &str,
) {
    let plain = dir.join("plain");
    assert_ok(&train_tiny(&plain, common), "plain train");
    let run = dir.join("run");
    let with: Vec<&str> = common.iter().chain(extra).copied().collect();
    let output = train_tiny(&run, &with);
    assert_ok(&output, &format!("train with {what}"));
    assert!(
        text(&output.stderr).contains(says),
        "train does not say what it optimizes:\n{}",
        text(&output.stderr)
    );
    let (ours, theirs) = (train_losses(&run), train_losses(&plain));
    assert!(ours.iter().all(|l| l.is_finite()), "{what}: {ours:?}");
    assert!(
        (ours[0] - theirs[0]).abs() > min_first_diff,
        "{what}: the first step's objective equals the plain loss: {} vs {}",
        ours[0],
        theirs[0]
    );
    assert_loss_falls(&ours, 0.8, what);
    last_checkpoint_evaluates_and_predicts(&run, what);
}

/// `train.contrastive_weight` changes the objective (the logged training loss differs from a
/// plain run's from the first step) and the run still learns; evaluations score the plain loss
/// (`evaluate` reproduces the logged one).
/// Settings it cannot work with are refused before training, naming the key.
#[test]
fn the_contrastive_term_trains_and_refuses_what_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    // 27 texts in batches of 13: each epoch ends on a batch of one text, which has no other to
    // contrast with (the term must then be 0, not NaN).
    let common = [
        "train.epochs=15",
        "train.log_every=1",
        "train.batch_size=13",
    ];
    a_changed_objective_trains(
        dir.path(),
        &common,
        &[
            "train.contrastive_weight=0.5",
            "train.contrastive_temperature=0.2",
        ],
        "0.50 x supervised contrastive",
        1e-3,
        "contrastive",
    );

    for (set, needles) in [
        (
            "train.contrastive_weight=1.0",
            &["train.contrastive_weight", "[0, 1)"][..],
        ),
        (
            "train.contrastive_temperature=0.0",
            &["train.contrastive_temperature"][..],
        ),
    ] {
        let output = train_tiny(&dir.path().join("bad"), &[set]);
        assert_fails_naming(&output, needles);
    }
    for (other, needle) in [
        ("train.freeze_encoder=true", "freeze_encoder"),
        ("train.batch_size=1", "batch_size"),
        ("data.multi_label=true", "single-label"),
    ] {
        let output = train_tiny(
            &dir.path().join("bad"),
            &["train.contrastive_weight=0.5", other],
        );
        assert_fails_naming(&output, &["train.contrastive_weight", needle]);
    }
}

/// `train.rdrop_weight` (R-Drop): each batch goes through the model twice and the objective
/// gains the two views' divergence, so the first logged loss differs from a plain run's; the run
/// trains, says what it optimizes, and its checkpoint evaluates and predicts. A negative weight,
/// and a model with every dropout at 0 (its two passes would be identical), are refused.
#[test]
fn r_drop_trains_and_refuses_a_model_without_dropout() {
    let dir = tempfile::tempdir().unwrap();
    let common = ["train.epochs=15", "train.log_every=1"];
    a_changed_objective_trains(
        dir.path(),
        &common,
        &["train.rdrop_weight=1.0"],
        "R-Drop, train.rdrop_weight 1",
        1e-4,
        "R-Drop",
    );

    let output = train_tiny(&dir.path().join("bad"), &["train.rdrop_weight=-0.5"]);
    assert_fails_naming(&output, &["train.rdrop_weight", ">= 0"]);
    // The encoder without dropout: R-Drop needs the head's, then.
    let with_head_dropout = |p: &str, out: &str| {
        let head = format!("model.classifier_dropout={p}");
        train_tiny(
            &dir.path().join(out),
            &[
                "train.rdrop_weight=1.0",
                "model.hidden_dropout=0.0",
                "model.attention_dropout=0.0",
                &head,
            ],
        )
    };
    let output = with_head_dropout("0.0", "bad");
    assert_fails_naming(&output, &["train.rdrop_weight", "needs dropout"]);
    let output = with_head_dropout("0.1", "head_only");
    assert_ok(&output, "R-Drop with only the head's dropout");
}

/// MPNet end to end: the tiny shape with all-mpnet-base-v2's tokenizer and config (random
/// weights), trained, then read back by `evaluate` and `predict`. The checkpoint keeps MPNet's
/// names and model type: `evaluate` on `last/` reproduces the last evaluation record's loss.
#[test]
fn a_tiny_mpnet_trains_and_its_checkpoint_evaluates_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mpnet = "model.id=\"sentence-transformers/all-mpnet-base-v2\"";
    let output = run_bin(
        "train",
        &[
            "--config",
            TINY,
            "--out",
            path_str(&run),
            "--set",
            mpnet,
            "--set",
            "train.epochs=15",
            "--set",
            "train.log_every=4",
        ],
    );
    assert_ok(&output, "train");
    let losses = train_losses(&run);
    assert_loss_falls(&losses, 0.8, "tiny MPNet");

    let weights = candle_core::safetensors::load(
        run.join("last/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(weights.contains_key("encoder.relative_attention_bias.weight"));
    assert!(weights.contains_key("encoder.layer.1.attention.attn.q.weight"));
    assert!(!weights.keys().any(|k| k.contains("token_type")));

    last_checkpoint_evaluates_and_predicts(&run, "MPNet");
}

/// `evaluate` on the run's `last/` reproduces the last evaluation record's loss (the checkpoint
/// keeps the family's names and model type), and `predict` answers from the run.
fn last_checkpoint_evaluates_and_predicts(run: &Path, what: &str) {
    let last_eval: serde_json::Value = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|r| r["kind"] == "eval")
        .expect("eval records");
    let output = run_bin(
        "evaluate",
        &["--checkpoint", path_str(&run.join("last")), "--json"],
    );
    assert_ok(&output, "evaluate");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let (ours, logged) = (
        json["loss"].as_f64().unwrap(),
        last_eval["loss"].as_f64().unwrap(),
    );
    assert!(
        (ours - logged).abs() < 1e-5,
        "{what}: evaluate gives loss {ours}, training logged {logged}"
    );
    let output = run_bin(
        "predict",
        &["--checkpoint", path_str(run), "the README is wrong"],
    );
    assert_ok(&output, "predict");
    assert!(text(&output.stdout).contains("\"probs\""));
}

/// RoBERTa and XLM-RoBERTa end to end: the tiny shape with tests/reference/<family>_tiny's
/// tokenizer (byte-level BPE, unigram) and config (random weights), trained, read back by
/// `evaluate` and `predict`, and exported with transformers' names for the family.
#[test]
fn a_tiny_roberta_and_xlm_roberta_train_evaluate_predict_and_export() {
    for (family, model_class, tokenizer_class) in [
        ("roberta", "RobertaModel", "RobertaTokenizer"),
        ("xlm-roberta", "XLMRobertaModel", "XLMRobertaTokenizer"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (weights, export) = tiny_family_end_to_end(family, dir.path(), &[]);
        assert_eq!(
            weights["embeddings.token_type_embeddings.weight"].dims(),
            [1, 32]
        );
        assert!(weights.contains_key("encoder.layer.1.attention.self.query.weight"));
        let read = |name: &str| json_file(&export.join(name));
        let config = read("config.json");
        assert_eq!(config["architectures"], serde_json::json!([model_class]));
        assert_eq!(config["type_vocab_size"], 1);
        let tokenizer = read("tokenizer_config.json");
        assert_eq!(tokenizer["tokenizer_class"], tokenizer_class);
        assert_eq!(tokenizer["pad_token"], "<pad>");
        assert_eq!(tokenizer["unk_token"], "<unk>");
    }
}

/// DistilBERT end to end likewise: the checkpoint keeps wick's (BERT's) names, the export
/// transformers' DistilBERT names in the weights and in config.json.
#[test]
fn a_tiny_distilbert_trains_evaluates_predicts_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, export) = tiny_family_end_to_end("distilbert", dir.path(), &[]);
    assert!(!weights.keys().any(|k| k.contains("token_type")));
    assert!(weights.contains_key("encoder.layer.1.attention.self.query.weight"));
    let exported =
        candle_core::safetensors::load(export.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    for key in [
        "transformer.layer.1.attention.q_lin.weight",
        "transformer.layer.0.sa_layer_norm.bias",
        "transformer.layer.0.ffn.lin1.weight",
        "transformer.layer.1.output_layer_norm.weight",
        "embeddings.position_embeddings.weight",
    ] {
        assert!(exported.contains_key(key), "{key} not exported");
    }
    assert!(!exported.keys().any(|k| k.starts_with("encoder.")));
    let config = json_file(&export.join("config.json"));
    assert_eq!(
        config["architectures"],
        serde_json::json!(["DistilBertModel"])
    );
    assert_eq!(
        (&config["dim"], &config["n_layers"]),
        (&32.into(), &2.into())
    );
    assert_eq!(
        json_file(&export.join("tokenizer_config.json"))["tokenizer_class"],
        "DistilBertTokenizer"
    );
}

/// ELECTRA end to end likewise: the projection of its narrower embeddings is trained, kept and
/// exported under transformers' names, with `embedding_size` in config.json.
#[test]
fn a_tiny_electra_trains_evaluates_predicts_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    // The tiny config's 32-wide encoder over the model's 32-wide embeddings would need no
    // projection: widen the encoder.
    let (weights, export) =
        tiny_family_end_to_end("electra", dir.path(), &["model.hidden_size=64"]);
    assert_eq!(weights["embeddings_project.weight"].dims(), [64, 32]);
    let config = json_file(&export.join("config.json"));
    assert_eq!(config["architectures"], serde_json::json!(["ElectraModel"]));
    assert_eq!(config["embedding_size"], 32);
    let exported =
        candle_core::safetensors::load(export.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(exported.contains_key("embeddings_project.bias"));
    assert_eq!(
        json_file(&export.join("tokenizer_config.json"))["tokenizer_class"],
        "ElectraTokenizer"
    );
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tiny config on tests/reference/<family>_tiny's tokenizer and config (random weights):
/// the loss falls, `evaluate` on `last/` reproduces the last evaluation record's loss, `predict`
/// answers, and `export` writes the family's `model_type`. `extra` are more `--set` overrides.
/// Returns `last/`'s weights and the export's directory.
fn tiny_family_end_to_end(
    family: &str,
    dir: &Path,
    extra: &[&str],
) -> (
    std::collections::HashMap<String, candle_core::Tensor>,
    PathBuf,
) {
    let run = dir.join("run");
    let model = format!(
        "model.path={:?}",
        path_str(&repo_root().join(format!("tests/reference/{family}_tiny")))
    );
    let mut args = vec![
        "--config",
        TINY,
        "--out",
        path_str(&run),
        "--set",
        &model,
        "--set",
        "train.epochs=15",
        // A 600-piece vocabulary cuts words finer than MiniLM's: more steps per word.
        "--set",
        "train.lr=3e-3",
        "--set",
        "train.log_every=4",
    ];
    for set in extra {
        args.extend(["--set", set]);
    }
    let output = run_bin("train", &args);
    assert_ok(&output, "train");
    assert_loss_falls(&train_losses(&run), 0.8, family);
    assert_eq!(
        json_file(&run.join("last/config.json"))["model_type"],
        family
    );

    last_checkpoint_evaluates_and_predicts(&run, family);

    let export = dir.join("export");
    let output = run_bin(
        "export",
        &["--checkpoint", path_str(&run), "--out", path_str(&export)],
    );
    assert_ok(&output, "export");
    assert_eq!(json_file(&export.join("config.json"))["model_type"], family);
    let weights = candle_core::safetensors::load(
        run.join("last/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    (weights, export)
}

/// `train.save_optimizer = false`: checkpoints hold weights only, `evaluate` reads them, and a
/// resume is refused naming the key.
#[test]
fn weights_only_checkpoints_evaluate_and_refuse_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &["train.save_optimizer=false"]), "train");
    for checkpoint in ["best", "last"] {
        assert!(run.join(checkpoint).join("model.safetensors").is_file());
        assert!(
            !run.join(checkpoint).join("optimizer.safetensors").exists(),
            "{checkpoint}/ holds optimizer state"
        );
    }
    assert_ok(
        &run_bin(
            "evaluate",
            &["--checkpoint", path_str(&run.join("best")), "--json"],
        ),
        "evaluate",
    );
    let output = run_bin("train", &["--resume", path_str(&run), "--quiet"]);
    assert_fails_naming(&output, &["train.save_optimizer", "optimizer.safetensors"]);
}

/// Every config in `configs/` parses (no unknown key, every value typed) and passes the checks
/// made before training, against its model's `config.json` too where the model is in the cache
/// (`make test` provides MiniLM and MPNet; bert-base-uncased needs the Hub).
#[test]
fn every_shipped_config_parses_and_validates() {
    let dir = super::common::repo_root().join("configs");
    let (mut seen, mut against_model) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let config = wick_trainer::config::RunConfig::load(&path, &[])
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
        if let Ok(model) = wick_model::hub::resolve(&config.model.source()) {
            let bert = config
                .model
                .apply(wick_model::BertConfig::from_file(&model.config).unwrap());
            config
                .validate_against(&bert)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            against_model += 1;
        }
    }
    assert!(seen >= 5, "only {seen} configs in {}", dir.display());
    assert!(
        against_model >= 4,
        "only {against_model} configs checked against their model"
    );
}

/// A fresh run into a directory that holds another run is refused, naming the directory, and
/// leaves that run as it was; with `--overwrite` the old run's checkpoints, metrics and plot are
/// replaced (the stale `best/` of a run with validation would otherwise outlive a run without),
/// and files that are not the run's are kept.
#[test]
fn a_fresh_run_refuses_a_previous_run_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &[]), "first train");
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    let best_before = std::fs::read(run.join("best/model.safetensors")).unwrap();
    let metrics_before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();

    let refused = train_tiny(&run, &["eval.every_epoch=false"]);
    assert_fails_naming(&refused, &[path_str(&run), "previous run", "--overwrite"]);
    assert_eq!(
        std::fs::read(run.join("best/model.safetensors")).unwrap(),
        best_before,
        "a refused run changed best/"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
        metrics_before
    );

    let mut args = vec!["--config", TINY, "--out", path_str(&run), "--quiet"];
    args.extend(["--overwrite", "--set", "eval.every_epoch=false"]);
    args.extend(["--set", "train.epochs=1"]);
    let output = run_bin("train", &args);
    assert_ok(&output, "train --overwrite");
    assert!(text(&output.stderr).contains("overwriting the previous run"));
    let mut names: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // One epoch is 4 steps: checkpoint-4 is the new run's; the old run's 8 and 12 are gone.
    assert_eq!(
        names,
        [
            "best",
            "checkpoint-4",
            "config.toml",
            "last",
            "metrics.jsonl",
            "notes.txt",
            "plot.svg"
        ]
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        !metrics.contains("\"kind\":\"eval\""),
        "the old run's evaluations are still in metrics.jsonl:\n{metrics}"
    );
    let state = std::fs::read_to_string(run.join("best/trainer_state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert!(
        state["state"]["best_metric"].is_null(),
        "best/ is not the new run's: {state}"
    );
}

/// `sweep` trains every combination once per seed, ranks the combinations by their mean best
/// validation metric (each trial's value is the one its `best/` checkpoint recorded), and run
/// again reuses finished trials unless their resolved config changed.
#[test]
fn sweep_ranks_combinations_and_reuses_finished_trials() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let sweep = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            TINY,
            "--out",
            path_str(&out),
            "--quiet",
            "--json",
        ];
        args.extend(["--grid", "train.lr=1e-3,3e-3", "--seeds", "1,2"]);
        args.extend(extra);
        let output = run_bin("sweep", &args);
        assert_ok(&output, "sweep");
        serde_json::from_str::<serde_json::Value>(&text(&output.stdout)).unwrap()
    };
    let first = sweep(&[]);
    assert_eq!(first["reused_trials"], 0);
    let ranking = first["ranking"].as_array().unwrap();
    assert_eq!(ranking.len(), 2);
    let means: Vec<f64> = ranking
        .iter()
        .map(|r| r["mean"].as_f64().unwrap())
        .collect();
    assert!(means[0] >= means[1], "not best first: {means:?}");
    for row in ranking {
        let values: Vec<f64> = row["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(values.len(), 2);
        assert!((row["mean"].as_f64().unwrap() - (values[0] + values[1]) / 2.0).abs() < 1e-12);
    }
    let trials = first["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    for (trial, name) in trials.iter().zip([
        "lr=1e-3,seed=1",
        "lr=1e-3,seed=2",
        "lr=3e-3,seed=1",
        "lr=3e-3,seed=2",
    ]) {
        let state = std::fs::read_to_string(out.join(name).join("best/trainer_state.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        assert_eq!(trial["value"], state["state"]["best_metric"], "{name}");
        assert_eq!(trial["best_step"], state["state"]["best_step"], "{name}");
    }
    let metrics = out.join("lr=1e-3,seed=1/metrics.jsonl");
    let before = std::fs::read_to_string(&metrics).unwrap();

    let again = sweep(&[]);
    assert_eq!(again["reused_trials"], 4);
    assert_eq!(again["ranking"], first["ranking"]);
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), before);

    let changed = sweep(&["--set", "train.epochs=1"]);
    assert_eq!(changed["reused_trials"], 0);
    assert_eq!(changed["trials"][0]["steps"], 4, "one epoch of 4 steps");
}

/// `sweep --folds 3` trains each combination on each of three folds of the training file (the
/// config has no validation file and holds nothing out by fraction) and scores it by the mean of
/// the three; each trial's checkpoint records its fold, and its validation set is one third of
/// the 27 rows.
#[test]
fn sweep_cross_validates_over_folds() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_without_valid(dir.path(), "valid_fraction = 0.0");
    let out = dir.path().join("sweep");
    let args = [
        "--config",
        path_str(&config),
        "--out",
        path_str(&out),
        "--quiet",
        "--grid",
        "train.lr=1e-3",
        "--folds",
        "3",
    ];
    let output = run_bin("sweep", &[&args[..], &["--json"]].concat());
    assert_ok(&output, "sweep --folds 3");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["folds"], 3);
    let trials = json["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3);
    let mut values = Vec::new();
    for (fold, trial) in trials.iter().enumerate() {
        assert_eq!(trial["fold"], fold);
        let name = format!("lr=1e-3,seed=7,fold={fold}");
        let saved = std::fs::read_to_string(out.join(&name).join("best/config.toml"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let saved: toml::Value = toml::from_str(&saved).unwrap();
        assert_eq!(saved["data"]["folds"].as_integer(), Some(3), "{name}");
        assert_eq!(
            saved["data"]["fold"].as_integer(),
            Some(fold as i64),
            "{name}"
        );
        values.push(trial["value"].as_f64().unwrap());
    }
    // `evaluate` with no --data finds a trial's fold again and scores what the trial recorded.
    let output = run_bin(
        "evaluate",
        &[
            "--checkpoint",
            path_str(&out.join("lr=1e-3,seed=7,fold=2")),
            "--json",
        ],
    );
    assert_ok(&output, "evaluate a fold's checkpoint");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["examples"], 9);
    assert_eq!(report["macro_f1"].as_f64(), Some(values[2]));
    let row = &json["ranking"][0];
    assert_eq!(row["values"].as_array().unwrap().len(), 3);
    let mean = values.iter().sum::<f64>() / 3.0;
    assert!((row["mean"].as_f64().unwrap() - mean).abs() < 1e-12);

    // `train` on one fold says which, and scores its 9 rows.
    let run = dir.path().join("fold1");
    let output = run_bin(
        "train",
        &[
            "--config",
            path_str(&config),
            "--out",
            path_str(&run),
            "--quiet",
            "--set",
            "data.folds=3",
            "--set",
            "data.fold=1",
        ],
    );
    assert_ok(&output, "train on fold 1");
    let stdout = text(&output.stdout);
    let table = stdout
        .split("validation (fold 1 of 3 of ")
        .nth(1)
        .unwrap_or_else(|| panic!("no fold line in:\n{stdout}"));
    let examples = table
        .lines()
        .find(|l| l.trim_start().starts_with("accuracy"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no accuracy line in:\n{table}"));
    assert_eq!(examples, "9", "{table}");

    // --folds leaves data.folds and data.fold to itself.
    let output = run_bin("sweep", &[&args[..], &["--set", "data.fold=1"]].concat());
    assert_fails_naming(&output, &["data.fold=1", "--folds"]);
    let output = run_bin(
        "sweep",
        &[
            "--config",
            path_str(&config),
            "--grid",
            "train.lr=1e-3",
            "--folds",
            "1",
        ],
    );
    assert_fails_naming(&output, &["--folds 1", "at least 2"]);
}

/// Every trial's config is resolved before any trains: a bad value in the grid, or two trials
/// that would share a directory, fail at once, naming it, and leave no directory behind.
#[test]
fn sweep_checks_every_trial_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let output = run_bin(
        "sweep",
        &[
            "--config",
            TINY,
            "--out",
            path_str(&out),
            "--grid",
            "train.lr=1e-3,3e-3",
            "--grid",
            "train.warmup_ratio=0.1,1.5",
        ],
    );
    assert_fails_naming(&output, &["train.warmup_ratio", "must be in [0, 1]"]);
    assert!(!out.exists(), "a trial was started");
    let args = ["--config", TINY, "--out", path_str(&out)];
    let output = run_bin(
        "sweep",
        &[&args[..], &["--grid", "train.lr=1e-3", "--seeds", "1,1"]].concat(),
    );
    assert_fails_naming(&output, &["lr=1e-3,seed=1", "share the directory"]);
    assert!(!out.exists(), "a trial was started");
}

/// `lr_find` runs the real training step in the real data order: its first two losses (at 1e-5,
/// then 2e-5) equal those `train` logs for two steps whose first update is at 1e-5; and a longer
/// ramp is geometric from `--min-lr` to `--max-lr` with one loss per step.
#[test]
fn lr_find_ramps_the_rate_over_real_training_steps() {
    // `lr_find --json` on the tiny config over `steps` from `min` to `max`.
    let curve = |steps: &str, min: &str, max: &str| -> serde_json::Value {
        let output = run_bin(
            "lr_find",
            &[
                "--config", TINY, "--steps", steps, "--min-lr", min, "--max-lr", max, "--json",
            ],
        );
        assert_ok(&output, "lr_find");
        serde_json::from_str(&text(&output.stdout)).unwrap()
    };
    let numbers = |value: &serde_json::Value| -> Vec<f64> {
        let array = value.as_array().unwrap();
        array.iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let found = numbers(&curve("2", "1e-5", "2e-5")["losses"]);

    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = train_tiny(
        &run,
        &[
            "train.max_steps=2",
            "train.lr=1e-5",
            "train.warmup_ratio=0.0",
            "train.decay=\"constant\"",
            "train.log_every=1",
        ],
    );
    assert_ok(&output, "train");
    let trained = train_losses(&run);
    assert_eq!(found.len(), 2);
    assert_eq!(trained.len(), 2);
    for (a, b) in found.iter().zip(&trained) {
        assert!(
            (a - b).abs() < 1e-6,
            "lr_find {found:?} vs train {trained:?}"
        );
    }

    let long = curve("30", "1e-5", "10");
    let lrs = numbers(&long["lrs"]);
    assert_eq!(lrs.len(), 30);
    assert_eq!(numbers(&long["losses"]).len(), 30);
    assert!((lrs[0] - 1e-5).abs() < 1e-18 && (lrs[29] - 10.0).abs() < 1e-9);
    let ratio = lrs[1] / lrs[0];
    for pair in lrs.windows(2) {
        assert!((pair[1] / pair[0] - ratio).abs() < 1e-9);
    }
    let steepest = long["steepest"].as_f64().expect("a suggestion");
    assert!((1e-5..=10.0).contains(&steepest));
}

/// Reads a protobuf varint at `*at`.
fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
        shift += 7;
    }
}

/// The fields of a protobuf message: (field number, wire type, the value's bytes or varint).
fn proto_fields(bytes: &[u8]) -> Vec<(u64, u64, Vec<u8>, u64)> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at);
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = read_varint(bytes, &mut at);
                fields.push((number, wire, Vec::new(), v));
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                fields.push((number, wire, bytes[at..at + n].to_vec(), 0));
                at += n;
            }
            2 => {
                let n = read_varint(bytes, &mut at) as usize;
                fields.push((number, wire, bytes[at..at + n].to_vec(), 0));
                at += n;
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    fields
}

/// The scalars of a TensorBoard event file as (tag, step, value), every TFRecord's two CRCs
/// checked, and the file-version string of its first event.
fn read_event_file(path: &Path) -> (String, Vec<(String, i64, f32)>) {
    use wick_trainer::tensorboard::masked_crc32c;
    let bytes = std::fs::read(path).unwrap();
    let mut at = 0;
    let mut version = String::new();
    let mut scalars = Vec::new();
    while at < bytes.len() {
        let length = &bytes[at..at + 8];
        let n = u64::from_le_bytes(length.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(crc, masked_crc32c(length), "length CRC at byte {at}");
        let data = &bytes[at + 12..at + 12 + n];
        let crc = u32::from_le_bytes(bytes[at + 12 + n..at + 16 + n].try_into().unwrap());
        assert_eq!(crc, masked_crc32c(data), "data CRC at byte {at}");
        at += 16 + n;
        let event = proto_fields(data);
        let step = event.iter().find(|f| f.0 == 2).map_or(0, |f| f.3 as i64);
        for (number, _, value, _) in &event {
            match number {
                3 => version = String::from_utf8(value.clone()).unwrap(),
                5 => {
                    for entry in proto_fields(value).into_iter().filter(|f| f.0 == 1) {
                        let entry = proto_fields(&entry.2);
                        let tag = entry.iter().find(|f| f.0 == 1).unwrap();
                        let value = entry.iter().find(|f| f.0 == 2 && f.1 == 5).unwrap();
                        scalars.push((
                            String::from_utf8(tag.2.clone()).unwrap(),
                            step,
                            f32::from_le_bytes(value.2[..].try_into().unwrap()),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    (version, scalars)
}

/// With `train.tensorboard`, every metrics record also lands in a TensorBoard event file as
/// `<kind>/<field>` scalars at its step (read back here with the TFRecord CRCs checked), and a
/// resumed run adds a file of its own.
#[test]
fn tensorboard_event_files_hold_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = train_tiny(
        &run,
        &[
            "train.tensorboard=true",
            "train.log_every=1",
            "train.epochs=2",
        ],
    );
    assert_ok(&output, "train");
    let files = |run: &Path| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(run.join("tensorboard"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    };
    let first = files(&run);
    assert_eq!(first.len(), 1);
    let (version, scalars) = read_event_file(&first[0]);
    assert_eq!(version, "brain.Event:2");
    let losses: Vec<(i64, f32)> = scalars
        .iter()
        .filter(|s| s.0 == "train/loss")
        .map(|s| (s.1, s.2))
        .collect();
    let expected: Vec<(i64, f32)> = train_losses(&run)
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as i64 + 1, l as f32))
        .collect();
    assert_eq!(losses, expected);
    let f1_steps: Vec<i64> = scalars
        .iter()
        .filter(|s| s.0 == "eval/macro_f1")
        .map(|s| s.1)
        .collect();
    assert_eq!(f1_steps, [4, 8]);
    for tag in ["train/lr", "train/grad_norm", "eval/loss", "eval/accuracy"] {
        assert!(scalars.iter().any(|s| s.0 == tag), "no {tag}");
    }

    let output = run_bin(
        "train",
        &[
            "--resume",
            path_str(&run),
            "--quiet",
            "--set",
            "train.epochs=3",
        ],
    );
    assert_ok(&output, "resume");
    let both = files(&run);
    assert_eq!(both.len(), 2, "{both:?}");
    let added = both.iter().find(|p| **p != first[0]).unwrap();
    let (_, resumed) = read_event_file(added);
    let steps: Vec<i64> = resumed
        .iter()
        .filter(|s| s.0 == "train/loss")
        .map(|s| s.1)
        .collect();
    assert_eq!(steps, [9, 10, 11, 12]);
}

/// The `activations ~X` figure of the memory budget `train` prints (on stderr), in KiB.
fn budget_activations_kib(output: &Output) -> f64 {
    let stderr = text(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("memory budget:"))
        .unwrap_or_else(|| panic!("no memory budget line:\n{stderr}"));
    let figure = line
        .split("activations ~")
        .nth(1)
        .and_then(|rest| rest.split(" = ").next())
        .unwrap_or_else(|| panic!("no activations in `{line}`"));
    let mut words = figure.split_whitespace();
    let value: f64 = words.next().unwrap().parse().unwrap();
    let unit = match words.next() {
        Some("KiB") => 1.0,
        Some("MiB") => 1024.0,
        other => panic!("unit {other:?} in `{line}`"),
    };
    value * unit
}

/// `train.gradient_checkpointing`: the encoder's layers are recomputed in backward with the same
/// dropout masks, so the run logs the losses of a run without it and ends with the same weights;
/// its memory budget says so and counts fewer activations. With `train.freeze_encoder` (no
/// encoder backward to recompute for) it is refused.
#[test]
fn gradient_checkpointing_trains_to_the_weights_of_a_run_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut sets = vec!["train.log_every=1"];
        sets.extend(extra);
        let output = train_tiny(&out, &sets);
        assert_ok(&output, name);
        (out, output)
    };
    let (plain, plain_output) = run("plain", &[]);
    let (checkpointed, output) = run("checkpointed", &["train.gradient_checkpointing=true"]);

    assert!(text(&output.stderr).contains("(gradient checkpointing)"));
    let (kib, plain_kib) = (
        budget_activations_kib(&output),
        budget_activations_kib(&plain_output),
    );
    assert!(
        kib < plain_kib,
        "activations {kib} KiB checkpointed, {plain_kib} KiB plain"
    );
    let (losses, plain_losses) = (train_losses(&checkpointed), train_losses(&plain));
    assert_eq!(losses.len(), 12, "one loss per step: {losses:?}");
    assert!(
        max_gap(&losses, &plain_losses) < 1e-6,
        "losses {losses:?} checkpointed, {plain_losses:?} plain"
    );
    let weights = load_tensors(&checkpointed.join("last/model.safetensors"));
    let plain_weights = load_tensors(&plain.join("last/model.safetensors"));
    assert_eq!(weights.len(), plain_weights.len());
    for (name, tensor) in &weights {
        let (a, b) = (values(tensor), values(&plain_weights[name]));
        let gap = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(gap < 1e-6, "{name}: weights differ by {gap}");
    }

    let output = train_tiny(
        &dir.path().join("bad"),
        &[
            "train.gradient_checkpointing=true",
            "train.freeze_encoder=true",
        ],
    );
    assert_fails_naming(
        &output,
        &["train.gradient_checkpointing", "train.freeze_encoder"],
    );
}
