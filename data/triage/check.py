"""Checks the flagship corpus (data/triage/{train,valid,test}.jsonl); run by `make test`.

Enforces: schema, size, label balance in every split, length spread, no exact or near duplicates
within or across splits (no shared run of 12 words), and that a trivial keyword rule scores well
below the trained model on test.jsonl (the model's score is the one `make triage-score` measured
and wrote to data/triage/model_score.json). Exits non-zero with every failure listed.
"""

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABELS = ["needs_docs", "needs_test", "needs_review"]
SPLITS = ["train", "valid", "test"]
SHINGLE = 12
MARGIN = 0.15  # "well below": the keyword rule must trail the model by this much macro-F1


def read_split(name, failures):
    rows = []
    path = HERE / f"{name}.jsonl"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            failures.append(f"{path.name}:{number}: invalid JSON ({e})")
            continue
        where = f"{path.name}:{number}"
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            failures.append(f"{where}: missing or empty text")
        if row.get("label") not in LABELS:
            failures.append(f"{where}: label {row.get('label')!r} not in {LABELS}")
        if row.get("kind") not in ("issue", "pr"):
            failures.append(f"{where}: kind {row.get('kind')!r} is not issue/pr")
        if not isinstance(row.get("ecosystem"), str):
            failures.append(f"{where}: missing ecosystem")
        row["_where"] = where
        rows.append(row)
    return rows


def words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def keyword_rule(text):
    t = text.lower()
    if "doc" in t:
        return "needs_docs"
    if "test" in t:
        return "needs_test"
    return "needs_review"


def macro_f1(truth, predicted):
    scores = []
    for label in LABELS:
        tp = sum(t == label and p == label for t, p in zip(truth, predicted))
        fp = sum(t != label and p == label for t, p in zip(truth, predicted))
        fn = sum(t == label and p != label for t, p in zip(truth, predicted))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


def main():
    failures = []
    splits = {name: read_split(name, failures) for name in SPLITS}
    rows = [r for name in SPLITS for r in splits[name]]
    if len(rows) < 1500:
        failures.append(f"{len(rows)} examples in all; at least 1500 required")
    for name, part in splits.items():
        counts = Counter(r["label"] for r in part)
        for label in LABELS:
            share = counts[label] / max(1, len(part))
            if share < 0.25:
                failures.append(f"{name}: {label} is {share:.1%} of the split (< 25%)")
        kinds = Counter((r["label"], r.get("kind")) for r in part)
        for label in LABELS:
            if not kinds[(label, "issue")] or not kinds[(label, "pr")]:
                failures.append(f"{name}: {label} lacks issues or pull requests")
    lengths = sorted(len(r["text"]) for r in rows)
    median = lengths[len(lengths) // 2] if lengths else 0
    long_share = sum(n > 800 for n in lengths) / max(1, len(lengths))
    if median < 250:
        failures.append(f"median length {median} characters (< 250)")
    if long_share < 0.15:
        failures.append(f"{long_share:.1%} of texts over 800 characters (< 15%)")
    ecosystems = Counter(r.get("ecosystem") for r in rows)
    if len(ecosystems) < 10:
        failures.append(f"only {len(ecosystems)} ecosystems (< 10)")

    seen_text = {}
    owners = defaultdict(set)
    for index, row in enumerate(rows):
        key = " ".join(words(row["text"]))
        if key in seen_text:
            failures.append(f"{row['_where']}: exact duplicate of {seen_text[key]}")
        seen_text.setdefault(key, row["_where"])
        w = words(row["text"])
        for i in range(len(w) - SHINGLE + 1):
            owners[" ".join(w[i : i + SHINGLE])].add(index)
    near = {tuple(sorted(o)) for o in owners.values() if len(o) > 1}
    for pair in sorted(near)[:20]:
        failures.append("near duplicates (shared 12-word run): " + ", ".join(rows[i]["_where"] for i in pair))
    if len(near) > 20:
        failures.append(f"... and {len(near) - 20} more near-duplicate groups")

    test = splits["test"]
    baseline = macro_f1([r["label"] for r in test], [keyword_rule(r["text"]) for r in test])
    score_file = HERE / "model_score.json"
    if score_file.exists():
        model = json.loads(score_file.read_text())["macro_f1"]
        if baseline > model - MARGIN:
            failures.append(f"keyword rule macro-F1 {baseline:.3f} is not well below the model's {model:.3f}")
        verdict = f"model {model:.3f} (from {score_file.name})"
    else:
        failures.append(f"{score_file.name} missing: run `make triage-score` after `make train`")
        verdict = "model score missing"

    print(f"triage corpus: {len(rows)} examples ({', '.join(f'{n} {len(splits[n])}' for n in SPLITS)}), "
          f"median {median} chars, {long_share:.1%} over 800, {len(ecosystems)} ecosystems; "
          f"keyword rule macro-F1 on test {baseline:.3f} vs {verdict}")
    if failures:
        print("\n".join(f"FAIL {f}" for f in failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
