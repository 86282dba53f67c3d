#!/usr/bin/env python3
"""wick vs PyTorch on this machine: `make bench-compare`.

Runs wick's `bench` binary and bench/pytorch_reference.py alternately (ABBA order over rounds, so
a slow drift of the machine does not favour either), with the same thread count (nproc), the same
model weights (MiniLM from the local Hub cache), batch 32 x seq 128, f32: forward,
forward_backward, train_step. Prints, per row, the median over rounds of each tool's per-round
median examples/s, the ratio wick/PyTorch, and each tool's peak memory (largest over rounds).

Standard library only. The PyTorch interpreter is $BENCH_PYTHON if set, else bench/.venv (created
here with torch, transformers, safetensors and numpy from PyPI if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench" / ".venv"
PACKAGES = ["torch", "transformers", "safetensors", "numpy"]
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BENCHES = ["forward", "forward_backward", "train_step"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="wick vs PyTorch, alternating runs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--wick", default=str(ROOT / "target" / "release" / "bench"),
                   help="the wick bench binary (make bench-compare builds it)")
    return p.parse_args()


def python_with_torch() -> str:
    """$BENCH_PYTHON, else bench/.venv's python, creating and filling the venv if needed."""
    given = os.environ.get("BENCH_PYTHON")
    if given:
        check_imports(given, hint="BENCH_PYTHON")
        return given
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV.relative_to(ROOT)} with {' '.join(PACKAGES)} (from PyPI)",
              file=sys.stderr)
        venv.create(VENV, with_pip=True)
    if subprocess.run([python, "-c", "import torch, transformers, safetensors, numpy"],
                      capture_output=True).returncode != 0:
        subprocess.run([python, "-m", "pip", "install", "--quiet", *PACKAGES], check=True)
    return str(python)


def check_imports(python: str, hint: str) -> None:
    done = subprocess.run([python, "-c", "import torch, transformers, safetensors, numpy"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {hint}={python} cannot import {', '.join(PACKAGES)}:\n{done.stderr}")


def hub_cache_dir() -> Path:
    """HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub, as wick resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def minilm_snapshot() -> Path:
    """The snapshot wick loads (refs/main), so both tools read the same model.safetensors."""
    repo = hub_cache_dir() / ("models--" + MODEL_ID.replace("/", "--"))
    ref = repo / "refs" / "main"
    candidates = ([repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else
                  sorted((repo / "snapshots").glob("*")))
    for snap in candidates:
        if (snap / "config.json").is_file() and (snap / "model.safetensors").is_file():
            return snap
    sys.exit(f"error: {MODEL_ID} is not in the Hub cache at {hub_cache_dir()}: run `make model`")


def run_json(cmd: list[str], who: str) -> dict[str, dict]:
    """Runs one tool, returns its model records by bench name."""
    print(f"  {who}: {' '.join(str(c) for c in cmd)}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"error: {who} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    records = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec["bench"] in BENCHES:
                records[rec["bench"]] = rec
    return records


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ["B", "KiB", "MiB", "GiB"]:
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def main() -> int:
    args = parse_args()
    if not Path(args.wick).is_file():
        sys.exit(f"error: {args.wick} not found: build it with "
                 "`cargo build --release --bin bench`")
    python = python_with_torch()
    snapshot = minilm_snapshot()
    common = ["--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads),
              "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--dtype", "f32",
              "--only", ",".join(BENCHES), "--json"]
    tools = {
        "wick": [args.wick, "--model", MODEL_ID, "--device", "cpu", *common],
        "pytorch": [python, str(ROOT / "bench" / "pytorch_reference.py"), "--model",
                    str(snapshot), "--device", "cpu", *common],
    }
    runs: dict[str, list[dict[str, dict]]] = {"wick": [], "pytorch": []}
    for round_ in range(args.rounds):
        order = ["wick", "pytorch"] if round_ % 2 == 0 else ["pytorch", "wick"]
        print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for who in order:
            runs[who].append(run_json(tools[who], who))

    print(f"\nwick vs PyTorch, {MODEL_ID}, batch {args.batch} x seq {args.seq}, f32, cpu, "
          f"{args.threads} threads, {args.rounds} rounds x {args.repeats} timed calls")
    print(f"examples/s: median over rounds of each run's median [min .. max over rounds]; "
          f"peak: largest per-measurement peak RSS")
    header = (f"{'row':<18} {'wick ex/s':>24} {'PyTorch ex/s':>24} {'wick/PyTorch':>13} "
              f"{'wick peak':>11} {'PyTorch peak':>13}")
    print(header)
    print("-" * len(header))
    for bench in BENCHES:
        cells = {}
        for who in runs:
            values = [r[bench]["examples_per_s"] for r in runs[who]]
            peaks = [r[bench]["peak_bytes"] for r in runs[who] if r[bench]["peak_bytes"]]
            cells[who] = (statistics.median(values), min(values), max(values),
                          max(peaks) if peaks else None)
        w, p = cells["wick"], cells["pytorch"]
        cell = lambda c: f"{c[0]:.2f} [{c[1]:.2f} .. {c[2]:.2f}]"  # noqa: E731
        print(f"{bench:<18} {cell(w):>24} {cell(p):>24} {w[0] / p[0]:>12.2f}x "
              f"{human_bytes(w[3]):>11} {human_bytes(p[3]):>13}")
    print("\nnotes: both forward rows record no autograd graph (PyTorch: torch.no_grad; wick: "
          "detached weights in eval); PyTorch uses its default sdpa attention; peaks include "
          "each runtime's own libraries.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
