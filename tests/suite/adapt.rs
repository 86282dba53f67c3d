//! Masked-LM adaptation: the head, loss and one AdamW step against transformers'
//! RobertaForMaskedLM (tests/reference/make_mlm_reference.py wrote the numbers), which variables
//! get gradients in each phase, and the `adapt` binary end to end: the loss falls, a second run
//! writes the same weights, and `train` starts from the adapted encoder. A run stopped and
//! resumed writes the bytes of a run never stopped.

use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use wick_model::hub::{resolve, ModelSource};
use wick_model::mlm::is_lm_head;
use wick_model::weights::{load_safetensors, named_vars};
use wick_model::{BertConfig, MaskedLm};

use wick_trainer::adapt::{adapt, AdaptOptions, AdaptOutcome, AdaptReport, AdaptRun, CHECKPOINT};
use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::optim::{AdamW, ParamSpec};

use super::common::{
    assert_ok, assert_probes, id_matrix, load_tensors, path_str, run_bin, text, Step, StopAt, TINY,
};

#[derive(Deserialize)]
struct Reference {
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u32>>,
    positions: Vec<u32>,
    labels: Vec<u32>,
    /// The optimizer's settings and what PyTorch's step gave.
    #[serde(flatten)]
    step: Step,
}

/// The tiny RoBERTa with the reference's head, and the reference.
fn reference_model() -> (candle_nn::VarMap, MaskedLm, Reference) {
    let dir = super::common::repo_root().join("tests/reference");
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("roberta_mlm_step.json")).unwrap())
            .unwrap();
    let resolved = resolve(&ModelSource::from_path(dir.join("roberta_tiny"))).unwrap();
    // Training passes without dropout, as the reference's.
    let mut config = BertConfig::from_file(&resolved.config).unwrap();
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    let (varmap, model) = MaskedLm::build(&config, DType::F32, &Device::Cpu, 0).unwrap();
    load_safetensors(&varmap, &resolved.weights, false).unwrap();
    let head = load_tensors(&dir.join("roberta_mlm_head.safetensors"));
    let mut set = 0;
    for (name, var) in named_vars(&varmap) {
        if let Some(value) = head.get(&name) {
            var.set(value).unwrap();
            set += 1;
        }
    }
    assert_eq!(set, 5, "the head file fills the five head variables");
    (varmap, model, reference)
}

fn loss(model: &MaskedLm, r: &Reference) -> Tensor {
    let ids = id_matrix(&r.input_ids);
    let positions = Tensor::new(r.positions.as_slice(), &Device::Cpu).unwrap();
    let labels = Tensor::new(r.labels.as_slice(), &Device::Cpu).unwrap();
    model
        .loss(
            &ids,
            &ids.zeros_like().unwrap(),
            &id_matrix(&r.attention_mask),
            &positions,
            &labels,
            true,
        )
        .unwrap()
}

#[test]
fn one_masked_lm_step_matches_pytorch() {
    let (varmap, model, r) = reference_model();
    let before = loss(&model, &r);
    let value = before.to_scalar::<f32>().unwrap();
    assert!(
        (value - r.step.loss_before).abs() < 1e-5,
        "loss {value} vs PyTorch {}",
        r.step.loss_before
    );
    let params: Vec<ParamSpec> = named_vars(&varmap)
        .into_iter()
        .map(|(name, var)| ParamSpec::new(name, var, r.step.weight_decay, 1.0))
        .collect();
    let mut optimizer = AdamW::new(params, r.step.betas.0, r.step.betas.1, r.step.eps).unwrap();
    let store = before.backward().unwrap();
    // Every variable, the tied word embeddings included, gets a finite, non-zero gradient.
    for (name, var) in named_vars(&varmap) {
        let grad = store
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = grad
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: squared gradient norm {norm}"
        );
    }
    let mut grads = optimizer.collect(&store);
    let norm = grads
        .clip(r.step.max_grad_norm)
        .unwrap()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        (norm - r.step.grad_norm).abs() < 1e-4 * r.step.grad_norm,
        "grad norm {norm} vs PyTorch {}",
        r.step.grad_norm
    );
    optimizer.step(&grads, r.step.lr).unwrap();
    assert_probes(&varmap, &r.step.probes, 2e-6);
    let after = loss(&model, &r).to_scalar::<f32>().unwrap();
    assert!(
        (after - r.step.loss_after).abs() < 1e-4,
        "loss after {after} vs PyTorch {}",
        r.step.loss_after
    );
}

#[test]
fn a_frozen_encoder_sends_gradients_to_the_head_alone() {
    let (varmap, mut model, r) = reference_model();
    model.set_frozen_encoder(true);
    let store = loss(&model, &r).backward().unwrap();
    for (name, var) in named_vars(&varmap) {
        let has = store.get(var.as_tensor()).is_some();
        assert_eq!(
            has,
            is_lm_head(&name),
            "{name}: gradient {has} with the encoder frozen"
        );
    }
}

fn adapt_tiny(out: &Path) -> std::process::Output {
    run_bin(
        "adapt",
        &[
            "--config",
            TINY,
            "--out",
            path_str(out),
            "--epochs",
            "4",
            "--head-epochs",
            "1",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--device",
            "cpu",
        ],
    )
}

#[test]
fn adapt_writes_an_encoder_that_train_starts_from() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("a"), tmp.path().join("b"));
    let output = adapt_tiny(&first);
    assert_ok(&output, "adapt");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first.join("adapt.json")).unwrap()).unwrap();
    let (before, after) = (
        report["loss_before"].as_f64().unwrap(),
        report["loss_after"].as_f64().unwrap(),
    );
    assert!(
        after < before - 0.05,
        "masked-LM loss {before} -> {after}: adaptation did not learn\n{}",
        text(&output.stderr)
    );
    assert_eq!(report["texts"], 27);
    assert_eq!(report["head_from_file"], false);
    // The encoder alone, under Hugging Face names, and the same bytes from a second run.
    let weights = load_tensors(&first.join("model.safetensors"));
    assert!(weights.keys().all(|k| !k.starts_with("lm_head")));
    assert!(weights.contains_key("embeddings.word_embeddings.weight"));
    assert_ok(&adapt_tiny(&second), "adapt again");
    assert_eq!(
        std::fs::read(first.join("model.safetensors")).unwrap(),
        std::fs::read(second.join("model.safetensors")).unwrap(),
        "a second run with the same seed wrote other weights"
    );
    // train starts from it (the tiny config as a pretrained model of the adapted file's shape):
    // every encoder tensor loaded, none left over.
    let tiny = std::fs::read_to_string(super::common::repo_root().join(TINY)).unwrap();
    let config: Vec<String> = tiny
        .lines()
        .filter(|l| {
            ![
                "init =",
                "layers =",
                "hidden_size =",
                "heads =",
                "intermediate_size =",
            ]
            .iter()
            .any(|key| l.starts_with(key))
        })
        .map(|l| match l.starts_with("id =") {
            true => format!("path = \"{}\"", path_str(&first)),
            false => l.to_string(),
        })
        .collect();
    let config_path = tmp.path().join("from_adapted.toml");
    std::fs::write(&config_path, config.join("\n")).unwrap();
    let run = tmp.path().join("run");
    let output = run_bin(
        "train",
        &[
            "--config",
            path_str(&config_path),
            "--set",
            "train.epochs=1",
            "--out",
            path_str(&run),
            "--quiet",
            "--device",
            "cpu",
        ],
    );
    assert_ok(&output, "train from the adapted encoder");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "loaded {} encoder tensors from {}",
            weights.len(),
            first.join("model.safetensors").display()
        )) && stderr.contains("(unused: none)"),
        "{stderr}"
    );
}

#[test]
fn adapt_refuses_bad_settings_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a");
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--mask-prob", "1.5"], &["mask_prob", "between 0 and 1"]),
        (
            &["--resume"],
            &["--resume", "holds no adaptation to resume"],
        ),
        (
            &["--save-minutes", "1e300"],
            &["--save-minutes", "0 or more"],
        ),
        // The config's reading settings are checked as `train` checks them.
        (
            &[
                "--set",
                "data.truncation=\"head_tail\"",
                "--set",
                "data.head_tokens=64",
            ],
            &["data.head_tokens", "max_len"],
        ),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["--config", TINY, "--out", path_str(&out)];
        args.extend_from_slice(extra);
        super::common::assert_fails_naming(&run_bin("adapt", &args), needles);
        assert!(!out.exists(), "a refused run wrote {}", out.display());
    }
}

/// The tiny config (27 texts) with its data path made absolute, and `adapt_tiny`'s settings:
/// 4 batches per epoch, one head epoch then four, 20 steps.
pub(super) fn tiny_adaptation() -> (RunConfig, AdaptOptions) {
    let root = super::common::repo_root();
    let mut config = RunConfig::load(&root.join(TINY), &[]).unwrap();
    config.data.train = root.join(&config.data.train);
    let options = AdaptOptions {
        epochs: 4,
        head_epochs: 1,
        batch_size: 8,
        lr: 1e-3,
        ..AdaptOptions::default()
    };
    (config, options)
}

/// Adapts the tiny config on `device` into `out` with `options`, requesting a stop at step
/// `stop_at`.
pub(super) fn adapt_on(
    device: DeviceRequest,
    out: &Path,
    options: &AdaptOptions,
    resume: bool,
    save_every: Option<Duration>,
    stop_at: Option<usize>,
) -> Result<AdaptOutcome, wick_trainer::error::TrainError> {
    let (config, _) = tiny_adaptation();
    let run = AdaptRun {
        resume,
        save_every,
        ..AdaptRun::new(device, out)
    };
    let mut reporter = StopAt {
        at: stop_at.unwrap_or(usize::MAX),
        flag: run.stop.clone(),
    };
    adapt(&config, &config.data.train, options, &run, &mut reporter)
}

pub(super) fn finished(outcome: AdaptOutcome) -> AdaptReport {
    match outcome {
        AdaptOutcome::Finished(report) => report,
        AdaptOutcome::Stopped { steps, .. } => panic!("stopped at step {steps}"),
    }
}

#[test]
fn an_adaptation_stopped_and_resumed_writes_the_weights_of_one_never_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, options) = tiny_adaptation();
    let whole = tmp.path().join("whole");
    let reference =
        finished(adapt_on(DeviceRequest::Cpu, &whole, &options, false, None, None).unwrap());
    assert_eq!(reference.steps, 20);
    let weights = std::fs::read(whole.join("model.safetensors")).unwrap();
    assert!(
        !whole.join(CHECKPOINT).exists(),
        "a finished run keeps its state"
    );

    // Step 3: mid-epoch in the head phase; 4: the head phase's last step; 10: mid-epoch in the
    // full phase.
    for at in [3, 4, 10] {
        let out = tmp.path().join(format!("stopped-{at}"));
        match adapt_on(DeviceRequest::Cpu, &out, &options, false, None, Some(at)).unwrap() {
            AdaptOutcome::Stopped { checkpoint, steps } => {
                assert_eq!(steps, at);
                assert_eq!(checkpoint, out.join(CHECKPOINT));
            }
            AdaptOutcome::Finished(_) => panic!("a stop at step {at} was not taken"),
        }
        assert!(!out.join("model.safetensors").exists());
        // A fresh run would discard the saved one: refused.
        let err = adapt_on(DeviceRequest::Cpu, &out, &options, false, None, None).unwrap_err();
        assert!(err.to_string().contains("--resume"), "{err}");
        // Other settings cannot continue it.
        let other = AdaptOptions {
            lr: 2e-3,
            ..options.clone()
        };
        let err = adapt_on(DeviceRequest::Cpu, &out, &other, true, None, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("adapt.lr = 0.001, this run asks for 0.002"),
            "{err}"
        );

        let resumed =
            finished(adapt_on(DeviceRequest::Cpu, &out, &options, true, None, None).unwrap());
        assert_eq!(
            std::fs::read(out.join("model.safetensors")).unwrap(),
            weights,
            "stopped at step {at} and resumed, other weights"
        );
        assert_eq!(resumed.steps, reference.steps);
        assert_eq!(
            (
                resumed.loss_before,
                resumed.loss_after_head,
                resumed.loss_after
            ),
            (
                reference.loss_before,
                reference.loss_after_head,
                reference.loss_after
            )
        );
        assert!(!out.join(CHECKPOINT).exists());
    }

    // Saving at every epoch's end changes nothing either.
    let saving = tmp.path().join("saving");
    finished(
        adapt_on(
            DeviceRequest::Cpu,
            &saving,
            &options,
            false,
            Some(Duration::ZERO),
            None,
        )
        .unwrap(),
    );
    assert_eq!(
        std::fs::read(saving.join("model.safetensors")).unwrap(),
        weights
    );
    // A stop requested during the last step ends the run as usual.
    let last = tmp.path().join("last");
    finished(adapt_on(DeviceRequest::Cpu, &last, &options, false, None, Some(20)).unwrap());
    assert_eq!(
        std::fs::read(last.join("model.safetensors")).unwrap(),
        weights
    );
}
