"""Scores the mean of several NLBSE protocol runs' probabilities (the
`<run>/<project>/{test,valid}_predictions.jsonl` files the nlbse example writes): per project the
macro-F1 over bug/feature/question of the argmax of the weighted mean, and overall the mean over
projects, as the protocol scores one run. Validation files (`--split valid`, from session 54's
build on) combine only runs that held out the same rows.

    python3 bench/h100/combine.py [--split test|valid] [--match-priors] RUN_DIR[:WEIGHT] ...
                                                                     (weight 1 by default)

`--match-priors` scores the mean after matching it to equal label shares over each project's rows,
as `nlbse --match-priors` does with the training rows' label frequencies (a third each on the
held-out splits of heldout.py: 80 training issues per project and label): iterative proportional
fitting, one factor per label (session 58).

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


def match_priors(rows, shares):
    """Scales each label's probabilities by one factor, rows renormalized, until the mean over
    the rows equals `shares` (wick_trainer::priors::match_priors)."""
    rows = [[max(p, 1e-12) for p in row] for row in rows]
    weights = [1.0] * len(shares)

    def scaled():
        out = []
        for row in rows:
            z = sum(p * w for p, w in zip(row, weights))
            out.append([p * w / z for p, w in zip(row, weights)])
        return out

    for _ in range(10000):
        current = scaled()
        means = [sum(r[c] for r in current) / len(current) for c in range(len(shares))]
        if all(abs(m - s) <= 1e-9 for m, s in zip(means, shares)):
            break
        weights = [w * s / m for w, s, m in zip(weights, shares, means)]
    return scaled()


args = sys.argv[1:]
split = "test"
matching = False
while args[:1] in (["--split"], ["--match-priors"]):
    if args[0] == "--split":
        split, args = args[1], args[2:]
        assert split in ("test", "valid"), f"--split takes test or valid, not {split}"
    else:
        matching, args = True, args[1:]
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
    total = sum(w for _, w in tables)
    gold, means = [], []
    for line, row in first.items():
        means.append([sum(w * t[line]["probs"][label] for t, w in tables) / total for label in labels])
        gold.append(row["label"])
    if matching:
        means = match_priors(means, [1 / len(labels)] * len(labels))
    predicted = [labels[mean.index(max(mean))] for mean in means]
    scores[project.replace("__", "/")] = macro_f1(labels, gold, predicted)
print(json.dumps({"overall_f1": sum(scores.values()) / len(scores), "projects": scores}))
