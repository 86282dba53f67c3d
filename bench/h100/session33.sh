#!/usr/bin/env bash
# GPU session 33: three more held-out splits (split seeds 4, 5, 6 of heldout.py: 60 issues per
# project never used for training or selection) for the shipped MPNet configuration measured on
# seeds 1-3 in session 30: configs/nlbse-mpnet.toml (max_len 512, lr 2e-5, bf16, weights-only
# checkpoints), three members (`--ensemble 3`, seeds 42-44), the three splits side by side, with
# this commit's nlbse (CUDA attention with MPNet's position bias). The weights are in /root/mp
# from four earlier calls of this machine (see session25.sh). Results -> $OUT/results.tgz
set -u
W=/root/s33; . bench/h100/mpnet_setup.sh
H=$W/heldout; mkdir -p $H
python3 bench/h100/heldout.py "$W/issues_train.csv" "$H" 4 5 6
wc -l $H/*.csv > $R/heldout_files.txt
rm -rf /dev/shm/nl_*
log start
for split in 4 5 6; do
  ( t0=$SECONDS
    timeout $(( ${BUDGET:-540} - SECONDS )) $W/bin/nlbse --device cuda --config configs/nlbse-mpnet.toml --ensemble 3 \
      --test $H/test_$split.csv --set model.path=$M --set data.train=\"$H/train_$split.csv\" \
      --set data.split_seed=$split --set train.seed=42 --set train.precision=bf16 \
      --out /dev/shm/nl_$split --json > $R/heldout_split$split.txt 2> $R/heldout_split$split.log
    echo "rc $? wall $((SECONDS - t0)) s" >> $R/heldout_split$split.txt
    cp /dev/shm/nl_$split/nlbse.json $R/heldout_split$split.json 2>/dev/null ) &
done
while [ -n "$(jobs -r)" ]; do sleep 30; log "running $(df -h /dev/shm | tail -1 | awk '{print $3}')"; done
log done
grep -h "macro-F1\|^rc" $R/heldout_split*.txt
