"""Keeps PER_LABEL rows of each project and label of an NLBSE CSV (a Python-seeded choice, seed
SEED), for learning curves on the held-out splits of heldout.py (session 68).

    python3 bench/h100/subsample.py IN_CSV OUT_CSV PER_LABEL SEED
"""
import collections
import csv
import random
import sys

csv.field_size_limit(sys.maxsize)
source, target, per_label, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = list(csv.DictReader(open(source, newline="")))
groups = collections.defaultdict(list)
for i, r in enumerate(rows):
    groups[(r["repo"], r["label"])].append(i)
keep = set()
for key in sorted(groups):
    members = groups[key][:]
    if len(members) < per_label:
        sys.exit(f"{source}: {key[0]} / {key[1]} has {len(members)} rows, fewer than {per_label}")
    random.Random(f"{seed}/{key[0]}/{key[1]}").shuffle(members)
    keep.update(members[:per_label])
with open(target, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(r for i, r in enumerate(rows) if i in keep)
print(f"{target}: {len(keep)} of {len(rows)} rows")
