#!/usr/bin/env bash
# GPU session 19: (1) the integration tests' GPU part for this commit; (2) NLBSE ensembles: for
# validation splits 1-5 (data.split_seed), five classifiers per project (train.seed 42-46) and
# the mean of their probabilities, the five splits as five parallel processes on the one card.
# Carried: .carry/bin/{tests,nlbse}.xz, .carry/minilm-f16/, .carry/nlbse/issues_train.csv.xz.
# Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/minilm-f16; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; xz -dc .carry/minilm-f16/model.safetensors.xz > $M/model.safetensors
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
nvidia-smi -L > $R/gpu.txt
log "gpu tests"
$B/tests gpu --nocapture --test-threads 1 > $R/gpu_tests.txt 2>&1
log "gpu tests rc $?"
for split in ${SPLITS:-1 2 3 4 5}; do
  ( t0=$SECONDS
    timeout $(( ${BUDGET:-540} - SECONDS )) $B/nlbse --device cuda --ensemble ${MEMBERS:-5} --set model.path=$M \
      --set data.split_seed=$split --set train.seed=42 --out /tmp/nl_$split --json \
      > $R/nlbse_split$split.txt 2> $R/nlbse_split$split.log
    echo "rc $? wall $((SECONDS - t0)) s" >> $R/nlbse_split$split.txt
    cp /tmp/nl_$split/nlbse.json $R/nlbse_split$split.json 2>/dev/null ) &
done
while [ -n "$(jobs -r)" ]; do sleep 20; grep -h "member" $R/nlbse_split*.log > $R/members_so_far.txt; log "running"; done
log done
