//! One AdamW step of MiniLM (plain, and with the contrastive term), of MPNet and of tiny random
//! RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA models + pooling + head on a fixed batch against
//! PyTorch (tests/reference/make_reference.py wrote the numbers; dropout off, clipping at 1.0,
//! no weight decay on biases and layer-norm weights).

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use wick_model::classifier::LossOptions;
use wick_model::hub::{resolve, ModelSource};
use wick_model::weights::{is_new, load_safetensors, named_vars};
use wick_model::{BertConfig, Classifier, LoraConfig, Task};
use wick_trainer::optim::{AdamW, ParamSpec};

use super::common::{assert_probes, id_matrix, Step};

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    labels: Vec<u32>,
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u32>>,
    token_type_ids: Vec<Vec<u32>>,
    #[serde(default)]
    contrastive_weight: f64,
    #[serde(default)]
    contrastive_temperature: f64,
    /// PEFT's LoRA on the frozen encoder (absent: the whole model trains).
    #[serde(default)]
    lora: LoraConfig,
    /// The optimizer's settings and what PyTorch's step gave.
    #[serde(flatten)]
    step: Step,
}

#[test]
fn one_adamw_step_matches_pytorch() {
    adamw_step_matches_pytorch(
        ModelSource::from_id("sentence-transformers/all-MiniLM-L6-v2"),
        "",
        "",
        "make model",
    );
}

/// MiniLM with the supervised contrastive term (`train.contrastive_weight` 0.5, temperature
/// 0.3) in the objective, from the same head as the plain step.
#[test]
fn one_adamw_step_with_the_contrastive_term_matches_pytorch() {
    adamw_step_matches_pytorch(
        ModelSource::from_id("sentence-transformers/all-MiniLM-L6-v2"),
        "contrastive_",
        "",
        "make model",
    );
}

/// MiniLM with PEFT's LoRA (rank 4, alpha 8) on query, value and both feed-forward layers: the
/// encoder frozen, the adapters (with `B` drawn non-zero, so `A` has a gradient too) and the
/// plain step's head updated.
#[test]
fn one_lora_adamw_step_matches_peft() {
    adamw_step_matches_pytorch(
        ModelSource::from_id("sentence-transformers/all-MiniLM-L6-v2"),
        "lora_",
        "lora_",
        "make model",
    );
}

/// MPNet: its relative position bias table and position embeddings are among the probed weights.
#[test]
fn one_mpnet_adamw_step_matches_pytorch() {
    adamw_step_matches_pytorch(
        ModelSource::from_id("sentence-transformers/all-mpnet-base-v2"),
        "mpnet_",
        "mpnet_",
        "make model-mpnet",
    );
}

/// RoBERTa, on the tiny random model of tests/reference/roberta_tiny: its byte-level BPE ids
/// and pad id, and its position and token-type tables among the probed weights.
#[test]
fn one_roberta_adamw_step_matches_pytorch() {
    tiny_family_adamw_step_matches_pytorch("roberta");
}

/// XLM-RoBERTa, on tests/reference/xlm-roberta_tiny: its unigram vocabulary's ids.
#[test]
fn one_xlm_roberta_adamw_step_matches_pytorch() {
    tiny_family_adamw_step_matches_pytorch("xlm-roberta");
}

/// DistilBERT, on tests/reference/distilbert_tiny: its layer names mapped to BERT's, no
/// token types, its layer norms exempt from decay as BERT's are.
#[test]
fn one_distilbert_adamw_step_matches_pytorch() {
    tiny_family_adamw_step_matches_pytorch("distilbert");
}

/// ELECTRA, on tests/reference/electra_tiny: the projection of its narrower embeddings among
/// the probed weights.
#[test]
fn one_electra_adamw_step_matches_pytorch() {
    tiny_family_adamw_step_matches_pytorch("electra");
}

fn tiny_family_adamw_step_matches_pytorch(family: &str) {
    let dir = super::common::repo_root().join(format!("tests/reference/{family}_tiny"));
    let prefix = format!("{family}_");
    adamw_step_matches_pytorch(
        ModelSource::from_path(dir),
        &prefix,
        &prefix,
        &format!("python tests/reference/make_reference.py --tiny {family}"),
    );
}

/// The step recorded in `{prefix}adamw_step.json`, from the head (and LoRA adapters) in
/// `{head_prefix}adamw_head.safetensors`.
fn adamw_step_matches_pytorch(source: ModelSource, prefix: &str, head_prefix: &str, setup: &str) {
    let dir = super::common::repo_root().join("tests/reference");
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{prefix}adamw_step.json"))).unwrap(),
    )
    .unwrap();
    let model = resolve(&source).unwrap_or_else(|e| panic!("{e}\nrun `{setup}` first"));
    // wick's tokenizer gives the ids PyTorch's did (wick pads with the same pad id).
    let tokenizer = wick_data::TextTokenizer::from_file(&model.tokenizer, 128).unwrap();
    let texts: Vec<&str> = reference.texts.iter().map(String::as_str).collect();
    let encodings = tokenizer.encode(&texts).unwrap();
    for ((text, row), encoding) in texts.iter().zip(&reference.input_ids).zip(encodings) {
        let ids = encoding.ids;
        assert_eq!(ids, row[..ids.len()], "{text}");
        assert!(row[ids.len()..].iter().all(|&id| id == tokenizer.pad_id()));
    }
    let mut config = BertConfig::from_file(&model.config).unwrap();
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    let (varmap, classifier) = Classifier::build_with_lora(
        &config,
        3,
        Task::SingleLabel,
        0.0,
        DType::F32,
        &Device::Cpu,
        0,
        &reference.lora,
    )
    .unwrap();
    load_safetensors(&varmap, &model.weights, false).unwrap();
    let head = candle_core::safetensors::load(
        dir.join(format!("{head_prefix}adamw_head.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    for (name, var) in named_vars(&varmap) {
        match head.get(&name) {
            Some(value) => var.set(value).unwrap(),
            // The head and every adapter start from PyTorch's values.
            None => assert!(!is_new(&name), "{name} is not in the head file"),
        }
    }

    let ids = id_matrix(&reference.input_ids);
    let mask = id_matrix(&reference.attention_mask);
    let types = id_matrix(&reference.token_type_ids);
    let labels = Tensor::new(reference.labels.as_slice(), &Device::Cpu).unwrap();
    let options = LossOptions {
        contrastive_weight: reference.contrastive_weight,
        contrastive_temperature: reference.contrastive_temperature,
        ..Default::default()
    };
    let loss_of = || {
        let (pooled, logits) = classifier
            .forward_with_pooled(&ids, &types, &mask, true)
            .unwrap();
        classifier
            .objective(&pooled, &logits, &labels, &options)
            .unwrap()
    };

    let params = named_vars(&varmap)
        .into_iter()
        .filter(|(name, _)| !reference.lora.enabled() || is_new(name))
        .map(|(name, var)| ParamSpec::new(name, var, reference.step.weight_decay, 1.0))
        .collect();
    let mut optimizer = AdamW::new(
        params,
        reference.step.betas.0,
        reference.step.betas.1,
        reference.step.eps,
    )
    .unwrap();

    let loss = loss_of();
    let loss_before = loss.to_scalar::<f32>().unwrap();
    assert!(
        (loss_before - reference.step.loss_before).abs() < 1e-4,
        "loss before: {loss_before} vs {}",
        reference.step.loss_before
    );
    let mut grads = optimizer.collect(&loss.backward().unwrap());
    let norm = grads
        .clip(reference.step.max_grad_norm)
        .unwrap()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        (norm - reference.step.grad_norm).abs() < 1e-4,
        "grad norm: {norm} vs {}",
        reference.step.grad_norm
    );
    optimizer.step(&grads, reference.step.lr).unwrap();

    assert_probes(&varmap, &reference.step.probes, 1e-4);
    let loss_after = loss_of().to_scalar::<f32>().unwrap();
    assert!(
        (loss_after - reference.step.loss_after).abs() < 1e-4,
        "loss after: {loss_after} vs {}",
        reference.step.loss_after
    );
}
