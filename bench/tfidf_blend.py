"""Does a TF-IDF + logistic-regression model of each issue's whole text (no token limit: word 1-2
grams and character 2-5 grams, fitted on the project's training rows of a held-out split) add
anything to a saved NLBSE ensemble's probabilities? The blend is (1 - w) * ensemble + w * tfidf.
The rule, fixed before the test rows are scored: (C, w) with the best validation mean over the
splits; then the test rows are scored once with it, and against w = 0.

    python bench/tfidf_blend.py HELDOUT_DIR 'RUN/pred_NAME_{split}' 13,14,15,16,17,18

HELDOUT_DIR holds heldout.py's train_<split>.csv and test_<split>.csv; the pattern names each
split's directory of `<project>/valid_predictions.jsonl` and `test_predictions.jsonl` (what the
NLBSE example writes with --test). Needs numpy, scipy and scikit-learn.
"""
import csv, sys, json, itertools
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from scipy.sparse import hstack
csv.field_size_limit(sys.maxsize)
L = ["bug", "feature", "question"]
PROJ = ["facebook/react", "tensorflow/tensorflow", "microsoft/vscode", "bitcoin/bitcoin", "opencv/opencv"]
def records(path):
    f = open(path, newline=''); r = csv.reader(f); hdr = next(r); out = {}; start = r.line_num + 1
    for row in r:
        out[start] = dict(zip(hdr, row)); start = r.line_num + 1
    return out
def load(path):
    return {d["line"]: np.array([d["probs"][l] for l in L]) for d in map(json.loads, open(path))}
heldout, run = sys.argv[1], sys.argv[2]
splits = [int(s) for s in sys.argv[3].split(",")]
Cs = [1.0, 10.0, 100.0]; ws = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
res = {}  # (split, proj) -> dict
for s in splits:
    tr = records(f"{heldout}/train_{s}.csv"); te = records(f"{heldout}/test_{s}.csv")
    for p in PROJ:
        d = run.format(split=s) + "/" + p.replace("/", "__")
        vp = load(d + "/valid_predictions.jsonl"); tp = load(d + "/test_predictions.jsonl")
        train = [(k, v) for k, v in tr.items() if v["repo"] == p and k not in vp]
        text = lambda v: v["title"] + "\n" + v["body"]
        X = [text(v) for _, v in train]; y = [L.index(v["label"]) for _, v in train]
        wv = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1, lowercase=True)
        cv = TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5), min_df=2)
        Xt = hstack([wv.fit_transform(X), cv.fit_transform(X)]).tocsr()
        feats = lambda T: hstack([wv.transform(T), cv.transform(T)]).tocsr()
        vk = sorted(vp); tk = sorted(tp)
        Xv = feats([text(tr[k]) for k in vk]); Xs = feats([text(te[k]) for k in tk])
        yv = [L.index(tr[k]["label"]) for k in vk]; ys = [L.index(te[k]["label"]) for k in tk]
        r = {"yv": yv, "ys": ys, "Pv": np.stack([vp[k] for k in vk]), "Ps": np.stack([tp[k] for k in tk])}
        for C in Cs:
            m = LogisticRegression(C=C, max_iter=5000).fit(Xt, y)
            r[("v", C)] = m.predict_proba(Xv); r[("s", C)] = m.predict_proba(Xs)
        res[(s, p)] = r
def score(split_key, C, w, s):
    f = []
    for p in PROJ:
        r = res[(s, p)]
        P = (1 - w) * r["P" + split_key] + w * r[(split_key, C)]
        f.append(f1_score(r["y" + split_key], P.argmax(1), average="macro"))
    return np.mean(f)
tfidf_alone = {C: (np.mean([score("v", C, 1.0, s) for s in splits]), np.mean([score("s", C, 1.0, s) for s in splits])) for C in Cs}
print("tfidf alone (valid, test):", {C: tuple(round(x, 4) for x in v) for C, v in tfidf_alone.items()})
val = {(C, w): np.mean([score("v", C, w, s) for s in splits]) for C in Cs for w in ws}
for k, v in sorted(val.items()): print("valid", k, round(v, 4))
best = max(val, key=lambda k: (round(val[k], 6), -k[1]))
print("chosen on validation:", best)
base = [score("s", Cs[0], 0.0, s) for s in splits]; ch = [score("s", best[0], best[1], s) for s in splits]
print("test base  ", [round(x, 4) for x in base], round(np.mean(base), 4))
print("test chosen", [round(x, 4) for x in ch], round(np.mean(ch), 4))
d = np.array(ch) - np.array(base); print("diff mean %.4f se %.4f" % (d.mean(), d.std(ddof=1) / np.sqrt(len(d))))
