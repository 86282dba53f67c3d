#!/usr/bin/env bash
# GPU session 36: the warm-up and dropout of configs/default.toml, chosen on validation data with
# `sweep` (the flagship task, MiniLM with its real f32 weights, CUDA f32): warmup_ratio 0, 0.1,
# 0.2 x model.hidden_dropout 0, 0.1, 0.2, seeds 1, 2, 3 (27 runs; data.valid is a fixed file, so
# the seeds change the data order, dropout and head init, not the split). Three sweeps run side by
# side, one per seed, into one directory; a last sweep over all three seeds reuses their finished
# trials and writes the ranking. The weights come as two xz pieces: /root/mini/part0 from an
# earlier call of this machine, .carry/mini32/part1 with this one. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
W=/root/s36; R=$W/results; mkdir -p $R $W/bin
xz -dc .carry/bin6/sweep.xz > $W/bin/sweep; chmod +x $W/bin/sweep
M=$W/minilm; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/
cat /root/mini/part0 .carry/mini32/part1 | xz -dc > $M/model.safetensors
sha256sum $M/model.safetensors > $R/weights_sha256.txt
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
GRID="--grid train.warmup_ratio=0.0,0.1,0.2 --grid model.hidden_dropout=0.0,0.1,0.2"
COMMON="--config configs/default.toml --set model.path=$M --set train.keep_last=0 --device cuda --out $W/sweep --quiet"
t0=$SECONDS
for seed in 1 2 3; do
  $W/bin/sweep $COMMON $GRID --seeds $seed > $R/seed$seed.txt 2> $R/seed$seed.log &
done
wait
echo "three sweeps side by side: $((SECONDS - t0)) s" > $R/wall.txt
$W/bin/sweep $COMMON $GRID --seeds 1,2,3 > $R/sweep.txt 2> $R/sweep.log
cp $W/sweep/sweep.json $R/
cat $R/wall.txt $R/sweep.txt
tar czf $OUT/results.tgz -C $W results
