#!/usr/bin/env bash
# GPU session 4 (after the fused CPU kernels and the 2-D hidden-state restructure of the model):
# CUDA training of the default config in f32 and bf16, the first 30 losses without dropout for the
# CPU comparison, and wick vs PyTorch on the same card. Results -> $OUT/results.tgz
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
log cmp; $B/train --config configs/default.toml $S model.path=$M $S model.hidden_dropout=0 $S model.attention_dropout=0 $S model.classifier_dropout=0 $S train.max_steps=30 $S train.log_every=1 $S eval.every_epoch=false $S train.keep_last=0 --device cuda --out /tmp/cmp --quiet > $R/cmp.txt 2>&1; cp /tmp/cmp/metrics.jsonl $R/cmp_cuda.jsonl
run() { name=$1; shift; log "$name $*"; t0=$SECONDS; $B/train --config configs/default.toml $S model.path=$M --device cuda --out /tmp/$name --quiet "$@" > $R/$name.txt 2>&1; echo "wall $((SECONDS - t0)) s" >> $R/$name.txt; cp /tmp/$name/metrics.jsonl $R/$name.metrics.jsonl; rm -rf /tmp/$name; }
run default_f32
run default_bf16 $S train.precision=bf16
log bert-base; $B/train --config configs/bert-base.toml $S model.path=$BB $S model.init=random $S train.epochs=1 --device cuda --out /tmp/bb --quiet > $R/bert_base_e2e.txt 2>&1
MS=/tmp/minilm-shape; mkdir -p $MS; cp $M/config.json $M/tokenizer.json $MS/; : > $MS/model.safetensors
log wick-bench; for d in f32 bf16; do $B/bench --device cuda --model $MS --random-init --model bert-base --batch 32 --seq 128 --dtype $d --only matmul,forward,forward_backward,train_step --sizes 4096,8192 --json > $R/wick_$d.jsonl 2> $R/wick_$d.err; done
log torch-bench; for d in f32 bf16; do python3 bench/pytorch_reference.py --device cuda --model $MS --random-init --batch 32 --seq 128 --dtype $d --only matmul,forward,forward_backward,train_step --sizes 4096,8192 --json > $R/torch_minilm_$d.jsonl 2> $R/torch_minilm_$d.err; python3 bench/pytorch_reference.py --device cuda --model bert-base --batch 32 --seq 128 --dtype $d --only forward,forward_backward,train_step --json > $R/torch_bertbase_$d.jsonl 2> $R/torch_bertbase_$d.err; done
log done
