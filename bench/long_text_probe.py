"""Does reading the whole of a long issue help? A frozen-encoder probe on NLBSE'24 (CPU, no
fine-tuning): all-mpnet-base-v2 embeds every row of issues_train.csv (title, a blank line, body)
as the mean of its last hidden states over four readings of a text longer than 510 content
tokens:

  head       the first 510 tokens (as `data.truncation = "head"`)
  head_tail  the first 128 and the last 382 (as the shipped `head_tail`, `head_tokens = 128`)
  win_tok    all of it, up to 8 windows of 510 tokens, each with its own <s> and </s>, the mean
             over every window's tokens (one long mean pool)
  win_mean   the same windows, the mean of their per-window means

A text of 510 tokens or fewer reads the same under all four. Then, per held-out split (seeds
1-18 of bench/h100/heldout.py: 60 issues per project held out) and project, a logistic
regression on the L2-normalized embeddings of the 240 other rows, scored by macro-F1 on the 60;
the overall score is the mean over the five projects, as the protocol's. Prints each reading's
mean over the 18 splits and its paired difference from head_tail with the standard error.

    python3 bench/long_text_probe.py ISSUES_TRAIN_CSV MODEL_DIR [--cache emb.npz] [--c 1 10 100]

MODEL_DIR: a snapshot of sentence-transformers/all-mpnet-base-v2 (`make model-mpnet` lays one
out in the Hub cache). Needs torch, transformers, tokenizers, numpy and scikit-learn. The
embeddings took 1997 s on a 2-core AMD EPYC (torch 2.15, 2 threads) and are cached in `--cache`.
"""
import argparse
import collections
import csv
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "h100"))
from heldout import test_rows  # noqa: E402  (the splits of the fine-tuning runs)

csv.field_size_limit(sys.maxsize)
WINDOW = 510  # content tokens per window: 512 positions less <s> and </s>
HEAD = 128
MAX_WINDOWS = 8
READINGS = ["head", "head_tail", "win_tok", "win_mean"]


def embed(rows, model_dir):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    torch.set_num_threads(os.cpu_count() or 1)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    model = AutoModel.from_pretrained(model_dir).eval()
    bos, eos, pad = (tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))

    def encode(chunks):
        """Sums of the last hidden states over each chunk's tokens, and the token counts."""
        length = max(len(c) for c in chunks) + 2
        ids = torch.full((len(chunks), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunks), length), dtype=torch.long)
        for i, chunk in enumerate(chunks):
            seq = [bos] + chunk + [eos]
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return (hidden * mask.unsqueeze(-1)).sum(1).numpy(), mask.sum(1).numpy()

    out = {k: [] for k in READINGS}
    start = time.time()
    for n, row in enumerate(rows):
        ids = tok.encode(row["title"] + "\n\n" + row["body"], add_special_tokens=False).ids
        sums, counts = encode([ids[:WINDOW]])
        out["head"].append(sums[0] / counts[0])
        if len(ids) <= WINDOW:
            for k in READINGS[1:]:
                out[k].append(sums[0] / counts[0])
        else:
            sums, counts = encode([ids[:HEAD] + ids[-(WINDOW - HEAD):]])
            out["head_tail"].append(sums[0] / counts[0])
            windows = [ids[i : i + WINDOW] for i in range(0, len(ids), WINDOW)][:MAX_WINDOWS]
            sums, counts = encode(windows)
            out["win_tok"].append(sums.sum(0) / counts.sum())
            out["win_mean"].append((sums / counts[:, None]).mean(0))
        if n % 100 == 0:
            print(f"embedded {n} rows, {time.time() - start:.0f} s", file=sys.stderr)
    return {k: np.stack(v) for k, v in out.items()}


def main():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    parser = argparse.ArgumentParser()
    parser.add_argument("issues")
    parser.add_argument("model_dir")
    parser.add_argument("--cache", default="long_text_probe.npz")
    parser.add_argument("--c", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    args = parser.parse_args()
    rows = list(csv.DictReader(open(args.issues, newline="")))
    if os.path.exists(args.cache):
        emb = dict(np.load(args.cache))
    else:
        emb = embed(rows, args.model_dir)
        np.savez(args.cache, **emb)
    labels = np.array([r["label"] for r in rows])
    repos = sorted({r["repo"] for r in rows})
    for c in args.c:
        scores = collections.defaultdict(list)
        for seed in range(1, 19):
            test = test_rows(rows, seed)
            for reading in READINGS:
                x = emb[reading] / np.linalg.norm(emb[reading], axis=1, keepdims=True)
                f1s = []
                for repo in repos:
                    train = [i for i, r in enumerate(rows) if r["repo"] == repo and i not in test]
                    held = [i for i, r in enumerate(rows) if r["repo"] == repo and i in test]
                    clf = LogisticRegression(C=c, max_iter=5000).fit(x[train], labels[train])
                    f1s.append(f1_score(labels[held], clf.predict(x[held]), average="macro"))
                scores[reading].append(np.mean(f1s))
        print(f"C = {c:g}")
        for reading in READINGS:
            diff = np.array(scores[reading]) - np.array(scores["head_tail"])
            se = diff.std(ddof=1) / np.sqrt(len(diff))
            print(f"  {reading:9s} {np.mean(scores[reading]):.4f}  "
                  f"vs head_tail {diff.mean():+.4f} (se {se:.4f})")


if __name__ == "__main__":
    main()
