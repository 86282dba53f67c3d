"""Reference numbers for wick's parity tests, computed with PyTorch.

Run once per model (the outputs are committed beside the tests):

    python tests/reference/make_reference.py MODEL_DIR            # MiniLM
    python tests/reference/make_reference.py MODEL_DIR mpnet      # all-mpnet-base-v2
    python tests/reference/make_reference.py MODEL_DIR contrastive  # MiniLM, contrastive term
    python tests/reference/make_reference.py --supcon             # prints loss.rs's constants
    python tests/reference/make_reference.py --rdrop              # prints loss.rs's constants
    python tests/reference/make_reference.py --tiny roberta       # a tiny random RoBERTa
    python tests/reference/make_reference.py --tiny distilbert    # a tiny random DistilBERT
    python tests/reference/make_reference.py --tiny electra       # a tiny random ELECTRA
    python tests/reference/make_reference.py --tiny xlm-roberta   # a tiny random XLM-RoBERTa

MODEL_DIR holds sentence-transformers/all-MiniLM-L6-v2 (`make model` lays it out in the Hub
cache) or sentence-transformers/all-mpnet-base-v2 (`make model-mpnet`): config.json,
tokenizer.json, model.safetensors. Needs torch, transformers and sentence-transformers. Writes
(with the `mpnet_` prefix for MPNet):

- minilm_pooled.json: token ids and the sentence-transformers pooled embeddings (Transformer +
  mean Pooling, before the Normalize module) of a few fixed sentences.
- `--tiny FAMILY` first writes `FAMILY_tiny/` (config.json, tokenizer.json, model.safetensors):
  a 2-layer, 64-wide RobertaModel, XLMRobertaModel, DistilBertModel or ElectraModel (32-wide
  embeddings, so the projection is there) with transformers' seeded random init (layer norms and
  biases moved off 1 and 0) and a tokenizer of the family's kind (byte-level BPE for RoBERTa, a
  SentencePiece-style unigram for XLM-RoBERTa, lower-cased WordPiece for the others; vocabulary
  600) trained on data/triage/train.jsonl, with the family's
  post-processor. No weights of these families are reachable offline, so this checks the
  families' code against transformers rather than roberta-base's, distilbert-base-uncased's or
  electra-base-discriminator's numbers. Then the two files below, with the
  `FAMILY_` prefix; the probed weights are recorded under wick's names.
- adamw_step.json + adamw_head.safetensors: one training step of the encoder -> masked mean -> Linear on
  a fixed batch, dropout off, cross-entropy, global grad-norm clipping at 1.0, then torch AdamW
  with decoupled weight decay 0.01 except on biases and LayerNorm weights. Records the loss before
  and after, the pre-clip gradient norm and a few updated weights (largest gradients, where the
  update does not hinge on eps).
- contrastive_adamw_step.json (MiniLM, `contrastive`): the same step from the same head with the
  objective `(1 - w) * cross_entropy + w * supcon(pooled)` of `train.contrastive_weight`.
- lora_adamw_step.json + lora_adamw_head.safetensors (MiniLM, `lora`; also needs peft): the same
  step with PEFT's LoRA (rank 4, alpha 8, on query, value, intermediate.dense and output.dense,
  no LoRA dropout, bias "none") on the frozen encoder, from the plain step's head; PEFT's `B`
  starts at 0, which would leave `A` without a gradient, so `B` is drawn from N(0, 0.02) first.
  The init file holds the head and every adapter under wick's names; AdamW updates only those.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
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
# (weight, temperature) of the supervised contrastive term in `contrastive` mode; BATCH's first
# and last texts share a label, the other two have no positive.
CONTRASTIVE = (0.5, 0.3)
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


def tiny_tokenizer(family):
    """A 600-piece tokenizer of the family's kind, trained on the flagship training texts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, \
        trainers

    rows = (HERE.parent.parent / "data/triage/train.jsonl").read_text().splitlines()
    texts = [json.loads(row)["text"] for row in rows]
    if family == "roberta":
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
    elif family == "xlm-roberta":
        # As xlm-roberta-base's tokenizer.json: a unigram model over "▁"-prefixed words, and
        # `<s> $A </s>` around a text. A second run's scores differ in their last digits (the
        # trainer's threads); the pieces, ids and the files made from them do not.
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        tokenizer.train_from_iterator(texts, trainers.UnigramTrainer(
            vocab_size=600, special_tokens=specials, unk_token="<unk>", show_progress=False))
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", tokenizer.token_to_id("<s>")),
                            ("</s>", tokenizer.token_to_id("</s>"))])
    else:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(
            vocab_size=600, special_tokens=specials, show_progress=False))
        tokenizer.post_processor = processors.BertProcessing(
            ("[SEP]", tokenizer.token_to_id("[SEP]")), ("[CLS]", tokenizer.token_to_id("[CLS]")))
    return tokenizer


def make_tiny(family, out):
    """A tiny random encoder of the family in `out`, laid out as a Hub snapshot is."""
    from transformers import (DistilBertConfig, DistilBertModel, ElectraConfig, ElectraModel,
                              RobertaConfig, RobertaModel, XLMRobertaConfig, XLMRobertaModel)

    tokenizer = tiny_tokenizer(family)
    out.mkdir(exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    torch.manual_seed(0)
    if family in ("roberta", "xlm-roberta"):
        config_class, model_class = {"roberta": (RobertaConfig, RobertaModel),
                                     "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel)}[family]
        config = config_class(
            vocab_size=tokenizer.get_vocab_size(), hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=128, max_position_embeddings=130,
            type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
        model = model_class(config, add_pooling_layer=False)
    elif family == "electra":
        config = ElectraConfig(
            vocab_size=tokenizer.get_vocab_size(), embedding_size=32, hidden_size=64,
            num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=128, type_vocab_size=2, pad_token_id=0)
        model = ElectraModel(config)
    else:
        config = DistilBertConfig(
            vocab_size=tokenizer.get_vocab_size(), dim=64, n_layers=2, n_heads=4,
            hidden_dim=128, max_position_embeddings=128, pad_token_id=0)
        model = DistilBertModel(config)
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
    model = AutoModel.from_pretrained(model_dir, **no_pooler(model_dir)).eval()
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


def model_type(model_dir):
    return json.loads((Path(model_dir) / "config.json").read_text())["model_type"]


def is_distilbert(model_dir):
    return model_type(model_dir) == "distilbert"


def no_pooler(model_dir):
    """BERT's and RoBERTa's models take `add_pooling_layer`; DistilBERT's and ELECTRA's have no
    pooler."""
    return {} if model_type(model_dir) in ("distilbert", "electra") else {"add_pooling_layer": False}


# DistilBERT's layer names and wick's (BERT's): probes are recorded under wick's.
DISTILBERT_NAMES = [("attention.q_lin", "attention.self.query"),
                    ("attention.k_lin", "attention.self.key"),
                    ("attention.v_lin", "attention.self.value"),
                    ("attention.out_lin", "attention.output.dense"),
                    ("sa_layer_norm", "attention.output.LayerNorm"),
                    ("ffn.lin1", "intermediate.dense"), ("ffn.lin2", "output.dense"),
                    ("output_layer_norm", "output.LayerNorm")]


def wick_name(name):
    if name.startswith("transformer.layer."):
        for theirs, ours in DISTILBERT_NAMES:
            name = name.replace(f".{theirs}.", f".{ours}.")
        name = name.replace("transformer.layer.", "encoder.layer.", 1)
    return name


def supervised_contrastive(embeddings, labels, temperature):
    """Khosla et al.'s L_out, anchors without a positive left out of the mean (as wick's)."""
    z = torch.nn.functional.normalize(embeddings, dim=1)
    sim = z @ z.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    count = positives.sum(1)
    has = count > 0
    return -((log_prob * positives).sum(1)[has] / count[has]).mean()


# PEFT's LoRA in `lora` mode: rank, alpha, and wick's names of the adapted layers with the
# regular expression (full match on the module name) that selects the same layers in PEFT.
LORA = (4, 8.0, ["query", "value", "intermediate", "output"],
        r".*\.(query|value|intermediate\.dense|layer\.\d+\.output\.dense)")
LORA_PROBES = ["encoder.layer.0.attention.self.query.lora_A.weight",
               "encoder.layer.0.attention.self.query.lora_B.weight",
               "encoder.layer.2.attention.self.value.lora_A.weight",
               "encoder.layer.3.intermediate.dense.lora_B.weight",
               "encoder.layer.5.output.dense.lora_A.weight",
               "encoder.layer.5.output.dense.lora_B.weight"]


def add_lora(bert):
    """`bert` wrapped by PEFT with LORA's adapters, `B` drawn from N(0, 0.02); the wrapped
    model and its trainable adapters as (wick name, parameter)."""
    from peft import LoraConfig, get_peft_model
    rank, alpha, _, pattern = LORA
    model = get_peft_model(bert, LoraConfig(r=rank, lora_alpha=alpha, target_modules=pattern,
                                            lora_dropout=0.0, bias="none"))
    adapters = []
    for name, p in model.named_parameters():
        if "lora_" not in name:
            continue
        if "lora_B" in name:
            with torch.no_grad():
                p.normal_(0.0, 0.02)
        wick = name.removeprefix("base_model.model.").replace(".default.", ".")
        adapters.append((wick, p))
    return model, adapters


def adamw_reference(model_dir, prefix, probe_names, contrastive=None, lora=False):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dropout_off = dict(dropout=0.0, attention_dropout=0.0) if is_distilbert(model_dir) else \
        dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert = AutoModel.from_pretrained(model_dir, **dropout_off, **no_pooler(model_dir))
    bert.train()
    hidden = bert.config.hidden_size
    head = torch.nn.Linear(hidden, NUM_LABELS)
    head_file = HERE / f"{prefix}adamw_head.safetensors"
    if lora:
        bert, adapters = add_lora(bert)
    if contrastive or lora:
        # The plain step's head, so that the two steps differ only in the objective.
        with torch.no_grad():
            saved = load_file(str(head_file))
            head.weight.copy_(saved["classifier.weight"])
            head.bias.copy_(saved["classifier.bias"])
    else:
        with torch.no_grad():
            head.weight.normal_(0.0, 0.02)
            head.bias.zero_()
        save_file({"classifier.weight": head.weight.detach().contiguous(),
                   "classifier.bias": head.bias.detach().contiguous()}, str(head_file))

    enc = tokenizer([t for t, _ in BATCH], padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
    labels = torch.tensor([y for _, y in BATCH])
    # MPNet takes no segment ids; wick's batches carry zeros for them.
    types = {"token_type_ids": enc["token_type_ids"]} if "token_type_ids" in enc else {}

    def loss_fn():
        out = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                   **types).last_hidden_state
        pooled = masked_mean(out, enc["attention_mask"])
        loss = torch.nn.functional.cross_entropy(head(pooled), labels)
        if contrastive:
            weight, temperature = contrastive
            loss = (1 - weight) * loss + weight * supervised_contrastive(pooled, labels, temperature)
        return loss

    # Under wick's names, so that the decay groups and the probes are wick's.
    named = [(wick_name(n), p) for n, p in bert.named_parameters()] + \
            [("classifier." + n, p) for n, p in head.named_parameters()]
    if lora:
        # Only the adapters and the head train; the file gives wick the same starting values.
        named = adapters + [("classifier." + n, p) for n, p in head.named_parameters()]
        save_file({n: p.detach().contiguous() for n, p in named},
                  str(HERE / "lora_adamw_head.safetensors"))
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
        **({"contrastive_weight": contrastive[0], "contrastive_temperature": contrastive[1]}
           if contrastive else {}),
        **({"lora": {"rank": LORA[0], "alpha": LORA[1], "targets": LORA[2]}} if lora else {}),
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
    "distilbert": ("tests/reference/distilbert_tiny", "distilbert_", [
        "embeddings.position_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.attention.output.LayerNorm.weight",
        "encoder.layer.1.intermediate.dense.weight", "encoder.layer.1.output.LayerNorm.bias"]),
    "xlm-roberta": ("tests/reference/xlm-roberta_tiny", "xlm-roberta_", [
        "embeddings.position_embeddings.weight", "embeddings.word_embeddings.weight",
        "encoder.layer.1.attention.self.query.weight"]),
    "electra": ("tests/reference/electra_tiny", "electra_", [
        "embeddings_project.weight", "embeddings_project.bias",
        "embeddings.token_type_embeddings.weight", "encoder.layer.0.attention.self.value.weight",
        "encoder.layer.1.attention.output.LayerNorm.weight"]),
}


def supcon_reference():
    """The loss and embedding gradient of wick_model::loss's unit tests (printed, then pasted)."""
    e = torch.tensor([[1.0, 2.0, -0.5], [0.9, 1.5, 0.0], [0.3, -1.0, 2.0], [-2.0, 0.1, 0.4],
                      [0.0, -0.7, 1.1]], requires_grad=True)
    labels = torch.tensor([0, 1, 1, 2, 0])
    out = {}
    for temperature in (0.3, 0.07, 0.01):
        e.grad = None
        loss = supervised_contrastive(e, labels, temperature)
        loss.backward()
        out[temperature] = {"loss": loss.item(), "grad": e.grad.flatten().tolist()}
    return out


def rdrop_reference():
    """R-Drop's symmetric KL of wick_model::loss's unit tests, from torch's own kl_div (softmax)
    and the Bernoulli KL written from log-sigmoids (multi-label): loss and both logits' grads."""
    a = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0], [-50.0, 60.0, 0.0]],
                     requires_grad=True)
    b = torch.tensor([[1.5, -0.5, 0.0], [0.3, -0.4, -2.0], [-40.0, 55.0, 3.0]],
                     requires_grad=True)
    F = torch.nn.functional

    def softmax_kl(a, b):
        la, lb = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
        # kl_div(input, target) = KL(target || input), summed over classes, mean over examples.
        return 0.5 * (F.kl_div(lb, la, log_target=True, reduction="batchmean")
                      + F.kl_div(la, lb, log_target=True, reduction="batchmean"))

    def bernoulli_kl(a, b):
        def kl(x, y):  # KL(Bernoulli(sigmoid x) || Bernoulli(sigmoid y)) per label
            return (torch.sigmoid(x) * (F.logsigmoid(x) - F.logsigmoid(y))
                    + torch.sigmoid(-x) * (F.logsigmoid(-x) - F.logsigmoid(-y)))
        return 0.5 * (kl(a, b) + kl(b, a)).sum(-1).mean()

    out = {}
    for name, fn in (("softmax", softmax_kl), ("bernoulli", bernoulli_kl)):
        a.grad = b.grad = None
        loss = fn(a, b)
        loss.backward()
        out[name] = {"loss": loss.item(), "grad_a": a.grad.flatten().tolist(),
                     "grad_b": b.grad.flatten().tolist()}
    return out


def main():
    if sys.argv[1] == "--rdrop":
        print(json.dumps(rdrop_reference(), indent=1))
        return
    if sys.argv[1] == "--supcon":
        print(json.dumps(supcon_reference(), indent=1))
        return
    if sys.argv[1] == "--tiny":
        family = sys.argv[2]
        model_dir = HERE / f"{family}_tiny"
        make_tiny(family, model_dir)
        model_id, prefix, probes = MODELS[family]
        (HERE / f"{prefix}pooled.json").write_text(
            json.dumps(plain_pooled_reference(str(model_dir), model_id), indent=1))
        (HERE / f"{prefix}adamw_step.json").write_text(
            json.dumps(adamw_reference(str(model_dir), prefix, HEAD_PROBES + probes), indent=1))
        return
    model_dir = sys.argv[1]
    if len(sys.argv) > 2 and sys.argv[2] == "lora":
        (HERE / "lora_adamw_step.json").write_text(json.dumps(
            adamw_reference(model_dir, "", ["classifier.weight", "classifier.bias"] + LORA_PROBES,
                            lora=True), indent=1))
        return
    if len(sys.argv) > 2 and sys.argv[2] == "contrastive":
        _, _, probes = MODELS["minilm"]
        (HERE / "contrastive_adamw_step.json").write_text(json.dumps(
            adamw_reference(model_dir, "", HEAD_PROBES + probes, contrastive=CONTRASTIVE),
            indent=1))
        return
    model_id, prefix, probes = MODELS[sys.argv[2] if len(sys.argv) > 2 else "minilm"]
    pooled_name = f"{prefix}pooled.json" if prefix else "minilm_pooled.json"
    (HERE / pooled_name).write_text(json.dumps(pooled_reference(model_dir, model_id), indent=1))
    (HERE / f"{prefix}adamw_step.json").write_text(
        json.dumps(adamw_reference(model_dir, prefix, HEAD_PROBES + probes), indent=1))


if __name__ == "__main__":
    main()
