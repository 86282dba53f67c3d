#!/usr/bin/env bash
# GPU session 64: `serve` on CUDA. Binaries built here with --features cuda (.carry/s64/*.xz:
# train, predict, serve, examples/serve_load) and .carry/ad/hub.tar.xz (MiniLM's config and
# tokenizer, session61.sh's Hub cache).
# 1. The tiny config trained on the CPU, served on CUDA: the answers of `serve --device cuda`
#    for the tiny training texts against `predict --device cpu` (largest probability gap).
# 2. Requests/s and latency of a MiniLM-shaped checkpoint (configs/default.toml with random
#    weights, two steps: speed does not depend on the values) on the flagship test texts,
#    batching off (--max-batch 1) and on (64), 1, 4, 16 and 64 clients.
# Results -> $OUT/serve_cuda.txt, $OUT/serve_load.txt
set -u
B=/tmp/bin; mkdir -p $B
for b in train predict serve serve_load; do xz -dc .carry/s64/$b.xz > $B/$b; chmod +x $B/$b; done
mkdir -p /tmp/hf && tar -xJf .carry/ad/hub.tar.xz -C /tmp/hf
export HF_HUB_CACHE=/tmp/hf/hub HF_HUB_OFFLINE=1
nvidia-smi -L
{
  $B/train --config configs/tiny.toml --device cpu --out /tmp/tiny --quiet --overwrite > /dev/null || echo "train tiny failed"
  $B/serve --checkpoint /tmp/tiny --device cuda --port 0 --quiet > /tmp/serve.out 2> /tmp/serve.err &
  pid=$!
  for _ in $(seq 600); do grep -q listening /tmp/serve.out && break; sleep 0.2; done; echo "listening after $SECONDS s of the script"
  url=$(sed -n 's/listening on //p' /tmp/serve.out)
  head -1 /tmp/serve.err
  python3 - "$url" <<'PY'
import json, subprocess, sys, urllib.request
url = sys.argv[1]
rows = [json.loads(l) for l in open("tests/fixtures/tiny/train.jsonl")]
texts = [r["text"] for r in rows]
req = urllib.request.Request(url + "/predict", data=json.dumps(texts).encode(), method="POST")
served = json.loads(urllib.request.urlopen(req).read())
out = subprocess.run(["/tmp/bin/predict", "--checkpoint", "/tmp/tiny", "--device", "cpu", "--"] + texts,
                     capture_output=True, text=True, check=True).stdout
cpu = [json.loads(l) for l in out.splitlines()]
gap = max(abs(s["probs"][k] - c["probs"][k]) for s, c in zip(served, cpu) for k in c["probs"])
same = sum(s["label"] == c["label"] for s, c in zip(served, cpu))
info = json.loads(urllib.request.urlopen(url + "/info").read())
print(f"serve on {info['device']}: {len(served)} texts, same label as predict on the cpu for {same}, largest probability gap {gap:.2e}")
PY
  kill -TERM $pid; wait $pid; echo "serve exit $?"; tail -1 /tmp/serve.err
} 2>&1 | tee $OUT/serve_cuda.txt
{
  $B/train --config configs/default.toml --device cuda --out /tmp/minilm --quiet --overwrite \
    --set model.init=random --set train.max_steps=2 > /dev/null || echo "train minilm-shaped failed"
  $B/serve_load --checkpoint /tmp/minilm --device cuda --concurrency 1,4,16,64 --requests 512
} 2>&1 | tee $OUT/serve_load.txt
