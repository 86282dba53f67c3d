//! The accelerator path against the CPU, on the accelerator `--device auto` picks (Metal, else
//! CUDA): a tiny BERT with the same seeded weights and the same padded batch on both devices gives
//! the same logits, loss (also with the contrastive term and R-Drop) and gradient for every variable, and
//! AdamW steps leave the same losses and weights while reading nothing back from the device (and
//! the same weight average). Low precision stays finite with padding and close to f32. Built without an accelerator feature, or run where none opens, each
//! test prints why it skipped and passes: `cargo test --features cuda` runs on any machine.
//!
//! On CUDA the model runs wick's fused kernels (`wick_model::cuda`), whose dropout masks are the
//! CPU kernels' for the same key: with dropout on, both devices still compute the same function.
//! Each kernel is also compared, forward and gradients, with the CPU at the widths of real models
//! (rows of 384 and 768 values, 100 and 128 keys), and in bf16 with f32.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use wick_data::TensorBatch;
use wick_model::classifier::LossOptions;
use wick_model::weights::{init_all, named_vars};
use wick_model::{BertConfig, Classifier, ModelType, Task};
use wick_trainer::device::{choose, DeviceRequest};
use wick_trainer::ema::WeightAverage;
use wick_trainer::fit::optimizer_step;
use wick_trainer::optim::{AdamW, Gradients, ParamSpec};

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
    model_with_dropout(device, dtype, 0.0)
}

/// A tiny BERT with dropout `p` everywhere, seeded weights and dropout keys.
fn model_with_dropout(device: &Device, dtype: DType, p: f64) -> (VarMap, Classifier) {
    tiny_model(device, dtype, p, ModelType::Bert)
}

/// A tiny encoder of the family `model_type` (MPNet pads with id 0 here, as [`batch`] does),
/// dropout `p` everywhere, seeded weights and dropout keys.
fn tiny_model(
    device: &Device,
    dtype: DType,
    p: f64,
    model_type: ModelType,
) -> (VarMap, Classifier) {
    let config = BertConfig {
        model_type,
        // ELECTRA's narrower embeddings, so that its projection runs.
        embedding_size: (model_type == ModelType::Electra).then_some(16),
        hidden_dropout_prob: p,
        attention_probs_dropout_prob: p,
        ..BertConfig::tiny(100)
    };
    let (varmap, classifier) =
        Classifier::build(&config, 3, Task::SingleLabel, p, dtype, device, 1).unwrap();
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
        teacher: None,
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
    if let Some(accel) = accelerator("accelerator_forward_loss_and_every_gradient_match_the_cpu") {
        forward_loss_and_gradients_match(&accel, 0.0);
    }
}

#[test]
fn cuda_dropout_masks_are_the_cpu_masks_through_the_whole_model() {
    let Some(accel) = accelerator("cuda_dropout_masks_are_the_cpu_masks_through_the_whole_model")
        .filter(|d| d.is_cuda())
    else {
        return;
    };
    forward_loss_and_gradients_match(&accel, 0.3);
}

/// MPNet (relative position bias, its positions, no token types), with and without dropout:
/// training on the accelerator against the CPU, and evaluation too (the fused attention of the
/// CPU and of CUDA takes the position bias and returns its gradient; Metal runs primitive ops).
#[test]
fn accelerator_mpnet_matches_the_cpu_in_training_and_evaluation() {
    let Some(accel) = accelerator("accelerator_mpnet_matches_the_cpu_in_training_and_evaluation")
    else {
        return;
    };
    forward_loss_and_gradients_match_for(&accel, 0.0, ModelType::Mpnet);
    if accel.is_cuda() {
        forward_loss_and_gradients_match_for(&accel, 0.3, ModelType::Mpnet);
    }
    let eval = |device: &Device| {
        let (_, classifier) = tiny_model(device, DType::F32, 0.1, ModelType::Mpnet);
        let b = batch(device);
        on_cpu(
            &classifier
                .forward(&b.input_ids, &b.token_type_ids, &b.attention_mask, false)
                .unwrap(),
        )
    };
    let (cpu, acc) = (eval(&Device::Cpu), eval(&accel));
    assert!(
        max_diff(&cpu, &acc) < 1e-5,
        "evaluation logits differ by {}",
        max_diff(&cpu, &acc)
    );
}

/// RoBERTa and XLM-RoBERTa (BERT's layers with positions after the padding row), DistilBERT (no
/// token types, no dropout after the attention's projection) and ELECTRA (16-wide embeddings
/// projected to 32):
/// training on the accelerator against the CPU, with and without dropout on CUDA.
#[test]
fn accelerator_roberta_distilbert_and_electra_match_the_cpu_in_training() {
    let Some(accel) =
        accelerator("accelerator_roberta_distilbert_and_electra_match_the_cpu_in_training")
    else {
        return;
    };
    for model_type in [
        ModelType::Roberta,
        ModelType::XlmRoberta,
        ModelType::DistilBert,
        ModelType::Electra,
    ] {
        forward_loss_and_gradients_match_for(&accel, 0.0, model_type);
        if accel.is_cuda() {
            forward_loss_and_gradients_match_for(&accel, 0.3, model_type);
        }
    }
}

fn forward_loss_and_gradients_match(accel: &Device, p: f64) {
    forward_loss_and_gradients_match_for(accel, p, ModelType::Bert)
}

fn forward_loss_and_gradients_match_for(accel: &Device, p: f64, model_type: ModelType) {
    objective_and_gradients_match(accel, p, model_type, &LossOptions::default(), None, false)
}

/// Gradient checkpointing on the accelerator (each layer recomputed in backward, its dropout
/// masks replayed) against the CPU without it: the logits, the loss and every gradient, for BERT
/// and for MPNet (whose position bias is an input of every checkpointed layer). With dropout on
/// CUDA, whose masks are the CPU's.
#[test]
fn accelerator_gradient_checkpointing_matches_the_cpu() {
    let Some(accel) = accelerator("accelerator_gradient_checkpointing_matches_the_cpu") else {
        return;
    };
    let p = if accel.is_cuda() { 0.3 } else { 0.0 };
    for model_type in [ModelType::Bert, ModelType::Mpnet] {
        objective_and_gradients_match(&accel, p, model_type, &LossOptions::default(), None, true);
    }
}

/// The objective of `options` (on [`batch`], with `labels` in place of its own if given): logits,
/// its value and every variable's gradient on the accelerator (with gradient checkpointing if
/// `checkpoint`) against the CPU (without).
fn objective_and_gradients_match(
    accel: &Device,
    p: f64,
    model_type: ModelType,
    options: &LossOptions,
    labels: Option<&[u32]>,
    checkpoint: bool,
) {
    let run = |device: &Device| {
        let (varmap, mut classifier) = tiny_model(device, DType::F32, p, model_type);
        classifier.set_gradient_checkpointing(checkpoint && !device.is_cpu());
        let b = relabelled(batch(device), labels);
        let (pooled, logits) = classifier
            .forward_with_pooled(&b.input_ids, &b.token_type_ids, &b.attention_mask, true)
            .unwrap();
        let labels = b.labels.as_ref().unwrap();
        // A teacher's probabilities for the three texts, when distilling.
        let teacher = (options.distill_weight > 0.0).then(|| {
            Tensor::new(
                &[[0.7f32, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]],
                device,
            )
            .unwrap()
        });
        let loss = if options.rdrop_weight > 0.0 || teacher.is_some() {
            // Its own pass (of the stacked batch with R-Drop), with the dropout keys that follow
            // the pass above.
            classifier
                .train_objective(
                    &b.input_ids,
                    &b.token_type_ids,
                    &b.attention_mask,
                    labels,
                    teacher.as_ref(),
                    options,
                )
                .unwrap()
        } else {
            classifier
                .objective(&pooled, &logits, labels, options)
                .unwrap()
        };
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
    let (logits_acc, loss_acc, grads_acc) = run(accel);
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

/// Knowledge distillation (`train.distill_from`): the objective with a teacher's probabilities
/// and every gradient on the accelerator against the CPU, with dropout, alone and under R-Drop.
#[test]
fn accelerator_distillation_matches_the_cpu() {
    let Some(accel) = accelerator("accelerator_distillation_matches_the_cpu") else {
        return;
    };
    let p = if accel.is_cuda() { 0.3 } else { 0.0 };
    let options = LossOptions {
        distill_weight: 0.5,
        distill_temperature: 2.0,
        ..Default::default()
    };
    objective_and_gradients_match(&accel, p, ModelType::Bert, &options, None, false);
    let rdrop = LossOptions {
        rdrop_weight: 1.0,
        ..options
    };
    objective_and_gradients_match(&accel, p, ModelType::Bert, &rdrop, None, false);
}

/// [`batch`] with `labels` in place of its own, if given.
fn relabelled(mut b: TensorBatch, labels: Option<&[u32]>) -> TensorBatch {
    if let Some(labels) = labels {
        b.labels = Some(Tensor::new(labels, b.input_ids.device()).unwrap());
    }
    b
}

/// The supervised contrastive term (`train.contrastive_weight`) on a batch where two texts share
/// a label: the objective and every gradient on the accelerator against the CPU, with and
/// without dropout, and three AdamW steps with it give the CPU's losses and weights while
/// reading nothing back from the device.
#[test]
fn accelerator_contrastive_objective_matches_the_cpu() {
    let Some(accel) = accelerator("accelerator_contrastive_objective_matches_the_cpu") else {
        return;
    };
    let options = LossOptions {
        contrastive_weight: 0.5,
        contrastive_temperature: 0.3,
        ..Default::default()
    };
    let labels: &[u32] = &[0, 1, 0];
    objective_and_gradients_match(&accel, 0.0, ModelType::Bert, &options, Some(labels), false);
    if accel.is_cuda() {
        objective_and_gradients_match(&accel, 0.3, ModelType::Bert, &options, Some(labels), false);
    }
    adamw_steps_match_the_cpu(&accel, 3, 0.0, &options, Some(labels));
}

/// R-Drop (`train.rdrop_weight`): the batch stacked on itself, each copy under its own dropout
/// masks. On CUDA, whose masks are the CPU's, the objective (alone and with the contrastive
/// term) and every gradient match the CPU, and three AdamW steps with it give the CPU's losses
/// and weights while reading nothing back from the device. Other accelerators draw other masks,
/// so there is nothing to compare.
#[test]
fn accelerator_rdrop_objective_matches_the_cpu() {
    let Some(accel) = accelerator("accelerator_rdrop_objective_matches_the_cpu") else {
        return;
    };
    if !accel.is_cuda() {
        eprintln!("skipped: only CUDA draws the CPU's dropout masks");
        return;
    }
    let rdrop = LossOptions {
        rdrop_weight: 1.0,
        ..Default::default()
    };
    let with_contrastive = LossOptions {
        contrastive_weight: 0.5,
        contrastive_temperature: 0.3,
        ..rdrop.clone()
    };
    objective_and_gradients_match(&accel, 0.3, ModelType::Bert, &rdrop, None, false);
    objective_and_gradients_match(
        &accel,
        0.3,
        ModelType::Bert,
        &with_contrastive,
        Some(&[0, 1, 0]),
        false,
    );
    let losses = adamw_steps_match_the_cpu(&accel, 3, 0.3, &rdrop, None);
    let plain = adamw_steps(&Device::Cpu, 1, 0.3, &LossOptions::default(), None).0;
    assert_ne!(
        losses[0], plain[0],
        "R-Drop did not change the first step's objective"
    );
}

/// `steps` AdamW steps of the tiny BERT (dropout `p`) on [`batch`] (relabelled with `labels` if given) under
/// the objective of `options`: each step's loss, the weights after, and the device->host reads
/// the steps made.
fn adamw_steps(
    device: &Device,
    steps: usize,
    p: f64,
    options: &LossOptions,
    labels: Option<&[u32]>,
) -> (Vec<f32>, Vec<(String, Tensor)>, u64) {
    let (varmap, classifier) = model_with_dropout(device, DType::F32, p);
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
    let b = relabelled(batch(device), labels);
    let reads_before = wick_trainer::sync::reads_on_this_thread();
    let losses: Vec<Tensor> = (0..steps)
        .map(|_| {
            let step = optimizer_step(
                &classifier,
                &mut optimizer,
                std::slice::from_ref(&b),
                options,
                1.0,
                1e-3,
                None,
            );
            step.unwrap().loss_sum
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
}

/// [`adamw_steps`] on the CPU and on `accel`: the accelerator's steps read nothing back, and
/// each step's loss and every weight after the last are within 1e-4 of the CPU's. Returns the
/// CPU's losses.
fn adamw_steps_match_the_cpu(
    accel: &Device,
    steps: usize,
    p: f64,
    options: &LossOptions,
    labels: Option<&[u32]>,
) -> Vec<f32> {
    let (losses_cpu, weights_cpu, _) = adamw_steps(&Device::Cpu, steps, p, options, labels);
    let (losses_acc, weights_acc, reads) = adamw_steps(accel, steps, p, options, labels);
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
    for ((name, a), (_, b)) in weights_cpu.iter().zip(&weights_acc) {
        assert!(
            max_diff(a, b) < 1e-4,
            "{name}: weights differ by {} after {steps} steps",
            max_diff(a, b)
        );
    }
    losses_cpu
}

#[test]
fn accelerator_adamw_steps_match_the_cpu_without_reading_the_device() {
    let Some(accel) =
        accelerator("accelerator_adamw_steps_match_the_cpu_without_reading_the_device")
    else {
        return;
    };
    let losses_cpu = adamw_steps_match_the_cpu(&accel, 5, 0.0, &LossOptions::default(), None);
    assert!(
        losses_cpu[4] < losses_cpu[0],
        "five steps did not lower the loss: {losses_cpu:?}"
    );
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

/// Seeded uniform values in [-1, 1).
fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Runs `op` on CPU copies and on `accel` copies (in `dtype`) of `inputs`, then backward of
/// `sum(out * r)` for a fixed random `r`: asserts the outputs and every input gradient agree
/// within `tol` of their largest entry.
fn op_matches_cpu(
    name: &str,
    accel: &Device,
    dtype: DType,
    inputs: &[Tensor],
    tol: f32,
    op: impl Fn(&[Tensor]) -> Tensor,
) {
    let run = |device: &Device, dtype: DType| {
        let vars: Vec<candle_core::Var> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let t = t.to_device(device).unwrap();
                // Parameters (biases, layer-norm weights, tables, a linear layer's weight) stay
                // f32, as in the model.
                let param = t.rank() == 1
                    || name == "embeddings"
                    || (name == "linear" && i == 1)
                    || (name == "self-attention" && i > 0);
                let t = if param { t } else { t.to_dtype(dtype).unwrap() };
                candle_core::Var::from_tensor(&t).unwrap()
            })
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = op(&tensors);
        let r = random(out.dims(), 99).to_device(device).unwrap();
        let loss = (out.to_dtype(DType::F32).unwrap() * r)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|v| on_cpu(grads.get(v.as_tensor()).expect("a gradient")))
            .collect();
        (on_cpu(&out), grads)
    };
    let (out_cpu, grads_cpu) = run(&Device::Cpu, DType::F32);
    let (out_acc, grads_acc) = run(accel, dtype);
    // A gradient that is zero in exact arithmetic (attention's key bias: softmax ignores a
    // shift shared by a row) is rounding noise on both sides: measure each difference against
    // at least 1% of the op's largest gradient.
    let floor = grads_cpu.iter().map(max_abs).fold(1e-6, f32::max) * 1e-2;
    let rel = |a: &Tensor, b: &Tensor| max_diff(a, b) / max_abs(a).max(floor);
    assert!(
        rel(&out_cpu, &out_acc) < tol,
        "{name} {dtype:?}: outputs differ by {} of the largest",
        rel(&out_cpu, &out_acc)
    );
    for (i, (a, b)) in grads_cpu.iter().zip(&grads_acc).enumerate() {
        assert!(
            rel(a, b) < tol,
            "{name} {dtype:?}: gradient of input {i} differs by {} of its largest entry",
            rel(a, b)
        );
    }
}

#[test]
fn cuda_kernels_match_the_cpu_at_model_widths_forward_and_backward() {
    use wick_model::{cuda, fused, ops, DropoutRng};
    let Some(accel) =
        accelerator("cuda_kernels_match_the_cpu_at_model_widths_forward_and_backward")
            .filter(|d| d.is_cuda())
    else {
        return;
    };
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 5e-2)] {
        for hidden in [384, 768] {
            let rows = 256;
            let inputs = [
                random(&[rows, hidden], 1),
                random(&[rows, hidden], 2),
                (random(&[hidden], 3) + 1.0).unwrap(),
                random(&[hidden], 4),
            ];
            for p in [0.0, 0.1] {
                // The CPU's fused kernel and the CUDA kernel draw the same mask from one key.
                op_matches_cpu("residual layer norm", &accel, dtype, &inputs, tol, |t| {
                    let dropout = (p > 0.0).then_some((p, 77));
                    if t[0].device().is_cpu() {
                        fused::residual_layer_norm(&t[0], &t[1], &t[2], &t[3], 1e-12, dropout)
                    } else {
                        cuda::residual_layer_norm(&t[0], Some(&t[1]), &t[2], &t[3], 1e-12, dropout)
                    }
                    .unwrap()
                });
                op_matches_cpu("dropout", &accel, dtype, &inputs[..1], tol, |t| {
                    ops::dropout(&t[0], p.max(0.2), &DropoutRng::new(5), true).unwrap()
                });
            }
            let plain = [inputs[0].clone(), inputs[2].clone(), inputs[3].clone()];
            op_matches_cpu("layer norm", &accel, dtype, &plain, tol, |t| {
                ops::layer_norm(&t[0], &t[1], &t[2], 1e-12).unwrap()
            });
            op_matches_cpu("gelu", &accel, dtype, &inputs[..1], tol, |t| {
                ops::gelu_erf(&(&t[0] * 3.0).unwrap()).unwrap()
            });
        }
        for seq in [100, 128] {
            let (batch, heads) = (3, 4);
            let mask: Vec<f32> = (0..batch * seq)
                .map(|i| f32::from(i % seq < seq - 17 * (i / seq)))
                .collect();
            let mask = Tensor::from_vec(mask, (batch, seq), &Device::Cpu).unwrap();
            let scores = [(random(&[batch, heads, seq, seq], 6) * 4.0).unwrap()];
            for p in [0.0, 0.1] {
                op_matches_cpu(
                    "attention probabilities",
                    &accel,
                    dtype,
                    &scores,
                    tol,
                    |t| {
                        let bias =
                            ops::attention_bias(&mask.to_device(t[0].device()).unwrap()).unwrap();
                        let rng = DropoutRng::new(8);
                        ops::attention_probs(&t[0], &bias, 0.125, p, &rng, true).unwrap()
                    },
                );
            }
        }
        for gelu in [false, true] {
            let (rows, inner, outer) = (200, 384, 1536);
            let inputs = [
                random(&[rows, inner], 20),
                (random(&[outer, inner], 21) * 0.1).unwrap(),
                random(&[outer], 22),
            ];
            op_matches_cpu("linear", &accel, dtype, &inputs, tol, |t| {
                if t[0].device().is_cpu() {
                    let y = ops::linear(&t[0], &t[1], Some(&t[2])).unwrap();
                    if gelu {
                        ops::gelu_erf(&y).unwrap()
                    } else {
                        y
                    }
                } else {
                    cuda::linear(&t[0], &t[1], &t[2], gelu).unwrap()
                }
            });
        }
        // Heads of 64 (bert-base) and 32 (MiniLM), a length that is no multiple of 32.
        for (seq, p, heads) in [(100, 0.0, 6), (128, 0.1, 6), (77, 0.1, 12)] {
            let (batch, hidden) = (3, 384);
            let mask: Vec<f32> = (0..batch * seq)
                .map(|i| f32::from(i % seq < seq - 17 * (i / seq)))
                .collect();
            let mask = Tensor::from_vec(mask, (batch, seq), &Device::Cpu).unwrap();
            let mut inputs = vec![random(&[batch * seq, hidden], 30)];
            inputs.extend((0..3).map(|i| (random(&[hidden, hidden], 31 + i) * 0.1).unwrap()));
            inputs.extend((0..3).map(|i| random(&[hidden], 34 + i)));
            op_matches_cpu("self-attention", &accel, dtype, &inputs, tol, |t| {
                let device = t[0].device();
                let bias = ops::attention_bias(&mask.to_device(device).unwrap()).unwrap();
                let rng = DropoutRng::new(8);
                let scale = 1.0 / ((hidden / heads) as f64).sqrt();
                if device.is_cpu() {
                    let split = |i: usize| {
                        ops::linear(&t[0], &t[i], Some(&t[i + 3]))
                            .unwrap()
                            .reshape((batch, seq, heads, hidden / heads))
                            .unwrap()
                            .transpose(1, 2)
                            .unwrap()
                            .contiguous()
                            .unwrap()
                    };
                    let (q, k, v) = (split(1), split(2), split(3));
                    let scores = q.matmul(&k.t().unwrap()).unwrap();
                    let probs = ops::attention_probs(&scores, &bias, scale, p, &rng, true).unwrap();
                    probs
                        .matmul(&v)
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .reshape((batch * seq, hidden))
                        .unwrap()
                } else {
                    let dropout = (p > 0.0).then(|| (p, rng.draw_key()));
                    cuda::self_attention(
                        &t[0],
                        [&t[1], &t[2], &t[3]],
                        [&t[4], &t[5], &t[6]],
                        &bias,
                        None,
                        heads,
                        scale,
                        dropout,
                    )
                    .unwrap()
                }
            });
        }
        let (n, hidden) = (300, 384);
        let tables = [
            random(&[1000, hidden], 10),
            random(&[512, hidden], 11),
            random(&[2, hidden], 12),
        ];
        // Repeated ids (a padding id most of all) and both token types.
        let ids = |modulo: u32, seed: u32| {
            let v: Vec<u32> = (0..n as u32)
                .map(|i| {
                    if i % 3 == 0 {
                        0
                    } else {
                        (i * 7919 + seed) % modulo
                    }
                })
                .collect();
            Tensor::from_vec(v, n, &Device::Cpu).unwrap()
        };
        let id_sets = [ids(1000, 1), ids(512, 2), ids(2, 3)];
        op_matches_cpu("embeddings", &accel, dtype, &tables, 1e-5, |t| {
            let device = t[0].device();
            let ids: Vec<Tensor> = id_sets
                .iter()
                .map(|i| i.to_device(device).unwrap())
                .collect();
            if device.is_cpu() {
                let gather = |table: &Tensor, ids: &Tensor| table.index_select(ids, 0).unwrap();
                ((gather(&t[0], &ids[0]) + gather(&t[2], &ids[2])).unwrap()
                    + gather(&t[1], &ids[1]))
                .unwrap()
            } else {
                cuda::embeddings([&t[0], &t[1], &t[2]], [&ids[0], &ids[1], &ids[2]]).unwrap()
            }
        });
    }
}

/// A parameter `w`, a copy of `start` on `device`, and AdamW over it (weight decay 0.01).
fn one_param_adamw(start: &Tensor, device: &Device) -> (candle_core::Var, AdamW) {
    let var = candle_core::Var::from_tensor(&start.to_device(device).unwrap()).unwrap();
    let spec = ParamSpec {
        name: "w".into(),
        var: var.clone(),
        weight_decay: 0.01,
        lr_scale: 1.0,
    };
    let optimizer = AdamW::new(vec![spec], 0.9, 0.999, 1e-8).unwrap();
    (var, optimizer)
}

/// The gradient of `sum((w * target)^2)` at `var`'s value, as `optimizer` takes it.
fn quadratic_grads(var: &candle_core::Var, target: &Tensor, optimizer: &AdamW) -> Gradients {
    let loss = (var.as_tensor() * target.to_device(var.device()).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    optimizer.collect(&loss.backward().unwrap())
}

#[test]
fn cuda_adamw_skip_flag_leaves_a_skipped_step_unchanged() {
    let Some(accel) =
        accelerator("cuda_adamw_skip_flag_leaves_a_skipped_step_unchanged").filter(|d| d.is_cuda())
    else {
        return;
    };
    let start = random(&[64, 48], 1);
    let target = random(&[64, 48], 2);
    // One AdamW step of `sum((w * t)^2)` with loss scaling's skip flag (`None`: no flag).
    let run = |flag: Option<u8>| {
        let (var, mut optimizer) = one_param_adamw(&start, &accel);
        let grads = quadratic_grads(&var, &target, &optimizer);
        let flag = flag.map(|f| Tensor::new(f, &accel).unwrap());
        optimizer.step_if(&grads, 1e-2, flag.as_ref()).unwrap();
        on_cpu(var.as_tensor())
    };
    assert_eq!(
        max_diff(&run(Some(0)), &start),
        0.0,
        "a skipped step moved the weights"
    );
    let applied = run(Some(1));
    assert!(
        max_diff(&applied, &start) > 1e-3,
        "an applied step did not move the weights"
    );
    assert_eq!(
        max_diff(&applied, &run(None)),
        0.0,
        "the flag changed an applied step"
    );
}

/// The weight average (`train.ema_decay`) on the accelerator: five AdamW steps, the average
/// updated after each, give the CPU's trained weights and average; swapping the average in and
/// out leaves the trained weights exactly as they were.
#[test]
fn accelerator_weight_average_matches_the_cpu() {
    let Some(accel) = accelerator("accelerator_weight_average_matches_the_cpu") else {
        return;
    };
    let start = random(&[64, 48], 3);
    let target = random(&[64, 48], 4);
    let run = |device: &Device| {
        let (var, mut optimizer) = one_param_adamw(&start, device);
        let mut average = WeightAverage::new([("w".to_string(), var.clone())], 0.8).unwrap();
        for step in 1..=5 {
            let grads = quadratic_grads(&var, &target, &optimizer);
            optimizer.step(&grads, 1e-2).unwrap();
            average.update(step).unwrap();
        }
        // Copies: on the CPU `on_cpu` shares the variable's storage, which the swaps overwrite.
        let trained = on_cpu(var.as_tensor()).copy().unwrap();
        average.swap_in().unwrap();
        let averaged = on_cpu(var.as_tensor()).copy().unwrap();
        average.swap_out().unwrap();
        assert_eq!(
            max_diff(var.as_tensor(), &trained),
            0.0,
            "{device:?}: swapping in and out changed the trained weights"
        );
        (trained, averaged)
    };
    let (cpu_trained, cpu_average) = run(&Device::Cpu);
    let (accel_trained, accel_average) = run(&accel);
    let trained = max_diff(&cpu_trained, &accel_trained);
    let averaged = max_diff(&cpu_average, &accel_average);
    let moved = max_diff(&cpu_average, &cpu_trained);
    eprintln!("accelerator against the CPU: trained {trained:e}, average {averaged:e}; average against trained {moved:e}");
    assert!(trained < 1e-5, "trained weights differ by {trained}");
    assert!(averaged < 1e-5, "averages differ by {averaged}");
    assert!(moved > 1e-3, "the average is the trained weights");
}

/// LoRA on every kind of linear layer (the adapters' `B` set non-zero) of a tiny BERT and a tiny
/// MPNet, and on query and value only (PEFT's default: the key block of the stacked attention
/// weight frozen, its gradient skipped): training on the accelerator against the CPU, with
/// dropout on CUDA, the logits, the loss and the gradient of every adapter and of the head; the
/// frozen encoder gets none there either.
#[test]
fn accelerator_lora_matches_the_cpu() {
    let Some(accel) = accelerator("accelerator_lora_matches_the_cpu") else {
        return;
    };
    let p = if accel.is_cuda() { 0.3 } else { 0.0 };
    use wick_model::LoraTarget;
    let all = LoraTarget::ALL.to_vec();
    let query_value = vec![LoraTarget::Query, LoraTarget::Value];
    for (model_type, targets) in [
        (ModelType::Bert, &all),
        (ModelType::Mpnet, &all),
        (ModelType::Bert, &query_value),
        (ModelType::Mpnet, &query_value),
    ] {
        let lora = wick_model::LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: targets.clone(),
        };
        let run = |device: &Device| {
            let config = BertConfig {
                model_type,
                hidden_dropout_prob: p,
                attention_probs_dropout_prob: p,
                ..BertConfig::tiny(100)
            };
            let (varmap, classifier) = Classifier::build_with_lora(
                &config,
                3,
                Task::SingleLabel,
                p,
                DType::F32,
                device,
                1,
                &lora,
            )
            .unwrap();
            init_all(&varmap, 0.05, 11).unwrap();
            for (name, var) in named_vars(&varmap) {
                if name.ends_with("lora_B.weight") {
                    let n = var.elem_count() as u32;
                    let values = (Tensor::arange(0u32, n, device)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                        * 0.37)
                        .unwrap()
                        .sin()
                        .unwrap();
                    var.set(&(values * 0.05).unwrap().reshape(var.shape()).unwrap())
                        .unwrap();
                }
            }
            let b = batch(device);
            let logits = classifier
                .forward(&b.input_ids, &b.token_type_ids, &b.attention_mask, true)
                .unwrap();
            let loss = classifier
                .loss(&logits, b.labels.as_ref().unwrap(), &LossOptions::default())
                .unwrap();
            let grads = loss.backward().unwrap();
            let grads: Vec<(String, Option<Tensor>)> = named_vars(&varmap)
                .into_iter()
                .map(|(name, var)| (name, grads.get(var.as_tensor()).map(on_cpu)))
                .collect();
            (on_cpu(&logits), on_cpu(&loss), grads)
        };
        let (logits_cpu, loss_cpu, grads_cpu) = run(&Device::Cpu);
        let (logits_acc, loss_acc, grads_acc) = run(&accel);
        assert!(
            max_diff(&logits_cpu, &logits_acc) < 1e-5,
            "{model_type:?}: logits differ by {}",
            max_diff(&logits_cpu, &logits_acc)
        );
        assert!(
            max_diff(&loss_cpu, &loss_acc) < 1e-5,
            "{model_type:?}: loss differs by {}",
            max_diff(&loss_cpu, &loss_acc)
        );
        let mut trained = 0;
        for ((name, a), (_, b)) in grads_cpu.iter().zip(&grads_acc) {
            let trains = wick_model::weights::is_new(name);
            match (a, b) {
                (Some(a), Some(b)) if trains => {
                    let scale = max_abs(a);
                    assert!(scale > 0.0, "{model_type:?}: {name}: zero gradient");
                    let rel = max_diff(a, b) / scale.max(1e-4);
                    assert!(
                        rel < 1e-3,
                        "{model_type:?}: {name}: gradient differs by {rel} of its largest entry"
                    );
                    trained += 1;
                }
                (None, None) if !trains => {}
                _ => panic!(
                    "{model_type:?}: {name}: gradient on the CPU {}, on the accelerator {}",
                    a.is_some(),
                    b.is_some()
                ),
            }
        }
        // 2 layers x the adapted layers x (A, B), and the head's weight and bias.
        assert_eq!(trained, 2 * targets.len() * 2 + 2, "{model_type:?}");
    }
}

/// `adapt` on the accelerator: two runs write the same bytes, and a run stopped mid-epoch in
/// the full phase and resumed in a new model writes the bytes of one never stopped (dropout is
/// drawn on the device from a generator reseeded per step, so this checks that the seed alone
/// decides the masks there too). Needs the tiny config's tokenizer in the Hub cache.
#[test]
fn accelerator_adaptation_repeats_and_resumes_exactly() {
    use super::adapt::{adapt_on, finished, tiny_adaptation};
    use wick_trainer::adapt::AdaptOutcome;
    if accelerator("accelerator_adaptation_repeats_and_resumes_exactly").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, options) = tiny_adaptation();
    let run = |name: &str, resume: bool, stop_at: Option<usize>| {
        adapt_on(
            DeviceRequest::Auto,
            &tmp.path().join(name),
            &options,
            resume,
            None,
            stop_at,
        )
        .unwrap()
    };
    let weights =
        |name: &str| std::fs::read(tmp.path().join(name).join("model.safetensors")).unwrap();
    let first = finished(run("first", false, None));
    assert!(first.device != "cpu", "ran on {}", first.device);
    assert!(
        first.loss_after < first.loss_before - 0.05,
        "{}",
        first.summary()
    );
    let second = finished(run("second", false, None));
    assert_eq!(
        (
            second.loss_before,
            second.loss_after_head,
            second.loss_after
        ),
        (first.loss_before, first.loss_after_head, first.loss_after)
    );
    assert!(
        weights("first") == weights("second"),
        "a second run wrote other weights"
    );
    assert!(matches!(
        run("stopped", false, Some(10)),
        AdaptOutcome::Stopped { steps: 10, .. }
    ));
    let resumed = finished(run("stopped", true, None));
    assert_eq!(resumed.loss_after, first.loss_after);
    assert!(
        weights("stopped") == weights("first"),
        "the resumed run wrote other weights"
    );
}
