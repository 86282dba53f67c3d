#!/usr/bin/env bash
# GPU session 65: `explain` on CUDA. Binaries built here with --features cuda (.carry/s65/*.xz:
# train, explain, examples/explain_check) and .carry/s65/hub.tar.xz (MiniLM's config and
# tokenizer).
# 1. The tiny config trained on the CPU, explained on CUDA and on the CPU (this machine's): the
#    largest gaps of the token scores and probabilities over its 27 training texts.
# 2. A MiniLM-shaped checkpoint (configs/default.toml with random weights, two steps): scores on
#    CUDA against the CPU for 20 flagship test texts (32 steps, no doubling), then explain_check
#    on CUDA over the 248 test texts (time per explanation; its deletion figures mean nothing for
#    random weights).
# Results -> $OUT/explain_cuda.txt
set -u
B=/tmp/bin; mkdir -p $B
for b in train explain explain_check; do xz -dc .carry/s65/$b.xz > $B/$b; chmod +x $B/$b; done
mkdir -p /tmp/hf && tar -xJf .carry/s65/hub.tar.xz -C /tmp/hf
export HF_HUB_CACHE=/tmp/hf/hub HF_HUB_OFFLINE=1
nvidia-smi -L
compare() {  # $1 $2: two --json outputs
  python3 - "$1" "$2" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
score = max(abs(x["score"] - y["score"]) for p, q in zip(a, b) for x, y in zip(p["tokens"], q["tokens"]))
big = max(abs(x["score"]) for p in a for x in p["tokens"])
prob = max(abs(p["prob"] - q["prob"]) for p, q in zip(a, b))
same = sum(p["explained"] == q["explained"] for p, q in zip(a, b))
print(f"{len(a)} texts, same label {same}; largest token-score gap {score:.2e} (largest score {big:.3f}); largest probability gap {prob:.2e}")
PY
}
{
  $B/train --config configs/tiny.toml --device cpu --out /tmp/tiny --quiet --overwrite > /dev/null || echo "train tiny failed"
  python3 -c "import json; [print(json.dumps({'text': json.loads(l)['text']})) for l in open('tests/fixtures/tiny/train.jsonl')]" > /tmp/tiny.jsonl
  for d in cpu cuda; do
    $B/explain --checkpoint /tmp/tiny --device $d --json --steps 32 --tolerance 0 < /tmp/tiny.jsonl > /tmp/tiny_$d.jsonl || echo "explain $d failed"
  done
  echo "tiny, cuda against cpu:"; compare /tmp/tiny_cpu.jsonl /tmp/tiny_cuda.jsonl
  $B/train --config configs/default.toml --device cuda --out /tmp/minilm --quiet --overwrite \
    --set model.init=random --set train.max_steps=2 > /dev/null || echo "train minilm-shaped failed"
  head -20 data/triage/test.jsonl > /tmp/test20.jsonl
  for d in cpu cuda; do
    $B/explain --checkpoint /tmp/minilm --device $d --json --steps 32 --tolerance 0 --data /tmp/test20.jsonl > /tmp/m_$d.jsonl || echo "explain $d failed"
  done
  echo "MiniLM-shaped, cuda against cpu:"; compare /tmp/m_cpu.jsonl /tmp/m_cuda.jsonl
  $B/explain_check --checkpoint /tmp/minilm --device cuda
  $B/explain_check --checkpoint /tmp/minilm --device cuda --tolerance 0
} 2>&1 | tee $OUT/explain_cuda.txt
