//! Data files named `hf://datasets/...`: `train` and `evaluate` read them through the Hugging
//! Face cache as they read local files, offline once cached (downloads are tested in
//! `crates/hub/tests/download.rs`), and name the path as given in their errors. `doctor` says
//! which cache, endpoint and token source downloads would use and what the cache holds.

use std::fs;
use std::path::Path;
use std::process::Output;

use tempfile::TempDir;
use wick_model::hub::HubSettings;

use super::common::{
    assert_fails_naming, assert_ok, command, path_str, repo_root, text, train_losses, TINY,
};

const COMMIT: &str = "00112233445566778899aabbccddeeff00112233";
const TRAIN: &str = "hf://datasets/acme/triage-tiny/data/train.parquet";
const VALID: &str = "hf://datasets/acme/triage-tiny/data/valid.jsonl";

/// A Hub cache in `dir` holding the tiny fixtures as the dataset `acme/triage-tiny` (branch
/// `main`), beside a link to the real cache's MiniLM (the tiny config's tokenizer).
fn cache_with_dataset(dir: &Path) -> std::path::PathBuf {
    let cache = dir.join("hub");
    let snapshot = cache
        .join("datasets--acme--triage-tiny/snapshots")
        .join(COMMIT)
        .join("data");
    fs::create_dir_all(&snapshot).unwrap();
    let fixtures = repo_root().join("tests/fixtures/tiny");
    fs::copy(
        fixtures.join("train.parquet"),
        snapshot.join("train.parquet"),
    )
    .unwrap();
    fs::copy(fixtures.join("valid.jsonl"), snapshot.join("valid.jsonl")).unwrap();
    fs::create_dir_all(cache.join("datasets--acme--triage-tiny/refs")).unwrap();
    fs::write(cache.join("datasets--acme--triage-tiny/refs/main"), COMMIT).unwrap();
    let real = HubSettings::from_env().unwrap().cache_dir;
    let model = "models--sentence-transformers--all-MiniLM-L6-v2";
    std::os::unix::fs::symlink(real.join(model), cache.join(model)).unwrap();
    cache
}

/// A binary run against `cache`, offline.
fn run_offline(cache: &Path, bin: &str, args: &[&str]) -> Output {
    let exe = match bin {
        "train" => env!("CARGO_BIN_EXE_train"),
        "evaluate" => env!("CARGO_BIN_EXE_evaluate"),
        other => panic!("unknown binary {other}"),
    };
    command(exe)
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn train_args<'a>(out: &'a Path, train: &'a str, valid: &'a str) -> Vec<String> {
    [
        "--config",
        TINY,
        "--out",
        path_str(out),
        "--quiet",
        "--set",
        &format!("data.train={train}"),
        "--set",
        &format!("data.valid={valid}"),
        "--set",
        "train.epochs=1",
    ]
    .map(String::from)
    .to_vec()
}

/// The run's evaluation records (they hold no timings, so two runs on the same rows give equal
/// ones).
fn eval_records(run: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "eval")
        .collect()
}

#[test]
fn hub_dataset_paths_train_and_evaluate_like_the_local_files() {
    let dir = TempDir::new().unwrap();
    let cache = cache_with_dataset(dir.path());

    let hub_run = dir.path().join("hub-run");
    let args = train_args(&hub_run, TRAIN, VALID);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&run_offline(&cache, "train", &refs), "train on hf:// paths");

    let local_run = dir.path().join("local-run");
    let args = train_args(
        &local_run,
        "tests/fixtures/tiny/train.parquet",
        "tests/fixtures/tiny/valid.jsonl",
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&run_offline(&cache, "train", &refs), "train on local paths");

    // The same rows, so the same losses and the same validation scores.
    assert_eq!(train_losses(&hub_run), train_losses(&local_run));
    assert!(!train_losses(&hub_run).is_empty());
    assert_eq!(eval_records(&hub_run), eval_records(&local_run));
    assert!(!eval_records(&hub_run).is_empty());
    // The run's config keeps the path as given.
    let config = fs::read_to_string(hub_run.join("config.toml")).unwrap();
    assert!(config.contains(TRAIN), "{config}");

    // evaluate --data takes one too.
    let best = hub_run.join("best");
    let output = run_offline(
        &cache,
        "evaluate",
        &["--checkpoint", path_str(&best), "--data", VALID, "--json"],
    );
    assert_ok(&output, "evaluate --data hf://");
    let from_hub: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let output = run_offline(
        &cache,
        "evaluate",
        &[
            "--checkpoint",
            path_str(&best),
            "--data",
            "tests/fixtures/tiny/valid.jsonl",
            "--json",
        ],
    );
    assert_ok(&output, "evaluate --data local");
    let from_local: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(from_hub["macro_f1"], from_local["macro_f1"]);
    assert_eq!(from_hub["loss"], from_local["loss"]);
}

#[test]
fn hub_dataset_path_errors_name_the_path_as_given() {
    let dir = TempDir::new().unwrap();
    let cache = cache_with_dataset(dir.path());
    let out = dir.path().join("run");

    // Malformed: refused by key before anything is read.
    let args = train_args(&out, "hf://datasets/acme/x.jsonl", VALID);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails_naming(
        &run_offline(&cache, "train", &refs),
        &[
            "data.train",
            "hf://datasets/{org}/{name}[@{revision}]/{file}",
        ],
    );

    // Not in the cache, offline.
    let missing = "hf://datasets/acme/triage-tiny/data/test.jsonl";
    let args = train_args(&out, TRAIN, missing);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails_naming(
        &run_offline(&cache, "train", &refs),
        &[
            "hf://datasets/acme/triage-tiny@main/data/test.jsonl",
            "offline mode is on",
            path_str(&cache),
        ],
    );

    // A bad row is named by the hf:// path and its line.
    let snapshot = cache
        .join("datasets--acme--triage-tiny/snapshots")
        .join(COMMIT)
        .join("data");
    fs::write(
        snapshot.join("bad.jsonl"),
        "{\"text\": \"fine\", \"label\": \"needs_docs\"}\n{\"text\": \"typo\", \"label\": \"needs_doc\"}\n",
    )
    .unwrap();
    let bad = "hf://datasets/acme/triage-tiny/data/bad.jsonl";
    let args = train_args(&out, TRAIN, bad);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_offline(&cache, "train", &refs);
    assert_fails_naming(&output, &[&format!("{bad}:2: unknown label \"needs_doc\"")]);
    assert!(
        !text(&output.stderr).contains("snapshots"),
        "{}",
        text(&output.stderr)
    );
    // So is a line of bad UTF-8.
    fs::write(
        snapshot.join("latin1.jsonl"),
        b"{\"text\": \"fine\", \"label\": \"needs_docs\"}\n{\"text\": \"caf\xe9\"}\n",
    )
    .unwrap();
    let latin1 = "hf://datasets/acme/triage-tiny/data/latin1.jsonl";
    let args = train_args(&out, TRAIN, latin1);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails_naming(
        &run_offline(&cache, "train", &refs),
        &[&format!("{latin1}:2: invalid UTF-8")],
    );
}

#[test]
fn doctor_reports_the_hub_settings_and_what_the_cache_holds() {
    let dir = TempDir::new().unwrap();
    let cache = cache_with_dataset(dir.path());
    let output = command(env!("CARGO_BIN_EXE_doctor"))
        .arg("--json")
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://mirror.example")
        .env("HF_TOKEN", "hf_secret_value")
        .output()
        .unwrap();
    assert_ok(&output, "doctor --json");
    let stdout = text(&output.stdout);
    assert!(!stdout.contains("hf_secret_value"), "the token was printed");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let hub = &report["hub"];
    assert_eq!(hub["cache_dir"], path_str(&cache));
    assert_eq!(hub["offline"], true);
    assert_eq!(hub["endpoint"], "http://mirror.example");
    assert_eq!(hub["token"], "HF_TOKEN");
    assert_eq!(hub["default_model"]["cached"], true);
    assert_eq!(
        hub["cached_datasets"],
        serde_json::json!(["acme/triage-tiny"])
    );
    assert_eq!(
        hub["cached_models"],
        serde_json::json!(["sentence-transformers/all-MiniLM-L6-v2"])
    );

    // An empty cache, in text: the default model is missing and `make model` is named.
    let empty = dir.path().join("empty");
    let output = command(env!("CARGO_BIN_EXE_doctor"))
        .env("HF_HUB_CACHE", &empty)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert_ok(&output, "doctor");
    let stdout = text(&output.stdout);
    for needle in [
        &format!("cache:           {}", empty.display()),
        "not cached: `make model`",
        "cached datasets: none",
    ] {
        assert!(stdout.contains(needle), "{needle}:\n{stdout}");
    }
}
