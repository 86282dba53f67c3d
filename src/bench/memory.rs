//! Measured memory: the process's peak resident set per measurement, and on CUDA the device
//! memory in use. Estimates come from `wick_trainer::budget`.

use candle_core::Device;
use wick_trainer::device::memory_facts;

/// Resets the process's peak-RSS mark to the current RSS, so the next [`peak_rss`] is the peak of
/// one measurement rather than of the whole process. Linux only (`/proc/self/clear_refs`, value
/// 5); returns false elsewhere, where the peak stays the process's lifetime peak.
pub fn reset_peak() -> bool {
    cfg!(target_os = "linux") && std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set since the last [`reset_peak`] (Linux `VmHWM`).
pub fn peak_rss(device: &Device) -> Option<u64> {
    memory_facts(device).peak_rss_bytes
}

/// CUDA memory in use on the device now (`total - free`, all processes); `None` off CUDA. Candle
/// keeps no peak counter, so this is sampled, not a peak.
pub fn device_used(device: &Device) -> Option<u64> {
    memory_facts(device)
        .cuda_total_and_free
        .map(|(total, free)| total.saturating_sub(free))
}
