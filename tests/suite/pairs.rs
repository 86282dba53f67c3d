//! Text pairs (`data.pair_fields`): the encoding and the encoder's pooled output against
//! transformers' (`tokenizer(text, text_pair)` with `longest_first` truncation, the segment ids
//! given to the model; MiniLM and MPNet's real weights and a tiny random RoBERTa), and the
//! commands end to end on a checkpoint trained on pairs.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tempfile::TempDir;
use wick_model::hub::{resolve, ModelSource};

use super::common::{
    assert_fails_naming, assert_ok, explained, max_gap, path_str, predicted_probs,
    pretrained_classifier, repo_root, run_bin, run_with_stdin, text, train_tiny,
};

#[derive(Deserialize)]
struct Case {
    text: String,
    text_pair: String,
    max_len: usize,
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    pooled: Vec<f32>,
}

fn reference(model: &str) -> Vec<Case> {
    let path = repo_root().join("tests/reference/pair_pooled.json");
    let mut all: std::collections::HashMap<String, Vec<Case>> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all.remove(model).unwrap()
}

/// Each case's ids and segment ids as wick encodes the pair at the case's `max_len`, then the
/// pooled output of all of them in one padded batch, on the fused path and on primitive ops.
fn pairs_match_transformers(source: ModelSource, name: &str, setup: &str) {
    let model = resolve(&source).unwrap_or_else(|e| panic!("{e}\nrun `{setup}` first"));
    let cases = reference(name);
    let mut rows = Vec::new();
    for case in &cases {
        let tokenizer =
            wick_data::TextTokenizer::from_file(&model.tokenizer, case.max_len).unwrap();
        let encoding = tokenizer
            .encode_pairs(&[(&case.text, Some(&case.text_pair))])
            .unwrap()
            .remove(0);
        let what = format!("{name}: {:?} + {:?}", case.text, case.text_pair);
        assert_eq!(encoding.ids, case.input_ids, "{what}");
        assert_eq!(encoding.type_ids, case.token_type_ids, "{what}");
        rows.push(encoding);
    }
    let (_varmap, classifier, config) = pretrained_classifier(&model);
    let width = rows.iter().map(|r| r.ids.len()).max().unwrap();
    let grid = |f: &dyn Fn(&wick_data::Encoding, usize) -> u32| {
        let values: Vec<u32> = rows
            .iter()
            .flat_map(|r| (0..width).map(move |i| f(r, i)))
            .collect();
        Tensor::from_vec(values, (rows.len(), width), &Device::Cpu).unwrap()
    };
    let pad = config.pad_token_id as u32;
    let ids = grid(&|r, i| r.ids.get(i).copied().unwrap_or(pad));
    let types = grid(&|r, i| r.type_ids.get(i).copied().unwrap_or(0));
    let mask = grid(&|r, i| u32::from(i < r.ids.len()));
    let expected: Vec<f32> = cases.iter().flat_map(|c| c.pooled.clone()).collect();
    for fused in [true, false] {
        let pooled = if fused {
            classifier.pooled(&ids, &types, &mask, false).unwrap()
        } else {
            wick_model::fused::without_fused(|| {
                classifier.pooled(&ids, &types, &mask, false).unwrap()
            })
        };
        let ours = pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gap = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            gap < 1e-4,
            "{name} (fused {fused}): max |ours - transformers| = {gap}"
        );
    }
}

/// BERT: `[CLS] a [SEP] b [SEP]`, the second text's segment 1 reading the type table's row 1.
#[test]
fn minilm_pairs_match_transformers() {
    pairs_match_transformers(
        ModelSource::from_id("sentence-transformers/all-MiniLM-L6-v2"),
        "minilm",
        "make model",
    );
}

/// MPNet: `<s> a </s></s> b </s>`, no segment table.
#[test]
fn mpnet_pairs_match_transformers() {
    pairs_match_transformers(
        ModelSource::from_id("sentence-transformers/all-mpnet-base-v2"),
        "mpnet",
        "make model-mpnet",
    );
}

/// RoBERTa: one segment row, and every segment id 0.
#[test]
fn roberta_pairs_match_transformers() {
    pairs_match_transformers(
        ModelSource::from_path(repo_root().join("tests/reference/roberta_tiny")),
        "roberta_tiny",
        "python tests/reference/make_reference.py --tiny roberta",
    );
}

/// The tiny fixtures as pairs: each text's first three words as `title`, the rest as `body`.
pub(super) fn pair_file(from: &Path, to: &Path) {
    let lines: Vec<String> = std::fs::read_to_string(from)
        .unwrap()
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let words: Vec<&str> = row["text"].as_str().unwrap().split(' ').collect();
            let (title, body) = words.split_at(3.min(words.len()));
            serde_json::json!({"title": title.join(" "), "body": body.join(" "), "label": row["label"]})
                .to_string()
        })
        .collect();
    std::fs::write(to, lines.join("\n") + "\n").unwrap();
}

/// A checkpoint trained on pairs: `predict` reads a file's pairs and stdin's `text` and
/// `text_pair` alike, and refuses texts given as arguments; `explain` scores the words of both
/// texts and they add up; `export` refuses it; the two texts are not the joined single text.
#[test]
fn a_checkpoint_of_pairs_predicts_and_explains_pairs() {
    let dir = TempDir::new().unwrap();
    let fixtures = repo_root().join("tests/fixtures/tiny");
    let (train, valid) = (
        dir.path().join("train.jsonl"),
        dir.path().join("valid.jsonl"),
    );
    pair_file(&fixtures.join("train.jsonl"), &train);
    pair_file(&fixtures.join("valid.jsonl"), &valid);
    let out = dir.path().join("run");
    let output = train_tiny(
        &out,
        &[
            &format!("data.train={:?}", path_str(&train)),
            &format!("data.valid={:?}", path_str(&valid)),
            "data.text_fields=[\"title\"]",
            "data.pair_fields=[\"body\"]",
        ],
    );
    assert_ok(&output, "train on pairs");
    let best = out.join("best");
    let best = path_str(&best);

    let from_file = run_bin(
        "predict",
        &["--checkpoint", best, "--data", path_str(&valid)],
    );
    assert_ok(&from_file, "predict --data");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&valid)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let field = |i: usize, key: &str| rows[i][key].as_str().unwrap().to_string();
    // Each row as a stdin record of `make(title, body)`.
    let stdin_of = |make: &dyn Fn(String, String) -> serde_json::Value| -> String {
        (0..rows.len())
            .map(|i| make(field(i, "title"), field(i, "body")).to_string() + "\n")
            .collect()
    };
    let predict_stdin = |input: String, what: &str| {
        let output = run_with_stdin(
            env!("CARGO_BIN_EXE_predict"),
            &["--checkpoint", best],
            input.as_bytes(),
        );
        assert_ok(&output, what);
        predicted_probs(&output)
    };
    let a = predicted_probs(&from_file);
    let b = predict_stdin(
        stdin_of(&|t, p| serde_json::json!({"text": t, "text_pair": p})),
        "predict from stdin",
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(max_gap(x, y) < 1e-6, "{x:?} vs {y:?}");
    }
    // Joined into one text, a pair reads otherwise: the model was given both segments.
    let single = predict_stdin(
        stdin_of(&|t, p| serde_json::json!({"text": format!("{t} {p}"), "text_pair": ""})),
        "predict joined texts",
    );
    let gap = a
        .iter()
        .zip(&single)
        .map(|(x, y)| max_gap(x, y))
        .fold(0.0, f64::max);
    assert!(gap > 1e-4, "pairs and joined texts predicted alike ({gap})");

    // Texts as arguments take their second texts from --pair, one each, in order.
    let (t0, p0, t1, p1) = (
        field(0, "title"),
        field(0, "body"),
        field(1, "title"),
        field(1, "body"),
    );
    let argued = run_bin(
        "predict",
        &[
            "--checkpoint",
            best,
            "--pair",
            &p0,
            "--pair",
            &p1,
            "--",
            &t0,
            &t1,
        ],
    );
    assert_ok(&argued, "predict with --pair");
    for (x, y) in predicted_probs(&argued).iter().zip(&a) {
        assert!(max_gap(x, y) < 1e-6, "{x:?} vs {y:?}");
    }
    assert_fails_naming(
        &run_bin("predict", &["--checkpoint", best, "--", "a text"]),
        &["text pairs", "--pair", "text_pair"],
    );
    assert_fails_naming(
        &run_bin(
            "predict",
            &["--checkpoint", best, "--pair", "x", "--", "a", "b"],
        ),
        &["--pair given 1 time(s) for 2 text(s)"],
    );
    let export = dir.path().join("export");
    assert_fails_naming(
        &run_bin(
            "export",
            &["--checkpoint", best, "--out", path_str(&export)],
        ),
        &["data.pair_fields", "single texts"],
    );

    let input = dir.path().join("explain.jsonl");
    std::fs::write(
        &input,
        "{\"title\": \"README install section\", \"body\": \"still mentions python 3.7\"}\n",
    )
    .unwrap();
    let records = explained(&[
        "--checkpoint",
        best,
        "--data",
        path_str(&input),
        "--steps",
        "64",
    ]);
    let record = &records[0];
    let words = record["words"].as_array().unwrap();
    let of = |segment: u64| -> Vec<&str> {
        words
            .iter()
            .filter(|w| w["segment"].as_u64() == Some(segment))
            .map(|w| w["word"].as_str().unwrap())
            .collect()
    };
    assert_eq!(of(0), ["README", "install", "section"]);
    assert_eq!(of(1), ["still", "mentions", "python", "3.7"]);
    let sum: f64 = words.iter().map(|w| w["score"].as_f64().unwrap()).sum();
    let change = record["prob"].as_f64().unwrap() - record["baseline_prob"].as_f64().unwrap();
    assert!(
        (sum - change - record["delta"].as_f64().unwrap()).abs() < 1e-9,
        "{record}"
    );
    assert!(record["delta"].as_f64().unwrap().abs() < 0.05 * change.abs().max(0.01) + 1e-12);
    // F(x) of the integral is predict's probability: the pair reached the model as training
    // gave it (segment ids included).
    let label = record["explained"].as_str().unwrap();
    let predicted = record["probs"][label].as_f64().unwrap();
    assert!(
        (record["prob"].as_f64().unwrap() - predicted).abs() < 1e-5,
        "{record}"
    );
    // The segment ids reach the model: the pair's tokens read segment 1 (BERT).
    let tokens = record["tokens"].as_array().unwrap();
    assert!(tokens.iter().any(|t| t["segment"] == 1), "{record}");
    let shown = run_bin(
        "explain",
        &["--checkpoint", best, "--data", path_str(&input)],
    );
    assert_ok(&shown, "explain (text)");
    assert!(
        text(&shown.stdout).contains("(pair)"),
        "{}",
        text(&shown.stdout)
    );
}

/// A tokenizer that numbers a pair's second text 1 (BERT's) beside a model of one segment row
/// (RoBERTa's `type_vocab_size` is 1) is refused before anything runs; with two rows, with no
/// segment table (MPNet) or with single texts it is accepted.
#[test]
fn segment_ids_past_the_models_table_are_refused() {
    let model = resolve(&ModelSource::from_id(
        "sentence-transformers/all-MiniLM-L6-v2",
    ))
    .unwrap_or_else(|e| panic!("{e}\nrun `make model` first"));
    let tokenizer = wick_data::TextTokenizer::from_file(&model.tokenizer, 32).unwrap();
    let mut data = wick_data::DataConfig::new("train.jsonl");
    data.text_fields = vec!["title".into()];
    data.pair_fields = vec!["body".into()];
    let shaped = |model_type, type_vocab_size| wick_model::BertConfig {
        model_type,
        type_vocab_size,
        ..wick_model::BertConfig::tiny(100)
    };
    let check = |bert: &wick_model::BertConfig, data: &wick_data::DataConfig| {
        wick_trainer::infer::check_pairs(&tokenizer, &model.tokenizer, bert, data)
    };
    let err = check(&shaped(wick_model::ModelType::Roberta, 1), &data)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data.pair_fields")
            && err.contains("segment 1")
            && err.contains("type_vocab_size"),
        "{err}"
    );
    assert!(check(&shaped(wick_model::ModelType::Bert, 2), &data).is_ok());
    assert!(check(&shaped(wick_model::ModelType::Mpnet, 1), &data).is_ok());
    data.pair_fields.clear();
    assert!(check(&shaped(wick_model::ModelType::Roberta, 1), &data).is_ok());
}
