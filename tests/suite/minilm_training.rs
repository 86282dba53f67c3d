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

/// Trains MiniLM for two steps on the tiny data and returns (changed, unchanged) tensor names.
fn changed_tensors(extra: &[&str]) -> (Vec<String>, Vec<String>) {
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
    let trained = load(&run.join("last/model.safetensors"));
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for (name, after) in trained {
        let moved = match pretrained.get(&name) {
            Some(before) => {
                (&after - before)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            }
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
