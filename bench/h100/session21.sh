#!/usr/bin/env bash
# GPU session 21: training on CUDA after the Candle backward patch (vendor/README.md), as session 13. The default config end to end in f32
# and bf16 (validation and test macro-F1, wall time), its first 30 steps with dropout on (the CUDA
# kernels draw the CPU's masks: the losses are compared with a CPU run of the same command), and
# the bert-base shape for one epoch from random weights. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/minilm-f16; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; xz -dc .carry/minilm-f16/model.safetensors.xz > $M/model.safetensors
BB=/tmp/bert-base; mkdir -p $BB; cp .carry/bert-base/* $BB/; : > $BB/model.safetensors
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
S="--set"
log cmp; $B/train --config configs/default.toml $S model.path=$M $S train.max_steps=30 $S train.log_every=1 $S eval.every_epoch=false $S train.keep_last=0 --device cuda --out /tmp/cmp --quiet > $R/cmp.txt 2>&1; cp /tmp/cmp/metrics.jsonl $R/cmp_cuda.jsonl
run() { name=$1; shift; log "$name $*"; t0=$SECONDS; $B/train --config configs/default.toml $S model.path=$M --device cuda --out /tmp/$name --quiet "$@" > $R/$name.txt 2>&1; echo "wall $((SECONDS - t0)) s" >> $R/$name.txt; cp /tmp/$name/metrics.jsonl $R/$name.metrics.jsonl; rm -rf /tmp/$name; }
run default_f32
run default_bf16 $S train.precision=bf16
log bert-base; t0=$SECONDS; $B/train --config configs/bert-base.toml $S model.path=$BB $S model.init=random $S train.epochs=1 --device cuda --out /tmp/bb --quiet > $R/bert_base_e2e.txt 2>&1; echo "wall $((SECONDS - t0)) s" >> $R/bert_base_e2e.txt
log done
