#!/usr/bin/env bash
# Run `make test`'s tests on a 64-bit ARM CPU, the kind in an Apple-silicon Mac, from an x86-64
# Linux machine: cross-compiled for aarch64-unknown-linux-gnu and run under qemu-user.
#
#   bash scripts/test-aarch64.sh      # `make test-aarch64`
#
# wick's own CPU kernels (fused attention, feed-forward, layer norm, loss, AdamW) and the gemm
# crate's products take other code paths on aarch64 than on x86-64 (NEON instead of AVX, no
# AMX tiles), and a Mac that trains on its CPU runs those paths. This runs, on them, what
# `make test` runs but the Mac build check and the data checker:
# - every test of wick-data, wick-model (the pooled embeddings of all-MiniLM-L6-v2 and
#   all-mpnet-base-v2 against sentence-transformers, and the tiny families' against
#   transformers; every parameter's gradient) and wick-trainer;
# - the integration tests: one AdamW step against PyTorch for every family, LoRA and the
#   contrastive objective, and the binaries end to end. The programs they spawn run under
#   qemu too (`WICK_TEST_RUNNER`), as does each example.
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

export WICK_TEST_RUNNER="$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER"

$CARGO build --target "$TARGET" --examples
$CARGO test --target "$TARGET" -p wick-data -p wick-hub -p wick-model -p wick-trainer
$CARGO test --target "$TARGET" --test tests
$CARGO run --target "$TARGET" --example custom_training -- configs/tiny.toml
$CARGO run --target "$TARGET" --example embeddings
echo "test-aarch64: the library, integration and example tests pass on $TARGET (qemu-user)"
