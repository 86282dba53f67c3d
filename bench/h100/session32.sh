#!/usr/bin/env bash
# GPU session 32: wick's CUDA attention takes MPNet's position bias with its gradient (before,
# MPNet's attention ran as primitive ops on CUDA). The integration tests' GPU part of this
# commit (the tiny MPNet on CUDA against the CPU in training and evaluation now runs the kernel),
# then `bench` of the commit before (.carry/bin4/bench_old.xz) and of this one (bench_new.xz)
# alternating twice: all-mpnet-base-v2's shape from random weights (`--random-init`, only its
# config.json and tokenizer.json are carried), train step and forward, bf16 at 16 x 512 (the NLBSE config's batch
# and length) and f32 at 32 x 128. Results -> $OUT/gpu_tests.txt, $OUT/bench.txt
set -u
B=/tmp/bin; mkdir -p $B
xz -dc .carry/bin3/tests.xz > $B/tests
for v in old new; do xz -dc .carry/bin4/bench_$v.xz > $B/bench_$v; done
chmod +x $B/*
M=/tmp/mpnet-shape; mkdir -p $M; cp .carry/mpnet/config.json .carry/mpnet/tokenizer.json $M/; : > $M/model.safetensors
nvidia-smi -L
$B/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt | tail -12
for round in 1 2; do for v in old new; do
  for shape in "bf16 16 512" "f32 32 128"; do
    set -- $shape
    echo "== round $round $v $1 batch $2 seq $3" | tee -a $OUT/bench.txt
    $B/bench_$v --device cuda --model $M --random-init --dtype $1 --batch $2 --seq $3 \
      --only forward,train_step 2>&1 | grep -E "^  (forward|train_step)" | tee -a $OUT/bench.txt
  done
done; done
