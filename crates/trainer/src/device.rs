//! Device choice: which backends this build has, which of them work on this machine, which one a
//! run uses and why, and the device facts that `doctor` reports (memory, a timed op check).
//!
//! Two questions are kept apart everywhere: *built with* (a Cargo feature: `cuda`, `metal`) and
//! *available here* (the device opens). Candle's own `utils::cuda_is_available()` and
//! `utils::metal_is_available()` only answer the first (they are `cfg!(feature = ...)`), so
//! availability is judged by opening device 0.
//!
//! A backend can open and still lack an op the model needs (Candle's Metal and CUDA backends do
//! not implement every op for every dtype). [`preflight`] runs a tiny forward+backward on the
//! chosen device before training: under `auto` a failure falls back to CPU with a warning, under
//! a forced device it is an error naming the op. Nothing here falls back silently.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use candle_core::{Device, DeviceLocation, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Errors of device choice; wrapped by the crate's `TrainError`.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{given}`: expected one of {valid}")]
    UnknownRequest { given: String, valid: String },

    #[error(
        "device `{backend}` was requested but this build has no {backend} support: \
         rebuild with `--features {backend}`"
    )]
    NotCompiled { backend: &'static str },

    #[error(
        "device `{backend}` was requested and is compiled in, but {name} could not be opened: \
         {detail}"
    )]
    Unavailable {
        backend: &'static str,
        name: String,
        detail: String,
    },

    /// The check step failed on a forced accelerator; `op` is the op Candle named, if it did.
    #[error(
        "device `{device}` was requested but {what} ({detail}); request device `auto` to fall \
         back to cpu, or `cpu`"
    )]
    Unsupported {
        device: String,
        op: Option<String>,
        what: String,
        detail: String,
    },

    /// The check step failed on the CPU too: the model or the check is broken, not the device.
    #[error("the model check step failed on {device}")]
    CheckFailed {
        device: String,
        #[source]
        source: Box<candle_core::Error>,
    },

    #[error("{what} is on {found} but the model is on {expected}")]
    DeviceMismatch {
        what: String,
        found: String,
        expected: String,
    },
}

/// The device a user asks for (`--device`, or `device` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRequest {
    /// Metal if built in and available, else CUDA likewise, else CPU.
    Auto,
    Cpu,
    Cuda,
    Metal,
}

impl DeviceRequest {
    pub const ALL: [DeviceRequest; 4] = [Self::Auto, Self::Cpu, Self::Cuda, Self::Metal];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceRequest {
    type Err = DeviceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|request| request.as_str() == wanted)
            .ok_or_else(|| DeviceError::UnknownRequest {
                given: text.to_string(),
                valid: Self::ALL.map(Self::as_str).join(", "),
            })
    }
}

/// The backends compiled into this build. Read from candle-core's own flags rather than this
/// crate's features: Cargo unifies features, so candle can have a backend that another crate of
/// the build turned on, and candle's flags are what decide which kernels exist.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut backends = vec!["cpu"];
    if candle_core::utils::cuda_is_available() {
        backends.push("cuda");
    }
    if candle_core::utils::metal_is_available() {
        backends.push("metal");
    }
    if candle_core::utils::has_accelerate() {
        backends.push("accelerate");
    }
    if candle_core::utils::has_mkl() {
        backends.push("mkl");
    }
    backends
}

/// One backend: whether it is built in and whether it works on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct Availability {
    pub backend: &'static str,
    pub compiled: bool,
    pub available: bool,
    /// Why not, or what was opened.
    pub detail: String,
}

/// Probe cpu, cuda and metal, in that order. Opens (and drops) each accelerator that is built in.
pub fn probe() -> Vec<Availability> {
    let mut rows = vec![Availability {
        backend: "cpu",
        compiled: true,
        available: true,
        detail: "always available".to_string(),
    }];
    for accel in [Accel::Cuda, Accel::Metal] {
        let compiled = accel.compiled();
        let (available, detail) = match accel.open() {
            Ok(device) => (true, format!("{} opened", device_name(&device))),
            Err(why) => (false, why.to_string()),
        };
        rows.push(Availability {
            backend: accel.name(),
            compiled,
            available,
            detail,
        });
    }
    rows
}

/// The device a run uses, its printable name and why it was picked.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub device: Device,
    /// `cpu`, `cuda:0` or `metal:0`.
    pub name: String,
    pub reason: String,
}

impl Chosen {
    fn cpu(reason: String) -> Self {
        Self {
            device: Device::Cpu,
            name: "cpu".to_string(),
            reason,
        }
    }

    fn on(device: Device, reason: String) -> Self {
        Self {
            name: device_name(&device),
            device,
            reason,
        }
    }
}

/// Pick the device for `request`. `auto` prefers Metal (the target users' Macs), then CUDA, then
/// CPU, and its reason lists why each skipped backend was skipped. A forced accelerator that is
/// not built in or does not open is an error saying how to fix it.
pub fn choose(request: DeviceRequest) -> Result<Chosen, DeviceError> {
    match request {
        DeviceRequest::Cpu => Ok(Chosen::cpu("cpu requested".to_string())),
        DeviceRequest::Cuda => choose_forced(Accel::Cuda),
        DeviceRequest::Metal => choose_forced(Accel::Metal),
        DeviceRequest::Auto => {
            let mut skipped = Vec::new();
            for accel in [Accel::Metal, Accel::Cuda] {
                match accel.open() {
                    Ok(device) => {
                        let name = device_name(&device);
                        skipped.push(format!("{name} is compiled in and available"));
                        return Ok(Chosen::on(device, skipped.join("; ")));
                    }
                    Err(why) => skipped.push(why.short()),
                }
            }
            skipped.push("using cpu".to_string());
            Ok(Chosen::cpu(skipped.join("; ")))
        }
    }
}

fn choose_forced(accel: Accel) -> Result<Chosen, DeviceError> {
    match accel.open() {
        Ok(device) => Ok(Chosen::on(device, format!("{} requested", accel.name()))),
        Err(OpenError::NotCompiled(_)) => Err(DeviceError::NotCompiled {
            backend: accel.name(),
        }),
        Err(OpenError::Failed(_, detail)) => Err(DeviceError::Unavailable {
            backend: accel.name(),
            name: format!("{}:0", accel.name()),
            detail,
        }),
    }
}

#[derive(Debug, Clone, Copy)]
enum Accel {
    Cuda,
    Metal,
}

enum OpenError {
    NotCompiled(&'static str),
    Failed(&'static str, String),
}

impl OpenError {
    /// The form used inside `auto`'s reason.
    fn short(&self) -> String {
        match self {
            Self::NotCompiled(backend) => format!("{backend} not compiled in"),
            Self::Failed(backend, detail) => format!("{backend}:0 not available ({detail})"),
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotCompiled(backend) => {
                write!(f, "not compiled in: rebuild with `--features {backend}`")
            }
            Self::Failed(backend, detail) => {
                write!(
                    f,
                    "compiled in, but {backend}:0 could not be opened: {detail}"
                )
            }
        }
    }
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Metal => "metal",
        }
    }

    fn compiled(self) -> bool {
        match self {
            Self::Cuda => candle_core::utils::cuda_is_available(),
            Self::Metal => candle_core::utils::metal_is_available(),
        }
    }

    /// Open device 0. Without the feature Candle's dummy backends would return
    /// `NotCompiledWith...Support`; checking first gives the clearer message.
    fn open(self) -> Result<Device, OpenError> {
        if !self.compiled() {
            return Err(OpenError::NotCompiled(self.name()));
        }
        // cudarc loads libcuda at run time and panics (rather than erring) when it is missing,
        // so a CUDA build on a machine without the driver would abort here; catch that and
        // report it. The default panic hook still writes the panic message to stderr.
        let attempt = std::panic::catch_unwind(|| match self {
            Self::Cuda => Device::new_cuda(0),
            Self::Metal => Device::new_metal(0),
        });
        match attempt {
            Ok(Ok(device)) => match wick_model::cuda::configure(&device) {
                Ok(()) => Ok(device),
                Err(err) => Err(OpenError::Failed(self.name(), one_line(&err))),
            },
            Ok(Err(err)) => Err(OpenError::Failed(self.name(), one_line(&err))),
            Err(payload) => {
                let text = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("driver library panicked");
                Err(OpenError::Failed(self.name(), text.to_string()))
            }
        }
    }
}

/// Run `check` (the caller passes a tiny forward+backward of the model) on the chosen device.
///
/// On success the choice stands. On failure: under [`DeviceRequest::Auto`] on an accelerator,
/// fall back to CPU (after running `check` there too) and return a warning naming the op Candle
/// reported; under a forced device, or on CPU, return an error.
pub fn preflight<F>(
    chosen: Chosen,
    request: DeviceRequest,
    check: F,
) -> Result<(Chosen, Option<String>), DeviceError>
where
    F: Fn(&Device) -> candle_core::Result<()>,
{
    let attempt = with_autorelease_pool(|| check(&chosen.device));
    let Some(warning) = judge_preflight(&chosen.name, chosen.device.is_cpu(), request, attempt)?
    else {
        return Ok((chosen, None));
    };
    let cpu = Chosen::cpu(format!("{}; {warning}", chosen.reason));
    check(&cpu.device).map_err(|source| DeviceError::CheckFailed {
        device: cpu.name.clone(),
        source: Box::new(source),
    })?;
    Ok((cpu, Some(warning)))
}

/// The decision of [`preflight`], apart from running anything so that tests can feed it the
/// accelerator failures this machine cannot produce. `Ok(Some(warning))` means "fall back to cpu".
fn judge_preflight(
    device: &str,
    on_cpu: bool,
    request: DeviceRequest,
    attempt: candle_core::Result<()>,
) -> Result<Option<String>, DeviceError> {
    let Err(err) = attempt else {
        return Ok(None);
    };
    if on_cpu {
        return Err(DeviceError::CheckFailed {
            device: device.to_string(),
            source: Box::new(err),
        });
    }
    let op = failing_op(&err);
    let what = match &op {
        Some(op) => format!("{device} lacks op `{op}`"),
        None => format!("the model check step failed on {device}"),
    };
    let detail = format!("error: {}", one_line(&err));
    if request == DeviceRequest::Auto {
        Ok(Some(format!(
            "{what} ({detail}): falling back to cpu; training will be slower"
        )))
    } else {
        Err(DeviceError::Unsupported {
            device: device.to_string(),
            op,
            what,
            detail,
        })
    }
}

/// The op a Candle error blames, where it names one. Structured variants first; otherwise the
/// message shapes Candle's backends use: "no metal implementation for X", "Metal contiguous
/// unary X F16 not implemented", "X is not implemented for F16", "unsupported dtype for X".
fn failing_op(err: &candle_core::Error) -> Option<String> {
    use candle_core::Error as E;
    match err {
        E::UnsupportedDTypeForOp(dtype, op) => Some(format!("{op} ({dtype:?})")),
        E::BackwardNotSupported { op } => Some(format!("{op} backward")),
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            failing_op(inner)
        }
        other => op_from_message(&other.to_string()),
    }
}

fn op_from_message(message: &str) -> Option<String> {
    let message = message.lines().next().unwrap_or_default().trim();
    let lower = message.to_ascii_lowercase();
    // Byte offsets in `lower` are valid in `message`: ASCII lowercasing keeps lengths.
    let op = if let Some(at) = lower.find("implementation for ") {
        &message[at + "implementation for ".len()..]
    } else if let Some(at) = lower.find("unsupported dtype for ") {
        let rest = &message[at + "unsupported dtype for ".len()..];
        rest.split_whitespace().next().unwrap_or_default()
    } else if let Some(at) = lower
        .find(" is not implemented")
        .or_else(|| lower.find(" not implemented"))
        .or_else(|| lower.find(" is not supported on "))
    {
        let before = &message[..at];
        ["metal ", "cuda "]
            .iter()
            .find(|prefix| before.to_ascii_lowercase().starts_with(*prefix))
            .map_or(before, |prefix| &before[prefix.len()..])
    } else {
        ""
    };
    let op = op.trim().trim_end_matches(['.', ':', ',']);
    (!op.is_empty()).then(|| op.to_string())
}

/// Candle errors can carry a backtrace or context on further lines; keep messages to one line.
fn one_line(err: &candle_core::Error) -> String {
    let err = match err {
        candle_core::Error::WithBacktrace { inner, .. } => inner.as_ref(),
        other => other,
    };
    err.to_string()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `cpu`, `cuda:N` or `metal:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_string(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Error unless `found` is the model's device. `what` names the tensor, e.g. "batch `input_ids`".
pub fn ensure_same_device(
    what: &str,
    expected: &Device,
    found: &Device,
) -> Result<(), DeviceError> {
    if expected.same_device(found) {
        Ok(())
    } else {
        Err(DeviceError::DeviceMismatch {
            what: what.to_string(),
            found: device_name(found),
            expected: device_name(expected),
        })
    }
}

/// Wait for queued device work (a no-op on CPU). GPU ops return before they finish, so call this
/// before reading a clock.
pub fn synchronize(device: &Device) -> candle_core::Result<()> {
    device.synchronize()
}

/// Run `f` inside an Objective-C autorelease pool on Metal builds for macOS; elsewhere just `f()`.
///
/// Metal hands back autoreleased objects (command buffers, encoders, descriptors) that are freed
/// only when an enclosing pool drains; a long training loop on a thread without one grows without
/// bound (candle issue 2271). candle-core/candle-metal-kernels 0.11.1 open no pool of their own:
/// they hold `Retained` references where they can ("more elegant than autoreleasepool", in
/// `metal/commands.rs`), which does not cover what Metal itself autoreleases. Wrapping each
/// training step is a cheap guarantee either way.
pub fn with_autorelease_pool<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(all(feature = "metal", target_os = "macos"))]
    {
        objc2::rc::autoreleasepool(|_| f())
    }
    #[cfg(not(all(feature = "metal", target_os = "macos")))]
    {
        f()
    }
}

/// Memory facts for the report and for sizing batches. `None` where the platform or backend does
/// not tell us cheaply.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryFacts {
    pub total_ram_bytes: Option<u64>,
    pub process_rss_bytes: Option<u64>,
    /// Peak resident set of this process (Linux `VmHWM`).
    pub peak_rss_bytes: Option<u64>,
    /// Metal's `recommendedMaxWorkingSetSize`: the most GPU-visible memory before paging hurts.
    pub metal_recommended_working_set: Option<u64>,
    /// `(total, free)` bytes of the CUDA device.
    pub cuda_total_and_free: Option<(u64, u64)>,
}

/// Host memory plus what `device`'s backend reports about its own memory.
pub fn memory_facts(device: &Device) -> MemoryFacts {
    let (total_ram_bytes, process_rss_bytes, peak_rss_bytes) = host_memory();
    MemoryFacts {
        total_ram_bytes,
        process_rss_bytes,
        peak_rss_bytes,
        metal_recommended_working_set: metal_working_set(device),
        cuda_total_and_free: cuda_total_and_free(device),
    }
}

#[cfg(target_os = "linux")]
fn host_memory() -> (Option<u64>, Option<u64>, Option<u64>) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (
        proc_kib_field(&meminfo, "MemTotal:"),
        proc_kib_field(&status, "VmRSS:"),
        proc_kib_field(&status, "VmHWM:"),
    )
}

/// A `Key:   1234 kB` line of /proc, in bytes.
#[cfg(target_os = "linux")]
fn proc_kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The workspace denies `unsafe`, so no `sysctlbyname`/`getrusage` FFI: ask the system tools.
/// Peak RSS would need `getrusage`, so it stays `None` here.
#[cfg(target_os = "macos")]
fn host_memory() -> (Option<u64>, Option<u64>, Option<u64>) {
    let total = command_output("sysctl", &["-n", "hw.memsize"]).and_then(|s| s.parse().ok());
    let pid = std::process::id().to_string();
    let rss = command_output("ps", &["-o", "rss=", "-p", &pid])
        .and_then(|s| s.parse::<u64>().ok())
        .and_then(|kib| kib.checked_mul(1024));
    (total, rss, None)
}

#[cfg(target_os = "macos")]
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn host_memory() -> (Option<u64>, Option<u64>, Option<u64>) {
    (None, None, None)
}

/// `MetalDevice` derefs to candle-metal-kernels' device wrapper, which exposes
/// `recommended_max_working_set_size`, so no objc2 call of our own is needed.
#[cfg(feature = "metal")]
fn metal_working_set(device: &Device) -> Option<u64> {
    let metal = device.as_metal_device().ok()?;
    u64::try_from(metal.device().recommended_max_working_set_size()).ok()
}

#[cfg(not(feature = "metal"))]
fn metal_working_set(_device: &Device) -> Option<u64> {
    None
}

/// Candle's `CudaDevice::cuda_stream()` leads to cudarc's context, whose `mem_get_info` is
/// `cuMemGetInfo`: `(free, total)`.
#[cfg(feature = "cuda")]
fn cuda_total_and_free(device: &Device) -> Option<(u64, u64)> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some((u64::try_from(total).ok()?, u64::try_from(free).ok()?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_total_and_free(_device: &Device) -> Option<(u64, u64)> {
    None
}

/// A timed check that basic ops and autograd work on a device (for `doctor`).
#[derive(Debug, Clone, Serialize)]
pub struct OpCheck {
    pub device: String,
    /// Matrix side of the square f32 matmul.
    pub size: usize,
    pub matmul_ms: f64,
    pub matmul_gflops: f64,
    /// Row softmax (max, sub, exp, sum, div) over the same `(size, size)` matrix.
    pub softmax_ms: f64,
    /// Largest |row sum - 1| of the softmax.
    pub softmax_max_error: f32,
    /// Largest |grad - expected| of `d sum(a @ b) / d a`, whose exact value is `b`'s row sums
    /// broadcast over rows.
    pub backward_max_error: f32,
}

/// Time a 256x256 f32 matmul and a row softmax (after a warm-up that compiles kernels and builds
/// BLAS handles; synchronized before each clock read), then check one backward pass.
pub fn op_check(device: &Device) -> candle_core::Result<OpCheck> {
    const SIZE: usize = 256;
    const REPS: usize = 20;
    with_autorelease_pool(|| {
        let a = Tensor::randn(0f32, 1.0, (SIZE, SIZE), device)?;
        let b = Tensor::randn(0f32, 1.0, (SIZE, SIZE), device)?;
        let softmax = |xs: &Tensor| -> candle_core::Result<Tensor> {
            let exp = xs.broadcast_sub(&xs.max_keepdim(1)?)?.exp()?;
            exp.broadcast_div(&exp.sum_keepdim(1)?)
        };

        a.matmul(&b)?;
        softmax(&a)?;
        synchronize(device)?;

        let start = Instant::now();
        for _ in 0..REPS {
            a.matmul(&b)?;
        }
        synchronize(device)?;
        let matmul_secs = start.elapsed().as_secs_f64() / REPS as f64;

        let start = Instant::now();
        let mut probs = softmax(&a)?;
        for _ in 1..REPS {
            probs = softmax(&a)?;
        }
        synchronize(device)?;
        let softmax_secs = start.elapsed().as_secs_f64() / REPS as f64;

        // Scalars to host: device->host sync points, outside the timed regions.
        let softmax_max_error = (probs.sum(1)? - 1.0)?.abs()?.max(0)?.to_scalar::<f32>()?;

        let weight = Var::from_tensor(&a)?;
        let loss = weight.as_tensor().matmul(&b)?.sum_all()?;
        let grads = loss.backward()?;
        let grad = grads
            .get(weight.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("backward produced no gradient".into()))?;
        let expected = b.sum_keepdim(1)?.t()?.broadcast_as((SIZE, SIZE))?;
        let backward_max_error = (grad - expected)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;

        let flops = 2.0 * (SIZE as f64).powi(3);
        Ok(OpCheck {
            device: device_name(device),
            size: SIZE,
            matmul_ms: matmul_secs * 1e3,
            matmul_gflops: flops / matmul_secs / 1e9,
            softmax_ms: softmax_secs * 1e3,
            softmax_max_error,
            backward_max_error,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn request_parses_lowercase_names_and_displays_them() {
        for request in DeviceRequest::ALL {
            let parsed = request.to_string().parse::<DeviceRequest>().ok();
            assert_eq!(parsed, Some(request));
        }
        assert!(matches!("  METAL ".parse(), Ok(DeviceRequest::Metal)));
    }

    #[test]
    fn unknown_request_lists_valid_values() {
        let Err(err) = "gpu".parse::<DeviceRequest>() else {
            panic!("`gpu` should not parse");
        };
        let text = err.to_string();
        assert!(text.contains("`gpu`"), "{text}");
        assert!(text.contains("auto, cpu, cuda, metal"), "{text}");
    }

    #[test]
    fn request_round_trips_through_serde() {
        let json = serde_json::to_string(&DeviceRequest::Cuda).unwrap_or_default();
        assert_eq!(json, "\"cuda\"");
        let back: Option<DeviceRequest> = serde_json::from_str("\"metal\"").ok();
        assert_eq!(back, Some(DeviceRequest::Metal));
    }

    #[test]
    fn compiled_backends_always_include_cpu() {
        let backends = compiled_backends();
        assert_eq!(backends.first(), Some(&"cpu"));
        assert_eq!(
            backends.contains(&"cuda"),
            candle_core::utils::cuda_is_available()
        );
    }

    #[test]
    fn probe_separates_built_from_available() {
        let rows = probe();
        let names: Vec<_> = rows.iter().map(|row| row.backend).collect();
        assert_eq!(names, ["cpu", "cuda", "metal"]);
        for row in &rows {
            assert!(row.compiled || !row.available, "{row:?}");
            if !row.compiled {
                assert!(row.detail.contains("--features"), "{row:?}");
            }
        }
    }

    #[cfg(not(any(feature = "cuda", feature = "metal")))]
    #[test]
    fn auto_picks_cpu_and_says_accelerators_are_not_compiled_in() {
        let chosen = choose(DeviceRequest::Auto).map_err(|e| e.to_string());
        let Ok(chosen) = chosen else {
            panic!("auto failed: {chosen:?}");
        };
        assert!(chosen.device.is_cpu());
        assert_eq!(chosen.name, "cpu");
        assert_eq!(
            chosen.reason,
            "metal not compiled in; cuda not compiled in; using cpu"
        );
    }

    #[cfg(not(any(feature = "cuda", feature = "metal")))]
    #[test]
    fn forcing_a_missing_backend_says_how_to_rebuild() {
        for (request, feature) in [
            (DeviceRequest::Cuda, "--features cuda"),
            (DeviceRequest::Metal, "--features metal"),
        ] {
            let Err(err) = choose(request) else {
                panic!("{request} should not be available in this build");
            };
            assert!(err.to_string().contains(feature), "{err}");
        }
    }

    #[test]
    fn forced_cpu_is_cpu() {
        let chosen = choose(DeviceRequest::Cpu).map(|c| c.name).ok();
        assert_eq!(chosen.as_deref(), Some("cpu"));
    }

    fn missing_op() -> candle_core::Result<()> {
        Err(candle_core::Error::Msg(
            "no metal implementation for conv_transpose3d".into(),
        ))
    }

    #[test]
    fn auto_falls_back_with_a_warning_naming_the_op() {
        let warning = judge_preflight("metal:0", false, DeviceRequest::Auto, missing_op());
        let Ok(Some(warning)) = warning else {
            panic!("expected a fallback warning, got {warning:?}");
        };
        assert!(
            warning.starts_with("metal:0 lacks op `conv_transpose3d`"),
            "{warning}"
        );
        assert!(warning.contains("falling back to cpu"), "{warning}");
    }

    #[test]
    fn forced_accelerator_errors_naming_the_op() {
        let result = judge_preflight("metal:0", false, DeviceRequest::Metal, missing_op());
        let Err(err) = result else {
            panic!("expected an error, got {result:?}");
        };
        let DeviceError::Unsupported { op, .. } = &err else {
            panic!("wrong variant: {err:?}");
        };
        assert_eq!(op.as_deref(), Some("conv_transpose3d"));
        assert!(err.to_string().contains("`auto`"), "{err}");
    }

    #[test]
    fn passing_check_keeps_the_choice() {
        let result = judge_preflight("cuda:0", false, DeviceRequest::Cuda, Ok(()));
        assert!(matches!(result, Ok(None)));
    }

    #[test]
    fn preflight_on_cpu_runs_the_check_and_reports_its_failure() {
        let ok = preflight(Chosen::cpu("test".into()), DeviceRequest::Auto, |_| Ok(()));
        assert!(matches!(ok, Ok((ref chosen, None)) if chosen.name == "cpu"));

        let failed = preflight(Chosen::cpu("test".into()), DeviceRequest::Auto, |_| {
            missing_op()
        });
        assert!(matches!(failed, Err(DeviceError::CheckFailed { .. })));
    }

    #[test]
    fn op_names_come_out_of_candle_errors() {
        use candle_core::Error as E;
        let cases = [
            (
                E::UnsupportedDTypeForOp(DType::BF16, "cmp"),
                Some("cmp (BF16)"),
            ),
            (
                E::BackwardNotSupported { op: "argmax" },
                Some("argmax backward"),
            ),
            (
                E::Msg("Metal contiguous unary gelu F16 not implemented".into()),
                Some("contiguous unary gelu F16"),
            ),
            (
                E::Msg("softmax-last-dim is not implemented for F64".into()),
                Some("softmax-last-dim"),
            ),
            (
                E::Msg("unsupported dtype for rmsnorm U8".into()),
                Some("rmsnorm"),
            ),
            (
                E::Msg("upsample-nearest1d is not supported on cuda".into()),
                Some("upsample-nearest1d"),
            ),
            (E::Msg("not implemented".into()), None),
            (E::Msg("shape mismatch".into()), None),
        ];
        for (err, expected) in cases {
            assert_eq!(failing_op(&err).as_deref(), expected, "{err}");
        }
        let wrapped = E::Msg("no cuda implementation for layer-norm".into()).context("forward");
        assert_eq!(failing_op(&wrapped).as_deref(), Some("layer-norm"));
    }

    #[test]
    fn mismatched_devices_are_named() {
        assert!(ensure_same_device("batch `input_ids`", &Device::Cpu, &Device::Cpu).is_ok());
        let err = DeviceError::DeviceMismatch {
            what: "batch `input_ids`".into(),
            found: "cpu".into(),
            expected: "cuda:0".into(),
        };
        assert_eq!(
            err.to_string(),
            "batch `input_ids` is on cpu but the model is on cuda:0"
        );
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn memory_facts_report_ram_and_rss_on_linux() {
        let facts = memory_facts(&Device::Cpu);
        assert!(facts.total_ram_bytes.is_some_and(|bytes| bytes > 1 << 20));
        assert!(facts.process_rss_bytes.is_some_and(|bytes| bytes > 0));
        assert!(facts.peak_rss_bytes >= facts.process_rss_bytes);
        assert_eq!(facts.metal_recommended_working_set, None);
    }

    #[test]
    fn op_check_runs_on_cpu_with_correct_gradients() {
        let check = op_check(&Device::Cpu).map_err(|e| e.to_string());
        let Ok(check) = check else {
            panic!("op check failed: {check:?}");
        };
        assert!(check.matmul_gflops > 0.0);
        assert!(check.softmax_max_error < 1e-4, "{check:?}");
        assert!(check.backward_max_error < 1e-3, "{check:?}");
    }

    #[test]
    fn autorelease_wrapper_returns_the_value() {
        assert_eq!(with_autorelease_pool(|| 7), 7);
    }
}
