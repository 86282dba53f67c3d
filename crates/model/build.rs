//! With the `cuda` feature, compiles `kernels/wick.cu` to PTX with nvcc (the toolkit Candle's own
//! kernels need too), for the compute capability in `CUDA_COMPUTE_CAP` or, without it, that of
//! the first GPU `nvidia-smi` reports. Nothing happens without the feature.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels/wick.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = compute_cap();
    let nvcc = nvcc();
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("kernels/wick.cu")
        .arg("-o")
        .arg(out.join("wick_kernels.ptx"))
        .status()
        .unwrap_or_else(|e| panic!("running {} (set NVCC or CUDA_ROOT): {e}", nvcc.display()));
    assert!(
        status.success(),
        "nvcc failed on kernels/wick.cu ({status})"
    );
}

fn nvcc() -> PathBuf {
    if let Some(path) = std::env::var_os("NVCC") {
        return path.into();
    }
    for root in ["CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(root) {
            let path = PathBuf::from(root).join("bin").join("nvcc");
            if path.exists() {
                return path;
            }
        }
    }
    "nvcc".into()
}

fn compute_cap() -> String {
    if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
        return cap.replace('.', "");
    }
    let query = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().replace('.', "")));
    query.unwrap_or_else(|| {
        panic!("set CUDA_COMPUTE_CAP (e.g. 90 for an H100): no GPU for nvidia-smi to ask")
    })
}
