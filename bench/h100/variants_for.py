"""Writes the variants of a split's training rows, row for row, for `data.augment` (session 69):
each row of SPLIT_CSV (a subset of ORIG_CSV's rows, as heldout.py writes them) is found in
ORIG_CSV and replaced by the row in the same place of VARIANTS_CSV (backtranslate.py's output for
ORIG_CSV, which keeps its row order).

    python3 bench/h100/variants_for.py ORIG_CSV VARIANTS_CSV SPLIT_CSV OUT_CSV
"""
import collections
import csv
import sys

csv.field_size_limit(sys.maxsize)
orig_path, variants_path, split_path, out_path = sys.argv[1:]
read = lambda path: list(csv.DictReader(open(path, newline="")))
orig, variants, split = read(orig_path), read(variants_path), read(split_path)
if len(orig) != len(variants):
    sys.exit(f"{variants_path} has {len(variants)} rows, {orig_path} {len(orig)}")
key = lambda r: (r["repo"], r["created_at"], r["label"], r["title"], r["body"])
where = collections.defaultdict(collections.deque)
for i, r in enumerate(orig):
    where[key(r)].append(i)
out = []
for n, r in enumerate(split):
    if not where[key(r)]:
        sys.exit(f"{split_path}: data row {n + 1} is not in {orig_path}")
    v = variants[where[key(r)].popleft()]
    if (v["repo"], v["label"]) != (r["repo"], r["label"]):
        sys.exit(f"{variants_path}: the variant of {split_path} data row {n + 1} is out of step")
    out.append(v)
with open(out_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(orig[0].keys()))
    w.writeheader()
    w.writerows(out)
print(f"{out_path}: {len(out)} variants of {split_path}'s rows")
