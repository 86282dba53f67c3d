#!/usr/bin/env bash
# GPU session 18: after AdamW's CUDA kernel took loss scaling's skip flag (f16 steps no longer
# fall back to tensor-op AdamW): the GPU tests, then the default config in f16 and f32.
# Carried: .carry/bin/{tests,train}.xz and the f16 MiniLM weights. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/minilm-f16; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; xz -dc .carry/minilm-f16/model.safetensors.xz > $M/model.safetensors
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
S="--set"
log tests; $B/tests gpu --nocapture --test-threads 1 > $R/tests.txt 2>&1; echo "exit $?" >> $R/tests.txt
# f16 twice: the first run also pays the driver's one-time compilation of Candle's f16 kernels.
i=0; for p in f16 f32 f16; do i=$((i + 1)); log "train $i $p"; t0=$SECONDS; $B/train --config configs/default.toml $S model.path=$M $S train.precision=$p --device cuda --out /tmp/$p --quiet > $R/default_${i}_$p.txt 2>&1; echo "wall $((SECONDS - t0)) s" >> $R/default_${i}_$p.txt; rm -rf /tmp/$p; done
log done
