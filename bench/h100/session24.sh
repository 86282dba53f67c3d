#!/usr/bin/env bash
# GPU session 24: does refitting on every training row help on held-out issues? Per split
# s = 1..3, 20 issues per (project, label) of issues_train.csv are held out as a test file (a
# Python-seeded stratified choice, 60 per project), the other 240 per project are the training
# file; `nlbse --ensemble 5 --refit --test` then reports the test rows scored by the five members
# trained on 192 rows (48 held out for epoch selection) and by the same members retrained on all
# 240 rows. Splits as three parallel processes. Carried: .carry/bin/nlbse.xz, .carry/minilm-f16/,
# .carry/nlbse/issues_train.csv.xz. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/minilm-f16; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; xz -dc .carry/minilm-f16/model.safetensors.xz > $M/model.safetensors
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
H=/tmp/heldout; mkdir -p $H
python3 bench/h100/heldout.py data/nlbse/issues_train.csv $H
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
wc -l $H/*.csv > $R/heldout_files.txt
for split in 1 2 3; do
  ( t0=$SECONDS
    timeout $(( ${BUDGET:-570} - SECONDS )) $B/nlbse --device cuda --ensemble 5 --refit --test $H/test_$split.csv \
      --set model.path=$M --set data.train=\"$H/train_$split.csv\" --set data.split_seed=$split --set train.seed=42 \
      --out /tmp/nl_$split --json > $R/heldout_split$split.txt 2> $R/heldout_split$split.log
    echo "rc $? wall $((SECONDS - t0)) s" >> $R/heldout_split$split.txt
    cp /tmp/nl_$split/nlbse.json $R/heldout_split$split.json 2>/dev/null ) &
done
while [ -n "$(jobs -r)" ]; do sleep 30; log "running"; done
log done
