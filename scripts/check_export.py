#!/usr/bin/env python3
"""Check an exported checkpoint against wick itself: `make export-check`.

Exports the checkpoint with wick's `export` (into a temporary directory), labels a data file with
wick's `predict`, then loads the export with the real sentence-transformers library, builds each
row's text the way wick does (its non-empty text fields joined by the separator, both read from
the export's wick_export.json), and compares the probabilities: softmax (or sigmoid, multi-label)
of `SentenceTransformer(dir).encode(texts)` against predict's. Rows longer than the checkpoint's
max_len are cut as in training (by the export's wick_transformer.py for tail or head_tail).

Run it with a Python that has sentence-transformers (the Makefile target makes bench/.venv).
Exits 1 when a row differs by more than --tolerance, or is labelled differently.
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


def macro_f1(truth: list[str], predicted: list[str], labels: list[str]) -> float:
    scores = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(truth, predicted))
        fp = sum(t != label and p == label for t, p in zip(truth, predicted))
        fn = sum(t == label and p != label for t, p in zip(truth, predicted))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


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
        # wick_transformer.py is code in the export: recent sentence-transformers ask for
        # trust_remote_code even from a local directory.
        model = SentenceTransformer(str(out), device="cpu",
                                    trust_remote_code=info["truncation_module"])
        with torch.no_grad():
            outputs = model.encode(texts, batch_size=args.batch, convert_to_tensor=True)
        probs = torch.sigmoid(outputs) if info["task"] == "multi_label" \
            else torch.softmax(outputs.double(), dim=-1)
        probs = probs.double().tolist()
        lengths = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    max_len = info["max_len"]
    worst, flips = 0.0, 0
    for row, p in zip(rows, probs):
        wick = [row["probs"][label] for label in labels]
        gap = max(abs(a - b) for a, b in zip(wick, p))
        worst = max(worst, gap)
        if info["task"] == "single_label":
            top = max(range(len(p)), key=p.__getitem__)
            if row["label"] != labels[top] and gap > args.tolerance:
                flips += 1
    versions = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                f"sentence-transformers {sentence_transformers.__version__}")
    print(f"export of {report['checkpoint']} ({report['encoder_tensors']} encoder tensors, "
          f"temperature folded: {report['temperature_folded']}); {versions}")
    over = sum(n > max_len for n in lengths)
    print(f"{len(rows)} rows ({over} over {max_len} tokens, cut to {info['truncation']}"
          f"{' by wick_transformer.py' if info['truncation_module'] else ''}): largest "
          f"probability difference {worst:.2e}, {flips} labelled differently")
    if info["task"] == "single_label" and rows and all("input_label" in r for r in rows):
        truth = [r["input_label"] for r in rows]
        ours = [r["label"] for r in rows]
        theirs = [labels[max(range(len(p)), key=p.__getitem__)] for p in probs]
        print(f"macro-F1 against the file's labels: wick {macro_f1(truth, ours, labels):.4f}, "
              f"sentence-transformers {macro_f1(truth, theirs, labels):.4f}")
    ok = worst <= args.tolerance and flips == 0 and len(rows) > 0
    print("OK" if ok else f"FAILED (tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
