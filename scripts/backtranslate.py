"""Writes a variant of every row of a CSV or JSONL file by back-translation (English -> French ->
English with the Marian models of Helsinki-NLP), for `data.augment`: the same rows in the same
order, the text fields replaced by their round trip, every other field kept.

    python3 scripts/backtranslate.py IN OUT [--fields title,body] [--en-fr MODEL] [--fr-en MODEL]
                                            [--limit N]

IN and OUT are `.csv` or `.jsonl` (the format of IN is written). `--fields`: the fields to
translate (default `title,body`). `--en-fr` and `--fr-en`: the two models, a directory or a Hub
id (default `Helsinki-NLP/opus-mt-en-fr` and `Helsinki-NLP/opus-mt-fr-en`). Needs torch,
transformers and sentencepiece; runs on CUDA when torch sees a GPU, else on the CPU (on a 2-core
machine about 2,000 s for the 1,500 rows of the NLBSE training file).

What is translated: each line of each field that reads as prose (three words or more of letters,
mostly letters and spaces, not indented as code, outside fenced code blocks), its markdown prefix
(`- [ ] `, `### `, `> `, `1. `, ...) kept as it is. Code blocks, stack traces, paths, blank and
short lines stay verbatim, so a variant keeps the original's layout and everything that is not
English prose. Greedy decoding, each line cut at 256 tokens; lines are batched by length and
identical lines translated once.

Session 69 (bench/h100/README.md) made its variants of the NLBSE file with this script as it
stood at 2eb325a (then bench/h100/backtranslate.py), which translated every title whole, prose
or not.
"""
import csv
import json
import re
import sys
import time

csv.field_size_limit(sys.maxsize)
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


def pieces(value):
    """A field as a list of lines: str (verbatim) or (prefix, text) to translate."""
    out, fenced = [], False
    for line in value.split("\n"):
        if line.strip().startswith("```"):
            fenced = not fenced
            out.append(line)
        elif fenced:
            out.append(line)
        else:
            out.append(prose(line) or line)
    return out


def translate(texts, model_name, device):
    """Each text translated, in order (greedy, cut at MAX_TOKENS tokens)."""
    import torch
    from transformers import MarianMTModel, MarianTokenizer

    tok = MarianTokenizer.from_pretrained(model_name)
    model = MarianMTModel.from_pretrained(model_name).to(device).eval()
    if device == "cuda":
        model = model.half()
    batch_tokens = 12000 if device == "cuda" else 3000
    unique = sorted(set(texts), key=lambda t: len(tok(t).input_ids))
    done, batch, started, reported = {}, [], time.time(), 0

    def flush():
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=MAX_TOKENS)
        with torch.no_grad():
            out = model.generate(
                **enc.to(device), num_beams=1, do_sample=False, max_new_tokens=MAX_TOKENS
            )
        for src, hyp in zip(batch, tok.batch_decode(out, skip_special_tokens=True)):
            done[src] = hyp

    for t in unique:
        longest = max([len(t)] + [len(b) for b in batch]) // 3 + 8
        if batch and longest * (len(batch) + 1) > batch_tokens:
            flush()
            batch = []
            if len(done) >= reported + len(unique) // 10:
                reported = len(done)
                print(f"  {model_name}: {reported}/{len(unique)} in {time.time() - started:.0f} s", flush=True)
        batch.append(t)
    if batch:
        flush()
    print(f"{model_name}: {len(unique)} texts in {time.time() - started:.0f} s", flush=True)
    return [done[t] for t in texts]


def read_rows(path):
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader), reader.fieldnames
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: malformed JSON: {e}")
    return rows, None


def main():
    args = sys.argv[1:]
    options = {"--fields": "title,body", "--en-fr": "Helsinki-NLP/opus-mt-en-fr",
               "--fr-en": "Helsinki-NLP/opus-mt-fr-en", "--limit": None}
    for key in options:
        if key in args:
            at = args.index(key)
            if at + 1 >= len(args):
                sys.exit(f"{key} needs a value")
            options[key] = args[at + 1]
            del args[at : at + 2]
    if len(args) != 2 or not all(a.endswith((".csv", ".jsonl")) for a in args):
        sys.exit(__doc__)
    source, target = args
    if source.endswith(".csv") != target.endswith(".csv"):
        sys.exit(f"{target}: write the format of {source}")
    fields = options["--fields"].split(",")
    rows, header = read_rows(source)
    if options["--limit"]:
        if not options["--limit"].isdigit():
            sys.exit(f"--limit {options['--limit']}: a number of rows")
        rows = rows[: int(options["--limit"])]
    if not rows:
        sys.exit(f"{source}: no rows")
    split = []
    for n, row in enumerate(rows):
        for field in fields:
            if not isinstance(row.get(field, ""), str):
                sys.exit(f"{source}: data row {n + 1}: field {field!r} is not text")
        split.append({f: pieces(row[f]) for f in fields if row.get(f)})
    texts = [p[1] for row in split for value in row.values() for p in value if isinstance(p, tuple)]
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{source}: {len(rows)} rows, {len(texts)} texts to translate ({device})", flush=True)
    back = iter(translate(translate(texts, options["--en-fr"], device), options["--fr-en"], device))
    out = []
    for row, parts in zip(rows, split):
        variant = dict(row)
        for field, value in parts.items():
            variant[field] = "\n".join(p if isinstance(p, str) else p[0] + next(back) for p in value)
        out.append(variant)
    with open(target, "w", newline="") as f:
        if header:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(out)
        else:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    print(f"{target}: {len(out)} rows")


if __name__ == "__main__":
    main()
