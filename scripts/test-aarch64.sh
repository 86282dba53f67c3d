#!/usr/bin/env bash
# Run the numerical tests on a 64-bit ARM CPU, the kind in an Apple-silicon Mac, from an x86-64
# Linux machine: cross-compiled for aarch64-unknown-linux-gnu and run under qemu-user.
#
#   bash scripts/test-aarch64.sh      # `make test-aarch64`
#
# wick's own CPU kernels (fused attention, feed-forward, layer norm, loss, AdamW) and the gemm
# crate's products take other code paths on aarch64 than on x86-64 (NEON instead of AVX, no
# AMX tiles), and a Mac that trains on its CPU runs those paths. This runs, on them:
# - every test of wick-data, wick-model (the pooled embeddings of all-MiniLM-L6-v2 and
#   all-mpnet-base-v2 against sentence-transformers, and the tiny families' against
#   transformers; every parameter's gradient) and wick-trainer;
# - the integration tests that call the library rather than the binaries: one AdamW step
#   against PyTorch for MiniLM, MPNet, LoRA, the contrastive objective and every family
#   (`adamw_reference`), and Ctrl-C's stop at a step boundary (`stop`). The binaries' own tests
#   spawn processes, which qemu-user runs only where binfmt_misc is set up.
# Linux on ARM is not macOS: Metal and Accelerate are checked by `scripts/check-apple.sh`
# (compiled, not run); this checks the numbers of the default CPU build's ARM code.
#
# Needs (Debian/Ubuntu): qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
# libc6-dev-arm64-cross, rustup, and the models in the Hub cache (`make model model-mpnet`).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
TARGET=aarch64-unknown-linux-gnu
SYSROOT=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}

missing=()
for tool in qemu-aarch64 aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ rustup; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-aarch64: missing ${missing[*]} (apt-get install qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross)" >&2
  exit 1
fi
rustup target add "$TARGET" >/dev/null

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++

$CARGO test --target "$TARGET" -p wick-data -p wick-model -p wick-trainer
$CARGO test --target "$TARGET" --test tests -- suite::adamw_reference suite::stop
echo "test-aarch64: the library tests and the PyTorch step references pass on $TARGET (qemu-user)"
