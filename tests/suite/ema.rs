//! `train.ema_decay`: the moving average of the weights, against the trained weights of a run
//! without one, its checkpoints, exact resume and its config errors (tiny config).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use super::common::{
    assert_fails_naming, assert_ok, load_tensors, path_str, resume_into, run_bin, same_last_files,
    text, train_tiny, values,
};

/// Two epochs of 4 steps, a checkpoint at every step, all of them kept.
const EVERY_STEP: [&str; 3] = [
    "train.epochs=2",
    "train.checkpoint_every=1",
    "train.keep_last=8",
];
const DECAY: f64 = 0.6;

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    train_tiny(out, &[&EVERY_STEP[..], extra].concat())
}

/// The weights of `run`'s `checkpoint-<step>/`.
fn weights(run: &Path, step: usize) -> HashMap<String, Tensor> {
    load_tensors(&run.join(format!("checkpoint-{step}/model.safetensors")))
}

/// The weight average leaves training as it was (the trained weights and AdamW moments of every
/// step are bitwise a plain run's), its checkpoints hold `sum_k decay^(n-k) w_k / sum_k
/// decay^(n-k)` over the trained weights `w_1..w_n`, evaluation scores the average, and a run
/// resumed from a middle checkpoint ends with bitwise the same files.
#[test]
fn weight_average_is_the_bias_corrected_mean_of_the_trained_weights_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    assert_ok(&train(&plain, &[]), "plain train");
    let averaged = dir.path().join("averaged");
    let decay = format!("train.ema_decay={DECAY}");
    assert_ok(&train(&averaged, &[&decay]), "averaged train");

    let steps = 8;
    let trained: Vec<HashMap<String, Tensor>> = (1..=steps).map(|k| weights(&plain, k)).collect();
    for n in 1..=steps {
        let state = load_tensors(&averaged.join(format!("checkpoint-{n}/optimizer.safetensors")));
        let plain_state =
            load_tensors(&plain.join(format!("checkpoint-{n}/optimizer.safetensors")));
        let average = weights(&averaged, n);
        assert_eq!(average.len(), trained[n - 1].len());
        for (name, w) in &trained[n - 1] {
            // The trained weights and the moments are the plain run's, bit for bit.
            assert_eq!(
                values(&state[&format!("online.{name}")]),
                values(w),
                "{name}"
            );
            for moment in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{moment}.{name}");
                assert_eq!(values(&state[&key]), values(&plain_state[&key]), "{key}");
            }
            // The average, from the plain run's weights.
            let mut expect = vec![0f64; w.elem_count()];
            let mut total = 0f64;
            for (k, step) in trained.iter().enumerate().take(n) {
                let weight = DECAY.powi((n - 1 - k) as i32);
                total += weight;
                for (e, v) in expect.iter_mut().zip(values(&step[name])) {
                    *e += weight * v as f64;
                }
            }
            let got = values(&average[name]);
            let worst = got
                .iter()
                .zip(&expect)
                .map(|(g, e)| (*g as f64 - e / total).abs())
                .fold(0f64, f64::max);
            assert!(worst < 1e-5, "step {n}, {name}: off by {worst}");
        }
        if n > 1 {
            let name = "classifier.weight";
            assert_ne!(
                values(&average[name]),
                values(&trained[n - 1][name]),
                "step {n}: the average is the trained weights"
            );
        }
    }

    // The epoch-end evaluation scored the average: `evaluate` on last/ gives its loss again.
    let metrics = std::fs::read_to_string(averaged.join("metrics.jsonl")).unwrap();
    let last_eval: serde_json::Value = metrics
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "eval")
        .unwrap();
    assert_eq!(last_eval["step"], 8);
    let output = run_bin(
        "evaluate",
        &[
            "--checkpoint",
            path_str(&averaged.join("last")),
            "--data",
            "tests/fixtures/tiny/valid.jsonl",
            "--json",
        ],
    );
    assert_ok(&output, "evaluate");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let (logged, scored) = (
        last_eval["loss"].as_f64().unwrap(),
        report["loss"].as_f64().unwrap(),
    );
    assert!((logged - scored).abs() < 1e-6, "{logged} vs {scored}");
    let output = run_bin(
        "evaluate",
        &[
            "--checkpoint",
            path_str(&averaged.join("last")),
            "--data",
            "tests/fixtures/tiny/valid.jsonl",
        ],
    );
    assert_ok(&output, "evaluate");
    let says = "weights are the moving average of training (train.ema_decay = 0.6)";
    assert!(
        text(&output.stdout).contains(says),
        "{}",
        text(&output.stdout)
    );

    // Resumed from step 3 into a fresh directory: the same last/ files, bit for bit.
    let resumed = dir.path().join("resumed");
    let from = averaged.join("checkpoint-3");
    resume_into(&from, &resumed);
    same_last_files(&averaged, &resumed);

    // A weight average cannot be turned off (or on) when resuming.
    let output = run_bin(
        "train",
        &[
            "--resume",
            path_str(&from),
            "--out",
            path_str(&dir.path().join("off")),
            "--set",
            "train.ema_decay=0",
            "--quiet",
        ],
    );
    assert_fails_naming(&output, &["train.ema_decay", "resuming"]);
    let output = run_bin(
        "train",
        &[
            "--resume",
            path_str(&plain.join("checkpoint-3")),
            "--out",
            path_str(&dir.path().join("on")),
            "--set",
            &decay,
            "--quiet",
        ],
    );
    assert_fails_naming(&output, &["train.ema_decay", "resuming"]);
}

#[test]
fn a_decay_outside_zero_to_one_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["1", "1.5", "-0.1", "nan"] {
        let output = train(
            &dir.path().join("run"),
            &[&format!("train.ema_decay={bad}")],
        );
        assert_fails_naming(&output, &["train.ema_decay", "[0, 1)"]);
    }
}
