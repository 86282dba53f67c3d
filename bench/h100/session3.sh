#!/usr/bin/env bash
# GPU session 3: precision accuracy on the default task (final config), NLBSE final config and
# variants. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/minilm-f16; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; xz -dc .carry/minilm-f16/model.safetensors.xz > $M/model.safetensors
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
S="--set"
run() { name=$1; shift; log "$name $*"; t0=$SECONDS; $B/train --config configs/default.toml --set model.path=$M --device cuda --out /tmp/$name --quiet "$@" > $R/$name.txt 2>&1; echo "wall $((SECONDS - t0)) s" >> $R/$name.txt; cp /tmp/$name/metrics.jsonl $R/$name.metrics.jsonl; rm -rf /tmp/$name; }
for seed in 42 7; do for p in f32 bf16 f16; do run default_${p}_s$seed $S train.precision=$p $S train.seed=$seed; done; done
nl() { name=$1; shift; log "nlbse $name $*"; t0=$SECONDS; $B/nlbse --device cuda --set model.path=$M --out /tmp/nl_$name --json "$@" > $R/nlbse_$name.txt 2>$R/nlbse_$name.log; echo "wall $((SECONDS - t0)) s" >> $R/nlbse_$name.txt; cp /tmp/nl_$name/nlbse.json $R/nlbse_$name.json; rm -rf /tmp/nl_$name; }
nl final
nl lr3e-4 $S train.lr=3e-4
nl e10 $S train.epochs=10
nl final_s7 $S train.seed=7
log done
