#!/usr/bin/env bash
# GPU session 2: doctor, auto device, f16, checkpoint from session 1, bert-base end to end
# (random init: no weights offline), wick bench vs PyTorch. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
# MiniLM's shape and tokenizer without its weights (random init); bert-base likewise (same vocabulary).
M=/tmp/minilm-shape; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; : > $M/model.safetensors
BB=/tmp/bert-base; mkdir -p $BB; cp .carry/bert-base/* $BB/; : > $BB/model.safetensors
log doctor; $B/doctor > $R/doctor.txt 2>&1; $B/doctor --json > $R/doctor.json 2>&1
log tiny-auto; $B/train --config configs/tiny.toml --set model.path=$M --device auto --out /tmp/tiny --quiet > $R/tiny_auto.txt 2>&1
log tiny-f16; $B/train --config configs/tiny.toml --set model.path=$M --set train.precision=f16 --set train.epochs=15 --device cuda --out /tmp/tinyf16 --quiet > $R/tiny_f16.txt 2>&1
mkdir -p /tmp/ck && tar xzf .carry/tiny_best.tgz -C /tmp/ck
log predict; $B/predict --device cuda --checkpoint /tmp/ck/best "please add a regression test" "the README is wrong" "ptal" > $R/tiny_pred_cuda.jsonl 2>&1
log bert-base; $B/train --config configs/bert-base.toml --set model.path=$BB --set model.init=random --set train.epochs=1 --device cuda --out /tmp/bb --quiet > $R/bert_base_e2e.txt 2>&1
log wick-bench; $B/bench --device cuda --model $M --random-init --model bert-base --batch 32 --seq 128 --dtype f32 --json > $R/wick_f32.jsonl 2> $R/wick_f32.err
$B/bench --device cuda --model $M --random-init --model bert-base --batch 32 --seq 128 --dtype bf16 --only forward,forward_backward,train_step --json > $R/wick_bf16.jsonl 2> $R/wick_bf16.err
log torch-bench; for d in f32 bf16; do python3 bench/pytorch_reference.py --device cuda --model $M --random-init --batch 32 --seq 128 --dtype $d --json > $R/torch_minilm_$d.jsonl 2> $R/torch_minilm_$d.err; python3 bench/pytorch_reference.py --device cuda --model bert-base --batch 32 --seq 128 --dtype $d --json > $R/torch_bertbase_$d.jsonl 2> $R/torch_bertbase_$d.err; done
log wick-bench-text; $B/bench --device cuda --model $M --random-init --model bert-base --batch 32 --seq 128 --dtype f32 --only train_step > $R/wick_text.txt 2>&1
log done
