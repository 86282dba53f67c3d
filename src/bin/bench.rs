//! `bench`: how fast wick runs here. Square matmul GFLOP/s per device and dtype (the ceiling),
//! then per model: forward, forward+backward and the trainer's full training step, with
//! examples/s, tokens/s, achieved GFLOP/s, MFU against that ceiling, device->host reads per
//! step, and measured peak memory next to the `MemoryBudget` estimate.
//!
//! The measurements live in `src/bench/`; this file only sequences and renders them.

#[path = "../bench/mod.rs"]
mod bench;

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Parser;
use wick_trainer::budget::{Kernels, MemoryBudget};
use wick_trainer::device::{self, device_name, Chosen};

use bench::cli::{Args, Plan};
use bench::model::{Harness, ModelBench, ModelSpec, NUM_LABELS};
use bench::report::{model_header, Ceiling, Record, Report};
use bench::{flops, matmul, memory};

/// The matmul size measured for a model's MFU when `matmul` itself was not asked for: large
/// enough to be compute bound, small enough to take a second on a laptop CPU.
const CEILING_SIZE_CPU: usize = 2048;
const CEILING_SIZE_ACCELERATOR: usize = 4096;

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let plan = Plan::new(args)?;
    let threads = set_threads(plan.threads)?;
    let chosen = device::choose(plan.device).context("choosing the device")?;
    let mut session = Session::new(&plan, &chosen, threads);
    session.report.note(&header(&plan, &chosen, threads));
    if plan.matmul {
        session.matmuls()?;
    }
    for spec in &plan.models {
        session.model(spec)?;
    }
    Ok(())
}

/// Candle sizes its CPU thread pool from `RAYON_NUM_THREADS` at first use, so this must run
/// before any tensor exists. (`set_var` is safe in edition 2021; no thread has started yet.)
fn set_threads(threads: Option<usize>) -> Result<usize> {
    if let Some(wanted) = threads {
        std::env::set_var("RAYON_NUM_THREADS", wanted.to_string());
        let got = candle_core::utils::get_num_threads();
        if got != wanted {
            bail!("asked for {wanted} CPU threads but Candle reports {got}");
        }
    }
    Ok(candle_core::utils::get_num_threads())
}

fn header(plan: &Plan, chosen: &Chosen, threads: usize) -> String {
    let t = plan.timing;
    format!(
        "wick bench on {} ({}), {threads} CPU threads\n\
         cpu f32 products (wick's kernels): {}\n\
         timing: first call timed alone (first use), {} warm-up call(s), then median \
         [min .. max] of {} timed calls; device synchronized before every clock read",
        chosen.name,
        chosen.reason,
        wick_model::matmul::describe(),
        t.warmup,
        t.repeats
    )
}

/// Everything the measurements share: the plan, the device, and the best matmul GFLOP/s seen
/// per (device, dtype), the MFU denominators.
struct Session<'a> {
    plan: &'a Plan,
    device: Device,
    threads: usize,
    peak_scope: &'static str,
    ceilings: HashMap<(String, DType), Ceiling>,
    report: Report,
}

impl<'a> Session<'a> {
    fn new(plan: &'a Plan, chosen: &Chosen, threads: usize) -> Self {
        Self {
            plan,
            device: chosen.device.clone(),
            threads,
            peak_scope: if memory::reset_peak() {
                "measurement"
            } else {
                "process"
            },
            ceilings: HashMap::new(),
            report: Report::new(plan.json),
        }
    }

    /// Every requested dtype and size on the device; on an accelerator, CPU f32 first, as the
    /// reference of the speedup column.
    fn matmuls(&mut self) -> Result<()> {
        self.report
            .note("\nmatmul (square, GFLOP/s = 2 n^3 / median; vs cpu = over cpu f32, same size)");
        let device = self.device.clone();
        let mut cpu = HashMap::new();
        if !device.is_cpu() {
            for size in self.plan.sizes(&Device::Cpu) {
                let record = self.matmul(&Device::Cpu, DType::F32, size, None)?;
                cpu.insert(size, record.gflops.unwrap_or(f64::NAN));
                self.report.record(&record)?;
            }
        }
        for dtype in self.matmul_dtypes(&device)? {
            for size in self.plan.sizes(&device) {
                let mut record = self.matmul(&device, dtype, size, None)?;
                record.speedup_vs_cpu = cpu
                    .get(&size)
                    .and_then(|base| record.gflops.map(|g| g / base));
                self.report.record(&record)?;
            }
        }
        Ok(())
    }

    /// `--dtype`, or f32, bf16 and f16 minus those the device cannot multiply (with a note).
    fn matmul_dtypes(&self, device: &Device) -> Result<Vec<DType>> {
        if let Some(dtype) = self.plan.matmul_dtype {
            if !matmul::supports(device, dtype) {
                bail!("{} has no {} matmul", device_name(device), dtype.as_str());
            }
            return Ok(vec![dtype]);
        }
        let (supported, skipped): (Vec<DType>, Vec<DType>) = [DType::F32, DType::BF16, DType::F16]
            .into_iter()
            .partition(|&dtype| matmul::supports(device, dtype));
        for dtype in skipped {
            self.report.note(&format!(
                "  (skipped {}: no matmul for it on {})",
                dtype.as_str(),
                device_name(device)
            ));
        }
        Ok(supported)
    }

    fn matmul(
        &mut self,
        device: &Device,
        dtype: DType,
        size: usize,
        role: Option<&'static str>,
    ) -> Result<Record> {
        memory::reset_peak();
        let samples = matmul::measure(device, dtype, size, self.plan.timing)
            .with_context(|| format!("{size}x{size} {} matmul", dtype.as_str()))?;
        let gflops = flops::square_matmul(size) / samples.median() / 1e9;
        let name = device_name(device);
        let best = self
            .ceilings
            .entry((name.clone(), dtype))
            .or_insert(Ceiling { size, gflops: 0.0 });
        if gflops > best.gflops {
            *best = Ceiling { size, gflops };
        }
        let mut record = Record::timed(
            "matmul",
            name,
            dtype.as_str(),
            &samples,
            self.threads,
            self.peak_scope,
        );
        record.size = Some(size);
        record.gflops = Some(gflops);
        record.peak_bytes = memory::peak_rss(device);
        record.device_used_bytes = memory::device_used(device);
        record.role = role;
        record.kernel = Some(matmul::kernel(device, dtype, size));
        Ok(record)
    }

    /// The best matmul of the model's device and dtype measured so far, measuring one size now
    /// if there is none (only a JSON line shows it; the text names it in the model's header).
    fn ceiling(&mut self, dtype: DType) -> Result<Ceiling> {
        let key = (device_name(&self.device), dtype);
        if let Some(ceiling) = self.ceilings.get(&key) {
            return Ok(*ceiling);
        }
        let size = if self.device.is_cpu() {
            CEILING_SIZE_CPU
        } else {
            CEILING_SIZE_ACCELERATOR
        };
        let device = self.device.clone();
        let record = self.matmul(&device, dtype, size, Some("ceiling"))?;
        if self.plan.json {
            self.report.record(&record)?;
        }
        self.ceilings
            .get(&key)
            .copied()
            .context("matmul ceiling missing after measuring it")
    }

    fn model(&mut self, spec: &ModelSpec) -> Result<()> {
        let plan = self.plan;
        let dtype = plan.model_dtype;
        let ceiling = self.ceiling(dtype)?;
        let mut harness = Harness::build(
            spec,
            dtype,
            &self.device,
            plan.batch,
            plan.seq,
            plan.seed,
            &plan.loss_options,
            &plan.lora,
        )
        .with_context(|| format!("building {}", spec.label))?;
        harness.set_gradient_checkpointing(plan.gradient_checkpointing);
        self.report.note(&format!(
            "\nmodel {}: {:.1}M params ({}), batch {} x seq {}, {} on {}{}\n  \
             mfu ceiling: best {} {} matmul in this process, size {}: {:.1} GFLOP/s ({})\n{}",
            spec.label,
            harness.params() as f64 / 1e6,
            if spec.weights.is_some() {
                "pretrained encoder"
            } else {
                "seeded random init"
            },
            plan.batch,
            plan.seq,
            dtype.as_str(),
            device_name(&self.device),
            training_note(plan),
            device_name(&self.device),
            dtype.as_str(),
            ceiling.size,
            ceiling.gflops,
            matmul::kernel(&self.device, dtype, ceiling.size),
            model_header()
        ));
        for &bench in &plan.model_benches {
            let record = self
                .model_bench(&harness, spec, bench, ceiling)
                .with_context(|| format!("{} of {}", bench.name(), spec.label))?;
            self.report.record(&record)?;
        }
        Ok(())
    }

    fn model_bench(
        &self,
        harness: &Harness,
        spec: &ModelSpec,
        bench: ModelBench,
        ceiling: Ceiling,
    ) -> Result<Record> {
        let plan = self.plan;
        let (batch, seq, dtype) = (plan.batch, plan.seq, plan.model_dtype);
        memory::reset_peak();
        let samples = harness.measure(bench, plan.timing)?;
        let median = samples.median();
        // A training step with R-Drop runs its batch twice: count the work done, while examples
        // and tokens per second count the batch's own texts.
        let rows = batch * plan.loss_options.passes();
        let flop = match bench {
            ModelBench::Forward => flops::forward(&spec.config, batch, seq, NUM_LABELS),
            _ => flops::forward_backward(&spec.config, rows, seq, NUM_LABELS),
        };
        let gflops = flop / median / 1e9;
        let mut record = Record::timed(
            bench.name(),
            device_name(&self.device),
            dtype.as_str(),
            &samples,
            self.threads,
            self.peak_scope,
        );
        record.model = Some(spec.label.clone());
        record.batch = Some(batch);
        record.seq = Some(seq);
        record.examples_per_s = Some(batch as f64 / median);
        record.tokens_per_s = Some((batch * seq) as f64 / median);
        record.gflops = Some(gflops);
        record.mfu = Some(gflops / ceiling.gflops);
        record.mfu_ceiling = Some(ceiling);
        record.reads_per_step = Some(samples.reads_per_call());
        record.peak_bytes = memory::peak_rss(&self.device);
        record.device_used_bytes = memory::device_used(&self.device);
        record.estimate_bytes = Some(estimate(
            spec,
            (harness.params(), harness.trainable()),
            bench,
            plan,
            (&self.device, dtype),
        ));
        Ok(record)
    }
}

/// `MemoryBudget` for what each measurement holds: forward keeps weights and activations,
/// forward+backward adds gradients, a training step adds the AdamW moments.
fn estimate(
    spec: &ModelSpec,
    (params, (trainable, adapted)): (u64, (u64, u64)),
    bench: ModelBench,
    plan: &Plan,
    (device, dtype): (&Device, DType),
) -> u64 {
    let rows = match bench {
        ModelBench::Forward => plan.batch,
        _ => plan.batch * plan.loss_options.passes(),
    };
    let act_bytes = dtype.size_in_bytes() as u64;
    let mut budget = MemoryBudget::estimate(
        &spec.config,
        params,
        trainable,
        (rows as u64, plan.seq as u64),
        act_bytes,
        Kernels::on(device, dtype),
        plan.gradient_checkpointing && bench != ModelBench::Forward,
    );
    if adapted > 0 {
        budget = budget.with_lora(adapted, act_bytes);
    }
    match bench {
        ModelBench::Forward => budget.weights + budget.activations,
        ModelBench::ForwardBackward => budget.weights + budget.gradients + budget.activations,
        ModelBench::TrainStep => budget.total(),
    }
}

/// The header's note on how the training rows differ from a plain step: an objective other than
/// the plain loss, gradient checkpointing.
fn training_note(plan: &Plan) -> String {
    let options = &plan.loss_options;
    let mut note = String::new();
    if options.contrastive_weight > 0.0 {
        note += &format!(
            ", objective with contrastive weight {}",
            options.contrastive_weight
        );
    }
    if options.rdrop_weight > 0.0 {
        note += &format!(
            ", R-Drop weight {} (two passes per batch)",
            options.rdrop_weight
        );
    }
    if plan.gradient_checkpointing {
        note += ", gradient checkpointing (training rows)";
    }
    if plan.lora.enabled() {
        note += &format!(
            ", LoRA rank {} on {}, encoder frozen",
            plan.lora.rank,
            plan.lora.target_names()
        );
    }
    note
}
