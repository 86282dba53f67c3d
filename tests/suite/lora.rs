//! LoRA end to end on the tiny model: `train` with `[model.lora]` moves only the adapters and the
//! head, `evaluate` and `predict` read the checkpoint, `export` writes a plain encoder with the
//! adapters merged that predicts what the checkpoint predicts, a resumed run ends bitwise as an
//! uninterrupted one, and bad settings are refused by key.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use wick_model::lora::is_lora;
use wick_model::weights::{init_all, named_vars};
use wick_model::{BertConfig, Classifier, LoraConfig, LoraTarget, Task};

use super::common::{
    assert_fails_naming, assert_ok, checkpoint_probs, load_tensors, path_str, resume_into, run_bin,
    same_last_files, text, train_tiny, values,
};

const LORA: [&str; 3] = [
    "model.lora.rank=4",
    "model.lora.alpha=16",
    "model.lora.targets=[\"query\", \"value\", \"output\"]",
];

/// The tiny run's starting weights: its model with LoRA, seeded as `train` seeds it.
fn initial_weights(checkpoint: &Path) -> HashMap<String, Tensor> {
    let config = BertConfig::from_file(&checkpoint.join("config.json")).unwrap();
    let lora = LoraConfig {
        rank: 4,
        alpha: 16.0,
        targets: vec![LoraTarget::Query, LoraTarget::Value, LoraTarget::Output],
    };
    let (varmap, _) = Classifier::build_with_lora(
        &config,
        3,
        Task::SingleLabel,
        0.0,
        DType::F32,
        &Device::Cpu,
        7,
        &lora,
    )
    .unwrap();
    // configs/tiny.toml: random init with seed 7.
    init_all(&varmap, config.initializer_range, 7).unwrap();
    named_vars(&varmap)
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().clone()))
        .collect()
}

#[test]
fn a_lora_run_trains_only_its_adapters_and_exports_them_merged() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = run_bin(
        "train",
        &[
            &["--config", "configs/tiny.toml", "--out", path_str(&run)][..],
            &LORA.iter().flat_map(|s| ["--set", s]).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    assert_ok(&output, "train with LoRA");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("LoRA: rank 4 adapters (alpha 16, scale 4) on query, value, output"),
        "{stderr}"
    );

    // Only the adapters and the head moved; every adapter did (B from 0, A from its init).
    let before = initial_weights(&run.join("last"));
    let after = load_tensors(&run.join("last/model.safetensors"));
    assert_eq!(after.len(), before.len());
    let adapters = after.keys().filter(|name| is_lora(name)).count();
    assert_eq!(adapters, 2 * 3 * 2, "2 layers x 3 targets x (A, B)");
    for (name, trained) in &after {
        let moved = values(trained) != values(&before[name]);
        let trains = is_lora(name) || name.starts_with("classifier.");
        assert_eq!(moved, trains, "{name}: moved {moved}");
    }

    // The trainable count is the adapters' and the head's: per layer rank 4 x (32 + 32) for
    // query and value each, 4 x (64 + 32) for output; 3 x 32 + 3 for the head.
    assert!(
        stderr.contains(&format!("{} trainable", 2 * (256 + 256 + 384) + 99)),
        "{stderr}"
    );
    let evaluate = run_bin(
        "evaluate",
        &["--checkpoint", path_str(&run.join("best")), "--json"],
    );
    assert_ok(&evaluate, "evaluate");

    // The export is a plain encoder (no adapter left, each adapted weight merged) that, put
    // back into a checkpoint without LoRA, predicts what the LoRA checkpoint predicts.
    let out = dir.path().join("export");
    let output = run_bin(
        "export",
        &["--checkpoint", path_str(&run), "--out", path_str(&out)],
    );
    assert_ok(&output, "export");
    assert!(
        text(&output.stderr)
            .contains("LoRA adapters (rank 4, alpha 16, on query, value, output) are merged"),
        "{}",
        text(&output.stderr)
    );
    let best = run.join("best");
    let checkpoint = load_tensors(&best.join("model.safetensors"));
    let encoder = load_tensors(&out.join("model.safetensors"));
    assert!(encoder.keys().all(|name| !is_lora(name)));
    assert_eq!(encoder.len(), checkpoint.len() - adapters - 2);
    let query = "encoder.layer.1.attention.self.query.weight";
    let key = "encoder.layer.1.attention.self.key.weight";
    assert_ne!(values(&encoder[query]), values(&checkpoint[query]));
    assert_eq!(values(&encoder[key]), values(&checkpoint[key]));

    let rebuilt = dir.path().join("rebuilt");
    std::fs::create_dir(&rebuilt).unwrap();
    for name in ["tokenizer.json", "config.json", "trainer_state.json"] {
        std::fs::copy(best.join(name), rebuilt.join(name)).unwrap();
    }
    let config = std::fs::read_to_string(best.join("config.toml")).unwrap();
    assert!(config.contains("rank = 4"), "{config}");
    std::fs::write(
        rebuilt.join("config.toml"),
        config.replace("rank = 4", "rank = 0"),
    )
    .unwrap();
    let mut tensors = encoder;
    for name in ["classifier.weight", "classifier.bias"] {
        tensors.insert(name.into(), checkpoint[name].clone());
    }
    candle_core::safetensors::save(&tensors, rebuilt.join("model.safetensors")).unwrap();
    let texts = ["the README is wrong", "add a test for the parser", "ptal"];
    let (adapted, merged) = (
        checkpoint_probs(&best, &texts),
        checkpoint_probs(&rebuilt, &texts),
    );
    for (a, b) in adapted.iter().zip(&merged) {
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    // The checkpoint as the pretrained encoder of a new run (`model.path`) would lose its
    // adapters: refused, naming the file.
    let config = dir.path().join("from_checkpoint.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\ntrain = \"tests/fixtures/tiny/train.jsonl\"\n\
             labels = [\"needs_docs\", \"needs_test\", \"needs_review\"]\nmax_len = 32\n\
             [model]\npath = \"{}\"\n",
            best.display()
        ),
    )
    .unwrap();
    let output = run_bin(
        "train",
        &[
            "--config",
            path_str(&config),
            "--out",
            path_str(&dir.path().join("again")),
        ],
    );
    assert_fails_naming(
        &output,
        &[
            "model.safetensors",
            "holds LoRA adapters",
            "lora_A.weight",
            "`export` it",
        ],
    );
}

#[test]
fn bad_lora_settings_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, needles) in [
        (
            vec!["model.lora.rank=4", "train.freeze_encoder=true"],
            vec!["model.lora.rank", "train.freeze_encoder"],
        ),
        (
            vec!["model.lora.rank=4", "model.lora.alpha=0"],
            vec!["model.lora.alpha", "must be > 0"],
        ),
        (
            vec!["model.lora.rank=4", "model.lora.targets=[]"],
            vec!["model.lora.targets", "query, key, value, attention_output"],
        ),
        (
            vec![
                "model.lora.rank=4",
                "model.lora.targets=[\"query\", \"query\"]",
            ],
            vec!["model.lora.targets", "`query` twice"],
        ),
        (
            vec!["model.lora.targets=[\"querry\"]"],
            vec!["querry", "attention_output"],
        ),
    ] {
        let output = train_tiny(&dir.path().join("run"), &extra);
        assert_fails_naming(&output, &needles);
    }
}

/// A LoRA run resumed from a middle checkpoint ends with bitwise the files of the run that was
/// never stopped; its optimizer state holds moments for the adapters and the head only.
#[test]
fn a_lora_run_resumes_exactly_with_moments_for_the_adapters_only() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let every_step = [
        "train.epochs=2",
        "train.checkpoint_every=1",
        "train.keep_last=8",
    ];
    assert_ok(
        &train_tiny(&straight, &[&LORA[..], &every_step[..]].concat()),
        "train with LoRA",
    );
    let state = load_tensors(&straight.join("last/optimizer.safetensors"));
    let moments: Vec<&String> = state
        .keys()
        .filter(|key| key.starts_with("exp_avg."))
        .collect();
    assert_eq!(moments.len(), 2 * 3 * 2 + 2, "{moments:?}");
    for key in moments {
        let name = key.trim_start_matches("exp_avg.");
        assert!(wick_model::weights::is_new(name), "{key}");
    }

    let resumed = dir.path().join("resumed");
    let from = straight.join("checkpoint-3");
    resume_into(&from, &resumed);
    same_last_files(&straight, &resumed);
}
