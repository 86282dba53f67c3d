#!/usr/bin/env python3
"""Check an exported checkpoint against wick itself: `make export-check`.

Exports the checkpoint with wick's `export` (into a temporary directory), labels a data file with
wick's `predict`, then loads the export with the real sentence-transformers library, builds each
row's text the way wick does (its non-empty text fields joined by the separator, both read from
the export's wick_export.json), and compares the probabilities: softmax (or sigmoid, multi-label)
of `SentenceTransformer(dir).encode(texts)` against predict's. Rows longer than the checkpoint's
max_len are reported apart when it was trained with tail or head_tail truncation, which
sentence-transformers cannot do.

Run it with a Python that has sentence-transformers (the Makefile target makes bench/.venv).
Exits 1 when a row within max_len differs by more than --tolerance, or is labelled differently.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint or run directory")
    p.add_argument("--data", required=True, help="JSONL or CSV of the checkpoint's schema")
    p.add_argument("--bin", default=str(ROOT / "target" / "release"),
                   help="directory of wick's export and predict binaries")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=32)
    return p.parse_args()


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{done.stderr}")
    if done.stderr.strip():
        print(done.stderr.strip(), file=sys.stderr)
    return done.stdout


def main() -> int:
    args = parse_args()
    try:
        import torch
        import sentence_transformers
        import transformers
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        sys.exit(f"error: {sys.executable} cannot import sentence-transformers ({e}); "
                 "`make export-check` makes bench/.venv with it")
    bins = Path(args.bin)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        report = json.loads(run([str(bins / "export"), "--checkpoint", args.checkpoint,
                                 "--out", str(out), "--json"]))
        rows = [json.loads(line) for line in
                run([str(bins / "predict"), "--checkpoint", args.checkpoint,
                     "--data", args.data]).splitlines() if line.strip()]
        info = json.loads((out / "wick_export.json").read_text())
        labels = info["labels"]
        texts = []
        for row in rows:
            parts = [str(row[f]) for f in info["text_fields"] if row.get(f) not in (None, "")]
            texts.append(info["text_separator"].join(parts))
        model = SentenceTransformer(str(out), device="cpu")
        with torch.no_grad():
            outputs = model.encode(texts, batch_size=args.batch, convert_to_tensor=True)
        probs = torch.sigmoid(outputs) if info["task"] == "multi_label" \
            else torch.softmax(outputs.double(), dim=-1)
        probs = probs.double().tolist()
        lengths = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    head_only = info["truncation"] == "the first tokens"
    max_len = info["max_len"]
    worst = {"within": 0.0, "over": 0.0}
    flips = {"within": 0, "over": 0}
    counts = {"within": 0, "over": 0}
    for row, p, n in zip(rows, probs, lengths):
        group = "within" if head_only or n <= max_len else "over"
        counts[group] += 1
        wick = [row["probs"][label] for label in labels]
        gap = max(abs(a - b) for a, b in zip(wick, p))
        worst[group] = max(worst[group], gap)
        if info["task"] == "single_label":
            top = max(range(len(p)), key=p.__getitem__)
            if row["label"] != labels[top] and gap > args.tolerance:
                flips[group] += 1
    versions = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                f"sentence-transformers {sentence_transformers.__version__}")
    print(f"export of {report['checkpoint']} ({report['encoder_tensors']} encoder tensors, "
          f"temperature folded: {report['temperature_folded']}); {versions}")
    print(f"{counts['within']} rows{'' if head_only else f' within {max_len} tokens'}: "
          f"largest probability difference {worst['within']:.2e}, "
          f"{flips['within']} labelled differently")
    if counts["over"]:
        print(f"{counts['over']} rows over {max_len} tokens (the checkpoint keeps "
              f"{info['truncation']}, sentence-transformers the first tokens): largest "
              f"difference {worst['over']:.2e}, {flips['over']} labelled differently")
    ok = worst["within"] <= args.tolerance and flips["within"] == 0 and counts["within"] > 0
    print("OK" if ok else f"FAILED (tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
