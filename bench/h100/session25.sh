#!/usr/bin/env bash
# GPU session 25: all-mpnet-base-v2 (MPNet, 110M parameters) on NLBSE'24. Learning-rate sweep on
# the validation split of configs/nlbse-mpnet.toml (split seed 42: 240 training / 60 validation
# issues per project), one classifier per project, bf16; the three rates as three parallel
# processes. The weights came in four earlier calls of this machine (f16 safetensors, xz, split
# into .carry/mp/part00..03 and copied to /root/mp: a call carries at most 64 MiB), with
# .carry/bin/nlbse.xz, .carry/mpnet/{config,tokenizer}.json and .carry/nlbse/issues_train.csv.xz
# carried here. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/mpnet; mkdir -p $M; cp .carry/mpnet/config.json .carry/mpnet/tokenizer.json $M/
[ -f $M/model.safetensors ] || cat /root/mp/part0? | xz -dc > $M/model.safetensors
sha256sum $M/model.safetensors > $R/weights_sha256.txt
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
log start
for lr in ${LRS:-2e-5 5e-5 1e-4}; do
  ( t0=$SECONDS
    timeout $(( ${BUDGET:-560} - SECONDS )) $B/nlbse --device cuda --config configs/nlbse-mpnet.toml \
      --set model.path=$M --set train.lr=$lr --set train.precision=bf16 \
      --out /tmp/nl_$lr --json > $R/sweep_$lr.txt 2> $R/sweep_$lr.log
    echo "rc $? wall $((SECONDS - t0)) s" >> $R/sweep_$lr.txt
    cp /tmp/nl_$lr/nlbse.json $R/sweep_$lr.json 2>/dev/null ) &
done
while [ -n "$(jobs -r)" ]; do sleep 20; log "running"; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader >> $R/gpu.txt; done
log done
