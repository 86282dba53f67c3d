#!/usr/bin/env bash
# GPU session 70: the commits since session 63's GPU tests (text pairs, `data.augment`,
# `explain --method occlusion`) on CUDA. Binaries built here with --features cuda at HEAD
# (.carry/s70/*.xz: the `tests` binary of tests/tests.rs, train, predict, explain,
# examples/explain_check) and .carry/s70/hub.tar.xz (MiniLM's config and tokenizer, no weights:
# the checkpoints below start from random weights), .carry/nlbse/issues_train.csv.xz.
# 1. The integration tests' GPU part.
# 2. `explain` with both methods on CUDA against the CPU: the tiny config trained on the CPU (its
#    27 training texts) and a MiniLM-shaped checkpoint trained two steps on CUDA (20 flagship
#    test texts); then explain_check on CUDA over the 248 test texts with occlusion (time per
#    explanation; its deletion figures mean nothing for random weights).
# 3. Text pairs on CUDA: configs/nlbse.toml (title and body as a pair, MiniLM-shaped, random
#    weights, four steps on CUDA) on facebook/react; predict and explain (both methods) on CUDA
#    against the CPU over its 60 validation rows.
# Results -> $OUT/session70.txt
set -u
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
B=/tmp/bin; mkdir -p $B
for b in tests train predict explain explain_check; do xz -dc .carry/s70/$b.xz > $B/$b; chmod +x $B/$b; done
mkdir -p /tmp/hf && tar -xJf .carry/s70/hub.tar.xz -C /tmp/hf
export HF_HUB_CACHE=/tmp/hf/hub HF_HUB_OFFLINE=1
mkdir -p data/nlbse && xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
compare() {  # $1 $2: two `explain --json` outputs
  python3 - "$1" "$2" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
score = max(abs(x["score"] - y["score"]) for p, q in zip(a, b) for x, y in zip(p["tokens"], q["tokens"]))
big = max(abs(x["score"]) for p in a for x in p["tokens"])
prob = max(abs(p["prob"] - q["prob"]) for p, q in zip(a, b))
same = sum(p["explained"] == q["explained"] for p, q in zip(a, b))
print(f"  {len(a)} texts, same label {same}; largest token-score gap {score:.2e} (largest score {big:.3f}); largest probability gap {prob:.2e}")
PY
}
compare_predictions() {  # $1 $2: two `predict --json` outputs
  python3 - "$1" "$2" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
gap = max(abs(p["probs"][k] - q["probs"][k]) for p, q in zip(a, b) for k in p["probs"])
same = sum(p["label"] == q["label"] for p, q in zip(a, b))
print(f"  {len(a)} rows, same label {same}; largest probability gap {gap:.2e}")
PY
}
explain_both() {  # $1 checkpoint, $2 name, then explain's input arguments
  local ckpt=$1 name=$2; shift 2
  for m in ig occlusion; do
    for d in cpu cuda; do
      $B/explain --checkpoint $ckpt --device $d --json --method $m --steps 32 --tolerance 0 "$@" > /tmp/${name}_${m}_$d.jsonl || echo "explain $name $m $d failed"
    done
    echo "$name, $m, cuda against cpu:"; compare /tmp/${name}_${m}_cpu.jsonl /tmp/${name}_${m}_cuda.jsonl
  done
}
{
  nvidia-smi -L
  echo "== 1. GPU tests"
  $B/tests gpu --test-threads 1 2>&1 | grep -E "^test |test result"
  echo "== 2. explain"
  $B/train --config configs/tiny.toml --device cpu --out /tmp/tiny --quiet --overwrite > /dev/null || echo "train tiny failed"
  python3 -c "import json; [print(json.dumps({'text': json.loads(l)['text']})) for l in open('tests/fixtures/tiny/train.jsonl')]" > /tmp/tiny.jsonl
  explain_both /tmp/tiny tiny --data /tmp/tiny.jsonl
  $B/train --config configs/default.toml --device cuda --out /tmp/minilm --quiet --overwrite \
    --set model.init=random --set train.max_steps=2 > /dev/null || echo "train minilm-shaped failed"
  head -20 data/triage/test.jsonl > /tmp/test20.jsonl
  explain_both /tmp/minilm minilm --data /tmp/test20.jsonl
  $B/explain_check --checkpoint /tmp/minilm --device cuda --method occlusion
  echo "== 3. text pairs"
  $B/train --config configs/nlbse.toml --device cuda --out /tmp/pairs --quiet --overwrite \
    --set model.init=random --set train.max_steps=4 --set eval.every_epoch=false > /dev/null || echo "train pairs failed"
  python3 - <<'PY'
import csv, random, sys
csv.field_size_limit(sys.maxsize)
rows = [r for r in csv.DictReader(open("data/nlbse/issues_train.csv", newline="")) if r["repo"] == "facebook/react"]
random.Random(0).shuffle(rows)
with open("/tmp/react60.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0].keys())); w.writeheader(); w.writerows(rows[:60])
PY
  for d in cpu cuda; do
    $B/predict --checkpoint /tmp/pairs --device $d --data /tmp/react60.csv > /tmp/pairs_pred_$d.jsonl || echo "predict pairs $d failed"
  done
  echo "pairs, predict, cuda against cpu:"; compare_predictions /tmp/pairs_pred_cpu.jsonl /tmp/pairs_pred_cuda.jsonl
  python3 - <<'PY'
import csv, sys
csv.field_size_limit(sys.maxsize)
rows = list(csv.DictReader(open("/tmp/react60.csv", newline="")))[:10]
with open("/tmp/react10.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0].keys())); w.writeheader(); w.writerows(rows)
PY
  explain_both /tmp/pairs pairs --data /tmp/react10.csv
} 2>&1 | tee $OUT/session70.txt
