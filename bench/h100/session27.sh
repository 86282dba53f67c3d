#!/usr/bin/env bash
# GPU session 27: the MPNet path on CUDA against the CPU. `train` on configs/nlbse-mpnet.toml
# (all-mpnet-base-v2, f32, dropout on, facebook/react's 240 training rows), 10 optimizer steps
# with a loss read at every step, once with --device cuda and once with --device cpu (this
# machine's 16 cores); the two metrics.jsonl files come back. Weights in /root/mp (session25.sh).
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
xz -dc .carry/bin2/train.xz > $B/train; chmod +x $B/train
M=/tmp/mpnet; mkdir -p $M; cp .carry/mpnet/config.json .carry/mpnet/tokenizer.json $M/
[ -f $M/model.safetensors ] || cat /root/mp/part0? | xz -dc > $M/model.safetensors
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
for dev in cuda cpu; do
  t0=$SECONDS
  $B/train --config configs/nlbse-mpnet.toml --set model.path=$M --set train.max_steps=10 \
    --set train.log_every=1 --set eval.every_epoch=false --device $dev --out /tmp/cmp_$dev > $R/cmp_$dev.txt 2>&1
  echo "rc $? wall $((SECONDS - t0)) s" >> $R/cmp_$dev.txt
  cp /tmp/cmp_$dev/metrics.jsonl $R/cmp_$dev.jsonl
done
tar czf $OUT/results.tgz -C /tmp results
