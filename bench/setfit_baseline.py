"""The NLBSE'24 SetFit baseline, run by the SetFit library on wick's held-out splits.

The competition's published baseline (overall F1 0.824 on its own test split, which is not
reachable here) is SetFit with sentence-transformers/all-mpnet-base-v2. This script trains that
method on the same rows wick's held-out estimate uses (`bench/h100/heldout.py`: for a split seed,
60 issues per project held out as test, the other 240 for training), so that the two can be
compared on equal rows: one classifier per project, trained only on that project's training rows,
macro F1 over the three labels on its test rows, the overall score the mean of the five.

The competition's notebook is not reachable here, so its exact settings are not known; SetFit's
defaults before 1.0 (released after the competition was announced; SetFit 1.x keeps them under
`num_iterations`) stand in: 20 iterations of pair generation (one positive and one negative pair
per text and iteration), one epoch, batch 16, body learning rate 2e-5, CosineSimilarityLoss,
logistic-regression head, the model's own maximum length (384 tokens, head truncation). A text is
title and body joined as wick joins them.

    python3 bench/setfit_baseline.py --model DIR --train train_7.csv --test test_7.csv \
        --out results/setfit_7.json [--seed 42] [--amp]
"""
import argparse
import csv
import json
import sys
import time

import numpy as np
import torch
from datasets import Dataset
from setfit import SetFitModel, Trainer, TrainingArguments
from sklearn.metrics import f1_score, precision_recall_fscore_support

csv.field_size_limit(sys.maxsize)
LABELS = ["bug", "feature", "question"]
PROJECTS = [
    "facebook/react",
    "tensorflow/tensorflow",
    "microsoft/vscode",
    "bitcoin/bitcoin",
    "opencv/opencv",
]


def read_rows(path):
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for r in reader:
            if r.get("label") not in LABELS:
                sys.exit(f"{path}:{reader.line_num}: label {r.get('label')!r}, not one of {LABELS}")
            rows.append(r)
    return rows


def text(row):
    return row["title"] + "\n\n" + row["body"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="sentence-transformers directory")
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True, help="JSON file with the scores and predictions")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num-iterations", type=int, default=20)
    p.add_argument("--amp", action="store_true", help="mixed precision (SetFit's use_amp)")
    p.add_argument("--projects", nargs="*", default=PROJECTS)
    args = p.parse_args()

    train_rows, test_rows = read_rows(args.train), read_rows(args.test)
    result = {"args": vars(args), "projects": {}}
    started = time.time()
    for project in args.projects:
        t0 = time.time()
        tr = [r for r in train_rows if r["repo"] == project]
        te = [r for r in test_rows if r["repo"] == project]
        if not tr or not te:
            sys.exit(f"{project}: {len(tr)} training rows in {args.train}, {len(te)} test rows in {args.test}")
        model = SetFitModel.from_pretrained(args.model, labels=LABELS)
        # transformers 5 keeps the checkpoint's dtype; the carried weights are f16, SetFit
        # trains in f32 (the f16 -> f32 cast is exact).
        model.model_body = model.model_body.float()
        if torch.cuda.is_available():
            model.to("cuda")
        train = Dataset.from_dict(
            {"text": [text(r) for r in tr], "label": [LABELS.index(r["label"]) for r in tr]}
        )
        training = TrainingArguments(
            batch_size=16,
            num_epochs=1,
            num_iterations=args.num_iterations,
            body_learning_rate=2e-5,
            seed=args.seed,
            use_amp=args.amp,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            show_progress_bar=False,
        )
        trainer = Trainer(model=model, args=training, train_dataset=train)
        trainer.train()
        probs = model.predict_proba([text(r) for r in te], as_numpy=True)
        pred = np.asarray(probs).argmax(axis=1)
        gold = np.array([LABELS.index(r["label"]) for r in te])
        p_, r_, f_, _ = precision_recall_fscore_support(gold, pred, labels=[0, 1, 2], zero_division=0)
        macro = f1_score(gold, pred, labels=[0, 1, 2], average="macro", zero_division=0)
        result["projects"][project] = {
            "macro_f1": float(macro),
            "per_label": {
                LABELS[i]: {"precision": float(p_[i]), "recall": float(r_[i]), "f1": float(f_[i])}
                for i in range(3)
            },
            "train_rows": len(tr),
            "test_rows": len(te),
            "seconds": round(time.time() - t0, 1),
            "probabilities": np.asarray(probs).round(6).tolist(),
        }
        with open(args.out, "w") as f:  # after each project: a run cut short keeps its projects
            json.dump(result, f)
        print(f"{project}: macro-F1 {macro:.4f} ({len(tr)} train, {len(te)} test, "
              f"{time.time() - t0:.0f} s)", flush=True)
        del trainer, model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    scores = [v["macro_f1"] for v in result["projects"].values()]
    result["overall_macro_f1"] = float(np.mean(scores))
    result["seconds"] = round(time.time() - started, 1)
    print(f"overall: macro-F1 {result['overall_macro_f1']:.4f} ({result['seconds']:.0f} s)")
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
