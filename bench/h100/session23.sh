#!/usr/bin/env bash
# GPU session 23: how much the 60 extra training rows are worth (evidence for refitting on all
# 300 rows of a project before scoring a test file): session 19's ensembles again, but with
# data.valid_fraction = 0.4 (180 training rows, 120 validation rows that contain session 19's 60:
# the stratified split takes the first rows of the same seeded shuffle). Splits 1-5 as five
# parallel processes, five members each. Carried: .carry/bin/nlbse.xz, .carry/minilm-f16/,
# .carry/nlbse/issues_train.csv.xz. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/minilm-f16; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; xz -dc .carry/minilm-f16/model.safetensors.xz > $M/model.safetensors
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
for split in 1 2 3 4 5; do
  ( t0=$SECONDS
    timeout $(( ${BUDGET:-560} - SECONDS )) $B/nlbse --device cuda --ensemble 5 --set model.path=$M \
      --set data.split_seed=$split --set train.seed=42 --set data.valid_fraction=0.4 --out /tmp/nl_$split --json \
      > $R/nlbse_vf04_split$split.txt 2> $R/nlbse_vf04_split$split.log
    echo "rc $? wall $((SECONDS - t0)) s" >> $R/nlbse_vf04_split$split.txt
    cp /tmp/nl_$split/nlbse.json $R/nlbse_vf04_split$split.json 2>/dev/null ) &
done
while [ -n "$(jobs -r)" ]; do sleep 30; log "running"; done
log done
