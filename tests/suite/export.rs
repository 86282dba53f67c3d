//! `export`: a checkpoint as a sentence-transformers directory. The exported encoder and Dense
//! layer, put back into a wick checkpoint, predict what the original (calibrated) checkpoint
//! predicts; the layout is the one sentence-transformers reads (its loading is checked against
//! the real library by `scripts/check_export.py`, see the README).

use std::path::Path;

use super::common::{
    assert_fails_naming, assert_ok, checkpoint_probs, load_tensors, path_str, run_bin, text,
    train_tiny, values,
};

fn train(out: &Path, extra: &[&str]) {
    assert_ok(&train_tiny(out, extra), "train");
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn an_export_holds_the_checkpoint_as_sentence_transformers_modules() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &["eval.calibrate=true"]);
    let best = run.join("best");
    let state = json(&best.join("trainer_state.json"));
    let temperature = state["calibration"]["temperature"].as_f64().unwrap();
    assert!(temperature != 1.0);

    let out = dir.path().join("export");
    // A run directory means its best/, as for evaluate and predict.
    let output = run_bin(
        "export",
        &[
            "--checkpoint",
            path_str(&run),
            "--out",
            path_str(&out),
            "--json",
        ],
    );
    assert_ok(&output, "export");
    let report: serde_json::Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    assert_eq!(report["temperature_folded"].as_f64(), Some(temperature));
    let mut files: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "1_Pooling/config.json",
            "2_Dense/config.json",
            "2_Dense/model.safetensors",
            "README.md",
            "config.json",
            "model.safetensors",
            "modules.json",
            "sentence_bert_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "wick_export.json",
        ]
    );

    // Module order and classes; mean pooling; an identity Dense of hidden -> labels.
    let modules = json(&out.join("modules.json"));
    let classes: Vec<(&str, &str)> = modules
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["path"].as_str().unwrap(), m["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        classes,
        [
            ("", "sentence_transformers.models.Transformer"),
            ("1_Pooling", "sentence_transformers.models.Pooling"),
            ("2_Dense", "sentence_transformers.models.Dense"),
        ]
    );
    let pooling = json(&out.join("1_Pooling/config.json"));
    assert_eq!(pooling["pooling_mode_mean_tokens"], true);
    assert_eq!(pooling["pooling_mode_cls_token"], false);
    assert_eq!(pooling["word_embedding_dimension"], 32);
    let dense = json(&out.join("2_Dense/config.json"));
    assert_eq!(
        (&dense["in_features"], &dense["out_features"]),
        (&serde_json::json!(32), &serde_json::json!(3))
    );
    assert_eq!(
        dense["activation_function"],
        "torch.nn.modules.linear.Identity"
    );
    assert_eq!(
        json(&out.join("sentence_bert_config.json"))["max_seq_length"],
        32
    );
    let config = json(&out.join("config.json"));
    assert_eq!(config["model_type"], "bert");
    assert_eq!(config["architectures"], serde_json::json!(["BertModel"]));
    assert_eq!(config["hidden_act"], "gelu");
    assert_eq!(config["id2label"]["1"], "needs_test");
    assert_eq!(config["label2id"]["needs_review"], 2);
    let tokenizer_config = json(&out.join("tokenizer_config.json"));
    assert_eq!(tokenizer_config["tokenizer_class"], "BertTokenizer");
    assert_eq!(tokenizer_config["pad_token"], "[PAD]");
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(best.join("tokenizer.json")).unwrap()
    );
    let info = json(&out.join("wick_export.json"));
    assert_eq!(
        info["labels"],
        serde_json::json!(["needs_docs", "needs_test", "needs_review"])
    );
    assert_eq!(info["task"], "single_label");
    // Head truncation is sentence-transformers' own: its standard module, no code of ours.
    assert_eq!(info["truncation_module"], false);
    assert!(!out.join("wick_transformer.py").exists());

    // Both weight files carry PyTorch's header metadata, which older transformers require.
    for file in ["model.safetensors", "2_Dense/model.safetensors"] {
        let bytes = std::fs::read(out.join(file)).unwrap();
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let format = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format").cloned());
        assert_eq!(format.as_deref(), Some("pt"), "{file}");
    }

    // The encoder bitwise; the head divided by the temperature.
    let checkpoint = load_tensors(&best.join("model.safetensors"));
    let encoder = load_tensors(&out.join("model.safetensors"));
    assert_eq!(encoder.len(), checkpoint.len() - 2);
    assert_eq!(
        report["encoder_tensors"].as_u64(),
        Some(encoder.len() as u64)
    );
    for (name, tensor) in &encoder {
        assert_eq!(values(tensor), values(&checkpoint[name]), "{name}");
    }
    let head = load_tensors(&out.join("2_Dense/model.safetensors"));
    for (exported, original) in [
        ("linear.weight", "classifier.weight"),
        ("linear.bias", "classifier.bias"),
    ] {
        assert_eq!(head[exported].dims(), checkpoint[original].dims());
        for (a, b) in values(&head[exported])
            .iter()
            .zip(values(&checkpoint[original]))
        {
            let expected = f64::from(b) / temperature;
            assert!(
                (f64::from(*a) - expected).abs() <= 1e-6 * expected.abs().max(1e-3),
                "{exported}: {a} vs {expected}"
            );
        }
    }

    // Put back together from the export alone (its config.json, its encoder, its Dense layer as
    // the head, no temperature), the classifier predicts the calibrated probabilities.
    let rebuilt = dir.path().join("rebuilt");
    std::fs::create_dir(&rebuilt).unwrap();
    for name in ["config.toml", "tokenizer.json"] {
        std::fs::copy(best.join(name), rebuilt.join(name)).unwrap();
    }
    std::fs::copy(out.join("config.json"), rebuilt.join("config.json")).unwrap();
    let mut uncalibrated = state.clone();
    uncalibrated.as_object_mut().unwrap().remove("calibration");
    std::fs::write(rebuilt.join("trainer_state.json"), uncalibrated.to_string()).unwrap();
    let mut tensors = encoder;
    tensors.insert("classifier.weight".into(), head["linear.weight"].clone());
    tensors.insert("classifier.bias".into(), head["linear.bias"].clone());
    candle_core::safetensors::save(&tensors, rebuilt.join("model.safetensors")).unwrap();
    let texts = ["the README is wrong", "add a test for the parser", "ptal"];
    let original = checkpoint_probs(&best, &texts);
    let from_export = checkpoint_probs(&rebuilt, &texts);
    let raw = {
        // Sanity: without the temperature the checkpoint's probabilities differ visibly, so the
        // agreement above is the folding's doing.
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        for entry in std::fs::read_dir(&best).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), plain.join(entry.file_name())).unwrap();
        }
        std::fs::write(plain.join("trainer_state.json"), uncalibrated.to_string()).unwrap();
        checkpoint_probs(&plain, &texts)
    };
    for (a, b) in original.iter().zip(&from_export) {
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
    let largest_change = original
        .iter()
        .flatten()
        .zip(raw.iter().flatten())
        .map(|(p, s)| (p - s).abs())
        .fold(0.0, f64::max);
    assert!(largest_change > 1e-3, "{original:?} vs raw {raw:?}");

    // --raw-logits leaves the head as it is and says so.
    let raw_out = dir.path().join("raw-export");
    let output = run_bin(
        "export",
        &[
            "--checkpoint",
            path_str(&best),
            "--out",
            path_str(&raw_out),
            "--raw-logits",
        ],
    );
    assert_ok(&output, "export --raw-logits");
    assert!(
        text(&output.stderr).contains("was not folded in"),
        "{}",
        text(&output.stderr)
    );
    let head = load_tensors(&raw_out.join("2_Dense/model.safetensors"));
    assert_eq!(
        values(&head["linear.weight"]),
        values(&checkpoint["classifier.weight"])
    );
    assert_eq!(
        values(&head["linear.bias"]),
        values(&checkpoint["classifier.bias"])
    );
}

#[test]
fn export_refuses_to_overwrite_or_to_write_into_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(
        &run,
        &["data.truncation=\"head_tail\"", "data.head_tokens=8"],
    );
    let best = run.join("best");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let args = ["--checkpoint", path_str(&best), "--out", path_str(&out)];
    assert_fails_naming(
        &run_bin("export", &args),
        &["out", "not empty", "--overwrite"],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );

    // --overwrite deletes the directory, so it replaces only an earlier export.
    let overwrite = [&args[..], &["--overwrite"]].concat();
    assert_fails_naming(
        &run_bin("export", &overwrite),
        &["out", "wick_export.json", "not an earlier export"],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    assert_ok(&run_bin("export", &args), "export into an empty directory");
    let first = std::fs::read(out.join("2_Dense/model.safetensors")).unwrap();
    assert_fails_naming(&run_bin("export", &args), &["not empty", "--overwrite"]);
    let output = run_bin("export", &overwrite);
    assert_ok(&output, "export --overwrite over an earlier export");
    assert_eq!(
        std::fs::read(out.join("2_Dense/model.safetensors")).unwrap(),
        first
    );
    assert!(!dir.path().join(".out.tmp").exists() && !dir.path().join(".out.old").exists());
    // sentence-transformers' own module keeps the first tokens of a long text: the export's
    // first module is wick's, which keeps the first 8 and the last ones as training did.
    assert!(
        text(&output.stdout).contains("wick_transformer.py"),
        "{}",
        text(&output.stdout)
    );
    assert!(out.join("wick_transformer.py").is_file());
    let modules = json(&out.join("modules.json"));
    assert_eq!(modules[0]["type"], "wick_transformer.WickTransformer");
    assert_eq!(modules[1]["type"], "sentence_transformers.models.Pooling");
    let sentence_config = json(&out.join("sentence_bert_config.json"));
    assert_eq!(
        sentence_config["wick_truncation"],
        serde_json::json!({"max_len": 32, "head": 8})
    );
    assert_eq!(
        json(&out.join("wick_export.json"))["truncation_module"],
        true
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("trust_remote_code=True"), "{card}");
    assert!(
        card.contains("the first 8 tokens and the last ones"),
        "{card}"
    );

    for into in [best.clone(), run.clone(), best.join("export")] {
        let output = run_bin(
            "export",
            &[
                "--checkpoint",
                path_str(&best),
                "--out",
                path_str(&into),
                "--overwrite",
            ],
        );
        assert_fails_naming(&output, &["the checkpoint being exported"]);
        assert!(!best.join("export").exists());
    }
    assert!(best.join("model.safetensors").is_file());
    let missing = dir.path().join("nothing");
    let output = run_bin(
        "export",
        &[
            "--checkpoint",
            path_str(&missing),
            "--out",
            path_str(&dir.path().join("o2")),
        ],
    );
    assert_fails_naming(&output, &["nothing", "not a directory"]);
}
