"""wick's truncation in sentence-transformers, written by `wick export` beside the model.

A wick checkpoint trained with `data.truncation = "tail"` or `"head_tail"` saw, of a text longer
than `max_len` tokens, its first `head` content tokens and its last ones (the middle cut; `head`
is 0 for "tail"), with `[CLS]`/`[SEP]` (`<s>`/`</s>`) around them. sentence-transformers' own
Transformer module keeps the first tokens instead. This subclass tokenizes whole texts and, in
`forward`, keeps the positions wick keeps (`wick_data::kept_positions`), so the exported model
gives the checkpoint's outputs on long texts too. `modules.json` names it
(`wick_transformer.WickTransformer`), so load the model with
`SentenceTransformer(path, trust_remote_code=True)`; the rule is in `sentence_bert_config.json`
(`wick_truncation`).
"""

from __future__ import annotations

import torch

try:  # sentence-transformers 5 and later
    from sentence_transformers.base.modules.transformer import Transformer
except ImportError:  # sentence-transformers 3 and 4
    from sentence_transformers.models import Transformer

# Long enough that the tokenizer never cuts: forward does.
UNCUT = 1 << 30


class WickTransformer(Transformer):
    def __init__(self, model_name_or_path: str, *args, wick_truncation: dict | None = None, **kwargs):
        if wick_truncation is None:
            raise ValueError(f"{model_name_or_path}: sentence_bert_config.json has no wick_truncation")
        super().__init__(model_name_or_path, *args, **kwargs)
        self.wick_truncation = dict(wick_truncation)
        self.max_seq_length = UNCUT

    def get_config_dict(self):
        config = super().get_config_dict()
        config["wick_truncation"] = self.wick_truncation
        config["max_seq_length"] = self.wick_truncation["max_len"]
        return config

    def kept_positions(self, ids: list[int]) -> list[int]:
        """The positions wick keeps of one encoding: the special token leading it and the one
        closing it, and between them the first `head` content tokens and the last ones."""
        n = len(ids)
        max_len = self.wick_truncation["max_len"]
        if n <= max_len:
            return list(range(n))
        tokenizer = self.tokenizer
        if ids[0] != tokenizer.cls_token_id or ids[-1] != tokenizer.sep_token_id:
            raise ValueError("expected one text between the tokenizer's cls and sep tokens")
        room = max_len - 2
        head = min(self.wick_truncation["head"], room)
        tail = room - head
        return list(range(1 + head)) + list(range(n - 1 - tail, n))

    def forward(self, features: dict, **kwargs) -> dict:
        mask = features["attention_mask"]
        lengths = mask.sum(dim=1).tolist()
        if max(lengths) > self.wick_truncation["max_len"]:
            ids = features["input_ids"]
            keep = [self.kept_positions(ids[row, :n].tolist()) for row, n in enumerate(lengths)]
            width = max(len(k) for k in keep)
            pad = {"input_ids": self.tokenizer.pad_token_id or 0}
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                if key not in features:
                    continue
                old = features[key]
                new = torch.full((old.shape[0], width), pad.get(key, 0), dtype=old.dtype,
                                 device=old.device)
                for row, positions in enumerate(keep):
                    index = torch.tensor(positions, device=old.device)
                    new[row, : len(positions)] = old[row].index_select(0, index)
                features[key] = new
        return super().forward(features, **kwargs)
