//! Training the real pretrained MiniLM: every parameter moves (the whole encoder trains), and with
//! `freeze_encoder` only the head does.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use wick_model::hub::{resolve, ModelSource};
use wick_model::weights::canonical_name;

use super::common::{assert_ok, path_str, run_bin};

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (canonical_name(&k), v))
        .collect()
}

/// Trains MiniLM on the tiny data (two steps unless `extra` says otherwise) and returns the
/// pretrained tensors and the trained ones, by name.
fn train_minilm(extra: &[&str]) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = dir.path().join("minilm.toml");
    std::fs::write(
        &config,
        r#"
[data]
train = "tests/fixtures/tiny/train.jsonl"
labels = ["needs_docs", "needs_test", "needs_review"]
max_len = 32
[model]
id = "sentence-transformers/all-MiniLM-L6-v2"
[train]
max_steps = 2
batch_size = 4
lr = 1e-4
warmup_ratio = 0.0
keep_last = 0
[eval]
every_epoch = false
"#,
    )
    .unwrap();
    let mut args = vec![
        "--config",
        path_str(&config),
        "--out",
        path_str(&run),
        "--quiet",
    ];
    for set in extra {
        args.extend(["--set", set]);
    }
    assert_ok(&run_bin("train", &args), "train MiniLM");
    let pretrained = load(
        &resolve(&ModelSource::from_id(
            "sentence-transformers/all-MiniLM-L6-v2",
        ))
        .unwrap()
        .weights,
    );
    (pretrained, load(&run.join("last/model.safetensors")))
}

/// The largest change of one tensor in training.
fn largest_change(before: &Tensor, after: &Tensor) -> f32 {
    (after - before)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Trains MiniLM for two steps on the tiny data and returns (changed, unchanged) tensor names.
fn changed_tensors(extra: &[&str]) -> (Vec<String>, Vec<String>) {
    let (pretrained, trained) = train_minilm(extra);
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for (name, after) in trained {
        let moved = match pretrained.get(&name) {
            Some(before) => largest_change(before, &after) > 0.0,
            None => true, // the head is new
        };
        if moved {
            changed.push(name)
        } else {
            unchanged.push(name)
        }
    }
    changed.sort();
    unchanged.sort();
    (changed, unchanged)
}

#[test]
fn fine_tuning_minilm_moves_every_parameter() {
    let (changed, unchanged) = changed_tensors(&[]);
    assert!(
        unchanged.is_empty(),
        "tensors that did not train: {unchanged:?}"
    );
    assert!(changed.len() > 100, "only {} tensors", changed.len());
}

#[test]
fn freeze_encoder_moves_only_the_head() {
    let (changed, _) = changed_tensors(&["train.freeze_encoder=true"]);
    assert_eq!(
        changed,
        vec![
            "classifier.bias".to_string(),
            "classifier.weight".to_string()
        ]
    );
}

/// Layer-wise learning-rate decay on the real model. AdamW's first step moves each element by
/// `lr * g / (|g| + eps)` (bias-corrected moments from zero; no weight decay here), so the largest
/// move in a tensor is its learning rate: 1e-4 for MiniLM's top layer (5), times 0.7 per layer
/// down, 0.7^6 for the embeddings.
#[test]
fn layer_lr_decay_sets_each_layers_rate() {
    let (pretrained, trained) = train_minilm(&[
        "train.max_steps=1",
        "train.decay=\"constant\"",
        "train.weight_decay=0.0",
        "train.layer_lr_decay=0.7",
        "train.head_lr=1e-3",
    ]);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (name, after) in &trained {
        let Some(before) = pretrained.get(name) else {
            continue; // the head: fresh, so its move is not measured against pretrained values
        };
        let expected = match wick_trainer::optim::encoder_layer(name) {
            Some(layer) => 1e-4 * 0.7f64.powi(5 - layer as i32),
            None => 1e-4 * 0.7f64.powi(6),
        };
        let moved = largest_change(before, after) as f64;
        // The key bias shifts every score of a query by one constant, which the softmax
        // cancels: its gradient is zero up to rounding (far below eps), so it moves less.
        let key_bias = name.ends_with("attention.self.key.bias");
        let off = if key_bias {
            moved > expected * 1.02
        } else {
            (moved / expected - 1.0).abs() >= 0.02
        };
        if off {
            wrong.push(format!(
                "{name}: largest move {moved:e}, its rate {expected:e}"
            ));
        }
        checked += 1;
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(checked, trained.len() - 2, "every encoder tensor checked");
}
