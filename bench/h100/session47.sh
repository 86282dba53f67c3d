#!/usr/bin/env bash
# GPU session 47, two calls of one machine. PHASE=tests (carries .carry/tests.xz, the cuda build
# of tests/tests.rs, and .carry/mini/part0): the GPU tests, among them the new
# accelerator_contrastive_objective_matches_the_cpu; keeps the first piece of MiniLM's real f32
# weights (xz, two pieces) in /root/mini. PHASE=sweep (carries .carry/bin/sweep.xz,
# .carry/mini/part1, .carry/minilm/{config,tokenizer}.json, .carry/nlbse): `sweep` of
# train.contrastive_weight 0 and 0.5 (temperature 0.3) on validation, CUDA f32:
# - the flagship (configs/default.toml), seeds 1, 2, 3 (data.valid is a fixed file: the seeds
#   change the data order, dropout and head), three sweeps side by side, then one over all three
#   that reuses their trials and ranks;
# - NLBSE with MiniLM (configs/nlbse.toml), one sweep per project, seeds 1, 2, 3 (each its own
#   validation split), the five side by side.
# Results -> $OUT/gpu_tests.txt, $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
W=/root/s47; R=$W/results; mkdir -p $R $W/bin /root/mini
if [ "${PHASE:-tests}" = tests ]; then
  xz -dc .carry/tests.xz > $W/bin/tests; chmod +x $W/bin/tests
  cp .carry/mini/part0 /root/mini/
  nvidia-smi -L
  $W/bin/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt
  exit
fi
xz -dc .carry/bin/sweep.xz > $W/bin/sweep; chmod +x $W/bin/sweep
M=$W/minilm; mkdir -p $M; cp .carry/minilm/config.json .carry/minilm/tokenizer.json $M/
cat /root/mini/part0 .carry/mini/part1 | xz -dc > $M/model.safetensors
sha256sum $M/model.safetensors > $R/weights_sha256.txt
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
GRID="--grid train.contrastive_weight=0.0,0.5"
COMMON="--config configs/default.toml --set model.path=$M --set train.keep_last=0 --device cuda --out $W/sweep --quiet"
t0=$SECONDS
for seed in 1 2 3; do
  $W/bin/sweep $COMMON $GRID --seeds $seed > $R/seed$seed.txt 2> $R/seed$seed.log &
done
wait
echo "flagship: three sweeps side by side: $((SECONDS - t0)) s" > $R/wall.txt
$W/bin/sweep $COMMON $GRID --seeds 1,2,3 > $R/sweep.txt 2> $R/sweep.log
cp $W/sweep/sweep.json $R/
t0=$SECONDS
for p in facebook/react tensorflow/tensorflow microsoft/vscode bitcoin/bitcoin opencv/opencv; do
  s=${p//\//__}
  $W/bin/sweep --config configs/nlbse.toml --set model.path=$M --set train.keep_last=0 \
    --set "data.filter.equals=\"$p\"" --device cuda --out $W/nlbse/$s --quiet --json $GRID \
    --seeds 1,2,3 > $R/nlbse_$s.json 2> $R/nlbse_$s.log &
done
wait
echo "nlbse: five sweeps side by side: $((SECONDS - t0)) s" >> $R/wall.txt
cat $R/wall.txt $R/sweep.txt; tail -n 2 $R/nlbse_*.log
tar czf $OUT/results.tgz -C $W results
