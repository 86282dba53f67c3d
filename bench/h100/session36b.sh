#!/usr/bin/env bash
# GPU session 36, second call: the warm-up and dropout of configs/nlbse.toml (MiniLM, real f32
# weights, CUDA f32) chosen with `sweep`: warmup_ratio 0, 0.1, 0.2 x model.hidden_dropout 0, 0.1,
# 0.2, seeds 1 and 2 (each seed its own validation split: data.split_seed follows train.seed),
# one sweep per project (`data.filter.equals`), the five side by side. The weights and binary
# are those of session36.sh, still on the machine. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
W=/root/s36; R=$W/results_nlbse; mkdir -p $R
M=$W/minilm
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
GRID="--grid train.warmup_ratio=0.0,0.1,0.2 --grid model.hidden_dropout=0.0,0.1,0.2"
t0=$SECONDS
for p in facebook/react tensorflow/tensorflow microsoft/vscode bitcoin/bitcoin opencv/opencv; do
  s=${p//\//__}
  $W/bin/sweep --config configs/nlbse.toml --set model.path=$M --set train.keep_last=0 \
    --set "data.filter.equals=\"$p\"" --device cuda --out $W/nlbse/$s --quiet --json $GRID \
    --seeds 1,2 > $R/$s.json 2> $R/$s.log &
done
wait
echo "five sweeps side by side: $((SECONDS - t0)) s" > $R/wall.txt
cat $R/wall.txt; tail -n 2 $R/*.log
tar czf $OUT/results.tgz -C $W results_nlbse
