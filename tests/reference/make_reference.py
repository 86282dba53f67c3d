"""Reference numbers for wick's parity tests, computed with PyTorch.

Run once per model (the outputs are committed beside the tests):

    python tests/reference/make_reference.py MODEL_DIR            # MiniLM
    python tests/reference/make_reference.py MODEL_DIR mpnet      # all-mpnet-base-v2

MODEL_DIR holds sentence-transformers/all-MiniLM-L6-v2 (`make model` lays it out in the Hub
cache) or sentence-transformers/all-mpnet-base-v2 (`make model-mpnet`): config.json,
tokenizer.json, model.safetensors. Needs torch, transformers and sentence-transformers. Writes
(with the `mpnet_` prefix for MPNet):

- minilm_pooled.json: token ids and the sentence-transformers pooled embeddings (Transformer +
  mean Pooling, before the Normalize module) of a few fixed sentences.
- adamw_step.json + adamw_head.safetensors: one training step of the encoder -> masked mean -> Linear on
  a fixed batch, dropout off, cross-entropy, global grad-norm clipping at 1.0, then torch AdamW
  with decoupled weight decay 0.01 except on biases and LayerNorm weights. Records the loss before
  and after, the pre-clip gradient norm and a few updated weights (largest gradients, where the
  update does not hinge on eps).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

HERE = Path(__file__).resolve().parent
torch.manual_seed(0)
torch.use_deterministic_algorithms(True)

SENTENCES = [
    "Add docs for the new --offline flag",
    "CI is flaky: test_resume_exact fails on macOS runners about 1 in 5 runs",
    "Ready for review: refactor the tokenizer cache so that lookups no longer lock",
    "README",
]

BATCH = [
    ("The README still describes the old config format; please update the examples.", 0),
    ("Add a regression test for the panic when the CSV ends inside a quoted field", 1),
    ("PR is ready, could a maintainer take a look and merge?", 2),
    ("docs: explain HF_HUB_OFFLINE", 0),
]
NUM_LABELS = 3
LR, WD, BETAS, EPS, MAX_NORM = 1e-3, 0.01, (0.9, 0.999), 1e-8, 1.0


def masked_mean(hidden, mask):
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def pooled_reference(model_dir, model_id):
    st = SentenceTransformer(model_dir, device="cpu")
    features = st.tokenize(SENTENCES)
    with torch.no_grad():
        out = st[1](st[0](dict(features)))
    return {
        "model": model_id,
        "sentences": SENTENCES,
        "input_ids": [[int(t) for t, m in zip(ids, mask) if m] for ids, mask in
                      zip(features["input_ids"], features["attention_mask"])],
        "pooled": out["sentence_embedding"].tolist(),
    }


def adamw_reference(model_dir, prefix, probe_names):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bert = AutoModel.from_pretrained(model_dir, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, add_pooling_layer=False)
    bert.train()
    hidden = bert.config.hidden_size
    head = torch.nn.Linear(hidden, NUM_LABELS)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02)
        head.bias.zero_()
    save_file({"classifier.weight": head.weight.detach().contiguous(),
               "classifier.bias": head.bias.detach().contiguous()},
              str(HERE / f"{prefix}adamw_head.safetensors"))

    enc = tokenizer([t for t, _ in BATCH], padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
    labels = torch.tensor([y for _, y in BATCH])
    # MPNet takes no segment ids; wick's batches carry zeros for them.
    types = {"token_type_ids": enc["token_type_ids"]} if "token_type_ids" in enc else {}

    def loss_fn():
        out = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                   **types).last_hidden_state
        return torch.nn.functional.cross_entropy(head(masked_mean(out, enc["attention_mask"])), labels)

    named = [(n, p) for n, p in bert.named_parameters()] + \
            [("classifier." + n, p) for n, p in head.named_parameters()]
    no_decay = lambda n: n.endswith(".bias") or "LayerNorm.weight" in n
    groups = [
        {"params": [p for n, p in named if not no_decay(n)], "weight_decay": WD},
        {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)

    loss_before = loss_fn()
    loss_before.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], MAX_NORM)
    probes = {}
    for name in probe_names:
        p = dict(named)[name]
        flat = p.grad.flatten().abs()
        idx = torch.topk(flat, 3).indices.tolist()
        probes[name] = {"flat_index": idx}
    opt.step()
    with torch.no_grad():
        for name, probe in probes.items():
            p = dict(named)[name].flatten()
            probe["after"] = [float(p[i]) for i in probe["flat_index"]]
        loss_after = loss_fn()
    return {
        "texts": [t for t, _ in BATCH],
        "labels": labels.tolist(),
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "token_type_ids": torch.zeros_like(enc["input_ids"]).tolist() if not types
        else enc["token_type_ids"].tolist(),
        "lr": LR, "weight_decay": WD, "betas": list(BETAS), "eps": EPS, "max_grad_norm": MAX_NORM,
        "loss_before": float(loss_before),
        "grad_norm": float(grad_norm),
        "loss_after": float(loss_after),
        "probes": probes,
        "torch": torch.__version__,
    }


HEAD_PROBES = ["classifier.weight", "classifier.bias", "embeddings.word_embeddings.weight",
               "embeddings.LayerNorm.bias"]
MODELS = {
    # name: (Hub id, output prefix, probed encoder weights besides HEAD_PROBES)
    "minilm": ("sentence-transformers/all-MiniLM-L6-v2", "", [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.3.intermediate.dense.weight", "encoder.layer.5.output.LayerNorm.weight"]),
    "mpnet": ("sentence-transformers/all-mpnet-base-v2", "mpnet_", [
        "embeddings.position_embeddings.weight", "encoder.relative_attention_bias.weight",
        "encoder.layer.0.attention.attn.q.weight", "encoder.layer.6.attention.LayerNorm.weight",
        "encoder.layer.11.intermediate.dense.weight"]),
}


def main():
    model_dir = sys.argv[1]
    model_id, prefix, probes = MODELS[sys.argv[2] if len(sys.argv) > 2 else "minilm"]
    pooled_name = f"{prefix}pooled.json" if prefix else "minilm_pooled.json"
    (HERE / pooled_name).write_text(json.dumps(pooled_reference(model_dir, model_id), indent=1))
    (HERE / f"{prefix}adamw_step.json").write_text(
        json.dumps(adamw_reference(model_dir, prefix, HEAD_PROBES + probes), indent=1))


if __name__ == "__main__":
    main()
