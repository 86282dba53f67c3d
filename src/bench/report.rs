//! Rendering: a table on stdout, or with `--json` one object per measurement per line whose first
//! twelve keys are fixed (`bench` .. `peak_bytes`, null where not applicable), followed by extras.

use anyhow::Result;
use serde::Serialize;
use wick_trainer::budget::human_bytes;

use super::timing::Samples;

/// One measurement. Field order is the JSON key order.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub bench: &'static str,
    pub device: String,
    pub dtype: &'static str,
    pub model: Option<String>,
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    /// Median seconds per call.
    pub seconds: Option<f64>,
    pub examples_per_s: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// Achieved GFLOP/s (matmul FLOPs counted from shapes over the median).
    pub gflops: Option<f64>,
    /// `gflops` over the best matmul GFLOP/s of the same device and dtype in this process.
    pub mfu: Option<f64>,
    /// Peak resident set of the process during this measurement (see `peak_scope`).
    pub peak_bytes: Option<u64>,
    // Extras.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// `[min, max]` seconds over the repeats.
    pub spread: [f64; 2],
    pub repeats: usize,
    pub first_use_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_per_step: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu_ceiling: Option<Ceiling>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup_vs_cpu: Option<f64>,
    /// `measurement`: the high-water mark was reset before it; `process`: lifetime peak.
    pub peak_scope: &'static str,
    pub threads: usize,
    /// `ceiling`: a matmul run only to give a model its MFU denominator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The matmul's kernel (see `matmul::kernel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<&'static str>,
}

impl Record {
    /// A record of `samples` with the timing fields filled and everything model- or
    /// matmul-specific left empty.
    pub fn timed(
        bench: &'static str,
        device: String,
        dtype: &'static str,
        samples: &Samples,
        threads: usize,
        peak_scope: &'static str,
    ) -> Self {
        Self {
            bench,
            device,
            dtype,
            model: None,
            batch: None,
            seq: None,
            seconds: Some(samples.median()),
            examples_per_s: None,
            tokens_per_s: None,
            gflops: None,
            mfu: None,
            peak_bytes: None,
            size: None,
            spread: [samples.min(), samples.max()],
            repeats: samples.seconds.len(),
            first_use_seconds: samples.first_use,
            reads_per_step: None,
            mfu_ceiling: None,
            estimate_bytes: None,
            device_used_bytes: None,
            speedup_vs_cpu: None,
            peak_scope,
            threads,
            role: None,
            kernel: None,
        }
    }
}

/// The matmul a model's MFU is measured against.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ceiling {
    pub size: usize,
    pub gflops: f64,
}

/// Prints records as they are measured (long runs show progress on stdout).
pub struct Report {
    json: bool,
    matmul_header_shown: bool,
}

impl Report {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            matmul_header_shown: false,
        }
    }

    /// A line of context (text mode only: JSON output stays one object per line).
    pub fn note(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    pub fn record(&mut self, record: &Record) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(&FirstUse::of(record))?);
            println!("{}", serde_json::to_string(record)?);
        } else if record.bench == "matmul" {
            self.matmul_row(record);
        } else {
            println!("{}", model_row(record));
        }
        Ok(())
    }

    fn matmul_row(&mut self, r: &Record) {
        if !self.matmul_header_shown {
            println!(
                "  {:<8} {:<5} {:>5} {:>10}  {:<22} {:>9} {:>11} {:>7}  {:<6}",
                "device",
                "dtype",
                "size",
                "median s",
                "[min .. max] s",
                "GFLOP/s",
                "first use s",
                "vs cpu",
                "kernel"
            );
            self.matmul_header_shown = true;
        }
        println!(
            "  {:<8} {:<5} {:>5} {:>10.4}  {:<22} {:>9.1} {:>11.4} {:>7}  {:<6}{}",
            r.device,
            r.dtype,
            r.size.unwrap_or(0),
            r.seconds.unwrap_or(f64::NAN),
            spread(r.spread),
            r.gflops.unwrap_or(f64::NAN),
            r.first_use_seconds,
            r.speedup_vs_cpu
                .map_or("-".to_string(), |x| format!("{x:.1}x")),
            r.kernel.unwrap_or("-"),
            if r.role.is_some() {
                "  (MFU ceiling)"
            } else {
                ""
            }
        );
    }
}

/// The header of a model section's table.
pub fn model_header() -> String {
    format!(
        "  {:<16} {:>8}  {:<20} {:>8} {:>9} {:>8} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "bench",
        "s/step",
        "[min .. max] s",
        "ex/s",
        "tok/s",
        "GFLOP/s",
        "mfu",
        "reads",
        "first use",
        "peak RSS",
        "estimate",
        "cuda used"
    )
}

fn model_row(r: &Record) -> String {
    let bytes = |b: Option<u64>| b.map_or("-".to_string(), human_bytes);
    format!(
        "  {:<16} {:>8.4}  {:<20} {:>8.1} {:>9.0} {:>8.1} {:>6} {:>6} {:>10.3} {:>10} {:>10} {:>10}",
        r.bench,
        r.seconds.unwrap_or(f64::NAN),
        spread(r.spread),
        r.examples_per_s.unwrap_or(f64::NAN),
        r.tokens_per_s.unwrap_or(f64::NAN),
        r.gflops.unwrap_or(f64::NAN),
        r.mfu.map_or("-".to_string(), |m| format!("{:.0}%", m * 100.0)),
        r.reads_per_step
            .map_or("-".to_string(), |x| format!("{x:.0}")),
        r.first_use_seconds,
        bytes(r.peak_bytes),
        bytes(r.estimate_bytes),
        bytes(r.device_used_bytes),
    )
}

fn spread([min, max]: [f64; 2]) -> String {
    format!("[{min:.4} .. {max:.4}]")
}

/// The separate JSON line for the first call's time (allocation, kernel choice, CUDA PTX JIT):
/// the record's schema with `seconds` = that time, and `of` naming the measurement.
#[derive(Serialize)]
struct FirstUse<'a> {
    bench: &'static str,
    device: &'a str,
    dtype: &'static str,
    model: Option<&'a str>,
    batch: Option<usize>,
    seq: Option<usize>,
    seconds: f64,
    examples_per_s: Option<f64>,
    tokens_per_s: Option<f64>,
    gflops: Option<f64>,
    mfu: Option<f64>,
    peak_bytes: Option<u64>,
    of: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<usize>,
}

impl<'a> FirstUse<'a> {
    fn of(r: &'a Record) -> Self {
        Self {
            bench: "first_use",
            device: &r.device,
            dtype: r.dtype,
            model: r.model.as_deref(),
            batch: r.batch,
            seq: r.seq,
            seconds: r.first_use_seconds,
            examples_per_s: None,
            tokens_per_s: None,
            gflops: None,
            mfu: None,
            peak_bytes: None,
            of: r.bench,
            size: r.size,
        }
    }
}
