//! `explain`: integrated gradients against Captum's `LayerIntegratedGradients` and occlusion
//! against PyTorch (and, for MiniLM, Captum's `FeatureAblation`), on MiniLM's real weights and a
//! tiny random RoBERTa whose positions follow the padding, and the binary end to
//! end: its probabilities are `predict`'s, its scores add up, an ensemble's scores are the mean of
//! its members', and bad options are refused by name.

use std::path::Path;

use candle_core::Device;
use serde::Deserialize;
use serde_json::{json, Value};
use tempfile::TempDir;
use wick_model::hub::{resolve, ModelSource};
use wick_model::weights::named_vars;
use wick_trainer::explain::{integrated_gradients, occlusion, Integration};

use super::common::{
    assert_fails_naming, assert_ok, checkpoint_probs, explained, path_str, pretrained_classifier,
    repo_root, run_bin, text, train_tiny,
};

#[derive(Deserialize)]
struct Reference {
    temperature: f64,
    pad_id: u32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<u32>,
    label: usize,
    steps: usize,
    attributions: Vec<f64>,
    delta: f64,
    prob: f64,
    baseline_prob: f64,
    occlusion: Vec<f64>,
}

#[test]
fn minilm_attributions_match_captum() {
    attributions_match_captum(
        ModelSource::from_id("sentence-transformers/all-MiniLM-L6-v2"),
        "",
        "make model",
    );
}

/// RoBERTa's positions are counted after the padding row: the baseline keeps the text's.
#[test]
fn roberta_attributions_match_captum() {
    attributions_match_captum(
        ModelSource::from_path(repo_root().join("tests/reference/roberta_tiny")),
        "roberta_",
        "python tests/reference/make_reference.py --tiny roberta",
    );
}

/// `{prefix}attributions.json` (tests/reference/make_attribution_reference.py) from the head in
/// `{prefix}attribution_head.safetensors`: wick's token ids, scores, probabilities and delta, and
/// its occlusion scores.
fn attributions_match_captum(source: ModelSource, prefix: &str, setup: &str) {
    let dir = repo_root().join("tests/reference");
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{prefix}attributions.json"))).unwrap(),
    )
    .unwrap();
    let model = resolve(&source).unwrap_or_else(|e| panic!("{e}\nrun `{setup}` first"));
    let tokenizer = wick_data::TextTokenizer::from_file(&model.tokenizer, 128).unwrap();
    assert_eq!(tokenizer.pad_id(), reference.pad_id);
    let (varmap, classifier, _) = pretrained_classifier(&model);
    let head = candle_core::safetensors::load(
        dir.join(format!("{prefix}attribution_head.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    for (name, var) in named_vars(&varmap) {
        if let Some(value) = head.get(&name) {
            var.set(value).unwrap();
        }
    }
    for case in &reference.cases {
        let what = format!("{:?}, {} steps", case.text, case.steps);
        let tokens = tokenizer.tokens(&case.text, None).unwrap().tokens;
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, case.input_ids, "{what}");
        // Five points a pass: the passes' gradients add up to one integral.
        let path = Integration {
            baseline_id: reference.pad_id,
            temperature: reference.temperature,
            steps: case.steps,
            batch: 5,
        };
        let (scores, prob, baseline) =
            integrated_gradients(&classifier, &Device::Cpu, &tokens, case.label, &path).unwrap();
        assert!(
            (prob - case.prob).abs() < 1e-5,
            "{what}: F(x) {prob} vs {}",
            case.prob
        );
        assert!(
            (baseline - case.baseline_prob).abs() < 1e-5,
            "{what}: F(x') {baseline} vs {}",
            case.baseline_prob
        );
        for (i, (ours, theirs)) in scores.iter().zip(&case.attributions).enumerate() {
            assert!(
                (ours - theirs).abs() < 1e-5,
                "{what}: token {i} ({}): {ours} vs Captum's {theirs}",
                tokens[i].piece
            );
            if tokens[i].span.is_none() {
                assert_eq!(*ours, 0.0, "{what}: special token {i} keeps its embedding");
            }
        }
        let delta = scores.iter().sum::<f64>() - (prob - baseline);
        assert!(
            (delta - case.delta).abs() < 2e-4,
            "{what}: delta {delta} vs {}",
            case.delta
        );

        // Occlusion, five occluded texts a pass: the same F(x) and F(x'), and each token's drop.
        let (occluded, prob, baseline) =
            occlusion(&classifier, &Device::Cpu, &tokens, case.label, &path).unwrap();
        assert!((prob - case.prob).abs() < 1e-5, "{what}: occlusion's F(x)");
        assert!(
            (baseline - case.baseline_prob).abs() < 1e-5,
            "{what}: occlusion's F(x')"
        );
        assert_eq!(occluded.len(), case.occlusion.len(), "{what}");
        for (i, (ours, theirs)) in occluded.iter().zip(&case.occlusion).enumerate() {
            assert!(
                (ours - theirs).abs() < 1e-5,
                "{what}: occlusion of token {i} ({}): {ours} vs {theirs}",
                tokens[i].piece
            );
        }
        assert!(
            occluded.iter().any(|s| s.abs() > 1e-3),
            "{what}: some token matters"
        );
    }
}

fn scores(line: &Value, key: &str) -> Vec<f64> {
    line[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["score"].as_f64().unwrap())
        .collect()
}

const LABELS: [&str; 3] = ["needs_docs", "needs_test", "needs_review"];
const TEXTS: [&str; 3] = [
    "Docs: explain --offline in the README",
    "CI flakes on macOS; add a regression test",
    "ptal <3, rebased",
];

#[test]
fn explain_gives_predicts_probabilities_and_scores_that_add_up() {
    let tmp = TempDir::new().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert_ok(&train_tiny(&a, &[]), "train a");
    assert_ok(&train_tiny(&b, &["train.seed=8"]), "train b");
    let predicted = checkpoint_probs(&a, &TEXTS);
    let lines = explained(
        &[
            &["--checkpoint", path_str(&a), "--steps", "200", "--"],
            &TEXTS[..],
        ]
        .concat(),
    );
    assert_eq!(lines.len(), 3);
    for ((line, text), probs) in lines.iter().zip(TEXTS).zip(&predicted) {
        assert_eq!(line["text"], text, "the input's fields pass through");
        let label = super::common::argmax(probs);
        assert_eq!(
            line["explained"], LABELS[label],
            "{text}: the most probable label"
        );
        let prob = line["prob"].as_f64().unwrap();
        assert!(
            (prob - probs[label]).abs() < 1e-5,
            "{text}: {prob} vs predict's {}",
            probs[label]
        );
        let tokens = scores(line, "tokens");
        let sum: f64 = tokens.iter().sum();
        let baseline = line["baseline_prob"].as_f64().unwrap();
        let delta = line["delta"].as_f64().unwrap();
        assert!(
            (delta - (sum - (prob - baseline))).abs() < 1e-9,
            "{text}: delta is the gap"
        );
        assert!(
            delta.abs() < 1e-3,
            "{text}: 200 steps converge, delta {delta}"
        );
        let words: f64 = scores(line, "words").iter().sum();
        assert!(
            (words - sum).abs() < 1e-9,
            "{text}: the words hold every token's score"
        );
        for word in line["words"].as_array().unwrap() {
            let (start, end) = (
                word["start"].as_u64().unwrap(),
                word["end"].as_u64().unwrap(),
            );
            assert_eq!(word["word"], text[start as usize..end as usize]);
        }
        let tokens = line["tokens"].as_array().unwrap();
        for edge in [&tokens[0], &tokens[tokens.len() - 1]] {
            assert_eq!(
                (edge["start"].is_null(), edge["score"].as_f64()),
                (true, Some(0.0))
            );
        }
        assert_eq!(line["truncated"], false);
    }

    // Steps double from 1 while the gap is over 1% of the change (up to 64); with tolerance 0
    // they stay as given.
    let doubling = [
        "--checkpoint",
        path_str(&a),
        "--steps",
        "1",
        "--tolerance",
        "0.01",
        "--max-steps",
        "64",
        "--",
    ];
    let lines = explained(&[&doubling[..], &TEXTS[..]].concat());
    assert!(
        lines.iter().any(|l| l["steps"].as_u64() > Some(1)),
        "one point is not enough"
    );
    for line in lines {
        let steps = line["steps"].as_u64().unwrap();
        assert!(steps.is_power_of_two() && steps <= 64, "{steps} steps");
        let change = line["prob"].as_f64().unwrap() - line["baseline_prob"].as_f64().unwrap();
        let gap = line["delta"].as_f64().unwrap().abs();
        assert!(
            steps == 64 || gap <= 0.01 * change.abs().max(0.01),
            "stopped at {steps} steps with a gap of {gap} for a change of {change}"
        );
    }
    let fixed = explained(&[
        "--checkpoint",
        path_str(&a),
        "--steps",
        "3",
        "--tolerance",
        "0",
        TEXTS[1],
    ]);
    assert_eq!(fixed[0]["steps"], 3);

    // Another label on request.
    let line = &explained(&[
        "--checkpoint",
        path_str(&a),
        "--label",
        "needs_test",
        TEXTS[0],
    ])[0];
    assert_eq!(line["explained"], "needs_test");
    assert!((line["prob"].as_f64().unwrap() - predicted[0][1]).abs() < 1e-5);

    // An ensemble's scores are the mean of its members' (its probability is their mean).
    let label = ["--label", "needs_docs"];
    let alone = |dir: &Path| {
        explained(
            &[
                &["--checkpoint", path_str(dir)],
                &label[..],
                &["--", TEXTS[1]],
            ]
            .concat(),
        )
        .remove(0)
    };
    let (one, two) = (alone(&a), alone(&b));
    let both = explained(
        &[
            &["--checkpoint", path_str(&a), "--checkpoint", path_str(&b)],
            &label[..],
            &["--", TEXTS[1]],
        ]
        .concat(),
    )
    .remove(0);
    for key in ["tokens", "words"] {
        let mean: Vec<f64> = scores(&one, key)
            .iter()
            .zip(scores(&two, key))
            .map(|(x, y)| (x + y) / 2.0)
            .collect();
        for (m, e) in mean.iter().zip(scores(&both, key)) {
            assert!((m - e).abs() < 1e-6, "{key}: {m} vs the ensemble's {e}");
        }
    }
    let mean_prob = (one["prob"].as_f64().unwrap() + two["prob"].as_f64().unwrap()) / 2.0;
    assert!((both["prob"].as_f64().unwrap() - mean_prob).abs() < 1e-6);

    // The text report and the HTML page.
    let page = tmp.path().join("why.html");
    let output = run_bin(
        "explain",
        &[
            "--checkpoint",
            path_str(&a),
            "--html",
            path_str(&page),
            "--",
            TEXTS[2],
        ],
    );
    assert_ok(&output, "explain --html");
    let report = text(&output.stdout);
    assert!(
        report.contains("scores sum to") && report.contains("for:"),
        "{report}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("&lt;3") && !html.contains("<3"),
        "the text is escaped"
    );
    assert_eq!(
        html.matches("<span").count(),
        3,
        "one span per word: {html}"
    );

    // A text over max_len (32 tokens here): flagged, and only the words the model read (its
    // head and tail with `head_tail`) have scores.
    let long = (1..=40)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let cut = tmp.path().join("cut");
    let sets = ["data.truncation=\"head_tail\"", "data.head_tokens=8"];
    assert_ok(&train_tiny(&cut, &sets), "train head_tail");
    let line = &explained(&["--checkpoint", path_str(&cut), "--", &long])[0];
    assert_eq!(line["truncated"], true);
    let words: Vec<&str> = line["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["word"].as_str().unwrap())
        .collect();
    assert!(words.contains(&"w1") && words.contains(&"w40"), "{words:?}");
    assert!(!words.contains(&"w20"), "the middle was cut: {words:?}");
    assert_eq!(line["tokens"].as_array().unwrap().len(), 32);
    // An ensemble whose members keep other tokens of the text (here `a` its head, `cut` its
    // head and tail) is averaged word by word: each word scores the mean of the members' scores
    // for it (0 for a member that cut it), and each member's own token scores are kept apart.
    let label = ["--label", "needs_docs"];
    let alone = |dir: &Path| {
        explained(&[&["--checkpoint", path_str(dir)], &label[..], &["--", &long]].concat())
            .remove(0)
    };
    let (head, ends) = (alone(&a), alone(&cut));
    let mixed = explained(
        &[
            &["--checkpoint", path_str(&a), "--checkpoint", path_str(&cut)],
            &label[..],
            &["--", &long],
        ]
        .concat(),
    )
    .remove(0);
    assert_eq!(mixed["truncated"], true);
    assert_eq!(mixed["tokens"], json!([]), "{mixed}");
    let members = mixed["member_tokens"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for (member, own) in members.iter().zip([&head, &ends]) {
        let want = scores(own, "tokens");
        let got: Vec<f64> = member
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["score"].as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-6,
                "a member's token score {g} against {w} alone"
            );
        }
    }
    let word_scores = |line: &Value| -> std::collections::BTreeMap<String, f64> {
        line["words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["word"].as_str().unwrap().to_string(),
                    w["score"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (of_head, of_ends, of_mixed) =
        (word_scores(&head), word_scores(&ends), word_scores(&mixed));
    let mut union: Vec<&String> = of_head.keys().chain(of_ends.keys()).collect();
    union.sort();
    union.dedup();
    assert_eq!(
        of_mixed.keys().collect::<Vec<_>>(),
        union,
        "the words either member kept"
    );
    assert!(of_mixed.contains_key("w40") && !of_head.contains_key("w40"));
    for (word, score) in &of_mixed {
        let mean = (of_head.get(word).unwrap_or(&0.0) + of_ends.get(word).unwrap_or(&0.0)) / 2.0;
        assert!(
            (score - mean).abs() < 1e-6,
            "{word}: {score} against the members' mean {mean}"
        );
    }
    let prob = |line: &Value| line["prob"].as_f64().unwrap();
    assert!((prob(&mixed) - (prob(&head) + prob(&ends)) / 2.0).abs() < 1e-6);
    let change = prob(&mixed) - mixed["baseline_prob"].as_f64().unwrap();
    let sum: f64 = of_mixed.values().sum();
    let delta = mixed["delta"].as_f64().unwrap();
    assert!(
        (sum - change - delta).abs() < 1e-9,
        "{sum} = {change} + {delta}"
    );

    // Multi-label: the label's sigmoid probability, as predict gives it.
    let multi = tmp.path().join("multi");
    assert_ok(
        &train_tiny(&multi, &["data.multi_label=true"]),
        "train multi-label",
    );
    let predicted = checkpoint_probs(&multi, &[TEXTS[1]]);
    let line = &explained(&[
        "--checkpoint",
        path_str(&multi),
        "--label",
        "needs_test",
        TEXTS[1],
    ])[0];
    assert!(
        (line["prob"].as_f64().unwrap() - predicted[0][1]).abs() < 1e-5,
        "{line}"
    );
    let sum: f64 = scores(line, "tokens").iter().sum();
    let change = line["prob"].as_f64().unwrap() - line["baseline_prob"].as_f64().unwrap();
    assert!(
        (sum - change).abs() <= 0.05 * change.abs().max(0.01),
        "{sum} for {change}"
    );

    // --errors: the rows of a labelled file predict gets wrong, each for its predicted label.
    let valid = "tests/fixtures/tiny/valid.jsonl";
    let output = run_bin("predict", &["--checkpoint", path_str(&a), "--data", valid]);
    assert_ok(&output, "predict --data");
    let wrong: Vec<(String, String)> = text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|row| row["label"] != row["input_label"])
        .map(|row| {
            (
                row["text"].as_str().unwrap().to_string(),
                row["label"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        !wrong.is_empty(),
        "the tiny model gets some validation rows wrong"
    );
    let output = run_bin(
        "explain",
        &[
            "--checkpoint",
            path_str(&a),
            "--data",
            valid,
            "--errors",
            "--json",
        ],
    );
    assert_ok(&output, "explain --errors");
    let lines: Vec<Value> = text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["text"].as_str().unwrap().to_string(),
                l["explained"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, wrong);
    assert!(text(&output.stderr).contains(&format!("{} of 9 rows of {valid}", wrong.len())));
    let output = run_bin(
        "explain",
        &["--checkpoint", path_str(&a), "--data", valid, "--errors"],
    );
    assert_ok(&output, "explain --errors, text");
    assert!(
        text(&output.stdout).contains(&format!("{valid}:")),
        "headed by file and line"
    );
    let output = run_bin(
        "explain",
        &[
            "--checkpoint",
            path_str(&multi),
            "--data",
            valid,
            "--errors",
        ],
    );
    assert_fails_naming(&output, &["--errors", "single-label"]);

    // Refusals.
    let refused = |args: &[&str], needles: &[&str]| {
        let output = run_bin("explain", &[&["--checkpoint", path_str(&a)], args].concat());
        assert_fails_naming(&output, needles);
    };
    refused(&["--label", "bug", "x"], &["--label", "bug", "needs_docs"]);
    refused(&["--steps", "0", "x"], &["--steps"]);
    refused(&["--tolerance", "1.5", "x"], &["--tolerance"]);
    refused(&["--errors", "x"], &["--errors", "--data"]);
    refused(
        &["--baseline", "[NOPE]", "x"],
        &["--baseline", "[NOPE]", "tokenizer.json"],
    );
}

/// `--method occlusion`: each token's score is `predict`'s probability of the text less that of
/// the text with that token replaced by the baseline (`[PAD]`, which the tokenizer reads as the
/// pad token), the words hold their tokens' scores, no steps are taken, and an ensemble's scores
/// are the mean of its members'.
#[test]
fn occlusion_scores_are_the_drops_predict_sees() {
    let tmp = TempDir::new().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert_ok(&train_tiny(&a, &[]), "train a");
    assert_ok(&train_tiny(&b, &["train.seed=8"]), "train b");
    let occluded = |checkpoints: &[&Path]| {
        let mut args = vec!["--method", "occlusion"];
        for c in checkpoints {
            args.extend(["--checkpoint", path_str(c)]);
        }
        explained(&[&args[..], &["--"], &TEXTS[..]].concat())
    };
    let lines = occluded(&[&a]);
    let mut checked = 0;
    for (line, text) in lines.iter().zip(TEXTS) {
        assert_eq!(line["method"], "occlusion");
        assert_eq!(line["steps"], 0);
        let probs = &checkpoint_probs(&a, &[text])[0];
        let label = LABELS.iter().position(|l| line["explained"] == *l).unwrap();
        let prob = line["prob"].as_f64().unwrap();
        assert!((prob - probs[label]).abs() < 1e-5, "{text}");
        let tokens: f64 = scores(line, "tokens").iter().sum();
        let words: f64 = scores(line, "words").iter().sum();
        assert!(
            (words - tokens).abs() < 1e-9,
            "{text}: words hold the tokens"
        );
        // Each word that is one token: predict on the text with it replaced.
        for word in line["words"].as_array().unwrap() {
            let (start, end) = (
                word["start"].as_u64().unwrap() as usize,
                word["end"].as_u64().unwrap() as usize,
            );
            let pieces: Vec<&Value> = line["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| {
                    t["start"]
                        .as_u64()
                        .is_some_and(|s| (start..end).contains(&(s as usize)))
                })
                .collect();
            if pieces.len() != 1 {
                continue;
            }
            let without = format!("{}[PAD]{}", &text[..start], &text[end..]);
            let dropped = probs[label] - checkpoint_probs(&a, &[&without])[0][label];
            let score = word["score"].as_f64().unwrap();
            assert!(
                (score - dropped).abs() < 1e-5,
                "{text}: {} scores {score}, predict drops {dropped} without it",
                word["word"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} one-token words checked");

    // An ensemble's token scores are the mean of its members' (the tiny checkpoints share the
    // tokenizer).
    let one = |c: &Path| scores(&occluded(&[c])[1], "tokens");
    let (ta, tb) = (one(&a), one(&b));
    let both = scores(&occluded(&[&a, &b])[1], "tokens");
    for i in 0..both.len() {
        assert!((both[i] - (ta[i] + tb[i]) / 2.0).abs() < 1e-6, "token {i}");
    }
    assert!(
        both.iter().any(|s| s.abs() > 1e-4),
        "some token moves the tiny model: {both:?}"
    );
}
