"""Reference numbers for wick's masked-LM parity test (`wick_model::mlm`), computed with PyTorch.

    python tests/reference/make_mlm_reference.py

Loads the tiny random RoBERTa of `roberta_tiny/` (make_reference.py --tiny roberta wrote it) as
transformers' RobertaForMaskedLM, whose head (dense, GELU, layer norm, decoder tied to the word
embeddings, bias) is the one wick's MaskedLm shares across families. The head gets seeded values
off transformers' init (biases and the layer norm moved off 0 and 1), written under wick's names
to roberta_mlm_head.safetensors. A fixed batch of two texts is masked BERT's way by a seeded
generator (special tokens and padding never chosen); then one training step, dropout off:
cross-entropy of the original tokens at the masked positions, global grad-norm clipping at 1.0,
torch AdamW with decoupled weight decay 0.01 except on biases and LayerNorm weights (what
`wick_trainer::adapt` does). roberta_mlm_step.json records the masked batch, the masked
positions (flat in the padded batch) and their labels, the loss before and after, the pre-clip
gradient norm, and a few updated weights of the head, the tied word embeddings and the encoder
(largest gradients). Needs torch, transformers and safetensors.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoConfig, RobertaForMaskedLM

HERE = Path(__file__).resolve().parent
MODEL = HERE / "roberta_tiny"
TEXTS = [
    "The README still describes the old config format; please update the examples.",
    "Add a regression test for the panic when the CSV ends inside a quoted field",
]
LR, WD, BETAS, EPS, MAX_NORM = 1e-3, 0.01, (0.9, 0.999), 1e-8, 1.0
PROBES = ["lm_head.dense.weight", "lm_head.LayerNorm.bias", "lm_head.bias",
          "embeddings.word_embeddings.weight", "encoder.layer.1.output.dense.weight"]
HEAD_NAMES = {"dense.weight": "lm_head.dense.weight", "dense.bias": "lm_head.dense.bias",
              "layer_norm.weight": "lm_head.LayerNorm.weight",
              "layer_norm.bias": "lm_head.LayerNorm.bias", "bias": "lm_head.bias"}


def main():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    config = AutoConfig.from_pretrained(MODEL)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = RobertaForMaskedLM(config)
    missing, unexpected = model.roberta.load_state_dict(
        load_file(str(MODEL / "model.safetensors")), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    model.tie_weights()
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head = model.lm_head
        head.dense.weight.copy_(torch.randn(head.dense.weight.shape, generator=gen) * 0.05)
        head.dense.bias.copy_(torch.randn(head.dense.bias.shape, generator=gen) * 0.05)
        head.layer_norm.weight.copy_(1 + torch.randn(head.layer_norm.weight.shape, generator=gen) * 0.1)
        head.layer_norm.bias.copy_(torch.randn(head.layer_norm.bias.shape, generator=gen) * 0.1)
        head.bias.copy_(torch.randn(head.bias.shape, generator=gen) * 0.05)
    head_state = {HEAD_NAMES[n]: p.detach().clone().contiguous()
                  for n, p in model.lm_head.named_parameters() if n in HEAD_NAMES}
    save_file(head_state, str(HERE / "roberta_mlm_head.safetensors"))

    tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    encodings = [tokenizer.encode(t).ids for t in TEXTS]
    width = max(map(len, encodings))
    pad, mask_id = tokenizer.token_to_id("<pad>"), tokenizer.token_to_id("<mask>")
    ids = torch.full((len(TEXTS), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, e in enumerate(encodings):
        ids[i, : len(e)] = torch.tensor(e)
        attention[i, : len(e)] = 1
    labels = torch.full_like(ids, -100)
    masked = ids.clone()
    for i, e in enumerate(encodings):
        for j in range(1, len(e) - 1):
            if torch.rand((), generator=gen) < 0.3:
                labels[i, j] = ids[i, j]
                draw = float(torch.rand((), generator=gen))
                if draw < 0.8:
                    masked[i, j] = mask_id
                elif draw < 0.9:
                    masked[i, j] = int(torch.randint(config.vocab_size, (), generator=gen))
    flat = labels.flatten()
    positions = (flat != -100).nonzero().flatten()

    def loss_fn():
        return model(input_ids=masked, attention_mask=attention, labels=labels).loss

    # Under wick's names (the decoder is the word embeddings: one parameter).
    named = [(n.removeprefix("roberta."), p) for n, p in model.named_parameters()
             if not n.startswith("lm_head.")]
    named += [(HEAD_NAMES[n], p) for n, p in model.lm_head.named_parameters() if n in HEAD_NAMES]
    assert len({id(p) for _, p in named}) == len(named)
    no_decay = lambda n: n.endswith(".bias") or "LayerNorm.weight" in n
    groups = [
        {"params": [p for n, p in named if not no_decay(n)], "weight_decay": WD},
        {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    model.train()
    loss_before = loss_fn()
    loss_before.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], MAX_NORM)
    probes = {}
    for name in PROBES:
        p = dict(named)[name]
        idx = torch.topk(p.grad.flatten().abs(), 3).indices.tolist()
        probes[name] = {"flat_index": idx}
    opt.step()
    with torch.no_grad():
        for name, probe in probes.items():
            p = dict(named)[name].flatten()
            probe["after"] = [float(p[i]) for i in probe["flat_index"]]
        loss_after = loss_fn()
    out = {
        "texts": TEXTS,
        "input_ids": masked.tolist(),
        "attention_mask": attention.tolist(),
        "positions": positions.tolist(),
        "labels": flat[positions].tolist(),
        "lr": LR, "weight_decay": WD, "betas": list(BETAS), "eps": EPS, "max_grad_norm": MAX_NORM,
        "loss_before": float(loss_before),
        "grad_norm": float(grad_norm),
        "loss_after": float(loss_after),
        "probes": probes,
        "torch": torch.__version__,
    }
    (HERE / "roberta_mlm_step.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("loss_before", "grad_norm", "loss_after")}))


if __name__ == "__main__":
    main()
