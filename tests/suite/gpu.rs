//! The accelerator path against the CPU, on the accelerator `--device auto` picks (Metal, else
//! CUDA): a tiny BERT with the same seeded weights and the same padded batch on both devices gives
//! the same logits, loss and gradient for every variable, and five AdamW steps leave the same
//! losses and weights while reading nothing back from the device. Low precision stays finite with
//! padding and close to f32. Built without an accelerator feature, or run where none opens, each
//! test prints why it skipped and passes: `cargo test --features cuda` runs on any machine.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use wick_data::TensorBatch;
use wick_model::weights::{init_all, named_vars};
use wick_model::{BertConfig, Classifier, Task};
use wick_trainer::device::{choose, DeviceRequest};
use wick_trainer::fit::optimizer_step;
use wick_trainer::optim::{AdamW, ParamSpec};

/// The accelerator, or `None` after printing why this test skips.
fn accelerator(test: &str) -> Option<Device> {
    match choose(DeviceRequest::Auto) {
        Ok(chosen) if !chosen.device.is_cpu() => Some(chosen.device),
        Ok(chosen) => {
            eprintln!("skipping {test}: no accelerator ({})", chosen.reason);
            None
        }
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

/// A tiny BERT without dropout (so both devices compute the same function), seeded weights.
fn model(device: &Device, dtype: DType) -> (VarMap, Classifier) {
    let config = BertConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..BertConfig::tiny(100)
    };
    let (varmap, classifier) =
        Classifier::build(&config, 3, Task::SingleLabel, 0.0, dtype, device, 1).unwrap();
    init_all(&varmap, 0.05, 11).unwrap();
    (varmap, classifier)
}

/// Three texts right-padded to 7 tokens, both token types, labels 0, 1, 2.
fn batch(device: &Device) -> TensorBatch {
    let ids: Vec<u32> = vec![
        2, 5, 9, 11, 3, 0, 0, //
        2, 7, 3, 0, 0, 0, 0, //
        2, 40, 41, 42, 43, 44, 3,
    ];
    let mask: Vec<u32> = ids.iter().map(|&id| u32::from(id != 0)).collect();
    let types: Vec<u32> = (0..21).map(|i| u32::from(i >= 14 && i % 7 >= 3)).collect();
    let t = |v: Vec<u32>| Tensor::from_vec(v, (3, 7), device).unwrap();
    TensorBatch {
        input_ids: t(ids),
        attention_mask: t(mask),
        token_type_ids: t(types),
        labels: Some(Tensor::new(&[0u32, 1, 2], device).unwrap()),
    }
}

fn on_cpu(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(on_cpu(a) - on_cpu(b)).unwrap())
}

#[test]
fn accelerator_forward_loss_and_every_gradient_match_the_cpu() {
    let Some(accel) = accelerator("accelerator_forward_loss_and_every_gradient_match_the_cpu")
    else {
        return;
    };
    let run = |device: &Device| {
        let (varmap, classifier) = model(device, DType::F32);
        let b = batch(device);
        let logits = classifier
            .forward(&b.input_ids, &b.token_type_ids, &b.attention_mask, true)
            .unwrap();
        let loss = classifier
            .loss(&logits, b.labels.as_ref().unwrap(), &Default::default())
            .unwrap();
        let grads = loss.backward().unwrap();
        let grads: Vec<(String, Tensor)> = named_vars(&varmap)
            .into_iter()
            .map(|(name, var)| {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no gradient"));
                (name, on_cpu(g))
            })
            .collect();
        (on_cpu(&logits), on_cpu(&loss), grads)
    };
    let (logits_cpu, loss_cpu, grads_cpu) = run(&Device::Cpu);
    let (logits_acc, loss_acc, grads_acc) = run(&accel);
    assert!(
        max_diff(&logits_cpu, &logits_acc) < 1e-5,
        "logits differ by {}",
        max_diff(&logits_cpu, &logits_acc)
    );
    assert!(
        max_diff(&loss_cpu, &loss_acc) < 1e-5,
        "loss differs by {}",
        max_diff(&loss_cpu, &loss_acc)
    );
    for ((name, a), (_, b)) in grads_cpu.iter().zip(&grads_acc) {
        let scale = max_abs(a).max(1e-4);
        let rel = max_diff(a, b) / scale;
        assert!(
            rel < 1e-3,
            "{name}: gradient differs by {rel} of its largest entry"
        );
    }
}

#[test]
fn accelerator_adamw_steps_match_the_cpu_without_reading_the_device() {
    let Some(accel) =
        accelerator("accelerator_adamw_steps_match_the_cpu_without_reading_the_device")
    else {
        return;
    };
    let run = |device: &Device| {
        let (varmap, classifier) = model(device, DType::F32);
        let params = named_vars(&varmap)
            .into_iter()
            .map(|(name, var)| ParamSpec {
                weight_decay: 0.01,
                lr_scale: 1.0,
                name,
                var,
            })
            .collect();
        let mut optimizer = AdamW::new(params, 0.9, 0.999, 1e-8).unwrap();
        let b = batch(device);
        let reads_before = wick_trainer::sync::reads_on_this_thread();
        let losses: Vec<Tensor> = (0..5)
            .map(|_| {
                optimizer_step(
                    &classifier,
                    &mut optimizer,
                    std::slice::from_ref(&b),
                    &Default::default(),
                    1.0,
                    1e-3,
                    None,
                )
                .unwrap()
                .loss_sum
            })
            .collect();
        let reads = wick_trainer::sync::reads_on_this_thread() - reads_before;
        let losses: Vec<f32> = losses
            .iter()
            .map(|l| on_cpu(l).to_scalar::<f32>().unwrap())
            .collect();
        let weights: Vec<(String, Tensor)> = named_vars(&varmap)
            .into_iter()
            .map(|(name, var)| (name, on_cpu(var.as_tensor())))
            .collect();
        (losses, weights, reads)
    };
    let (losses_cpu, weights_cpu, _) = run(&Device::Cpu);
    let (losses_acc, weights_acc, reads) = run(&accel);
    assert_eq!(
        reads, 0,
        "optimizer steps read {reads} values back from the device"
    );
    for (step, (a, b)) in losses_cpu.iter().zip(&losses_acc).enumerate() {
        assert!(
            (a - b).abs() < 1e-4,
            "step {}: loss {a} on the CPU, {b} on the accelerator",
            step + 1
        );
    }
    assert!(
        losses_cpu[4] < losses_cpu[0],
        "five steps did not lower the loss: {losses_cpu:?}"
    );
    for ((name, a), (_, b)) in weights_cpu.iter().zip(&weights_acc) {
        assert!(
            max_diff(a, b) < 1e-4,
            "{name}: weights differ by {} after 5 steps",
            max_diff(a, b)
        );
    }
}

#[test]
fn accelerator_low_precision_with_padding_is_finite_and_close_to_f32() {
    let Some(accel) =
        accelerator("accelerator_low_precision_with_padding_is_finite_and_close_to_f32")
    else {
        return;
    };
    let logits = |dtype: DType| {
        let (_, classifier) = model(&accel, dtype);
        let b = batch(&accel);
        on_cpu(
            &classifier
                .forward(&b.input_ids, &b.token_type_ids, &b.attention_mask, false)
                .unwrap(),
        )
    };
    let reference = logits(DType::F32);
    for dtype in [DType::BF16, DType::F16] {
        let low = logits(dtype);
        let total = low.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(total.is_finite(), "{dtype:?} logits are not finite");
        assert!(
            max_diff(&low, &reference) < 5e-2,
            "{dtype:?} logits differ from f32 by {}",
            max_diff(&low, &reference)
        );
    }
}
