"""Reference numbers for text pairs (`data.pair_fields`), computed with transformers.

    python tests/reference/make_pair_reference.py MINILM_DIR MPNET_DIR

MINILM_DIR and MPNET_DIR hold sentence-transformers/all-MiniLM-L6-v2 and all-mpnet-base-v2
(`make model`, `make model-mpnet`); the tiny random RoBERTa is tests/reference/roberta_tiny.
Writes pair_pooled.json: for each model, pairs encoded as `tokenizer(text, text_pair,
truncation="longest_first", max_length=...)` encodes them (ids and segment ids: BERT's [CLS] a
[SEP] b [SEP] with segments 0 then 1, RoBERTa's and MPNet's <s> a </s></s> b </s>), and
AutoModel's last hidden state, mean-pooled over the attention mask (what wick's classifier
pools), with the segment ids given to the model.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

HERE = Path(__file__).resolve().parent
torch.use_deterministic_algorithms(True)

BODY = (
    "Steps to reproduce: run `wick train --config configs/default.toml` on a fresh clone. "
    "Expected: training starts. Actual: `error: tokenizer.json not found` although "
    "make model ran. Version 0.3.1, macOS 14.5, Python 3.12. "
) * 3
PAIRS = [
    # (text, text_pair, max_length); the last ones are cut, longest first.
    ("Is this a duplicate of #412?", "Crash when the config file is missing", 64),
    ("Add docs for --offline", "docs: explain HF_HUB_OFFLINE in the README", 64),
    ("tokenizer.json not found after make model", BODY, 48),
    (BODY, "Same error on Linux", 40),
    (BODY, BODY.upper(), 33),
]


def pooled(model, enc):
    with torch.no_grad():
        kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if "token_type_ids" in enc and model.config.model_type != "mpnet":
            kwargs["token_type_ids"] = enc["token_type_ids"]
        hidden = model(**kwargs).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def cases(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    for text, pair, max_len in PAIRS:
        enc = tokenizer(
            text, pair, truncation="longest_first", max_length=max_len,
            return_tensors="pt", return_token_type_ids=True,
        )
        out.append({
            "text": text,
            "text_pair": pair,
            "max_len": max_len,
            "input_ids": enc["input_ids"][0].tolist(),
            "token_type_ids": enc["token_type_ids"][0].tolist(),
            "pooled": pooled(model, enc)[0].tolist(),
        })
    return out


def main():
    minilm, mpnet = sys.argv[1], sys.argv[2]
    reference = {
        "minilm": cases(minilm),
        "mpnet": cases(mpnet),
        "roberta_tiny": cases(str(HERE / "roberta_tiny")),
    }
    (HERE / "pair_pooled.json").write_text(json.dumps(reference) + "\n")


if __name__ == "__main__":
    main()
