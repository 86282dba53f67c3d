#!/usr/bin/env bash
# GPU session 59: LoRA on some of query/key/value on CUDA. The fused CUDA attention now computes
# only the wanted blocks of the stacked query/key/value weight's gradient (the CPU path has
# done so since session 57's commit). The integration tests' GPU part of this commit (among
# them `accelerator_lora_matches_the_cpu`, now also with adapters on query and value only, the
# key block frozen), then `bench` before (`bench_old`, the commit before) and after, alternating
# three times, LoRA rank 8 on query and value (PEFT's defaults), train_step only:
# all-mpnet-base-v2's shape from random weights in bf16 at 16 x 512 (the NLBSE config's batch
# and length) and bert-base's built-in shape in f32 at 64 x 512. Carries
# .carry/qkv/{tests,bench,bench_old}.xz and .carry/mpnet/.
# Results -> $OUT/gpu_tests.txt, $OUT/bench.txt
set -u
B=/tmp/bin; mkdir -p $B
for b in tests bench bench_old; do xz -dc .carry/qkv/$b.xz > $B/$b; done
chmod +x $B/*
M=/tmp/mpnet-shape; mkdir -p $M; cp .carry/mpnet/config.json .carry/mpnet/tokenizer.json $M/; : > $M/model.safetensors
nvidia-smi -L
$B/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt | tail -20
for round in 1 2 3; do for bin in bench_old bench; do
  for shape in "$M bf16 16 512" "bert-base f32 64 512"; do
    set -- $shape
    echo "== round $round $bin $1 $2 batch $3 seq $4" | tee -a $OUT/bench.txt
    extra=""; [ "$1" = "$M" ] && extra="--random-init"
    $B/$bin --device cuda --model $1 $extra --dtype $2 --batch $3 --seq $4 --repeats 10 \
      --only train_step --lora-rank 8 2>&1 | grep -E "^  (bench|train_step)|rror" | tee -a $OUT/bench.txt
  done
done; done
