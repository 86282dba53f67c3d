"""Reference numbers for wick's parity tests, computed with PyTorch.

Run once per model (the outputs are committed beside the tests):

    python tests/reference/make_reference.py MODEL_DIR            # MiniLM
    python tests/reference/make_reference.py MODEL_DIR mpnet      # all-mpnet-base-v2
    python tests/reference/make_reference.py --tiny-roberta       # a tiny random RoBERTa

MODEL_DIR holds sentence-transformers/all-MiniLM-L6-v2 (`make model` lays it out in the Hub
cache) or sentence-transformers/all-mpnet-base-v2 (`make model-mpnet`): config.json,
tokenizer.json, model.safetensors. Needs torch, transformers and sentence-transformers. Writes
(with the `mpnet_` prefix for MPNet):

- minilm_pooled.json: token ids and the sentence-transformers pooled embeddings (Transformer +
  mean Pooling, before the Normalize module) of a few fixed sentences.
- `--tiny-roberta` first writes `roberta_tiny/` (config.json, tokenizer.json, model.safetensors):
  a 2-layer, 64-wide RobertaModel with transformers' seeded random init and a byte-level BPE
  tokenizer (vocabulary 600) trained on data/triage/train.jsonl, with RoBERTa's post-processor;
  no RoBERTa weights are reachable offline, so this checks the family's code against transformers
  rather than roberta-base's numbers. Then the two files below, with the `roberta_` prefix.
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


def make_tiny_roberta(out):
    """A tiny random RoBERTa in `out`, laid out as a Hub snapshot is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaConfig, RobertaModel

    rows = (HERE.parent.parent / "data/triage/train.jsonl").read_text().splitlines()
    texts = [json.loads(row)["text"] for row in rows]
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False)
    out.mkdir(exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=130,
        type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = RobertaModel(config, add_pooling_layer=False)
    # transformers' init leaves LayerNorm at (1, 0) and biases at 0: move them, so that a wrong
    # bias or norm in wick shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(out), safe_serialization=True)  # config.json, model.safetensors


def plain_pooled_reference(model_dir, model_id):
    """Mean pooling over transformers' encoder, for a model directory without a
    sentence-transformers configuration."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    return {
        "model": model_id,
        "sentences": SENTENCES,
        "input_ids": [[int(t) for t, m in zip(ids, mask) if m] for ids, mask in
                      zip(enc["input_ids"], enc["attention_mask"])],
        "pooled": masked_mean(hidden, enc["attention_mask"]).tolist(),
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
    "roberta": ("tests/reference/roberta_tiny", "roberta_", [
        "embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight",
        "encoder.layer.0.attention.self.key.weight", "encoder.layer.1.output.LayerNorm.weight"]),
}


def main():
    if sys.argv[1] == "--tiny-roberta":
        model_dir = HERE / "roberta_tiny"
        make_tiny_roberta(model_dir)
        model_id, prefix, probes = MODELS["roberta"]
        (HERE / f"{prefix}pooled.json").write_text(
            json.dumps(plain_pooled_reference(str(model_dir), model_id), indent=1))
        (HERE / f"{prefix}adamw_step.json").write_text(
            json.dumps(adamw_reference(str(model_dir), prefix, HEAD_PROBES + probes), indent=1))
        return
    model_dir = sys.argv[1]
    model_id, prefix, probes = MODELS[sys.argv[2] if len(sys.argv) > 2 else "minilm"]
    pooled_name = f"{prefix}pooled.json" if prefix else "minilm_pooled.json"
    (HERE / pooled_name).write_text(json.dumps(pooled_reference(model_dir, model_id), indent=1))
    (HERE / f"{prefix}adamw_step.json").write_text(
        json.dumps(adamw_reference(model_dir, prefix, HEAD_PROBES + probes), indent=1))


if __name__ == "__main__":
    main()
