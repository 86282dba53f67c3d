#!/usr/bin/env bash
# GPU session 28: session 26 with five-member MPNet ensembles (`nlbse --ensemble 5`, seeds 42-46)
# on the same held-out splits, and weights-only checkpoints (`train.save_optimizer = false`, now
# in configs/nlbse-mpnet.toml: a checkpoint of 436 MB instead of 1.31 GB, so 5 x 5 x 3 fit in
# /dev/shm). SPLITS picks the splits run side by side in one call (default "1 2 3"). The weights
# are in /root/mp from earlier calls of this machine (see session25.sh). Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/mpnet; mkdir -p $M; cp .carry/mpnet/config.json .carry/mpnet/tokenizer.json $M/
[ -f $M/model.safetensors ] || cat /root/mp/part0? | xz -dc > $M/model.safetensors
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
rm -rf /dev/shm/nl_*   # a previous run's directories (up to 2.6 GB per member and project)
H=/tmp/heldout; mkdir -p $H
python3 bench/h100/heldout.py data/nlbse/issues_train.csv $H
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
wc -l $H/*.csv > $R/heldout_files.txt
for split in ${SPLITS:-1 2 3}; do
  ( t0=$SECONDS
    timeout $(( ${BUDGET:-570} - SECONDS )) $B/nlbse --device cuda --config configs/nlbse-mpnet.toml --ensemble ${ENSEMBLE:-5} --test $H/test_$split.csv \
      --set model.path=$M --set data.train=\"$H/train_$split.csv\" --set data.split_seed=$split --set train.seed=42 \
      --set train.lr=2e-5 --set train.precision=bf16 \
      --out /dev/shm/nl_$split --json > $R/heldout_split$split.txt 2> $R/heldout_split$split.log
    echo "rc $? wall $((SECONDS - t0)) s" >> $R/heldout_split$split.txt
    cp /dev/shm/nl_$split/nlbse.json $R/heldout_split$split.json 2>/dev/null ) &
done
while [ -n "$(jobs -r)" ]; do sleep 30; log "running"; done
log done
