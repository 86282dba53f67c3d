//! `doctor`: what this build of wick can run on, here. Backends built in versus available, the
//! device `auto` picks and why, a timed op check with one backward pass on every available
//! device, memory and CPU facts. `--json` prints one JSON object instead of text.
//!
//! The facts come from `wick_trainer::device`; this file only gathers and renders them.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use wick_trainer::device::{self, Availability, DeviceRequest, MemoryFacts, OpCheck};

#[derive(Parser)]
#[command(
    version,
    about = "Report the devices and backends wick can use on this machine"
)]
struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Everything the doctor reports, gathered before anything is printed.
struct Report {
    backends: Vec<&'static str>,
    probes: Vec<Availability>,
    auto_name: String,
    auto_reason: String,
    /// Per available device: its name and the op check, or why the check failed.
    op_checks: Vec<(String, Result<OpCheck, String>)>,
    memory_device: String,
    memory: MemoryFacts,
    threads: usize,
    cpu_features: [(&'static str, bool); 3],
    cpu_matmul: String,
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let report = gather()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&report))?);
    } else {
        print!("{}", to_text(&report));
    }
    Ok(())
}

fn gather() -> anyhow::Result<Report> {
    let probes = device::probe();
    let auto = device::choose(DeviceRequest::Auto).context("choosing the `auto` device")?;
    let mut op_checks = Vec::new();
    for probe in probes.iter().filter(|probe| probe.available) {
        let request: DeviceRequest = probe.backend.parse()?;
        let chosen = device::choose(request).with_context(|| format!("opening {request}"))?;
        let check = device::op_check(&chosen.device).map_err(|err| err.to_string());
        op_checks.push((chosen.name, check));
    }
    Ok(Report {
        backends: device::compiled_backends(),
        memory: device::memory_facts(&auto.device),
        memory_device: auto.name.clone(),
        auto_name: auto.name,
        auto_reason: auto.reason,
        probes,
        op_checks,
        threads: candle_core::utils::get_num_threads(),
        cpu_features: [
            ("avx2", candle_core::utils::with_avx()),
            ("neon", candle_core::utils::with_neon()),
            ("f16c", candle_core::utils::with_f16c()),
        ],
        cpu_matmul: wick_model::matmul::describe(),
    })
}

fn to_json(report: &Report) -> serde_json::Value {
    let op_checks: Vec<_> = report
        .op_checks
        .iter()
        .map(|(name, check)| match check {
            Ok(check) => json!({ "device": name, "ok": true, "result": check }),
            Err(err) => json!({ "device": name, "ok": false, "error": err }),
        })
        .collect();
    let cpu_features: serde_json::Map<_, _> = report
        .cpu_features
        .iter()
        .map(|(name, on)| (name.to_string(), json!(on)))
        .collect();
    json!({
        "wick_version": env!("CARGO_PKG_VERSION"),
        "compiled_backends": report.backends,
        "backends": report.probes,
        "auto": { "device": report.auto_name, "reason": report.auto_reason },
        "op_checks": op_checks,
        "memory": { "device": report.memory_device, "facts": report.memory },
        "cpu": {
            "candle_threads": report.threads,
            "features": cpu_features,
            "f32_products": report.cpu_matmul,
        },
    })
}

fn to_text(report: &Report) -> String {
    let yes_no = |on: bool| if on { "yes" } else { "no" };
    let mut out = format!("wick {}\n", env!("CARGO_PKG_VERSION"));
    out += &format!("compiled-in backends: {}\n\n", report.backends.join(", "));
    out += "backend  compiled  available  detail\n";
    for probe in &report.probes {
        out += &format!(
            "{:<8} {:<9} {:<10} {}\n",
            probe.backend,
            yes_no(probe.compiled),
            yes_no(probe.available),
            probe.detail
        );
    }
    out += &format!(
        "\nauto chooses: {} ({})\n\n",
        report.auto_name, report.auto_reason
    );
    for (name, check) in &report.op_checks {
        out += &match check {
            Ok(c) => format!(
                "op check on {name}: {n}x{n} f32 matmul {:.3} ms ({:.1} GFLOP/s); \
                 row softmax {:.3} ms (max |row sum - 1| {:.1e}); \
                 backward of sum(matmul) max error {:.1e}\n",
                c.matmul_ms,
                c.matmul_gflops,
                c.softmax_ms,
                c.softmax_max_error,
                c.backward_max_error,
                n = c.size,
            ),
            Err(err) => format!("op check on {name}: FAILED: {err}\n"),
        };
    }
    let memory = &report.memory;
    out += &format!("\nmemory (device {}):\n", report.memory_device);
    out += &format!("  total RAM:        {}\n", bytes(memory.total_ram_bytes));
    out += &format!("  process RSS:      {}\n", bytes(memory.process_rss_bytes));
    out += &format!("  peak process RSS: {}\n", bytes(memory.peak_rss_bytes));
    if let Some(set) = memory.metal_recommended_working_set {
        out += &format!("  metal recommended working set: {}\n", bytes(Some(set)));
    }
    if let Some((total, free)) = memory.cuda_total_and_free {
        out += &format!(
            "  cuda memory: {} total, {} free\n",
            bytes(Some(total)),
            bytes(Some(free))
        );
    }
    let features: Vec<_> = report
        .cpu_features
        .iter()
        .map(|(name, on)| format!("{name} {}", yes_no(*on)))
        .collect();
    out += &format!(
        "\ncpu: candle uses {} threads; {}\ncpu f32 products (wick's kernels): {}\n",
        report.threads,
        features.join(", "),
        report.cpu_matmul
    );
    out
}

fn bytes(value: Option<u64>) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let Some(value) = value else {
        return "unknown".to_string();
    };
    let mut scaled = value as f64;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    format!("{scaled:.1} {}", UNITS[unit])
}
