#!/usr/bin/env bash
# GPU session 51: LoRA (`[model.lora]`, `bench --lora-rank`). The integration tests' GPU part of
# this commit (among them `accelerator_lora_matches_the_cpu`: CUDA training with adapters on
# every linear layer against the CPU, dropout on), then `bench` without and with LoRA rank 8 on
# query and value (PEFT's defaults), alternating twice: all-mpnet-base-v2's shape from random
# weights (`--random-init`, only its config.json and tokenizer.json are carried) in bf16 at
# 16 x 512 (the NLBSE config's batch and length), and bert-base's built-in shape in f32 at
# 64 x 512. Carries .carry/lora/{tests,bench}.xz and .carry/mpnet/.
# Results -> $OUT/gpu_tests.txt, $OUT/bench.txt
set -u
B=/tmp/bin; mkdir -p $B
for b in tests bench; do xz -dc .carry/lora/$b.xz > $B/$b; done
chmod +x $B/*
M=/tmp/mpnet-shape; mkdir -p $M; cp .carry/mpnet/config.json .carry/mpnet/tokenizer.json $M/; : > $M/model.safetensors
nvidia-smi -L
$B/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt | tail -17
for round in 1 2; do for lora in 0 8; do
  for shape in "$M bf16 16 512" "bert-base f32 64 512"; do
    set -- $shape
    echo "== round $round lora $lora $1 $2 batch $3 seq $4" | tee -a $OUT/bench.txt
    extra=""; [ "$1" = "$M" ] && extra="--random-init"
    $B/bench --device cuda --model $1 $extra --dtype $2 --batch $3 --seq $4 --repeats 5 \
      --only forward_backward,train_step --lora-rank $lora 2>&1 | grep -E "^  (bench|forward_backward|train_step)|rror" | tee -a $OUT/bench.txt
  done
done; done
