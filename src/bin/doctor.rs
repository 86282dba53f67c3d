//! `doctor`: what this build of wick can run on, here. Backends built in versus available, the
//! device `auto` picks and why, a timed op check with one backward pass on every available
//! device, memory and CPU facts, and the Hugging Face Hub settings (cache, offline mode,
//! endpoint, where a token would come from, whether the default model is cached, what the cache
//! holds). `--json` prints one JSON object instead of text.
//!
//! The facts come from `wick_trainer::device`; this file only gathers and renders them.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use wick_model::hub::{self, CacheContents, HubSettings, ModelSource};
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
    /// The Hub settings and cache, or why they cannot be read (no cache directory).
    hub: Result<HubFacts, String>,
}

/// What model and data downloads would use, read from the environment as `train` reads it.
struct HubFacts {
    settings: HubSettings,
    token: String,
    /// The default model's commit when the cache holds all its files, else why not.
    default_model: Result<String, String>,
    contents: CacheContents,
}

fn hub_facts() -> Result<HubFacts, String> {
    let settings = HubSettings::from_env().map_err(|e| e.to_string())?;
    let offline = HubSettings {
        offline: true,
        ..settings.clone()
    };
    let default_model = hub::resolve_in(&ModelSource::default(), &offline)
        .map(|resolved| resolved.commit.unwrap_or_default())
        .map_err(|_| "not cached: `make model` lays it out without Hub access".to_string());
    Ok(HubFacts {
        token: hub::token_source(&settings),
        contents: hub::cache_contents(&settings.cache_dir).map_err(|e| e.to_string())?,
        default_model,
        settings,
    })
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
        hub: hub_facts(),
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
        "hub": match &report.hub {
            Ok(hub) => json!({
                "cache_dir": hub.settings.cache_dir,
                "offline": hub.settings.offline,
                "endpoint": hub.settings.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT),
                "token": hub.token,
                "default_model": {
                    "id": hub::DEFAULT_MODEL_ID,
                    "cached": hub.default_model.is_ok(),
                    "commit": hub.default_model.as_ref().ok(),
                },
                "cached_models": hub.contents.models,
                "cached_datasets": hub.contents.datasets,
            }),
            Err(err) => json!({ "error": err }),
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
    out += &hub_text(&report.hub);
    out
}

/// The Hub hf-hub talks to without `HF_ENDPOINT`.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

fn hub_text(hub: &Result<HubFacts, String>) -> String {
    let hub = match hub {
        Ok(hub) => hub,
        Err(err) => return format!("\nHugging Face Hub: {err}\n"),
    };
    let yes_no = |on: bool| if on { "yes" } else { "no" };
    let list = |ids: &[String]| match ids.len() {
        0 => "none".to_string(),
        n => format!("{n}: {}", ids.join(", ")),
    };
    let mut out = "\nHugging Face Hub (models and hf://datasets/... data files):\n".to_string();
    out += &format!("  cache:           {}\n", hub.settings.cache_dir.display());
    out += &format!(
        "  offline:         {} (HF_HUB_OFFLINE)\n",
        yes_no(hub.settings.offline)
    );
    out += &format!(
        "  endpoint:        {}\n",
        hub.settings.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)
    );
    out += &format!("  token:           {}\n", hub.token);
    out += &format!(
        "  default model:   {} {}\n",
        hub::DEFAULT_MODEL_ID,
        match &hub.default_model {
            Ok(commit) => format!("cached (commit {commit})"),
            Err(why) => why.clone(),
        }
    );
    out += &format!("  cached models:   {}\n", list(&hub.contents.models));
    out += &format!("  cached datasets: {}\n", list(&hub.contents.datasets));
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
