#!/usr/bin/env python3
"""PyTorch reference for wick's `bench` binary: the same model, batch and measurements.

The model is transformers' `BertModel` (or `MPNetModel`, from the checkpoint's `model_type`;
no pooler, as wick) + masked mean pooling + dropout +
`nn.Linear(hidden, 3)`, trained with cross-entropy, `torch.optim.AdamW(lr=2e-5,
weight_decay=0.01)` (biases and LayerNorm weights exempt, as wick) and global-norm clipping 1.0.
Dropout rates come from the model's config in both tools.

Measurements: square matmul GFLOP/s (the MFU ceiling), `forward` (eval mode, `torch.no_grad`),
`forward_backward` (train mode) and `train_step`. Timing as in wick: the first call is timed alone
(`first_use`), then warm-up calls, then the median [min, max] of the timed calls; the device is
synchronized before every clock read. `--json` prints one object per measurement per line with
wick's keys (`bench` .. `peak_bytes`) first.

Examples:
    python bench/pytorch_reference.py --model ~/.cache/huggingface/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/<hash>
    python bench/pytorch_reference.py --model bert-base --only train_step --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

# Quiet transformers' load report and progress bars: stdout carries only results.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
NUM_LABELS = 3
LR, WEIGHT_DECAY, MAX_GRAD_NORM = 2e-5, 0.01, 1.0
MODEL_BENCHES = ("forward", "forward_backward", "train_step")
ALL_BENCHES = ("matmul",) + MODEL_BENCHES
CEILING_SIZE = {"cpu": 2048}  # accelerators: 4096
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="a local model directory, a Hub id (local cache first) or bert-base")
    p.add_argument("--random-init", action="store_true",
                   help="seeded random weights of the model's shape (needs only its config)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--only", default=",".join(ALL_BENCHES),
                   help="comma-separated subset of " + ", ".join(ALL_BENCHES))
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], default="cpu")
    p.add_argument("--dtype", choices=["f32", "bf16"], default=None,
                   help="model compute dtype (bf16 through torch.autocast); default f32, and "
                        "f32+bf16 for matmul")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sizes", default=None, help="matmul sizes, comma-separated")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                   help="transformers attention implementation (sdpa is its default)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in args.only if b not in ALL_BENCHES]
    if unknown:
        p.error(f"--only: unknown {unknown}; expected some of {', '.join(ALL_BENCHES)}")
    for name in ("batch", "seq", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.sizes:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    return args


# ---------------------------------------------------------------------------------------------
# Model


def hub_cache_dir() -> Path:
    """HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (huggingface_hub's rule)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def cached_snapshot(model_id: str) -> Path | None:
    """The cache's snapshot dir of `model_id` at refs/main (or its only snapshot), if present."""
    repo = hub_cache_dir() / ("models--" + model_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = repo / "snapshots" / ref.read_text().strip()
        if (snap / "config.json").is_file():
            return snap
    snaps = sorted((repo / "snapshots").glob("*/config.json"))
    return snaps[-1].parent if snaps else None


def bert_base_config():
    from transformers import BertConfig
    # bert-base-uncased's config.json (these are also BertConfig's defaults).
    return BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072,
                      max_position_embeddings=512)


def load_encoder(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The encoder without pooler (BertModel, or MPNetModel for an MPNet checkpoint), and where
    its weights came from."""
    from transformers import AutoConfig, AutoModel, BertModel
    torch.manual_seed(args.seed)
    if args.model == "bert-base":
        config = bert_base_config()
        config._attn_implementation = args.attn
        return BertModel(config, add_pooling_layer=False), "seeded random init"
    source = Path(args.model).expanduser()
    if not source.is_dir():
        source = cached_snapshot(args.model) or args.model  # a Hub id: cache, else download
    if args.random_init:
        config = AutoConfig.from_pretrained(source)
        config._attn_implementation = args.attn
        return AutoModel.from_config(config, add_pooling_layer=False), "seeded random init"
    model = AutoModel.from_pretrained(source, add_pooling_layer=False, attn_implementation=args.attn)
    return model, f"pretrained from {source}"


class Classifier(nn.Module):
    """Encoder + masked mean pooling + dropout + Linear(hidden, 3), as wick_model::Classifier."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(encoder.config.hidden_dropout_prob)
        self.head = nn.Linear(encoder.config.hidden_size, NUM_LABELS)
        nn.init.normal_(self.head.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, token_type_ids, attention_mask):
        # MPNet has no segment embeddings and takes no token_type_ids.
        types = {} if self.encoder.config.model_type == "mpnet" else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              **types).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.head(self.dropout(pooled))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    decay, exempt = [], []
    for name, param in model.named_parameters():
        (exempt if name.endswith(".bias") or "LayerNorm.weight" in name else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                              {"params": exempt, "weight_decay": 0.0}], lr=LR)


def random_batch(vocab: int, batch: int, seq: int, seed: int, device: str):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels = torch.randint(0, NUM_LABELS, (batch,), generator=gen)
    ones = torch.ones(batch, seq, dtype=torch.long)
    zeros = torch.zeros(batch, seq, dtype=torch.long)
    return tuple(t.to(device) for t in (ids, zeros, ones, labels))


def forward_flops(cfg, batch: int, seq: int) -> float:
    """Matmul FLOPs of one forward, counted exactly as wick's src/bench/flops.rs."""
    b, s, h, i = batch, seq, cfg.hidden_size, cfg.intermediate_size
    dense = 2 * b * s * (4 * h * h + 2 * h * i)
    attention = 4 * b * s * s * h
    return (dense + attention) * cfg.num_hidden_layers + 2 * b * h * NUM_LABELS


# ---------------------------------------------------------------------------------------------
# Timing and memory


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def time_calls(device: str, warmup: int, repeats: int, call) -> dict:
    def timed() -> float:
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        return time.perf_counter() - start

    first_use = timed()
    for _ in range(warmup):
        call()
    seconds = sorted(timed() for _ in range(repeats))
    n = len(seconds)
    median = seconds[n // 2] if n % 2 else (seconds[n // 2 - 1] + seconds[n // 2]) / 2
    return {"first_use": first_use, "median": median, "min": seconds[0], "max": seconds[-1],
            "repeats": n}


def reset_peak(device: str) -> str:
    """Starts a per-measurement peak; returns its scope (as wick's `peak_scope`)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return "cuda_max_allocated"
    try:  # Linux: reset VmHWM to the current RSS, as wick does
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "measurement"
    except OSError:
        return "process"


def ru_maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def peak_bytes(device: str, scope: str) -> int:
    if scope == "cuda_max_allocated":
        return torch.cuda.max_memory_allocated()
    if scope == "measurement":
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return ru_maxrss_bytes()


# ---------------------------------------------------------------------------------------------
# Measurements


class Session:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = args.device
        self.threads = torch.get_num_threads()
        self.ceilings: dict[str, dict] = {}  # dtype -> {"size", "gflops"}

    def record(self, bench: str, dtype: str, t: dict, **fields) -> dict:
        rec = {"bench": bench, "device": self.device, "dtype": dtype, "model": None,
               "batch": None, "seq": None, "seconds": t["median"], "examples_per_s": None,
               "tokens_per_s": None, "gflops": None, "mfu": None, "peak_bytes": None}
        rec.update(fields)
        rec.update({"spread": [t["min"], t["max"]], "repeats": t["repeats"],
                    "first_use_seconds": t["first_use"], "threads": self.threads,
                    "ru_maxrss_bytes": ru_maxrss_bytes(), "torch": torch.__version__})
        return rec

    def emit(self, rec: dict, text: str | None = None) -> None:
        if self.args.json:
            first = {k: None for k in ("bench", "device", "dtype", "model", "batch", "seq",
                                       "seconds", "examples_per_s", "tokens_per_s", "gflops",
                                       "mfu", "peak_bytes")}
            first.update(bench="first_use", device=rec["device"], dtype=rec["dtype"],
                         model=rec["model"], batch=rec["batch"], seq=rec["seq"],
                         seconds=rec["first_use_seconds"], of=rec["bench"])
            if "size" in rec:
                first["size"] = rec["size"]
            print(json.dumps(first))
            print(json.dumps(rec), flush=True)
        elif text is not None:
            print(text, flush=True)

    def note(self, text: str) -> None:
        if not self.args.json:
            print(text, flush=True)

    def matmul(self, dtype: str, size: int, role: str | None = None) -> dict:
        scope = reset_peak(self.device)
        gen = torch.Generator(device="cpu").manual_seed(self.args.seed)
        a = torch.randn(size, size, generator=gen).to(self.device, DTYPES[dtype])
        b = torch.randn(size, size, generator=gen).to(self.device, DTYPES[dtype])
        with torch.no_grad():
            t = time_calls(self.device, self.args.warmup, self.args.repeats, lambda: a @ b)
        gflops = 2 * size**3 / t["median"] / 1e9
        best = self.ceilings.get(dtype)
        if best is None or gflops > best["gflops"]:
            self.ceilings[dtype] = {"size": size, "gflops": gflops}
        rec = self.record("matmul", dtype, t, gflops=gflops,
                          peak_bytes=peak_bytes(self.device, scope), size=size, peak_scope=scope)
        if role:
            rec["role"] = role
        return rec

    def matmuls(self) -> None:
        dtypes = [self.args.dtype] if self.args.dtype else (
            ["f32", "bf16"] + (["f16"] if self.device != "cpu" else []))
        sizes = self.args.sizes or ([1024, 2048, 4096] if self.device == "cpu"
                                    else [1024, 2048, 4096, 8192])
        self.note("\nmatmul (square, GFLOP/s = 2 n^3 / median)")
        self.note(f"  {'device':<8} {'dtype':<5} {'size':>5} {'median s':>10}  "
                  f"{'[min .. max] s':<22} {'GFLOP/s':>9} {'first use s':>11}")
        for dtype in dtypes:
            for size in sizes:
                r = self.matmul(dtype, size)
                self.emit(r, f"  {r['device']:<8} {dtype:<5} {size:>5} {r['seconds']:>10.4f}  "
                             f"{spread(r):<22} {r['gflops']:>9.1f} {r['first_use_seconds']:>11.4f}")

    def ceiling(self, dtype: str) -> dict:
        if dtype not in self.ceilings:
            rec = self.matmul(dtype, CEILING_SIZE.get(self.device, 4096), role="ceiling")
            if self.args.json:
                self.emit(rec)
        return self.ceilings[dtype]

    def model(self) -> None:
        args = self.args
        dtype = args.dtype or "f32"
        ceiling = self.ceiling(dtype)
        encoder, origin = load_encoder(args)
        model = Classifier(encoder).to(self.device)
        cfg = encoder.config
        if args.seq > cfg.max_position_embeddings:
            sys.exit(f"error: --seq {args.seq} exceeds max_position_embeddings "
                     f"{cfg.max_position_embeddings}")
        batch = random_batch(cfg.vocab_size, args.batch, args.seq, args.seed, self.device)
        params = sum(p.numel() for p in model.parameters())
        self.note(f"\nmodel {args.model}: {params / 1e6:.1f}M params ({origin}), batch "
                  f"{args.batch} x seq {args.seq}, {dtype} on {self.device}, attention "
                  f"{args.attn}\n  mfu ceiling: best {self.device} {dtype} matmul in this "
                  f"process, size {ceiling['size']}: {ceiling['gflops']:.1f} GFLOP/s")
        self.note(f"  {'bench':<16} {'s/step':>8}  {'[min .. max] s':<20} {'ex/s':>8} "
                  f"{'tok/s':>9} {'GFLOP/s':>8} {'mfu':>6} {'first use':>10} {'peak':>10}")
        fwd = forward_flops(cfg, args.batch, args.seq)
        for bench in [b for b in MODEL_BENCHES if b in args.only]:
            call = self.step_fn(bench, model, batch, dtype)
            scope = reset_peak(self.device)
            t = time_calls(self.device, args.warmup, args.repeats, call)
            flop = fwd if bench == "forward" else 3 * fwd
            gflops = flop / t["median"] / 1e9
            rec = self.record(
                bench, dtype, t, model=args.model, batch=args.batch, seq=args.seq,
                examples_per_s=args.batch / t["median"],
                tokens_per_s=args.batch * args.seq / t["median"], gflops=gflops,
                mfu=gflops / ceiling["gflops"], peak_bytes=peak_bytes(self.device, scope),
                peak_scope=scope, mfu_ceiling=ceiling, attention=args.attn)
            self.emit(rec, f"  {bench:<16} {rec['seconds']:>8.4f}  {spread(rec):<20} "
                           f"{rec['examples_per_s']:>8.1f} {rec['tokens_per_s']:>9.0f} "
                           f"{gflops:>8.1f} {rec['mfu'] * 100:>5.0f}% "
                           f"{rec['first_use_seconds']:>10.3f} "
                           f"{rec['peak_bytes'] / 2**20:>6.1f} MiB")

    def step_fn(self, bench: str, model: nn.Module, batch, dtype: str):
        ids, types, mask, labels = batch
        amp = torch.autocast(self.device, dtype=torch.bfloat16, enabled=dtype == "bf16")
        loss_fn = nn.CrossEntropyLoss()
        if bench == "forward":
            def forward():
                model.eval()
                with torch.no_grad(), amp:
                    model(ids, types, mask)
            return forward
        if bench == "forward_backward":
            def forward_backward():
                model.train()
                model.zero_grad(set_to_none=True)
                with amp:
                    loss = loss_fn(model(ids, types, mask).float(), labels)
                loss.backward()
            return forward_backward
        optimizer = make_optimizer(model)

        def train_step():
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with amp:
                loss = loss_fn(model(ids, types, mask).float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
        return train_step


def spread(rec: dict) -> str:
    lo, hi = rec["spread"]
    return f"[{lo:.4f} .. {hi:.4f}]"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is false")
    if args.device == "mps" and not torch.backends.mps.is_available():
        sys.exit("error: --device mps but torch.backends.mps.is_available() is false")
    session = Session(args)
    session.note(f"pytorch reference: torch {torch.__version__} on {args.device}, "
                 f"{session.threads} threads\ntiming: first call timed alone (first use), "
                 f"{args.warmup} warm-up call(s), then median [min .. max] of {args.repeats} "
                 f"timed calls; device synchronized before every clock read")
    if "matmul" in args.only:
        session.matmuls()
    if any(b in args.only for b in MODEL_BENCHES):
        session.model()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
