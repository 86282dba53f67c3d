#!/usr/bin/env bash
# GPU session 17: the final commit's CUDA training in f16 (loss scaling) on the default config,
# and a checkpoint trained on the GPU (f32) scored by `evaluate` on the CPU and on the GPU.
# Carried: .carry/bin/{train,evaluate}.xz and the f16 MiniLM weights. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/minilm-f16; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; xz -dc .carry/minilm-f16/model.safetensors.xz > $M/model.safetensors
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
S="--set"
log f16; t0=$SECONDS; $B/train --config configs/default.toml $S model.path=$M $S train.precision=f16 --device cuda --out /tmp/f16 --quiet > $R/default_f16.txt 2>&1; echo "wall $((SECONDS - t0)) s" >> $R/default_f16.txt
log f32; t0=$SECONDS; $B/train --config configs/default.toml $S model.path=$M --device cuda --out /tmp/f32 --quiet > $R/default_f32.txt 2>&1; echo "wall $((SECONDS - t0)) s" >> $R/default_f32.txt
for d in cpu cuda; do log "evaluate $d"; $B/evaluate --checkpoint /tmp/f32 --data data/triage/test.jsonl --device $d --json > $R/evaluate_$d.json 2> $R/evaluate_$d.err; done
log done
