#!/usr/bin/env bash
# GPU session 1: CUDA correctness, precision, tuning and NLBSE on the H100. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/minilm-f16; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; xz -dc .carry/minilm-f16/model.safetensors.xz > $M/model.safetensors
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
log tiny; $B/train --config configs/tiny.toml --set model.path=$M --device cuda --out /tmp/tiny --quiet > $R/tiny.txt 2>&1
tar czf $R/tiny_best.tgz --exclude=optimizer.safetensors -C /tmp/tiny best
log cmp; $B/train --config configs/default.toml --set model.path=$M --set model.hidden_dropout=0 --set model.attention_dropout=0 --set model.classifier_dropout=0 --set train.max_steps=30 --set train.log_every=1 --set eval.every_epoch=false --set train.keep_last=0 --device cuda --out /tmp/cmp --quiet > $R/cmp.txt 2>&1; cp /tmp/cmp/metrics.jsonl $R/cmp_cuda.jsonl
run() { name=$1; shift; log "$name $*"; t0=$SECONDS; $B/train --config configs/default.toml --set model.path=$M --device cuda --out /tmp/$name --quiet "$@" > $R/$name.txt 2>&1; echo "wall $((SECONDS - t0)) s" >> $R/$name.txt; cp /tmp/$name/metrics.jsonl $R/$name.metrics.jsonl; rm -rf /tmp/$name; }
S="--set"
run default_f32
run default_bf16 $S train.precision=bf16
nl() { name=$1; shift; log "nlbse $name $*"; t0=$SECONDS; $B/nlbse --device cuda --set model.path=$M --out /tmp/nl_$name --json "$@" > $R/nlbse_$name.txt 2>$R/nlbse_$name.log; echo "wall $((SECONDS - t0)) s" >> $R/nlbse_$name.txt; cp /tmp/nl_$name/nlbse.json $R/nlbse_$name.json; rm -rf /tmp/nl_$name; }
nl base
run lr5e-5 $S train.lr=5e-5 $S train.epochs=5 $S eval.patience=0
run lr1e-4 $S train.lr=1e-4 $S train.epochs=5 $S eval.patience=0
run lr2e-4 $S train.lr=2e-4 $S train.epochs=5 $S eval.patience=0
run lr1e-4_e3 $S train.lr=1e-4 $S train.epochs=3 $S eval.patience=0
run lr1e-4_nohead $S train.lr=1e-4 $S train.epochs=5 $S eval.patience=0 $S train.head_lr=1e-4
run lr1e-4_len256 $S train.lr=1e-4 $S train.epochs=5 $S eval.patience=0 $S data.max_len=256
run lr1e-4_b32 $S train.lr=1e-4 $S train.epochs=5 $S eval.patience=0 $S train.batch_size=32
nl lr5e-5 $S train.lr=5e-5
nl lr2e-4 $S train.lr=2e-4
nl e10 $S train.epochs=10
nl len512 $S data.max_len=512
log done
