"""Reference attributions for `wick_trainer::explain`, computed with Captum.

    python tests/reference/make_attribution_reference.py MINILM_DIR   # all-MiniLM-L6-v2
    python tests/reference/make_attribution_reference.py --tiny roberta

MINILM_DIR holds sentence-transformers/all-MiniLM-L6-v2 (`make model` lays it out in the Hub
cache); `--tiny roberta` uses tests/reference/roberta_tiny (make_reference.py), whose positions
are counted after the padding row and whose byte-level BPE splits words into several tokens.
Needs torch, transformers, safetensors and captum. For each model the encoder -> masked mean ->
Linear classifier gets a seeded random head (N(0, 1) / sqrt(hidden) * 8, so that its
probabilities are decided, not uniform), saved as `{prefix}attribution_head.safetensors`, and
Captum's `LayerIntegratedGradients` on `embeddings.word_embeddings` attributes the softmax
probability of one label (at temperature 1.5) for a few texts: baseline ids with every content
token replaced by the pad token (special tokens kept), Gauss-Legendre with 16 and 64 steps.
`{prefix}attributions.json` records per text and step count the ids, the label, Captum's
per-token attributions (summed over the hidden dimension), the probabilities of the text and of
the baseline (its word embeddings at the text's positions, as the interpolation has them) and
the convergence delta from those (for BERT, checked equal to Captum's), and `occlusion`: per
token, the probability of the text less that of the text whose word embedding at that place is
the pad token's (positions kept; 0 for a special token), for BERT checked equal to Captum's
`FeatureAblation` replacing that one id.
"""

import json
import sys
from pathlib import Path

import torch
from captum.attr import FeatureAblation, LayerIntegratedGradients
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

HERE = Path(__file__).resolve().parent
TEXTS = [
    "Docs: explain --offline in the README",
    "CI flakes on macOS: test_download times out after 30s, needs a retry or a longer timeout",
    "ptal, rebased on main",
]
TEMPERATURE = 1.5
STEPS = [16, 64]


def main():
    if sys.argv[1:2] == ["--tiny"]:
        family = sys.argv[2]
        model_dir, prefix = HERE / f"{family}_tiny", f"{family}_"
    else:
        model_dir, prefix = Path(sys.argv[1]), ""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    hidden = model.config.hidden_size
    weight = torch.randn(3, hidden) / hidden**0.5 * 8.0
    bias = torch.randn(3) * 0.5
    save_file(
        {"classifier.weight": weight.contiguous(), "classifier.bias": bias.contiguous()},
        str(HERE / f"{prefix}attribution_head.safetensors"),
    )

    def probabilities(ids, mask, embeds=None):
        if embeds is None:
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            out = model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.softmax((pooled @ weight.T + bias) / TEMPERATURE, dim=-1)

    lig = LayerIntegratedGradients(probabilities, model.embeddings.word_embeddings)
    special = set(tokenizer.all_special_ids)
    cases = []
    for text in TEXTS:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        mask = torch.ones_like(ids)
        base = torch.tensor(
            [[i if i in special else tokenizer.pad_token_id for i in ids[0].tolist()]]
        )
        with torch.no_grad():
            probs = probabilities(ids, mask)[0]
            # The baseline's word embeddings at the text's positions, which Captum's
            # interpolation keeps (the positions come from `ids`). Captum's own delta runs the
            # model on `base` instead, whose pad ids move RoBERTa's positions, so the delta is
            # recomputed from these.
            embeds = model.embeddings.word_embeddings(base)
            base_probs = probabilities(None, mask, embeds)[0]
        # The label that gains most from baseline to text: its attributions are the largest.
        label = int(torch.argmax(probs - base_probs))
        occlusion = occlude(ids, mask, special, tokenizer.pad_token_id, label, model, probabilities)
        for steps in STEPS:
            attributions, captum_delta = lig.attribute(
                ids,
                baselines=base,
                additional_forward_args=(mask,),
                target=label,
                n_steps=steps,
                method="gausslegendre",
                return_convergence_delta=True,
            )
            scores = attributions.sum(-1)[0]
            delta = float(scores.sum() - (probs[label] - base_probs[label]))
            if family_has_token_positions(model):
                assert abs(delta - float(captum_delta[0])) < 1e-5, (delta, captum_delta)
            cases.append(
                {
                    "text": text,
                    "input_ids": ids[0].tolist(),
                    "label": label,
                    "steps": steps,
                    "attributions": scores.tolist(),
                    "delta": delta,
                    "prob": float(probs[label]),
                    "baseline_prob": float(base_probs[label]),
                    "occlusion": occlusion,
                }
            )
    out = {"temperature": TEMPERATURE, "pad_id": tokenizer.pad_token_id, "cases": cases}
    (HERE / f"{prefix}attributions.json").write_text(json.dumps(out, indent=1) + "\n")


def occlude(ids, mask, special, pad_id, label, model, probabilities):
    """F(x) - F(x with token i's word embedding the pad token's), per token; 0 for specials."""
    with torch.no_grad():
        embeds = model.embeddings.word_embeddings(ids)
        pad = model.embeddings.word_embeddings(torch.tensor([pad_id]))[0]
        full = float(probabilities(None, mask, embeds)[0][label])
        scores = []
        for i, token in enumerate(ids[0].tolist()):
            if token in special:
                scores.append(0.0)
                continue
            occluded = embeds.clone()
            occluded[0, i] = pad
            scores.append(full - float(probabilities(None, mask, occluded)[0][label]))
    if family_has_token_positions(model):
        ablated = FeatureAblation(lambda i, m: probabilities(i, m)).attribute(
            ids, baselines=pad_id, additional_forward_args=(mask,), target=label
        )[0]
        for i, token in enumerate(ids[0].tolist()):
            if token not in special:
                assert abs(float(ablated[i]) - scores[i]) < 1e-6, (i, float(ablated[i]), scores[i])
    return scores


def family_has_token_positions(model):
    """BERT counts positions from 0 whatever the ids, so Captum's delta is the same there."""
    return model.config.model_type == "bert"


if __name__ == "__main__":
    main()
