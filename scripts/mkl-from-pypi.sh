#!/usr/bin/env bash
# Fetch Intel MKL from PyPI into .mkl/ so Candle's `mkl` feature builds without ghcr.io.
#
#   eval "$(bash scripts/mkl-from-pypi.sh)"
#   cargo build --release --features mkl
#
# candle-core/candle-nn 0.11 pin intel-mkl-src to `mkl-static-lp64-iomp`, whose build script
# (intel-mkl-tool) looks for MKL via pkg-config, then $MKLROOT, then /opt/intel, and only then
# downloads from ghcr.io. We provide an $MKLROOT holding exactly what that configuration links:
#   include/mkl.h, mkl_version.h                                  (wheel mkl-include)
#   lib/libmkl_intel_lp64.a, libmkl_intel_thread.a, libmkl_core.a (wheel mkl-static)
#   lib/libiomp5.a                                                (wheel intel-openmp)
# Only the static libiomp5.a is unpacked (no libiomp5.so), so `-liomp5` resolves statically
# and the binary needs no LD_LIBRARY_PATH. Threads: MKL_NUM_THREADS / OMP_NUM_THREADS.
#
# Exports go to stdout, progress to stderr. Idempotent: a second run only prints the exports.
# Override versions with MKL_PYPI_VERSION / IOMP_PYPI_VERSION.
set -euo pipefail

MKL_VERSION="${MKL_PYPI_VERSION:-2025.3.0}"
IOMP_VERSION="${IOMP_PYPI_VERSION:-2025.3.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.mkl"
STAMP="$DEST/.complete-mkl-$MKL_VERSION-iomp-$IOMP_VERSION"

log() { echo "mkl-from-pypi: $*" >&2; }

if [[ ! -f "$STAMP" ]]; then
    log "fetching MKL $MKL_VERSION and Intel OpenMP $IOMP_VERSION from PyPI into $DEST"
    rm -rf "$DEST"
    mkdir -p "$DEST/wheels"
    python3 -m pip download --no-deps --disable-pip-version-check --quiet \
        --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3 \
        --dest "$DEST/wheels" \
        "mkl-static==$MKL_VERSION" "mkl-include==$MKL_VERSION" "intel-openmp==$IOMP_VERSION" >&2
    log "unpacking"
    python3 - "$DEST" >&2 <<'PY'
import glob, os, shutil, sys, zipfile
dest = sys.argv[1]
want_libs = {"libmkl_intel_lp64.a", "libmkl_intel_thread.a", "libmkl_core.a", "libiomp5.a"}
found = set()
for whl in sorted(glob.glob(os.path.join(dest, "wheels", "*.whl"))):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            # Payload lives under <name>-<ver>.data/data/{lib,include}/...
            if len(parts) < 4 or not parts[0].endswith(".data") or parts[1] != "data":
                continue
            rel = parts[2:]
            if info.is_dir():
                continue
            if rel[0] == "lib" and len(rel) == 2 and rel[1] in want_libs:
                found.add(rel[1])
            elif rel[0] != "include":
                continue
            out = os.path.join(dest, *rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
missing = want_libs - found
if missing or not os.path.isfile(os.path.join(dest, "include", "mkl.h")):
    sys.exit(f"missing from wheels: {sorted(missing) or 'include/mkl.h'}")
PY
    rm -rf "$DEST/wheels"
    touch "$STAMP"
    log "done ($(du -sh "$DEST" | cut -f1))"
else
    log "MKL $MKL_VERSION already in $DEST"
fi

echo "export MKLROOT='$DEST'"
