"""Task-adaptive pretraining (TAPT: Gururangan et al. 2020, "Don't Stop Pretraining") of an MPNet
sentence encoder on one NLBSE project's training texts, to measure whether it helps wick's NLBSE
pipeline before wick grows a masked-LM objective of its own.

Masked-language modelling (15% of the tokens chosen, 80% of those replaced by <mask>, 10% by a
random token, 10% kept; new masks every epoch) on the texts of the project's rows of a training
CSV, title and body joined by a blank line as configs/nlbse-mpnet.toml joins them, the first
--max-len tokens of each. Then the encoder's weights are written under the names and in the
order of the source folder's model.safetensors (f32; the pooler and position ids copied
unchanged), beside its config.json and tokenizer.json: a folder that wick's `model.path` loads
(`nlbse --set model.path=OUT_PARENT/{project}`).

all-mpnet-base-v2 ships without its masked-LM head, so the head (dense layer, layer norm, bias;
the decoder tied to the word embeddings) starts from random weights: it trains alone for
--head-epochs first, the encoder frozen, so that its first gradients do not reach the encoder;
then everything trains for --epochs (AdamW, weight decay 0.01 but on biases and layer norms,
linear warm-up over the first 6% of the steps, linear decay). The loss is taken on the masked
positions only. OUT/tapt.json records the settings, the masked-LM loss on a fixed masking of the
texts before, after the head phase and at the end, and the wall time.

    python3 bench/tapt.py --model DIR --train CSV --project facebook/react --out DIR
        [--epochs 40] [--head-epochs 3] [--lr 5e-5] [--head-lr 1e-3] [--batch 32]
        [--max-len 512] [--seed 0] [--amp] [--limit N]
"""
import argparse
import csv
import json
import math
import os
import random
import shutil
import sys
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoConfig, MPNetForMaskedLM

csv.field_size_limit(sys.maxsize)


def project_texts(path, project):
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["repo"] == project]
    if not rows:
        sys.exit(f"{path}: no row has repo == {project!r}")
    return ["\n\n".join(t for t in (r["title"], r["body"]) if t) for r in rows]


class Masker:
    """Draws BERT-style masks for a padded batch, never on special tokens or padding."""

    def __init__(self, special_ids, mask_id, pad_id, vocab_size):
        self.special = torch.tensor(sorted(special_ids))
        self.pad_id = pad_id
        self.mask_id = mask_id
        self.vocab_size = vocab_size

    def __call__(self, ids, gen):
        ids = ids.clone()
        labels = ids.clone()
        eligible = ~torch.isin(ids, self.special)
        chosen = (torch.rand(ids.shape, generator=gen) < 0.15) & eligible
        labels[~chosen] = -100
        draw = torch.rand(ids.shape, generator=gen)
        ids[chosen & (draw < 0.8)] = self.mask_id
        random_tokens = chosen & (draw >= 0.8) & (draw < 0.9)
        ids[random_tokens] = torch.randint(self.vocab_size, ids.shape, generator=gen)[random_tokens]
        return ids, labels


def pad(encodings, pad_id):
    width = max(len(e) for e in encodings)
    ids = torch.full((len(encodings), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return ids, mask


def masked_loss(model, ids, mask, labels, amp):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        hidden = model.mpnet(input_ids=ids, attention_mask=mask).last_hidden_state
        chosen = labels != -100
        logits = model.lm_head(hidden[chosen])
    return torch.nn.functional.cross_entropy(logits.float(), labels[chosen])


@torch.no_grad()
def fixed_loss(model, batches, masker, device, amp):
    """The mean masked-LM loss over all texts under one fixed masking (seed 1234), dropout off."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    total, count = 0.0, 0
    for ids, mask in batches:
        masked, labels = masker(ids, gen)
        n = int((labels != -100).sum())
        if n == 0:
            continue
        loss = masked_loss(model, masked.to(device), mask.to(device), labels.to(device), amp)
        total += float(loss) * n
        count += n
    model.train()
    return total / count


def train_phase(model, params, encodings, masker, args, epochs, lr, gen, device):
    """`epochs` passes over the texts in seeded random order, AdamW on `params` (name, tensor)."""
    if epochs == 0:
        return
    decay = [p for n, p in params if not (n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n)]
    keep = [p for n, p in params if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": keep, "weight_decay": 0.0}], lr=lr
    )
    per_epoch = math.ceil(len(encodings) / args.batch)
    total = per_epoch * epochs
    warmup = max(1, round(0.06 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    order_rng = random.Random(args.seed)
    trainable = [p for _, p in params]
    for _ in range(epochs):
        order = list(range(len(encodings)))
        order_rng.shuffle(order)
        for b in range(per_epoch):
            chunk = [encodings[i] for i in order[b * args.batch : (b + 1) * args.batch]]
            ids, mask = pad(chunk, masker.pad_id)
            masked, labels = masker(ids, gen)
            if int((labels != -100).sum()) == 0:
                continue
            loss = masked_loss(model, masked.to(device), mask.to(device), labels.to(device), args.amp)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="folder with config.json, tokenizer.json, model.safetensors")
    ap.add_argument("--train", required=True, help="CSV of the competition's schema")
    ap.add_argument("--project", required=True, help="value of the repo column, e.g. facebook/react")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--head-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--limit", type=int, default=0, help="the first N texts only (a smoke test)")
    args = ap.parse_args()
    start = time.time()
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.amp = args.amp and device == "cuda"

    texts = project_texts(args.train, args.project)
    if args.limit:
        texts = texts[: args.limit]
    tokenizer = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(args.max_len)
    encodings = [e.ids for e in tokenizer.encode_batch(texts)]
    ids_of = {t: tokenizer.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "<mask>", "<unk>")}
    if any(v is None for v in ids_of.values()):
        sys.exit(f"{args.model}/tokenizer.json lacks one of {list(ids_of)}: not an MPNet tokenizer")
    config = AutoConfig.from_pretrained(args.model)
    special = {ids_of["<s>"], ids_of["</s>"], ids_of["<pad>"]}
    masker = Masker(special, ids_of["<mask>"], ids_of["<pad>"], config.vocab_size)

    model = MPNetForMaskedLM(config)
    source = os.path.join(args.model, "model.safetensors")
    with safe_open(source, framework="pt") as f:
        names = list(f.keys())
        original = {k: f.get_tensor(k) for k in names}
    encoder_keys = set(model.mpnet.state_dict())
    loaded = {k: v.float() if v.is_floating_point() else v for k, v in original.items() if k in encoder_keys}
    missing, unexpected = model.mpnet.load_state_dict(loaded, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        sys.exit(f"{source}: encoder weights missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    assert model.lm_head.decoder.weight.data_ptr() == model.mpnet.embeddings.word_embeddings.weight.data_ptr()
    model.to(device).train()

    batches = [pad(encodings[i : i + args.batch], masker.pad_id) for i in range(0, len(encodings), args.batch)]
    gen = torch.Generator().manual_seed(args.seed)
    report = {
        "project": args.project,
        "texts": len(texts),
        "tokens_p50": sorted(len(e) for e in encodings)[len(encodings) // 2],
        "settings": {k: v for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "loss_before": fixed_loss(model, batches, masker, device, args.amp),
    }
    # Phase 1: the head alone (the decoder is the word embeddings, frozen with the encoder).
    for p in model.mpnet.parameters():
        p.requires_grad_(False)
    head = [(n, p) for n, p in model.lm_head.named_parameters() if p.requires_grad and "decoder.weight" not in n]
    head = [(n, p) for n, p in head if p.data_ptr() != model.mpnet.embeddings.word_embeddings.weight.data_ptr()]
    train_phase(model, head, encodings, masker, args, args.head_epochs, args.head_lr, gen, device)
    report["loss_after_head"] = fixed_loss(model, batches, masker, device, args.amp)
    # Phase 2: everything.
    for p in model.parameters():
        p.requires_grad_(True)
    seen, everything = set(), []
    for n, p in model.named_parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            everything.append((n, p))
    train_phase(model, everything, encodings, masker, args, args.epochs, args.lr, gen, device)
    report["loss_after"] = fixed_loss(model, batches, masker, device, args.amp)

    os.makedirs(args.out, exist_ok=True)
    state = model.mpnet.state_dict()
    weights = {}
    for k in names:
        if k in state and original[k].is_floating_point():
            weights[k] = state[k].detach().float().cpu().contiguous()
        else:
            weights[k] = original[k].contiguous()
    save_file(weights, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(args.model, name), os.path.join(args.out, name))
    report["seconds"] = round(time.time() - start, 1)
    with open(os.path.join(args.out, "tapt.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: report[k] for k in ("project", "texts", "loss_before", "loss_after_head", "loss_after", "seconds")}))


if __name__ == "__main__":
    main()
