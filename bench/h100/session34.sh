#!/usr/bin/env bash
# GPU session 34, on the device machine's CPU (16 cores; Xeon with AMX): wick's CPU path with
# the AMX products against WICK_AMX=0 and against PyTorch's CPU path, MiniLM's shape with seeded
# random weights, batch 32 x seq 128, f32, at 2 and 16 threads, two alternating rounds.
# Carried: .carry/bin5/bench.xz (the cuda build of `bench`), .carry/minilm-f16/{config,tokenizer}.json.
# Results -> $OUT/cpu_r<round>_t<threads>_<tool>.txt
set -u
B=/tmp/bin; mkdir -p $B
xz -dc .carry/bin5/bench.xz > $B/bench; chmod +x $B/bench
MS=/tmp/minilm-shape; mkdir -p $MS; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $MS/; : > $MS/model.safetensors
lscpu | grep -E "Model name|^CPU\(s\)|L2|L3" > $OUT/lscpu.txt
grep -o -m1 amx_bf16 /proc/cpuinfo >> $OUT/lscpu.txt
ARGS="--device cpu --model $MS --random-init --batch 32 --seq 128 --repeats 5 --warmup 1 --only forward,train_step"
for round in 1 2; do for t in 2 16; do
  $B/bench $ARGS --threads $t > $OUT/cpu_r${round}_t${t}_wick.txt 2>&1
  WICK_AMX=0 $B/bench $ARGS --threads $t > $OUT/cpu_r${round}_t${t}_wick_noamx.txt 2>&1
  python3 bench/pytorch_reference.py $ARGS --threads $t > $OUT/cpu_r${round}_t${t}_torch.txt 2>&1
done; done
grep -H -E "^  (forward|train_step)|cpu f32 products" $OUT/cpu_*.txt
