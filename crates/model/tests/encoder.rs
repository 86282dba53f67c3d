//! The encoder against references: sentence-transformers' pooled embeddings of MiniLM and MPNet,
//! transformers' RobertaModel, XLMRobertaModel, DistilBertModel and ElectraModel on tiny random
//! ones (numbers computed by
//! tests/reference/make_reference.py), candle-transformers' BERT in eval
//! mode, gradient coverage of every variable, and padding-invariant pooling.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::Deserialize;
use wick_model::classifier::LossOptions;
use wick_model::hub::{resolve, ModelSource, ResolvedModel};
use wick_model::weights::{init_all, init_head, load_safetensors, named_vars};
use wick_model::{BertConfig, Classifier, ModelType, Task};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const MPNET: &str = "sentence-transformers/all-mpnet-base-v2";

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference")
}

fn minilm() -> ResolvedModel {
    resolve(&ModelSource::from_id(MINILM))
        .unwrap_or_else(|e| panic!("{e}\nThese tests need the default model: run `make model`."))
}

fn minilm_classifier(num_labels: usize, dtype: DType) -> (VarMap, Classifier, BertConfig) {
    pretrained_classifier(&minilm(), num_labels, dtype)
}

fn pretrained_classifier(
    model: &ResolvedModel,
    num_labels: usize,
    dtype: DType,
) -> (VarMap, Classifier, BertConfig) {
    let config = BertConfig::from_file(&model.config).expect("config.json parses");
    let (varmap, classifier) = Classifier::build(
        &config,
        num_labels,
        Task::SingleLabel,
        0.1,
        dtype,
        &Device::Cpu,
        7,
    )
    .expect("classifier builds");
    load_safetensors(&varmap, &model.weights, false).expect("pretrained weights load");
    init_head(&varmap, config.initializer_range, 7).expect("head init");
    (varmap, classifier, config)
}

/// A single-label f32 CPU classifier of `config`'s shape (dropout 0.1, head seed 1), its
/// variables unset.
fn tiny_f32(config: &BertConfig, num_labels: usize) -> (VarMap, Classifier) {
    tiny_f32_with(config, num_labels, Task::SingleLabel, 0.1)
}

/// [`tiny_f32`] for `task`, with dropout `head_dropout` before the head.
fn tiny_f32_with(
    config: &BertConfig,
    num_labels: usize,
    task: Task,
    head_dropout: f64,
) -> (VarMap, Classifier) {
    Classifier::build(
        config,
        num_labels,
        task,
        head_dropout,
        DType::F32,
        &Device::Cpu,
        1,
    )
    .unwrap()
}

/// `(ids, type ids, mask)` tensors, right-padded with 0 to the longest row.
fn batch(rows: &[Vec<u32>]) -> (Tensor, Tensor, Tensor) {
    padded_batch(rows, 0)
}

/// `(ids, type ids, mask)` tensors, right-padded with `pad` to the longest row.
fn padded_batch(rows: &[Vec<u32>], pad: u32) -> (Tensor, Tensor, Tensor) {
    let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for row in rows {
        ids.extend(
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, seq - row.len())),
        );
        mask.extend((0..seq).map(|i| u32::from(i < row.len())));
    }
    let shape = (rows.len(), seq);
    let ids = Tensor::from_vec(ids, shape, &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, shape, &Device::Cpu).unwrap();
    (ids.clone(), ids.zeros_like().unwrap(), mask)
}

/// The largest absolute entry of an f32 tensor.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

#[derive(Deserialize)]
struct PooledReference {
    input_ids: Vec<Vec<u32>>,
    pooled: Vec<Vec<f32>>,
}

fn pooled_reference() -> PooledReference {
    read_pooled("minilm_pooled.json")
}

fn read_pooled(file: &str) -> PooledReference {
    let text = std::fs::read_to_string(reference_dir().join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Pooled embeddings within 1e-4 of the reference's.
fn assert_pooled_match(pooled: &Tensor, reference: &PooledReference, path: &str) {
    let rows = reference.pooled.len();
    let expected = Tensor::from_vec(
        reference.pooled.concat(),
        (rows, reference.pooled[0].len()),
        &Device::Cpu,
    )
    .unwrap();
    let diff = max_abs_diff(pooled, &expected);
    assert!(
        diff < 1e-4,
        "{path}: max |ours - sentence-transformers| = {diff}"
    );
}

#[test]
fn pooled_embeddings_match_sentence_transformers() {
    let reference = pooled_reference();
    let (_varmap, classifier, _) = minilm_classifier(3, DType::F32);
    let (ids, types, mask) = batch(&reference.input_ids);
    let pooled = classifier.pooled(&ids, &types, &mask, false).unwrap();
    assert_pooled_match(&pooled, &reference, "fused path");
}

fn mpnet() -> ResolvedModel {
    resolve(&ModelSource::from_id(MPNET)).unwrap_or_else(|e| {
        panic!("{e}\nThese tests need all-mpnet-base-v2: run `make model-mpnet`.")
    })
}

/// MPNet (relative position bias, positions after the padding row, no token types) against
/// sentence-transformers on the real all-mpnet-base-v2 weights, padded with its pad id 1, both
/// on the fused CPU path and on primitive ops.
#[test]
fn mpnet_pooled_embeddings_match_sentence_transformers() {
    let config = pooled_matches_on_both_paths(&mpnet(), "mpnet_pooled.json");
    assert_eq!(config.model_type, ModelType::Mpnet);
    assert_eq!(config.max_tokens(), 512);
}

/// `model`'s pooled outputs against a reference file's (its ids padded with the model's pad
/// id), on the fused CPU path and on primitive ops. Returns the model's config.
fn pooled_matches_on_both_paths(model: &ResolvedModel, file: &str) -> BertConfig {
    let reference = read_pooled(file);
    let (_varmap, classifier, config) = pretrained_classifier(model, 3, DType::F32);
    let (ids, types, mask) = padded_batch(&reference.input_ids, config.pad_token_id as u32);
    let pooled = classifier.pooled(&ids, &types, &mask, false).unwrap();
    assert_pooled_match(&pooled, &reference, &format!("{file}, fused path"));
    let plain =
        wick_model::fused::without_fused(|| classifier.pooled(&ids, &types, &mask, false).unwrap());
    assert_pooled_match(&plain, &reference, &format!("{file}, primitive ops"));
    config
}

/// A 2-layer MPNet of random weights: every variable (the relative position bias table
/// included) gets a finite, non-zero gradient, on the fused path and on primitive ops alike.
#[test]
fn every_parameter_of_a_tiny_mpnet_gets_a_gradient() {
    let config = BertConfig {
        model_type: ModelType::Mpnet,
        pad_token_id: 1,
        max_position_embeddings: 66,
        ..BertConfig::tiny(100)
    };
    let (varmap, classifier) = tiny_f32(&config, 3);
    assert!(
        named_vars(&varmap)
            .iter()
            .all(|(name, _)| !name.contains("token_type")),
        "MPNet has no token-type table"
    );
    init_all(&varmap, 0.02, 1).unwrap();
    // Distances up to 63 reach every bucket but the far ones (>= 128).
    let long: Vec<u32> = (0..64).map(|i| 2 + i % 90).collect();
    let (ids, types, mask) = padded_batch(&[vec![0, 5, 9, 11, 2], vec![0, 7, 2], long], 1);
    assert_gradients_on_both_paths(&varmap, &classifier, (&ids, &types, &mask));
}

/// [`assert_every_variable_has_a_gradient`] for a 3-row batch labelled 0, 1, 2, on the fused
/// path and on primitive ops.
fn assert_gradients_on_both_paths(
    varmap: &VarMap,
    classifier: &Classifier,
    (ids, types, mask): (&Tensor, &Tensor, &Tensor),
) {
    let labels = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
    let loss = || {
        let logits = classifier.forward(ids, types, mask, true).unwrap();
        classifier
            .loss(&logits, &labels, &Default::default())
            .unwrap()
    };
    assert_every_variable_has_a_gradient(varmap, &loss());
    wick_model::fused::without_fused(|| assert_every_variable_has_a_gradient(varmap, &loss()));
}

/// tests/reference/<family>_tiny: a 2-layer, 64-wide encoder of transformers' seeded random init
/// (its layer norms and biases moved off 1 and 0) with a tokenizer of the family's kind; no
/// RoBERTa, XLM-RoBERTa, DistilBERT or ELECTRA weights are reachable offline.
fn tiny_family(family: &str) -> ResolvedModel {
    resolve(&ModelSource::from_path(
        reference_dir().join(format!("{family}_tiny")),
    ))
    .unwrap()
}

/// The tiny model's pooled outputs against transformers' model + masked mean.
fn tiny_family_pooled_matches_transformers(family: &str) -> BertConfig {
    pooled_matches_on_both_paths(&tiny_family(family), &format!("{family}_pooled.json"))
}

/// RoBERTa (BERT's layers, positions after the padding row, a one-row token-type table) against
/// transformers' `RobertaModel`, padded with its pad id 1.
#[test]
fn roberta_pooled_embeddings_match_transformers() {
    let config = tiny_family_pooled_matches_transformers("roberta");
    assert_eq!(config.model_type, ModelType::Roberta);
    assert_eq!((config.max_tokens(), config.type_vocab_size), (128, 1));
}

/// XLM-RoBERTa (RoBERTa's encoder under its own `model_type`, a unigram vocabulary) against
/// transformers' `XLMRobertaModel`.
#[test]
fn xlm_roberta_pooled_embeddings_match_transformers() {
    let config = tiny_family_pooled_matches_transformers("xlm-roberta");
    assert_eq!(config.model_type, ModelType::XlmRoberta);
    assert_eq!(config.max_tokens(), 128);
}

/// DistilBERT (its own config and layer names, no token types) against transformers'
/// `DistilBertModel`.
#[test]
fn distilbert_pooled_embeddings_match_transformers() {
    let config = tiny_family_pooled_matches_transformers("distilbert");
    assert_eq!(config.model_type, ModelType::DistilBert);
    assert_eq!((config.max_tokens(), config.hidden_size), (128, 64));
}

/// ELECTRA (BERT's layers under 32-wide embeddings projected to 64) against transformers'
/// `ElectraModel`.
#[test]
fn electra_pooled_embeddings_match_transformers() {
    let config = tiny_family_pooled_matches_transformers("electra");
    assert_eq!(config.model_type, ModelType::Electra);
    assert_eq!((config.embedding_width(), config.hidden_size), (32, 64));
}

/// Every variable of the tiny RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA (RoBERTa's position and one-row
/// token-type tables and ELECTRA's projection included) gets a finite, non-zero gradient, on the
/// fused path and on primitive ops; DistilBERT declares no token-type table.
#[test]
fn every_parameter_of_each_tiny_family_gets_a_gradient() {
    for family in ["roberta", "xlm-roberta", "distilbert", "electra"] {
        let (varmap, classifier, config) =
            pretrained_classifier(&tiny_family(family), 3, DType::F32);
        let has_types = named_vars(&varmap)
            .iter()
            .any(|(name, _)| name.contains("token_type"));
        assert_eq!(has_types, family != "distilbert", "{family}");
        let reference = read_pooled(&format!("{family}_pooled.json"));
        let (ids, types, mask) =
            padded_batch(&reference.input_ids[..3], config.pad_token_id as u32);
        assert_gradients_on_both_paths(&varmap, &classifier, (&ids, &types, &mask));
    }
}

#[test]
fn eval_forward_matches_candle_transformers_bert() {
    use candle_transformers::models::bert as upstream;
    let reference = pooled_reference();
    let model = minilm();
    let (_varmap, classifier, _) = minilm_classifier(3, DType::F32);
    let config: upstream::Config =
        serde_json::from_str(&std::fs::read_to_string(&model.config).unwrap()).unwrap();
    let vb = VarBuilder::from_tensors(
        candle_core::safetensors::load(&model.weights, &Device::Cpu).unwrap(),
        DType::F32,
        &Device::Cpu,
    );
    let bert = upstream::BertModel::load(vb, &config).unwrap();
    let (ids, types, mask) = batch(&reference.input_ids);
    let theirs = bert.forward(&ids, &types, Some(&mask)).unwrap();
    let theirs = wick_model::ops::masked_mean(&theirs, &mask).unwrap();
    let ours = classifier.pooled(&ids, &types, &mask, false).unwrap();
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff < 1e-4, "max |ours - candle-transformers| = {diff}");
}

/// Asserts every variable received a finite gradient that is not zero everywhere.
fn assert_every_variable_has_a_gradient(varmap: &VarMap, loss: &Tensor) {
    assert_gradients(varmap, loss, |_| true);
}

/// Asserts the variables `expected` names received a finite gradient that is not zero
/// everywhere, and the others none.
fn assert_gradients(varmap: &VarMap, loss: &Tensor, expected: impl Fn(&str) -> bool) {
    let grads = loss.backward().unwrap();
    let vars: Vec<(String, Var)> = named_vars(varmap);
    assert!(!vars.is_empty());
    let mut failures = Vec::new();
    for (name, var) in &vars {
        match (grads.get(var.as_tensor()), expected(name)) {
            (None, true) => failures.push(format!("{name}: no gradient")),
            (None, false) => {}
            (Some(_), false) => failures.push(format!("{name}: a gradient, expected none")),
            (Some(grad), true) => {
                let sq = grad
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                if !sq.is_finite() || sq == 0.0 {
                    failures.push(format!("{name}: squared norm {sq}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} variables failed:\n{}",
        failures.len(),
        vars.len(),
        failures.join("\n")
    );
}

#[test]
fn every_parameter_of_a_tiny_bert_gets_a_gradient() {
    let config = BertConfig::tiny(100);
    let (varmap, classifier) = tiny_f32(&config, 3);
    init_all(&varmap, 0.02, 1).unwrap();
    let (ids, _, mask) = batch(&[
        vec![2, 5, 9, 11, 3],
        vec![2, 7, 3],
        vec![2, 40, 41, 42, 43, 44, 3],
    ]);
    // Both token types occur, so both rows of the token-type table are used.
    let types = Tensor::from_vec(
        vec![
            0u32, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
        ],
        (3, 7),
        &Device::Cpu,
    )
    .unwrap();
    let labels = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
    let logits = classifier.forward(&ids, &types, &mask, true).unwrap();
    let loss = classifier
        .loss(&logits, &labels, &Default::default())
        .unwrap();
    assert_every_variable_has_a_gradient(&varmap, &loss);
}

/// Four texts of 3 to 7 tokens, right-padded: `(ids, type ids, mask)`.
fn four_texts() -> (Tensor, Tensor, Tensor) {
    batch(&[
        vec![2, 5, 9, 11, 3],
        vec![2, 7, 3],
        vec![2, 40, 41, 42, 43, 44, 3],
        vec![2, 12, 13, 3],
    ])
}

/// The supervised contrastive term alone reaches every encoder parameter (and not the head,
/// which it does not use); with weight 0 the objective is the plain loss, bit for bit.
#[test]
fn the_contrastive_term_reaches_every_encoder_parameter() {
    let config = BertConfig::tiny(100);
    let (varmap, classifier) = tiny_f32(&config, 3);
    init_all(&varmap, 0.02, 5).unwrap();
    let (ids, types, mask) = four_texts();
    let types = types.ones_like().unwrap().broadcast_mul(&mask).unwrap();
    let labels = Tensor::new(&[0u32, 1, 0, 1], &Device::Cpu).unwrap();
    let (pooled, logits) = classifier
        .forward_with_pooled(&ids, &types, &mask, true)
        .unwrap();
    let contrastive = wick_model::loss::supervised_contrastive(&pooled, &labels, 0.3).unwrap();
    assert!(contrastive.to_scalar::<f32>().unwrap() > 0.0);
    assert_gradients(&varmap, &contrastive, |name| {
        !name.starts_with("classifier.") && !name.starts_with("pooler.")
    });

    let plain = classifier
        .loss(&logits, &labels, &Default::default())
        .unwrap();
    let off = LossOptions {
        contrastive_temperature: 0.3,
        ..Default::default()
    };
    let objective = classifier
        .objective(&pooled, &logits, &labels, &off)
        .unwrap();
    assert_eq!(
        plain.to_scalar::<f32>().unwrap(),
        objective.to_scalar::<f32>().unwrap()
    );
    let half = LossOptions {
        contrastive_weight: 0.5,
        ..off
    };
    let mixed = classifier
        .objective(&pooled, &logits, &labels, &half)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let expected =
        0.5 * plain.to_scalar::<f32>().unwrap() + 0.5 * contrastive.to_scalar::<f32>().unwrap();
    assert!((mixed - expected).abs() < 1e-6, "{mixed} vs {expected}");
}

/// Host reference of R-Drop's objective from the logits of the batch stacked on itself: the
/// mean cross-entropy over all rows plus `alpha / 2` times the mean over texts of
/// `(KL(p || q) + KL(q || p)) / 2`, written from log-probabilities (not the logit identity
/// `wick_model::loss::symmetric_kl` uses). Returns (objective, mean symmetric KL).
fn rdrop_on_the_host(logits: &[Vec<f32>], labels: &[u32], alpha: f64) -> (f64, f64) {
    let log_softmax = |row: &[f32]| {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let norm = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
        row.iter().map(|v| v - norm).collect::<Vec<f64>>()
    };
    let rows = labels.len();
    let logp: Vec<Vec<f64>> = logits.iter().map(|r| log_softmax(r)).collect();
    let ce = (0..2 * rows)
        .map(|i| -logp[i][labels[i % rows] as usize])
        .sum::<f64>()
        / (2 * rows) as f64;
    let kl = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
    let sym = (0..rows)
        .map(|i| 0.5 * (kl(&logp[i], &logp[rows + i]) + kl(&logp[rows + i], &logp[i])))
        .sum::<f64>()
        / rows as f64;
    (ce + alpha / 2.0 * sym, sym)
}

/// The batch stacked on itself.
fn twice(t: &Tensor) -> Tensor {
    Tensor::cat(&[t, t], 0).unwrap()
}

/// `classifier`'s training objective of `options` on `(ids, types, mask)`, then the logits of the
/// batch stacked on itself under the same dropout masks (the pass R-Drop makes).
fn objective_and_stacked_logits(
    classifier: &Classifier,
    (ids, types, mask): (&Tensor, &Tensor, &Tensor),
    targets: &Tensor,
    options: &LossOptions,
) -> (f32, Tensor) {
    let rng = classifier.encoder().rng();
    rng.reseed(3, 1, &Device::Cpu).unwrap();
    let objective = classifier
        .train_objective(ids, types, mask, targets, None, options)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    rng.reseed(3, 1, &Device::Cpu).unwrap();
    let logits = classifier
        .forward(&twice(ids), &twice(types), &twice(mask), true)
        .unwrap();
    (objective, logits)
}

/// R-Drop (`rdrop_weight`): the objective is the loss over the batch stacked on itself (one
/// pass, so each text gets two independent dropout masks) plus `α / 2` times the two views'
/// symmetric KL divergence, as recomputed on the host from the same pass; the views differ; the
/// KL term alone reaches every variable; `α = 0` is the plain objective bit for bit; and without
/// dropout the two views agree, so the term adds nothing.
#[test]
fn rdrop_objective_is_the_two_view_loss_plus_their_divergence() {
    let config = BertConfig::tiny(100);
    let (varmap, classifier) = tiny_f32(&config, 3);
    init_all(&varmap, 0.05, 7).unwrap();
    let (ids, types, mask) = four_texts();
    let label_ids = [0u32, 1, 2, 1];
    let labels = Tensor::new(&label_ids, &Device::Cpu).unwrap();
    let rng = classifier.encoder().rng().clone();
    let alpha = 1.5;
    let options = LossOptions {
        rdrop_weight: alpha,
        ..Default::default()
    };
    let inputs = (&ids, &types, &mask);
    let (objective, logits) = objective_and_stacked_logits(&classifier, inputs, &labels, &options);
    let (expected, divergence) =
        rdrop_on_the_host(&logits.to_vec2::<f32>().unwrap(), &label_ids, alpha);
    assert!(
        (f64::from(objective) - expected).abs() < 1e-5 * expected,
        "{objective} vs {expected} on the host"
    );
    assert!(divergence > 1e-4, "the two views agree: {divergence}");

    let kl = wick_model::loss::symmetric_kl(
        &logits.narrow(0, 0, 4).unwrap(),
        &logits.narrow(0, 4, 4).unwrap(),
    )
    .unwrap();
    assert_every_variable_has_a_gradient(&varmap, &kl);

    let off = LossOptions::default();
    rng.reseed(3, 1, &Device::Cpu).unwrap();
    let plain_path = classifier
        .train_objective(&ids, &types, &mask, &labels, None, &off)
        .unwrap();
    rng.reseed(3, 1, &Device::Cpu).unwrap();
    let (pooled, logits) = classifier
        .forward_with_pooled(&ids, &types, &mask, true)
        .unwrap();
    let by_hand = classifier
        .objective(&pooled, &logits, &labels, &off)
        .unwrap();
    assert_eq!(
        plain_path.to_scalar::<f32>().unwrap(),
        by_hand.to_scalar::<f32>().unwrap()
    );

    let still = BertConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..config
    };
    let (varmap, classifier) = tiny_f32_with(&still, 3, Task::SingleLabel, 0.0);
    init_all(&varmap, 0.05, 7).unwrap();
    let with = classifier
        .train_objective(&ids, &types, &mask, &labels, None, &options)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let logits = classifier.forward(&ids, &types, &mask, true).unwrap();
    let plain = classifier
        .loss(&logits, &labels, &off)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        (with - plain).abs() < 1e-6,
        "{with} vs {plain} without dropout"
    );

    // Multi-label: the binary cross-entropy of both views plus the labels' Bernoulli divergence.
    let (varmap, classifier) = tiny_f32_with(&config, 3, Task::MultiLabel, 0.1);
    init_all(&varmap, 0.05, 7).unwrap();
    let targets = Tensor::new(
        &[
            [1f32, 0.0, 1.0],
            [0.0, 1.0, 0.0],
            [1.0, 1.0, 0.0],
            [0.0, 0.0, 0.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let (objective, logits) = objective_and_stacked_logits(&classifier, inputs, &targets, &options);
    let bce = wick_model::loss::bce_with_logits(&logits, &twice(&targets), None).unwrap();
    let kl = wick_model::loss::symmetric_kl_bernoulli(
        &logits.narrow(0, 0, 4).unwrap(),
        &logits.narrow(0, 4, 4).unwrap(),
    )
    .unwrap();
    let (bce, kl) = (
        bce.to_scalar::<f32>().unwrap(),
        kl.to_scalar::<f32>().unwrap(),
    );
    let expected = bce + alpha as f32 / 2.0 * kl;
    assert!(kl > 1e-5, "the two multi-label views agree: {kl}");
    assert!(
        (objective - expected).abs() < 1e-6 * expected,
        "multi-label: {objective} vs {expected}"
    );
}

#[test]
fn every_parameter_of_minilm_gets_a_gradient() {
    let (varmap, classifier, _) = minilm_classifier(3, DType::F32);
    let reference = pooled_reference();
    let (ids, _, mask) = batch(&reference.input_ids[..3]);
    let types = Tensor::ones_like(&ids)
        .unwrap()
        .broadcast_mul(&mask)
        .unwrap();
    let types = Tensor::cat(
        &[
            types.narrow(0, 0, 1).unwrap().zeros_like().unwrap(),
            types.narrow(0, 1, 2).unwrap(),
        ],
        0,
    )
    .unwrap();
    let labels = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
    let logits = classifier.forward(&ids, &types, &mask, true).unwrap();
    let loss = classifier
        .loss(&logits, &labels, &Default::default())
        .unwrap();
    assert_every_variable_has_a_gradient(&varmap, &loss);
}

#[test]
fn masked_mean_ignores_padding() {
    let config = BertConfig::tiny(100);
    let (varmap, classifier) = tiny_f32(&config, 3);
    init_all(&varmap, 0.02, 3).unwrap();
    let text = vec![2u32, 17, 18, 19, 3];
    let (ids, types, mask) = batch(std::slice::from_ref(&text));
    let alone = classifier.pooled(&ids, &types, &mask, false).unwrap();
    let (ids, types, mask) = batch(&[vec![2, 50, 51, 52, 53, 54, 55, 56, 57, 3], text]);
    let padded = classifier
        .pooled(&ids, &types, &mask, false)
        .unwrap()
        .narrow(0, 1, 1)
        .unwrap();
    let diff = max_abs_diff(&alone, &padded);
    assert!(diff < 1e-5, "padding changed the pooled vector by {diff}");
}

#[test]
fn low_precision_forward_with_padding_stays_finite() {
    let mpnet = BertConfig {
        model_type: ModelType::Mpnet,
        pad_token_id: 1,
        ..BertConfig::tiny(100)
    };
    for (config, dtype) in [
        (BertConfig::tiny(100), DType::F16),
        (BertConfig::tiny(100), DType::BF16),
        (mpnet.clone(), DType::F16),
        (mpnet, DType::BF16),
    ] {
        let (varmap, classifier) =
            Classifier::build(&config, 3, Task::SingleLabel, 0.1, dtype, &Device::Cpu, 1).unwrap();
        init_all(&varmap, 0.02, 3).unwrap();
        let (ids, types, mask) = batch(&[vec![2, 5, 3], vec![2, 5, 6, 7, 8, 9, 3]]);
        for train in [true, false] {
            let logits = classifier.forward(&ids, &types, &mask, train).unwrap();
            let total = logits.sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                total.is_finite(),
                "{:?} {dtype:?} (train {train}) logits are not finite: {total}",
                config.model_type
            );
        }
    }
}

#[test]
fn dropout_is_active_in_training_and_reproducible_per_step() {
    let config = BertConfig::tiny(100);
    let (varmap, classifier) = tiny_f32(&config, 3);
    init_all(&varmap, 0.02, 3).unwrap();
    let (ids, types, mask) = batch(&[vec![2, 5, 6, 7, 3]]);
    let rng = classifier.encoder().rng().clone();
    let eval_a = classifier.forward(&ids, &types, &mask, false).unwrap();
    let eval_b = classifier.forward(&ids, &types, &mask, false).unwrap();
    assert_eq!(
        max_abs_diff(&eval_a, &eval_b),
        0.0,
        "eval must be deterministic"
    );
    rng.reseed(5, 10, &Device::Cpu).unwrap();
    let train_a = classifier.forward(&ids, &types, &mask, true).unwrap();
    let train_b = classifier.forward(&ids, &types, &mask, true).unwrap();
    assert!(
        max_abs_diff(&train_a, &train_b) > 0.0,
        "dropout must change the output"
    );
    rng.reseed(5, 10, &Device::Cpu).unwrap();
    let train_again = classifier.forward(&ids, &types, &mask, true).unwrap();
    assert_eq!(
        max_abs_diff(&train_a, &train_again),
        0.0,
        "same (seed, step) must give the same masks"
    );
}

#[test]
fn weights_with_bert_prefix_and_gamma_beta_names_load() {
    weights_with_prefix_load("bert.");
}

/// `RobertaForMaskedLM`'s file (roberta-base's) names the encoder `roberta.*`.
#[test]
fn weights_with_roberta_prefix_load() {
    weights_with_prefix_load("roberta.");
}

fn weights_with_prefix_load(prefix: &str) {
    let config = BertConfig::tiny(50);
    let (source, _) = tiny_f32(&config, 2);
    init_all(&source, 0.02, 9).unwrap();
    let mut renamed = std::collections::HashMap::new();
    for (name, var) in named_vars(&source) {
        let name = name
            .replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta");
        renamed.insert(format!("{prefix}{name}"), var.as_tensor().clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&renamed, &path).unwrap();
    let (target, _) = tiny_f32(&config, 2);
    let report = load_safetensors(&target, &path, true).unwrap();
    assert_eq!(report.loaded, named_vars(&source).len());
    for ((name, a), (_, b)) in named_vars(&source).iter().zip(named_vars(&target).iter()) {
        assert_eq!(
            max_abs_diff(a.as_tensor(), b.as_tensor()),
            0.0,
            "{name} differs after load"
        );
    }
}

#[test]
fn a_file_missing_encoder_weights_is_an_error_naming_them() {
    let config = BertConfig::tiny(50);
    let (varmap, _) = tiny_f32(&config, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.safetensors");
    let only = std::collections::HashMap::from([(
        "embeddings.word_embeddings.weight".to_string(),
        Tensor::zeros((50, 32), DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&only, &path).unwrap();
    let message = load_safetensors(&varmap, &path, false)
        .unwrap_err()
        .to_string();
    assert!(message.contains("partial.safetensors"), "{message}");
    assert!(message.contains("embeddings.LayerNorm"), "{message}");
}

/// The fused CPU kernels (attention, GELU, dropout, layer norm, linear) against the primitive-op
/// path on a MiniLM training step with padding and dropout on: same masks (same seed and step),
/// same loss and the same gradient for every variable up to float reassociation (within 1e-3 of
/// each gradient's largest entry).
#[test]
fn fused_cpu_kernels_match_primitive_ops_on_a_minilm_training_step() {
    let (varmap, classifier, _) = minilm_classifier(3, DType::F32);
    let reference = pooled_reference();
    let (ids, types, mask) = batch(&reference.input_ids[..3]);
    let labels = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
    let rng = classifier.encoder().rng().clone();
    let step = || {
        rng.reseed(3, 17, &Device::Cpu).unwrap();
        let logits = classifier.forward(&ids, &types, &mask, true).unwrap();
        let loss = classifier
            .loss(&logits, &labels, &Default::default())
            .unwrap();
        let grads = loss.backward().unwrap();
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (loss_fused, grads_fused) = step();
    let (loss_plain, grads_plain) = wick_model::fused::without_fused(step);
    assert!(
        (loss_fused - loss_plain).abs() < 1e-5,
        "loss {loss_fused} fused vs {loss_plain} primitive"
    );
    let mut worst = (0f32, String::new());
    for (name, var) in named_vars(&varmap) {
        let (a, b) = (
            grads_fused.get(var.as_tensor()).unwrap(),
            grads_plain.get(var.as_tensor()).unwrap(),
        );
        let scale = max_abs(b);
        // The key bias's true gradient is 0 (softmax ignores a shift shared by a row), so both
        // paths hold rounding noise there: an absolute floor covers it.
        let rel = max_abs_diff(a, b) / scale.max(1e-4);
        if rel > worst.0 {
            worst = (rel, name);
        }
    }
    assert!(
        worst.0 < 1e-3,
        "gradient of {} differs by {} of its largest entry",
        worst.1,
        worst.0
    );
}

/// MPNet keeps the bucket ids of its longest sequence so far on the device and serves shorter
/// ones from their top-left block: after a long batch, a short one gives exactly what a fresh
/// model gives it.
#[test]
fn mpnet_bucket_ids_of_a_longer_sequence_serve_a_shorter_one() {
    let config = BertConfig {
        model_type: ModelType::Mpnet,
        ..BertConfig::tiny(100)
    };
    let fresh = || {
        let (varmap, classifier) = tiny_f32(&config, 3);
        init_all(&varmap, 0.02, 4).unwrap();
        classifier
    };
    let long: Vec<u32> = (0..40).map(|i| 2 + i % 90).collect();
    let short = [vec![2u32, 5, 9, 11, 3], vec![2, 7, 3]];
    let used = fresh();
    let (ids, types, mask) = batch(&[long]);
    used.forward(&ids, &types, &mask, true).unwrap();
    let (ids, types, mask) = batch(&short);
    for train in [false, true] {
        let rng = used.encoder().rng().clone();
        rng.reseed(1, 1, &Device::Cpu).unwrap();
        let after_long = used.forward(&ids, &types, &mask, train).unwrap();
        let other = fresh();
        other.encoder().rng().reseed(1, 1, &Device::Cpu).unwrap();
        let alone = other.forward(&ids, &types, &mask, train).unwrap();
        assert_eq!(
            max_abs_diff(&after_long, &alone),
            0.0,
            "train {train}: the cached ids changed the output"
        );
    }
}

/// One training forward and backward of `classifier` from dropout step 3 of seed 5: the loss,
/// the size of its graph, every variable's gradient by name, and the next dropout key drawn
/// after backward (where the stream ended).
struct Pass {
    loss: f32,
    nodes: usize,
    grads: Vec<(String, Tensor)>,
    next_key: u64,
}

fn training_pass(
    varmap: &VarMap,
    classifier: &Classifier,
    (ids, types, mask): (&Tensor, &Tensor, &Tensor),
) -> Pass {
    let rng = classifier.encoder().rng();
    rng.reseed(5, 3, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
    let logits = classifier.forward(ids, types, mask, true).unwrap();
    let loss = classifier
        .loss(&logits, &labels, &Default::default())
        .unwrap();
    let nodes = loss.sorted_nodes().len();
    let grads = loss.backward().unwrap();
    let grads = named_vars(varmap)
        .into_iter()
        .map(|(name, var)| {
            let grad = grads.get(var.as_tensor()).cloned();
            let grad = grad.unwrap_or_else(|| panic!("{name}: no gradient"));
            (name, grad.to_dtype(DType::F32).unwrap())
        })
        .collect();
    Pass {
        loss: loss.to_scalar::<f32>().unwrap(),
        nodes,
        grads,
        next_key: rng.draw_key(),
    }
}

/// Gradient checkpointing recomputes each layer in backward. With dropout on everywhere (so the
/// recomputation must replay every mask), the loss and every variable's gradient are those of a
/// run without it: on the fused CPU kernels, on primitive ops and in bf16, for BERT and for
/// MPNet (whose position bias is an input of every checkpointed layer and gets its gradient
/// through them). The graph backward walks is a fraction of the plain one, so the layers were
/// cut out of it, and the dropout stream ends where a plain run's does.
#[test]
fn gradient_checkpointing_gives_the_gradients_of_a_run_without_it() {
    let mpnet = BertConfig {
        model_type: ModelType::Mpnet,
        pad_token_id: 1,
        max_position_embeddings: 66,
        ..BertConfig::tiny(100)
    };
    for config in [BertConfig::tiny(100), mpnet] {
        for (dtype, fused) in [(DType::F32, true), (DType::F32, false), (DType::BF16, true)] {
            let what = format!("{:?}, {dtype:?}, fused kernels {fused}", config.model_type);
            let (varmap, mut classifier) =
                Classifier::build(&config, 3, Task::SingleLabel, 0.1, dtype, &Device::Cpu, 1)
                    .unwrap();
            init_all(&varmap, 0.02, 1).unwrap();
            let pad = config.pad_token_id as u32;
            let long: Vec<u32> = (0..40).map(|i| 2 + i % 90).collect();
            let (ids, types, mask) =
                padded_batch(&[vec![0, 5, 9, 11, 2], vec![0, 7, 2], long], pad);
            let pass = |classifier: &Classifier| {
                let run = || training_pass(&varmap, classifier, (&ids, &types, &mask));
                if fused {
                    run()
                } else {
                    wick_model::fused::without_fused(run)
                }
            };
            let plain = pass(&classifier);
            classifier.set_gradient_checkpointing(true);
            let checkpointed = pass(&classifier);

            assert_eq!(plain.loss, checkpointed.loss, "{what}: loss");
            assert_eq!(
                plain.next_key, checkpointed.next_key,
                "{what}: dropout stream"
            );
            assert!(
                2 * checkpointed.nodes < plain.nodes,
                "{what}: {} graph nodes checkpointed, {} plain",
                checkpointed.nodes,
                plain.nodes
            );
            for ((name, a), (_, b)) in plain.grads.iter().zip(&checkpointed.grads) {
                let scale = max_abs(a);
                assert!(scale > 0.0, "{what}: {name}: zero gradient");
                let diff = max_abs_diff(a, b);
                assert!(
                    diff <= 1e-6 * scale,
                    "{what}: {name}: gradients differ by {diff} (largest {scale})"
                );
            }
        }
    }
}

/// Sets every LoRA `B` of `varmap` to fixed non-zero values (a fresh adapter's `B` is 0, which
/// leaves `A` without a gradient and the output unchanged).
fn set_lora_b(varmap: &VarMap) {
    for (name, var) in named_vars(varmap) {
        if name.ends_with("lora_B.weight") {
            let n = var.elem_count();
            let values = (Tensor::arange(0u32, n as u32, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                * 0.37)
                .unwrap()
                .sin()
                .unwrap()
                * 0.05;
            var.set(&values.unwrap().reshape(var.shape()).unwrap())
                .unwrap();
        }
    }
}

/// LoRA on every kind of linear layer and on query and value only, for BERT and MPNet, on the
/// fused CPU kernels, on primitive ops and in bf16: a fresh adapter (`B` = 0) leaves the model's
/// output exactly as it was; a trained one gives the output of the plain model whose weights are
/// the merged `W + alpha / rank * B A` (so `merge_adapters`, which `export` uses, is the model's
/// own map); backward reaches every adapter matrix and the head, and no other variable; the
/// fused kernels' gradients (which skip frozen weights') are the primitive ops'; and gradient
/// checkpointing leaves the gradients as they are.
#[test]
fn lora_adapters_train_alone_and_merge_into_the_plain_model() {
    use std::collections::HashMap;
    use wick_model::lora::{is_lora, merge_adapters};
    use wick_model::weights::is_head;
    use wick_model::{LoraConfig, LoraTarget};

    let mpnet = BertConfig {
        model_type: ModelType::Mpnet,
        pad_token_id: 1,
        max_position_embeddings: 66,
        ..BertConfig::tiny(100)
    };
    // Every layer, and PEFT's default (query and value: the frozen feed-forward block's
    // kernels then skip its weights' gradients).
    let every = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: LoraTarget::ALL.to_vec(),
    };
    let default = LoraConfig {
        rank: 4,
        ..LoraConfig::default()
    };
    for (config, lora) in [
        (BertConfig::tiny(100), &every),
        (mpnet.clone(), &every),
        (BertConfig::tiny(100), &default),
        (mpnet, &default),
    ] {
        let mut f32_grads = Vec::new();
        for (dtype, fused) in [(DType::F32, true), (DType::F32, false), (DType::BF16, true)] {
            let what = format!(
                "{:?}, {} targets, {dtype:?}, fused kernels {fused}",
                config.model_type,
                lora.targets.len()
            );
            let build = |lora: &LoraConfig| {
                Classifier::build_with_lora(
                    &config,
                    3,
                    Task::SingleLabel,
                    0.1,
                    dtype,
                    &Device::Cpu,
                    1,
                    lora,
                )
                .unwrap()
            };
            let (varmap, adapted) = build(lora);
            let (plain_vars, plain) = build(&LoraConfig::off());
            init_all(&varmap, 0.02, 1).unwrap();
            let named: HashMap<String, Tensor> = named_vars(&varmap)
                .into_iter()
                .map(|(name, var)| (name, var.as_tensor().copy().unwrap()))
                .collect();
            // Two matrices per adapted layer per encoder layer.
            let adapters = named.keys().filter(|name| is_lora(name)).count();
            let per_layer = lora.targets.len();
            assert_eq!(adapters, 2 * per_layer * config.num_hidden_layers, "{what}");
            let fill_plain = |tensors: &HashMap<String, Tensor>| {
                for (name, var) in named_vars(&plain_vars) {
                    var.set(&tensors[&name]).unwrap();
                }
            };
            let pad = config.pad_token_id as u32;
            let (ids, types, mask) = padded_batch(
                &[vec![0, 5, 9, 11, 2], vec![0, 7, 2], vec![0, 40, 41, 2]],
                pad,
            );
            let logits = |model: &Classifier| {
                with_kernels(fused, || {
                    model
                        .forward(&ids, &types, &mask, false)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                })
            };

            fill_plain(&named);
            let base = logits(&plain);
            assert_eq!(
                max_abs_diff(&logits(&adapted), &base),
                0.0,
                "{what}: a fresh adapter changed the output"
            );

            set_lora_b(&varmap);
            let mut merged: HashMap<String, Tensor> = named_vars(&varmap)
                .into_iter()
                .map(|(name, var)| (name, var.as_tensor().copy().unwrap()))
                .collect();
            assert_eq!(
                merge_adapters(&mut merged, lora.scale()).unwrap(),
                per_layer * config.num_hidden_layers
            );
            fill_plain(&merged);
            let (ours, reference) = (logits(&adapted), logits(&plain));
            // Both sum `W + scale * B A` in f32 before the layer casts it, so they agree to
            // rounding (they are equal here).
            let diff = max_abs_diff(&ours, &reference);
            assert!(
                diff <= 1e-6,
                "{what}: adapted and merged logits differ by {diff}"
            );
            // And the adapters moved the output (by about 1e-3 here) well beyond that.
            let moved = max_abs_diff(&ours, &base);
            assert!(
                moved > 1e-4,
                "{what}: the adapters moved the logits by {moved}"
            );

            let labels = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
            let loss = |model: &Classifier| {
                model.encoder().rng().reseed(5, 3, &Device::Cpu).unwrap();
                let logits = model.forward(&ids, &types, &mask, true).unwrap();
                model.loss(&logits, &labels, &Default::default()).unwrap()
            };
            with_kernels(fused, || {
                assert_gradients(&varmap, &loss(&adapted), |name| {
                    is_lora(name) || is_head(name)
                });
            });
            if dtype == DType::F32 {
                let grads_of = |model: &Classifier| {
                    let grads = with_kernels(fused, || loss(model).backward().unwrap());
                    named_vars(&varmap)
                        .into_iter()
                        .filter_map(|(name, var)| Some((name, grads.get(var.as_tensor())?.clone())))
                        .collect::<Vec<_>>()
                };
                let grads = grads_of(&adapted);
                // With gradient checkpointing the adapters get the same gradients: the replayed
                // layers form their summed weights again.
                let mut checkpointed = adapted.clone();
                checkpointed.set_gradient_checkpointing(true);
                for ((name, a), (_, b)) in grads.iter().zip(&grads_of(&checkpointed)) {
                    let diff = max_abs_diff(a, b);
                    assert!(
                        diff <= 1e-6 * max_abs(a),
                        "{what}: {name}: checkpointing changed the gradient by {diff}"
                    );
                }
                f32_grads.push(grads);
            }
        }
        // The fused kernels' gradients (through the summed weight) are the primitive ops'.
        let [fused, primitive] = &f32_grads[..] else {
            panic!("two f32 runs")
        };
        assert_eq!(
            fused.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            primitive.iter().map(|(name, _)| name).collect::<Vec<_>>()
        );
        for ((name, a), (_, b)) in fused.iter().zip(primitive) {
            let diff = max_abs_diff(a, b);
            assert!(
                diff <= 1e-4 * max_abs(b),
                "{:?}: {name}: fused and primitive gradients differ by {diff} (largest {})",
                config.model_type,
                max_abs(b)
            );
        }
    }
}

/// Runs `f` on the fused kernels, or with them off (primitive ops).
fn with_kernels<T>(fused: bool, f: impl FnOnce() -> T) -> T {
    if fused {
        f()
    } else {
        wick_model::fused::without_fused(f)
    }
}

/// Knowledge distillation: with a teacher's probabilities the objective is `(1 - λ)` times the
/// plain one plus `λ` times the distillation term of the same pass's logits, under R-Drop too
/// (each view against the same teacher row); the term alone reaches every variable; and a
/// multi-label model refuses a teacher.
#[test]
fn a_teacher_mixes_the_distillation_term_into_the_objective() {
    let config = BertConfig::tiny(100);
    let still = BertConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..config.clone()
    };
    let (varmap, classifier) = tiny_f32_with(&still, 3, Task::SingleLabel, 0.0);
    init_all(&varmap, 0.05, 7).unwrap();
    let (ids, types, mask) = four_texts();
    let labels = Tensor::new(&[0u32, 1, 2, 1], &Device::Cpu).unwrap();
    let teacher = Tensor::new(
        &[
            [0.7f32, 0.2, 0.1],
            [0.1, 0.8, 0.1],
            [0.3, 0.3, 0.4],
            [0.0, 1.0, 0.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let options = LossOptions {
        distill_weight: 0.3,
        distill_temperature: 2.0,
        ..Default::default()
    };
    let with = classifier
        .train_objective(&ids, &types, &mask, &labels, Some(&teacher), &options)
        .unwrap();
    let logits = classifier.forward(&ids, &types, &mask, true).unwrap();
    let plain = classifier.loss(&logits, &labels, &options).unwrap();
    let kd = wick_model::loss::distillation_kl(&logits, &teacher, 2.0).unwrap();
    let scalar = |t: &Tensor| t.to_scalar::<f32>().unwrap();
    let expected = 0.7 * scalar(&plain) + 0.3 * scalar(&kd);
    assert!(
        (scalar(&with) - expected).abs() < 1e-6,
        "{} vs {expected}",
        scalar(&with)
    );
    assert!(
        scalar(&kd) > 1e-3,
        "the teacher agrees with the model: {}",
        scalar(&kd)
    );
    assert_every_variable_has_a_gradient(&varmap, &kd);

    // Under R-Drop without dropout the two views are one: the same value.
    let rdrop = LossOptions {
        rdrop_weight: 1.0,
        ..options.clone()
    };
    let both = classifier
        .train_objective(&ids, &types, &mask, &labels, Some(&teacher), &rdrop)
        .unwrap();
    assert!(
        (scalar(&both) - expected).abs() < 1e-5,
        "{} vs {expected}",
        scalar(&both)
    );

    let (_, multi) = tiny_f32_with(&config, 3, Task::MultiLabel, 0.0);
    let targets = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
    let err = multi
        .train_objective(&ids, &types, &mask, &targets, Some(&teacher), &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("single-label"), "{err}");
}
