#!/usr/bin/env bash
# Type-check (and lint) every crate, test, example and binary as a Mac builds them:
#
#   bash scripts/check-apple.sh      # `make check-apple`, part of `make test`
#
# wick's users train on Apple silicon with `--features metal,accelerate`, but its development
# and CI machines are Linux x86-64, where Candle's Metal feature cannot be built (objc2 refuses
# non-Apple targets). Without this script the Mac-only code (the Metal device choice, its
# working-set query, the autorelease pool around each step, the aarch64 paths of the CPU
# kernels) would never be compiled before a user did.
#
# What it runs: `cargo clippy --target aarch64-apple-darwin -D warnings` with no features, with
# `metal`, and with `metal,accelerate`. That is rustc's full type and borrow checking of the
# Rust code for the real Apple target, against the real candle-metal-kernels and objc2 APIs. It
# does not link (there is no macOS SDK here), so nothing is run: Metal's numbers need a Mac.
#
# Dependencies' C sources (ring, through hf-hub's TLS) need a macOS SDK to compile; `cargo
# check` never links them, so on Linux a stand-in compiler (`scripts/stub-cc.sh`) answers
# their build scripts with empty objects. No Rust is affected by it. On a Mac the real
# compiler is used.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
TARGET=aarch64-apple-darwin

if command -v rustup >/dev/null; then
  rustup target add "$TARGET" >/dev/null
elif [ "$(uname -s)" != Darwin ]; then
  echo "check-apple: needs rustup to add the $TARGET standard library (not found): NOT CHECKED" >&2
  exit 1
fi
if [ "$(uname -s)" != Darwin ]; then
  export CC_aarch64_apple_darwin="$PWD/scripts/stub-cc.sh"
  export CXX_aarch64_apple_darwin="$PWD/scripts/stub-cc.sh"
fi

for features in "" metal metal,accelerate; do
  echo "check-apple: clippy --target $TARGET --features '${features}'"
  $CARGO clippy --quiet --workspace --all-targets --target "$TARGET" \
    ${features:+--features "$features"} -- -D warnings
done
echo "check-apple: every crate, test, example and binary type-checks for $TARGET (no features, metal, metal+accelerate)"
