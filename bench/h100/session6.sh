#!/usr/bin/env bash
# GPU session 6: the NLBSE protocol over repeated random validation splits (train.seed seeds the
# stratified 20% split, the data order, dropout and head init): the shipped config and variants,
# one `nlbse` run per (variant, seed), until the call's time is nearly up. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
M=/tmp/minilm-f16; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/; xz -dc .carry/minilm-f16/model.safetensors.xz > $M/model.safetensors
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
S="--set"
nl() { name=$1; shift; [ $SECONDS -gt ${BUDGET:-520} ] && return; log "nlbse $name $*"; t0=$SECONDS; $B/nlbse --device cuda $S model.path=$M --out /tmp/nl_$name --json "$@" > $R/nlbse_$name.txt 2>$R/nlbse_$name.log; echo "wall $((SECONDS - t0)) s" >> $R/nlbse_$name.txt; cp /tmp/nl_$name/nlbse.json $R/nlbse_$name.json; rm -rf /tmp/nl_$name; }
# First call: RUNS unset (seeds 1-3 of both, as time allowed). Second call:
# RUNS="base:4 base:5 lr3e-4_e15:3 lr3e-4_e15:4".
for run in ${RUNS:-base:1 lr3e-4_e15:1 base:2 lr3e-4_e15:2 base:3 lr3e-4_e15:3}; do
  variant=${run%%:*}; seed=${run##*:}
  case $variant in
    base) nl base_s$seed $S train.seed=$seed ;;
    lr3e-4_e15) nl lr3e-4_e15_s$seed $S train.seed=$seed $S train.lr=3e-4 $S train.epochs=15 ;;
  esac
done
log done
