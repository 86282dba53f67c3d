"""Scores the mean of several NLBSE protocol runs' probabilities (the
`<run>/<project>/{test,valid}_predictions.jsonl` files the nlbse example writes): per project the
macro-F1 over bug/feature/question of the argmax of the weighted mean, and overall the mean over
projects, as the protocol scores one run. Validation files (`--split valid`, from session 54's
build on) combine only runs that held out the same rows.

    python3 bench/h100/combine.py [--split test|valid] RUN_DIR[:WEIGHT] ...   (weight 1 by default)

Prints one JSON object: {"overall_f1", "projects": {project: f1}}. One run alone gives that
run's own `nlbse.json` score of the split (a check of this script). Equal weights of runs of
equal member counts give what one run of the example with all their configs reports.
"""
import json
import os
import sys

PROJECTS = ["facebook__react", "tensorflow__tensorflow", "microsoft__vscode", "bitcoin__bitcoin",
            "opencv__opencv"]


def read(path):
    with open(path) as f:
        return {row["line"]: row for row in map(json.loads, f)}


def macro_f1(labels, gold, predicted):
    f1s = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


args = sys.argv[1:]
split = "test"
if args[:1] == ["--split"]:
    split, args = args[1], args[2:]
    assert split in ("test", "valid"), f"--split takes test or valid, not {split}"
runs = []
for arg in args:
    path, _, weight = arg.partition(":")
    runs.append((path, float(weight or 1)))
scores = {}
for project in PROJECTS:
    tables = [(read(os.path.join(path, project, f"{split}_predictions.jsonl")), w) for path, w in runs]
    first = tables[0][0]
    for table, _ in tables[1:]:
        assert table.keys() == first.keys(), f"{project}: the runs scored different rows"
    labels = list(next(iter(first.values()))["probs"])
    gold, predicted = [], []
    for line, row in first.items():
        mean = [sum(w * t[line]["probs"][label] for t, w in tables) for label in labels]
        gold.append(row["label"])
        predicted.append(labels[mean.index(max(mean))])
    scores[project.replace("__", "/")] = macro_f1(labels, gold, predicted)
print(json.dumps({"overall_f1": sum(scores.values()) / len(scores), "projects": scores}))
