"""The held-out splits of the NLBSE runs (sessions 24 to 33): for each split seed (1, 2, 3 unless
given), twenty issues per project and label (60 per project) go to test_<seed>.csv, chosen by a
Python-seeded shuffle, and the rest to train_<seed>.csv.

    python3 bench/h100/heldout.py ISSUES_TRAIN_CSV OUT_DIR [SEED ...]

`test_rows(rows, seed)` gives the same choice to other scripts (bench/long_text_probe.py).
"""
import collections
import csv
import random
import sys


def test_rows(rows, seed):
    """The indices of `rows` (dicts with `repo` and `label`) that split `seed` holds out."""
    groups = collections.defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r["repo"], r["label"])].append(i)
    test = set()
    for key in sorted(groups):
        members = groups[key][:]
        random.Random(f"{seed}/{key[0]}/{key[1]}").shuffle(members)
        test.update(members[:20])
    return test


def main():
    csv.field_size_limit(sys.maxsize)
    source, out_dir = sys.argv[1], sys.argv[2]
    seeds = [int(a) for a in sys.argv[3:]] or [1, 2, 3]
    rows = list(csv.DictReader(open(source, newline="")))
    for s in seeds:
        test = test_rows(rows, s)
        for name, keep in (("train", lambda i: i not in test), ("test", lambda i: i in test)):
            with open(f"{out_dir}/{name}_{s}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
                w.writeheader()
                w.writerows(r for i, r in enumerate(rows) if keep(i))


if __name__ == "__main__":
    main()
