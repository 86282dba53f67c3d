#!/usr/bin/env bash
# GPU session 39: the batch size and head learning rate of configs/nlbse.toml (MiniLM, real f32
# weights, CUDA f32, with session 36's warm-up 0 and dropout 0.2) chosen with `sweep`:
# batch_size 8, 16, 32 x head_lr 2e-4 (the encoder's rate), 1e-3, 5e-3, seeds 1 and 2 (each its
# own validation split), one sweep per project, the five side by side. The weights come as two
# xz pieces: /root/mini/part0 from an earlier call of this machine, .carry/mini32/part1 with this
# one. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
W=/root/s39; R=$W/results; mkdir -p $R $W/bin
xz -dc .carry/bin6/sweep.xz > $W/bin/sweep; chmod +x $W/bin/sweep
M=$W/minilm; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/
cat /root/mini/part0 .carry/mini32/part1 | xz -dc > $M/model.safetensors
sha256sum $M/model.safetensors > $R/weights_sha256.txt
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
GRID="--grid train.batch_size=8,16,32 --grid train.head_lr=2e-4,1e-3,5e-3"
t0=$SECONDS
for p in facebook/react tensorflow/tensorflow microsoft/vscode bitcoin/bitcoin opencv/opencv; do
  s=${p//\//__}
  $W/bin/sweep --config configs/nlbse.toml --set model.path=$M --set train.keep_last=0 \
    --set "data.filter.equals=\"$p\"" --device cuda --out $W/nlbse/$s --quiet --json $GRID \
    --seeds 1,2 > $R/$s.json 2> $R/$s.log &
done
wait
echo "five sweeps side by side: $((SECONDS - t0)) s" > $R/wall.txt
cat $R/wall.txt; tail -n 1 $R/*.log
tar czf $OUT/results.tgz -C $W results
