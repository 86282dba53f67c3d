#!/usr/bin/env bash
# GPU session 30: is max_len 512 better than 256 for MPNet on NLBSE? Session 26's held-out splits
# and config (lr 2e-5, bf16, weights-only checkpoints), one classifier per project
# (ENSEMBLE, default 1), with --set data.max_len=$MAX_LEN (default 512); the choice is made on the
# validation rows (48 per project), the test rows are reported beside. Splits side by side. The
# weights are in /root/mp from earlier calls of this machine (see session25.sh).
# Results -> $OUT/results.tgz
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
    timeout $(( ${BUDGET:-570} - SECONDS )) $B/nlbse --device cuda --config configs/nlbse-mpnet.toml --ensemble ${ENSEMBLE:-1} --test $H/test_$split.csv \
      --set model.path=$M --set data.train=\"$H/train_$split.csv\" --set data.split_seed=$split --set train.seed=42 \
      --set train.lr=2e-5 --set train.precision=bf16 --set data.max_len=${MAX_LEN:-512} \
      --out /dev/shm/nl_$split --json > $R/heldout_split$split.txt 2> $R/heldout_split$split.log
    echo "rc $? wall $((SECONDS - t0)) s" >> $R/heldout_split$split.txt
    cp /dev/shm/nl_$split/nlbse.json $R/heldout_split$split.json 2>/dev/null ) &
done
while [ -n "$(jobs -r)" ]; do sleep 30; log "running"; done
log done
