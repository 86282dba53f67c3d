//! Helpers shared by the integration tests: running the real binaries, temp run directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The 2-layer random BERT on 27 texts that the CLI tests train.
pub const TINY: &str = "configs/tiny.toml";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny config without its validation file, `data_line` added to its `[data]` section,
/// written into `dir` (relative paths resolve from the repository root, where `run_bin` runs).
pub fn tiny_without_valid(dir: &Path, data_line: &str) -> PathBuf {
    let tiny = std::fs::read_to_string(repo_root().join(TINY)).unwrap();
    let config: String = tiny
        .lines()
        .filter(|l| !l.starts_with("valid ="))
        .map(|l| {
            if l.starts_with("train = ") {
                format!("{l}\n{data_line}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("tiny_without_valid.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A command for one of the built programs, run from the repository root. With
/// `WICK_TEST_RUNNER` set (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`, as
/// `scripts/test-aarch64.sh` sets it) the program runs under that runner, as cargo runs the
/// test binary itself under `CARGO_TARGET_<triple>_RUNNER`.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let runner = std::env::var("WICK_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut command = match words.next() {
        Some(runner) => {
            let mut command = Command::new(runner);
            command.args(words).arg(program);
            command
        }
        None => Command::new(program),
    };
    command.current_dir(repo_root());
    command
}

/// Runs one of the package's binaries from the repository root.
pub fn run_bin(bin: &str, args: &[&str]) -> Output {
    let exe = match bin {
        "train" => env!("CARGO_BIN_EXE_train"),
        "evaluate" => env!("CARGO_BIN_EXE_evaluate"),
        "predict" => env!("CARGO_BIN_EXE_predict"),
        "doctor" => env!("CARGO_BIN_EXE_doctor"),
        "sweep" => env!("CARGO_BIN_EXE_sweep"),
        "lr_find" => env!("CARGO_BIN_EXE_lr_find"),
        "calibrate" => env!("CARGO_BIN_EXE_calibrate"),
        "export" => env!("CARGO_BIN_EXE_export"),
        "adapt" => env!("CARGO_BIN_EXE_adapt"),
        "explain" => env!("CARGO_BIN_EXE_explain"),
        "serve" => env!("CARGO_BIN_EXE_serve"),
        other => panic!("unknown binary {other}"),
    };
    command(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

/// Runs the program `exe` (a `CARGO_BIN_EXE_*` path) from the repository root with `input` on
/// its stdin.
pub fn run_with_stdin(exe: &str, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {exe}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a run succeeded, showing its output otherwise.
pub fn assert_ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// Asserts a run failed cleanly (non-zero, no panic) with stderr mentioning every needle.
pub fn assert_fails_naming(output: &Output, needles: &[&str]) {
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, got success; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "panicked instead of a clean error:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr does not mention `{needle}`:\n{stderr}"
        );
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// The `kind: "train"` losses of a run's metrics.jsonl, in order.
pub fn train_losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl exists");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}

/// Asserts the mean of the last two logged losses is below `factor` times the mean of the
/// first two.
pub fn assert_loss_falls(losses: &[f64], factor: f64, what: &str) {
    assert!(
        losses.len() >= 4,
        "{what}: too few loss records: {losses:?}"
    );
    let head: f64 = losses[..2].iter().sum::<f64>() / 2.0;
    let tail: f64 = losses[losses.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(
        tail < head * factor,
        "{what}: loss did not fall: {losses:?}"
    );
}

/// Trains the tiny config into `out` with extra `--set` overrides.
pub fn train_tiny(out: &Path, extra: &[&str]) -> Output {
    train_config(Path::new(TINY), out, extra)
}

/// Trains `config` into `out` with extra `--set` overrides.
pub fn train_config(config: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--config",
        path_str(config),
        "--out",
        path_str(out),
        "--quiet",
    ];
    for set in extra {
        args.extend(["--set", set]);
    }
    run_bin("train", &args)
}

/// `explain --json`'s records for `args`, one per input.
pub fn explained(args: &[&str]) -> Vec<serde_json::Value> {
    let output = run_bin("explain", &[&["--json"], args].concat());
    assert_ok(&output, "explain");
    text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `predict`'s probabilities for `texts` from `checkpoint`, in the tiny config's label order.
pub fn checkpoint_probs(checkpoint: &Path, texts: &[&str]) -> Vec<Vec<f64>> {
    let output = run_bin(
        "predict",
        // `--` ends the options: a text may start with `--`.
        &[&["--checkpoint", path_str(checkpoint), "--"], texts].concat(),
    );
    assert_ok(&output, "predict");
    predicted_probs(&output)
}

/// `predict` output lines' probabilities, in the tiny config's label order.
pub fn predicted_probs(output: &Output) -> Vec<Vec<f64>> {
    text(&output.stdout)
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            ["needs_docs", "needs_test", "needs_review"]
                .iter()
                .map(|l| row["probs"][l].as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// The largest absolute difference between two rows of probabilities.
pub fn max_gap(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Every tensor of a safetensors file, on the CPU.
pub fn load_tensors(path: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tensor's f32 values, flattened.
pub fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// `train --resume FROM --out OUT`, which must succeed: a run continued from a checkpoint.
pub fn resume_into(from: &Path, out: &Path) {
    let output = run_bin(
        "train",
        &[
            "--resume",
            path_str(from),
            "--out",
            path_str(out),
            "--quiet",
        ],
    );
    assert_ok(&output, "resumed train");
}

/// Asserts that the weights and AdamW moments in `resumed`'s `last/` are bitwise those of
/// `straight`'s.
pub fn same_last_files(straight: &Path, resumed: &Path) {
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let read = |run: &Path| std::fs::read(run.join("last").join(file)).unwrap();
        assert!(
            read(straight) == read(resumed),
            "{file} of {} differs from the uninterrupted run's",
            resumed.display()
        );
    }
}

/// Macro-F1 over `labels` classes of (truth, prediction) id pairs: a class never right scores 0.
pub fn macro_f1(pairs: &[(usize, usize)], labels: usize) -> f64 {
    let f1 = |c: usize| {
        let right = pairs.iter().filter(|&&(t, p)| t == c && p == c).count() as f64;
        let wrong = pairs.iter().filter(|&&(t, p)| (t == c) != (p == c)).count() as f64;
        if right == 0.0 {
            0.0
        } else {
            2.0 * right / (2.0 * right + wrong)
        }
    };
    (0..labels).map(f1).sum::<f64>() / labels as f64
}

/// The index of the largest value (the first of equals).
pub fn argmax(values: &[f64]) -> usize {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}

/// Weights PyTorch updated in a reference step (`tests/reference/*_step.json`): flat indices into
/// a variable and their values after the step.
#[derive(serde::Deserialize)]
pub struct Probe {
    pub flat_index: Vec<usize>,
    pub after: Vec<f32>,
}

/// One reference step's AdamW settings (clipping at `max_grad_norm`, decay but on biases and
/// layer norms) and PyTorch's results: the loss before and after, the pre-clip gradient norm and
/// probed weights.
#[derive(serde::Deserialize)]
pub struct Step {
    pub lr: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub max_grad_norm: f64,
    pub loss_before: f32,
    pub grad_norm: f32,
    pub loss_after: f32,
    pub probes: std::collections::HashMap<String, Probe>,
}

/// A `(rows, width)` u32 tensor of equal-length rows (token ids, masks).
pub fn id_matrix(rows: &[Vec<u32>]) -> candle_core::Tensor {
    candle_core::Tensor::from_vec(
        rows.concat(),
        (rows.len(), rows[0].len()),
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

/// Asserts every probed weight of `varmap` is within `tolerance` of PyTorch's value after the
/// step.
pub fn assert_probes(
    varmap: &candle_nn::VarMap,
    probes: &std::collections::HashMap<String, Probe>,
    tolerance: f32,
) {
    let vars: std::collections::HashMap<String, Vec<f32>> = wick_model::weights::named_vars(varmap)
        .into_iter()
        .map(|(n, v)| (n, values(&v.as_tensor().flatten_all().unwrap())))
        .collect();
    for (name, probe) in probes {
        let values = vars
            .get(name)
            .unwrap_or_else(|| panic!("the model has no variable {name}"));
        for (&index, &expected) in probe.flat_index.iter().zip(&probe.after) {
            let got = values[index];
            assert!(
                (got - expected).abs() < tolerance,
                "{name}[{index}] after the step: {got} vs PyTorch {expected}"
            );
        }
    }
}

/// A reporter that requests a stop from inside a training loop when it reports step `at`.
pub struct StopAt {
    pub at: usize,
    pub flag: wick_trainer::stop::StopFlag,
}

impl wick_trainer::fit::Reporter for StopAt {
    fn step(&mut self, progress: &wick_trainer::fit::Progress) {
        if progress.step == self.at {
            self.flag.request();
        }
    }
}

/// A single-label f32 CPU classifier of `model`'s shape with three labels, no dropout and its
/// pretrained encoder weights (the head left at its seeded init).
pub fn pretrained_classifier(
    model: &wick_model::hub::ResolvedModel,
) -> (
    candle_nn::VarMap,
    wick_model::Classifier,
    wick_model::BertConfig,
) {
    let config = wick_model::BertConfig::from_file(&model.config).unwrap();
    let (varmap, classifier) = wick_model::Classifier::build(
        &config,
        3,
        wick_model::Task::SingleLabel,
        0.0,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
        0,
    )
    .unwrap();
    wick_model::weights::load_safetensors(&varmap, &model.weights, false).unwrap();
    (varmap, classifier, config)
}

/// The step a checkpoint directory saved (its `trainer_state.json`).
pub fn saved_step(checkpoint: &Path) -> u64 {
    let state = std::fs::read_to_string(checkpoint.join("trainer_state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    state["state"]["step"].as_u64().unwrap()
}
