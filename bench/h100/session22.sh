#!/usr/bin/env bash
# GPU session 22: the bert-base config from random weights (pretrained bert-base is not reachable
# offline), its first 10 steps with dropout on and a loss read every step, for comparison with a
# CPU run of the same command (the CUDA kernels draw the CPU's dropout masks and the random init
# is seeded on the host). Carried: .carry/bin/train.xz, .carry/bert-base/. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
BB=/tmp/bert-base; mkdir -p $BB; cp .carry/bert-base/* $BB/; : > $BB/model.safetensors
S="--set"
$B/train --config configs/bert-base.toml $S model.path=$BB $S model.init=random $S train.max_steps=10 $S train.log_every=1 $S eval.every_epoch=false $S train.keep_last=0 --device cuda --out /tmp/bbcmp --quiet > $R/bb_cmp.txt 2>&1
cp /tmp/bbcmp/metrics.jsonl $R/bb_cmp_cuda.jsonl
tar czf $OUT/results.tgz -C /tmp results
